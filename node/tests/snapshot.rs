//! Snapshots that survive failed WAL checkpoints (the rqlite 8.18 failure), and crashes in the
//! middle of writing a snapshot.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn insert(c: &Cluster, leader: usize, from: u64, n: u64) {
    let stmts: Vec<Value> = (from..from + n)
        .map(|id| {
            json!([
                "INSERT INTO t(id, v) VALUES(?, ?)",
                id,
                "payload-".repeat(8)
            ])
        })
        .collect();
    let r = c.execute(leader, json!(stmts)).await.unwrap();
    assert!(
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["rows_affected"] == 1),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_blocking_the_checkpoint_falls_back_to_full_and_recovers() {
    let c = Cluster::start("seed-failure", 3, &MANUAL_SNAPSHOTS).await;
    let leader = c.leader().await;
    c.execute(leader, create_table()).await.unwrap();
    insert(&c, leader, 0, 200).await;
    // The first snapshot after start is full: the WAL no longer holds everything since the last.
    let h = c.snapshot(leader, false).await;
    assert_eq!(h["last_success"]["kind"], "full", "{h}");
    insert(&c, leader, 200, 200).await;

    // A reader holds a read transaction on the leader's database, as a slow query would.
    let db = c.members[leader].dir.join("db.sqlite");
    let reader =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 400);

    // The checkpoint moves every frame but cannot reset the WAL: rqlite's "(1 ok, N pages, N moved)".
    let h = c.snapshot(leader, false).await;
    let cp = &h["last_failure"]["checkpoint"];
    assert_eq!(h["last_failure"]["kind"], "incremental", "{h}");
    assert_eq!(cp["busy"], 1, "{h}");
    assert!(
        cp["log"].as_i64().unwrap() > 0 && cp["log"] == cp["checkpointed"],
        "all frames moved: {h}"
    );
    assert!(
        h["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("failed to completely checkpoint WAL"),
        "{h}"
    );
    assert_eq!(
        h["last_success"]["kind"], "full",
        "fell back to a full snapshot: {h}"
    );
    assert!(
        h["fallbacks_to_full"].as_u64().unwrap() >= 1
            && h["consecutive_failures"].as_u64().unwrap() >= 1,
        "{h}"
    );

    // More writes while the reader stays: now frames are left behind.
    insert(&c, leader, 400, 200).await;
    let h = c.snapshot(leader, false).await;
    let cp = &h["last_failure"]["checkpoint"];
    assert!(
        cp["checkpointed"].as_i64().unwrap() < cp["log"].as_i64().unwrap(),
        "frames left behind: {h}"
    );
    assert!(h["consecutive_failures"].as_u64().unwrap() >= 2, "{h}");
    let status = c.status(leader).await;
    assert!(
        status["store"]["snapshot"]["total_failures"]
            .as_u64()
            .unwrap()
            >= 2,
        "surfaced in /status: {status}"
    );
    let metrics = c
        .get(leader, "/metrics")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("litecluster_snapshot_failures_total{kind=\"incremental\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("litecluster_snapshot_fallbacks_to_full_total 0"),
        "{metrics}"
    );

    // The reader ends: the next incremental snapshot completes and the failure run ends.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    insert(&c, leader, 600, 200).await;
    let h = c.snapshot(leader, false).await;
    assert_eq!(h["last_success"]["kind"], "incremental", "{h}");
    assert_eq!(h["consecutive_failures"], 0, "{h}");
    let wal = std::fs::metadata(c.members[leader].dir.join("db.sqlite-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL was reset");

    // Every member holds the same data and no acknowledged write is missing.
    let expected = c.dump(leader, "t").await;
    for i in 0..3 {
        c.wait_caught_up(i).await;
        assert_eq!(c.dump(i, "t").await, expected, "member {i} differs");
        assert_eq!(
            c.column(i, "SELECT count(*) FROM t").await[0],
            800,
            "member {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_while_writing_a_snapshot_restarts_clean_and_catches_up() {
    let mut c = Cluster::start("snapshot-crash", 3, &MANUAL_SNAPSHOTS).await;
    let leader = c.leader().await;
    c.execute(leader, create_table()).await.unwrap();
    insert(&c, leader, 0, 100).await;
    let victim = (leader + 1) % 3;
    let mut next = 100;
    // Crash points: data renamed but no sidecar yet (full), and WAL copied but not committed
    // (incremental; needs a full one first).
    for (failpoint, first_full) in [
        ("snapshot-before-sidecar", false),
        ("snapshot-after-wal-copy", true),
    ] {
        c.members[victim].kill();
        c.members[victim].env = vec![("LITECLUSTER_FAILPOINT".into(), failpoint.into())];
        c.members[victim].start(&[]);
        c.wait_caught_up(victim).await;
        if first_full {
            // The failpoint only fires in the incremental path, so the first (full) one succeeds.
            let h = c.snapshot(victim, true).await;
            assert_eq!(h["last_success"]["kind"], "full", "{h}");
            insert(&c, leader, next, 50).await;
            next += 50;
            c.wait_caught_up(victim).await;
        }
        let res = c
            .http
            .post(format!("{}/snapshot", c.url(victim)))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        assert!(
            res.is_err(),
            "the member should die at failpoint {failpoint}"
        );
        let status = c.members[victim].wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "{failpoint}: {status}");
        let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
        assert!(
            log.contains(&format!("failpoint {failpoint}: aborting")),
            "{log}"
        );

        // Writes go on without it; it restarts without the failpoint and catches up.
        insert(&c, leader, next, 100).await;
        next += 100;
        c.members[victim].env.clear();
        c.members[victim].start(&[]);
        c.wait_ready(victim).await;
        c.wait_caught_up(victim).await;
        assert_eq!(
            c.column(victim, "SELECT count(*) FROM t").await[0],
            next,
            "after {failpoint}"
        );
        // Its snapshot store is usable again.
        let h = c.snapshot(victim, false).await;
        assert!(h["last_success"].is_object(), "{h}");
    }
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(
        log.contains("removing snapshot data without a sidecar"),
        "partial snapshot cleaned on restart"
    );
    let expected = c.dump(leader, "t").await;
    assert_eq!(c.dump(victim, "t").await, expected);
}
