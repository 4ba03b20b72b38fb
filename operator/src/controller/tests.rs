//! Reconcile tests against a mocked API server (tower-test) and fake nodes, one `Scenario` per path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::create::{HASH_ANNOTATION, desired_sts, spec_hash};
use super::observe::{ObservedCluster, ObservedPod, PodTemplateInfo};
use super::{Context, Maintenance, reconcile, rollout};
use crate::controller::membership::Action;
use crate::crd::SqliteCluster;
use crate::metrics::Metrics;
use crate::node_client::{
    BoxFuture, JoinRequest, LeaderInfo, NodeAccess, NodeApi, NodeInfo, NodeStatus, RaftMember,
    RaftStatus, SnapshotHealth, SnapshotOutcome, SnapshotSuccess, StoreStatus,
};
use crate::resources::testing::{ClusterExt, cluster};
use crate::resources::{
    LEARNER, ROLE_LABEL, VOTER, configmap, networkpolicy, pdb, serviceaccount, services,
};
use crate::{Error, Result};

// ---------- fake nodes ----------

/// Nodes keyed by URL; records every membership call, and how the reconciler set up access.
#[derive(Default, Clone)]
struct FakeNodes {
    statuses: HashMap<String, NodeStatus>,
    calls: Arc<Mutex<Vec<String>>>,
    access: Arc<Mutex<Vec<NodeAccess>>>,
}

impl NodeApi for FakeNodes {
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<NodeStatus>> {
        Box::pin(async move {
            self.statuses.get(base).cloned().ok_or_else(|| Error::Node {
                node: base.into(),
                url: base.into(),
                what: "connection failed".into(),
            })
        })
    }
    fn join<'a>(&'a self, base: &'a str, req: &'a JoinRequest) -> BoxFuture<'a, Result<()>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("join {base} {} voter={}", req.id, req.voter));
        Box::pin(async { Ok(()) })
    }
    fn remove<'a>(&'a self, base: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove {base} {id}"));
        Box::pin(async { Ok(()) })
    }
    fn transfer_leadership<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<()>> {
        self.calls.lock().unwrap().push(format!("leader {base}"));
        Box::pin(async { Ok(()) })
    }
    fn full_snapshot<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<SnapshotOutcome>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("snapshot?type=full {base}"));
        Box::pin(async {
            Ok(SnapshotOutcome::Taken(Box::new(SnapshotHealth {
                consecutive_failures: 0,
                ..Default::default()
            })))
        })
    }
    fn for_cluster(&self, access: NodeAccess) -> Result<Arc<dyn NodeApi>> {
        self.access.lock().unwrap().push(access);
        Ok(Arc::new(self.clone()))
    }
}

fn url(o: u32) -> String {
    format!("http://10.0.0.{o}:4001")
}

/// A running cluster seen through its nodes: `voters` and `learners` are in Raft (ordinal 0
/// leads), `outsiders` run but are not in Raft.
fn nodes(voters: &[u32], learners: &[u32], outsiders: &[u32]) -> FakeNodes {
    let members: Vec<RaftMember> = voters
        .iter()
        .map(|&o| (o, true))
        .chain(learners.iter().map(|&o| (o, false)))
        .map(|(o, voter)| RaftMember {
            id: format!("db-{o}"),
            raft_id: u64::from(o) + 1,
            api_addr: url(o),
            addr: format!("10.0.0.{o}:4002"),
            voter,
        })
        .collect();
    let status = |o: u32, state: &str| NodeStatus {
        node: NodeInfo {
            id: format!("db-{o}"),
            raft_id: u64::from(o) + 1,
            api_addr: format!("http://db-{o}.db-headless:4001"),
            raft_addr: format!("db-{o}.db-headless:4002"),
        },
        store: StoreStatus {
            leader: Some(LeaderInfo {
                node_id: "db-0".into(),
                raft_id: 1,
                api_addr: url(0),
                addr: "10.0.0.0:4002".into(),
            }),
            raft: RaftStatus {
                state: state.into(),
                term: 1,
                voter: voters.contains(&o),
                last_log_index: 10,
                applied_index: 10,
                ..Default::default()
            },
            members: if state == "Leader" {
                members.clone()
            } else {
                vec![]
            },
            ..Default::default()
        },
    };
    let mut statuses = HashMap::new();
    for &o in voters.iter().chain(learners).chain(outsiders) {
        let state = if o == 0 {
            "Leader"
        } else if voters.contains(&o) {
            "Follower"
        } else {
            "Learner"
        };
        statuses.insert(url(o), status(o, state));
    }
    FakeNodes {
        statuses,
        ..Default::default()
    }
}

