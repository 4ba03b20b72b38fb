//! The Raft state machine: openraft's interface to the user's SQLite database, which one
//! writer thread owns. Applying entries is in `apply`, snapshots in `build` and `install`.

mod apply;
#[cfg(test)]
mod batch_props;
mod build;
mod durable;
mod install;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use tokio::sync::oneshot;

use super::health::SnapshotControl;
use super::io_err;
use super::snapshot::SnapshotStore;
use crate::command::CommandResponse;
use crate::metrics::Metrics;
use crate::sqlite::{self, apply::Writer, reader::ReadPool};
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
    writer: Writer,
    db_path: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// A batch entry committed part way (a statement rolled the transaction back).
    partial: Option<apply::Partial>,
    /// The database holds a `partial` row that is not `null`.
    partial_stored: bool,
    /// The membership as last written to the database (`None`: unknown): most batches do not
    /// change it, so they need not write it.
    membership_saved: Option<StoredMembership>,
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
        // An install interrupted by a crash is finished before the database is opened.
        install::recover(db_path)
            .map_err(|e| crate::Error::io("finishing an interrupted snapshot install", e))?;
        durable::simulate_power_loss(db_path);
        let writer = Writer::open(db_path)?;
        let conn = writer.conn();
        let applied =
            sqlite::read_meta(conn, "applied")?.and_then(|s| serde_json::from_str(&s).ok());
        let membership = sqlite::read_meta(conn, "membership")?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let partial: Option<apply::Partial> =
            sqlite::read_meta(conn, "partial")?.and_then(|s| serde_json::from_str(&s).ok());
        let store = Arc::new(
            SnapshotStore::open(snapshot_dir)
                .map_err(|e| crate::Error::io("opening snapshot store", e))?,
        );
        let mut worker = Worker {
            writer,
            db_path: db_path.to_owned(),
            applied,
            membership,
            partial,
            partial_stored: partial.is_some(),
            membership_saved: None,
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
