//! The snapshot remediation ladder, end to end, with the real failure: a reader outside the
//! member holds a read transaction on its database (rqlite's `failed to completely checkpoint
//! WAL`), so every WAL checkpoint of that member fails. The operator must escalate one step at
//! a time — a full snapshot, then, the failures persisting, a restart of the member — and when
//! the reader ends, snapshots recover and the operator says so. No acknowledged write may be
//! lost on the way. (The later rungs, a rolling restart and giving up, are unit-tested: a host
//! process cannot reliably keep its hold on a database a restarted member may replace.)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use litecluster_e2e::Options;
use litecluster_e2e::stack::{Stack, http, with_diagnostics};

const NS: &str = "remedy";
const NAME: &str = "stuck";

#[test]
fn stuck_checkpoints_climb_the_remediation_ladder_then_recover() {
    let s = Stack::up(Options::for_test("remediation")).expect("bringing up the stack");
    s.cp.kubectl_ok(&["create", "namespace", NS])
        .expect("namespace");
    with_diagnostics(&s, NS, || run(&s)).unwrap();
}

fn run(s: &Stack) -> Result<()> {
    let started = Instant::now();
    // Without TLS: the writer thread addresses members by pod IP over plain HTTP (TLS by
    // default has its own scenarios).
    s.apply_yaml(
        NS,
        &format!(
            "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: {NAME}\n\
             spec:\n  replicas: 3\n  voters: 3\n  storage:\n    size: 1Gi\n  snapshot:\n    \
             threshold: 20\n    trailingLogs: 10\n    remediationThreshold: 2\n    remediationInterval: 15s\n  \
             tls:\n    enabled: false\n"
        ),
    )?;
    s.wait_ready(NS, NAME, 3, Duration::from_secs(240))?;
    let addrs: Vec<String> = (0..3)
        .map(|i| member(s, &format!("{NAME}-{i}")))
        .collect::<Result<_>>()?;
    let (code, body) = http(
        "POST",
        &addrs[0],
        "/db/execute",
        Some(r#"["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]"#),
    )?;
    ensure!(code == 200, "create table: {code} {body}");

    let writer = Writer::start(s);
    // The reader: a process on the host with the member's database open, as a backup tool or
    // a curious admin would have it. It pins the WAL, so TRUNCATE checkpoints cannot finish.
    let db = database_of(s, &format!("{NAME}-0"))?;
    let mut reader = hold_read_transaction(&db)?;
    eprintln!(
        "[remediation] reader holds {} ({:.0}s in)",
        db,
        started.elapsed().as_secs_f64()
    );

    // The first two rungs: a full snapshot, then a restart of that member (after the
    // interval, because the full snapshot did not clear the reader's hold).
    let seen = s.wait_for(
        "a full snapshot and then a restart of the member",
        Duration::from_secs(300),
        || {
            let r = reasons(s)?;
            let full = r.iter().position(|x| x == "FullSnapshotTriggered");
            let restart = restart_messages(s)?
                .iter()
                .any(|m| m.contains(&format!("{NAME}-0")) && m.contains("snapshot remediation"));
            Ok((full.is_some() && restart).then_some(r))
        },
    );
    let seen = match seen {
        Ok(r) => r,
        Err(e) => {
            let _ = reader.kill();
            return Err(e);
        }
    };
    let st = s.cluster(NS, NAME)?["status"].clone();
    eprintln!(
        "[remediation] full snapshot, then restart, after {:.0}s; status.remediation {}; events {seen:?}",
        started.elapsed().as_secs_f64(),
        st["remediation"]
    );
    // The reader ends: the next checkpoint completes and the operator records the recovery.
    reader.kill().ok();
    reader.wait().ok();
    let recovered_from = Instant::now();
    s.wait_for("snapshots to recover", Duration::from_secs(240), || {
        let st = s.cluster(NS, NAME)?["status"].clone();
        Ok((st["remediation"].is_null()
            && condition(&st, "SnapshotsHealthy") == Some("True".into())
            && reasons(s)?.iter().any(|x| x == "SnapshotsRecovered"))
        .then_some(()))
    })?;
    eprintln!(
        "[remediation] recovered {:.0}s after the reader ended; {:.0}s in all",
        recovered_from.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let acked = writer.stop();
    ensure!(
        acked.len() > 50,
        "too few writes acknowledged: {}",
        acked.len()
    );
    s.wait_ready(NS, NAME, 3, Duration::from_secs(240))?;
    let addr = member(s, &format!("{NAME}-0"))?;
    let have = ids(&addr)?;
    let missing: Vec<_> = acked.difference(&have).take(10).collect();
    ensure!(
        missing.is_empty(),
        "acknowledged writes lost, e.g. {missing:?}"
    );
    eprintln!(
        "[remediation] {} acknowledged writes all stored",
        acked.len()
    );
    Ok(())
}

/// `ip:4001` of a member pod.
fn member(s: &Stack, pod: &str) -> Result<String> {
    let ip = s
        .pod_ip(NS, pod)?
        .with_context(|| format!("pod {pod} has no IP"))?;
    Ok(format!("{ip}:4001"))
}

/// The member's `db.sqlite` on the host: its claim's PersistentVolume is a host directory.
fn database_of(s: &Stack, pod: &str) -> Result<String> {
    let pv = s.cp.kubectl_ok(&[
        "get",
        "pvc",
        &format!("data-{pod}"),
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.volumeName}",
    ])?;
    let dir = s.cp.kubectl_ok(&[
        "get",
        "pv",
        pv.trim(),
        "-o",
        "jsonpath={.spec.hostPath.path}",
    ])?;
    let db = format!("{}/db.sqlite", dir.trim());
    ensure!(std::path::Path::new(&db).exists(), "{db} does not exist");
    Ok(db)
}

/// A python3 process with a read transaction open on `db` until it is killed. When the
/// member replaces its database file (a snapshot installed after a restart), the reader opens
/// the new one too, as a backup tool running in a loop would: the failure persists.
fn hold_read_transaction(db: &str) -> Result<Child> {
    let script = "import os, sqlite3, sys, time\n\
                  path, ino, c = sys.argv[1], None, None\n\
                  while True:\n\
                  \x20   try:\n\
                  \x20       now = os.stat(path).st_ino\n\
                  \x20   except FileNotFoundError:\n\
                  \x20       now = None\n\
                  \x20   if now is not None and now != ino:\n\
                  \x20       try:\n\
                  \x20           if c is not None:\n\
                  \x20               c.close()\n\
                  \x20           c = sqlite3.connect(path, isolation_level=None, timeout=1)\n\
                  \x20           c.execute('BEGIN')\n\
                  \x20           c.execute('SELECT count(*) FROM sqlite_master').fetchone()\n\
                  \x20           print('holding', flush=True)\n\
                  \x20           ino = now\n\
                  \x20       except sqlite3.Error as e:\n\
                  \x20           print('retrying:', e, file=sys.stderr, flush=True)\n\
                  \x20           c = None\n\
                  \x20   time.sleep(0.02)\n";
    let mut child = Command::new("python3")
        .args(["-c", script, db])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("reader stdout")?).read_line(&mut line)?;
    if line.trim() != "holding" {
        let _ = child.kill();
        bail!("the reader did not open a read transaction: {line:?}");
    }
    Ok(child)
}

