//! TLS by default: a new cluster gets an issued CA and certificate; a cluster from before
//! stays as it runs; TLS never turns on or off under running members.

use super::*;
use crate::crd::TlsSpec;

fn data(secret: &Value, key: &str) -> Vec<u8> {
    serde_json::from_value::<k8s_openapi::ByteString>(secret["data"][key].clone())
        .map(|b| b.0)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_new_cluster_gets_an_issued_ca_and_certificate_and_runs_with_them() {
    let mut c = cluster();
    c.spec.tls = None;
    let (ctx, mut api, fake) = context(FakeNodes::default());
    // The objects are built from the cluster as resolved.
    api.cluster = Some(cluster().with_tls("db-tls"));
    api.issue_tls = true;
    let mock = api.run(Scenario::Create, vec![with_role(pod(0), None)]);
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    let writes = timeout(mock).await.unwrap();

    let (ca, tls) = (&writes[0].2, &writes[1].2);
    assert_eq!(ca["type"], "Opaque");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    for s in [ca, tls] {
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    }
    // The CA's key stays out of the Secret the pods mount.
    assert!(!data(ca, "ca.key").is_empty());
    assert!(tls["data"].get("ca.key").is_none());
    assert_eq!(data(ca, "ca.crt"), data(tls, "ca.crt"));
    let chain = crate::tls::pem_certs(&data(tls, "tls.crt")).unwrap();
    let anchors = crate::tls::pem_certs(&data(ca, "ca.crt")).unwrap();
    crate::tls::verify_member(
        &chain,
        &anchors,
        &["db-2.db-headless.ns.svc.cluster.local".into()],
    )
    .unwrap();
    assert_eq!(writes[2].2["reason"], "CertificateIssued");

    // Members run with it, and the operator trusts its CA.
    let sts = writes
        .iter()
        .find(|w| w.2["kind"] == "StatefulSet")
        .expect("the StatefulSet is applied");
    let args = sts.2["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--raft-cert=") && args.contains("--http-cert="),
        "{args}"
    );
    let access = fake.access.lock().unwrap().clone();
    assert_eq!(access[0].ca_pem.as_deref(), Some(&data(ca, "ca.crt")[..]));
}

#[tokio::test]
async fn a_cluster_created_before_tls_was_the_default_stays_without_it() {
    let fake = nodes(&[0, 1, 2], &[], &[]);
    let base = cluster().bootstrapped();
    let sts = sts_at_revision(&base, &fake, "rev-1");
    let hash = template_hash(&sts);
    let obs = observed(
        &[0, 1, 2],
        &fake,
        Some(serde_json::from_value(sts.clone()).unwrap()),
    );
    let status = super::super::status::desired_status(
        &base,
        &obs,
        &Action::Nothing,
        true,
        Some(&settled()),
        k8s_openapi::jiff::Timestamp::now(),
    );
    let mut c = base.with_status(status);
    c.spec.tls = None;
    let (ctx, api, _fake) = context(fake);
    let pods = (0..3).map(|o| pod_at(o, "rev-1", Some(&hash))).collect();
    // No Secret is read or written, and nothing else changes either.
    let mock = api.run(Scenario::SteadyState { sts }, pods);
    timeout(reconcile(Arc::new(c), ctx)).await.unwrap();
    assert!(timeout(mock).await.unwrap().is_empty());
}

#[tokio::test]
async fn tls_never_changes_under_running_members() {
    use super::super::certificates::{LiveTls, resolve};
    let (ctx, _api, _fake) = context(FakeNodes::default());
    let run = |tls: Option<TlsSpec>, live: LiveTls| {
        let mut c = cluster();
        c.spec.tls = tls;
        let ctx = ctx.clone();
        async move {
            resolve(&c, &ctx, "ns", Some(&live))
                .await
                .map(|r| r.spec.tls)
        }
    };
    let plain = LiveTls {
        tls: false,
        api: false,
        secret: None,
    };
    let issued = LiveTls {
        tls: true,
        api: true,
        secret: Some("db-tls".into()),
    };
    let theirs = LiveTls {
        tls: true,
        api: true,
        secret: Some("mine".into()),
    };
    let off = TlsSpec {
        enabled: false,
        ..Default::default()
    };
    let err = run(Some(off.clone()), issued.clone()).await.unwrap_err();
    assert!(err.to_string().contains("put tls.enabled back"), "{err}");
    let err = run(Some(TlsSpec::default()), plain.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("set tls.enabled: false"), "{err}");
    // Dropping `tls: {api: false}` would turn HTTPS on under members that serve HTTP.
    let http_api = LiveTls {
        api: false,
        ..theirs.clone()
    };
    let err = run(None, http_api).await.unwrap_err();
    assert!(err.to_string().contains("put tls.api: false back"), "{err}");
    // Dropping the user's Secret would move them to a CA they do not trust.
    let err = run(None, theirs.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("put tls.secretName: mine back"),
        "{err}"
    );
    // What they run already: no request is made.
    assert_eq!(run(Some(off.clone()), plain).await.unwrap(), Some(off));
    let mine = TlsSpec {
        secret_name: Some("mine".into()),
        ..Default::default()
    };
    assert_eq!(run(Some(mine.clone()), theirs).await.unwrap(), Some(mine));
}

#[tokio::test]
async fn what_members_run_comes_from_the_statefulset_or_else_a_pod() {
    use super::super::certificates::LiveTls;
    let with_tls = desired_sts(
        &cluster().with_tls("db-tls"),
        &ctx_for_sts(),
        &ObservedCluster::default(),
        true,
        None,
    )
    .unwrap();
    let plain = desired_sts(
        &cluster(),
        &ctx_for_sts(),
        &ObservedCluster::default(),
        true,
        None,
    )
    .unwrap();
    let running = LiveTls {
        tls: true,
        api: true,
        secret: Some("db-tls".into()),
    };
    assert_eq!(
        LiveTls::observe(Some(&with_tls), &[]),
        Some(running.clone())
    );
    // Without a StatefulSet (deleted with --cascade=orphan) the pods still tell.
    let mut p = pod(0);
    p.spec = with_tls.spec.as_ref().and_then(|s| s.template.spec.clone());
    assert_eq!(LiveTls::observe(None, &[p]), Some(running));
    let none = LiveTls::observe(Some(&plain), &[]).unwrap();
    assert!(!none.tls && !none.api && none.secret.is_none());
    assert_eq!(LiveTls::observe(None, &[]), None);
}
