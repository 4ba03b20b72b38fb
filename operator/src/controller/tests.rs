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
use super::observe::{ObservedCluster, ObservedPod};
use super::{Context, reconcile};
use crate::controller::membership::Action;
use crate::crd::SqliteCluster;
use crate::metrics::Metrics;
use crate::node_client::{
    BoxFuture, Credentials, JoinRequest, LeaderInfo, NodeApi, NodeInfo, NodeStatus, RaftMember,
    RaftStatus, StoreStatus,
};
use crate::resources::testing::{ClusterExt, cluster};
use crate::resources::{configmap, pdb, serviceaccount, services};
use crate::{Error, Result};

// ---------- fake nodes ----------

/// Nodes keyed by URL; records every membership call.
#[derive(Default)]
struct FakeNodes {
    statuses: HashMap<String, NodeStatus>,
    calls: Mutex<Vec<String>>,
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
    fn with_credentials(&self, _: Option<Credentials>) -> Arc<dyn NodeApi> {
        unreachable!("tests run without auth")
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
        calls: Mutex::default(),
    }
}

fn pod(o: u32) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("db-{o}")),
            namespace: Some("ns".into()),
            labels: Some(crate::resources::selector_labels(&cluster())),
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
                status: fake
                    .statuses
                    .get(&url(o))
                    .cloned()
                    .ok_or_else(|| "down".to_string()),
            })
            .collect(),
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

struct ApiServerVerifier(ApiServerHandle);

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
                | Scenario::SteadyState { sts } => Owned::UpToDate {
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
            // create: each owned object is read, and applied only when it differs.
            let c = cluster();
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
                    Some(applied(services::desired_readonly_service(&c))),
                ),
                (
                    "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/db",
                    Some(applied(pdb::desired_pdb(&c))),
                ),
                ("/apis/apps/v1/namespaces/ns/statefulsets/db", sts),
            ];
            for (path, live) in objects {
                match &owned {
                    Owned::Missing => {
                        v.expect(Method::GET, path, None).await;
                        writes.push(v.expect_write(Method::PATCH, path).await);
                    }
                    Owned::UpToDate { .. } => v.expect(Method::GET, path, live).await,
                }
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
            .0
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

    /// Answer a write by echoing its body; return what was written.
    async fn expect_write(&mut self, method: Method, path: &str) -> (Method, String, Value) {
        let (req, send) = self
            .0
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
    let ctx = Context {
        client: Client::new(service, "default"),
        nodes: fake.clone(),
        reporter: Reporter {
            controller: "litecluster-operator".into(),
            instance: None,
        },
        metrics: Arc::new(Metrics::default()),
        cluster_domain: "cluster.local".into(),
    };
    (Arc::new(ctx), ApiServerVerifier(handle), fake)
}

async fn timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("scenario timed out")
}

fn ctx_for_sts() -> Context {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    Context {
        client: Client::new(service, "default"),
        nodes: Arc::new(FakeNodes::default()),
        reporter: Reporter {
            controller: "x".into(),
            instance: None,
        },
        metrics: Arc::default(),
        cluster_domain: "cluster.local".into(),
    }
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
    assert_eq!(writes.len(), 8, "7 objects and the status");
    let sts = &writes[6].2;
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
    let status = &writes[7].2["status"];
    assert_eq!(status["phase"], "Bootstrapping the first member");
    assert_eq!(status["bootstrapped"], false);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn scale_up_adds_the_new_member_as_learner() {
    let c = cluster().bootstrapped();
    let fake = nodes(&[0], &[], &[1]);
    let sts = applied(desired_sts(
        &c,
        &ctx_for_sts(),
        &observed(&[0, 1], &fake, None),
        true,
    ));
    assert_eq!(sts["spec"]["replicas"], 3);
    let (ctx, api, fake) = context(fake);
    let mock = api.run(Scenario::ScaleUp { sts }, vec![pod(0), pod(1)]);
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
    let sts = applied(desired_sts(
        &c,
        &ctx_for_sts(),
        &observed(&[0, 1, 2], &fake, None),
        true,
    ));
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
    let next = tokio::time::timeout(Duration::from_millis(100), api.0.next_request()).await;
    assert!(next.is_err() || next.unwrap().is_none());
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    let fake = nodes(&[0, 1, 2], &[], &[]);
    let base = cluster().bootstrapped();
    let obs = observed(&[0, 1, 2], &fake, None);
    let sts = applied(desired_sts(&base, &ctx_for_sts(), &obs, true));
    let obs = observed(
        &[0, 1, 2],
        &fake,
        Some(serde_json::from_value(sts.clone()).unwrap()),
    );
    let status = super::status::desired_status(
        &base,
        &obs,
        &Action::Nothing,
        true,
        k8s_openapi::jiff::Timestamp::now(),
    );
    assert_eq!(status.phase.as_deref(), Some("Cluster in healthy state"));
    let c = base.with_status(status);
    let (ctx, api, fake) = context(fake);
    let mock = api.run(Scenario::SteadyState { sts }, vec![pod(0), pod(1), pod(2)]);
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
