//! Interval backups on the leader, skipped when nothing was applied since the last one.

use std::sync::{Arc, Weak};

use crate::node::Node;

/// Starts the interval task when the node's backup config sets `interval`.
pub fn spawn(node: &Arc<Node>) {
    let Some(manager) = node.backup.clone() else {
        return;
    };
    let Some(every) = manager.config.interval else {
        tracing::info!("backup config has no interval: backups only on request");
        return;
    };
    let weak: Weak<Node> = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(node) = weak.upgrade() else { return };
            if !node.is_leader() {
                continue;
            }
            let applied = node.raft.metrics().borrow().last_applied.map(|l| l.index);
            if applied.is_none() || applied == manager.last_index() {
                manager.count_skip();
                tracing::debug!(?applied, "nothing applied since the last backup; skipping");
                continue;
            }
            // Errors are logged, counted and shown in /status by the manager.
            let _ = manager.push_db(&node.db_path, &node.info.name).await;
        }
    });
}
