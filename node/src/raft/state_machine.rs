//! The Raft state machine: the user's SQLite database, written by one thread.
//!
//! A batch of committed entries is applied in one SQLite transaction that also records the
//! applied log id, so after a crash nothing is applied twice or skipped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a snapshot's checkpoint waits for readers before it counts as incomplete.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(200);

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::health::{Kind, SnapshotControl};
use super::io_err;
use super::snapshot::{MAX_CHAIN, SnapshotStore};
use crate::command::{Command, CommandResponse};
use crate::metrics::Metrics;
use crate::sqlite::checkpoint::{Checkpoint, Outcome};
use crate::sqlite::{self, exec, reader::ReadPool};
use crate::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Op {
    Apply(Vec<Entry>, Reply<Vec<CommandResponse>>),
    AppliedState(Reply<(Option<LogId>, StoredMembership)>),
    Build(Reply<SnapshotMeta>),
    Install(Box<SnapshotMeta>, PathBuf, Reply<()>),
}

/// Handle to the state machine thread. Cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    ops: mpsc::Sender<Op>,
    db_path: PathBuf,
    store: Arc<SnapshotStore>,
    receiving: Arc<Mutex<Option<PathBuf>>>,
}

struct Worker {
    conn: Connection,
    db_path: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    store: Arc<SnapshotStore>,
    reads: ReadPool,
    metrics: Arc<Metrics>,
    snapshot_seq: u64,
    control: Arc<SnapshotControl>,
    starve_limit: Duration,
}

