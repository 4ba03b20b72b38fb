//! The pod half of the process kubelet: runs every Pod bound to its Node as
//! local processes.
//!
//! - **Images** map to programs: by default an image whose repository ends in
//!   `litecluster-node` or `litecluster-operator` runs
//!   `<bin-dir>/litecluster-node` / `<bin-dir>/litecluster-operator` (the
//!   workspace's `target/<profile>`); `--image REPO=PATH` adds or overrides
//!   entries (REPO is the image without its tag, or its last path segment).
//!   `command` replaces the image's program (its basename is looked up in the
//!   map too), `args` follow; `$(VAR)` references are expanded as Kubernetes
//!   does; env `fieldRef`s (`metadata.name`, `metadata.namespace`,
//!   `metadata.uid`, `spec.nodeName`, `spec.serviceAccountName`,
//!   `status.podIP`, `status.hostIP`) are resolved. `KUBERNETES_SERVICE_HOST`
//!   and `_PORT` point at the apiserver on the bridge address.
//! - **Network**: a namespace per pod with an IP from the node's podCIDR (see
//!   [`crate::network`]); `/etc/hosts` is the cluster hosts file written by
//!   [`crate::addons`], refreshed in place.
//! - **Volumes**: emptyDir, hostPath, persistentVolumeClaim (the bound PV's
//!   hostPath), configMap, secret, downwardAPI and projected (with
//!   service-account tokens from the TokenRequest API, bound to the pod) are
//!   directories bind-mounted at their `mountPath` in the pod's own mount
//!   namespace (`ip netns exec` makes one; `litecluster-e2e pod-exec` mounts and
//!   execs).
//! - **Security contexts**: `runAsUser`/`runAsGroup` (container over pod) are
//!   applied when the program is exec'd; `runAsNonRoot` refuses to start a
//!   container that would run as root; `fsGroup` makes persistentVolumeClaim
//!   and emptyDir volumes group-owned and group-writable (emptyDir is 0777
//!   otherwise, as in Kubernetes); `readOnlyRootFilesystem` remounts every host
//!   mount in the pod's mount namespace read-only except /proc, /sys, /dev and
//!   the pod's volumes. The program itself is bind-mounted into a private
//!   tmpfs before any volume, so no volume hides it and any user can reach it
//!   wherever the workspace lives.
//! - **Lifecycle**: readiness probes (httpGet, tcpSocket) drive the
//!   container and pod Ready conditions; liveness probes restart the container;
//!   restartPolicy with a capped back-off; deletion sends SIGTERM to the
//!   container's process group, SIGKILL after the pod's grace period, then
//!   removes the pod from the API. Logs: `<run_dir>/pods/<ns>_<pod>/<container>.log`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, OpenOptions},
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{
            ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Node, PersistentVolume,
            PersistentVolumeClaim, Pod, Probe, Secret, ServiceAccount, Volume,
        },
    },
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Settings of the pod runtime, passed as kubelet flags.
#[derive(Debug, Clone)]
pub struct PodConfig {
    pub run_dir: PathBuf,
    pub bridge: String,
    pub gateway: String,
    pub prefix_len: u8,
    pub api_port: u16,
    pub netns_prefix: String,
    /// (image repository or its last segment, program)
    pub images: Vec<(String, PathBuf)>,
    /// `litecluster-e2e` itself (for `pod-exec`).
    pub exe: PathBuf,
}

/// The default image map plus `REPO=PATH` overrides (later entries win).
pub fn image_map(bin_dir: &Path, overrides: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut map = Vec::new();
    for o in overrides.iter().rev() {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--image {o}: expected REPO=PATH"))?;
        map.push((k.to_string(), PathBuf::from(v)));
    }
    for bin in ["litecluster-node", "litecluster-operator"] {
        map.push((bin.to_string(), bin_dir.join(bin)));
    }
    Ok(map)
}

