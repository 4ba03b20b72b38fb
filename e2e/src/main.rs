//! `litecluster-e2e`: build, start and stop the e2e control plane by hand.
//!
//! ```text
//! litecluster-e2e build            # build/cache the binaries, print the bin dir
//! litecluster-e2e up [RUN_DIR]     # start etcd + control plane, leave it running
//! litecluster-e2e down [RUN_DIR]   # stop everything started in RUN_DIR, remove it
//! litecluster-e2e kubelet --kubeconfig F --node-name N   # a node agent (started by `up`)
//! ```
//! RUN_DIR defaults to `<workspace>/.e2e/run` (or `$LITECLUSTER_E2E_DIR/run`).

use std::{path::PathBuf, process::ExitCode};

use litecluster_e2e::{
    ControlPlane, Options, control_plane::default_run_dir, down, ensure_binaries,
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
        Some("down") => down(&run_dir()),
        Some("kubelet") => litecluster_e2e::kubelet::NodeAgentArgs::parse(&args[1..]).and_then(|a| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(litecluster_e2e::kubelet::run(a))
        }),
        _ => {
            eprintln!("usage: litecluster-e2e build | up [RUN_DIR] | down [RUN_DIR] | kubelet --kubeconfig F --node-name N");
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
