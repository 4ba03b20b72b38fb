//! The node side of the process-backed kubelet: Nodes register, stay Ready
//! past the controller manager's grace period because their Leases are
//! renewed, get a podCIDR, receive scheduled Pods, and go NotReady once their
//! kubelet stops.

use std::time::{Duration, Instant};

use litecluster_e2e::{ControlPlane, Options};

const GRACE: &str = "20s";

#[test]
fn nodes_register_heartbeat_and_go_not_ready_when_stopped() {
    let mut opts = Options::for_test("nodes");
    // Shorter than the default 50 s so the test sees both outcomes quickly.
    opts.extra_controller_manager_args = vec![format!("--node-monitor-grace-period={GRACE}")];
    let mut cp = ControlPlane::start(opts).expect("control plane starts");
    let result = scenario(&mut cp);
    if let Err(e) = &result {
        eprintln!("{}", cp.log_tails(30));
        panic!("nodes scenario failed: {e:#}");
    }
    cp.stop().expect("teardown");
}

fn scenario(cp: &mut ControlPlane) -> anyhow::Result<()> {
    cp.add_nodes(&["node-a", "node-b"])?;
    for n in ["node-a", "node-b"] {
        let cidr = cp.kubectl_ok(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"])?;
        // A /24 of the cluster CIDR (the pod network's 10.<200+N>.0.0/16).
        let prefix = cp.cluster_cidr.trim_end_matches("0.0/16").to_string();
        anyhow::ensure!(
            cidr.starts_with(&prefix) && cidr.ends_with("/24"),
            "{n} podCIDR {cidr:?} not in {}",
            cp.cluster_cidr
        );
        let holder = cp.kubectl_ok(&[
            "-n",
            "kube-node-lease",
            "get",
            "lease",
            n,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?;
        anyhow::ensure!(holder == n, "lease {n} held by {holder:?}");
    }

    // A Pod gets bound to one of the nodes by the real scheduler.
    cp.kubectl_ok(&[
        "run",
        "sched-probe",
        "--image=litecluster-node",
        "--restart=Never",
    ])?;
    wait(cp, Duration::from_secs(30), "sched-probe bound", |cp| {
        let n = cp.kubectl_ok(&[
            "get",
            "pod",
            "sched-probe",
            "-o",
            "jsonpath={.spec.nodeName}",
        ])?;
        Ok(n.starts_with("node-"))
    })?;

    // Past the grace period both are still Ready: each Lease has been renewed at a time
    // later than the grace period from now (the kubelets share this machine's clock).
    let past_grace =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(25);
    wait(
        cp,
        Duration::from_secs(90),
        "Leases renewed past the grace period",
        |cp| {
            for n in ["node-a", "node-b"] {
                let renewed = cp.kubectl_ok(&[
                    "get",
                    "lease",
                    n,
                    "-n",
                    "kube-node-lease",
                    "-o",
                    "jsonpath={.spec.renewTime}",
                ])?;
                let renewed: k8s_openapi::jiff::Timestamp = renewed.trim().parse()?;
                if renewed < past_grace {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    for n in ["node-a", "node-b"] {
        anyhow::ensure!(cp.node_ready(n)?, "{n} not Ready after the grace period");
    }

    // Stop one kubelet: the node lifecycle controller marks it not ready.
    cp.stop_component("kubelet-node-b")?;
    wait(cp, Duration::from_secs(60), "node-b NotReady", |cp| {
        Ok(!cp.node_ready("node-b")?)
    })?;
    anyhow::ensure!(cp.node_ready("node-a")?, "node-a lost Ready too");
    Ok(())
}

fn wait(
    cp: &ControlPlane,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&ControlPlane) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f(cp)? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
