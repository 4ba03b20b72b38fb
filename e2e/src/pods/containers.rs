//! Starting a pod: its network namespace and hosts file, its volumes, then each container as a
//! process in its own group; signals and reaping.

use std::{
    collections::HashMap,
    fs::{self, OpenOptions},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod, Secret},
    jiff::Timestamp,
};
use kube::{Api, ResourceExt};
use nix::{sys::signal::Signal, unistd::Pid};

use super::{
    ContainerRt, PodManager, PodRt, Probing, Security, expand, field, log, own_volume, pod_dir,
    resolve_image,
};

/// The pod's /etc/hosts: localhost, its own names, then the cluster's.
pub(super) fn hosts_file(pod: &Pod, ip: &str, cluster_hosts: &str) -> String {
    let spec = pod.spec.as_ref();
    let host = spec
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.name_any());
    let mut own = host.clone();
    if let Some(sub) = spec.and_then(|s| s.subdomain.as_deref()) {
        let ns = pod.namespace().unwrap_or_default();
        own = format!("{host}.{sub}.{ns}.svc.cluster.local {host}.{sub}.{ns}.svc {host}");
    }
    format!("127.0.0.1 localhost\n{ip} {own}\n{cluster_hosts}")
}

pub(super) fn spawn(c: &mut ContainerRt, netns: &str, exe: &Path) -> Result<()> {
    let out = OpenOptions::new().create(true).append(true).open(&c.log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(exe).arg("pod-exec");
    for (src, dst) in &c.mounts {
        cmd.arg("--mount").arg(format!("{}:{dst}", src.display()));
    }
    if let Some(uid) = c.security.uid {
        cmd.arg("--uid").arg(uid.to_string());
    }
    if let Some(gid) = c.security.gid {
        cmd.arg("--gid").arg(gid.to_string());
    }
    if c.security.read_only_root {
        cmd.arg("--read-only-root");
    }
    cmd.arg("--").arg(&c.program).args(&c.args);
    // The pod's own directory, like an image's working directory: relative paths (a program's
    // default data dir, say) must not land in whatever directory the kubelet was started from.
    if let Some(dir) = c.log.parent() {
        cmd.current_dir(dir);
    }
    cmd.env_clear()
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", c.program.display()))?;
    c.child = Some(child);
    c.started_at = Some(Timestamp::now());
    c.ready = false;
    c.readiness.ok = 0;
    c.readiness.fail = 0;
    Ok(())
}

pub(super) fn signal(c: &mut ContainerRt, sig: Signal) {
    if let Some(ch) = c.child.as_mut()
        && ch.try_wait().ok().flatten().is_none()
    {
        let _ = nix::sys::signal::killpg(Pid::from_raw(ch.id() as i32), sig);
    }
}

pub(super) fn reap(c: &mut ContainerRt) {
    if let Some(mut ch) = c.child.take() {
        let _ = ch.wait();
    }
}

impl PodManager {
    /// The add-ons' cluster hosts file, waiting (up to 30 s) until it has been written: it
    /// always names `kubernetes.default.svc`, so a pod never starts without the cluster's names.
    pub(super) async fn cluster_hosts_once_written(&self) -> String {
        let path = self.cfg.run_dir.join("cluster-hosts");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&path).unwrap_or_default();
            if text.contains("kubernetes.default.svc") {
                return text;
            }
            if std::time::Instant::now() > deadline {
                log(
                    &self.node,
                    "cluster hosts file still missing after 30s; starting the pod without the cluster's names",
                );
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn start_pod(&mut self, pod: &Pod) -> Result<PodRt> {
        let cidr = self.pod_cidr.context("no podCIDR yet")?;
        let spec = pod.spec.clone().context("pod without spec")?;
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let last = (10..=250u8)
            .find(|o| !self.used_ips.contains(o))
            .context("no free pod IP")?;
        let o = cidr.octets();
        let ip = format!("{}.{}.{}.{last}", o[0], o[1], o[2]);
        let netns = format!("{}{}-{}", self.cfg.netns_prefix, self.node, last);
        let host_if = format!("{}v{:02x}{:02x}", self.cfg.bridge, o[2], last);
        crate::network::setup_pod(
            &netns,
            &host_if,
            &self.cfg.bridge,
            &ip,
            self.cfg.prefix_len,
            &self.cfg.gateway,
        )?;
        self.used_ips.insert(last);
        // Names resolve from the first instruction on: the cluster's names come from the
        // add-ons' file, which a fresh control plane may not have written yet.
        let cluster_hosts = self.cluster_hosts_once_written().await;
        let _ = fs::write(
            Path::new("/etc/netns").join(&netns).join("hosts"),
            hosts_file(pod, &ip, &cluster_hosts),
        );
        let result = self
            .start_containers(pod, &spec, &ns, &name, &ip, &netns)
            .await;
        match result {
            Ok(containers) => Ok(PodRt {
                ns,
                name,
                netns,
                host_if,
                ip,
                restart_policy: spec
                    .restart_policy
                    .clone()
                    .unwrap_or_else(|| "Always".into()),
                containers,
                started: Timestamp::now(),
                terminating: None,
                last_status: None,
                hosts: String::new(),
            }),
            Err(e) => {
                let _ = crate::network::teardown_pod(&netns, &host_if);
                self.used_ips.remove(&last);
                Err(e)
            }
        }
    }

    pub(super) async fn start_containers(
        &self,
        pod: &Pod,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        ns: &str,
        name: &str,
        ip: &str,
        netns: &str,
    ) -> Result<Vec<ContainerRt>> {
        let dir = pod_dir(&self.cfg.run_dir, ns, name);
        fs::create_dir_all(&dir)?;
        let mut volumes: HashMap<String, PathBuf> = HashMap::new();
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group);
        for v in spec.volumes.iter().flatten() {
            let path = self
                .volume(pod, v, &dir.join("volumes").join(&v.name), ip)
                .await
                .with_context(|| format!("volume {}", v.name))?;
            if v.empty_dir.is_some() || v.persistent_volume_claim.is_some() {
                own_volume(&path, fs_group, v.empty_dir.is_some())
                    .with_context(|| format!("volume {}: applying fsGroup", v.name))?;
            }
            volumes.insert(v.name.clone(), path);
        }
        let mut out = Vec::new();
        for c in &spec.containers {
            let security = Security::of(spec, c)?;
            let image = c.image.clone().unwrap_or_default();
            let image_prog = resolve_image(&self.cfg.images, &image);
            let (program, mut args) = match c.command.as_ref().filter(|c| !c.is_empty()) {
                Some(cmd) => {
                    let base = cmd[0].rsplit('/').next().unwrap_or(&cmd[0]).to_string();
                    let p = resolve_image(&self.cfg.images, &base)
                        .unwrap_or_else(|| PathBuf::from(&cmd[0]));
                    (p, cmd[1..].to_vec())
                }
                None => (
                    image_prog.with_context(|| {
                        format!("no program for image {image:?} (use --image REPO=PATH)")
                    })?,
                    Vec::new(),
                ),
            };
            if !program.is_file() {
                bail!(
                    "program {} for image {image} does not exist (build it first)",
                    program.display()
                );
            }
            args.extend(c.args.iter().flatten().cloned());

            let mut env: Vec<(String, String)> = vec![
                (
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
                (
                    "HOSTNAME".into(),
                    spec.hostname.clone().unwrap_or_else(|| name.to_string()),
                ),
                ("HOME".into(), dir.display().to_string()),
                ("KUBERNETES_SERVICE_HOST".into(), self.cfg.gateway.clone()),
                (
                    "KUBERNETES_SERVICE_PORT".into(),
                    self.cfg.api_port.to_string(),
                ),
                (
                    "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                    self.cfg.api_port.to_string(),
                ),
            ];
            for e in c.env.iter().flatten() {
                let value = if let Some(v) = &e.value {
                    expand(v, &env)
                } else if let Some(src) = &e.value_from {
                    if let Some(f) = &src.field_ref {
                        field(pod, &f.field_path, ip, &self.host_ip)
                            .with_context(|| format!("env {}: fieldRef {}", e.name, f.field_path))?
                    } else if let Some(r) = &src.config_map_key_ref {
                        let cm: ConfigMap = Api::namespaced(self.client.clone(), ns)
                            .get(&r.name)
                            .await?;
                        cm.data
                            .and_then(|d| d.get(&r.key).cloned())
                            .unwrap_or_default()
                    } else if let Some(r) = &src.secret_key_ref {
                        let s: Secret = Api::namespaced(self.client.clone(), ns)
                            .get(&r.name)
                            .await?;
                        s.data
                            .and_then(|d| d.get(&r.key).cloned())
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                            .unwrap_or_default()
                    } else {
                        String::new()
                    }
                } else {
                    String::new()
                };
                env.push((e.name.clone(), value));
            }
            let args: Vec<String> = args.iter().map(|a| expand(a, &env)).collect();
            let mut mounts = Vec::new();
            for m in c.volume_mounts.iter().flatten() {
                let mut src = volumes
                    .get(&m.name)
                    .with_context(|| format!("mount of unknown volume {}", m.name))?
                    .clone();
                if let Some(sub) = m.sub_path.as_ref().filter(|s| !s.is_empty()) {
                    src = src.join(sub);
                }
                mounts.push((src, m.mount_path.clone()));
            }
            let mut rt = ContainerRt {
                spec: c.clone(),
                program,
                args,
                env,
                mounts,
                security,
                log: dir.join(format!("{}.log", c.name)),
                child: None,
                restart_count: 0,
                started_at: None,
                last_term: None,
                restart_at: None,
                backoff: Duration::from_secs(1),
                ready: false,
                readiness: Probing {
                    ok: 0,
                    fail: 0,
                    next: Instant::now()
                        + Duration::from_secs(
                            c.readiness_probe
                                .as_ref()
                                .and_then(|p| p.initial_delay_seconds)
                                .unwrap_or(0) as u64,
                        ),
                },
                liveness: Probing {
                    ok: 0,
                    fail: 0,
                    next: Instant::now()
                        + Duration::from_secs(
                            c.liveness_probe
                                .as_ref()
                                .and_then(|p| p.initial_delay_seconds)
                                .unwrap_or(0)
                                .max(10) as u64,
                        ),
                },
            };
            spawn(&mut rt, netns, &self.cfg.exe)?;
            out.push(rt);
        }
        Ok(out)
    }
}
