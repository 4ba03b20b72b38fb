//! A pod's volumes as host directories: emptyDir, hostPath, claims, configMaps, secrets, the
//! downward API and projected service-account tokens.

use std::{
    collections::BTreeMap,
    fs::{self},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{
        ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
        Secret, ServiceAccount, Volume,
    },
};
use kube::{Api, ResourceExt, api::PostParams};

use super::PodManager;

pub(super) fn field(pod: &Pod, path: &str, ip: &str, host_ip: &str) -> Result<String> {
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => ip.to_string(),
        "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                pod.labels().get(k).cloned().unwrap_or_default()
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                pod.annotations().get(k).cloned().unwrap_or_default()
            } else {
                bail!("unsupported fieldPath {p}")
            }
        }
    })
}

pub(super) fn write_file(dir: &Path, rel: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
}

pub(super) fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<()> {
    match items {
        Some(items) if !items.is_empty() => {
            for i in items {
                if let Some(v) = data.get(&i.key) {
                    write_file(dir, &i.path, v)?;
                }
            }
        }
        _ => {
            for (k, v) in data {
                write_file(dir, k, v)?;
            }
        }
    }
    Ok(())
}

pub(super) fn write_downward(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    ip: &str,
    host_ip: &str,
    dir: &Path,
) -> Result<()> {
    for i in items {
        if let Some(f) = &i.field_ref {
            write_file(
                dir,
                &i.path,
                field(pod, &f.field_path, ip, host_ip)?.as_bytes(),
            )?;
        }
    }
    Ok(())
}

/// Ownership of a writable volume: with `fsGroup`, group-owned and group-writable (new
/// files inherit the group through setgid directories); an emptyDir without one is 0777.
pub(super) fn own_volume(path: &Path, fs_group: Option<i64>, empty_dir: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(g) = fs_group else {
        if empty_dir {
            fs::set_permissions(path, fs::Permissions::from_mode(0o777))?;
        }
        return Ok(());
    };
    let g = u32::try_from(g).context("fsGroup out of range")?;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::chown(&p, None, Some(g))
            .with_context(|| format!("chgrp {}", p.display()))?;
        let mode = meta.permissions().mode();
        let want = if meta.is_dir() {
            mode | 0o2070
        } else {
            mode | 0o060
        };
        if want != mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(want))?;
        }
        if meta.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

impl PodManager {
    /// Materialises a volume as a host directory and returns it.
    pub(super) async fn volume(
        &self,
        pod: &Pod,
        v: &Volume,
        dir: &Path,
        ip: &str,
    ) -> Result<PathBuf> {
        let ns = pod.namespace().unwrap_or_default();
        if let Some(h) = &v.host_path {
            fs::create_dir_all(&h.path).ok();
            return Ok(PathBuf::from(&h.path));
        }
        if let Some(c) = &v.persistent_volume_claim {
            let pvc: PersistentVolumeClaim = Api::namespaced(self.client.clone(), &ns)
                .get(&c.claim_name)
                .await?;
            let pv_name = pvc
                .spec
                .and_then(|s| s.volume_name)
                .with_context(|| format!("claim {} is not bound", c.claim_name))?;
            let pv: PersistentVolume = Api::all(self.client.clone()).get(&pv_name).await?;
            let path = pv
                .spec
                .and_then(|s| s.host_path)
                .map(|h| h.path)
                .with_context(|| format!("PV {pv_name} is not a hostPath volume"))?;
            fs::create_dir_all(&path)?;
            return Ok(PathBuf::from(path));
        }
        fs::create_dir_all(dir)?;
        if let Some(cm) = &v.config_map {
            self.write_config_map(
                &ns,
                &cm.name,
                cm.items.as_deref(),
                cm.optional == Some(true),
                dir,
            )
            .await?;
        } else if let Some(s) = &v.secret {
            let n = s.secret_name.clone().unwrap_or_default();
            self.write_secret(&ns, &n, s.items.as_deref(), s.optional == Some(true), dir)
                .await?;
        } else if let Some(d) = &v.downward_api {
            write_downward(
                pod,
                d.items.as_deref().unwrap_or_default(),
                ip,
                &self.host_ip,
                dir,
            )?;
        } else if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token = self
                        .token(pod, t.audience.clone(), t.expiration_seconds)
                        .await?;
                    write_file(dir, &t.path, token.as_bytes())?;
                }
                if let Some(cm) = &src.config_map {
                    self.write_config_map(
                        &ns,
                        &cm.name,
                        cm.items.as_deref(),
                        cm.optional == Some(true),
                        dir,
                    )
                    .await?;
                }
                if let Some(s) = &src.secret {
                    self.write_secret(
                        &ns,
                        &s.name,
                        s.items.as_deref(),
                        s.optional == Some(true),
                        dir,
                    )
                    .await?;
                }
                if let Some(d) = &src.downward_api {
                    write_downward(
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        ip,
                        &self.host_ip,
                        dir,
                    )?;
                }
            }
        }
        // emptyDir and anything else: the (possibly empty) directory.
        Ok(dir.to_path_buf())
    }

    pub(super) async fn write_config_map(
        &self,
        ns: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: bool,
        dir: &Path,
    ) -> Result<()> {
        let cm = match Api::<ConfigMap>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
        {
            Ok(cm) => cm,
            Err(kube::Error::Api(e)) if e.code == 404 && optional => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("configMap {name}")),
        };
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        write_items(dir, &data, items)
    }

    pub(super) async fn write_secret(
        &self,
        ns: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: bool,
        dir: &Path,
    ) -> Result<()> {
        let s = match Api::<Secret>::namespaced(self.client.clone(), ns)
            .get(name)
            .await
        {
            Ok(s) => s,
            Err(kube::Error::Api(e)) if e.code == 404 && optional => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("secret {name}")),
        };
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.extend(
            s.string_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        write_items(dir, &data, items)
    }

    pub(super) async fn token(
        &self,
        pod: &Pod,
        audience: Option<String>,
        expiration: Option<i64>,
    ) -> Result<String> {
        let ns = pod.namespace().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(expiration.unwrap_or(3607).max(600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    uid: pod.uid(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let out = api
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for serviceaccount {ns}/{sa}"))?;
        out.status
            .map(|s| s.token)
            .context("TokenRequest without a token")
    }
}
