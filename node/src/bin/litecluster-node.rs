//! `litecluster-node`: parses flags, sets up logging, runs the member until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use litecluster_node::config::{Cli, Cmd, LogFormat};
use litecluster_node::node::Node;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.node.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return report(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// The error and its causes, one per line; never a backtrace (most errors are the user's to
/// fix, and `RUST_BACKTRACE` is often set for other programs).
fn report(e: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    std::process::ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => serve(cli.node).await,
        Cmd::Backup { action } => {
            let out = litecluster_node::backup::cli::run(action)
                .await
                .map_err(|e| anyhow::anyhow!(litecluster_node::backup::chain(&e)))?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Colour only for a person at a terminal: container logs and files get plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: litecluster_node::config::NodeConfig) -> anyhow::Result<()> {
    let node = Node::start(config).await.context("starting node")?;
    tracing::info!(id = %node.info.name, api = %node.info.api_addr, raft = %node.info.raft_addr, "node started");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(litecluster_node::http::serve(node.clone(), async {
        let _ = stop_rx.await;
    }));
    // A Raft core that stopped (a storage error: disk full, I/O) cannot come back in this
    // process; exit so that the supervisor restarts the member, which then retries.
    let mut metrics = node.raft.metrics();
    let fatal = async move {
        match metrics.wait_for(|m| m.running_state.is_err()).await {
            Ok(m) => match &m.running_state {
                Err(e) => e.to_string(),
                Ok(()) => "the Raft core stopped".into(),
            },
            Err(_) => "the Raft core stopped".into(),
        }
    };
    tokio::select! {
        res = server => return res.context("http server task")?,
        _ = shutdown_signal() => {}
        reason = fatal => {
            tracing::error!(%reason, "raft stopped; exiting so the member restarts (free disk space first if it is full)");
            anyhow::bail!("raft stopped: {reason}");
        }
    }
    tracing::info!("shutting down");
    // Hand over leadership while the API still answers, then stop serving.
    node.shutdown().await;
    let _ = stop_tx.send(());
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
