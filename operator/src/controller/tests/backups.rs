//! SqliteBackup: the leader is asked and the outcome recorded; what cannot work fails at once
//! with what to do; a finished backup is left alone.

use super::*;
use crate::backup::{SqliteBackup, SqliteBackupSpec, SqliteBackupStatus};
use crate::controller::backups;
use crate::node_client::BackupReport;

const BACKUP_STATUS: &str = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqlitebackups/b1/status?&force=true&fieldManager=litecluster-operator";

fn backup() -> SqliteBackup {
    let mut b = SqliteBackup::new(
        "b1",
        SqliteBackupSpec {
            cluster: "db".into(),
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.metadata.uid = Some("uid-b1".into());
    b
}

/// The backup as the API server returns it (the reconciler reads it fresh first).
fn backup_json() -> Value {
    let mut v = serde_json::to_value(backup()).unwrap();
    v["apiVersion"] = json!("litecluster.io/v1alpha1");
    v["kind"] = json!("SqliteBackup");
    v
}

const BACKUP: &str = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqlitebackups/b1";

fn with_storage(mut c: SqliteCluster) -> Value {
    c.spec.backup = Some(
        serde_json::from_value(json!({"storages": [{"name": "primary",
            "endpoint": "http://s3", "bucket": "b", "credentialsSecret": {"name": "s3"}}]}))
        .unwrap(),
    );
    let mut v = serde_json::to_value(c).unwrap();
    v["apiVersion"] = json!("litecluster.io/v1alpha1");
    v["kind"] = json!("SqliteCluster");
    v
}

#[tokio::test]
async fn the_leader_takes_the_backup_and_the_status_says_where_it_went() {
    let mut fake = nodes(&[0, 1, 2], &[], &[]);
    fake.backup = Some(BackupOutcome::Done(BackupReport {
        id: "20261202T101010Z-abc".into(),
        storage: "failover".into(),
        raft_index: 42,
        size: 1000,
        db_size: 4096,
        sha256: "ff".into(),
        failover: true,
    }));
    let (ctx, mut api, fake) = context(fake);
    let mock = tokio::spawn(async move {
        api.expect(Method::GET, BACKUP, Some(backup_json())).await;
        api.expect(
            Method::GET,
            "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db",
            Some(with_storage(cluster().bootstrapped())),
        )
        .await;
        // observe: the StatefulSet, the member pods (their nodes tell who leads).
        api.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/ns/statefulsets/db",
            None,
        )
        .await;
        let pods: Vec<Pod> = (0..3).map(pod).collect();
        api.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ns/pods?&{MEMBERS}"),
            Some(json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":pods})),
        )
        .await;
        let running = api.expect_write(Method::PATCH, BACKUP_STATUS).await;
        let started = api.expect_write(Method::POST, EVENTS).await;
        let done = api.expect_write(Method::PATCH, BACKUP_STATUS).await;
        let event = api.expect_write(Method::POST, EVENTS).await;
        (running.2, started.2, done.2, event.2)
    });
    let action = timeout(backups::reconcile(Arc::new(backup()), ctx))
        .await
        .unwrap();
    let (running, started, done, event) = timeout(mock).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert_eq!(running["status"]["phase"], "Running");
    assert_eq!(running["status"]["member"], "db-0");
    assert_eq!(running["status"]["attempts"], 1);
    assert_eq!(started["reason"], "BackupStarted");
    let st = &done["status"];
    assert_eq!(st["phase"], "Completed");
    assert_eq!(st["storage"], "failover");
    assert_eq!(st["failover"], true);
    assert_eq!(st["raftIndex"], 42);
    assert_eq!(st["backupId"], "20261202T101010Z-abc");
    assert!(st["completedAt"].is_string() && st["startedAt"].is_string());
    // Going to a failover storage is worth a Warning.
    assert_eq!(event["reason"], "BackupFailedOver");
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        fake.calls.lock().unwrap().as_slice(),
        ["backup http://10.0.0.0:4001"]
    );
}

#[tokio::test]
async fn a_backup_of_a_missing_cluster_or_one_without_storages_fails_and_says_what_to_do() {
    for (cluster, want) in [
        (None, "there is no SqliteCluster db in namespace ns"),
        (
            Some(serde_json::to_value(cluster()).map(|mut v| {
                v["apiVersion"] = json!("litecluster.io/v1alpha1");
                v["kind"] = json!("SqliteCluster");
                v
            })),
            "has no spec.backup.storages",
        ),
    ] {
        let (ctx, mut api, fake) = context(FakeNodes::default());
        let mock = tokio::spawn(async move {
            api.expect(Method::GET, BACKUP, Some(backup_json())).await;
            api.expect(
                Method::GET,
                "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db",
                cluster.map(Result::unwrap),
            )
            .await;
            let failed = api.expect_write(Method::PATCH, BACKUP_STATUS).await;
            let event = api.expect_write(Method::POST, EVENTS).await;
            (failed.2, event.2)
        });
        timeout(backups::reconcile(Arc::new(backup()), ctx))
            .await
            .unwrap();
        let (failed, event) = timeout(mock).await.unwrap();
        assert_eq!(failed["status"]["phase"], "Failed");
        let msg = failed["status"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg}");
        assert_eq!(event["reason"], "BackupFailed");
        assert!(fake.calls.lock().unwrap().is_empty(), "no node was asked");
    }
}

#[tokio::test]
async fn a_finished_backup_is_left_alone() {
    let (ctx, _api, fake) = context(FakeNodes::default());
    let mut b = backup();
    b.status = Some(SqliteBackupStatus {
        phase: Some("Completed".into()),
        ..Default::default()
    });
    // Any request would find no server answering and fail the reconcile.
    let action = timeout(backups::reconcile(Arc::new(b), ctx)).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_backup_finished_since_the_cache_saw_it_is_not_taken_again() {
    let (ctx, mut api, fake) = context(FakeNodes::default());
    let mock = tokio::spawn(async move {
        let mut done = backup_json();
        done["status"] = json!({"phase": "Completed", "backupId": "x"});
        api.expect(Method::GET, BACKUP, Some(done)).await;
    });
    // The cached object still says Running.
    let mut cached = backup();
    cached.status = Some(SqliteBackupStatus {
        phase: Some("Running".into()),
        attempts: Some(1),
        ..Default::default()
    });
    let action = timeout(backups::reconcile(Arc::new(cached), ctx))
        .await
        .unwrap();
    timeout(mock).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "the leader was asked again"
    );
}

#[tokio::test]
async fn a_retry_waits_its_turn() {
    let (ctx, mut api, fake) = context(FakeNodes::default());
    let mock = tokio::spawn(async move {
        let mut waiting = backup_json();
        let later = k8s_openapi::jiff::Timestamp::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(10))
            .unwrap();
        waiting["status"] =
            json!({"phase": "Running", "attempts": 1, "nextAttemptAt": later.to_string()});
        api.expect(Method::GET, BACKUP, Some(waiting)).await;
    });
    let action = timeout(backups::reconcile(Arc::new(backup()), ctx))
        .await
        .unwrap();
    timeout(mock).await.unwrap();
    assert_ne!(action, kube::runtime::controller::Action::await_change());
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "asked before its time"
    );
}
