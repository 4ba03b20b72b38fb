//! `bootstrap.recovery.backup`: a SqliteBackup stands for its backup id and the storages of
//! the cluster it backed up, resolved once and then kept.

use super::*;
use crate::backup::{SqliteBackup, SqliteBackupSpec, SqliteBackupStatus};
use crate::controller::recovery;
use crate::crd::RecoverySource;

const BACKUP: &str = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqlitebackups/nightly";
const SOURCE: &str = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/prod";

fn recovering() -> SqliteCluster {
    let mut c = cluster();
    c.spec.bootstrap = Some(
        serde_json::from_value(json!({"recovery": {"backup": {"name": "nightly"},
            "targetTime": "2026-12-02T10:00:00Z"}}))
        .unwrap(),
    );
    c
}

fn backup_json(phase: &str) -> Value {
    let mut b = SqliteBackup::new(
        "nightly",
        SqliteBackupSpec {
            cluster: "prod".into(),
        },
    );
    b.metadata.namespace = Some("ns".into());
    b.status = Some(SqliteBackupStatus {
        phase: Some(phase.into()),
        backup_id: (phase == "Completed").then(|| "20261202T030000.000Z-i42".into()),
        ..Default::default()
    });
    let mut v = serde_json::to_value(b).unwrap();
    v["apiVersion"] = json!("litecluster.io/v1alpha1");
    v["kind"] = json!("SqliteBackup");
    v
}

fn source_json() -> Value {
    let mut c = cluster();
    c.metadata.name = Some("prod".into());
    c.spec.backup = Some(
        serde_json::from_value(json!({"storages": [
            {"name": "primary", "endpoint": "http://s3", "bucket": "b", "credentialsSecret": {"name": "s3"}},
            {"name": "spare", "endpoint": "http://s3b", "bucket": "b", "credentialsSecret": {"name": "s3b"}}]}))
        .unwrap(),
    );
    let mut v = serde_json::to_value(c).unwrap();
    v["apiVersion"] = json!("litecluster.io/v1alpha1");
    v["kind"] = json!("SqliteCluster");
    v
}

fn recovery_of(c: &SqliteCluster) -> crate::crd::RecoverySpec {
    c.spec.bootstrap.clone().unwrap().recovery.unwrap()
}

#[tokio::test]
async fn a_completed_backup_stands_for_its_id_and_its_clusters_storages() {
    let (ctx, mut api, _) = context(nodes(&[], &[], &[]));
    let mock = tokio::spawn(async move {
        api.expect(Method::GET, BACKUP, Some(backup_json("Completed")))
            .await;
        api.expect(Method::GET, SOURCE, Some(source_json())).await;
    });
    let c = timeout(recovery::resolve(recovering(), &ctx, "ns"))
        .await
        .unwrap();
    timeout(mock).await.unwrap();
    let r = recovery_of(&c);
    assert_eq!(r.backup_id.as_deref(), Some("20261202T030000.000Z-i42"));
    let names: Vec<&str> = r.storages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["primary", "spare"]);
    assert_eq!(r.target_time.as_deref(), Some("2026-12-02T10:00:00Z"));
}

#[tokio::test]
async fn an_unfinished_or_missing_backup_makes_the_cluster_wait_and_says_why() {
    let (ctx, mut api, _) = context(nodes(&[], &[], &[]));
    let mock = tokio::spawn(async move {
        api.expect(Method::GET, BACKUP, Some(backup_json("Running")))
            .await;
        api.expect(Method::GET, BACKUP, None).await;
    });
    let e = timeout(recovery::resolve(recovering(), &ctx, "ns"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("waiting for SqliteBackup nightly to complete (it is Running)"),
        "{e}"
    );
    let e = timeout(recovery::resolve(recovering(), &ctx, "ns"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not found: create it, or name the storages"),
        "{e}"
    );
    timeout(mock).await.unwrap();
}

#[tokio::test]
async fn once_resolved_the_status_holds_it_and_nothing_is_asked() {
    let (ctx, _api, _) = context(nodes(&[], &[], &[]));
    let mut c = recovering();
    let source = RecoverySource {
        backup: "nightly".into(),
        backup_id: "b-7".into(),
        storages: serde_json::from_value(json!([
            {"name": "primary", "endpoint": "http://s3", "bucket": "b", "credentialsSecret": {"name": "s3"}}]))
        .unwrap(),
    };
    c.status = Some(crate::crd::SqliteClusterStatus {
        recovery_source: Some(source),
        bootstrapped: true,
        ..Default::default()
    });
    // No request is answered: one would hang until the timeout.
    let r = recovery_of(&timeout(recovery::resolve(c, &ctx, "ns")).await.unwrap());
    assert_eq!(r.backup_id.as_deref(), Some("b-7"));
    assert_eq!(r.storages.len(), 1);
}
