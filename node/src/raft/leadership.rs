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
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.lock();
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(self.clone().rounds());
        }
        rx.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
