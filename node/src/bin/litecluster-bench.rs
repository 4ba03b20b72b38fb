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
    /// Also start clusters of the same size from these binaries (comma-separated): an `rqlited`,
    /// or another `litecluster-node` (an older build, say). Every workload runs against each,
    /// alternating, and the table shows each one's ratio to the first (needs --spawn).
    #[arg(long, value_name = "PATH_TO_RQLITED", value_delimiter = ',')]
    compare: Vec<PathBuf>,
    /// Rounds of every workload (with --compare, each round alternates which system goes first).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// A system to measure.
enum System {
    Rqlite(PathBuf),
    Litecluster(PathBuf),
    /// Already running at these URLs (no --spawn).
    External(Vec<String>),
}

/// One system under test, running.
struct Target {
    name: &'static str,
    urls: Vec<String>,
    leader: String,
    cluster: Option<LocalCluster>,
}

/// Per (op, clients): per target, every round's figures.
type Table = Vec<((String, usize), Vec<Vec<Figures>>)>;

/// One run's figures.
#[derive(Clone)]
struct Figures {
    ops_s: f64,
    rows_s: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    rss_mb: f64,
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
    for op in &args.ops {
        if !["insert", "batch", "strong", "linearizable"].contains(&op.as_str()) {
            bail!("unknown op {op:?}: use insert, batch, strong or linearizable");
        }
    }
    if !args.compare.is_empty() && args.spawn.is_none() {
        bail!("--compare starts both clusters itself: give --spawn N (for example --spawn 3)");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    // What to measure: each system's cluster runs alone, started for its turn and removed
    // after it, so an idle cluster never takes CPU from the one being measured.
    let mut systems: Vec<(&'static str, System)> = Vec::new();
    for bin in &args.compare {
        let rqlite = bin
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("rqlited"));
        systems.push(if rqlite {
            ("rqlite", System::Rqlite(bin.clone()))
        } else {
            ("other", System::Litecluster(bin.clone()))
        });
    }
    systems.push(match args.spawn {
        Some(_) => (
            "litecluster",
            System::Litecluster(std::env::current_exe()?.with_file_name("litecluster-node")),
        ),
        None => ("target", System::External(args.url.clone())),
    });
    let names: Vec<&str> = systems.iter().map(|(n, _)| *n).collect();
    let next_id = Arc::new(AtomicU64::new(1_000_000 + rand_seed()));
    let mut table: Table = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Alternate who goes first, so neither always runs on a warmer machine.
        let mut order: Vec<usize> = (0..systems.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for ti in order {
            let (name, system) = &systems[ti];
            let n = args.spawn.unwrap_or(0);
            let (urls, cluster) = match system {
                System::External(urls) => (urls.clone(), None),
                _ => {
                    let c = LocalCluster::start(system, n, ti).await?;
                    (c.urls.clone(), Some(c))
                }
            };
            let t = Target::new(name, urls, cluster, &client).await?;
            println!(
                "round {}: {} ({} member(s), leader {}), {}s per run",
                round + 1,
                t.name,
                t.urls.len(),
                t.leader,
                args.seconds
            );
            for op in &args.ops {
                for &clients in &args.clients {
                    let key = (op.clone(), clients);
                    let slot = match table.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            table.push((key, vec![Vec::new(); systems.len()]));
                            table.len() - 1
                        }
                    };
                    let f = run(&client, &t, op, clients, &args, next_id.clone()).await?;
                    println!(
                        "{}",
                        json!({
                            "system": t.name, "round": round + 1, "op": op, "clients": clients,
                            "seconds": args.seconds, "errors": f.errors,
                            "ops_per_sec": (f.ops_s * 10.0).round() / 10.0, "rows_per_sec": f.rows_s.round(),
                            "p50_ms": f.p50, "p99_ms": f.p99, "max_member_rss_mb": f.rss_mb.round(),
                        })
                    );
                    table[slot].1[ti].push(f);
                }
            }
        }
    }
    print_table(&names, &table);
    Ok(())
}

/// The median of each figure over the rounds.
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Figures {
        ops_s: mid(|f| f.ops_s),
        rows_s: mid(|f| f.rows_s),
        p50: mid(|f| f.p50),
        p99: mid(|f| f.p99),
        errors: runs.iter().map(|f| f.errors).sum(),
        rss_mb: mid(|f| f.rss_mb),
    }
}

fn print_table(names: &[&str], table: &Table) {
    println!(
        "\nmedian of {} round(s)",
        table.first().map_or(0, |(_, r)| r[0].len())
    );
    let mut head = format!("{:<14} {:>7}", "op", "clients");
    for t in names {
        head += &format!(
            " | {:>11} {:>8} {:>8} {:>7} {:>6}",
            format!("{} r/s", short(t)),
            "p50 ms",
            "p99 ms",
            "rss MB",
            "errors"
        );
    }
    for t in names.iter().skip(1) {
        head += &format!(" | {:>7}", format!("{}/{}", short(t), short(names[0])));
    }
    println!("{head}");
    for ((op, clients), per) in table {
        let mut line = format!("{op:<14} {clients:>7}");
        let meds: Vec<Figures> = per.iter().map(|r| median(r)).collect();
        for m in &meds {
            line += &format!(
                " | {:>11.0} {:>8.2} {:>8.2} {:>7.0} {:>6}",
                m.rows_s, m.p50, m.p99, m.rss_mb, m.errors
            );
        }
        for b in meds.iter().skip(1) {
            let a = &meds[0];
            line += &format!(
                " | {:>7.2}",
                if a.rows_s > 0.0 {
                    b.rows_s / a.rows_s
                } else {
                    0.0
                }
            );
        }
        println!("{line}");
    }
    println!("(r/s: requests per second, rows per second for batch; a/b: a's r/s over b's)");
}

