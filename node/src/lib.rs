//! litecluster-node: one member of a Raft-replicated SQLite database with an rqlite-compatible API.

pub mod auth;
pub mod backup;
pub mod command;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod sqlite;
#[cfg(test)]
mod testing;

pub use command::{Command, CommandResponse};
pub use error::{Error, Result};

openraft::declare_raft_types!(
    /// Raft type configuration of a litecluster member.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = MemberInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberInfo>;
pub type StorageError = openraft::StorageError<NodeId>;

/// What the cluster knows about a member: how to reach it and what it is called.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The name given with `--node-id` (rqlite clients see this as the node ID).
    pub name: String,
    /// Address of the Raft RPC listener.
    pub raft_addr: String,
    /// Base URL of the HTTP API, e.g. `http://10.0.0.1:4001`.
    pub api_addr: String,
}

impl std::fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.api_addr)
    }
}

/// Maps a `--node-id` to the numeric Raft ID.
///
/// A positive integer is used as is; a StatefulSet pod name `name-N` maps to `N + 1` so that
/// ordinal 0 never becomes Raft ID 0, which openraft uses as a default.
pub fn raft_id_from_name(name: &str) -> Option<NodeId> {
    if let Ok(id) = name.parse::<u64>() {
        return (id > 0).then_some(id);
    }
    let (_, ordinal) = name.rsplit_once('-')?;
    ordinal.parse::<u64>().ok().map(|n| n + 1)
}

/// Test hook: `LITECLUSTER_FAILPOINT=<name>` aborts the process at the named point, the way a
/// SIGKILL or power cut would, so crash safety can be tested with real processes.
pub fn failpoint(name: &str) {
    // Read once: failpoints sit on the write path.
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("LITECLUSTER_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_from_names() {
        assert_eq!(raft_id_from_name("7"), Some(7));
        assert_eq!(raft_id_from_name("0"), None);
        assert_eq!(raft_id_from_name("db-0"), Some(1));
        assert_eq!(raft_id_from_name("my-db-12"), Some(13));
        assert_eq!(raft_id_from_name("db"), None);
        assert_eq!(raft_id_from_name("db-x"), None);
    }
}
