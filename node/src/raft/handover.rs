//! Leadership hand-over: the leader stops taking writes, waits until the most caught-up voter
//! holds its whole log, asks it to campaign, and waits until someone else leads. Used on
//! shutdown (so writes pause only briefly) and by `POST /leader`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use openraft::ServerState;
use tokio::sync::RwLock;

use super::prevote::PreVote;
use super::tls::RaftTls;
use crate::{NodeId, Raft};

/// What a hand-over needs: the Raft handle, the write gate it closes, and the member's own
/// election control, which must stay quiet while leadership moves.
pub struct HandOver {
    pub id: NodeId,
    pub raft: Arc<Raft>,
    /// Shared with the proposer: writes hold it shared, a hand-over exclusively.
    pub write_gate: Arc<RwLock<()>>,
    pub prevote: Arc<PreVote>,
    pub tls: Option<RaftTls>,
}

impl HandOver {
    /// Hands leadership to `target` (another voter), or to the most caught-up voter, and
    /// returns the new leader.
    ///
    /// The other voters refuse votes while their leader lease from us holds, so the target's
    /// first campaign may fail; it only makes us step down. Our own elections stay off until
    /// leadership has moved, or we could win the next term back.
    pub async fn run(&self, target: Option<NodeId>, timeout: Duration) -> anyhow::Result<NodeId> {
        self.prevote.pause(true);
        let res = self.hand_over(target, timeout).await;
        self.prevote.pause(false);
        res
    }

    async fn hand_over(&self, target: Option<NodeId>, timeout: Duration) -> anyhow::Result<NodeId> {
        // A `timeout` flag may be up to Go's 292 years: saturate rather than overflow.
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let left = || deadline.saturating_duration_since(Instant::now());
        let (target, info) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                bail!("this member is not the leader");
            }
            let membership = m.membership_config.membership();
            let matched = m.replication.clone().unwrap_or_default();
            let best = match target {
                Some(t) => membership.voter_ids().find(|v| *v == t && t != self.id),
                None => membership
                    .voter_ids()
                    .filter(|v| *v != self.id)
                    .max_by_key(|v| matched.get(v).copied().flatten().map(|l| l.index)),
            };
            let Some(best) = best else {
                bail!("no other voter to hand leadership to")
            };
            let info = membership
                .get_node(&best)
                .cloned()
                .context("voter without address")?;
            (best, info)
        };
        // Hold new writes back: if our log kept growing, entries only we hold would make every
        // other member lose its election to the log check, and we are not campaigning.
        let _paused = tokio::time::timeout(left(), self.write_gate.write())
            .await
            .context("writes in flight did not finish before the hand-over deadline")?;
        let mut rx = self.raft.metrics();
        let ours = rx.borrow().last_log_index;
        let _ = self.raft.trigger().heartbeat().await;
        let caught_up = tokio::time::timeout(left(), async {
            loop {
                {
                    let m = rx.borrow_and_update();
                    let theirs = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten())
                        .map(|l| l.index);
                    if m.state != ServerState::Leader || theirs >= ours {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if caught_up.is_err() {
            bail!("hand-over target {target} did not catch up within {timeout:?}");
        }
        // Ask once: every request starts a new term. Retry only while it cannot be reached.
        while let Err(e) = super::network::request_election(
            &info.raft_addr,
            self.tls.clone(),
            Duration::from_secs(2),
        )
        .await
        {
            if Instant::now() >= deadline {
                bail!("hand-over target {target} unreachable: {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let moved = tokio::time::timeout(left(), async {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if m.state != ServerState::Leader
                        && m.current_leader.is_some_and(|l| l != self.id)
                    {
                        return m.current_leader;
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        if let Ok(Some(new_leader)) = moved {
            return Ok(new_leader);
        }
        bail!("leadership did not move within {timeout:?}")
    }
}
