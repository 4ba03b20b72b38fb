//! Volumes: claims grow to the spec size, refusals are reported, a new member waits for its volume.

use super::*;

/// A bound member claim asking for `size` and having `has`.
fn claim_with(name: &str, size: &str, has: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
        "spec": {"resources": {"requests": {"storage": size}}},
        "status": {"phase": "Bound", "capacity": {"storage": has}}})
}

fn claim_json(name: &str, size: &str) -> Value {
    claim_with(name, size, size)
}

/// A settled 3-member cluster whose spec now asks for `size`; claims as given.
async fn grow_volumes(
    claims: Vec<Value>,
    grow: Vec<(&'static str, Option<(u16, &'static str)>)>,
) -> Vec<(Method, String, Value)> {
    let c = cluster().bootstrapped().with_storage("2Gi", None);
    let fake = nodes(&[0, 1, 2], &[], &[]);
    let sts = sts_at_revision(&c, &fake, "rev-1");
    let hash = template_hash(&sts);
    let (ctx, mut api, _fake) = context(fake);
    api.cluster = Some(c.clone());
    api.claims = claims;
    api.grow = grow;
    let status = STATUS;
    let pods = (0..3).map(|o| pod_at(o, "rev-1", Some(&hash))).collect();
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            then: vec![(Method::PATCH, status)],
        },
        pods,
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    timeout(mock).await.unwrap()
}

#[tokio::test]
async fn a_larger_storage_size_grows_each_smaller_member_claim() {
    let writes = grow_volumes(
        vec![
            claim_json("data-db-0", "1Gi"),
            claim_json("data-db-1", "2Gi"),
            claim_json("data-db-2", "1Gi"),
        ],
        vec![("data-db-0", None), ("data-db-2", None)],
    )
    .await;
    assert_eq!(
        writes[0].2,
        json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
    );
    assert!(writes[0].1.contains("fieldManager=litecluster-operator"));
    assert_eq!(writes[1].2["reason"], "VolumeExpansion");
    assert_eq!(writes[1].2["note"], "growing data-db-0 from 1Gi to 2Gi");
    assert!(writes[2].1.ends_with("/data-db-2") || writes[2].1.contains("/data-db-2?"));
    assert_eq!(writes.len(), 5, "two claims, two events, the status");
}

#[tokio::test]
async fn a_claim_whose_class_cannot_expand_is_reported_and_the_reconcile_goes_on() {
    let refusal = "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";
    let writes = grow_volumes(
        vec![
            claim_json("data-db-0", "1Gi"),
            claim_json("data-db-1", "2Gi"),
            claim_json("data-db-2", "2Gi"),
        ],
        vec![("data-db-0", Some((403, refusal)))],
    )
    .await;
    let event = &writes[0].2;
    assert_eq!(event["reason"], "VolumeExpansionFailed");
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains(refusal) && note.contains("allowVolumeExpansion"),
        "{note}"
    );
    // The status was still written: a refused expansion does not stop the reconcile.
    assert!(writes[1].1.contains("/status"));
}

#[tokio::test]
async fn a_new_member_waits_for_its_volume_to_reach_the_spec_size_before_joining() {
    let c = cluster().bootstrapped().with_storage("2Gi", None);
    let fake = nodes(&[0], &[], &[1]);
    let sts = applied(
        desired_sts(
            &c,
            &ctx_for_sts(),
            &observed(&[0, 1], &fake, None),
            true,
            None,
        )
        .unwrap(),
    );
    let (ctx, mut api, fake) = context(fake);
    api.cluster = Some(c.clone());
    // db-1's claim was created from the template at 1Gi and asks for 2Gi now; it has 1Gi.
    api.claims = vec![
        claim_json("data-db-0", "2Gi"),
        claim_with("data-db-1", "2Gi", "1Gi"),
    ];
    let status = STATUS;
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            then: vec![(Method::PATCH, status)],
        },
        vec![pod(0), with_role(pod(1), None)],
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "db-1 must not join yet"
    );
    assert_eq!(
        writes[0].2["status"]["phase"],
        "Waiting: the volume of db-1 is growing to 2Gi"
    );
}

#[tokio::test]
async fn a_failed_claim_patch_is_reported_and_the_reconcile_goes_on() {
    // Neither admission's 403/422: say a validating webhook that is down.
    let writes = grow_volumes(
        vec![
            claim_json("data-db-0", "1Gi"),
            claim_json("data-db-1", "2Gi"),
            claim_json("data-db-2", "2Gi"),
        ],
        vec![("data-db-0", Some((500, "webhook unavailable")))],
    )
    .await;
    assert_eq!(writes[0].2["reason"], "VolumeExpansionFailed");
    let note = writes[0].2["note"].as_str().unwrap();
    assert!(
        note.starts_with("cannot grow data-db-0 from 1Gi to 2Gi:")
            && note.contains("webhook unavailable"),
        "{note}"
    );
    assert!(
        writes[1].1.contains("/status"),
        "the status is still written"
    );
}
