//! The Raft state machine: the user's SQLite database, written by one thread.
//!
//! A batch of committed entries is applied in one SQLite transaction that also records the
//! applied log id, so after a crash nothing is applied twice or skipped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::io_err;
use super::snapshot::SnapshotStore;
use crate::command::{Command, CommandResponse};
use crate::metrics::Metrics;
use crate::sqlite::{self, exec, reader::ReadPool};
use crate::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Op {
    Apply(Vec<Entry>, Reply<Vec<CommandResponse>>),
    AppliedState(Reply<(Option<LogId>, StoredMembership)>),
    Build(Reply<(SnapshotMeta, PathBuf)>),
    Install(Box<SnapshotMeta>, PathBuf, Reply<()>),
}

/// Handle to the state machine thread. Cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    ops: mpsc::Sender<Op>,
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
}

impl StateMachine {
    /// Opens the database at `db_path` and starts the writer thread.
    pub fn open(
        db_path: &Path,
        snapshot_dir: PathBuf,
        reads: ReadPool,
        metrics: Arc<Metrics>,
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
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| crate::Error::io("starting the sqlite writer thread", e))?;
        Ok(Self {
            ops: tx,
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
        match result {
            Ok(()) => CommandResponse::default(),
            Err(e) => CommandResponse {
                results: Vec::new(),
                error: Some(format!("invalid SQLite data: {e}")),
            },
        }
    }

    fn build(&mut self) -> crate::Result<(SnapshotMeta, PathBuf)> {
        let started = Instant::now();
        let Some(last) = self.applied else {
            return Err(crate::Error::Internal("nothing applied yet".into()));
        };
        self.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.leader_id.term, last.index, self.snapshot_seq
            ),
        };
        let tmp = self.store.temp_path("build");
        let _ = std::fs::remove_file(&tmp);
        self.conn.backup(
            rusqlite::MAIN_DB,
            &tmp,
            None::<fn(rusqlite::backup::Progress)>,
        )?;
        self.store
            .commit(&meta, &tmp)
            .map_err(|e| crate::Error::io("committing snapshot", e))?;
        // The snapshot holds every applied page, so the WAL can be folded into the database.
        let (busy, log, done): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        if busy != 0 || log != done {
            tracing::warn!(
                busy,
                log,
                checkpointed = done,
                "WAL checkpoint incomplete; will retry at the next snapshot"
            );
        }
        self.metrics
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            index = last.index,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        let path = self
            .store
            .current()
            .map_err(|e| crate::Error::io("reading snapshot back", e))?
            .map(|(_, p)| p)
            .ok_or_else(|| crate::Error::Internal("snapshot vanished after commit".into()))?;
        Ok((meta, path))
    }

    fn install(&mut self, meta: &SnapshotMeta, received: &Path) -> crate::Result<()> {
        {
            let probe =
                Connection::open_with_flags(received, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            probe.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
        }
        self.store
            .commit(meta, received)
            .map_err(|e| crate::Error::io("storing received snapshot", e))?;
        let (_, snap) = self
            .store
            .current()
            .map_err(|e| crate::Error::io("reading received snapshot", e))?
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
        self.metrics
            .snapshots_installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "snapshot installed");
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, path) = self
            .call(Op::Build, ErrorSubject::StateMachine, ErrorVerb::Write)
            .await?;
        let file = tokio::fs::File::open(&path)
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
        let current = tokio::task::spawn_blocking(move || store.current())
            .await
            .map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(None),
                    ErrorVerb::Read,
                    std::io::Error::other(e.to_string()),
                )
            })?
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        let Some((sidecar, path)) = current else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: sidecar.meta,
            snapshot: Box::new(file),
        }))
    }
}
