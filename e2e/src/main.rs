//! `litecluster-e2e`: build, start and stop the e2e control plane by hand.
//!
//! ```text
//! litecluster-e2e build            # build/cache the binaries, print the bin dir
//! litecluster-e2e up [RUN_DIR]     # start etcd + control plane, leave it running
//! litecluster-e2e demo [RUN_DIR]   # up + helm install of the operator + examples/minimal.yaml, wait Ready
//! litecluster-e2e down [RUN_DIR]   # stop everything started in RUN_DIR, remove it
//! litecluster-e2e kubelet --kubeconfig F --node-name N   # a node agent (started by `up`)
//! ```
//! RUN_DIR defaults to `<workspace>/.e2e/run` (or `$LITECLUSTER_E2E_DIR/run`).

use std::{path::PathBuf, process::ExitCode};

use litecluster_e2e::{
    ControlPlane, Options, control_plane::default_run_dir, down, ensure_binaries, stack::Stack,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run_dir = || {
        args.get(1)
            .map(PathBuf::from)
            .unwrap_or_else(default_run_dir)
    };
    let result = match args.first().map(String::as_str) {
        Some("build") => ensure_binaries().map(|b| println!("{}", b.dir.display())),
        Some("up") => ControlPlane::start(Options::new(run_dir())).and_then(|mut cp| {
            let nodes: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
            cp.add_nodes(&nodes.iter().map(String::as_str).collect::<Vec<_>>())?;
            let kubeconfig = cp.kubeconfig.clone();
            let dir = cp.detach();
            println!("export KUBECONFIG={}", kubeconfig.display());
            eprintln!(
                "control plane running; logs in {0}/logs; `source {0}/env` for KUBECONFIG and helm on PATH; stop with `litecluster-e2e down {0}`",
                dir.display()
            );
            Ok(())
        }),
        Some("demo") => demo(run_dir()),
        Some("down") => down(&run_dir()),
        Some("pod-exec") => litecluster_e2e::pods::pod_exec(&args[1..]),
        Some("addons") => litecluster_e2e::addons::AddonsArgs::parse(&args[1..]).and_then(|a| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(litecluster_e2e::addons::run(a))
        }),
        Some("kubelet") => litecluster_e2e::kubelet::NodeAgentArgs::parse(&args[1..]).and_then(|a| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(litecluster_e2e::kubelet::run(a))
        }),
        _ => {
            eprintln!("usage: litecluster-e2e build | up [RUN_DIR] | demo [RUN_DIR] | down [RUN_DIR] | kubelet --kubeconfig F --node-name N");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("litecluster-e2e: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The newcomer's path: the whole stack, the minimal example Ready, left running.
fn demo(run_dir: PathBuf) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let stack = litecluster_e2e::stack::Stack::up(Options::new(run_dir))?;
    let example = litecluster_e2e::binaries::workspace_root().join("examples/minimal.yaml");
    let t = Instant::now();
    let result = stack
        .apply_file("default", &example)
        .and_then(|_| stack.wait_ready("default", "mydb", 3, Duration::from_secs(300)));
    let status = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}", stack.diagnostics(Some("default")));
            return Err(e);
        }
    };
    let leader = status["leader"].as_str().unwrap_or_default().to_string();
    let dir = stack.cp.run_dir.clone();
    // TLS is on by default: the operator issued the cluster's CA; clients trust it.
    let ep = stack.endpoint("default", "mydb", &leader)?;
    let ca = dir.join("mydb-ca.crt");
    let (host, issued) = ep.tls.clone().unwrap_or_default();
    std::fs::copy(&issued, &ca)?;
    let ip = ep.addr.trim_end_matches(":4001");
    let curl = format!(
        "curl --cacert {} --resolve {host}:4001:{ip} 'https://{host}:4001",
        ca.display()
    );
    eprintln!(
        "SqliteCluster default/mydb Ready 3/3 in {:.1}s (whole stack {:.1}s); leader {leader}",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let Stack { cp } = stack;
    let dir2 = cp.detach();
    debug_assert_eq!(dir, dir2);
    println!(
        "\nThe stack is running (logs: {d}/logs, pod logs: {d}/pods/<ns>_<pod>/<container>.log).\n\
         \n  source {d}/env                       # KUBECONFIG, helm and the control-plane binaries\n\
         \x20 kubectl get slc,pods -o wide\n\
         \x20 {curl}/db/execute?pretty' -d '[\"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)\", [\"INSERT INTO t(v) VALUES(?)\", \"hello\"]]'\n\
         \x20 {curl}/db/query?pretty&level=strong&q=SELECT+*+FROM+t'\n\
         \x20 kubectl scale slc/mydb --replicas=5\n\
         \nPods are reachable from this machine at their IPs; inside pods, \
         mydb-N.mydb-headless.default.svc.cluster.local resolves. The API is HTTPS with a \
         certificate the operator issued (Secret mydb-tls; its CA is {ca}).\n\
         Stop everything: cargo run -p litecluster-e2e -- down {d}\n",
        d = dir.display(),
        ca = ca.display(),
    );
    Ok(())
}
