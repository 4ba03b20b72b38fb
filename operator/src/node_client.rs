//! Typed HTTP client for the node endpoints the operator uses (`/status`, `/join`, `/remove`, `/leader`, `/snapshot`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Parsed `GET /status` of one node (only the fields the operator reads).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeStatus {
    pub node: NodeInfo,
    pub store: StoreStatus,
    /// Backups and the archive; older nodes report no archive.
    #[serde(default)]
    pub backup: NodeBackup,
    /// What `--restore-from` restored into this member's data dir.
    #[serde(default)]
    pub restored: Option<NodeRestored>,
}

/// `backup` of `/status` (the parts the operator reads).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeBackup {
    #[serde(default)]
    pub archive: Option<NodeArchive>,
}

/// `backup.archive` of `/status`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeArchive {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub archived_index: Option<u64>,
    #[serde(default)]
    pub archived_at: Option<String>,
    #[serde(default)]
    pub last_lag_ms: Option<u64>,
    /// Whether this member archives now (it leads and has found where the archive ends).
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub last_gap_at: Option<String>,
    #[serde(default)]
    pub last_segment: Option<NodeSegment>,
    #[serde(default)]
    pub last_failure: Option<NodeFailure>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeSegment {
    #[serde(default)]
    pub storage: String,
    #[serde(default)]
    pub failover: bool,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeFailure {
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub error: String,
}

/// `restored` of `/status`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeRestored {
    pub backup_id: String,
    #[serde(default)]
    pub backup_index: u64,
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub target_reached: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct NodeInfo {
    pub id: String,
    #[serde(default)]
    pub raft_id: u64,
    #[serde(default)]
    pub api_addr: String,
    #[serde(default)]
    pub raft_addr: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct StoreStatus {
    #[serde(default)]
    pub leader: Option<LeaderInfo>,
    #[serde(default)]
    pub raft: RaftStatus,
    #[serde(default)]
    pub members: Vec<RaftMember>,
    #[serde(default)]
    pub db_size: u64,
    #[serde(default)]
    pub wal_bytes: u64,
    /// Snapshot health; older nodes do not report it.
    #[serde(default)]
    pub snapshot: Option<SnapshotHealth>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct LeaderInfo {
    pub node_id: String,
    #[serde(default)]
    pub raft_id: u64,
    #[serde(default)]
    pub api_addr: String,
    #[serde(default)]
    pub addr: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct RaftStatus {
    /// Leader, Follower, Learner or Candidate.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    pub voter: bool,
    #[serde(default)]
    pub last_log_index: u64,
    #[serde(default)]
    pub applied_index: u64,
    #[serde(default)]
    pub snapshot_index: u64,
    #[serde(default)]
    pub purged_index: u64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct RaftMember {
    pub id: String,
    #[serde(default)]
    pub raft_id: u64,
    #[serde(default)]
    pub api_addr: String,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub voter: bool,
}

/// `store.snapshot` of `/status`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct SnapshotHealth {
    #[serde(default)]
    pub last_success: Option<SnapshotSuccess>,
    #[serde(default)]
    pub last_failure: Option<SnapshotFailure>,
    #[serde(default)]
    pub consecutive_failures: u64,
    #[serde(default)]
    pub total_failures: u64,
    #[serde(default)]
    pub fallbacks_to_full: u64,
    #[serde(default)]
    pub full_needed: bool,
    #[serde(default)]
    pub wal_bytes: u64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct SnapshotSuccess {
    pub index: u64,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub at: String,
    #[serde(default)]
    pub duration_ms: u64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct SnapshotFailure {
    #[serde(default)]
    pub at: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub checkpoint: Option<CheckpointResult>,
}

/// The `(busy, log, checkpointed)` triple of a WAL checkpoint.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct CheckpointResult {
    pub busy: i64,
    pub log: i64,
    pub checkpointed: i64,
}

/// Body of `POST /join`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct JoinRequest {
    pub id: String,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
}

/// What `POST /snapshot?type=full` achieved.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotOutcome {
    /// The snapshot ran; the node's snapshot health afterwards.
    Taken(Box<SnapshotHealth>),
    /// Nothing new to snapshot (204).
    NothingNew,
    /// The node is still working on it (our timeout or its 504); `/status` will tell.
    StillRunning,
}

/// Body of a 200 from `POST /snapshot`.
#[derive(Deserialize)]
struct SnapshotResponse {
    snapshot: SnapshotHealth,
}

/// What `POST /backup` reports of a backup it pushed.
#[derive(Deserialize, Clone, Debug, PartialEq)]
pub struct BackupReport {
    pub id: String,
    /// The storage (its name in the backup config) that took it.
    pub storage: String,
    pub raft_index: u64,
    /// Bytes stored (compressed).
    pub size: u64,
    /// Bytes of the database.
    pub db_size: u64,
    pub sha256: String,
    /// True when a storage before `storage` refused it.
    pub failover: bool,
}

/// What came of asking for a backup.
#[derive(Clone, Debug, PartialEq)]
pub enum BackupOutcome {
    Done(BackupReport),
    /// Worth asking again (the node said 503, or could not be reached): why.
    Retry(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The node operations the reconciler needs. A trait so reconcile tests can fake the nodes.
pub trait NodeApi: Send + Sync {
    /// `GET /status` of the node at `base` (for example `http://db-0.db-headless.ns.svc:4001`).
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<NodeStatus>>;
    /// `POST /join`: add a member (as learner, or promote it when `voter`).
    fn join<'a>(&'a self, base: &'a str, req: &'a JoinRequest) -> BoxFuture<'a, Result<()>>;
    /// `DELETE /remove`: take a member out of Raft.
    fn remove<'a>(&'a self, base: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>>;
    /// `POST /leader`: hand leadership to the most caught-up other voter.
    fn transfer_leadership<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<()>> {
        self.transfer_leadership_to(base, None)
    }
    /// `POST /leader` with `{"id": to}`: hand leadership to that voter (or, `None`, to the most
    /// caught-up one).
    fn transfer_leadership_to<'a>(
        &'a self,
        base: &'a str,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>>;
    /// `POST /snapshot?type=full`: ask the node for a full snapshot now.
    fn full_snapshot<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<SnapshotOutcome>>;
    /// `POST /backup`: push a backup of the database now, to the first storage that takes it.
    fn backup<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<BackupOutcome>>;
    /// The client for one cluster's nodes: its credentials, and HTTPS when it has a CA.
    fn for_cluster(&self, access: NodeAccess) -> Result<std::sync::Arc<dyn NodeApi>>;
}

/// How the operator reaches the nodes of one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeAccess {
    /// Basic-auth credentials (nodes run with `--auth`).
    pub credentials: Option<Credentials>,
    /// PEM CA bundle that signed the members' certificates (nodes serve HTTPS). It is the only
    /// root trusted: a public CA has no business vouching for a cluster-internal name.
    pub ca_pem: Option<Vec<u8>>,
    /// Member DNS names with the pod IP to connect to for each: the certificate is checked
    /// against the name, while the connection needs no cluster DNS (as over plain HTTP, where
    /// the operator uses pod IPs).
    pub addresses: Vec<(String, std::net::IpAddr)>,
}

/// Basic-auth credentials for nodes that run with `--auth`.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// How long a backup request may take: the node copies, compresses and uploads the database.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// The real client: reqwest over HTTP(S), with per-call timeouts.
#[derive(Clone)]
pub struct HttpNodeClient {
    http: reqwest::Client,
    credentials: Option<Credentials>,
    /// How long a `/status` call may take.
    status_timeout: Duration,
    /// How long a membership change may take (a join waits for the learner to catch up).
    change_timeout: Duration,
}

impl HttpNodeClient {
    pub fn new(status_timeout: Duration, change_timeout: Duration) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default TLS provider; ring is ours (ignore "already installed").
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(status_timeout)
            .build()?;
        Ok(Self {
            http,
            credentials: None,
            status_timeout,
            change_timeout,
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.credentials {
            Some(c) => req.basic_auth(&c.username, Some(&c.password)),
            None => req,
        }
    }

    async fn send(
        &self,
        node: &str,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let err = |what: String| Error::Node {
            node: node.to_string(),
            url: url.clone(),
            what,
        };
        let resp = req.send().await.map_err(|e| err(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        Err(err(format!("answered {status}: {}", body.trim())))
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "unreadable response"
    } else {
        "request failed"
    };
    // reqwest's Display omits the cause (e.g. "connection refused"); include the chain.
    let mut msg = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

impl NodeApi for HttpNodeClient {
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<NodeStatus>> {
        Box::pin(async move {
            let u = url(base, "/status");
            let resp = self
                .send(base, u.clone(), self.request(reqwest::Method::GET, &u))
                .await?;
            resp.json::<NodeStatus>().await.map_err(|e| Error::Node {
                node: base.to_string(),
                url: u,
                what: format!("unreadable /status: {e}"),
            })
        })
    }

    fn join<'a>(&'a self, base: &'a str, req: &'a JoinRequest) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let u = url(base, "/join");
            let r = self
                .request(reqwest::Method::POST, &u)
                .json(req)
                .timeout(self.change_timeout);
            self.send(base, u, r).await.map(drop)
        })
    }

    fn remove<'a>(&'a self, base: &'a str, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let u = url(base, "/remove");
            let r = self
                .request(reqwest::Method::DELETE, &u)
                .json(&serde_json::json!({ "id": id }))
                .timeout(self.change_timeout);
            self.send(base, u, r).await.map(drop)
        })
    }

    fn transfer_leadership_to<'a>(
        &'a self,
        base: &'a str,
        to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let u = url(base, "/leader");
            let mut r = self
                .request(reqwest::Method::POST, &u)
                .timeout(self.change_timeout);
            if let Some(id) = to {
                r = r.json(&serde_json::json!({ "id": id }));
            }
            self.send(base, u, r).await.map(drop)
        })
    }

    fn full_snapshot<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<SnapshotOutcome>> {
        Box::pin(async move {
            let u = url(base, "/snapshot?type=full");
            let r = self
                .request(reqwest::Method::POST, &u)
                .timeout(self.change_timeout);
            // A full snapshot of a large database can outlast our timeout; the node keeps going,
            // so a timeout means "running", not "failed".
            let resp = match r.send().await {
                Err(e) if e.is_timeout() => return Ok(SnapshotOutcome::StillRunning),
                Err(e) => {
                    return Err(Error::Node {
                        node: base.to_string(),
                        url: u,
                        what: describe(&e),
                    });
                }
                Ok(resp) => resp,
            };
            let status = resp.status();
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(SnapshotOutcome::NothingNew);
            }
            if status == reqwest::StatusCode::GATEWAY_TIMEOUT {
                return Ok(SnapshotOutcome::StillRunning);
            }
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                return Err(Error::Node {
                    node: base.to_string(),
                    url: u,
                    what: format!("answered {status}: {}", body.trim()),
                });
            }
            let body = resp
                .json::<SnapshotResponse>()
                .await
                .map_err(|e| Error::Node {
                    node: base.to_string(),
                    url: u,
                    what: format!("unreadable /snapshot answer: {e}"),
                })?;
            Ok(SnapshotOutcome::Taken(Box::new(body.snapshot)))
        })
    }

    fn backup<'a>(&'a self, base: &'a str) -> BoxFuture<'a, Result<BackupOutcome>> {
        Box::pin(async move {
            let u = url(base, "/backup");
            let err = |what: String| Error::Node {
                node: base.to_string(),
                url: u.clone(),
                what,
            };
            // A backup copies and uploads the whole database: give it as long as that can take.
            let r = self
                .request(reqwest::Method::POST, &u)
                .timeout(BACKUP_TIMEOUT);
            let resp = match r.send().await {
                Err(e) if e.is_connect() || e.is_timeout() => {
                    return Ok(BackupOutcome::Retry(describe(&e)));
                }
                Err(e) => return Err(err(describe(&e))),
                Ok(resp) => resp,
            };
            let status = resp.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                let body = resp.text().await.unwrap_or_default();
                return Ok(BackupOutcome::Retry(body.trim().to_string()));
            }
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                return Err(err(format!("answered {status}: {}", body.trim())));
            }
            resp.json::<BackupReport>()
                .await
                .map(BackupOutcome::Done)
                .map_err(|e| err(format!("unreadable /backup answer: {e}")))
        })
    }

    fn for_cluster(&self, access: NodeAccess) -> Result<std::sync::Arc<dyn NodeApi>> {
        let http = match &access.ca_pem {
            // Plain HTTP shares the connection pool of the operator-wide client.
            None => self.http.clone(),
            // A client per cluster and reconcile: its CA and addresses are its own. Building one
            // costs well under a millisecond; pooling across reconciles is not worth a cache.
            Some(pem) => {
                let roots =
                    reqwest::Certificate::from_pem_bundle(pem).map_err(Error::NodeClient)?;
                let mut b = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(self.status_timeout)
                    .https_only(true)
                    .tls_certs_only(roots);
                for (host, ip) in &access.addresses {
                    // Port 0: the URL's port is used.
                    b = b.resolve(host, std::net::SocketAddr::new(*ip, 0));
                }
                b.build().map_err(Error::NodeClient)?
            }
        };
        Ok(std::sync::Arc::new(Self {
            http,
            credentials: access.credentials,
            ..self.clone()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_without_snapshot_section() {
        let doc = r#"{"node":{"id":"db-0","raft_id":1,"api_addr":"http://db-0:4001","raft_addr":"db-0:4002","uptime":"1s"},
            "store":{"leader":{"node_id":"db-0","raft_id":1,"api_addr":"http://db-0:4001","addr":"db-0:4002"},
            "raft":{"state":"Leader","term":2,"voter":true,"last_log_index":7,"applied_index":7,"snapshot_index":0,"purged_index":0},
            "members":[{"id":"db-0","raft_id":1,"api_addr":"http://db-0:4001","addr":"db-0:4002","voter":true}],"db_size":4096,"wal_bytes":0}}"#;
        let s: NodeStatus = serde_json::from_str(doc).unwrap();
        assert_eq!(s.store.leader.unwrap().node_id, "db-0");
        assert_eq!(s.store.raft.applied_index, 7);
        assert!(s.store.snapshot.is_none());
        assert!(s.store.members[0].voter);
    }

    #[test]
    fn parses_snapshot_health() {
        let doc = r#"{"node":{"id":"db-1"},"store":{"leader":null,"raft":{"state":"Follower"},"members":[],
            "snapshot":{"last_success":{"index":10,"kind":"incremental","at":"2026-01-01T00:00:00Z","duration_ms":3},
            "last_failure":{"at":"2026-01-01T00:01:00Z","kind":"incremental","error":"busy","checkpoint":{"busy":1,"log":5,"checkpointed":2}},
            "consecutive_failures":2,"total_failures":4,"fallbacks_to_full":1,"full_needed":true,"wal_bytes":100}}}"#;
        let s: NodeStatus = serde_json::from_str(doc).unwrap();
        let snap = s.store.snapshot.unwrap();
        assert_eq!(snap.consecutive_failures, 2);
        assert_eq!(snap.last_failure.unwrap().checkpoint.unwrap().busy, 1);
        assert!(s.store.leader.is_none());
    }

    #[tokio::test]
    async fn unreachable_node_error_names_node_and_cause() {
        let c =
            HttpNodeClient::new(Duration::from_millis(500), Duration::from_millis(500)).unwrap();
        // Port 9 (discard) on loopback is closed in test environments.
        let err = c
            .status("http://127.0.0.1:9")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("127.0.0.1:9/status"), "{err}");
        assert!(
            err.contains("connection failed") || err.contains("timed out"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn full_snapshot_maps_the_node_answers() {
        use axum::extract::RawQuery;
        use axum::http::StatusCode;
        use axum::routing::post;
        // Each prefix answers like the node does in one situation; all insist on type=full.
        let full = |q: Option<String>| q.as_deref() == Some("type=full");
        let app = axum::Router::new()
            .route(
                "/taken/snapshot",
                post(move |RawQuery(q): RawQuery| async move {
                    if !full(q) {
                        return (StatusCode::BAD_REQUEST, String::new());
                    }
                    (
                        StatusCode::OK,
                        r#"{"snapshot":{"consecutive_failures":0,"full_needed":false,"last_success":{"index":9,"kind":"full","at":"t1","duration_ms":1}}}"#.into(),
                    )
                }),
            )
            .route(
                "/nothing/snapshot",
                post(|| async { StatusCode::NO_CONTENT }),
            )
            .route(
                "/running/snapshot",
                post(|| async { StatusCode::GATEWAY_TIMEOUT }),
            )
            .route(
                "/broken/snapshot",
                post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "snapshot trigger failed") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let c = HttpNodeClient::new(Duration::from_secs(2), Duration::from_secs(2)).unwrap();
        let base = |p: &str| format!("http://{addr}/{p}");
        match c.full_snapshot(&base("taken")).await.unwrap() {
            SnapshotOutcome::Taken(h) => {
                assert_eq!(h.consecutive_failures, 0);
                assert_eq!(h.last_success.unwrap().index, 9);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.full_snapshot(&base("nothing")).await.unwrap(),
            SnapshotOutcome::NothingNew
        );
        assert_eq!(
            c.full_snapshot(&base("running")).await.unwrap(),
            SnapshotOutcome::StillRunning
        );
        let err = c
            .full_snapshot(&base("broken"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("503") && err.contains("trigger failed"),
            "{err}"
        );
    }
}
