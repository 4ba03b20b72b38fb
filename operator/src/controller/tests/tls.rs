//! TLS: members run with the Secret's certificate, a Secret without its CA stops the reconcile, an unsafe CA change holds restarts back.

use super::*;

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Hash of the first certificate in a testdata PEM file, as the pod annotations carry it.
fn leaf_hash(name: &str) -> String {
    crate::resources::bytes_hash(&crate::tls::pem_certs(&testdata(name)).unwrap()[0])
}

fn tls_secret(keys: &[&str]) -> Value {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let data = keys
        .iter()
        .map(|k| {
            let v = match *k {
                "ca.crt" => testdata("ca1.crt"),
                "tls.crt" => testdata("member1.crt"),
                other => format!("{other} contents").into_bytes(),
            };
            (k.to_string(), ByteString(v))
        })
        .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("db-tls".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let mut v = serde_json::to_value(secret).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

#[tokio::test]
async fn tls_cluster_runs_members_with_the_certificate_and_reaches_them_over_https() {
    let c = cluster().with_tls("db-tls");
    let (ctx, mut api, fake) = context(FakeNodes::default());
    api.cluster = Some(c.clone());
    api.secrets = vec![(
        "db-tls".into(),
        tls_secret(&["tls.crt", "tls.key", "ca.crt"]),
    )];
    // Member 0 is starting: the operator must already know where its name points.
    let mock = api.run(Scenario::Create, vec![with_role(pod(0), None)]);
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();

    let access = fake.access.lock().unwrap().clone();
    assert_eq!(access.len(), 1, "one client per reconcile: {access:?}");
    assert_eq!(access[0].ca_pem.as_deref(), Some(&testdata("ca1.crt")[..]));
    assert_eq!(
        access[0].addresses,
        [(
            "db-0.db-headless.ns.svc.cluster.local".to_string(),
            "10.0.0.0".parse().unwrap()
        )]
    );
    assert!(access[0].credentials.is_none());

    let sts = writes
        .iter()
        .find(|w| w.2["kind"] == "StatefulSet")
        .expect("the StatefulSet is applied");
    let pod = &sts.2["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for flag in [
        "--raft-cert=/etc/litecluster/tls/tls.crt",
        "--raft-key=/etc/litecluster/tls/tls.key",
        "--raft-ca-cert=/etc/litecluster/tls/ca.crt",
        "--http-cert=/etc/litecluster/tls/tls.crt",
        "--http-ca-cert=/etc/litecluster/tls/ca.crt",
    ] {
        assert!(args.contains(&flag), "{flag} missing from {args:?}");
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(
        pod["metadata"]["annotations"][crate::resources::TLS_CERT_HASH_ANNOTATION],
        leaf_hash("member1.crt")
    );
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "db-tls")
    );
}

#[tokio::test]
async fn tls_secret_without_its_ca_stops_the_reconcile_with_a_clear_error() {
    let c = cluster().with_tls("db-tls");
    let (ctx, mut api, _fake) = context(FakeNodes::default());
    let answer = tokio::spawn(async move {
        api.expect(
            Method::GET,
            "/apis/apps/v1/namespaces/ns/statefulsets/db",
            None,
        )
        .await;
        api.expect(
            Method::GET,
            &format!("/api/v1/namespaces/ns/pods?&{MEMBERS}"),
            Some(json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":[]})),
        )
        .await;
        api.expect(
            Method::GET,
            "/api/v1/namespaces/ns/secrets/db-tls",
            Some(tls_secret(&["tls.crt", "tls.key"])),
        )
        .await;
        let event = api.expect_write(Method::POST, EVENTS).await;
        (api, event)
    });
    let err = timeout(reconcile(Arc::new(c), ctx)).await.unwrap_err();
    assert_eq!(err.to_string(), "tls secret db-tls: missing key ca.crt");
    assert_eq!(err.metric_label(), "tls_secret");
    let (mut api, event) = timeout(answer).await.unwrap();
    assert_eq!(event.2["reason"], "SecretInvalid");
    assert_eq!(event.2["type"], "Warning");
    assert_eq!(
        event.2["note"],
        "tls secret db-tls: missing key ca.crt; nothing is reconciled until the Secret is fixed"
    );
    // Nothing else: no object was created from a half-configured Secret.
    let next = tokio::time::timeout(Duration::from_millis(100), api.handle.next_request()).await;
    assert!(next.is_err() || next.unwrap().is_none());
}

#[tokio::test]
async fn an_unsafe_ca_swap_holds_every_restart_back_and_says_why() {
    let mut c = cluster().bootstrapped().with_tls("db-tls");
    // Plain HTTP on the API keeps the fake nodes reachable; the Raft port still uses the Secret.
    c.spec.tls.as_mut().unwrap().api = false;
    let fake = nodes(&[0, 1, 2], &[], &[]);
    // The live template is what the members run: member1.crt under ca1. The Secret now holds
    // a certificate and a CA they have never seen; the template must keep the old hashes (the
    // verifier fails on any StatefulSet write).
    let running_tls = super::super::observe::ObservedTls {
        ca_pem: testdata("ca1.crt"),
        cert_hash: leaf_hash("member1.crt"),
        ca_hashes: vec![leaf_hash("ca1.crt")],
        unsafe_change: None,
    };
    let mut obs = observed(&[0, 1, 2], &fake, None);
    obs.tls = Some(running_tls);
    let mut sts = applied(desired_sts(&c, &ctx_for_sts(), &obs, true, None).unwrap());
    sts["metadata"]["generation"] = json!(2);
    sts["status"] = json!({"replicas": 3, "observedGeneration": 2, "updateRevision": "rev-2"});
    // Every member runs the previous revision (say, the image changed), with member1.crt under ca1.
    let pods = (0..3)
        .map(|o| {
            let mut p = pod_at(o, "rev-1", Some("older"));
            let a = p.metadata.annotations.get_or_insert_default();
            a.insert(
                crate::resources::TLS_CERT_HASH_ANNOTATION.into(),
                leaf_hash("member1.crt"),
            );
            a.insert(
                crate::resources::TLS_CA_HASHES_ANNOTATION.into(),
                leaf_hash("ca1.crt"),
            );
            p
        })
        .collect();
    let (ctx, mut api, fake) = context(fake);
    api.cluster = Some(c.clone());
    let mut secret = tls_secret(&["tls.key"]);
    let b64 = |name: &str| serde_json::to_value(k8s_openapi::ByteString(testdata(name))).unwrap();
    secret["data"]["tls.crt"] = b64("member2.crt");
    secret["data"]["ca.crt"] = b64("ca2.crt");
    api.secrets = vec![("db-tls".into(), secret)];
    let events = EVENTS;
    let status = STATUS;
    let mock = api.run(
        Scenario::Maintenance {
            sts,
            // The image rollout is announced, but no DELETE: every member is outdated, yet
            // none is restarted while a restart would load the unsafe Secret.
            then: vec![
                (Method::POST, events),
                (Method::POST, events),
                (Method::PATCH, status),
            ],
        },
        pods,
    );
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();
    assert!(fake.calls.lock().unwrap().is_empty(), "no leadership moved");
    assert_eq!(writes[0].2["reason"], "TlsChangeUnsafe");
    assert_eq!(writes[0].2["type"], "Warning");
    let note = writes[0].2["note"].as_str().unwrap();
    assert!(note.contains("Rotate in steps"), "{note}");
    let status = &writes[2].2["status"];
    let degraded = condition(status, "Degraded");
    assert_eq!(
        (&degraded["status"], &degraded["reason"]),
        (&json!("True"), &json!("TlsChangeUnsafe"))
    );
    assert!(
        status["phase"].as_str().unwrap().contains("TLS Secret"),
        "{}",
        status["phase"]
    );
}
