//! rqlite's queued writes (`/db/execute?queue`): the leader acknowledges a request at once with
//! a sequence number, and applies queued requests in batches. A client that passes `wait` is
//! answered once its batch is applied.
//!
//! A queued request is acknowledged before it is in the log: a leader that crashes loses what
//! it still holds. That is the contract the client asked for (rqlite's too). Requests still go
//! through Raft one by one as units of batch entries (`propose.rs`), so each applies exactly as
//! an ordinary request would; only their results are dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::propose::Proposer;
use crate::MemberInfo;
use crate::command::{Request, Statement};

/// Sizes and timing (`--write-queue-*`, as rqlite's flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Requests held at most; a full queue makes new ones wait.
    pub capacity: usize,
    /// Requests applied together at most.
    pub batch_size: usize,
    /// How long the first request of a batch waits for others.
    pub timeout: Duration,
    /// Run each batch's statements in one transaction.
    pub transaction: bool,
}

struct Queued {
    stmts: Vec<Statement>,
    bytes: usize,
    seq: i64,
    /// Credentials of the client, for handing the request to a new leader.
    auth: Option<String>,
    done: Option<oneshot::Sender<()>>,
}

/// Handle to the queue and its worker. Cheap to clone.
#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<Queued>,
    next_seq: Arc<AtomicI64>,
    applied_seq: Arc<AtomicI64>,
    pub settings: Settings,
}

/// Where the worker sends requests when this member no longer leads.
pub struct Forwarding {
    pub client: reqwest::Client,
    pub raft: Arc<crate::Raft>,
}

impl WriteQueue {
    pub fn start(settings: Settings, proposer: Proposer, forwarding: Forwarding) -> Self {
        let (tx, rx) = mpsc::channel(settings.capacity.max(1));
        // As rqlite: numbers start at the time the queue started, in nanoseconds.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as i64);
        let applied_seq = Arc::new(AtomicI64::new(0));
        tokio::spawn(worker(
            rx,
            settings,
            proposer,
            forwarding,
            applied_seq.clone(),
        ));
        Self {
            tx,
            next_seq: Arc::new(AtomicI64::new(start)),
            applied_seq,
            settings,
        }
    }

    /// Queues `stmts` (`bytes`: their size in the log) and returns the sequence number, and a
    /// receiver that fires once they are applied. Waits while the queue is full.
    pub async fn enqueue(
        &self,
        stmts: Vec<Statement>,
        bytes: usize,
        auth: Option<String>,
    ) -> Result<(i64, oneshot::Receiver<()>), &'static str> {
        let (done, applied) = oneshot::channel();
        // Numbered as they enter the channel, so numbers follow the order of application.
        let permit = self.tx.reserve().await.map_err(|_| "queue is closed")?;
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst) + 1;
        permit.send(Queued {
            stmts,
            bytes,
            seq,
            auth,
            done: Some(done),
        });
        Ok((seq, applied))
    }

    /// The sequence number of the last request applied, 0 before the first.
    pub fn applied_seq(&self) -> i64 {
        self.applied_seq.load(Ordering::Relaxed)
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Queued>,
    settings: Settings,
    proposer: Proposer,
    forwarding: Forwarding,
    applied_seq: Arc<AtomicI64>,
) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.timeout;
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(q)) => batch.push(q),
                Ok(None) | Err(_) => break,
            }
        }
        apply(&mut batch, settings, &proposer, &forwarding).await;
        if let Some(last) = batch.last() {
            applied_seq.store(last.seq, Ordering::Relaxed);
        }
        for q in &mut batch {
            if let Some(done) = q.done.take() {
                let _ = done.send(());
            }
        }
    }
}

/// What became of one queued request.
enum Outcome {
    Applied,
    /// Certainly not applied: openraft answers `ForwardToLeader` only for an entry it never
    /// appended or one a new leader truncated. Safe to hand to the leader.
    NotLeader(Option<MemberInfo>),
    /// Lost: this member is stopping.
    Stopped(String),
}

