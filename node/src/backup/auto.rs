//! Interval backups on the leader, skipped when nothing was applied since the last one.

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use super::Manager;
use crate::Raft;

/// Starts the interval task when the backup config sets `interval`. It stops with Raft.
pub fn spawn(manager: Arc<Manager>, raft: &Arc<Raft>, db_path: PathBuf, member: String) {
    let Some(every) = manager.config.interval else {
        tracing::info!("backup config has no interval: backups only on request");
        return;
    };
    let weak: Weak<Raft> = Arc::downgrade(raft);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(raft) = weak.upgrade() else { return };
            let (leader, applied) = {
                let m = raft.metrics();
                let m = m.borrow();
                if m.state == openraft::ServerState::Shutdown {
                    return;
                }
                (
                    m.state == openraft::ServerState::Leader,
                    m.last_applied.map(|l| l.index),
                )
            };
            drop(raft);
            if !leader {
                continue;
            }
            if applied.is_none() || applied == manager.last_index() {
                manager.count_skip();
                tracing::debug!(?applied, "nothing applied since the last backup; skipping");
                continue;
            }
            // Errors are logged, counted and shown in /status by the manager.
            let _ = manager.push_db(&db_path, &member).await;
        }
    });
}
