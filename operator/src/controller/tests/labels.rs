//! Role labels and the read-only Service.

use super::*;

#[tokio::test]
async fn role_labels_are_repaired_and_the_readonly_service_narrows_to_a_labelled_learner() {
    let c = cluster().bootstrapped().with_replicas(4);
    let fake = nodes(&[0, 1, 2], &[3], &[]);
    let mut sts = applied(
        desired_sts(
            &c,
            &ctx_for_sts(),
            &observed(&[0, 1, 2, 3], &fake, None),
            true,
            None,
        )
        .unwrap(),
    );
    sts["metadata"]["generation"] = json!(2);
    sts["status"] = json!({"replicas": 4, "observedGeneration": 2, "updateRevision": "rev-1"});
    let hash = template_hash(&sts);
    // db-3 is a labelled learner, the read-only Service still selects everyone; db-2 lost its
    // label (say, a user removed it).
    let pods = (0..4)
        .map(|o| {
            let p = pod_at(o, "rev-1", Some(&hash));
            match o {
                2 => with_role(p, None),
                3 => with_role(p, Some(LEARNER)),
                _ => p,
            }
        })
        .collect();
    let (ctx, mut api, fake) = context(fake);
    api.cluster = Some(c.clone());
    api.read_replicas = true;
    api.relabel = vec!["db-2"];
    api.stale = vec!["/api/v1/namespaces/ns/services/db-readonly"];
    let status = STATUS;
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            then: vec![(Method::PATCH, status)],
        },
        pods,
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "membership is settled"
    );
    let label = &writes[0].2["metadata"];
    assert_eq!(label["labels"][ROLE_LABEL], VOTER);
    assert_eq!(
        label["uid"], "uid-2",
        "the patch is bound to the pod that was judged"
    );
    let readonly = &writes[1].2;
    assert_eq!(readonly["metadata"]["name"], "db-readonly");
    assert_eq!(readonly["spec"]["selector"][ROLE_LABEL], LEARNER);
    assert!(writes[2].1.ends_with("/status") || writes[2].1.contains("/status?"));
    assert_eq!(writes.len(), 3, "{writes:?}");
}
