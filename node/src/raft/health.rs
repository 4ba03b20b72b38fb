//! Snapshot health: what the last snapshots and checkpoints did, shown in `/status` under
//! `store.snapshot` and in `/metrics`. The operator acts on it.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::sqlite::checkpoint::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Incremental,
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct Success {
    pub index: u64,
    pub kind: Kind,
    pub at: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub at: String,
    pub kind: Kind,
    pub error: String,
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotHealth {
    pub last_success: Option<Success>,
    pub last_failure: Option<Failure>,
    pub consecutive_failures: u64,
    pub total_failures: u64,
    pub fallbacks_to_full: u64,
    /// The next snapshot must be full (after a restart or a load the WAL no longer holds every
    /// frame since the last snapshot).
    pub full_needed: bool,
    pub wal_bytes: u64,
    #[serde(skip)]
    pub successes: [u64; 2],
    #[serde(skip)]
    pub failures: [u64; 2],
    #[serde(skip)]
    pub last_duration_ms: u64,
    /// When the current run of failures began; drives backoff and the starvation measures.
    #[serde(skip)]
    pub failing_since: Option<Instant>,
    #[serde(skip)]
    pub last_attempt: Option<Instant>,
}

fn idx(kind: Kind) -> usize {
    match kind {
        Kind::Incremental => 0,
        Kind::Full => 1,
    }
}

pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::sqlite::rewrite::rfc3339(d.as_secs() as i64, d.subsec_millis())
}

impl SnapshotHealth {
    pub fn succeeded(&mut self, index: u64, kind: Kind, started: Instant) {
        let duration_ms = started.elapsed().as_millis() as u64;
        self.last_success = Some(Success {
            index,
            kind,
            at: now_rfc3339(),
            duration_ms,
        });
        self.successes[idx(kind)] += 1;
        self.last_duration_ms = duration_ms;
        self.last_attempt = Some(Instant::now());
    }

    /// A checkpoint that completed ends a run of failures.
    pub fn checkpoint_ok(&mut self) {
        self.consecutive_failures = 0;
        self.failing_since = None;
    }

    pub fn failed(&mut self, kind: Kind, error: String, checkpoint: Option<Checkpoint>) {
        self.last_failure = Some(Failure {
            at: now_rfc3339(),
            kind,
            error,
            checkpoint,
        });
        self.consecutive_failures += 1;
        self.total_failures += 1;
        self.failures[idx(kind)] += 1;
        self.failing_since.get_or_insert_with(Instant::now);
        self.last_attempt = Some(Instant::now());
    }

    /// Prometheus text for the snapshot counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP litecluster_snapshots_total Snapshots taken, by kind.\n# TYPE litecluster_snapshots_total counter"
        );
        let _ = writeln!(
            out,
            "litecluster_snapshots_total{{kind=\"incremental\"}} {}",
            self.successes[0]
        );
        let _ = writeln!(
            out,
            "litecluster_snapshots_total{{kind=\"full\"}} {}",
            self.successes[1]
        );
        let _ = writeln!(
            out,
            "# HELP litecluster_snapshot_failures_total Snapshot attempts whose WAL checkpoint did not complete, by kind.\n# TYPE litecluster_snapshot_failures_total counter"
        );
        let _ = writeln!(
            out,
            "litecluster_snapshot_failures_total{{kind=\"incremental\"}} {}",
            self.failures[0]
        );
        let _ = writeln!(
            out,
            "litecluster_snapshot_failures_total{{kind=\"full\"}} {}",
            self.failures[1]
        );
        let gauges = [
            (
                "litecluster_snapshot_fallbacks_to_full_total",
                "counter",
                "Incremental snapshots replaced by a full one.",
                self.fallbacks_to_full,
            ),
            (
                "litecluster_snapshot_consecutive_failures",
                "gauge",
                "Failed checkpoints since the last complete one.",
                self.consecutive_failures,
            ),
            (
                "litecluster_wal_bytes",
                "gauge",
                "Size of the database WAL file.",
                self.wal_bytes,
            ),
            (
                "litecluster_snapshot_full_needed",
                "gauge",
                "1 if the next snapshot must be full.",
                u64::from(self.full_needed),
            ),
        ];
        for (name, ty, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP litecluster_snapshot_last_duration_seconds Duration of the last snapshot.\n# TYPE litecluster_snapshot_last_duration_seconds gauge\nlitecluster_snapshot_last_duration_seconds {}",
            self.last_duration_ms as f64 / 1000.0
        );
    }
}

/// Shared between the state machine thread (which records), the HTTP API (which reads and asks
/// for full snapshots) and the scheduler (which retries).
#[derive(Default)]
pub struct SnapshotControl {
    pub health: std::sync::Mutex<SnapshotHealth>,
    /// The next snapshot must be full (`POST /snapshot?type=full`).
    pub force_full: std::sync::atomic::AtomicBool,
}

impl SnapshotControl {
    pub fn health(&self) -> std::sync::MutexGuard<'_, SnapshotHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}
