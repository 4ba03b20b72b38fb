//! The operator's error type; every variant has a metric label so failures are counted by kind.

use thiserror::Error;

/// Errors of the operator library.
#[derive(Error, Debug)]
pub enum Error {
    #[error("kubernetes api call failed")]
    Kube(#[from] kube::Error),

    #[error("node {node} at {url}: {what}")]
    Node {
        node: String,
        url: String,
        what: String,
    },

    #[error("cluster has no namespace")]
    MissingNamespace,

    #[error("cannot serialize {what}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("auth secret {secret}: {what}")]
    AuthSecret { secret: String, what: String },

    #[error("tls secret {secret}: {what}")]
    TlsSecret { secret: String, what: String },

    #[error("bootstrap.recovery.backup: {0}")]
    RecoverySource(String),

    #[error("cannot build the node http client")]
    NodeClient(#[source] reqwest::Error),

    #[error("the leader Lease renewer stopped unexpectedly")]
    LeaseRenewer(#[source] tokio::task::JoinError),
}

impl Error {
    /// Low-cardinality label for the `errors` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Node { .. } => "node",
            Error::MissingNamespace => "missing_namespace",
            Error::Serialize { .. } => "serialize",
            Error::AuthSecret { .. } => "auth_secret",
            Error::TlsSecret { .. } => "tls_secret",
            Error::RecoverySource(_) => "recovery_source",
            Error::NodeClient(_) => "node_client",
            Error::LeaseRenewer(_) => "lease_renewer",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