/// Member pod `o`, labelled as a voter (what most scenarios have in Raft).
fn pod(o: u32) -> Pod {
    let mut labels = crate::resources::selector_labels(&cluster());
    labels.insert(ROLE_LABEL.into(), VOTER.into());
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("db-{o}")),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{o}")),
            labels: Some(labels),
            ..Default::default()
        },
        status: Some(PodStatus {
            pod_ip: Some(format!("10.0.0.{o}")),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `p` with its role label set to `role` (None: without one).
fn with_role(mut p: Pod, role: Option<&str>) -> Pod {
    let labels = p.metadata.labels.get_or_insert_default();
    match role {
        Some(r) => labels.insert(ROLE_LABEL.into(), r.into()),
        None => labels.remove(ROLE_LABEL),
    };
    p
}

/// The observation `reconcile` will make from these pods and nodes.
fn observed(
    pods: &[u32],
    fake: &FakeNodes,
    sts: Option<k8s_openapi::api::apps::v1::StatefulSet>,
) -> ObservedCluster {
    ObservedCluster {
        statefulset: sts,
        pods: pods
            .iter()
            .map(|&o| ObservedPod {
                name: format!("db-{o}"),
                ordinal: o,
                ready: true,
                url: url(o),
                ip: Some(format!("10.0.0.{o}").parse().unwrap()),
                role_label: Some(VOTER.into()),
                status: fake
                    .statuses
                    .get(&url(o))
                    .cloned()
                    .ok_or_else(|| "down".to_string()),
                template: PodTemplateInfo {
                    uid: format!("uid-{o}"),
                    ..Default::default()
                },
            })
            .collect(),
        tls: None,
    }
}

/// `obj` as the API server would return it after the operator applied it.
fn applied<K: Resource + serde::Serialize>(mut obj: K) -> Value {
    let hash = spec_hash(&obj).unwrap();
    obj.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(HASH_ANNOTATION.into(), hash);
    serde_json::to_value(obj).unwrap()
}

// ---------- mocked API server ----------

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct ApiServerVerifier {
    handle: ApiServerHandle,
    /// The cluster the desired objects are built from (`cluster()` unless a scenario says).
    cluster: Option<SqliteCluster>,
    /// Whether the read-only Service selects learners.
    read_replicas: bool,
    /// Secrets read after the pods: (name, object).
    secrets: Vec<(String, Value)>,
    /// Pods whose role label is patched, in order.
    relabel: Vec<&'static str>,
    /// Owned objects (by path) that are live but outdated: read, then applied.
    stale: Vec<&'static str>,
    /// The member claims the PVC list returns.
    claims: Vec<Value>,
    /// Claims the reconciler grows, in order, each with the API's refusal (code, message) if any.
    grow: Vec<(&'static str, Option<(u16, &'static str)>)>,
}

/// The owned objects as they exist on the server: absent, or exactly as last applied.
enum Owned {
    Missing,
    UpToDate { statefulset: Value },
}

enum Scenario {
    /// A new cluster: everything is created, the StatefulSet starts one bootstrapping member.
    Create,
    /// Member 1 runs but is not in Raft: it is added as a learner.
    ScaleUp { sts: Value },
    /// Replicas lowered to 1: member 2 leaves Raft first while its pod stays.
    ScaleDown { sts: Value },
    /// Everything matches: reads only.
    SteadyState { sts: Value },
    /// Membership settled; the rollout or remediation makes these requests, in this order
    /// (a DELETE is answered with the terminating pod, other writes are echoed).
    Maintenance {
        sts: Value,
        then: Vec<(Method, &'static str)>,
    },
}

const NOT_FOUND: &str =
    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;

impl ApiServerVerifier {
    fn run(
        self,
        scenario: Scenario,
        pods: Vec<Pod>,
    ) -> tokio::task::JoinHandle<Vec<(Method, String, Value)>> {
        tokio::spawn(async move {
            let mut v = self;
            let mut writes = vec![];
            let owned = match &scenario {
                Scenario::Create => Owned::Missing,
                Scenario::ScaleUp { sts }
                | Scenario::ScaleDown { sts }
                | Scenario::SteadyState { sts }
                | Scenario::Maintenance { sts, .. } => Owned::UpToDate {
                    statefulset: sts.clone(),
                },
            };
            // observe: StatefulSet, then pods.
            let sts = match &owned {
                Owned::Missing => None,
                Owned::UpToDate { statefulset } => Some(statefulset.clone()),
            };
            v.expect(
                Method::GET,
                "/apis/apps/v1/namespaces/ns/statefulsets/db",
                sts.clone(),
            )
            .await;
            v.expect(
                Method::GET,
                "/api/v1/namespaces/ns/pods?&labelSelector=",
                Some(json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":pods})),
            )
            .await;
            for (name, secret) in std::mem::take(&mut v.secrets) {
                v.expect(
                    Method::GET,
                    &format!("/api/v1/namespaces/ns/secrets/{name}"),
                    Some(secret),
                )
                .await;
            }
            for name in std::mem::take(&mut v.relabel) {
                writes.push(
                    v.expect_write(Method::PATCH, &format!("/api/v1/namespaces/ns/pods/{name}"))
                        .await,
                );
            }
            // create: each owned object is read, and applied only when it differs.
            let c = v.cluster.clone().unwrap_or_else(cluster);
            let c = match &scenario {
                Scenario::ScaleDown { .. } => c.with_replicas(1).with_voters(1),
                _ => c,
            };
            let objects: Vec<(&str, Option<Value>)> = vec![
                (
                    "/api/v1/namespaces/ns/serviceaccounts/db-node",
                    Some(applied(serviceaccount::desired_service_account(&c))),
                ),
                (
                    "/api/v1/namespaces/ns/configmaps/db-config",
                    Some(applied(configmap::desired_configmap(&c).unwrap())),
                ),
                (
                    "/api/v1/namespaces/ns/services/db-headless",
                    Some(applied(services::desired_headless_service(&c))),
                ),
                (
                    "/api/v1/namespaces/ns/services/db",
                    Some(applied(services::desired_client_service(&c))),
                ),
                (
                    "/api/v1/namespaces/ns/services/db-readonly",
                    Some(applied(services::desired_readonly_service(
                        &c,
                        v.read_replicas,
                    ))),
                ),
                (
                    "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/db",
                    Some(applied(pdb::desired_pdb(&c))),
                ),
                (
                    "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/db",
                    Some(applied(networkpolicy::desired_network_policy(&c))),
                ),
                ("/apis/apps/v1/namespaces/ns/statefulsets/db", sts),
            ];
            for (path, live) in objects {
                match &owned {
                    Owned::Missing => {
                        v.expect(Method::GET, path, None).await;
                        writes.push(v.expect_write(Method::PATCH, path).await);
                    }
                    Owned::UpToDate { .. } if v.stale.contains(&path) => {
                        let mut live = live.expect("a stale object exists");
                        live["metadata"]["annotations"][HASH_ANNOTATION] = json!("stale");
                        v.expect(Method::GET, path, Some(live)).await;
                        writes.push(v.expect_write(Method::PATCH, path).await);
                    }
                    Owned::UpToDate { .. } => v.expect(Method::GET, path, live).await,
                }
            }
            // storage: member claims are listed, the small ones grown (each with an Event).
            let claims = std::mem::take(&mut v.claims);
            v.expect(
                Method::GET,
                "/api/v1/namespaces/ns/persistentvolumeclaims?&labelSelector=",
                Some(json!({"apiVersion":"v1","kind":"PersistentVolumeClaimList","metadata":{},"items":claims})),
            )
            .await;
            for (name, refusal) in std::mem::take(&mut v.grow) {
                let path = format!("/api/v1/namespaces/ns/persistentvolumeclaims/{name}");
                match refusal {
                    None => writes.push(v.expect_write(Method::PATCH, &path).await),
                    Some((code, message)) => v.refuse(Method::PATCH, &path, code, message).await,
                }
                writes.push(
                    v.expect_write(Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events")
                        .await,
                );
            }
            // membership event, then status.
            if matches!(
                scenario,
                Scenario::ScaleUp { .. } | Scenario::ScaleDown { .. }
            ) {
                writes.push(
                    v.expect_write(Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events")
                        .await,
                );
            }
            if let Scenario::Maintenance { then, .. } = &scenario {
                for (method, path) in then {
                    writes.push(v.expect_write(method.clone(), path).await);
                }
                return writes;
            }
            if !matches!(scenario, Scenario::SteadyState { .. }) {
                writes.push(
                    v.expect_write(
                        Method::PATCH,
                        "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status",
                    )
                    .await,
                );
            }
            writes
        })
    }

    /// Answer the next request, which must be `method` on a URI starting with `path`.
    async fn expect(&mut self, method: Method, path: &str, response: Option<Value>) {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, got nothing"));
        assert_eq!(
            (req.method(), req.uri().to_string().starts_with(path)),
            (&method, true),
            "expected {method} {path}, got {} {}",
            req.method(),
            req.uri()
        );
        let resp = match response {
            Some(body) => Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())),
            None => Response::builder()
                .status(404)
                .body(Body::from(NOT_FOUND.as_bytes().to_vec())),
        };
        send.send_response(resp.unwrap());
    }

    /// Answer the next request, which must be `method` on `path`, with an API error.
    async fn refuse(&mut self, method: Method, path: &str, code: u16, message: &str) {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, got nothing"));
        let uri = req.uri().to_string();
        assert!(
            req.method() == method && uri.starts_with(path),
            "expected {method} {path}, got {} {uri}",
            req.method()
        );
        let status = json!({"kind":"Status","apiVersion":"v1","status":"Failure",
            "message": message, "reason": "Forbidden", "code": code});
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    }

    /// Answer a write by echoing its body; return what was written.
    async fn expect_write(&mut self, method: Method, path: &str) -> (Method, String, Value) {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, got nothing"));
        let uri = req.uri().to_string();
        assert_eq!(
            (req.method(), uri.starts_with(path)),
            (&method, true),
            "expected {method} {path}, got {} {uri}",
            req.method()
        );
        let m = req.method().clone();
        let body = req.into_body().collect_bytes().await.unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        if m == Method::DELETE {
            // Pods are deleted gracefully: the server answers with the terminating pod.
            let name = uri.rsplit('/').next().unwrap_or_default();
            let name = name.split('?').next().unwrap_or_default();
            let pod = json!({"apiVersion":"v1","kind":"Pod","metadata":{
                "name": name, "namespace":"ns", "deletionTimestamp":"2026-01-01T00:00:00Z"}});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&pod).unwrap()))
                    .unwrap(),
            );
            return (m, uri, value);
        }
        // A status apply carries only the status; the server answers with the whole object.
        let mut echo = value.clone();
        if echo.get("metadata").is_none() {
            echo["metadata"] = json!({"name": "db", "namespace": "ns"});
            echo["spec"] = json!({});
        }
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&echo).unwrap()))
                .unwrap(),
        );
        (m, uri, value)
    }
}

