//! litecluster-operator: reconciles `SqliteCluster` resources into replicated SQLite clusters.

pub mod controller;
pub mod crd;
pub mod error;
pub mod leader_election;
pub mod metrics;
pub mod node_client;
pub mod resources;
pub mod tls;

pub use error::{Error, Result};