fn resolve_image(map: &[(String, PathBuf)], image: &str) -> Option<PathBuf> {
    // Strip a digest or tag (a ':' after the last '/').
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rfind(':') {
        Some(i) if i > repo.rfind('/').unwrap_or(0) => &repo[..i],
        _ => repo,
    };
    let last = repo.rsplit('/').next().unwrap_or(repo);
    map.iter()
        .find(|(k, _)| k == repo || k == image)
        .or_else(|| map.iter().find(|(k, _)| k == last))
        .map(|(_, p)| p.clone())
}

/// Expands `$(VAR)` from `env` (`$$` escapes; unknown references stay as written).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                } else {
                    out.push_str(&s[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

struct Probing {
    ok: i32,
    fail: i32,
    next: Instant,
}

struct ContainerRt {
    spec: Container,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<(PathBuf, String)>,
    security: Security,
    log: PathBuf,
    child: Option<Child>,
    restart_count: i32,
    started_at: Option<Timestamp>,
    /// (exit code, reason, started, finished) of the last run.
    last_term: Option<(i32, String, Timestamp, Timestamp)>,
    restart_at: Option<Instant>,
    backoff: Duration,
    ready: bool,
    readiness: Probing,
    liveness: Probing,
}

struct PodRt {
    ns: String,
    name: String,
    netns: String,
    host_if: String,
    ip: String,
    restart_policy: String,
    containers: Vec<ContainerRt>,
    started: Timestamp,
    terminating: Option<Instant>,
    last_status: Option<serde_json::Value>,
    hosts: String,
}

pub struct PodManager {
    client: Client,
    cfg: PodConfig,
    node: String,
    host_ip: String,
    pod_cidr: Option<Ipv4Addr>,
    pods: HashMap<String, PodRt>,
    used_ips: HashSet<u8>,
}

fn log(node: &str, msg: &str) {
    eprintln!("kubelet {node}: {msg}");
}

impl PodManager {
    pub async fn new(client: Client, cfg: PodConfig, node: &str) -> Result<PodManager> {
        // A previous kubelet of this node may have left namespaces behind.
        let prefix = format!("{}{}-", cfg.netns_prefix, node);
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    let _ = crate::network::teardown_pod(&n, "");
                }
            }
        }
        Ok(PodManager {
            client,
            cfg,
            node: node.to_string(),
            host_ip: "127.0.0.1".into(),
            pod_cidr: None,
            pods: HashMap::new(),
            used_ips: HashSet::new(),
        })
    }

    /// One reconcile pass; errors are logged and retried on the next pass.
    pub async fn sync(&mut self) {
        if let Err(e) = self.sync_inner().await {
            log(&self.node, &format!("sync: {e:#}"));
        }
    }

    async fn sync_inner(&mut self) -> Result<()> {
        if self.pod_cidr.is_none() {
            let node: Node = Api::all(self.client.clone()).get(&self.node).await?;
            let Some(cidr) = node.spec.and_then(|s| s.pod_cidr) else {
                return Ok(()); // not allocated yet
            };
            let base = cidr.split('/').next().unwrap_or_default();
            self.pod_cidr = Some(base.parse().with_context(|| format!("podCIDR {cidr}"))?);
            log(&self.node, &format!("podCIDR {cidr}"));
        }
        let api: Api<Pod> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.node)))
            .await?
            .items;
        let seen: HashSet<String> = list.iter().filter_map(|p| p.uid()).collect();

        // Pods gone from the API (force-deleted): kill at once.
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut p) = self.pods.remove(&uid) {
                log(
                    &self.node,
                    &format!("pod {}/{} gone from the API: killing", p.ns, p.name),
                );
                for c in &mut p.containers {
                    signal(c, Signal::SIGKILL);
                    reap(c);
                }
                self.teardown(&p);
            }
        }

        for pod in &list {
            let uid = pod.uid().unwrap_or_default();
            let terminal = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if !self.pods.contains_key(&uid) {
                if pod.metadata.deletion_timestamp.is_some() {
                    // Never started here (or a kubelet restart): just finish the deletion.
                    self.final_delete(pod).await;
                    continue;
                }
                if terminal {
                    continue;
                }
                match self.start_pod(pod).await {
                    Ok(rt) => {
                        log(
                            &self.node,
                            &format!("started pod {}/{} at {}", rt.ns, rt.name, rt.ip),
                        );
                        self.pods.insert(uid.clone(), rt);
                    }
                    Err(e) => {
                        log(
                            &self.node,
                            &format!(
                                "starting pod {}/{}: {e:#}",
                                pod.namespace().unwrap_or_default(),
                                pod.name_any()
                            ),
                        );
                        continue;
                    }
                }
            }
            let rt = self.pods.get_mut(&uid).unwrap();
            if pod.metadata.deletion_timestamp.is_some() && rt.terminating.is_none() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or(pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30)
                    .max(0) as u64;
                log(
                    &self.node,
                    &format!("pod {}/{} deleted: SIGTERM, grace {grace}s", rt.ns, rt.name),
                );
                rt.terminating = Some(Instant::now() + Duration::from_secs(grace));
                for c in &mut rt.containers {
                    c.restart_at = None;
                    signal(c, Signal::SIGTERM);
                }
            }
        }

        // Containers: exits, restarts, probes.
        let now = Instant::now();
        let mut probes = Vec::new();
        for (uid, rt) in &mut self.pods {
            for (i, c) in rt.containers.iter_mut().enumerate() {
                if let Some(status) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                    let code = status.code().unwrap_or_else(|| {
                        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                    });
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    eprintln!(
                        "kubelet: pod {}/{} container {} exited with {code}",
                        rt.ns, rt.name, c.spec.name
                    );
                    c.child = None;
                    c.ready = false;
                    let started = c.started_at.take().unwrap_or_else(Timestamp::now);
                    c.last_term = Some((code, reason.into(), started, Timestamp::now()));
                    let restart = rt.terminating.is_none()
                        && match rt.restart_policy.as_str() {
                            "Never" => false,
                            "OnFailure" => code != 0,
                            _ => true,
                        };
                    if restart {
                        // Back-off resets after a run of 60 s or more.
                        if Timestamp::now().duration_since(started).as_secs() >= 60 {
                            c.backoff = Duration::from_secs(1);
                        }
                        c.restart_at = Some(now + c.backoff);
                        c.backoff = (c.backoff * 2).min(Duration::from_secs(10));
                    }
                }
                if c.child.is_none() && c.restart_at.is_some_and(|t| t <= now) {
                    c.restart_at = None;
                    c.restart_count += 1;
                    if let Err(e) = spawn(c, &rt.netns, &self.cfg.exe) {
                        eprintln!(
                            "kubelet: restarting {}/{} {}: {e:#}",
                            rt.ns, rt.name, c.spec.name
                        );
                        c.restart_at = Some(now + c.backoff);
                    }
                }
                if c.child.is_some() && rt.terminating.is_none() {
                    for (liveness, probe) in [
                        (false, c.spec.readiness_probe.clone()),
                        (true, c.spec.liveness_probe.clone()),
                    ] {
                        let Some(probe) = probe else { continue };
                        let st = if liveness {
                            &mut c.liveness
                        } else {
                            &mut c.readiness
                        };
                        if st.next <= now {
                            st.next = now
                                + Duration::from_secs(
                                    probe.period_seconds.unwrap_or(10).max(1) as u64
                                );
                            probes.push((
                                uid.clone(),
                                i,
                                liveness,
                                probe,
                                rt.ip.clone(),
                                c.spec.clone(),
                            ));
                        }
                    }
                }
                if c.spec.readiness_probe.is_none() {
                    c.ready = c.child.is_some();
                }
            }
        }
        let handles: Vec<_> = probes
            .into_iter()
            .map(|(uid, i, liveness, probe, ip, spec)| {
                tokio::spawn(async move {
                    let ok = run_probe(&probe, &ip, &spec).await;
                    (uid, i, liveness, probe, ok)
                })
            })
            .collect();
        for h in handles {
            let Ok((uid, i, liveness, probe, ok)) = h.await else {
                continue;
            };
            let Some(rt) = self.pods.get_mut(&uid) else {
                continue;
            };
            let c = &mut rt.containers[i];
            let st = if liveness {
                &mut c.liveness
            } else {
                &mut c.readiness
            };
            if ok {
                st.ok += 1;
                st.fail = 0;
            } else {
                st.fail += 1;
                st.ok = 0;
            }
            let (succ_t, fail_t) = (
                probe.success_threshold.unwrap_or(1).max(1),
                probe.failure_threshold.unwrap_or(3).max(1),
            );
            let (ok_n, fail_n) = (st.ok, st.fail);
            if liveness {
                if fail_n >= fail_t && c.child.is_some() {
                    eprintln!(
                        "kubelet: pod {}/{} container {} failed liveness: restarting",
                        rt.ns, rt.name, c.spec.name
                    );
                    c.liveness.fail = 0;
                    signal(c, Signal::SIGKILL);
                }
            } else if ok_n >= succ_t {
                c.ready = true;
            } else if fail_n >= fail_t {
                c.ready = false;
            }
        }

        // Terminating pods: finish when every container has exited (or time is up).
        let done: Vec<String> = self
            .pods
            .iter_mut()
            .filter_map(|(uid, rt)| {
                let deadline = rt.terminating?;
                let all_exited = rt.containers.iter_mut().all(|c| {
                    c.child
                        .as_mut()
                        .is_none_or(|ch| ch.try_wait().ok().flatten().is_some())
                });
                if all_exited {
                    return Some(uid.clone());
                }
                if Instant::now() >= deadline {
                    for c in &mut rt.containers {
                        signal(c, Signal::SIGKILL);
                        reap(c);
                    }
                    return Some(uid.clone());
                }
                None
            })
            .collect();
        for uid in done {
            if let Some(mut rt) = self.pods.remove(&uid) {
                for c in &mut rt.containers {
                    reap(c);
                }
                self.teardown(&rt);
                if let Some(pod) = list
                    .iter()
                    .find(|p| p.uid().as_deref() == Some(uid.as_str()))
                {
                    self.final_delete(pod).await;
                }
                log(&self.node, &format!("pod {}/{} terminated", rt.ns, rt.name));
            }
        }

        // Status and hosts files.
        let cluster_hosts =
            fs::read_to_string(self.cfg.run_dir.join("cluster-hosts")).unwrap_or_default();
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        for pod in &list {
            let Some(rt) = pod.uid().and_then(|u| self.pods.get_mut(&u)) else {
                continue;
            };
            let status = pod_status(rt, &self.host_ip, pod);
            if rt.last_status.as_ref() != Some(&status) {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &rt.ns);
                match api
                    .patch_status(
                        &rt.name,
                        &PatchParams::default(),
                        &Patch::Strategic(serde_json::json!({ "status": status })),
                    )
                    .await
                {
                    Ok(_) => rt.last_status = Some(status),
                    Err(e) => eprintln!("kubelet: status of {}/{}: {e}", rt.ns, rt.name),
                }
            }
            let hosts = hosts_file(pod, &rt.ip, &cluster_hosts);
            if hosts != rt.hosts {
                // In place: the file is bind-mounted over the pod's /etc/hosts.
                let path = Path::new("/etc/netns").join(&rt.netns).join("hosts");
                if fs::write(&path, &hosts).is_ok() {
                    rt.hosts = hosts;
                }
            }
        }
        let _ = pods_api;
        Ok(())
    }

    async fn final_delete(&self, pod: &Pod) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(&pod.name_any(), &dp).await
            && !matches!(&e, kube::Error::Api(ae) if ae.code == 404 || ae.code == 409)
        {
            eprintln!("kubelet: deleting {}: {e}", pod.name_any());
        }
    }

    fn teardown(&mut self, rt: &PodRt) {
        let _ = crate::network::teardown_pod(&rt.netns, &rt.host_if);
        if let Some(last) = rt.ip.rsplit('.').next().and_then(|o| o.parse::<u8>().ok()) {
            self.used_ips.remove(&last);
        }
        // The pod's own directory holds its logs (kept for the tests) and
        // emptyDir/config/token volumes (removed).
        let _ = fs::remove_dir_all(pod_dir(&self.cfg.run_dir, &rt.ns, &rt.name).join("volumes"));
    }

    /// The add-ons' cluster hosts file, waiting (up to 30 s) until it has been written: it
    /// always names `kubernetes.default.svc`, so a pod never starts without the cluster's names.
    async fn cluster_hosts_once_written(&self) -> String {
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

    async fn start_pod(&mut self, pod: &Pod) -> Result<PodRt> {
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

    async fn start_containers(
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

    /// Materialises a volume as a host directory and returns it.
    async fn volume(&self, pod: &Pod, v: &Volume, dir: &Path, ip: &str) -> Result<PathBuf> {
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

    async fn write_config_map(
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

    async fn write_secret(
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

    async fn token(
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

    /// On kubelet shutdown: SIGTERM every container, SIGKILL after 3 s, remove the namespaces.
    pub async fn shutdown(&mut self) {
        for rt in self.pods.values_mut() {
            for c in &mut rt.containers {
                signal(c, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && self.pods.values_mut().any(|rt| {
                rt.containers.iter_mut().any(|c| {
                    c.child
                        .as_mut()
                        .is_some_and(|ch| ch.try_wait().ok().flatten().is_none())
                })
            })
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pods: Vec<PodRt> = self.pods.drain().map(|(_, v)| v).collect();
        for mut rt in pods {
            for c in &mut rt.containers {
                signal(c, Signal::SIGKILL);
                reap(c);
            }
            self.teardown(&rt);
        }
    }
}

/// The pod's /etc/hosts: localhost, its own names, then the cluster's.
fn hosts_file(pod: &Pod, ip: &str, cluster_hosts: &str) -> String {
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

/// `<run_dir>/pods/<ns>_<pod>`: container logs (`<container>.log`) and volumes.
pub fn pod_dir(run_dir: &Path, ns: &str, name: &str) -> PathBuf {
    run_dir.join("pods").join(format!("{ns}_{name}"))
}

fn spawn(c: &mut ContainerRt, netns: &str, exe: &Path) -> Result<()> {
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

fn signal(c: &mut ContainerRt, sig: Signal) {
    if let Some(ch) = c.child.as_mut()
        && ch.try_wait().ok().flatten().is_none()
    {
        let _ = nix::sys::signal::killpg(Pid::from_raw(ch.id() as i32), sig);
    }
}

fn reap(c: &mut ContainerRt) {
    if let Some(mut ch) = c.child.take() {
        let _ = ch.wait();
    }
}

fn field(pod: &Pod, path: &str, ip: &str, host_ip: &str) -> Result<String> {
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

fn write_file(dir: &Path, rel: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
}

fn write_items(
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

fn write_downward(
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

fn probe_port(port: &IntOrString, c: &Container) -> Option<i32> {
    match port {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok()),
    }
}

async fn run_probe(p: &Probe, ip: &str, c: &Container) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(h) = &p.http_get {
            let port = probe_port(&h.port, c)?;
            if h.scheme.as_deref() == Some("HTTPS") {
                return https_probe(ip, port, h.path.as_deref().unwrap_or("/")).await;
            }
            let mut s = tokio::net::TcpStream::connect((ip, port as u16))
                .await
                .ok()?;
            let path = h.path.as_deref().unwrap_or("/");
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = vec![0u8; 64];
            let n = s.read(&mut buf).await.ok()?;
            let head = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
            Some((200..400).contains(&code))
        } else if let Some(t) = &p.tcp_socket {
            let port = probe_port(&t.port, c)?;
            Some(
                tokio::net::TcpStream::connect((ip, port as u16))
                    .await
                    .is_ok(),
            )
        } else {
            // exec/grpc probes are not supported: treat as passing.
            Some(true)
        }
    };
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(true)))
}

/// An HTTPS probe as the kubelet makes it: TLS without checking the certificate (a probe tests
/// liveness, not identity), any status in 200..400 passes.
async fn https_probe(ip: &str, port: i32, path: &str) -> Option<bool> {
    static CLIENT: std::sync::OnceLock<Option<reqwest::Client>> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .user_agent("kube-probe/1.33")
            .build()
            .ok()
    });
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let resp = client
        .as_ref()?
        .get(format!("https://{host}:{port}{path}"))
        .send()
        .await
        .ok()?;
    Some((200..400).contains(&resp.status().as_u16()))
}

fn pod_status(rt: &mut PodRt, host_ip: &str, pod: &Pod) -> serde_json::Value {
    let t = |ts: &Timestamp| serde_json::to_value(Time(*ts)).unwrap_or_default();
    let mut statuses = Vec::new();
    let mut any_running = false;
    let mut all_ready = true;
    let mut all_done_ok = true;
    let mut any_pending_restart = false;
    for c in &mut rt.containers {
        let running = c.child.is_some();
        any_running |= running;
        all_ready &= c.ready && running;
        any_pending_restart |= c.restart_at.is_some();
        let term = |(code, reason, s, f): &(i32, String, Timestamp, Timestamp)| serde_json::json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": t(s), "finishedAt": t(f)}});
        let state = if running {
            serde_json::json!({"running": {"startedAt": c.started_at.as_ref().map(t)}})
        } else if c.restart_at.is_some() {
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting, logs in {}", c.log.display())}})
        } else if let Some(lt) = &c.last_term {
            all_done_ok &= lt.0 == 0;
            term(lt)
        } else {
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}})
        };
        let last_state = match (&c.last_term, running || c.restart_at.is_some()) {
            (Some(lt), true) => term(lt),
            _ => serde_json::json!({}),
        };
        statuses.push(serde_json::json!({
            "name": c.spec.name,
            "image": c.spec.image,
            "imageID": "",
            "containerID": c.child.as_ref().map(|ch| format!("process://{}", ch.id())),
            "ready": c.ready && running,
            "started": running,
            "restartCount": c.restart_count,
            "state": state,
            "lastState": last_state,
        }));
    }
    let phase = if any_running || any_pending_restart || rt.terminating.is_some() {
        "Running"
    } else if all_done_ok {
        "Succeeded"
    } else {
        "Failed"
    };
    let ready = all_ready && rt.terminating.is_none() && any_running;
    let prev: HashMap<String, (String, serde_json::Value)> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            (
                c.type_.clone(),
                (
                    c.status.clone(),
                    serde_json::to_value(&c.last_transition_time).unwrap_or_default(),
                ),
            )
        })
        .collect();
    let now = t(&Timestamp::now());
    let cond = |ty: &str, ok: bool| {
        let s = if ok { "True" } else { "False" };
        let since = match prev.get(ty) {
            Some((ps, at)) if ps == s && !at.is_null() => at.clone(),
            _ => now.clone(),
        };
        serde_json::json!({"type": ty, "status": s, "lastTransitionTime": since})
    };
    serde_json::json!({
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": rt.ip,
        "podIPs": [{"ip": rt.ip}],
        "startTime": t(&rt.started),
        "conditions": [
            cond("PodReadyToStartContainers", true),
            cond("Initialized", true),
            cond("ContainersReady", ready),
            cond("Ready", ready),
            cond("PodScheduled", true),
        ],
        "containerStatuses": statuses,
    })
}

/// `litecluster-e2e pod-exec [--mount SRC:DST]... [--uid U] [--gid G] [--read-only-root]
/// -- PROGRAM ARGS...`: run by the kubelet under `ip netns exec` (which gives it a private
/// mount namespace); bind-mounts the program into a private tmpfs, then each volume at its
/// mount path, applies the security context, then execs the program (same pid, so signals
/// reach it directly). The program goes first: a volume over the directory the workspace lives
/// in (an emptyDir at `/tmp` with a checkout under `/tmp`) would otherwise hide it, and any user
/// can reach the tmpfs, whatever the permissions on the way to the workspace.
pub fn pod_exec(args: &[String]) -> Result<()> {
    let sep = args
        .iter()
        .position(|a| a == "--")
        .context("pod-exec: missing --")?;
    let (mut uid, mut gid, mut read_only_root) = (None::<u32>, None::<u32>, false);
    let mut mounts = Vec::new();
    let mut it = args[..sep].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mount" => {
                let m = it.next().context("--mount needs SRC:DST")?;
                let (src, dst) = m.rsplit_once(':').context("--mount needs SRC:DST")?;
                mounts.push((src.to_string(), dst.to_string()));
            }
            "--uid" => uid = Some(it.next().context("--uid needs a value")?.parse()?),
            "--gid" => gid = Some(it.next().context("--gid needs a value")?.parse()?),
            "--read-only-root" => read_only_root = true,
            other => bail!("pod-exec: unexpected {other}"),
        }
    }
    let given = args.get(sep + 1).context("pod-exec: no program")?;
    let prog = {
        let dir = PROGRAMS_DIR;
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        run("mount", &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", dir])?;
        let name = Path::new(given)
            .file_name()
            .context("program without a file name")?;
        let dst = Path::new(dir).join(name);
        bind(Path::new(given), &dst.display().to_string())?;
        dst.display().to_string()
    };
    let mut volume_dsts = vec![PROGRAMS_DIR.to_string()];
    for (src, dst) in &mounts {
        if is_under(PROGRAMS_DIR, dst) {
            bail!("volume mount {dst} would hide the program: mount volumes elsewhere");
        }
        bind(Path::new(src), dst)?;
        volume_dsts.push(dst.clone());
    }
    if read_only_root {
        let keep: Vec<&str> = ["/proc", "/sys", "/dev", "/run/netns"]
            .into_iter()
            .chain(volume_dsts.iter().map(String::as_str))
            .collect();
        for mp in mount_points()? {
            if keep.iter().any(|k| is_under(&mp, k)) {
                continue;
            }
            let res = run("mount", &["-o", "remount,bind,ro", &mp]);
            match res {
                Err(e) if mp == "/" => return Err(e),
                // Odd host mounts (autofs, ...) may refuse; the root is what matters.
                Err(e) => eprintln!("pod-exec: leaving {mp} writable: {e:#}"),
                Ok(()) => {}
            }
        }
    }
    let mut cmd = Command::new(&prog);
    cmd.args(&args[sep + 2..]);
    if let Some(g) = gid {
        cmd.gid(g);
    }
    if let Some(u) = uid {
        // std drops supplementary groups when a root process switches user.
        cmd.uid(u);
    }
    let err = cmd.exec();
    bail!("exec {prog}: {err}")
}

