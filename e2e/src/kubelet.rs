//! The node half of the process-backed kubelet: registers a Node, keeps its
//! Lease in `kube-node-lease` renewed and its Ready condition fresh, as a real
//! kubelet does, and (with `--run-dir` and the network flags) runs the Pods
//! bound to the node through [`crate::pods::PodManager`].
//!
//! Runs as `litecluster-e2e kubelet --kubeconfig F --node-name N [--node-ip IP]`,
//! started by [`crate::ControlPlane::add_nodes`] with a client certificate for
//! `system:node:<name>` (group `system:nodes`), so the Node authorizer and the
//! NodeRestriction admission plugin see it as that node.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, Time},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// Lease duration and how often the agent renews the lease and the Node status.
pub const LEASE_SECONDS: i32 = 40;
pub const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct NodeAgentArgs {
    pub kubeconfig: std::path::PathBuf,
    pub node_name: String,
    pub node_ip: String,
    /// Pods: None runs no pods (heartbeat only).
    pub pods: Option<crate::pods::PodConfig>,
}

/// `--flag value` / `--flag=value` arguments; a flag may repeat.
pub struct Flags(Vec<(String, String)>);

impl Flags {
    pub fn parse(args: &[String]) -> Result<Flags> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--") else {
                anyhow::bail!("unexpected argument {a}");
            };
            let (k, v) = match flag.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (
                    flag.to_string(),
                    it.next()
                        .cloned()
                        .context(format!("--{flag} needs a value"))?,
                ),
            };
            out.push((k, v));
        }
        Ok(Flags(out))
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn req(&self, k: &str) -> Result<String> {
        self.get(k)
            .map(str::to_string)
            .context(format!("--{k} is required"))
    }
}

impl NodeAgentArgs {
    /// Parses `--kubeconfig F --node-name N [--node-ip IP]` and, to run pods,
    /// `--run-dir D --bridge B --gateway IP --prefix-len 16 --api-port P
    /// --netns-prefix X --bin-dir D [--image REPO=PATH]...`.
    pub fn parse(args: &[String]) -> Result<NodeAgentArgs> {
        let f = Flags::parse(args)?;
        let pods = match f.get("run-dir") {
            None => None,
            Some(run_dir) => Some(crate::pods::PodConfig {
                run_dir: run_dir.into(),
                bridge: f.req("bridge")?,
                gateway: f.req("gateway")?,
                prefix_len: f.req("prefix-len")?.parse()?,
                api_port: f.req("api-port")?.parse()?,
                netns_prefix: f.req("netns-prefix")?,
                images: crate::pods::image_map(
                    std::path::Path::new(&f.req("bin-dir")?),
                    &f.all("image"),
                )?,
                exe: std::env::current_exe()?,
            }),
        };
        Ok(NodeAgentArgs {
            kubeconfig: f.req("kubeconfig")?.into(),
            node_name: f.req("node-name")?,
            node_ip: f.get("node-ip").unwrap_or("127.0.0.1").to_string(),
            pods,
        })
    }
}

/// Registers the node and heartbeats until SIGTERM/SIGINT.
pub async fn run(args: NodeAgentArgs) -> Result<()> {
    let kc = Kubeconfig::read_from(&args.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let name = args.node_name.as_str();

    let since = Time(Timestamp::now());
    register(&nodes, &args, &since).await?;
    eprintln!("kubelet {name}: registered Node (ip {})", args.node_ip);

    let mut pods = match &args.pods {
        Some(cfg) => Some(crate::pods::PodManager::new(client, cfg.clone(), name).await?),
        None => None,
    };
    let mut pod_tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A failed beat is retried on the next tick; the lease lasts 4 beats.
                if let Err(e) = renew_lease(&leases, name).await {
                    eprintln!("kubelet {name}: renewing lease: {e:#}");
                }
                if let Err(e) = update_status(&nodes, &args, &since).await {
                    eprintln!("kubelet {name}: updating status: {e:#}");
                }
            }
            _ = pod_tick.tick(), if pods.is_some() => {
                if let Some(p) = pods.as_mut() {
                    p.sync().await;
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("kubelet {name}: stopping");
    if let Some(p) = pods.as_mut() {
        p.shutdown().await;
    }
    Ok(())
}

async fn register(nodes: &Api<Node>, args: &NodeAgentArgs, since: &Time) -> Result<()> {
    let name = &args.node_name;
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        (
            "litecluster.dev/process-kubelet".to_string(),
            "true".to_string(),
        ),
    ]);
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating Node"),
    }
    update_status(nodes, args, since).await
}

async fn update_status(nodes: &Api<Node>, args: &NodeAgentArgs, since: &Time) -> Result<()> {
    let now = Time(Timestamp::now());
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        // The agent's conditions never change status after registration.
        last_transition_time: Some(since.clone()),
    };
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("8".into())),
        ("memory".to_string(), Quantity("16Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ]);
    let status = NodeStatus {
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "process kubelet",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "process kubelet",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "process kubelet",
            ),
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "process kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: args.node_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: args.node_name.clone(),
            },
        ]),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            kubelet_version: crate::K8S_VERSION.into(),
            kube_proxy_version: String::new(),
            container_runtime_version: "litecluster-process://0.1".into(),
            os_image: "litecluster process kubelet".into(),
            kernel_version: String::new(),
            machine_id: String::new(),
            system_uuid: String::new(),
            boot_id: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(
            &args.node_name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .context("patching Node status")?;
    Ok(())
}

async fn renew_lease(leases: &Api<Lease>, name: &str) -> Result<()> {
    let spec = LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    };
    match leases.get_opt(name).await? {
        Some(mut lease) => {
            lease.spec = Some(spec);
            leases.replace(name, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}
