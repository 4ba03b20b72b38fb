//! Queued writes (`/db/execute?queue`): acknowledged with increasing sequence numbers, applied
//! in order; `wait` answers once applied and `408` when its timeout passes first; and a leader
//! that loses leadership while holding queued writes hands them to the new one, each exactly
//! once.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::{Cluster, wait_for};

async fn queue(c: &Cluster, i: usize, query: &str, body: Value) -> reqwest::Response {
    c.http
        .post(format!("{}/db/execute?queue{query}", c.url(i)))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn count(c: &Cluster, i: usize) -> usize {
    c.column(i, "SELECT COUNT(*) FROM q").await[0]
        .as_u64()
        .unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_are_numbered_applied_in_order_and_waited_for() {
    let c = Cluster::start("queue-basic", 1, &[]).await;
    c.execute(
        0,
        json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, n INTEGER)"]),
    )
    .await
    .unwrap();
    let mut last = 0i64;
    for n in 0..50 {
        let r = queue(&c, 0, "", json!([["INSERT INTO q(n) VALUES(?)", n]])).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["results"], json!([]));
        let seq = v["sequence_number"].as_i64().unwrap();
        assert!(
            seq > last,
            "sequence numbers must increase: {seq} after {last}"
        );
        last = seq;
    }
    // A barrier: answered once everything queued before it is applied.
    let r = queue(&c, 0, "&wait", json!([])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(count(&c, 0).await, 50);
    // In the order they were queued.
    let ns = c.column(0, "SELECT n FROM q ORDER BY id").await;
    assert_eq!(ns, (0..50).map(|n| json!(n)).collect::<Vec<_>>());
    // `/status` reports the last sequence number applied.
    let st = c.status(0).await;
    assert_eq!(
        st["http"]["queue"]["_default"]["sequence_number"],
        json!(last + 1)
    );
    // Nothing to queue without `wait` is a client error, as in rqlite.
    assert_eq!(queue(&c, 0, "", json!([])).await.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_is_408_and_the_write_still_happens() {
    // Batches wait 3 s for company, so a 100 ms wait runs out first.
    let c = Cluster::start("queue-timeout", 1, &["--write-queue-timeout", "3s"]).await;
    c.execute(
        0,
        json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, n INTEGER)"]),
    )
    .await
    .unwrap();
    let r = queue(
        &c,
        0,
        "&wait&timeout=100ms",
        json!([["INSERT INTO q(n) VALUES(1)"]]),
    )
    .await;
    assert_eq!(r.status(), 408);
    assert_eq!(r.text().await.unwrap().trim(), "queue wait timeout");
    wait_for(
        "the timed-out write applied",
        Duration::from_secs(30),
        || async { count(&c, 0).await == 1 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_writes_held_by_a_leader_that_steps_down_are_applied_once_by_the_next() {
    // The leader holds queued writes for 3 s before proposing them; leadership moves meanwhile.
    let c = Cluster::start(
        "queue-handover",
        3,
        &[
            "--write-queue-timeout",
            "3s",
            "--write-queue-batch-size",
            "1000",
        ],
    )
    .await;
    c.execute(
        0,
        json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, n INTEGER)"]),
    )
    .await
    .unwrap();
    let old = c.leader().await;
    for n in 0..100 {
        // Through a follower too: it forwards `?queue` to the leader.
        let via = if n % 2 == 0 { old } else { (old + 1) % 3 };
        let r = queue(&c, via, "", json!([["INSERT INTO q(n) VALUES(?)", n]])).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let r = c
        .http
        .post(format!("{}/leader", c.url(old)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let new = c.leader().await;
    assert_ne!(new, old);
    wait_for(
        "all 100 queued writes applied",
        Duration::from_secs(60),
        || async { count(&c, new).await == 100 },
    )
    .await;
    // Exactly once each, on every member, once everything queued anywhere is through.
    for i in 0..3 {
        let r = queue(&c, i, "&wait", json!([])).await;
        assert_eq!(r.status(), 200);
    }
    for i in 0..3 {
        c.wait_caught_up(i).await;
        let ns = c.column(i, "SELECT n FROM q ORDER BY n").await;
        assert_eq!(
            ns,
            (0..100).map(|n| json!(n)).collect::<Vec<_>>(),
            "member {i}"
        );
    }
}
