//! No SQL, size or crash may lose, double or split an acknowledged write: the requests that did,
//! a concurrent mix of them against three members, and a member killed at each dangerous step.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The big load and the kill tests each keep both cores and the disk busy; run them one at a
/// time so neither measures the other's load.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default Raft timing, for the tests that push hundreds of MiB through a debug build: with
/// the harness's tighter timing a loaded 2-core machine misses heartbeats while a MiB-sized
/// AppendEntries is written, and leadership moves mid-test.
const DEFAULT_TIMING: [&str; 4] = ["--election-timeout", "1s", "--heartbeat-interval", "200ms"];

const SCHEMA: &str = "CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT); \
    CREATE TABLE g (x INTEGER); \
    CREATE TRIGGER g_guard BEFORE INSERT ON g WHEN new.x < 0 BEGIN SELECT RAISE(ROLLBACK, 'negative'); END";

async fn post(c: &Cluster, i: usize, path: &str, body: Value) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}{path}", c.url(i)))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn ids(c: &Cluster, i: usize, level: &str) -> Vec<i64> {
    c.query(i, "SELECT id FROM u ORDER BY id", level).await["results"][0]["values"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r[0].as_i64().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_requests_that_lost_or_split_writes_now_give_rqlites_results() {
    let c = Cluster::start("apply-issue", 1, &[]).await;
    c.execute(0, json!([SCHEMA])).await.unwrap();
    // An acknowledged row survives a later OR ROLLBACK in the same request.
    let r = c
        .execute(
            0,
            json!([
                "INSERT INTO u VALUES(1,'a')",
                "INSERT OR ROLLBACK INTO u VALUES(1,'dup')",
                "INSERT INTO u VALUES(2,'b')"
            ]),
        )
        .await
        .unwrap();
    assert_eq!(r["results"][0]["rows_affected"], 1, "{r}");
    assert_eq!(r["results"][1]["error"], "UNIQUE constraint failed: u.id");
    assert_eq!(r["results"][2]["rows_affected"], 1, "{r}");
    assert_eq!(ids(&c, 0, "strong").await, [1, 2]);
    // A COMMIT inside a statement string fails as in SQLite, keeping what ran before it.
    let r = c
        .execute(
            0,
            json!(["INSERT INTO u VALUES(10,'x'); COMMIT; INSERT INTO u VALUES(11,'y')"]),
        )
        .await
        .unwrap();
    assert_eq!(
        r["results"][0]["error"], "cannot commit - no transaction is active",
        "{r}"
    );
    assert_eq!(ids(&c, 0, "strong").await, [1, 2, 10]);
    // Durations that overflow, are negative or are not numbers get 400, never a panic.
    for flag in ["db_timeout", "freshness", "timeout"] {
        for v in ["99999999999999999999s", "-1s", "NaNs", "1e999s"] {
            let r = c
                .get(0, &format!("/db/query?{flag}={v}&q=SELECT+1"))
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{flag}={v}");
            assert_eq!(
                r.text().await.unwrap().trim(),
                format!("{flag} is not a valid duration")
            );
        }
    }
    // A request over --max-entry-bytes gets a 413 that says what to do.
    let big = "x".repeat(9 << 20);
    let (status, body) = post(
        &c,
        0,
        "/db/execute",
        json!([["INSERT INTO u(v) VALUES(?)", big]]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body.as_str().unwrap().contains("--max-entry-bytes"),
        "{body}"
    );
    // What the API refuses says why; the node's own table stays the node's.
    let r = c
        .execute(
            0,
            json!([
                "ATTACH 'x.db' AS x",
                "PRAGMA journal_mode=DELETE",
                "DELETE FROM sqlite_litecluster",
                "CREATE TEMP TABLE t (x)"
            ]),
        )
        .await
        .unwrap();
    for i in 0..4 {
        assert!(r["results"][i]["error"].is_string(), "{r}");
    }
    // A SQL string starting with a multi-byte character used to panic the rewriter.
    let r = c.execute(0, json!(["é"])).await.unwrap();
    assert!(r["results"][0]["error"].is_string(), "{r}");
    assert!(c.get(0, "/status").await.unwrap().status().is_success());
}

/// A request template, its statements built from fresh ids `a` and `b`, and which of them an
/// acknowledged response means must be there, or must not.
fn request(kind: u64, a: i64, b: i64) -> (String, Value, Vec<i64>, Vec<i64>) {
    match kind {
        0 => (
            "execute".into(),
            json!([
                format!("INSERT INTO u VALUES({a},'a')"),
                format!("INSERT OR ROLLBACK INTO u VALUES({a},'dup')"),
                format!("INSERT INTO u VALUES({b},'b')")
            ]),
            vec![a, b],
            vec![],
        ),
        1 => (
            "execute".into(),
            json!([format!(
                "INSERT INTO u VALUES({a},'x'); COMMIT; INSERT INTO u VALUES({b},'y')"
            )]),
            vec![a],
            vec![b],
        ),
        2 => (
            "execute?transaction".into(),
            json!([
                format!("INSERT INTO u VALUES({a},'t')"),
                format!("INSERT OR ROLLBACK INTO u VALUES({a},'dup')"),
                format!("INSERT INTO u VALUES({b},'t')")
            ]),
            vec![],
            vec![a, b],
        ),
        3 => (
            "execute".into(),
            json!([
                "BEGIN",
                format!("INSERT INTO u VALUES({a},'c')"),
                format!("INSERT INTO u VALUES({b},'c')"),
                "COMMIT"
            ]),
            vec![a, b],
            vec![],
        ),
        4 => (
            "execute".into(),
            json!([
                format!("INSERT INTO u VALUES({a},'r')"),
                "BEGIN",
                format!("INSERT INTO u VALUES({b},'r')"),
                "ROLLBACK"
            ]),
            vec![a],
            vec![b],
        ),
        5 => (
            "execute".into(),
            json!([
                format!("INSERT INTO u VALUES({a},'g')"),
                "INSERT INTO g VALUES(-1)",
                format!("INSERT INTO u VALUES({b},'g')")
            ]),
            vec![a, b],
            vec![],
        ),
        _ => (
            "request".into(),
            json!([
                [format!("INSERT INTO u VALUES({a}, ?) RETURNING id"), "p"],
                "SELECT count(*) FROM u",
                format!(
                    "BEGIN; INSERT INTO u VALUES({b},'s'); SAVEPOINT x; DELETE FROM u WHERE id = {a}; ROLLBACK TO x; COMMIT"
                )
            ]),
            vec![a, b],
            vec![],
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mix_of_hard_sql_from_several_clients_leaves_every_member_identical() {
    let c = Arc::new(Cluster::start("apply-mix", 3, &[]).await);
    let leader = c.leader().await;
    c.execute(leader, json!([SCHEMA])).await.unwrap();
    let mut tasks = Vec::new();
    for client in 0..4u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut present, mut absent) = (BTreeSet::new(), BTreeSet::new());
            let mut seed = 0x5eed ^ client;
            for k in 0..60u64 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let kind = (seed >> 33) % 7;
                let member = ((seed >> 40) % 3) as usize;
                let a = (client * 1_000_000 + k * 10) as i64;
                let (path, body, want, gone) = request(kind, a, a + 1);
                let (status, resp) = post(&c, member, &format!("/db/{path}"), body).await;
                // Only an acknowledged request says anything about the rows.
                if status == 200 && resp["results"].is_array() {
                    present.extend(want);
                    absent.extend(gone);
                }
            }
            (present, absent)
        }));
    }
    let (mut present, mut absent) = (BTreeSet::new(), BTreeSet::new());
    for t in tasks {
        let (p, a) = t.await.unwrap();
        present.extend(p);
        absent.extend(a);
    }
    assert!(
        present.len() > 300,
        "too few writes were acknowledged: {}",
        present.len()
    );
    let leader = c.leader().await;
    let expected = ids(&c, leader, "strong").await;
    let have: BTreeSet<i64> = expected.iter().copied().collect();
    let lost: Vec<_> = present.difference(&have).take(10).collect();
    assert!(lost.is_empty(), "acknowledged rows missing, e.g. {lost:?}");
    let split: Vec<_> = absent.intersection(&have).take(10).collect();
    assert!(split.is_empty(), "rolled-back rows present, e.g. {split:?}");
    for i in 0..3 {
        c.wait_caught_up(i).await;
        assert_eq!(
            c.dump(i, "u").await,
            c.dump(leader, "u").await,
            "member {i} differs"
        );
        assert_eq!(
            c.dump(i, "g").await,
            c.dump(leader, "g").await,
            "member {i} differs"
        );
    }
}

