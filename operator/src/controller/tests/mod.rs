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
    BackupOutcome, BoxFuture, JoinRequest, LeaderInfo, NodeAccess, NodeApi, NodeInfo, NodeStatus,
    RaftMember, RaftStatus, SnapshotHealth, SnapshotOutcome, SnapshotSuccess, StoreStatus,
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
    /// What `POST /backup` answers.
    backup: Option<BackupOutcome>,
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
    fn transfer_leadership_to<'a>(
        &'a self,
        base: &'a str,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        let call = match to {
            Some(id) => format!("leader {base} to {id}"),
            None => format!("leader {base}"),
        };
        self.calls.lock().unwrap().push(call);
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
    fn backup<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<BackupOutcome>> {
        self.calls.lock().unwrap().push(format!("backup {base}"));
        let outcome = self
            .backup
            .clone()
            .unwrap_or_else(|| BackupOutcome::Retry("no backup configured in the fake".into()));
        Box::pin(async move { Ok(outcome) })
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
        backup: Default::default(),
        restored: None,
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

/// The label selector of a cluster's member pods and claims, as the API server sees it.
const MEMBERS: &str =
    "labelSelector=app.kubernetes.io%2Finstance%3Ddb%2Capp.kubernetes.io%2Fname%3Dlitecluster";

/// Where Events are created.
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events?";
/// The operator's query on a server-side apply (it owns the fields it sets, forcibly).
const APPLY: &str = "?&force=true&fieldManager=litecluster-operator";
/// Its query on a merge patch (labels, claim sizes).
const MERGE: &str = "?&fieldManager=litecluster-operator";
/// The status subresource, applied.
const STATUS: &str = "/apis/litecluster.io/v1alpha1/namespaces/ns/sqliteclusters/db/status?&force=true&fieldManager=litecluster-operator";

/// The request is `method` on exactly `uri`: path and every query parameter, in order (a
/// label selector or field manager that differs fails the test).
fn assert_request<B>(req: &Request<B>, method: &Method, uri: &str) {
    let got = req.uri().to_string();
    assert!(
        req.method() == method && got == uri,
        "expected {method} {uri}\n     got {} {got}",
        req.method()
    );
}

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
    /// The cluster has neither issued Secret: both are created (with an Event) after the
    /// StatefulSet and the pods are read, and the certificate is read back with the other Secrets.
    issue_tls: bool,
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
                &format!("/api/v1/namespaces/ns/pods?&{MEMBERS}"),
                Some(json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":pods})),
            )
            .await;
            if v.issue_tls {
                for name in ["db-ca", "db-tls"] {
                    v.expect(
                        Method::GET,
                        &format!("/api/v1/namespaces/ns/secrets/{name}"),
                        None,
                    )
                    .await;
                }
                for name in ["db-ca", "db-tls"] {
                    let w = v
                        .expect_write(Method::POST, "/api/v1/namespaces/ns/secrets?")
                        .await;
                    assert_eq!(w.2["metadata"]["name"], name);
                    if name == "db-tls" {
                        v.secrets.insert(0, (name.into(), w.2.clone()));
                    }
                    writes.push(w);
                }
                writes.push(v.expect_write(Method::POST, EVENTS).await);
            }
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
                    v.expect_write(
                        Method::PATCH,
                        &format!("/api/v1/namespaces/ns/pods/{name}{MERGE}"),
                    )
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
                        writes.push(
                            v.expect_write(Method::PATCH, &format!("{path}{APPLY}"))
                                .await,
                        );
                    }
                    Owned::UpToDate { .. } if v.stale.contains(&path) => {
                        let mut live = live.expect("a stale object exists");
                        live["metadata"]["annotations"][HASH_ANNOTATION] = json!("stale");
                        v.expect(Method::GET, path, Some(live)).await;
                        writes.push(
                            v.expect_write(Method::PATCH, &format!("{path}{APPLY}"))
                                .await,
                        );
                    }
                    Owned::UpToDate { .. } => v.expect(Method::GET, path, live).await,
                }
            }
            // storage: member claims are listed, the small ones grown (each with an Event).
            let claims = std::mem::take(&mut v.claims);
            v.expect(
                Method::GET,
                &format!("/api/v1/namespaces/ns/persistentvolumeclaims?&{MEMBERS}"),
                Some(json!({"apiVersion":"v1","kind":"PersistentVolumeClaimList","metadata":{},"items":claims})),
            )
            .await;
            for (name, refusal) in std::mem::take(&mut v.grow) {
                let path = format!("/api/v1/namespaces/ns/persistentvolumeclaims/{name}{MERGE}");
                match refusal {
                    None => writes.push(v.expect_write(Method::PATCH, &path).await),
                    Some((code, message)) => v.refuse(Method::PATCH, &path, code, message).await,
                }
                writes.push(v.expect_write(Method::POST, EVENTS).await);
            }
            // membership event, then status.
            if matches!(
                scenario,
                Scenario::ScaleUp { .. } | Scenario::ScaleDown { .. }
            ) {
                writes.push(v.expect_write(Method::POST, EVENTS).await);
            }
            if let Scenario::Maintenance { then, .. } = &scenario {
                for (method, path) in then {
                    writes.push(v.expect_write(method.clone(), path).await);
                }
                return writes;
            }
            if !matches!(scenario, Scenario::SteadyState { .. }) {
                writes.push(v.expect_write(Method::PATCH, STATUS).await);
            }
            writes
        })
    }

    /// Answer the next request, which must be `method` on exactly `uri` (path and query).
    async fn expect(&mut self, method: Method, uri: &str, response: Option<Value>) {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {uri}, got nothing"));
        assert_request(&req, &method, uri);
        let resp = match response {
            Some(body) => Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())),
            None => Response::builder()
                .status(404)
                .body(Body::from(NOT_FOUND.as_bytes().to_vec())),
        };
        send.send_response(resp.unwrap());
    }

    /// Answer the next request, which must be `method` on exactly `uri`, with an API error.
    async fn refuse(&mut self, method: Method, uri: &str, code: u16, message: &str) {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {uri}, got nothing"));
        assert_request(&req, &method, uri);
        let status = json!({"kind":"Status","apiVersion":"v1","status":"Failure",
            "message": message, "reason": "Forbidden", "code": code});
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    }

    /// Answer a write to exactly `expected` by echoing its body; return what was written.
    async fn expect_write(&mut self, method: Method, expected: &str) -> (Method, String, Value) {
        let (req, send) = self
            .handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {expected}, got nothing"));
        assert_request(&req, &method, expected);
        let uri = req.uri().to_string();
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
            // Enough of a spec for either kind (a SqliteBackup needs its cluster).
            echo["spec"] = json!({"cluster": "db"});
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
        issue_tls: false,
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

/// What the maintenance pass of a settled 3-member cluster reports: nothing to restart or
/// remediate.
fn settled() -> Maintenance {
    Maintenance {
        rollout: rollout::Outcome {
            decision: rollout::Decision::UpToDate,
            rollout: None,
            last_restart: None,
            updated: 3,
            pending: 0,
            restarted: None,
        },
        remediation: None,
    }
}

// Shared by several groups of scenarios.

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

mod archive;
mod backups;
mod certificates;
mod conditions;
mod labels;
mod lifecycle;
mod recovery;
mod remediation;
mod rollouts;
mod storage;
mod tls;

#[test]
#[should_panic(
    expected = "expected GET /api/v1/namespaces/ns/pods?&labelSelector=app.kubernetes.io%2Finstance%3Ddb"
)]
fn the_verifier_refuses_a_request_whose_label_selector_differs() {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/namespaces/ns/pods?&labelSelector=app.kubernetes.io%2Finstance%3Dother")
        .body(())
        .unwrap();
    assert_request(
        &req,
        &Method::GET,
        "/api/v1/namespaces/ns/pods?&labelSelector=app.kubernetes.io%2Finstance%3Ddb",
    );
}