/// Where pod-exec mounts the program, in the pod's private mount namespace.
const PROGRAMS_DIR: &str = "/run/litecluster-e2e-programs";

fn bind(src: &Path, dst: &str) -> Result<()> {
    if src.is_dir() {
        fs::create_dir_all(dst).with_context(|| format!("creating mount point {dst}"))?;
    } else if !Path::new(dst).exists() {
        if let Some(parent) = Path::new(dst).parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(dst, b"").with_context(|| format!("creating mount point {dst}"))?;
    }
    run("mount", &["--bind", &src.display().to_string(), dst])
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(prog)
        .args(args)
        .status()
        .with_context(|| format!("running {prog}"))?;
    if !st.success() {
        bail!("{prog} {} failed: {st}", args.join(" "));
    }
    Ok(())
}

fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// Mount points of this mount namespace, in mount order (octal escapes decoded).
fn mount_points() -> Result<Vec<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in info.lines() {
        if let Some(raw) = line.split(' ').nth(4) {
            let mp = unescape_mount(raw);
            if !out.contains(&mp) {
                out.push(mp);
            }
        }
    }
    Ok(out)
}

fn unescape_mount(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of a container's security context the process kubelet applies.
#[derive(Debug, Clone, Default, PartialEq)]
struct Security {
    uid: Option<u32>,
    gid: Option<u32>,
    read_only_root: bool,
}

impl Security {
    /// Container settings win over the pod's, as in Kubernetes.
    fn of(spec: &k8s_openapi::api::core::v1::PodSpec, c: &Container) -> Result<Security> {
        let pod = spec.security_context.as_ref();
        let ctr = c.security_context.as_ref();
        let uid = ctr
            .and_then(|s| s.run_as_user)
            .or_else(|| pod.and_then(|s| s.run_as_user));
        let gid = ctr
            .and_then(|s| s.run_as_group)
            .or_else(|| pod.and_then(|s| s.run_as_group))
            .or_else(|| pod.and_then(|s| s.fs_group));
        let non_root = ctr
            .and_then(|s| s.run_as_non_root)
            .or_else(|| pod.and_then(|s| s.run_as_non_root))
            .unwrap_or(false);
        if non_root && uid.unwrap_or(0) == 0 {
            // Our "images" have no USER: without runAsUser they would run as root.
            bail!(
                "container {} has runAsNonRoot but no non-zero runAsUser: it would run as root",
                c.name
            );
        }
        let id = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
            v.map(|v| u32::try_from(v).with_context(|| format!("{what} {v} is out of range")))
                .transpose()
        };
        Ok(Security {
            uid: id(uid, "runAsUser")?,
            gid: id(gid, "runAsGroup")?,
            read_only_root: ctr
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
        })
    }
}

