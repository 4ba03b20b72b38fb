//! Multi-member behaviour with real processes: replication, leader failure, restarts, learners,
//! snapshots, graceful hand-over.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_member_are_readable_on_all() {
    let c = Cluster::start("any-member", 3, &[]).await;
    c.execute(1, create_table()).await.unwrap();
    for i in 0..3 {
        let r = c
            .execute(
                i,
                json!([["INSERT INTO t(v) VALUES(?)", format!("from-{i}")]]),
            )
            .await
            .unwrap();
        assert_eq!(
            r["results"][0]["rows_affected"], 1,
            "write via member {i}: {r}"
        );
    }
    for i in 0..3 {
        c.wait_caught_up(i).await;
        let mut got: Vec<String> = c
            .column(i, "SELECT v FROM t")
            .await
            .into_iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["from-0", "from-1", "from-2"], "member {i}");
    }
    // Each consistency level answers on a follower (weak/linearizable/strong via the leader).
    let follower = (c.leader().await + 1) % 3;
    for level in ["none", "weak", "linearizable", "strong"] {
        let r = c.query(follower, "SELECT count(*) FROM t", level).await;
        assert_eq!(r["results"][0]["values"][0][0], 3, "level {level}: {r}");
    }
    // `redirect` answers 301 with the leader's URL instead of forwarding.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/db/execute?redirect", c.url(follower)))
        .body(r#"["INSERT INTO t(v) VALUES('x')"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    let leader = c.leader().await;
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&c.url(leader))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::start("leader-kill", 3, &[]).await;
    c.execute(0, create_table()).await.unwrap();
    let stream = WriteStream::start((0..3).map(|i| c.url(i)).collect(), 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = c.leader().await;
    let before_kill = stream.count();
    c.members[old].kill();
    let killed_at = Instant::now();
    // A new leader among the survivors.
    let new = c.leader().await;
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    // Writes resume through the new leader.
    let resumed_from = stream.count();
    common::wait_for("writes after failover", Duration::from_secs(20), || async {
        stream.count() > resumed_from + 50
    })
    .await;
    let acked = stream.stop().await;
    eprintln!(
        "acknowledged {} writes ({before_kill} before the kill); new leader elected in {failover:?}",
        acked.len()
    );
    for i in (0..3).filter(|&i| i != old) {
        c.assert_has_all(i, &acked).await;
    }
    // The old leader comes back as a follower with everything.
    c.members[old].start(&[]);
    c.assert_has_all(old, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_member_catches_up_from_log_and_snapshot() {
    // A low snapshot threshold makes the leader purge its log, so the restarted member needs
    // the full database (InstallSnapshot), not just the log tail.
    let mut c = Cluster::start(
        "restart",
        3,
        &[
            "--snapshot-threshold",
            "50",
            "--snapshot-trailing-logs",
            "10",
        ],
    )
    .await;
    c.execute(0, create_table()).await.unwrap();
    let leader = c.leader().await;
    let victim = (leader + 1) % 3;
    c.members[victim].kill();
    for batch in 0..100 {
        let stmts: Vec<_> = (0..3)
            .map(|k| json!(["INSERT INTO t(v) VALUES(?)", format!("{batch}-{k}")]))
            .collect();
        c.execute(leader, json!(stmts)).await.unwrap();
    }
    common::wait_for(
        "a snapshot on the leader",
        Duration::from_secs(20),
        || async {
            c.status(leader).await["store"]["raft"]["purged_index"]
                .as_u64()
                .unwrap_or(0)
                > 20
        },
    )
    .await;
    c.members[victim].start(&[]);
    c.wait_caught_up(victim).await;
    assert_eq!(c.column(victim, "SELECT count(*) FROM t").await[0], 300);
    let metrics = c
        .get(victim, "/metrics")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("litecluster_snapshots_installed_total ") && !l.ends_with(" 0")),
        "the far-behind member should have installed a snapshot:\n{metrics}"
    );
    // And a restart of a caught-up member resumes from its own data.
    c.members[victim].kill();
    c.execute(leader, json!([["INSERT INTO t(v) VALUES('after')"]]))
        .await
        .unwrap();
    c.members[victim].start(&[]);
    c.wait_caught_up(victim).await;
    assert_eq!(c.column(victim, "SELECT count(*) FROM t").await[0], 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_serves_local_reads_and_never_votes() {
    let mut c = Cluster::start("learner", 3, &[]).await;
    c.execute(0, create_table()).await.unwrap();
    c.execute(0, json!(["INSERT INTO t(v) VALUES('a')"]))
        .await
        .unwrap();
    let l = c.add("4", &[]);
    let join = c.url(0);
    c.members[l].start(&["--join".into(), join, "--non-voter".into()]);
    c.wait_ready(l).await;
    c.wait_caught_up(l).await;
    let s = c.status(l).await;
    assert_eq!(s["store"]["raft"]["state"], "Learner");
    assert_eq!(s["store"]["raft"]["voter"], false);
    assert_eq!(c.column(l, "SELECT v FROM t").await, [json!("a")]);
    let nodes: serde_json::Value = c
        .get(0, "/nodes?nonvoters")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes["4"]["voter"], false);
    let voters_only: serde_json::Value = c.get(0, "/nodes").await.unwrap().json().await.unwrap();
    assert!(
        voters_only.get("4").is_none(),
        "learners are listed only with ?nonvoters"
    );
    // Kill the leader: an election happens among voters; the learner never campaigns.
    let old = c.leader().await;
    c.members[old].kill();
    let new = c.leader().await;
    assert_ne!(new, l, "a learner must never lead");
    let s = c.status(l).await;
    assert_eq!(s["store"]["raft"]["state"], "Learner");
    // Writes sent to the learner are forwarded to the leader.
    c.execute(l, json!(["INSERT INTO t(v) VALUES('via-learner')"]))
        .await
        .unwrap();
    c.wait_caught_up(l).await;
    assert_eq!(c.column(l, "SELECT count(*) FROM t").await[0], 2);
    // Removing the learner takes it out of the membership.
    let r = c
        .http
        .delete(format!("{}/remove", c.url(new)))
        .json(&json!({"id": "4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let nodes: serde_json::Value = c
        .get(new, "/nodes?nonvoters")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(nodes.get("4").is_none(), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_leader_hands_leadership_over() {
    let mut c = Cluster::start("handover", 3, &[]).await;
    c.execute(0, create_table()).await.unwrap();
    let old = c.leader().await;
    let started = Instant::now();
    let status = c.members[old].terminate();
    assert!(status.success(), "leader exited with {status}");
    let new = c.leader().await;
    eprintln!(
        "leadership moved from {old} to {new}; old leader exited after {:?}",
        started.elapsed()
    );
    let log = std::fs::read_to_string(&c.members[old].log).unwrap();
    assert!(
        log.contains("leadership handed over before shutdown"),
        "{log}"
    );
    c.execute(new, json!(["INSERT INTO t(v) VALUES('after-handover')"]))
        .await
        .unwrap();
}

/// Members joining at the same moment: Raft takes one membership change at a time, so a join
/// that races another must still end with the member voting, not stuck as a learner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_joining_together_all_become_voters() {
    let c = Cluster::start("join-together", 5, &[]).await;
    c.execute(4, create_table()).await.unwrap();
    c.execute(4, json!([["INSERT INTO t(v) VALUES(?)", "five"]]))
        .await
        .unwrap();
    for i in 0..5 {
        c.wait_caught_up(i).await;
        let r = c.query(i, "SELECT v FROM t", "none").await;
        assert_eq!(rows(&r), 1, "member {i}: {r}");
    }
}

/// Mutual TLS on the Raft port: members with certificates from the cluster's CA replicate; a
/// peer without one gets no answer, where a plain-TCP port would obey it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_port_with_mutual_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = std::env::temp_dir().join(format!("lc-raft-tls-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_certs(&dir);
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let flags = ["--raft-cert", cert, "--raft-key", key, "--raft-ca-cert", ca];
    let c = Cluster::start("raft-tls", 3, &flags).await;
    c.execute(0, create_table()).await.unwrap();
    c.execute(0, json!([["INSERT INTO t(v) VALUES(?)", "sealed"]]))
        .await
        .unwrap();
    for i in 0..3 {
        c.wait_caught_up(i).await;
        assert_eq!(rows(&c.query(i, "SELECT v FROM t", "none").await), 1);
    }

    // An election request in plain TCP: a port without TLS would answer with a frame.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.members[1].raft))
        .await
        .unwrap();
    // The server may hang up mid-write (broken pipe): that is a refusal too.
    let mut frame = 5u32.to_be_bytes().to_vec();
    frame.push(4);
    frame.extend_from_slice(b"null");
    let _ = s.write_all(&frame).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert!(
        !reply.contains(&b'{'),
        "a peer without a certificate got an answer: {:?}",
        String::from_utf8_lossy(&reply)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `POST /leader` while writes stream in: leadership moves within the call's timeout (the
/// target need only catch up with the log as it was when the hand-over began) and no
/// acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_down_under_writes_moves_leadership_and_loses_nothing() {
    let c = Cluster::start("step-down", 3, &[]).await;
    c.execute(0, create_table()).await.unwrap();
    let stream = WriteStream::start((0..3).map(|i| c.url(i)).collect(), 4);
    common::wait_for("writes flowing", Duration::from_secs(20), || async {
        stream.count() > 100
    })
    .await;
    let old = c.leader().await;
    let started = Instant::now();
    let r = c
        .http
        .post(format!("{}/leader", c.url(old)))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let moved_in = started.elapsed();
    let after = stream.count();
    common::wait_for(
        "writes after the hand-over",
        Duration::from_secs(20),
        || async { stream.count() > after + 50 },
    )
    .await;
    let acked = stream.stop().await;
    let new = c.leader().await;
    assert_ne!(new, old, "{body}");
    eprintln!(
        "leadership moved under writes in {moved_in:?}; {} writes acknowledged",
        acked.len()
    );
    for i in 0..3 {
        c.assert_has_all(i, &acked).await;
    }
}
