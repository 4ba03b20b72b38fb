//! Coalesces write requests on the leader: requests that arrive while earlier entries are on
//! their way through Raft wait, and then go together as one [`Command::Batch`] entry. openraft
//! spends about the same on an entry of one request as on one of a hundred (append, replicate,
//! commit, apply), so under load the cost per request falls with the batch; a lone request
//! still goes at once. Each request of a batch applies as if it were an entry of its own, so
//! results do not depend on the coalescing (see `raft/state_machine/apply.rs`).

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{OwnedSemaphorePermit, RwLock, Semaphore, mpsc, oneshot};

use crate::command::{Command, Request, StmtResult};
use crate::{MemberInfo, NodeId, Raft};

pub type WriteError = RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>;

/// Entries proposed and not yet applied. More do not make a round faster; fewer leave the log
/// writer and the followers idle between rounds.
const IN_FLIGHT: usize = 4;
/// Requests in one entry, at most.
const MAX_REQUESTS: usize = 1024;
/// Bytes of requests in one entry, at most (a larger request goes alone): well inside one
/// AppendEntries (2 MiB).
const MAX_BYTES: usize = 1 << 20;

struct Pending {
    req: Request,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<StmtResult>, WriteError>>,
}

/// Handle to the coalescing task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the task. Every entry it proposes holds `gate` shared, as any write does, so a
    /// leadership hand-over can stop the log from growing.
    pub fn start(raft: Arc<Raft>, gate: Arc<RwLock<()>>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_REQUESTS);
        tokio::spawn(run(rx, raft, gate));
        Self { tx }
    }

    /// Proposes one request (`bytes`: its size in the log) and waits until it is applied.
    pub async fn propose(&self, req: Request, bytes: usize) -> Result<Vec<StmtResult>, WriteError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || RaftError::Fatal(openraft::error::Fatal::Stopped);
        self.tx
            .send(Pending { req, bytes, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, raft: Arc<Raft>, gate: Arc<RwLock<()>>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    loop {
        // Wait for a slot first: what arrives meanwhile joins this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_REQUESTS {
            match rx.try_recv() {
                Ok(p) if bytes + p.bytes > MAX_BYTES => {
                    carry = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        tokio::spawn(propose(raft.clone(), gate.clone(), batch, slot));
    }
}

async fn propose(
    raft: Arc<Raft>,
    gate: Arc<RwLock<()>>,
    batch: Vec<Pending>,
    _slot: OwnedSemaphorePermit,
) {
    let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let single = reqs.len() == 1;
    let cmd = if single {
        let r = reqs.into_iter().next().expect("one request");
        Command::Statements {
            stmts: r.stmts,
            transaction: r.transaction,
            mode: r.mode,
        }
    } else {
        Command::Batch { reqs }
    };
    let written = {
        let _open = gate.read().await;
        raft.client_write(cmd).await
    };
    match written {
        Ok(resp) if single => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Ok(resp.data.results));
            }
        }
        Ok(resp) => {
            let n = replies.len();
            let mut parts = resp.data.batch.into_iter();
            for reply in replies {
                let _ = reply.send(Ok(parts.next().unwrap_or_default()));
            }
            debug_assert_eq!(parts.len(), 0, "a batch of {n} gave more results");
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