/// Messages of the MemberRestarted Events.
fn restart_messages(s: &Stack) -> Result<Vec<String>> {
    let out = s.cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        &format!("involvedObject.name={NAME},reason=MemberRestarted"),
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ])?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Reasons of the Events about the cluster, oldest first.
fn reasons(s: &Stack) -> Result<Vec<String>> {
    let out = s.cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        &format!("involvedObject.name={NAME},involvedObject.kind=SqliteCluster"),
        "--sort-by=.metadata.creationTimestamp",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ])?;
    Ok(out.lines().map(str::to_owned).collect())
}

fn condition(status: &serde_json::Value, kind: &str) -> Option<String> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

fn ids(addr: &str) -> Result<BTreeSet<i64>> {
    let (code, body) = http(
        "GET",
        addr,
        "/db/query?level=strong&q=SELECT+id+FROM+t",
        None,
    )?;
    ensure!(code == 200, "query: {code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["results"][0]["values"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r[0].as_i64()).collect())
        .unwrap_or_default())
}

/// Inserts a row every 100 ms through whichever member answers; members come and go as the
/// ladder restarts them, so addresses are looked up again on each failure.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    handle: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(s: &Stack) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        // The writer thread cannot hold the `Stack`: it takes kubectl's program and arguments.
        let base = s.cp.kubectl();
        let kubectl: Vec<std::ffi::OsString> = std::iter::once(base.get_program().to_owned())
            .chain(base.get_args().map(|a| a.to_owned()))
            .collect();
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let handle = std::thread::spawn(move || {
            let mut addrs: Vec<String> = Vec::new();
            let mut id = 0i64;
            while !stop2.load(Ordering::Relaxed) {
                if addrs.is_empty() {
                    addrs = pod_ips(&kubectl);
                }
                id += 1;
                let addr = addrs.get(id as usize % addrs.len().max(1)).cloned();
                let ok = addr.is_some_and(|a| {
                    let body = format!(r#"[["INSERT INTO t(id, v) VALUES(?, 'x')", {id}]]"#);
                    matches!(http("POST", &a, "/db/execute", Some(&body)),
                        Ok((200, text)) if text.contains("\"rows_affected\":1"))
                });
                if ok {
                    acked2.lock().unwrap().insert(id);
                } else {
                    addrs.clear();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Writer {
            stop,
            acked,
            handle,
        }
    }

    fn stop(self) -> BTreeSet<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.acked.lock().unwrap().clone()
    }
}

/// `ip:4001` of every member pod that has an IP.
fn pod_ips(kubectl: &[std::ffi::OsString]) -> Vec<String> {
    Command::new(&kubectl[0])
        .args(&kubectl[1..])
        .args([
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            &format!("app.kubernetes.io/instance={NAME}"),
            "-o",
            "jsonpath={range .items[*]}{.status.podIP}{\"\\n\"}{end}",
        ])
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|ip| format!("{ip}:4001"))
                .collect()
        })
        .unwrap_or_default()
}
