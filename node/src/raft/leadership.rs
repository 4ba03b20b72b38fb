//! Leadership checks for linearizable reads, shared: a read waits for the next quorum round
//! that starts after it arrived, and one round serves every read waiting for it. A round is
//! openraft's `ensure_linearizable` (a heartbeat to every voter, a quorum of answers, then the
//! local state machine caught up to the commit index seen at the start), so each read still sees
//! every write acknowledged before it arrived.

use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, Fatal, RaftError};
use tokio::sync::oneshot;

use crate::{MemberInfo, NodeId, Raft};

pub type CheckError = RaftError<NodeId, CheckIsLeaderError<NodeId, MemberInfo>>;
type Waiter = oneshot::Sender<Result<(), CheckError>>;

pub struct LeaderCheck {
    raft: Arc<Raft>,
    /// Reads waiting for the next round; `running` while a task runs rounds.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: bool,
    waiting: Vec<Waiter>,
}

impl LeaderCheck {
    pub fn new(raft: Arc<Raft>) -> Arc<Self> {
        Arc::new(Self {
            raft,
            state: Mutex::default(),
        })
    }

    /// Returns once a leadership round that started after this call succeeded.
    pub async fn confirm(self: &Arc<Self>) -> Result<(), CheckError> {
        let waiter = {
            let mut st = self.lock();
            if st.running {
                let (tx, rx) = oneshot::channel();
                st.waiting.push(tx);
                Some(rx)
            } else {
                st.running = true;
                None
            }
        };
        match waiter {
            Some(rx) => rx.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped))),
            None => {
                // No round was running: run one here, without a hand-off to another task;
                // reads that arrive meanwhile wait for the next round, which `Inline` starts.
                let _handoff = Inline(self.clone());
                self.raft.ensure_linearizable().await.map(drop)
            }
        }
    }

    async fn rounds(self: Arc<Self>) {
        loop {
            let waiting = {
                let mut st = self.lock();
                if st.waiting.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.waiting)
            };
            let r = self.raft.ensure_linearizable().await.map(drop);
            for w in waiting {
                let _ = w.send(r.clone());
            }
        }
    }

    /// After a round: the next one for those who came during it, or nothing running.
    fn after_round(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.waiting.is_empty() {
            st.running = false;
        } else {
            drop(st);
            tokio::spawn(self.clone().rounds());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A round run by a reader itself. Dropped when it ends or is abandoned (the client went away):
/// either way the reads that queued behind it get their round.
struct Inline(Arc<LeaderCheck>);

impl Drop for Inline {
    fn drop(&mut self) {
        self.0.after_round();
    }
}
