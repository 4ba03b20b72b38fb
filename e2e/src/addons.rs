//! Cluster add-ons the process kubelet relies on, run as one process
//! (`litecluster-e2e addons`) with the admin kubeconfig:
//!
//! - **DNS as a hosts file**: every second it writes `<run_dir>/cluster-hosts`
//!   with `<pod>.<subdomain>.<ns>.svc.cluster.local` for every pod with an IP
//!   and a hostname/subdomain, `<svc>.<ns>.svc.cluster.local` (and `.svc`) for
//!   every Service, resolving to the IPs of the pods it selects (ready ones,
//!   or all with `publishNotReadyAddresses`), and `kubernetes.default.svc` to
//!   the apiserver's bridge address. Each kubelet copies it into its pods'
//!   `/etc/netns/<netns>/hosts`. There is no kube-proxy: a Service name
//!   resolves straight to pod IPs, so the service port must equal the target
//!   port (true for litecluster's Services).
//! - **Volume provisioner**: each Pending PersistentVolumeClaim gets a
//!   pre-bound hostPath PersistentVolume under `<run_dir>/volumes/`, so claims
//!   bind and the data survives pod restarts and rescheduling. It is also
//!   the external resizer of those volumes: a bound claim asking for more
//!   than its capacity (the API server admits that only when its
//!   StorageClass sets `allowVolumeExpansion`) gets its PersistentVolume and
//!   its status capacity raised (a host directory has no size to grow).

use std::{collections::BTreeMap, fmt::Write as _, fs, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

#[derive(Debug, Clone)]
pub struct AddonsArgs {
    pub kubeconfig: PathBuf,
    pub run_dir: PathBuf,
    /// Address of the apiserver as seen from pods (the bridge address).
    pub api_host: String,
    pub cluster_domain: String,
}

impl AddonsArgs {
    pub fn parse(args: &[String]) -> Result<AddonsArgs> {
        let f = crate::kubelet::Flags::parse(args)?;
        Ok(AddonsArgs {
            kubeconfig: f.req("kubeconfig")?.into(),
            run_dir: f.req("run-dir")?.into(),
            api_host: f.req("api-host")?,
            cluster_domain: f.get("cluster-domain").unwrap_or("cluster.local").into(),
        })
    }
}

pub async fn run(args: AddonsArgs) -> Result<()> {
    let kc = Kubeconfig::read_from(&args.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut last_hosts = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match hosts(&client, &args).await {
                    Ok(h) if h != last_hosts => {
                        let path = args.run_dir.join("cluster-hosts");
                        let tmp = args.run_dir.join("cluster-hosts.tmp");
                        if let Err(e) = fs::write(&tmp, &h).and_then(|()| fs::rename(&tmp, &path)) {
                            eprintln!("addons: writing {}: {e}", path.display());
                        } else {
                            last_hosts = h;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("addons: hosts: {e:#}"),
                }
                if let Err(e) = provision(&client, &args).await {
                    eprintln!("addons: provisioner: {e:#}");
                }
                if let Err(e) = resize(&client).await {
                    eprintln!("addons: resizer: {e:#}");
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn hosts(client: &Client, args: &AddonsArgs) -> Result<String> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let d = &args.cluster_domain;
    // name -> ips, sorted for a stable file.
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |name: String, ip: &str| {
        let v = names.entry(name).or_default();
        if !v.iter().any(|i| i == ip) {
            v.push(ip.to_string());
        }
    };
    for n in [
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{d}"),
    ] {
        add(n, &args.api_host);
    }
    for p in &pods {
        let (Some(ip), Some(spec)) = (
            p.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
            p.spec.as_ref(),
        ) else {
            continue;
        };
        if let (Some(h), Some(sub)) = (&spec.hostname, &spec.subdomain) {
            let ns = p.namespace().unwrap_or_default();
            add(format!("{h}.{sub}.{ns}.svc.{d}"), ip);
            add(format!("{h}.{sub}.{ns}.svc"), ip);
        }
    }
    for s in &services {
        let ns = s.namespace().unwrap_or_default();
        let Some(spec) = &s.spec else { continue };
        let Some(sel) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let not_ready_ok = spec.publish_not_ready_addresses == Some(true);
        for p in &pods {
            if p.namespace().as_deref() != Some(ns.as_str())
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let labels = p.labels();
            if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            if !(not_ready_ok || pod_ready(p)) {
                continue;
            }
            if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                add(format!("{}.{ns}.svc.{d}", s.name_any()), ip);
                add(format!("{}.{ns}.svc", s.name_any()), ip);
            }
        }
    }
    let mut out = String::from("# written by litecluster-e2e addons\n");
    for (name, ips) in &names {
        for ip in ips {
            let _ = writeln!(out, "{ip} {name}");
        }
    }
    Ok(out)
}

async fn provision(client: &Client, args: &AddonsArgs) -> Result<()> {
    let claims = Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for c in claims {
        let Some(spec) = &c.spec else { continue };
        let pending = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if !pending || spec.volume_name.is_some() || c.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let uid = c.uid().context("claim without uid")?;
        let ns = c.namespace().unwrap_or_default();
        let pv_name = format!("pvc-{uid}");
        let dir = args
            .run_dir
            .join("volumes")
            .join(format!("{ns}-{}-{uid}", c.name_any()));
        fs::create_dir_all(&dir)?;
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned())
            .unwrap_or(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "1Gi".into(),
            ));
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name.clone()),
                labels: Some(BTreeMap::from([(
                    "litecluster.dev/provisioner".into(),
                    "e2e-hostpath".into(),
                )])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), size)])),
                access_modes: spec.access_modes.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: dir.display().to_string(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns.clone()),
                    name: Some(c.name_any()),
                    uid: Some(uid.clone()),
                    ..Default::default()
                }),
                persistent_volume_reclaim_policy: Some("Retain".into()),
                storage_class_name: Some(spec.storage_class_name.clone().unwrap_or_default()),
                volume_mode: spec.volume_mode.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => eprintln!(
                "addons: provisioned {pv_name} for {ns}/{} at {}",
                c.name_any(),
                dir.display()
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("creating PersistentVolume"),
        }
    }
    Ok(())
}

