//! Process metrics, rendered in the Prometheus text format by `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters shared by the whole node. Plain atomics: cheap on hot paths.
#[derive(Default)]
pub struct Metrics {
    pub log_flushes: AtomicU64,
    pub log_flushed_entries: AtomicU64,
    pub log_flush_micros: AtomicU64,
    pub applied_entries: AtomicU64,
    pub apply_batches: AtomicU64,
    pub executions: AtomicU64,
    pub queries: AtomicU64,
    pub forwarded: AtomicU64,
    pub http_errors: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

impl Metrics {
    pub fn log_flush(&self, entries: usize, took: Duration) {
        self.log_flushes.fetch_add(1, Relaxed);
        self.log_flushed_entries.fetch_add(entries as u64, Relaxed);
        self.log_flush_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Renders the counters plus the given Raft gauges.
    pub fn render(&self, raft: &openraft::RaftMetrics<crate::NodeId, crate::MemberInfo>) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "litecluster_log_flushes_total",
                "Raft log fsyncs (one per group-commit batch).",
                &self.log_flushes,
            ),
            (
                "litecluster_log_flushed_entries_total",
                "Raft log entries made durable.",
                &self.log_flushed_entries,
            ),
            (
                "litecluster_applied_entries_total",
                "Raft entries applied to SQLite.",
                &self.applied_entries,
            ),
            (
                "litecluster_apply_batches_total",
                "SQLite transactions used to apply entries.",
                &self.apply_batches,
            ),
            (
                "litecluster_executions_total",
                "Write requests served.",
                &self.executions,
            ),
            (
                "litecluster_queries_total",
                "Read requests served.",
                &self.queries,
            ),
            (
                "litecluster_forwarded_total",
                "Requests forwarded to the leader.",
                &self.forwarded,
            ),
            (
                "litecluster_http_errors_total",
                "HTTP requests answered with an error status.",
                &self.http_errors,
            ),
            (
                "litecluster_snapshots_built_total",
                "Snapshots built by this member.",
                &self.snapshots_built,
            ),
            (
                "litecluster_snapshots_installed_total",
                "Snapshots received from the leader and installed.",
                &self.snapshots_installed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let secs = self.log_flush_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP litecluster_log_flush_seconds_total Time spent writing and fsyncing the Raft log.\n# TYPE litecluster_log_flush_seconds_total counter\nlitecluster_log_flush_seconds_total {secs}"
        );
        let is_leader = u8::from(raft.state == openraft::ServerState::Leader);
        let gauges = [
            (
                "litecluster_raft_term",
                "Current Raft term.",
                raft.current_term,
            ),
            (
                "litecluster_raft_is_leader",
                "1 if this member is the leader.",
                u64::from(is_leader),
            ),
            (
                "litecluster_raft_last_log_index",
                "Index of the last entry in the log.",
                raft.last_log_index.unwrap_or(0),
            ),
            (
                "litecluster_raft_applied_index",
                "Index of the last applied entry.",
                raft.last_applied.map_or(0, |l| l.index),
            ),
            (
                "litecluster_raft_snapshot_index",
                "Index covered by the latest snapshot.",
                raft.snapshot.map_or(0, |l| l.index),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
