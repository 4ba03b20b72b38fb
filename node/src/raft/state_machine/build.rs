//! Building snapshots on the writer thread: incremental (the WAL since the last one, then a
//! checkpoint) when the chain allows it, full otherwise or when a checkpoint does not complete.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::health::Kind;
use super::super::snapshot::MAX_CHAIN;
use super::Worker;
use crate::SnapshotMeta;
use crate::sqlite::checkpoint::{Checkpoint, Outcome};

/// How long a snapshot's checkpoint waits for readers before it counts as incomplete.
pub(super) const CHECKPOINT_WAIT: Duration = Duration::from_millis(200);

pub(super) fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

impl Worker {
    fn snapshot_meta(&mut self) -> crate::Result<SnapshotMeta> {
        // Nothing applied yet is a valid (empty) snapshot: openraft treats a build error as fatal.
        let (term, index) = self.applied.map_or((0, 0), |l| (l.leader_id.term, l.index));
        self.snapshot_seq += 1;
        Ok(SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{term}-{index}-{}", self.snapshot_seq),
        })
    }

    pub(super) fn wal_path(&self) -> PathBuf {
        let mut p = self.db_path.clone().into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    }

    /// Builds a snapshot at the applied index. Incremental when the chain allows it: the WAL
    /// frames since the last snapshot, then a TRUNCATE checkpoint. If the checkpoint does not
    /// complete (a reader holds the WAL), the copy is discarded and a full snapshot is taken
    /// instead: no frame is lost, the failure is counted and shown, and retried with backoff.
    pub(super) fn build(&mut self) -> crate::Result<SnapshotMeta> {
        let started = Instant::now();
        // openraft may purge the log up to this snapshot once it has it (see `durable`).
        let synced = self.make_durable()?;
        let meta = self.snapshot_meta()?;
        let meta = self.build_at(meta, started)?;
        // A completed checkpoint synced the database and emptied the WAL.
        self.record_synced(synced.min(file_len(&self.wal_path())));
        Ok(meta)
    }

    fn build_at(&mut self, meta: SnapshotMeta, started: Instant) -> crate::Result<SnapshotMeta> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let chain_len = self
            .store
            .chain()
            .map_err(|e| crate::Error::io("reading snapshot chain", e))?
            .len();
        let forced = self
            .control
            .force_full
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let full_needed = self.control.health().full_needed;
        // SQLite deletes the WAL when the last connection to the database closes, after
        // checkpointing it: another process that had the file open (a backup tool, an admin's
        // sqlite3) can do that. Its frames are then in the database but not in our chain.
        let wal_gone = !self.wal_path().exists();
        if wal_gone && !full_needed {
            tracing::warn!(
                "the WAL file is gone (another process closed the database last): taking a full snapshot"
            );
        }
        let want_full =
            forced || full_needed || wal_gone || chain_len == 0 || chain_len >= MAX_CHAIN;
        if !want_full {
            match self.incremental(&meta) {
                Ok(None) => {
                    let mut h = self.control.health();
                    h.checkpoint_ok();
                    h.succeeded(index, Kind::Incremental, started);
                    h.wal_bytes = file_len(&self.wal_path());
                    drop(h);
                    self.metrics
                        .snapshots_built
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        index,
                        took_ms = started.elapsed().as_millis() as u64,
                        "incremental snapshot taken"
                    );
                    return Ok(meta);
                }
                Ok(Some(cp)) => {
                    tracing::warn!(
                        index,
                        busy = cp.busy,
                        log = cp.log,
                        checkpointed = cp.checkpointed,
                        "{}; falling back to a full snapshot",
                        cp.describe()
                    );
                    let mut h = self.control.health();
                    h.failed(Kind::Incremental, cp.describe(), Some(cp));
                    h.fallbacks_to_full += 1;
                }
                Err(e) => {
                    tracing::warn!(index, error = %e, "incremental snapshot failed; falling back to a full snapshot");
                    let mut h = self.control.health();
                    h.failed(Kind::Incremental, e.to_string(), None);
                    h.fallbacks_to_full += 1;
                }
            }
            self.full(&meta)?;
            let mut h = self.control.health();
            h.succeeded(index, Kind::Full, started);
            h.full_needed = false;
            h.wal_bytes = file_len(&self.wal_path());
            drop(h);
            self.starvation_measures();
        } else {
            self.full(&meta)?;
            let cp = crate::sqlite::checkpoint::truncate(self.writer.conn(), CHECKPOINT_WAIT)?;
            let mut h = self.control.health();
            h.succeeded(index, Kind::Full, started);
            h.full_needed = false;
            h.wal_bytes = file_len(&self.wal_path());
            if cp.outcome() == Outcome::Complete {
                h.checkpoint_ok();
            } else {
                tracing::warn!(
                    index,
                    busy = cp.busy,
                    log = cp.log,
                    checkpointed = cp.checkpointed,
                    "{} after a full snapshot",
                    cp.describe()
                );
                h.failed(Kind::Full, cp.describe(), Some(cp));
                drop(h);
                self.starvation_measures();
            }
        }
        self.metrics
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            index,
            forced,
            full_needed,
            took_ms = started.elapsed().as_millis() as u64,
            "full snapshot taken"
        );
        Ok(meta)
    }

    /// Copies the WAL and checkpoints it. `Ok(None)` when committed; `Ok(Some(cp))` when the
    /// checkpoint did not complete and the copy was discarded.
    fn incremental(&mut self, meta: &SnapshotMeta) -> crate::Result<Option<Checkpoint>> {
        let tmp = self.store.temp_path("wal");
        // No write is in progress: this thread is the only writer, so the WAL holds exactly the
        // committed frames since the last reset.
        std::fs::copy(self.wal_path(), &tmp).map_err(|e| crate::Error::io("copying the WAL", e))?;
        crate::failpoint("snapshot-after-wal-copy");
        let cp = crate::sqlite::checkpoint::truncate(self.writer.conn(), CHECKPOINT_WAIT)?;
        if cp.outcome() != Outcome::Complete {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Some(cp));
        }
        if let Err(e) = self.store.commit(meta, Kind::Incremental, &tmp) {
            // The WAL is already reset, so the chain lost these frames: only a full snapshot
            // can follow.
            self.control.health().full_needed = true;
            let _ = std::fs::remove_file(&tmp);
            return Err(crate::Error::io("committing incremental snapshot", e));
        }
        Ok(None)
    }

    fn full(&mut self, meta: &SnapshotMeta) -> crate::Result<()> {
        let tmp = self.store.temp_path("full");
        self.writer.conn().backup(
            rusqlite::MAIN_DB,
            &tmp,
            None::<fn(rusqlite::backup::Progress)>,
        )?;
        crate::failpoint("snapshot-after-full-copy");
        self.store.commit(meta, Kind::Full, &tmp).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            crate::Error::io("committing full snapshot", e)
        })?;
        Ok(())
    }

    /// A checkpoint starved for longer than the limit interrupts our own readers holding the
    /// WAL (reads are bounded by `db_timeout` anyway) and tries once more, so the WAL stays
    /// bounded even with `db_timeout=0`.
    pub(super) fn starvation_measures(&mut self) {
        let starving = self
            .control
            .health()
            .failing_since
            .is_some_and(|t| t.elapsed() >= self.starve_limit);
        if !starving {
            return;
        }
        let n = self.reads.interrupt_all();
        tracing::warn!(limit = ?self.starve_limit, interrupted = n, "WAL checkpoint starved past the limit: interrupting readers");
        std::thread::sleep(Duration::from_millis(100));
        match crate::sqlite::checkpoint::truncate(self.writer.conn(), CHECKPOINT_WAIT) {
            Ok(cp) if cp.outcome() == Outcome::Complete => {
                // Frames are gone from the WAL but may postdate the last snapshot.
                let mut h = self.control.health();
                h.checkpoint_ok();
                h.full_needed = true;
                h.wal_bytes = 0;
                tracing::info!("WAL reset after interrupting readers; next snapshot will be full");
            }
            Ok(cp) => tracing::warn!(
                "{} even after interrupting our readers: an external process holds the database open",
                cp.describe()
            ),
            Err(e) => tracing::warn!(error = %e, "checkpoint after interrupting readers failed"),
        }
    }
}
