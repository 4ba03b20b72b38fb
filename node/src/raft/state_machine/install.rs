//! Installing a snapshot received from the leader, so that a crash at any point leaves the old
//! database (with its WAL) or the new one, never a mix.
//!
//! 1. The image is kept in the snapshot store and copied to `db.install` with the snapshot's
//!    applied index and membership written into it (rollback journal, one file), fsynced.
//! 2. The marker `install-pending` is written durably: from here on the new image wins.
//! 3. The old connection closes, the old WAL and SHM are deleted (their frames belong to the old
//!    file and must never be replayed onto the new one), the image is renamed over the database,
//!    the directory fsynced.
//! 4. The marker is removed.
//!
//! A member that finds the marker when it opens the database redoes step 3 ([`recover`]).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::super::health::Kind;
use super::super::{sync_dir, write_atomic};
use super::Worker;
use crate::SnapshotMeta;
use crate::sqlite::{self, apply::Writer};

const MARKER: &str = "install-pending";

fn marker(db: &Path) -> PathBuf {
    db.with_file_name(MARKER)
}

fn staged(db: &Path) -> PathBuf {
    db.with_extension("install")
}

fn dir(db: &Path) -> &Path {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Finishes an install that a crash interrupted, or drops a staged image that never got its
/// marker. Runs before the database is opened.
pub(super) fn recover(db: &Path) -> std::io::Result<()> {
    if !marker(db).exists() {
        match std::fs::remove_file(staged(db)) {
            Ok(()) => tracing::warn!("dropped a snapshot image whose install never started"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        return Ok(());
    }
    tracing::warn!("finishing a snapshot install that was interrupted");
    switch(db)
}

/// Step 3 and 4: idempotent, so a crash inside it is finished by [`recover`].
fn switch(db: &Path) -> std::io::Result<()> {
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(dir(db))?;
    crate::failpoint("install-after-wal-delete");
    // A crash after the rename comes back here with nothing left to rename.
    if staged(db).exists() {
        std::fs::rename(staged(db), db)?;
        sync_dir(dir(db))?;
    }
    crate::failpoint("install-after-rename");
    std::fs::remove_file(marker(db))?;
    sync_dir(dir(db))
}

/// Copies `src` to `dest` with the snapshot's progress in it, as one fsynced file.
fn stage(src: &Path, dest: &Path, meta: &SnapshotMeta) -> crate::Result<()> {
    std::fs::copy(src, dest).map_err(|e| crate::Error::io("copying the snapshot image", e))?;
    {
        let conn = Connection::open(dest)?;
        // One file: a WAL beside the staged copy would not follow it through the rename.
        conn.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))?;
        // An image from a member of an earlier version carries the legacy table.
        sqlite::ensure_meta(&conn)?;
        conn.execute_batch("BEGIN")?;
        let applied = serde_json::to_string(&meta.last_log_id).unwrap_or_default();
        let membership = serde_json::to_string(&meta.last_membership).unwrap_or_default();
        sqlite::write_meta(&conn, "applied", &applied)?;
        sqlite::write_meta(&conn, "membership", &membership)?;
        sqlite::write_meta(&conn, "partial", "null")?;
        conn.execute_batch("COMMIT")?;
    }
    std::fs::File::open(dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| crate::Error::io("syncing the snapshot image", e))
}

impl Worker {
    pub(super) fn install(&mut self, meta: &SnapshotMeta, received: &Path) -> crate::Result<()> {
        {
            let probe =
                Connection::open_with_flags(received, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            probe.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
        }
        let sidecar = self
            .store
            .commit(meta, Kind::Full, received)
            .map_err(|e| crate::Error::io("storing received snapshot", e))?;
        let snap = self
            .store
            .chain()
            .map_err(|e| crate::Error::io("reading received snapshot", e))?
            .into_iter()
            .find(|(s, _)| s.seq == sidecar.seq)
            .map(|(_, p)| p)
            .ok_or_else(|| crate::Error::Internal("snapshot vanished after commit".into()))?;
        let db = self.db_path.clone();
        stage(&snap, &staged(&db), meta)?;
        write_atomic(&marker(&db), b"")
            .map_err(|e| crate::Error::io("writing the install marker", e))?;
        crate::failpoint("install-after-marker");
        // Close the old database before its files go.
        self.writer = Writer::open(Path::new(":memory:"))?;
        self.reads.reset();
        switch(&db).map_err(|e| crate::Error::io("replacing the database", e))?;
        self.writer = Writer::open(&db)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.partial = None;
        self.partial_stored = false;
        self.membership_saved = None;
        self.record_synced(0);
        self.reads.reset();
        // The database now equals the new base and its WAL starts empty: the chain is valid.
        self.control.health().full_needed = false;
        self.metrics
            .snapshots_installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "snapshot installed");
        Ok(())
    }
}
