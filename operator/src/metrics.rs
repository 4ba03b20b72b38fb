//! Operator metrics (reconciles, failures by kind, durations), rendered as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::Error;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0];

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    durations: Mutex<Histogram>,
    backups_completed: AtomicU64,
    backups_failed: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Records the reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        let mut h = self
            .metrics
            .durations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }
}

impl Metrics {
    /// Count a reconcile and time it until the returned guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, e: &Error) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e.metric_label())
            .or_default() += 1;
    }

    /// Count a SqliteBackup that finished.
    pub fn backup_finished(&self, completed: bool) {
        let c = if completed {
            &self.backups_completed
        } else {
            &self.backups_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP litecluster_operator_reconciles_total Reconciles started."
        );
        let _ = writeln!(out, "# TYPE litecluster_operator_reconciles_total counter");
        let _ = writeln!(
            out,
            "litecluster_operator_reconciles_total {}",
            self.reconciles.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP litecluster_operator_reconcile_errors_total Failed reconciles by kind of error."
        );
        let _ = writeln!(
            out,
            "# TYPE litecluster_operator_reconcile_errors_total counter"
        );
        for (label, n) in self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "litecluster_operator_reconcile_errors_total{{error=\"{label}\"}} {n}"
            );
        }
        let h = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP litecluster_operator_reconcile_duration_seconds Time one reconcile took."
        );
        let _ = writeln!(
            out,
            "# TYPE litecluster_operator_reconcile_duration_seconds histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "litecluster_operator_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "litecluster_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "litecluster_operator_reconcile_duration_seconds_sum {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "litecluster_operator_reconcile_duration_seconds_count {}",
            h.count
        );
        let _ = writeln!(
            out,
            "# HELP litecluster_operator_backups_total SqliteBackups finished, by result."
        );
        let _ = writeln!(out, "# TYPE litecluster_operator_backups_total counter");
        for (result, c) in [
            ("completed", &self.backups_completed),
            ("failed", &self.backups_failed),
        ] {
            let _ = writeln!(
                out,
                "litecluster_operator_backups_total{{result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_label() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        drop(m.reconcile_started());
        m.reconcile_failed(&Error::MissingNamespace);
        let text = m.render();
        assert!(text.contains("litecluster_operator_reconciles_total 2"));
        assert!(text.contains(
            "litecluster_operator_reconcile_errors_total{error=\"missing_namespace\"} 1"
        ));
        assert!(text.contains("litecluster_operator_reconcile_duration_seconds_count 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }
}