/// Applies a batch. Queued requests were acknowledged, so each is retried (every second)
/// while its outcome is certainly "not applied", and never when it may have been.
async fn apply(batch: &mut [Queued], settings: Settings, proposer: &Proposer, fwd: &Forwarding) {
    // Submitted in order, so they enter the log in order; applied as units of batch entries.
    let mut pending = Vec::with_capacity(batch.len());
    for (i, q) in batch
        .iter()
        .enumerate()
        .filter(|(_, q)| !q.stmts.is_empty())
    {
        let req = Request {
            stmts: q.stmts.clone(),
            transaction: settings.transaction,
            mode: crate::command::Mode::Execute,
        };
        pending.push((i, proposer.submit(req, q.bytes).await));
    }
    for (i, p) in pending {
        let outcome = match p.await {
            Ok(_) => Outcome::Applied,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Outcome::NotLeader(f.leader_node)
            }
            Err(e) => Outcome::Stopped(e.to_string()),
        };
        match outcome {
            Outcome::Applied => {}
            Outcome::NotLeader(leader) => hand_over(&batch[i], leader, settings, fwd).await,
            Outcome::Stopped(e) => {
                tracing::error!(seq = batch[i].seq, error = %e, "queued write dropped: this member is stopping")
            }
        }
    }
}

/// Leadership moved while the request waited here: the new leader runs it as a plain write.
/// Retried while the answer says nothing was done (no connection, or 503).
async fn hand_over(
    q: &Queued,
    mut leader: Option<MemberInfo>,
    settings: Settings,
    fwd: &Forwarding,
) {
    let mut attempt = 0u32;
    loop {
        let Some(to) = leader.clone() else {
            attempt += 1;
            tracing::warn!(seq = q.seq, attempt, "queued write waits for a leader");
            tokio::time::sleep(Duration::from_secs(1)).await;
            leader = current_leader(&fwd.raft);
            continue;
        };
        let url = format!(
            "{}/db/execute{}",
            to.api_addr.trim_end_matches('/'),
            if settings.transaction {
                "?transaction"
            } else {
                ""
            }
        );
        let mut req = fwd
            .client
            .post(&url)
            .json(&q.stmts.iter().map(statement_json).collect::<Vec<_>>())
            .timeout(Duration::from_secs(30));
        if let Some(a) = &q.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let retry = match req.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(seq = q.seq, leader = %to.name, "queued write handed to the new leader");
                return;
            }
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                format!("{} answered 503", to.name)
            }
            Err(e) if e.is_connect() => format!("{} unreachable: {e}", to.name),
            Ok(r) => {
                tracing::error!(seq = q.seq, leader = %to.name, status = %r.status(), "queued write refused by the new leader; dropped");
                return;
            }
            Err(e) => {
                tracing::error!(seq = q.seq, leader = %to.name, error = %e, "queued write handed over with no answer; it may or may not have been applied");
                return;
            }
        };
        attempt += 1;
        tracing::warn!(seq = q.seq, attempt, why = %retry, "queued write not handed over yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
        leader = current_leader(&fwd.raft);
    }
}

fn current_leader(raft: &crate::Raft) -> Option<MemberInfo> {
    let m = raft.metrics();
    let m = m.borrow();
    let id = m.current_leader?;
    m.membership_config.membership().get_node(&id).cloned()
}

/// A statement in the API's request form: `sql` alone or `[sql, params...]`.
fn statement_json(s: &Statement) -> serde_json::Value {
    use crate::command::{ParamValue, Params};
    let value = |v: &ParamValue| match v {
        ParamValue::Null => serde_json::Value::Null,
        ParamValue::Bool(b) => (*b).into(),
        ParamValue::Int(i) => (*i).into(),
        ParamValue::Float(f) => serde_json::json!(f),
        ParamValue::Text(t) => t.clone().into(),
        ParamValue::Bytes(b) => serde_json::json!(b),
    };
    match &s.params {
        Params::None => s.sql.clone().into(),
        Params::Positional(vs) => {
            let mut a = vec![serde_json::Value::from(s.sql.clone())];
            a.extend(vs.iter().map(value));
            a.into()
        }
        Params::Named(vs) => serde_json::json!([
            s.sql,
            vs.iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect::<serde_json::Map<_, _>>()
        ]),
    }
}