impl StateMachine {
    /// Opens the database at `db_path` and starts the writer thread.
    pub fn open(
        db_path: &Path,
        snapshot_dir: PathBuf,
        reads: ReadPool,
        metrics: Arc<Metrics>,
        control: Arc<SnapshotControl>,
        starve_limit: Duration,
    ) -> crate::Result<Self> {
        let conn = sqlite::open_writer(db_path)?;
        let applied =
            sqlite::read_meta(&conn, "applied")?.and_then(|s| serde_json::from_str(&s).ok());
        let membership = sqlite::read_meta(&conn, "membership")?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let store = Arc::new(
            SnapshotStore::open(snapshot_dir)
                .map_err(|e| crate::Error::io("opening snapshot store", e))?,
        );
        let mut worker = Worker {
            conn,
            db_path: db_path.to_owned(),
            applied,
            membership,
            store: store.clone(),
            reads,
            metrics,
            snapshot_seq: 0,
            control,
            starve_limit,
        };
        // The last connection to close checkpoints the WAL away, so after a restart the WAL no
        // longer holds every frame since the last snapshot: the next snapshot must be full.
        worker.control.health().full_needed = true;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| crate::Error::io("starting the sqlite writer thread", e))?;
        Ok(Self {
            ops: tx,
            db_path: db_path.to_owned(),
            store,
            receiving: Arc::new(Mutex::new(None)),
        })
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(Reply<T>) -> Op,
        subject: ErrorSubject<crate::NodeId>,
        verb: ErrorVerb,
    ) -> Result<T, StorageError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || {
            io_err(
                subject.clone(),
                verb,
                std::io::Error::other("sqlite writer thread stopped"),
            )
        };
        self.ops.send(op(tx)).map_err(|_| stopped())?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(io_err(subject.clone(), verb, std::io::Error::other(msg))),
            Err(_) => Err(stopped()),
        }
    }
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(op) = rx.recv() {
            match op {
                Op::Apply(entries, reply) => {
                    let _ = reply.send(
                        self.apply(&entries)
                            .map_err(|e| format!("applying entries: {e}")),
                    );
                }
                Op::AppliedState(reply) => {
                    let _ = reply.send(Ok((self.applied, self.membership.clone())));
                }
                Op::Build(reply) => {
                    let _ = reply.send(self.build().map_err(|e| format!("building snapshot: {e}")));
                }
                Op::Install(meta, path, reply) => {
                    let _ = reply.send(
                        self.install(&meta, &path)
                            .map_err(|e| format!("installing snapshot: {e}")),
                    );
                }
            }
        }
    }

    fn save_progress(&self) -> rusqlite::Result<()> {
        let applied = serde_json::to_string(&self.applied).unwrap_or_default();
        let membership = serde_json::to_string(&self.membership).unwrap_or_default();
        sqlite::write_meta(&self.conn, "applied", &applied)?;
        sqlite::write_meta(&self.conn, "membership", &membership)
    }

    fn apply(&mut self, entries: &[Entry]) -> crate::Result<Vec<CommandResponse>> {
        let mut responses = Vec::with_capacity(entries.len());
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut batch_start = 0;
        let result = (|| -> crate::Result<()> {
            for (i, entry) in entries.iter().enumerate() {
                let resp = match &entry.payload {
                    EntryPayload::Blank => CommandResponse::default(),
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        CommandResponse::default()
                    }
                    EntryPayload::Normal(Command::Load { image }) => {
                        // A load replaces the database: commit what came before, load outside
                        // any transaction, then record progress in a transaction of its own.
                        self.save_progress()?;
                        self.conn.execute_batch("COMMIT")?;
                        let resp = self.load(image);
                        self.conn.execute_batch("BEGIN IMMEDIATE")?;
                        batch_start = i + 1;
                        resp
                    }
                    EntryPayload::Normal(Command::Statements {
                        stmts,
                        transaction,
                        mode,
                    }) => {
                        let mut results = Vec::new();
                        let mut start = 0;
                        loop {
                            match exec::run(&self.conn, stmts, start, *transaction, *mode, true) {
                                Ok(r) => {
                                    results.extend(r);
                                    break;
                                }
                                Err(lost) => {
                                    // A statement rolled back our transaction (e.g. `OR ROLLBACK`).
                                    // Re-apply this batch's earlier entries, so that the outcome
                                    // is as if each entry had its own transaction, whatever the
                                    // batch boundaries were on this member.
                                    tracing::warn!(
                                        index = entry.log_id.index,
                                        "statement rolled back the apply transaction; re-applying the batch prefix"
                                    );
                                    results.extend(lost.results);
                                    start = lost.resume_at;
                                    self.conn.execute_batch("BEGIN IMMEDIATE")?;
                                    for prev in &entries[batch_start..i] {
                                        if let EntryPayload::Normal(Command::Statements {
                                            stmts,
                                            transaction,
                                            mode,
                                        }) = &prev.payload
                                        {
                                            let _ = exec::run(
                                                &self.conn,
                                                stmts,
                                                0,
                                                *transaction,
                                                *mode,
                                                false,
                                            );
                                        }
                                    }
                                }
                            }
                        }
                        CommandResponse {
                            results,
                            error: None,
                        }
                    }
                };
                self.applied = Some(entry.log_id);
                responses.push(resp);
            }
            self.save_progress()?;
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        self.metrics
            .applied_entries
            .fetch_add(entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .apply_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(responses)
    }

    /// Replaces the database content with a SQLite image (`/db/load`). An invalid image changes
    /// nothing and is reported to the client; it is not an apply failure.
    fn load(&mut self, image: &[u8]) -> CommandResponse {
        let tmp = self.db_path.with_extension("load.tmp");
        let result = (|| -> crate::Result<()> {
            std::fs::write(&tmp, image).map_err(|e| crate::Error::io("writing load image", e))?;
            let src =
                Connection::open_with_flags(&tmp, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let check: String = src.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if check != "ok" {
                return Err(crate::Error::BadRequest(format!(
                    "image failed integrity check: {check}"
                )));
            }
            let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)?;
            backup.run_to_completion(1024, std::time::Duration::ZERO, None)?;
            drop(backup);
            self.conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                sqlite::META_TABLE
            ))?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        self.reads.reset();
        // The backup API may checkpoint while replacing pages; only a full snapshot is safe next.
        self.control.health().full_needed = true;
        match result {
            Ok(()) => CommandResponse::default(),
            Err(e) => CommandResponse {
                results: Vec::new(),
                error: Some(format!("invalid SQLite data: {e}")),
            },
        }
    }

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

    fn wal_path(&self) -> PathBuf {
        let mut p = self.db_path.clone().into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    }

    /// Builds a snapshot at the applied index. Incremental when the chain allows it: the WAL
    /// frames since the last snapshot, then a TRUNCATE checkpoint. If the checkpoint does not
    /// complete (a reader holds the WAL), the copy is discarded and a full snapshot is taken
    /// instead: no frame is lost, the failure is counted and shown, and retried with backoff.
    fn build(&mut self) -> crate::Result<SnapshotMeta> {
        let started = Instant::now();
        let meta = self.snapshot_meta()?;
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
            let cp = crate::sqlite::checkpoint::truncate(&self.conn, CHECKPOINT_WAIT)?;
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
        let cp = crate::sqlite::checkpoint::truncate(&self.conn, CHECKPOINT_WAIT)?;
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
        self.conn.backup(
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
    fn starvation_measures(&mut self) {
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
        match crate::sqlite::checkpoint::truncate(&self.conn, CHECKPOINT_WAIT) {
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

    fn install(&mut self, meta: &SnapshotMeta, received: &Path) -> crate::Result<()> {
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
        // Fold and close the old database, remove its WAL (stale frames must never be replayed
        // onto the new file), then move a copy of the snapshot into place.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        drop(old);
        self.reads.reset();
        for suffix in ["-wal", "-shm"] {
            let mut p = self.db_path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let dir = self.db_path.parent().unwrap_or(Path::new("."));
        super::sync_dir(dir).map_err(|e| crate::Error::io("syncing data dir", e))?;
        let tmp = self.db_path.with_extension("install.tmp");
        std::fs::copy(&snap, &tmp)
            .map_err(|e| crate::Error::io("copying snapshot into place", e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| crate::Error::io("syncing database", e))?;
        std::fs::rename(&tmp, &self.db_path)
            .map_err(|e| crate::Error::io("replacing database", e))?;
        super::sync_dir(dir).map_err(|e| crate::Error::io("syncing data dir", e))?;
        self.conn = sqlite::open_writer(&self.db_path)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.save_progress()?;
        self.conn.execute_batch("COMMIT")?;
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

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // openraft keeps only the meta of a built snapshot; the data for a follower comes from
        // get_current_snapshot, which materialises the chain.
        let meta = self
            .call(Op::Build, ErrorSubject::StateMachine, ErrorVerb::Write)
            .await?;
        let file = tokio::fs::File::open(&self.db_path)
            .await
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.call(
            Op::AppliedState,
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
        )
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.call(
            |r| Op::Apply(entries, r),
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
        )
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.store.temp_path("recv");
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        *self.receiving.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        let err = |e: std::io::Error| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        snapshot.flush().await.map_err(err)?;
        snapshot.sync_all().await.map_err(err)?;
        drop(snapshot);
        let path = self
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| err(std::io::Error::other("no snapshot is being received")))?;
        let meta = Box::new(meta.clone());
        self.call(
            |r| Op::Install(meta, path, r),
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
        )
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let store = self.store.clone();
        let dest = self.store.temp_path("materialized");
        let d = dest.clone();
        let res = tokio::task::spawn_blocking(move || store.materialize(&d))
            .await
            .map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(None),
                    ErrorVerb::Read,
                    std::io::Error::other(e.to_string()),
                )
            })?;
        let meta = match res {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(None),
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return Err(io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e));
            }
        };
        let file = tokio::fs::File::open(&dest)
            .await
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        // Unlinked at once: the open handle keeps the data until the transfer ends.
        let _ = std::fs::remove_file(&dest);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
