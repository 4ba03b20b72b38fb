//! Creating, scaling, pausing, and a steady state that writes nothing.

use super::*;

#[tokio::test]
async fn create_applies_every_object_and_bootstraps_one_member() {
    let (ctx, api, fake) = context(FakeNodes::default());
    let mock = api.run(Scenario::Create, vec![]);
    let action = timeout(reconcile(Arc::new(cluster()), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(writes.len(), 9, "8 objects and the status");
    assert_eq!(writes[6].2["kind"], "NetworkPolicy");
    let sts = &writes[7].2;
    assert_eq!(sts["spec"]["replicas"], 1);
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "LITECLUSTER_BOOTSTRAP" && e["value"] == "true")
    );
    assert!(
        writes[..7].iter().all(
            |w| w.1.contains("fieldManager=litecluster-operator") && w.1.contains("force=true")
        )
    );
    let status = &writes[8].2["status"];
    assert_eq!(status["phase"], "Bootstrapping the first member");
    assert_eq!(status["bootstrapped"], false);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn scale_up_adds_the_new_member_as_learner() {
    let c = cluster().bootstrapped();
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
    assert_eq!(sts["spec"]["replicas"], 3);
    let (ctx, api, fake) = context(fake);
    // db-1 is not in Raft yet, so it has no role label.
    let mock = api.run(
        Scenario::ScaleUp { sts },
        vec![pod(0), with_role(pod(1), None)],
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        ["join http://10.0.0.0:4001 db-1 voter=false"]
    );
    assert_eq!(writes[0].2["reason"], "MemberAdded");
    let status = &writes[1].2["status"];
    assert_eq!(status["phase"], "Adding member db-1");
    assert_eq!(status["leader"], "db-0");
    assert_eq!(status["bootstrapped"], true);
}

#[tokio::test]
async fn scale_down_removes_the_member_from_raft_before_its_pod() {
    let c = cluster().bootstrapped().with_replicas(1).with_voters(1);
    let fake = nodes(&[0, 1, 2], &[], &[]);
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
    // All three are still in Raft, so the StatefulSet keeps three pods for now.
    assert_eq!(sts["spec"]["replicas"], 3);
    let (ctx, api, fake) = context(fake);
    let mock = api.run(Scenario::ScaleDown { sts }, vec![pod(0), pod(1), pod(2)]);
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        ["remove http://10.0.0.0:4001 db-2"]
    );
    assert_eq!(writes[0].2["reason"], "ScaleDown");
    assert_eq!(writes[1].2["status"]["phase"], "Removing member db-2");
}

#[tokio::test]
async fn paused_cluster_is_left_alone_and_says_so_once() {
    let (ctx, mut api, fake) = context(FakeNodes::default());
    let mut paused = cluster().paused();
    paused.metadata.generation = Some(7);
    let run = tokio::spawn(reconcile(Arc::new(paused.clone()), ctx.clone()));
    // The only write: the status gains Paused=True for the generation it left alone.
    let (_, _, body) = timeout(api.expect_write(Method::PATCH, STATUS)).await;
    let action = timeout(run).await.unwrap().unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let conditions = body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    assert_eq!(conditions[0]["type"], "Paused");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["observedGeneration"], 7);
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "a paused cluster's nodes were called"
    );

    // Once the status says so, another pass writes nothing.
    let said = paused.with_status(serde_json::from_value(body["status"].clone()).unwrap());
    let action = timeout(reconcile(Arc::new(said), ctx)).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let next = tokio::time::timeout(Duration::from_millis(100), api.handle.next_request()).await;
    assert!(next.is_err() || next.unwrap().is_none());
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_resumed_cluster_drops_the_paused_condition() {
    let old = crate::controller::status::paused_status(
        &Default::default(),
        Some(1),
        k8s_openapi::jiff::Timestamp::now(),
    );
    let resumed = crate::controller::status::desired_status(
        &cluster().with_status(old.clone()),
        &observed(&[], &FakeNodes::default(), None),
        &Action::Nothing,
        false,
        None,
        k8s_openapi::jiff::Timestamp::now(),
    );
    assert!(old.conditions.iter().any(|c| c.type_ == "Paused"));
    assert!(
        resumed.conditions.iter().all(|c| c.type_ != "Paused"),
        "{:?}",
        resumed.conditions
    );
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    let fake = nodes(&[0, 1, 2], &[], &[]);
    let base = cluster().bootstrapped();
    let sts = sts_at_revision(&base, &fake, "rev-1");
    let hash = template_hash(&sts);
    let obs = observed(
        &[0, 1, 2],
        &fake,
        Some(serde_json::from_value(sts.clone()).unwrap()),
    );
    let settled = settled();
    let status = super::super::status::desired_status(
        &base,
        &obs,
        &Action::Nothing,
        true,
        Some(&settled),
        k8s_openapi::jiff::Timestamp::now(),
    );
    assert_eq!(status.phase.as_deref(), Some("Cluster in healthy state"));
    let c = base.with_status(status);
    let (ctx, api, fake) = context(fake);
    let pods = (0..3).map(|o| pod_at(o, "rev-1", Some(&hash))).collect();
    let mock = api.run(Scenario::SteadyState { sts }, pods);
    let action = timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert!(writes.is_empty(), "steady state wrote: {writes:?}");
    assert!(fake.calls.lock().unwrap().is_empty());
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(60))
    );
    let _ = ResourceExt::name_any(&SqliteCluster::new("x", cluster().spec));
}
