//! Triggers snapshots beyond openraft's log-count policy: when the WAL outgrows
//! `--snapshot-wal-size`, when `--snapshot-interval` passed with something new, and to retry a
//! failed checkpoint with exponential backoff (1 s doubling to 60 s) until the WAL resets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health::SnapshotControl;
use crate::Raft;

const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When to snapshot besides openraft's own policy.
pub struct Policy {
    /// The database's WAL file.
    pub wal_path: std::path::PathBuf,
    /// `--snapshot-wal-size`.
    pub wal_size: u64,
    /// `--snapshot-interval`.
    pub interval: Duration,
}

pub async fn run(raft: Arc<Raft>, snapshots: Arc<SnapshotControl>, policy: Policy) {
    let Policy {
        wal_path,
        wal_size,
        interval,
    } = policy;
    let mut last_trigger = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        if raft.metrics().borrow().state == openraft::ServerState::Shutdown {
            return;
        }
        let wal_bytes = std::fs::metadata(&wal_path).map_or(0, |m| m.len());
        let (applied, snapshot) = {
            let m = raft.metrics();
            let m = m.borrow();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let (failures, last_attempt) = {
            let mut h = snapshots.health();
            h.wal_bytes = wal_bytes;
            (h.consecutive_failures, h.last_attempt)
        };
        let new_data = applied > snapshot;
        let since = last_attempt
            .unwrap_or(last_trigger)
            .max(last_trigger)
            .elapsed();
        let reason = if failures > 0 {
            let backoff = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
            (since >= backoff).then_some("retrying an incomplete checkpoint")
        } else if new_data && wal_bytes > wal_size {
            Some("WAL size")
        } else if new_data && since >= interval {
            Some("interval")
        } else {
            None
        };
        if let Some(reason) = reason
            && applied > 0
        {
            tracing::debug!(reason, wal_bytes, applied, snapshot, "triggering snapshot");
            last_trigger = Instant::now();
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}