/// A SQLite file of about `mib` MiB in `dir`, and its row count and content checksum.
fn build_image(dir: &std::path::Path, mib: usize) -> (std::path::PathBuf, i64, i64) {
    let path = dir.join(format!("image-{mib}.db"));
    let _ = std::fs::remove_file(&path);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; \
         CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
         INSERT INTO big SELECT i, randomblob(65536) FROM n;",
        mib * 16
    ))
    .unwrap();
    let (n, sum): (i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(unicode(hex(substr(b, 1, 4)))) FROM big",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (path, n, sum)
}

async fn image_on(c: &Cluster, i: usize) -> (i64, i64) {
    let r = c
        .query(
            i,
            "SELECT count(*), sum(unicode(hex(substr(b, 1, 4)))) FROM big",
            "none",
        )
        .await;
    let row = &r["results"][0]["values"][0];
    (row[0].as_i64().unwrap_or(-1), row[1].as_i64().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_of_a_few_hundred_mib_reaches_every_member() {
    let _heavy = HEAVY.lock().await;
    let mib: usize = std::env::var("LITECLUSTER_LOAD_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let c = Cluster::start("apply-big-load", 3, &DEFAULT_TIMING).await;
    let (image, rows, sum) = build_image(&c.dir, mib);
    let body = tokio::fs::read(&image).await.unwrap();
    let started = std::time::Instant::now();
    // A leadership change mid-load fails it with 503 and "retry it": a client retries.
    let mut attempt = 0;
    let leader = loop {
        attempt += 1;
        let leader = c.leader().await;
        let r = c
            .http
            .post(format!("{}/db/load", c.url(leader)))
            .timeout(Duration::from_secs(900))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, text) = (r.status(), r.text().await.unwrap());
        if status == 503 && attempt < 3 {
            eprintln!("load attempt {attempt}: {text}");
            continue;
        }
        assert_eq!(status, 200, "{text}");
        break leader;
    };
    eprintln!(
        "loaded {mib} MiB in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for i in 0..3 {
        wait_for(
            &format!("member {i} holds the image"),
            Duration::from_secs(600),
            || async { image_on(&c, i).await == (rows, sum) },
        )
        .await;
    }
    // Writes go on after it, and nothing was ever refused for its size.
    c.execute(leader, json!(["INSERT INTO big(b) VALUES (x'00')"]))
        .await
        .unwrap();
    for m in &c.members {
        let log = std::fs::read_to_string(&m.log).unwrap();
        assert!(
            !log.contains("exceeds the limit"),
            "member {} refused a frame",
            m.name
        );
    }
    let _ = std::fs::remove_file(image);
}

/// Starts `victim` with a failpoint, runs `trigger`, checks it died there, restarts it clean and
/// checks it has every acknowledged row and the leader's content.
async fn kill_at(c: &mut Cluster, victim: usize, failpoint: &str, next: &mut i64) {
    let leader = c.leader().await;
    let status = c.members[victim].wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{failpoint}: {status}");
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(
        log.contains(&format!("failpoint {failpoint}: aborting")),
        "the member did not stop at {failpoint}"
    );
    // Writes go on without it; it restarts without the failpoint and catches up.
    write_rows(c, leader, next, 20).await;
    c.members[victim].env.clear();
    c.members[victim].start(&[]);
    c.wait_ready(victim).await;
    c.wait_caught_up(victim).await;
    assert_same_as_leader(c, victim, leader, &format!("after {failpoint}")).await;
}

async fn write_rows(c: &Cluster, leader: usize, next: &mut i64, n: i64) {
    for _ in 0..n {
        let r = c
            .execute(
                leader,
                json!([format!("INSERT INTO u VALUES({next}, 'w')")]),
            )
            .await
            .unwrap();
        assert_eq!(r["results"][0]["rows_affected"], 1, "{r}");
        *next += 1;
    }
}

/// Snapshots only when asked, and the log purged right up to each one: the hardest case for a
/// member that must replay its log.
fn manual_snapshots_no_trailing_log<'a>(more: &[&'a str]) -> Vec<&'a str> {
    MANUAL_SNAPSHOTS
        .into_iter()
        .chain(["--snapshot-trailing-logs", "0"])
        .chain(more.iter().copied())
        .collect()
}