/// Ownership of a writable volume: with `fsGroup`, group-owned and group-writable (new
/// files inherit the group through setgid directories); an emptyDir without one is 0777.
fn own_volume(path: &Path, fs_group: Option<i64>, empty_dir: bool) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_decode_octal_escapes() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn security_context_container_over_pod_and_non_root_enforced() {
        use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};
        let spec = PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_user: Some(65532),
                fs_group: Some(65533),
                run_as_non_root: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = Container {
            name: "db".into(),
            security_context: Some(SecurityContext {
                read_only_root_filesystem: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Security::of(&spec, &c).unwrap(),
            Security {
                uid: Some(65532),
                gid: Some(65533),
                read_only_root: true
            }
        );
        c.security_context.as_mut().unwrap().run_as_user = Some(0);
        let err = Security::of(&spec, &c).unwrap_err().to_string();
        assert!(err.contains("runAsNonRoot"), "{err}");
    }

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("POD_NAME".to_string(), "db-0".to_string())];
        assert_eq!(expand("$(POD_NAME).h:1", &env), "db-0.h:1");
        assert_eq!(expand("$$(POD_NAME)", &env), "$(POD_NAME)");
        assert_eq!(expand("$(NOPE)x", &env), "$(NOPE)x");
        assert_eq!(expand("a$", &env), "a$");
    }

    #[test]
    fn images_map_by_repository() {
        let m = image_map(Path::new("/b"), &["quay.io/x/y=/opt/y".into()]).unwrap();
        assert_eq!(
            resolve_image(&m, "ghcr.io/litecluster/litecluster-node:0.1.0"),
            Some(PathBuf::from("/b/litecluster-node"))
        );
        assert_eq!(
            resolve_image(&m, "quay.io/x/y:1"),
            Some(PathBuf::from("/opt/y"))
        );
        assert_eq!(
            resolve_image(&m, "localhost:5000/litecluster-operator"),
            Some(PathBuf::from("/b/litecluster-operator"))
        );
        assert_eq!(resolve_image(&m, "busybox"), None);
    }
}
