//! `litecluster-bench`: drives concurrent HTTP clients against any rqlite-compatible API and
//! prints throughput and latency, as one JSON line per run and a table.
//!
//! With `--spawn N` it first starts an N-member local cluster of `litecluster-node` (the binary
//! next to this one) on loopback, and removes it afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Benchmark an rqlite-compatible HTTP API (litecluster or rqlite)")]
struct Args {
    /// Base URLs of the members, comma-separated; clients spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:4001")]
    url: Vec<String>,
    /// Start a local cluster of this many members instead of using --url.
    #[arg(long)]
    spawn: Option<usize>,
    /// Concurrent client counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Workloads: insert, batch, strong, linearizable (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "insert,batch,strong,linearizable"
    )]
    ops: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rows per request for the `batch` workload.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
}

#[derive(Default)]
struct Run {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cluster = None;
    let urls = match args.spawn {
        Some(n) => {
            let c = LocalCluster::start(n).await?;
            let urls = c.urls.clone();
            cluster = Some(c);
            urls
        }
        None => args.url.clone(),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let leader = find_leader(&client, &urls)
        .await
        .unwrap_or_else(|| urls[0].clone());
    post(
        &client,
        &leader,
        "/db/execute",
        &json!(["CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, v TEXT)"]),
    )
    .await?;
    post(
        &client,
        &leader,
        "/db/execute",
        &json!(["INSERT OR IGNORE INTO bench(id, v) VALUES (1, 'seed')"]),
    )
    .await?;
    let next_id = Arc::new(AtomicU64::new(1_000_000 + rand_seed()));
    println!(
        "target: {} member(s), leader {leader}; {}s per run",
        urls.len(),
        args.seconds
    );
    let mut rows = Vec::new();
    for op in &args.ops {
        for &clients in &args.clients {
            let run = run(&client, &urls, &leader, op, clients, &args, next_id.clone()).await?;
            let secs = args.seconds;
            let mut lat = run.latencies_us;
            lat.sort_unstable();
            let pct = |p: f64| {
                lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0) as f64
                    / 1000.0
            };
            let ops_s = run.ok as f64 / secs;
            let rows_s = if op == "batch" {
                ops_s * args.batch_size as f64
            } else {
                ops_s
            };
            let line = json!({
                "op": op, "clients": clients, "seconds": secs, "requests": run.ok, "errors": run.errors,
                "ops_per_sec": (ops_s * 10.0).round() / 10.0, "rows_per_sec": rows_s.round(),
                "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            });
            println!("{line}");
            rows.push((
                op.clone(),
                clients,
                ops_s,
                rows_s,
                pct(0.5),
                pct(0.99),
                run.errors,
            ));
        }
    }
    println!(
        "\n{:<14} {:>7} {:>11} {:>11} {:>9} {:>9} {:>7}",
        "op", "clients", "req/s", "rows/s", "p50 ms", "p99 ms", "errors"
    );
    for (op, c, o, r, p50, p99, e) in rows {
        println!("{op:<14} {c:>7} {o:>11.1} {r:>11.0} {p50:>9.2} {p99:>9.2} {e:>7}");
    }
    drop(cluster);
    Ok(())
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64 % 1_000_000)
        * 1_000_000
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r
        .json()
        .await
        .with_context(|| format!("{path}: non-JSON reply ({status})"))?;
    if !status.is_success() {
        bail!("{path}: {status} {v}");
    }
    Ok(v)
}

async fn find_leader(client: &reqwest::Client, urls: &[String]) -> Option<String> {
    for u in urls {
        if let Ok(r) = client.get(format!("{u}/status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(api) = v["store"]["leader"]["api_addr"].as_str()
        {
            return Some(api.to_owned());
        }
    }
    None
}

async fn run(
    client: &reqwest::Client,
    urls: &[String],
    leader: &str,
    op: &str,
    clients: usize,
    args: &Args,
    next_id: Arc<AtomicU64>,
) -> anyhow::Result<Run> {
    if !["insert", "batch", "strong", "linearizable"].contains(&op) {
        bail!("unknown op {op:?}: use insert, batch, strong or linearizable");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        // Writes go to the leader (as an rqlite client would after a redirect); reads spread.
        let base = if op == "insert" || op == "batch" {
            leader.to_owned()
        } else {
            urls[c % urls.len()].clone()
        };
        let (client, stop, next_id, op, batch) = (
            client.clone(),
            stop.clone(),
            next_id.clone(),
            op.to_owned(),
            args.batch_size,
        );
        tasks.push(tokio::spawn(async move {
            let mut run = Run::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let req = match op.as_str() {
                    "insert" => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        client.post(format!("{base}/db/execute")).json(&json!([[
                            "INSERT INTO bench(id, v) VALUES(?, ?)",
                            id,
                            "value"
                        ]]))
                    }
                    "batch" => {
                        let first = next_id.fetch_add(batch as u64, Ordering::Relaxed);
                        let stmts: Vec<_> = (0..batch as u64)
                            .map(|k| {
                                json!(["INSERT INTO bench(id, v) VALUES(?, ?)", first + k, "value"])
                            })
                            .collect();
                        client.post(format!("{base}/db/execute")).json(&stmts)
                    }
                    level => client.get(format!(
                        "{base}/db/query?q=SELECT+v+FROM+bench+WHERE+id%3D1&level={level}"
                    )),
                };
                let ok = match req.send().await {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .is_ok_and(|b| !b.windows(8).any(|w| w == b"\"error\":")),
                    _ => false,
                };
                if ok {
                    run.ok += 1;
                    run.latencies_us.push(started.elapsed().as_micros() as u64);
                } else {
                    run.errors += 1;
                }
            }
            run
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Run::default();
    for t in tasks {
        let r = t.await?;
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies_us.extend(r.latencies_us);
    }
    Ok(total)
}

/// A throwaway local cluster for `--spawn`.
struct LocalCluster {
    dir: PathBuf,
    children: Vec<Child>,
    urls: Vec<String>,
}

impl LocalCluster {
    async fn start(n: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?.with_file_name("litecluster-node");
        if !exe.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p litecluster-node`",
                exe.display()
            );
        }
        let dir = std::env::temp_dir().join(format!("litecluster-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let base = 24000 + (std::process::id() % 1000) as u16 * 10;
        let mut c = Self {
            dir: dir.clone(),
            children: Vec::new(),
            urls: Vec::new(),
        };
        let client = reqwest::Client::new();
        for i in 0..n {
            let (http, raft) = (base + 2 * i as u16, base + 2 * i as u16 + 1);
            let url = format!("http://127.0.0.1:{http}");
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--node-id",
                &(i + 1).to_string(),
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--raft-addr",
                &format!("127.0.0.1:{raft}"),
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("n{}", i + 1)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("n{}.log", i + 1)))?);
            if i == 0 {
                cmd.arg("--bootstrap");
            } else {
                cmd.args(["--join", &c.urls[0]]);
            }
            c.children.push(cmd.spawn()?);
            c.urls.push(url.clone());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if client
                    .get(format!("{url}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "member {} did not become ready; see {}",
                        i + 1,
                        dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(c)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
