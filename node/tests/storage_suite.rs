//! openraft's storage conformance suite against our Raft log and SQLite state machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use litecluster_node::metrics::Metrics;
use litecluster_node::raft::health::SnapshotControl;
use litecluster_node::raft::log_store::LogStore;
use litecluster_node::raft::state_machine::StateMachine;
use litecluster_node::sqlite::reader::ReadPool;
use litecluster_node::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

/// Removes the store's directory when the suite is done with it.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lc-suite-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = Arc::new(Metrics::default());
        let log = LogStore::open(&dir.join("raft.db"), metrics.clone())?;
        let db = dir.join("db.sqlite");
        let reads = ReadPool::new(db.clone(), 2);
        let sm = StateMachine::open(
            &db,
            dir.join("snapshots"),
            reads,
            metrics,
            Arc::new(SnapshotControl::default()),
            Duration::from_secs(300),
        )
        .expect("state machine opens");
        Ok((TempDir(dir), log, sm))
    }
}

#[test]
fn openraft_storage_conformance() {
    Suite::test_all(Builder).unwrap();
}
