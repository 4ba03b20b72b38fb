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
    collections::{HashMap, HashSet},
    fs::{self},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::core::v1::{Container, Node, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
};
use nix::sys::signal::Signal;

mod containers;
mod exec;
mod images;
mod probes;
mod security;
mod status;
mod volumes;

use containers::{hosts_file, reap, signal, spawn};
pub use exec::pod_exec;
use images::resolve_image;
pub use images::{expand, image_map};
use probes::run_probe;
use security::Security;
use status::pod_status;
use volumes::{field, own_volume};

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
    /// Pods that could not start, by UID, with the error last reported in their status.
    start_failures: HashMap<String, String>,
}

fn log(node: &str, msg: &str) {
    eprintln!("kubelet {node}: {msg}");
}

/// `<run_dir>/pods/<ns>_<pod>`: container logs (`<container>.log`) and volumes.
pub fn pod_dir(run_dir: &Path, ns: &str, name: &str) -> PathBuf {
    run_dir.join("pods").join(format!("{ns}_{name}"))
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
            start_failures: HashMap::new(),
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
        self.start_failures.retain(|uid, _| seen.contains(uid));

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
                        self.start_failures.remove(&uid);
                        self.pods.insert(uid.clone(), rt);
                    }
                    Err(e) => {
                        let message = format!("{e:#}");
                        if self.start_failures.get(&uid) != Some(&message) {
                            log(
                                &self.node,
                                &format!(
                                    "starting pod {}/{}: {message}",
                                    pod.namespace().unwrap_or_default(),
                                    pod.name_any()
                                ),
                            );
                            if self.report_start_failure(pod, &message).await {
                                self.start_failures.insert(uid.clone(), message);
                            }
                        }
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