fn short(name: &str) -> String {
    name.chars().take(6).collect()
}

impl Target {
    async fn new(
        name: &'static str,
        urls: Vec<String>,
        cluster: Option<LocalCluster>,
        client: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let leader = find_leader(client, &urls)
            .await
            .unwrap_or_else(|| urls[0].clone());
        post(
            client,
            &leader,
            "/db/execute",
            &json!(["CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, v TEXT)"]),
        )
        .await?;
        post(
            client,
            &leader,
            "/db/execute",
            &json!(["INSERT OR IGNORE INTO bench(id, v) VALUES (1, 'seed')"]),
        )
        .await?;
        Ok(Self {
            name,
            urls,
            leader,
            cluster,
        })
    }

    /// The largest resident set among the members we started, in MiB.
    fn rss_mb(&self) -> f64 {
        let Some(c) = &self.cluster else { return 0.0 };
        c.children
            .iter()
            .filter_map(|ch| std::fs::read_to_string(format!("/proc/{}/status", ch.id())).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .fold(0.0, f64::max)
            / 1024.0
    }
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
        // rqlite names its leader in /nodes.
        if let Ok(r) = client.get(format!("{u}/nodes")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(nodes) = v.as_object()
            && let Some(api) = nodes
                .values()
                .find(|n| n["leader"].as_bool() == Some(true))
                .and_then(|n| n["api_addr"].as_str())
        {
            return Some(api.to_owned());
        }
    }
    None
}

async fn run(
    client: &reqwest::Client,
    target: &Target,
    op: &str,
    clients: usize,
    args: &Args,
    next_id: Arc<AtomicU64>,
) -> anyhow::Result<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        // Writes go to the leader (as an rqlite client would after a redirect); reads spread.
        let base = if op == "insert" || op == "batch" {
            target.leader.clone()
        } else {
            target.urls[c % target.urls.len()].clone()
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
    let rss_mb = target.rss_mb();
    stop.store(true, Ordering::Relaxed);
    let mut total = Run::default();
    for t in tasks {
        let r = t.await?;
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies_us.extend(r.latencies_us);
    }
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let ops_s = total.ok as f64 / args.seconds;
    Ok(Figures {
        ops_s,
        rows_s: if op == "batch" {
            ops_s * args.batch_size as f64
        } else {
            ops_s
        },
        p50: pct(0.50),
        p99: pct(0.99),
        errors: total.errors,
        rss_mb,
    })
}

/// A throwaway local cluster for `--spawn`.
struct LocalCluster {
    dir: PathBuf,
    children: Vec<Child>,
    urls: Vec<String>,
    /// Members that came up.
    ready: usize,
}

impl LocalCluster {
    /// A cluster of `n` members of `system` on loopback; `slot` keeps clusters' ports and dirs
    /// apart.
    async fn start(system: &System, n: usize, slot: usize) -> anyhow::Result<Self> {
        let (exe, name, hint) = match system {
            System::Litecluster(p) => (
                p,
                "litecluster",
                "build it with `cargo build --release -p litecluster-node`",
            ),
            System::Rqlite(p) => (
                p,
                "rqlite",
                "build rqlite with ../shared/peers/build-rqlite.sh and pass the rqlited it prints",
            ),
            System::External(_) => bail!("an external system is not started"),
        };
        if !exe.exists() {
            bail!("{} not found: {hint}", exe.display());
        }
        let dir = std::env::temp_dir().join(format!("{name}-bench-{}-{slot}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let base = base_port(slot, n);
        let mut c = Self {
            dir: dir.clone(),
            children: Vec::new(),
            urls: Vec::new(),
            ready: 0,
        };
        let client = reqwest::Client::new();
        for i in 0..n {
            let (http, raft) = (base + 2 * i as u16, base + 2 * i as u16 + 1);
            let (http_addr, raft_addr) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{raft}"));
            let id = (i + 1).to_string();
            let data = dir.join(format!("n{id}"));
            let mut cmd = Command::new(exe);
            match system {
                System::Rqlite(_) => {
                    cmd.args([
                        "-node-id",
                        &id,
                        "-http-addr",
                        &http_addr,
                        "-raft-addr",
                        &raft_addr,
                    ]);
                    if i > 0 {
                        cmd.args(["-join", &format!("127.0.0.1:{}", base + 1)]);
                    }
                    cmd.arg(&data);
                }
                _ => {
                    cmd.args([
                        "--node-id",
                        &id,
                        "--http-addr",
                        &http_addr,
                        "--raft-addr",
                        &raft_addr,
                    ])
                    .arg("--data-dir")
                    .arg(&data)
                    .env("RUST_LOG", "warn");
                    if i == 0 {
                        cmd.arg("--bootstrap");
                    } else {
                        cmd.args(["--join", &c.urls[0]]);
                    }
                }
            }
            cmd.stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("n{id}.log")))?);
            c.children.push(cmd.spawn()?);
            let url = format!("http://{http_addr}");
            c.urls.push(url.clone());
            c.wait_ready(&client, &url, i).await?;
            c.ready += 1;
        }
        Ok(c)
    }

    async fn wait_ready(
        &self,
        client: &reqwest::Client,
        url: &str,
        i: usize,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "member {} did not become ready in 30 s; see the logs in {}",
                    i + 1,
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() || self.urls.len() > self.ready {
            // Keep the logs of a cluster that did not come up.
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first of `2 * n` ports for cluster `slot`: below Linux's ephemeral range (32768 up), so
/// an outgoing connection never holds one, and apart per process and per slot.
fn base_port(slot: usize, n: usize) -> u16 {
    20000 + (std::process::id() % 100) as u16 * 120 + (slot * 2 * n.max(1)) as u16
}
