//! Backups as resources on the real control plane, to two real S3 servers (SeaweedFS) the pods
//! reach: an on-demand SqliteBackup completes while writes go on, to the first storage; with
//! that storage stopped the next one goes to the failover storage and says so; the kubectl
//! plugin takes one; a new cluster recovers from a backup with the same rows; a schedule makes
//! backups and prunes the old ones; a cluster without storages fails with what to do; the
//! archive goes to the failover storage too, and a new cluster recovers to a time between two
//! known writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use litecluster_e2e::Options;
use litecluster_e2e::stack::{Stack, call};
use litecluster_e2e::weed::{ACCESS_KEY, SECRET_KEY, Weed};

const NS: &str = "bk";

fn cluster_yaml(primary: &str, failover: &str) -> String {
    format!(
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: bk\nspec:\n  replicas: 3\n  voters: 3\n  storage:\n    size: 1Gi\n  backup:\n    interval: 24h\n    storages:\n      - name: primary\n        endpoint: {primary}\n        bucket: backups\n        region: us-east-1\n        credentialsSecret:\n          name: s3\n      - name: failover\n        endpoint: {failover}\n        bucket: backups\n        region: us-east-1\n        credentialsSecret:\n          name: s3\n"
    )
}

fn backup_yaml(name: &str, cluster: &str) -> String {
    format!(
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteBackup\nmetadata:\n  name: {name}\nspec:\n  cluster: {cluster}\n"
    )
}