/// `victim` has exactly the leader's rows and content.
async fn assert_same_as_leader(c: &Cluster, victim: usize, leader: usize, what: &str) {
    assert_eq!(
        ids(c, victim, "none").await,
        ids(c, leader, "strong").await,
        "{what}"
    );
    assert_eq!(
        c.dump(victim, "u").await,
        c.dump(leader, "u").await,
        "{what}"
    );
}

fn arm(c: &mut Cluster, victim: usize, failpoint: &str) {
    c.members[victim].kill();
    c.members[victim].env = vec![("LITECLUSTER_FAILPOINT".into(), failpoint.into())];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_at_each_dangerous_step_restarts_consistent_with_every_write() {
    let _heavy = HEAVY.lock().await;
    let flags = manual_snapshots_no_trailing_log(&DEFAULT_TIMING);
    let mut c = Cluster::start("apply-failpoints", 3, &flags).await;
    let leader = c.leader().await;
    let victim = (leader + 1) % 3;
    c.execute(leader, json!([SCHEMA])).await.unwrap();
    let mut next = 1;
    write_rows(&c, leader, &mut next, 10).await;

    let only = std::env::var("LITECLUSTER_FAILPOINTS").unwrap_or_default();
    let run = |fp: &str| only.is_empty() || only.split(',').any(|x| x == fp);
    // Appending to the log and applying: any write reaches these on the follower.
    for fp in [
        "log-before-commit",
        "log-after-commit",
        "apply-before-commit",
        "apply-after-commit",
    ]
    .into_iter()
    .filter(|f| run(f))
    {
        c.wait_caught_up(victim).await;
        arm(&mut c, victim, fp);
        // It may die on its first log write (a vote) or on these rows: either is the point.
        c.members[victim].start(&[]);
        write_rows(&c, leader, &mut next, 3).await;
        kill_at(&mut c, victim, fp, &mut next).await;
    }

    // A batch in which a statement rolls the transaction back: the victim gets the entries it
    // missed in one batch when it comes back.
    if run("apply-after-replay") {
        c.wait_caught_up(victim).await;
        arm(&mut c, victim, "apply-after-replay");
        write_rows(&c, leader, &mut next, 5).await;
        let r = c
            .execute(
                leader,
                json!([
                    format!("INSERT INTO u VALUES({next},'a')"),
                    format!("INSERT OR ROLLBACK INTO u VALUES({next},'dup')")
                ]),
            )
            .await
            .unwrap();
        assert_eq!(r["results"][0]["rows_affected"], 1, "{r}");
        next += 1;
        c.members[victim].start(&[]);
        kill_at(&mut c, victim, "apply-after-replay", &mut next).await;
    }

    // The same inside a batch entry (concurrent requests coalesced by the leader): what came
    // before the rolled-back request commits with progress part way through the entry. Waves of
    // concurrent requests until one such batch reaches the victim.
    if run("apply-after-partial") {
        c.wait_caught_up(victim).await;
        arm(&mut c, victim, "apply-after-partial");
        c.members[victim].start(&[]);
        c.wait_ready(victim).await;
        let mut exited = false;
        for _ in 0..30 {
            let wave: Vec<_> = (0..16)
                .map(|k| {
                    let id = next + k;
                    c.execute(
                        leader,
                        json!([
                            format!("INSERT INTO u VALUES({id},'a')"),
                            format!("INSERT OR ROLLBACK INTO u VALUES({id},'dup')")
                        ]),
                    )
                })
                .collect();
            for r in futures::future::join_all(wave).await {
                let r = r.unwrap();
                assert_eq!(r["results"][0]["rows_affected"], 1, "{r}");
            }
            next += 16;
            // Its apply may still be running: give the exit a moment before the next wave.
            if c.members[victim].exits_within(Duration::from_secs(2)) {
                exited = true;
                break;
            }
        }
        assert!(
            exited,
            "no coalesced batch with a rolled-back request reached the victim"
        );
        kill_at(&mut c, victim, "apply-after-partial", &mut next).await;
    }

    // A load: staged pieces, then the swap.
    let (image, rows, _) = build_image(&c.dir, 10);
    let body = std::fs::read(&image).unwrap();
    for fp in [
        "load-after-chunk",
        "load-before-replace",
        "load-after-replace",
    ]
    .into_iter()
    .filter(|f| run(f))
    {
        c.wait_caught_up(victim).await;
        arm(&mut c, victim, fp);
        c.members[victim].start(&[]);
        c.wait_ready(victim).await;
        let r = c
            .http
            .post(format!("{}/db/load", c.url(leader)))
            .timeout(Duration::from_secs(300))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        c.execute(leader, json!([SCHEMA])).await.unwrap();
        kill_at(&mut c, victim, fp, &mut next).await;
        assert_eq!(image_on(&c, victim).await.0, rows, "after {fp}");
    }

    // A snapshot install: the victim misses writes the leader then compacts away.
    for fp in [
        "install-after-marker",
        "install-after-wal-delete",
        "install-after-rename",
    ]
    .into_iter()
    .filter(|f| run(f))
    {
        c.wait_caught_up(victim).await;
        arm(&mut c, victim, fp);
        write_rows(&c, leader, &mut next, 30).await;
        let h = c.snapshot(leader, true).await;
        assert!(h["last_success"].is_object(), "{h}");
        let target = c.applied(leader).await;
        wait_for(
            "the leader's log compacted",
            Duration::from_secs(20),
            || async {
                c.status(leader).await["store"]["raft"]["purged_index"]
                    .as_u64()
                    .unwrap_or(0)
                    >= target.saturating_sub(1)
            },
        )
        .await;
        let before = std::fs::read_to_string(&c.members[victim].log)
            .unwrap()
            .len();
        c.members[victim].start(&[]);
        kill_at(&mut c, victim, fp, &mut next).await;
        let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
        assert!(
            log[before..].contains("finishing a snapshot install that was interrupted"),
            "{fp}: the restart did not finish the install"
        );
    }
}

/// The state database does not fsync its commits: a power cut may take every write to it since
/// the last snapshot. The member must then apply them again from its log (which openraft purges
/// only up to a snapshot, and a snapshot is only built on a synced database) and end identical
/// to the others. `LITECLUSTER_TEST_POWER_LOSS` makes a restart cut the WAL back to its last
/// sync, the worst such a cut can leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_loses_its_unsynced_database_writes_recovers_them_from_its_log() {
    let _heavy = HEAVY.lock().await;
    let flags = manual_snapshots_no_trailing_log(&[]);
    let mut c = Cluster::start("power-loss", 3, &flags).await;
    let leader = c.leader().await;
    let victim = (leader + 1) % 3;
    c.execute(leader, json!([SCHEMA])).await.unwrap();
    let mut next = 1;
    write_rows(&c, leader, &mut next, 20).await;
    c.wait_caught_up(victim).await;
    c.members[victim].kill();
    c.members[victim].env = vec![("LITECLUSTER_TEST_POWER_LOSS".into(), "1".into())];
    c.members[victim].start(&[]);
    c.wait_ready(victim).await;
    for round in 0..3 {
        // A snapshot (the log is purged up to it), then writes only the log has durably.
        c.wait_caught_up(victim).await;
        c.snapshot(victim, round == 0).await;
        write_rows(&c, leader, &mut next, 15).await;
        c.wait_caught_up(victim).await;
        let before = c.applied(victim).await;
        c.members[victim].kill();
        let log_len = std::fs::metadata(&c.members[victim].log).map_or(0, |m| m.len());
        write_rows(&c, leader, &mut next, 5).await;
        c.members[victim].start(&[]);
        c.wait_ready(victim).await;
        let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
        assert!(
            log[log_len as usize..].contains("simulated power loss"),
            "round {round}: the restart lost nothing, so this tested nothing"
        );
        c.wait_caught_up(victim).await;
        assert!(c.applied(victim).await > before);
        assert_same_as_leader(&c, victim, leader, &format!("round {round}")).await;
    }
}