fn context(fake: FakeNodes) -> (Arc<Context>, ApiServerVerifier, Arc<FakeNodes>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let fake = Arc::new(fake);
    let ctx = Context::new(
        Client::new(service, "default"),
        fake.clone(),
        Reporter {
            controller: "litecluster-operator".into(),
            instance: None,
        },
        Arc::new(Metrics::default()),
        "cluster.local".into(),
    );
    let verifier = ApiServerVerifier {
        handle,
        cluster: None,
        read_replicas: false,
        secrets: vec![],
        relabel: vec![],
        stale: vec![],
        claims: vec![],
        grow: vec![],
    };
    (Arc::new(ctx), verifier, fake)
}

async fn timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("scenario timed out")
}

fn ctx_for_sts() -> Context {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    Context::new(
        Client::new(service, "default"),
        Arc::new(FakeNodes::default()),
        Reporter {
            controller: "x".into(),
            instance: None,
        },
        Arc::default(),
        "cluster.local".into(),
    )
}

/// The condition of `type_` in a written status.
fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

// ---------- scenarios ----------

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
async fn paused_cluster_is_left_alone() {
    let (ctx, mut api, fake) = context(FakeNodes::default());
    let action = timeout(reconcile(Arc::new(cluster().paused()), ctx))
        .await
        .unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    // No request reached the API server and no node was called.
    let next = tokio::time::timeout(Duration::from_millis(100), api.handle.next_request()).await;
    assert!(next.is_err() || next.unwrap().is_none());
    assert!(fake.calls.lock().unwrap().is_empty());
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
    // What the maintenance pass of a settled cluster reports: nothing to restart or remediate.
    let settled = Maintenance {
        rollout: rollout::Outcome {
            decision: rollout::Decision::UpToDate,
            rollout: None,
            last_restart: None,
            updated: 3,
            pending: 0,
            restarted: None,
        },
        remediation: None,
    };
    let status = super::status::desired_status(
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

// ---------- rollout and remediation ----------

/// The live StatefulSet as its controller reports it: generation seen, pods created at `revision`.
fn sts_at_revision(c: &SqliteCluster, fake: &FakeNodes, revision: &str) -> Value {
    let mut sts = applied(
        desired_sts(
            c,
            &ctx_for_sts(),
            &observed(&[0, 1, 2], fake, None),
            true,
            None,
        )
        .unwrap(),
    );
    sts["metadata"]["generation"] = json!(2);
    sts["status"] = json!({"replicas": 3, "observedGeneration": 2, "updateRevision": revision});
    sts
}

/// `pod(o)` created from revision `rev`; with `current_hash` it carries the template hash too.
fn pod_at(o: u32, rev: &str, current_hash: Option<&str>) -> Pod {
    let mut p = pod(o);
    p.metadata
        .labels
        .get_or_insert_default()
        .insert(crate::resources::REVISION_LABEL.into(), rev.into());
    if let Some(h) = current_hash {
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert(crate::resources::TEMPLATE_HASH_ANNOTATION.into(), h.into());
    }
    p
}

fn template_hash(sts: &Value) -> String {
    sts["spec"]["template"]["metadata"]["annotations"][crate::resources::TEMPLATE_HASH_ANNOTATION]
        .as_str()
        .unwrap()
        .to_string()
}

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
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events"),
                (Method::DELETE, "/api/v1/namespaces/ns/pods/db-2"),
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events"),
                (
                    Method::PATCH,
                    "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status",
                ),
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
            then: vec![
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events"),
                (
                    Method::PATCH,
                    "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status",
                ),
            ],
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
            then: vec![
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events"),
                (
                    Method::PATCH,
                    "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status",
                ),
            ],
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

// ---------- role labels and TLS ----------

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
    let status = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status";
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
            "/api/v1/namespaces/ns/pods?&labelSelector=",
            Some(json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":[]})),
        )
        .await;
        api.expect(
            Method::GET,
            "/api/v1/namespaces/ns/secrets/db-tls",
            Some(tls_secret(&["tls.crt", "tls.key"])),
        )
        .await;
        let event = api
            .expect_write(Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events")
            .await;
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

// ---------- volume growth ----------

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
    let status = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status";
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
async fn an_unsafe_ca_swap_holds_every_restart_back_and_says_why() {
    let mut c = cluster().bootstrapped().with_tls("db-tls");
    // Plain HTTP on the API keeps the fake nodes reachable; the Raft port still uses the Secret.
    c.spec.tls.as_mut().unwrap().api = false;
    let fake = nodes(&[0, 1, 2], &[], &[]);
    // The live template is what the members run: member1.crt under ca1. The Secret now holds
    // a certificate and a CA they have never seen; the template must keep the old hashes (the
    // verifier fails on any StatefulSet write).
    let running_tls = super::observe::ObservedTls {
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
    let events = "/apis/events.k8s.io/v1/namespaces/ns/events";
    let status = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status";
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
    let status = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status";
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
