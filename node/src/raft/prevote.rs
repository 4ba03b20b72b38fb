//! Pre-vote: a voter starts an election only after a majority of the voters say they have lost
//! the leader too and would vote for it (Raft thesis, 9.6).
//!
//! openraft 0.9 has none: a member cut off from the others keeps starting elections and raising
//! its term, and when it can reach them again the leader sees the higher term in a reply and
//! steps down, so a healthy cluster loses its leader for an election. With openraft's own
//! elections off, this task decides when to call one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use super::log_store::LogStore;
use super::tls::RaftTls;
use crate::{LogId, NodeId, Raft};

/// How much longer than the lease a voter waits before it grants a pre-vote: openraft starts
/// its lease when it handles a leader's message, a little after we saw it arrive.
const GRANT_MARGIN: Duration = Duration::from_millis(50);

/// What a candidate sends before it raises its term.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// Both sides of pre-vote for one member.
pub struct PreVote {
    pub id: NodeId,
    raft: Arc<Raft>,
    log: LogStore,
    /// When an RPC from a leader last arrived (ms since `epoch`, 0: never).
    contact: Arc<AtomicU64>,
    epoch: Instant,
    /// openraft's leader lease (its `election_timeout_max`): a member refuses real votes until
    /// it has not heard from a leader for this long, so pre-votes wait for it too.
    lease: Duration,
    tls: Option<RaftTls>,
    /// A leadership hand-over keeps this member out of elections.
    paused: AtomicBool,
    /// When we last granted a pre-vote (ms since `epoch`): like a vote in Raft, it restarts our
    /// own election timer, so two members do not both run and split the vote.
    granted: AtomicU64,
}

impl PreVote {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        raft: Arc<Raft>,
        log: LogStore,
        contact: Arc<AtomicU64>,
        epoch: Instant,
        lease: Duration,
        tls: Option<RaftTls>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            raft,
            log,
            contact,
            epoch,
            lease,
            tls,
            paused: AtomicBool::new(false),
            granted: AtomicU64::new(0),
        })
    }

    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Time since a leader last reached us, or since we started.
    fn silence(&self) -> Duration {
        let ms = self.contact.load(Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(ms))
    }

    /// Time since a leader reached us or we granted someone a pre-vote.
    fn quiet(&self) -> Duration {
        let granted = self.granted.load(Ordering::Relaxed);
        let since_grant = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(granted));
        self.silence().min(since_grant)
    }

    /// The receiver's answer: yes when it is not leading, its leader lease has run out (with a
    /// margin, so the real vote that follows is not refused), and the candidate's log is at
    /// least as up to date as ours.
    pub fn grant(&self, req: &PreVoteRequest) -> bool {
        let state = self.raft.metrics().borrow().state;
        if state == ServerState::Leader {
            return false;
        }
        if self.silence() < self.lease + GRANT_MARGIN {
            return false;
        }
        let yes = req.last_log_id >= self.log.last_log_id();
        if yes {
            self.granted.store(
                self.epoch.elapsed().as_millis().max(1) as u64,
                Ordering::Relaxed,
            );
        }
        yes
    }

    /// Calls an election when the leader has been silent for a randomized timeout past the
    /// lease and a majority of voters grant the pre-vote.
    pub async fn run(self: Arc<Self>) {
        let first = self.lease + 2 * GRANT_MARGIN;
        let pick = || rand::thread_rng().gen_range(first..first + self.lease / 3);
        let mut timeout = pick();
        let mut last_election = Instant::now();
        loop {
            tokio::time::sleep(self.lease / 15).await;
            if self.paused.load(Ordering::SeqCst) {
                continue;
            }
            let (state, voters) = {
                let m = self.raft.metrics().borrow().clone();
                if m.running_state.is_err() {
                    return;
                }
                let membership = m.membership_config.membership();
                let voters: Vec<(NodeId, String)> = membership
                    .voter_ids()
                    .filter_map(|id| membership.get_node(&id).map(|n| (id, n.raft_addr.clone())))
                    .collect();
                (m.state, voters)
            };
            if state == ServerState::Leader || !voters.iter().any(|(id, _)| *id == self.id) {
                continue;
            }
            // One election per randomized timeout; refused pre-votes are retried at once, as
            // they raise no term.
            if self.quiet() < timeout || last_election.elapsed() < timeout {
                continue;
            }
            let req = PreVoteRequest {
                candidate: self.id,
                last_log_id: self.log.last_log_id(),
            };
            let mut asks: futures::stream::FuturesUnordered<_> = voters
                .iter()
                .filter(|(id, _)| *id != self.id)
                .map(|(_, addr)| {
                    super::network::request_prevote(addr, self.tls.clone(), &req, self.lease / 3)
                })
                .collect();
            // A majority is enough: a stopped member must not hold the round up.
            let mut granted = 1;
            while granted * 2 <= voters.len() {
                match futures::StreamExt::next(&mut asks).await {
                    Some(true) => granted += 1,
                    Some(false) => {}
                    None => break,
                }
            }
            // A leader may have reached us while we asked.
            if granted * 2 <= voters.len() || self.quiet() < timeout {
                tracing::debug!(granted, voters = voters.len(), "pre-vote refused");
                continue;
            }
            tracing::info!(
                granted,
                voters = voters.len(),
                "the leader is silent and a majority agrees: starting an election"
            );
            last_election = Instant::now();
            timeout = pick();
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        }
    }
}
