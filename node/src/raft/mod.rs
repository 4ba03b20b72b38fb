//! Raft plumbing: the durable log, the SQLite state machine, snapshots, and the RPC transport.

pub mod handover;
pub mod health;
pub mod join;
pub mod leadership;
pub mod loader;
pub mod log_store;
pub mod network;
pub mod prevote;
pub mod propose;
pub mod queue;
pub mod rpc;
pub mod scheduler;
pub mod snapshot;
pub mod state_machine;
pub mod tls;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::StorageError;

pub(crate) fn io_err(
    subject: ErrorSubject<crate::NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Writes `bytes` to `path` crash-safely: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(std::path::Path::new(".")))
}

/// fsyncs a directory so that a rename or unlink inside it is durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
