//! Rolling restarts: one outdated member at a time, the leader last and after a hand-over.

use super::*;

#[tokio::test]
async fn rollout_deletes_one_outdated_follower_and_records_it() {
    let c = cluster().bootstrapped();
    let fake = nodes(&[0, 1, 2], &[], &[]);
    let sts = sts_at_revision(&c, &fake, "rev-2");
    let hash = template_hash(&sts);
    // 0 and 1 already run the current template; 2 still runs the previous one.
    let pods = vec![
        pod_at(0, "rev-2", Some(&hash)),
        pod_at(1, "rev-2", Some(&hash)),
        pod_at(2, "rev-1", Some("older")),
    ];
    let (ctx, api, fake) = context(fake);
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            then: vec![
                (Method::POST, EVENTS),
                (Method::DELETE, "/api/v1/namespaces/ns/pods/db-2?"),
                (Method::POST, EVENTS),
                (Method::PATCH, STATUS),
            ],
        },
        pods,
    );
    let action = timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "no node call for a follower"
    );
    assert_eq!(writes[0].2["reason"], "RollingRestart");
    // The delete is conditional on the pod we judged, so a stale view cannot hit its successor.
    assert_eq!(writes[1].2["preconditions"]["uid"], "uid-2");
    assert_eq!(writes[2].2["reason"], "MemberRestarted");
    let status = &writes[3].2["status"];
    assert_eq!(status["rollout"]["revision"], "rev-2");
    assert_eq!(status["rollout"]["reason"], "pod template changed");
    assert_eq!(status["lastRestart"]["member"], "db-2");
    assert_eq!(status["lastRestart"]["podUid"], "uid-2");
    assert_eq!(status["updatedReplicas"], 2);
    assert_eq!(
        status["phase"],
        "Rolling restart (2/3 updated): restarting member db-2 (pod template changed)"
    );
    let progressing = condition(status, "Progressing");
    assert_eq!(
        (&progressing["status"], &progressing["reason"]),
        (&json!("True"), &json!("RollingRestart"))
    );
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn rollout_hands_leadership_over_before_restarting_the_leader() {
    let fake = nodes(&[0, 1, 2], &[], &[]);
    let c = cluster().bootstrapped();
    let sts = sts_at_revision(&c, &fake, "rev-2");
    let hash = template_hash(&sts);
    // Only the leader (0) is left; the rollout was already under way.
    let c = c.with_status(crate::crd::SqliteClusterStatus {
        bootstrapped: true,
        rollout: Some(crate::crd::RolloutStatus {
            revision: "rev-2".into(),
            reason: "pod template changed".into(),
            started_at: None,
        }),
        ..Default::default()
    });
    let pods = vec![
        pod_at(0, "rev-1", None),
        pod_at(1, "rev-2", Some(&hash)),
        pod_at(2, "rev-2", Some(&hash)),
    ];
    let (ctx, api, fake) = context(fake);
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            then: vec![(Method::POST, EVENTS), (Method::PATCH, STATUS)],
        },
        pods,
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert_eq!(*fake.calls.lock().unwrap(), ["leader http://10.0.0.0:4001"]);
    assert_eq!(writes[0].2["reason"], "LeadershipTransferred");
    assert!(
        writes[1].2["status"]["phase"]
            .as_str()
            .unwrap()
            .contains("moving leadership away from db-0")
    );
}
