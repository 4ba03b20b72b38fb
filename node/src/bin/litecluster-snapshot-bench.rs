//! `litecluster-snapshot-bench`: how long incremental and full snapshots take as the database
//! grows. For each size it starts a single `litecluster-node` (the binary next to this one),
//! grows its database to the size, writes a few MB of new WAL through the API, and times
//! `POST /snapshot` (incremental) and `POST /snapshot?type=full`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Time incremental vs full snapshots for several database sizes")]
struct Args {
    /// Database sizes in MB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    sizes_mb: Vec<u64>,
    /// MB of new data written through the API before each timed snapshot.
    #[arg(long, default_value_t = 4)]
    wal_mb: u64,
    /// Where to put the databases (needs about 3x the largest size free).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Member {
    child: Child,
    url: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(
    exe: &Path,
    dir: &Path,
    port: u16,
    client: &reqwest::Client,
) -> anyhow::Result<Member> {
    let child = Command::new(exe)
        .args([
            "--node-id",
            "1",
            "--bootstrap",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--raft-addr",
            &format!("127.0.0.1:{}", port + 1),
        ])
        .args([
            "--snapshot-threshold",
            "100000000",
            "--snapshot-interval",
            "24h",
            "--snapshot-wal-size",
            "100000000000",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log"))?)
        .spawn()?;
    let m = Member {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !client
        .get(format!("{}/readyz", m.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!(
                "node did not become ready; see {}",
                dir.with_extension("log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(m)
}

async fn snapshot(
    client: &reqwest::Client,
    m: &Member,
    full: bool,
) -> anyhow::Result<(String, u64)> {
    let q = if full { "?type=full" } else { "" };
    let v: Value = client
        .post(format!("{}/snapshot{q}", m.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let s = &v["snapshot"]["last_success"];
    Ok((
        s["kind"].as_str().unwrap_or("?").to_owned(),
        s["duration_ms"].as_u64().unwrap_or(0),
    ))
}

async fn write_new(client: &reqwest::Client, m: &Member, mb: u64, base: u64) -> anyhow::Result<()> {
    // 100 rows of 1 KiB per request.
    let blob = "x".repeat(1024);
    for req in 0..mb * 10 {
        let stmts: Vec<Value> = (0..100)
            .map(|k| {
                json!([
                    "INSERT INTO filler(id, v) VALUES(?, ?)",
                    base + req * 100 + k,
                    blob
                ])
            })
            .collect();
        client
            .post(format!("{}/db/execute", m.url))
            .json(&stmts)
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// Grows the database to `mb` with the node stopped (through SQLite directly: loading 1 GB
/// through the Raft log would measure the log, not snapshots).
fn grow(db: &Path, mb: u64) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare("INSERT INTO filler(v) VALUES (randomblob(4000))")?;
        for _ in 0..mb * 256 {
            stmt.execute([])?;
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exe = std::env::current_exe()?.with_file_name("litecluster-node");
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p litecluster-node`",
            exe.display()
        );
    }
    let root = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("litecluster-snapbench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&root)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let mut rows = Vec::new();
    for (n, &mb) in args.sizes_mb.iter().enumerate() {
        let dir = root.join(format!("{mb}mb"));
        let port = 25000 + (std::process::id() % 500) as u16 * 10 + n as u16 * 2;
        {
            let m = start(&exe, &dir, port, &client).await?;
            client
                .post(format!("{}/db/execute", m.url))
                .json(&json!([
                    "CREATE TABLE filler (id INTEGER PRIMARY KEY, v BLOB)"
                ]))
                .send()
                .await?
                .error_for_status()?;
        }
        eprintln!("growing database to {mb} MB...");
        let t = Instant::now();
        grow(&dir.join("db.sqlite"), mb).context("growing the database")?;
        eprintln!("  done in {:.1}s", t.elapsed().as_secs_f64());
        let m = start(&exe, &dir, port, &client).await?;
        // After a restart the first snapshot is full; it becomes the chain's base.
        snapshot(&client, &m, true).await?;
        let db_bytes = std::fs::metadata(dir.join("db.sqlite"))?.len();
        write_new(&client, &m, args.wal_mb, 1 << 40).await?;
        let wal_bytes = std::fs::metadata(dir.join("db.sqlite-wal")).map_or(0, |x| x.len());
        let (kind, inc_ms) = snapshot(&client, &m, false).await?;
        if kind != "incremental" {
            bail!("expected an incremental snapshot, got {kind}");
        }
        write_new(&client, &m, args.wal_mb, 2 << 40).await?;
        let (_, full_ms) = snapshot(&client, &m, true).await?;
        let line = json!({"db_mb": db_bytes / (1 << 20), "new_wal_mb": wal_bytes as f64 / (1 << 20) as f64, "incremental_ms": inc_ms, "full_ms": full_ms});
        println!("{line}");
        rows.push((
            db_bytes / (1 << 20),
            wal_bytes as f64 / (1 << 20) as f64,
            inc_ms,
            full_ms,
        ));
        drop(m);
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "\n{:>8} {:>10} {:>16} {:>10}",
        "db MB", "new WAL MB", "incremental ms", "full ms"
    );
    for (db, wal, inc, full) in rows {
        println!("{db:>8} {wal:>10.1} {inc:>16} {full:>10}");
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