fn storage_of(
    r: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<String> {
    r?.get("storage").map(|q| q.0.clone())
}

/// Raise the capacity of our volumes whose bound claim asks for more.
async fn resize(client: &Client) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let ours = pvs
        .list(&ListParams::default().labels("litecluster.dev/provisioner=e2e-hostpath"))
        .await?
        .items;
    for pv in ours {
        let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            continue;
        };
        let (Some(ns), Some(name)) = (claim.namespace.as_deref(), claim.name.as_deref()) else {
            continue;
        };
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let Some(pvc) = claims.get_opt(name).await? else {
            continue;
        };
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let want = storage_of(
            pvc.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref()),
        );
        let has = storage_of(pvc.status.as_ref().and_then(|s| s.capacity.as_ref()));
        let (Some(want), true) = (want, bound) else {
            continue;
        };
        // The claim's request only ever grows (the API server refuses a smaller one).
        if has.as_deref() == Some(want.as_str()) || pvc.uid() != claim.uid {
            continue;
        }
        let params = PatchParams::default();
        let cap = serde_json::json!({ "storage": want });
        pvs.patch(
            &pv.name_any(),
            &params,
            &Patch::Merge(serde_json::json!({"spec": {"capacity": cap}})),
        )
        .await
        .context("raising the PersistentVolume capacity")?;
        claims
            .patch_status(
                name,
                &params,
                &Patch::Merge(serde_json::json!({"status": {"capacity": cap}})),
            )
            .await
            .context("raising the claim's capacity")?;
        eprintln!(
            "addons: resized {} for {ns}/{name} to {want}",
            pv.name_any()
        );
    }
    Ok(())
}
