//! `litecluster-operator`: wires flags, logging, the metrics/health server, leader election and
//! the controller. `litecluster-operator crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Parser, Subcommand};
use kube::Client;
use kube::runtime::events::Reporter;
use litecluster_operator::controller::{self, Context};
use litecluster_operator::leader_election::{Ended, LeaseLock, Timing, run_elected, wait_stop};
use litecluster_operator::metrics::Metrics;
use litecluster_operator::node_client::HttpNodeClient;
use tokio::sync::watch;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "litecluster-operator",
    version,
    about = "Kubernetes operator for litecluster SqliteClusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CRDs (SqliteCluster, SqliteBackup) as YAML.
    Crd {
        /// Write one file per CRD into this directory (repeatable) instead of printing them all.
        #[arg(long)]
        out: Vec<std::path::PathBuf>,
    },
    /// Run the operator (the default; the flags work with or without `run`).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(
        long,
        env = "LITECLUSTER_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// DNS domain of the Kubernetes cluster, used in member addresses.
    #[arg(
        long,
        env = "LITECLUSTER_OPERATOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// Elect a leader with a Lease so only one replica reconciles. Turn off only for a single replica.
    #[arg(long, env = "LITECLUSTER_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(
        long,
        env = "LITECLUSTER_OPERATOR_LEASE_NAME",
        default_value = "litecluster-operator"
    )]
    lease_name: String,
    /// This replica's identity in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease lasts. A standby takes over once the record has not changed for this long
    /// by its own clock; the holder stops reconciling after two thirds of it without a renewal.
    #[arg(long, env = "LITECLUSTER_OPERATOR_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..))]
    lease_seconds: u64,
    /// Watch SqliteClusters of this namespace only (the chart's `watchNamespace`, with a Role
    /// there instead of a ClusterRole). Empty: every namespace.
    #[arg(long, env = "LITECLUSTER_OPERATOR_WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// Timeout of a node's /status call, in seconds.
    #[arg(long, env = "LITECLUSTER_OPERATOR_NODE_TIMEOUT", default_value_t = 5)]
    node_timeout: u64,
    /// Log format: `text` (coloured only on a terminal, never with `NO_COLOR` set) or `json`.
    #[arg(long, env = "LITECLUSTER_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// How logs are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The causes, one per line; never a backtrace, whatever RUST_BACKTRACE says.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Cmd::Crd { out }) => {
            let files = litecluster_operator::crd::crd_files()?;
            if out.is_empty() {
                for (_, yaml) in &files {
                    print!("{yaml}");
                }
            }
            for dir in &out {
                for (name, yaml) in &files {
                    let path = dir.join(name);
                    std::fs::write(&path, yaml)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
            }
            return Ok(());
        }
        Some(Cmd::Run(args)) => args,
        None => cli.run,
    };
    init_tracing(args.log_format);

    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| "litecluster-operator".into())
    });
    let metrics = Arc::new(Metrics::default());
    let nodes = HttpNodeClient::new(
        Duration::from_secs(args.node_timeout),
        Duration::from_secs(120),
    )
    .context("cannot build the node HTTP client")?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(nodes),
        Reporter {
            controller: "litecluster-operator".into(),
            instance: Some(identity.clone()),
        },
        metrics.clone(),
        args.cluster_domain.clone(),
    ));
    let scope = controller::Scope::from_arg(&args.watch_namespace);
    info!(watching = %scope, "starting");

    let health = Health {
        metrics,
        ready: Arc::new(AtomicBool::new(false)),
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Ready once the API answered: a standby replica is ready too, so rollouts proceed.
    health.ready.store(true, Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let result = if args.leader_election {
        let lock = LeaseLock::new(
            client,
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds),
        );
        let timing = Timing::for_lease(Duration::from_secs(args.lease_seconds));
        match run_elected(lock, timing, stop_rx, |stop| {
            controller::run(ctx, scope, stop)
        })
        .await?
        {
            Ended::Stopped => Ok(()),
            // Exit so the Deployment restarts us as a fresh candidate.
            Ended::Lost => Err(anyhow::anyhow!("lost the leader Lease")),
        }
    } else {
        controller::run(ctx, scope, wait_stop(stop_rx)).await;
        Ok(())
    };
    server.abort();
    result
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn metrics_handler(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
