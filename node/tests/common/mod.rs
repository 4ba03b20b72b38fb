//! Test harness: real `litecluster-node` processes on loopback, each test on its own ports.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_litecluster-node");

/// A loopback port for a test server, handed out once per test process.
///
/// Ports come from below the kernel's ephemeral range (32768+ by default): a port
/// taken from `bind(:0)` is ephemeral, and between the probe and the child's own
/// bind an outgoing connection anywhere on the machine may take it.
/// Snapshots only when asked, so a test controls every attempt.
pub const MANUAL_SNAPSHOTS: [&str; 6] = [
    "--snapshot-threshold",
    "1000000",
    "--snapshot-interval",
    "1h",
    "--snapshot-wal-size",
    "1000000000",
];

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Spread concurrent test processes apart by pid; the bind check covers the rest.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}

pub struct Member {
    pub name: String,
    pub http: u16,
    pub raft: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub fn start(&mut self, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["--node-id", &self.name])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .args(["--raft-addr", &format!("127.0.0.1:{}", self.raft)])
            // Tight timing keeps the tests quick; a member given its own keeps that.
            .args(if self.extra.iter().any(|a| a == "--election-timeout") {
                &[][..]
            } else {
                &[
                    "--election-timeout",
                    "500ms",
                    "--heartbeat-interval",
                    "100ms",
                ][..]
            })
            .args(args)
            .args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("LITECLUSTER_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn litecluster-node");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.as_ref().expect("member running").id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits for the process to exit by itself (e.g. at a failpoint) and returns its status.
    /// Whether the member exits within `timeout` (it keeps its status for [`Self::wait_exit`]).
    pub fn exits_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => return true,
                _ if Instant::now() > deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("member running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("member {} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    pub http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                // A panic's first lines matter most: show them, then the tail.
                let n = std::env::var("LITECLUSTER_TEST_LOG_LINES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(40);
                let lines: Vec<&str> = log.lines().collect();
                for (i, _) in lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.contains("panicked at"))
                    .take(3)
                {
                    eprintln!(
                        "member {} panicked: {}",
                        m.name,
                        lines[i..(i + 2).min(lines.len())].join(" / ")
                    );
                }
                let tail: Vec<&str> = log.lines().rev().take(n).collect();
                eprintln!("---- log of member {} (last {n} lines) ----", m.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for m in &mut self.members {
            m.kill();
        }
        if std::env::var_os("LITECLUSTER_KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    /// An empty harness in a fresh temp dir.
    pub fn empty(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lc-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            members: Vec::new(),
            http: client(),
        }
    }

    /// Adds a member (not started) with extra flags used on every start.
    pub fn add(&mut self, name: &str, extra: &[&str]) -> usize {
        let dir = self.dir.join(name);
        let log = self.dir.join(format!("{name}.log"));
        self.members.push(Member {
            name: name.to_owned(),
            http: free_port(),
            raft: free_port(),
            dir,
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
        });
        self.members.len() - 1
    }

    /// Starts `n` voters: the first bootstraps, the rest join it. Waits until all are members.
    pub async fn start(test: &str, n: usize, extra: &[&str]) -> Self {
        let mut c = Self::empty(test);
        for i in 1..=n {
            c.add(&i.to_string(), extra);
        }
        c.members[0].start(&["--bootstrap".into()]);
        c.wait_ready(0).await;
        let join = c.members[0].url();
        for i in 1..n {
            c.members[i].start(&["--join".into(), join.clone()]);
        }
        c.wait_voters(n).await;
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    pub fn url(&self, i: usize) -> String {
        self.members[i].url()
    }

    pub async fn get(&self, i: usize, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http.get(format!("{}{path}", self.url(i))).send().await
    }

    pub async fn status(&self, i: usize) -> Value {
        self.get(i, "/status").await.unwrap().json().await.unwrap()
    }

    pub async fn wait_ready(&self, i: usize) {
        wait_for(
            &format!("member {} ready", self.members[i].name),
            Duration::from_secs(30),
            || async {
                self.get(i, "/readyz")
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }

    /// Waits until the leader's membership has `n` voters.
    pub async fn wait_voters(&self, n: usize) {
        wait_for(&format!("{n} voters"), Duration::from_secs(30), || async {
            for i in 0..self.members.len() {
                if !self.members[i].running() {
                    continue;
                }
                if let Ok(r) = self.get(i, "/status").await
                    && let Ok(s) = r.json::<Value>().await
                    && s["store"]["raft"]["state"] == "Leader"
                {
                    let voters = s["store"]["members"]
                        .as_array()
                        .map_or(0, |m| m.iter().filter(|x| x["voter"] == true).count());
                    return voters == n;
                }
            }
            false
        })
        .await;
    }

    /// Index of the running member that is leader (as the members agree).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for i in 0..self.members.len() {
                if !self.members[i].running() {
                    continue;
                }
                if let Ok(r) = self.get(i, "/status").await
                    && let Ok(s) = r.json::<Value>().await
                    && s["store"]["raft"]["state"] == "Leader"
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader within 30s");
    }

    /// `POST /snapshot[?type=full]` on member `i`; the snapshot health it answers with.
    pub async fn snapshot(&self, i: usize, full: bool) -> Value {
        let q = if full { "?type=full" } else { "" };
        let r = self
            .http
            .post(format!("{}/snapshot{q}", self.url(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST /snapshot{q} on member {i}");
        r.json::<Value>().await.unwrap()["snapshot"].clone()
    }

    /// A stable digest of a table's rows on member `i` (local read).
    pub async fn dump(&self, i: usize, table: &str) -> String {
        let v = self
            .query(i, &format!("SELECT * FROM {table} ORDER BY 1"), "none")
            .await;
        let text = v["results"][0]["values"].to_string();
        format!("{:08x}:{}", crc32fast::hash(text.as_bytes()), text.len())
    }

    pub async fn execute(&self, i: usize, body: Value) -> reqwest::Result<Value> {
        self.http
            .post(format!("{}/db/execute", self.url(i)))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    pub async fn query(&self, i: usize, sql: &str, level: &str) -> Value {
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("q", sql)
            .append_pair("level", level)
            .finish();
        let r = self
            .http
            .get(format!("{}/db/query?{qs}", self.url(i)))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "query on member {i} failed: {}",
            r.status()
        );
        r.json().await.unwrap()
    }

    /// First column of every row of a local (`level=none`) query.
    pub async fn column(&self, i: usize, sql: &str) -> Vec<Value> {
        let v = self.query(i, sql, "none").await;
        v["results"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|row| row[0].clone())
            .collect()
    }

    pub async fn applied(&self, i: usize) -> u64 {
        self.status(i).await["store"]["raft"]["applied_index"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until member `i` has caught up, then checks it stores every id in `acked`
    /// (table `t`, as [`WriteStream`] writes it).
    pub async fn assert_has_all(&self, i: usize, acked: &std::collections::BTreeSet<u64>) {
        self.wait_caught_up(i).await;
        let have: std::collections::BTreeSet<u64> = self
            .column(i, "SELECT id FROM t")
            .await
            .into_iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let missing: Vec<_> = acked.difference(&have).take(10).collect();
        assert!(
            missing.is_empty(),
            "member {i} lost acknowledged writes, e.g. {missing:?}"
        );
    }

    /// Waits until member `i` has applied at least what the leader has.
    pub async fn wait_caught_up(&self, i: usize) {
        let leader = self.leader().await;
        let target = self.applied(leader).await;
        wait_for(
            &format!("member {i} applied >= {target}"),
            Duration::from_secs(60),
            || async { self.get(i, "/status").await.is_ok() && self.applied(i).await >= target },
        )
        .await;
    }
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn rows(v: &Value) -> usize {
    v["results"][0]["values"].as_array().map_or(0, Vec::len)
}

pub fn create_table() -> Value {
    json!(["CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"])
}

pub fn dir_exists(p: &Path) -> bool {
    p.exists()
}

/// A private CA and one certificate it signs for 127.0.0.1/localhost, made with openssl in
/// `dir`: returns (ca.pem, cert.pem, key.pem). The leaf has no extended key usage, so it serves
/// as both a server and a client certificate.
pub fn test_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // webpki refuses a CA certificate as a leaf, hence two certificates.
    let script = "set -e; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr; \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out cert.pem";
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// Writers inserting rows with unique ids into `t` through every member in turn; remembers
/// which inserts were acknowledged. A failed insert is not retried with the same id: it may or
/// may not exist.
pub struct WriteStream {
    pub acked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteStream {
    pub fn start(urls: Vec<String>, writers: u64) -> Self {
        use std::sync::atomic::Ordering;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let (acked, stop, urls, http) =
                    (acked.clone(), stop.clone(), urls.clone(), client());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = w * 1_000_000 + n;
                        let url = &urls[(n as usize + w as usize) % urls.len()];
                        n += 1;
                        let body = json!([["INSERT INTO t(id, v) VALUES(?, ?)", id, "x"]]);
                        let res = http
                            .post(format!("{url}/db/execute"))
                            .json(&body)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        if let Ok(r) = res
                            && r.status().is_success()
                            && let Ok(v) = r.json::<Value>().await
                            && v["results"][0]["rows_affected"] == 1
                        {
                            acked.lock().unwrap().insert(id);
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            acked,
            stop,
            writers,
        }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers and returns the acknowledged ids.
    pub async fn stop(self) -> std::collections::BTreeSet<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.writers {
            w.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}
