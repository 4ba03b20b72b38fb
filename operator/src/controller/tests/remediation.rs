//! Snapshot remediation: a failing member is asked for a full snapshot.

use super::*;

#[tokio::test]
async fn remediation_asks_the_failing_member_for_a_full_snapshot() {
    let mut fake = nodes(&[0, 1, 2], &[], &[]);
    fake.statuses.get_mut(&url(1)).unwrap().store.snapshot = Some(SnapshotHealth {
        last_success: Some(SnapshotSuccess {
            index: 5,
            kind: "incremental".into(),
            at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 3,
        }),
        consecutive_failures: 3,
        ..Default::default()
    });
    let c = cluster().bootstrapped();
    // No StatefulSet status: the rollout has nothing to judge and stays out of the way.
    let sts = applied(
        desired_sts(
            &c,
            &ctx_for_sts(),
            &observed(&[0, 1, 2], &fake, None),
            true,
            None,
        )
        .unwrap(),
    );
    let (ctx, api, fake) = context(fake);
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            then: vec![(Method::POST, EVENTS), (Method::PATCH, STATUS)],
        },
        vec![pod(0), pod(1), pod(2)],
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        ["snapshot?type=full http://10.0.0.1:4001"]
    );
    assert_eq!(writes[0].2["reason"], "FullSnapshotTriggered");
    let status = &writes[1].2["status"];
    let r = &status["remediation"];
    assert_eq!(
        (&r["member"], &r["step"], &r["failures"]),
        (&json!("db-1"), &json!("FullSnapshot"), &json!(3))
    );
    assert_eq!(r["baselineSuccess"], "2026-01-01T00:00:00Z");
    assert!(r["since"].is_string());
    let snap = condition(status, "SnapshotsHealthy");
    assert_eq!(
        (&snap["status"], &snap["reason"]),
        (&json!("False"), &json!("Remediating"))
    );
}
