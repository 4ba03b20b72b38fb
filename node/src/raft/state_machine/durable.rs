//! When the database is durable. Commits do not fsync (`synchronous=NORMAL`): every applied
//! entry is already durable in the Raft log of a quorum, and a member that loses its last
//! commits in a power cut applies them again from its log on restart. That holds only while
//! the log still has them, and openraft purges the log after a snapshot: so before a snapshot is
//! built, the WAL (and database) are fsynced, and a snapshot at index N always means the
//! database is durable at N.
//!
//! `LITECLUSTER_TEST_POWER_LOSS=1` (tests only) records the WAL length at each of those points
//! in `<db>-wal.synced` and, on the next start, cuts the WAL back to it: the worst a power cut
//! may leave of writes that were never fsynced.

use std::path::{Path, PathBuf};

use super::Worker;

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LITECLUSTER_TEST_POWER_LOSS").is_some_and(|v| v == "1"))
}

fn wal_of(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn record_of(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal.synced");
    PathBuf::from(p)
}

impl Worker {
    /// fsyncs the WAL and the database file; returns the WAL's length.
    pub(super) fn make_durable(&self) -> crate::Result<u64> {
        let sync = |p: &Path| match std::fs::File::open(p) {
            Ok(f) => f.sync_all().map(|()| f.metadata().map_or(0, |m| m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        };
        let len = sync(&wal_of(&self.db_path))
            .map_err(|e| crate::Error::io("syncing the database WAL", e))?;
        sync(&self.db_path).map_err(|e| crate::Error::io("syncing the database", e))?;
        Ok(len)
    }

    /// Test mode: the WAL is durable up to `len` bytes.
    pub(super) fn record_synced(&self, len: u64) {
        if enabled() {
            let _ = std::fs::write(record_of(&self.db_path), len.to_string());
        }
    }
}

/// Test mode, before the database is opened: drop what was written after the last sync.
pub(super) fn simulate_power_loss(db: &Path) {
    if !enabled() {
        return;
    }
    let Some(synced) = std::fs::read_to_string(record_of(db))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    let wal = wal_of(db);
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(&wal) else {
        return;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    if len > synced && f.set_len(synced).is_ok() {
        // The shared-memory index describes frames that are gone: SQLite rebuilds it.
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        let _ = std::fs::remove_file(PathBuf::from(shm));
        tracing::warn!(
            from = len,
            to = synced,
            "simulated power loss: WAL cut back to its last sync"
        );
    }
}
