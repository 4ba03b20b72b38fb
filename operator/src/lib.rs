//! litecluster-operator: reconciles `SqliteCluster` resources into replicated SQLite clusters,
//! and `SqliteBackup` resources into backups of them.

pub mod backup;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader_election;
pub mod metrics;
pub mod node_client;
pub mod resources;
pub mod schedule;
pub mod tls;

pub use error::{Error, Result};
