//! The node's error type. Each variant says whether a client may retry.

use crate::MemberInfo;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// This member could not apply committed entries (disk, I/O, memory): it must stop rather
    /// than differ from the others.
    #[error("apply failed: {0}")]
    Apply(#[from] ApplyError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// This member is not the leader; the request must go to `leader`.
    #[error("not leader")]
    NotLeader { leader: Option<Box<MemberInfo>> },
    #[error("leader not found")]
    NoLeader,
    #[error("raft: {0}")]
    Raft(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

/// This member cannot apply an entry; the statement is not at fault (`sqlite::apply`).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{context}: {source}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("re-applying entries after a rolled-back transaction gave a different outcome")]
    Diverged,
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::NotLeader { .. } | Self::NoLeader | Self::ShuttingDown | Self::Raft(_)
        )
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Apply(_) => "apply",
            Self::Io { .. } => "io",
            Self::NotLeader { .. } => "not_leader",
            Self::NoLeader => "no_leader",
            Self::Raft(_) => "raft",
            Self::BadRequest(_) => "bad_request",
            Self::ShuttingDown => "shutting_down",
            Self::Internal(_) => "internal",
        }
    }
}