/// Waits until the backup is Completed or Failed; returns its status.
fn finished(s: &Stack, name: &str) -> Result<serde_json::Value> {
    s.wait_for(
        &format!("SqliteBackup {name} finished"),
        Duration::from_secs(240),
        || {
            let out =
                s.cp.kubectl_ok(&["get", "slb", name, "-n", NS, "-o", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let st = v["status"].clone();
            Ok(matches!(st["phase"].as_str(), Some("Completed" | "Failed")).then_some(st))
        },
    )
}

fn events(s: &Stack, name: &str, reason: &str) -> Result<Vec<String>> {
    let out =
        s.cp.kubectl_ok(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        .filter_map(|e| e["note"].as_str().map(String::from))
        .collect())
}

/// `results[0].values` of a query answer, as JSON text.
fn values(body: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    Ok(v["results"][0]["values"].to_string())
}

/// A strong read on the leader of `cluster`.
fn query(s: &Stack, cluster: &str, sql: &str) -> Result<String> {
    let st = s.cluster(NS, cluster)?;
    let leader = st["status"]["leader"].as_str().context("no leader")?;
    let q: String = sql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, body) = call(
        &s.endpoint(NS, cluster, leader)?,
        "GET",
        &format!("/db/query?level=strong&q={q}"),
        None,
    )?;
    ensure!(code == 200, "query on {cluster}: {code} {body}");
    values(&body)
}

fn scenario(s: &Stack, primary: &mut Weed, failover: &Weed) -> Result<()> {
    s.cp.kubectl_ok(&["create", "namespace", NS])?;
    s.cp.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s3",
        "-n",
        NS,
        &format!("--from-literal=accessKeyId={ACCESS_KEY}"),
        &format!("--from-literal=secretAccessKey={SECRET_KEY}"),
    ])?;
    s.apply_yaml(NS, &cluster_yaml(&primary.endpoint(), &failover.endpoint()))?;
    let st = s.wait_ready(NS, "bk", 3, Duration::from_secs(240))?;
    let leader = st["leader"].as_str().unwrap_or_default().to_string();
    let ep = s.endpoint(NS, "bk", &leader)?;
    let (code, body) = call(
        &ep,
        "POST",
        "/db/execute",
        Some(r#"["CREATE TABLE t (id INTEGER PRIMARY KEY)"]"#),
    )?;
    ensure!(code == 200 && !body.contains("error"), "{code} {body}");

    // Writes go on through the backup; every one of them is acknowledged.
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let first = std::thread::scope(|scope| -> Result<serde_json::Value> {
        let writer = scope.spawn(|| -> Result<()> {
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let body = format!(r#"[["INSERT INTO t(id) VALUES(?)", {id}]]"#);
                let (code, text) = call(&ep, "POST", "/db/execute", Some(&body))?;
                ensure!(
                    code == 200 && !text.contains("error"),
                    "write {id}: {code} {text}"
                );
                written.store(id, Ordering::Relaxed);
            }
            Ok(())
        });
        s.wait_for("writes under way", Duration::from_secs(30), || {
            Ok((written.load(Ordering::Relaxed) >= 20).then_some(()))
        })?;
        s.apply_yaml(NS, &backup_yaml("first", "bk"))?;
        let st = finished(s, "first");
        stop.store(true, Ordering::Relaxed);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        st
    })?;
    ensure!(first["phase"] == "Completed", "first backup: {first}");
    ensure!(
        first["storage"] == "primary" && first["failover"] == false,
        "{first}"
    );
    ensure!(first["raftIndex"].as_u64().unwrap_or(0) > 0, "{first}");
    ensure!(first["sizeBytes"].as_u64().unwrap_or(0) > 0, "{first}");
    ensure!(
        first["backupId"].as_str().is_some_and(|i| !i.is_empty()),
        "{first}"
    );
    ensure!(
        !events(s, "first", "BackupCompleted")?.is_empty(),
        "no BackupCompleted event"
    );
    eprintln!("[backups] first: {first}");

    // The primary storage goes away: the plugin's backup lands in the failover storage, and the
    // status and a Warning say so.
    primary.stop();
    let out = s
        .plugin(&["-n", NS, "backup", "bk", "--wait"])?
        .map_err(|e| anyhow::anyhow!("kubectl litecluster backup failed: {e}"))?;
    let name = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sqlitebackup/"))
        .with_context(|| format!("the plugin named no backup: {out}"))?
        .to_string();
    let second = finished(s, &name)?;
    ensure!(second["phase"] == "Completed", "{second}");
    ensure!(
        second["storage"] == "failover" && second["failover"] == true,
        "{second}"
    );
    ensure!(
        second["raftIndex"].as_u64() > first["raftIndex"].as_u64(),
        "the second backup is not newer: {second} vs {first}"
    );
    let warned = events(s, &name, "BackupFailedOver")?;
    ensure!(
        warned.iter().any(|n| n.contains("failover")),
        "events: {warned:?}"
    );
    ensure!(
        out.contains("failover"),
        "the plugin did not say where it went: {out}"
    );
    // The plugin's one screen lists them.
    let status = s
        .plugin(&["-n", NS, "status", "bk"])?
        .map_err(|e| anyhow::anyhow!("kubectl litecluster status failed: {e}"))?;
    ensure!(
        status
            .lines()
            .any(|l| l.contains("first") && l.contains("Completed") && l.contains("primary"))
            && status
                .lines()
                .any(|l| l.contains(&name) && l.contains("failover")),
        "status lacks the backups:\n{status}"
    );

    // A new cluster recovers from the second SqliteBackup, named (its backup is in the
    // failover storage; the operator finds it from the backup's cluster): the same rows.
    let source = query(s, "bk", "SELECT count(*), sum(id) FROM t")?;
    let failover_endpoint = failover.endpoint();
    let id = second["backupId"].as_str().context("no backupId")?;
    s.apply_yaml(
        NS,
        &format!(
            "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: restored\nspec:\n  replicas: 3\n  voters: 3\n  storage:\n    size: 1Gi\n  bootstrap:\n    recovery:\n      backup:\n        name: {name}\n"
        ),
    )?;
    s.wait_ready(NS, "restored", 3, Duration::from_secs(240))?;
    for i in 0..3 {
        let pod = format!("restored-{i}");
        let ep = s.endpoint(NS, "restored", &pod)?;
        s.wait_for(
            &format!("the backup's rows on {pod}"),
            Duration::from_secs(60),
            || {
                let (code, body) = call(
                    &ep,
                    "GET",
                    "/db/query?level=none&q=SELECT%20count(*)%2C%20sum(id)%20FROM%20t",
                    None,
                )?;
                Ok((code == 200 && values(&body)? == source).then_some(()))
            },
        )?;
    }
    let restored = s.wait_for(
        "status.recovery of restored",
        Duration::from_secs(60),
        || {
            let st = s.cluster(NS, "restored")?;
            Ok(st["status"]["recovery"].is_object().then_some(st))
        },
    )?;
    let src = &restored["status"]["recoverySource"];
    ensure!(
        src["backupId"] == id
            && src["backup"] == name.as_str()
            && src["storages"][1]["name"] == "failover",
        "status.recoverySource: {src}"
    );
    ensure!(
        restored["status"]["recovery"]["backupId"] == id,
        "status.recovery: {}",
        restored["status"]["recovery"]
    );
    eprintln!("[backups] restored {source} (count, sum) from {id}");

    // Point-in-time recovery: two known writes with a time between them; a new cluster
    // recovered to that time has the first and not the second, from the archive in the
    // failover storage (the primary is still stopped, and the status says so).
    let now_ms = || k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let (code, body) = call(
        &ep,
        "POST",
        "/db/execute",
        Some(r#"[["INSERT INTO t(id) VALUES(?)", 9000001]]"#),
    )?;
    ensure!(code == 200 && !body.contains("error"), "{code} {body}");
    let t = now_ms();
    while now_ms() <= t + 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (code, body) = call(
        &ep,
        "POST",
        "/db/execute",
        Some(r#"[["INSERT INTO t(id) VALUES(?)", 9000002]]"#),
    )?;
    ensure!(code == 200 && !body.contains("error"), "{code} {body}");
    let target = k8s_openapi::jiff::Timestamp::from_millisecond(t)?.to_string();
    let (code, body) = call(&ep, "GET", "/status", None)?;
    ensure!(code == 200, "{code} {body}");
    let applied =
        serde_json::from_str::<serde_json::Value>(&body)?["store"]["raft"]["applied_index"]
            .as_u64()
            .context("no applied index")?;
    s.wait_for(
        "the archive past the second write",
        Duration::from_secs(120),
        || {
            let (_, body) = call(&ep, "GET", "/status", None)?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let a = &v["backup"]["archive"];
            Ok((a["archived_index"].as_u64() >= Some(applied)).then_some(()))
        },
    )?;
    let archive = s.wait_for(
        "status.archive on the failover storage",
        Duration::from_secs(120),
        || {
            let st = s.cluster(NS, "bk")?;
            let a = st["status"]["archive"].clone();
            Ok((a["storage"] == "failover" && a["failover"] == true).then_some(a))
        },
    )?;
    ensure!(
        archive["archivedIndex"].as_u64().unwrap_or(0) > 0 && archive["lagMs"].is_number(),
        "{archive}"
    );
    ensure!(
        !events(s, "bk", "ArchiveFailedOver")?.is_empty(),
        "no ArchiveFailedOver event"
    );
    let before = query(
        s,
        "bk",
        "SELECT count(*), sum(id) FROM t WHERE id <> 9000002",
    )?;
    let primary_endpoint = primary.endpoint();
    s.apply_yaml(
        NS,
        &format!(
            "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: pitr\nspec:\n  replicas: 3\n  voters: 3\n  storage:\n    size: 1Gi\n  bootstrap:\n    recovery:\n      targetTime: \"{target}\"\n      storages:\n        - name: primary\n          endpoint: {primary_endpoint}\n          bucket: backups\n          region: us-east-1\n          credentialsSecret:\n            name: s3\n        - name: failover\n          endpoint: {failover_endpoint}\n          bucket: backups\n          region: us-east-1\n          credentialsSecret:\n            name: s3\n"
        ),
    )?;
    s.wait_ready(NS, "pitr", 3, Duration::from_secs(300))?;
    let got = query(s, "pitr", "SELECT count(*), sum(id) FROM t")?;
    ensure!(
        got == before,
        "recovered to {target}: {got}, the source before it had {before}"
    );
    let a_and_b = query(
        s,
        "pitr",
        "SELECT count(*) FROM t WHERE id IN (9000001, 9000002)",
    )?;
    ensure!(a_and_b == "[[1]]", "the first write only, got {a_and_b}");
    let recovery = s.wait_for("status.recovery", Duration::from_secs(60), || {
        let st = s.cluster(NS, "pitr")?;
        Ok(st["status"]["recovery"]
            .is_object()
            .then(|| st["status"]["recovery"].clone()))
    })?;
    ensure!(
        recovery["targetReached"] == true
            && recovery["index"].as_u64() > recovery["backupIndex"].as_u64(),
        "{recovery}"
    );
    ensure!(
        !events(s, "pitr", "Recovered")?.is_empty(),
        "no Recovered event"
    );
    eprintln!("[backups] recovered to {target}: {got} (count, sum); {recovery}");

    // A schedule every minute, with a backup at once, keeping two: a third is made on the
    // schedule and the oldest pruned.
    s.apply_yaml(
        NS,
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteScheduledBackup\nmetadata:\n  name: every-minute\nspec:\n  cluster: bk\n  schedule: \"* * * * *\"\n  immediate: true\n  keep: 2\n",
    )?;
    let mut seen = std::collections::BTreeSet::new();
    let kept = s.wait_for(
        "three scheduled backups, two kept",
        Duration::from_secs(240),
        || {
            let out = s.cp.kubectl_ok(&[
                "get",
                "slb",
                "-n",
                NS,
                "-l",
                "litecluster.io/scheduled-backup=every-minute",
                "-o",
                "json",
            ])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            for b in &items {
                seen.insert(
                    b["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            let done = items.iter().all(|b| b["status"]["phase"] == "Completed");
            Ok((seen.len() >= 3 && items.len() == 2 && done).then_some(items))
        },
    )?;
    ensure!(
        kept.iter()
            .all(|b| b["metadata"]["ownerReferences"][0]["name"] == "every-minute"),
        "scheduled backups not owned by their schedule"
    );
    let sched =
        s.cp.kubectl_ok(&["get", "slsb", "every-minute", "-n", NS, "-o", "json"])?;
    let sched: serde_json::Value = serde_json::from_str(&sched)?;
    ensure!(
        sched["status"]["nextScheduleTime"].is_string(),
        "{}",
        sched["status"]
    );
    eprintln!("[backups] schedule made {seen:?}, kept 2");
    s.cp.kubectl_ok(&[
        "patch",
        "slsb",
        "every-minute",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ])?;
    s.wait_for(
        "the schedule says it is suspended",
        Duration::from_secs(60),
        || {
            let v: serde_json::Value = serde_json::from_str(&s.cp.kubectl_ok(&[
                "get",
                "slsb",
                "every-minute",
                "-n",
                NS,
                "-o",
                "json",
            ])?)?;
            Ok((v["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("suspended"))
                && v["status"]["nextScheduleTime"].is_null())
            .then_some(()))
        },
    )?;

    // A cluster without storages: the backup fails at once and says what to do.
    s.apply_yaml(
        NS,
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: nostore\nspec:\n  replicas: 1\n  voters: 1\n  storage:\n    size: 1Gi\n",
    )?;
    s.apply_yaml(NS, &backup_yaml("nostore-1", "nostore"))?;
    let st = finished(s, "nostore-1")?;
    ensure!(st["phase"] == "Failed", "{st}");
    let msg = st["message"].as_str().unwrap_or_default();
    if !msg.contains("has no spec.backup.storages") {
        bail!("unhelpful failure: {msg}");
    }
    Ok(())
}

#[test]
fn backups_complete_under_writes_fail_over_when_the_primary_is_gone_and_say_so() {
    let s = Stack::up(Options::for_test("backups"))
        .context("bringing up the stack")
        .unwrap();
    let gateway =
        s.cp.network
            .as_ref()
            .map(|n| n.gateway.clone())
            .expect("the stack has a pod network");
    let root = s.cp.run_dir.join("weed");
    let mut primary = Weed::start(&root.join("primary"), &gateway).unwrap();
    let failover = Weed::start(&root.join("failover"), &gateway).unwrap();
    for w in [&primary, &failover] {
        w.wait_writable("backups", Duration::from_secs(90)).unwrap();
    }
    if let Err(e) = scenario(&s, &mut primary, &failover) {
        eprintln!("{}", s.diagnostics(Some(NS)));
        panic!("backup scenario failed: {e:#}");
    }
}
