//! Proposing a database image through Raft in pieces (`/db/load`, `--restore-from`), so that no
//! entry or frame grows with the database. The pieces are applied by `sqlite::load`.

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::propose::Proposer;
use crate::command::Command;
use crate::sqlite::load::CHUNK_BYTES;
use crate::{MemberInfo, NodeId, TypeConfig};

/// Why a load was not proposed to the end.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("{0}")]
    Raft(Box<RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>>),
    #[error("reading the image: {0}")]
    Read(#[from] std::io::Error),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>> for ProposeError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>) -> Self {
        Self::Raft(Box::new(e))
    }
}

/// Proposes the image read from `src` (`total` bytes, for progress lines) and returns the
/// response of its commit entry. A leadership change mid-way fails the load; the pieces
/// already committed are dropped by the next load.
pub async fn propose(
    writes: &Proposer,
    src: &mut (impl AsyncRead + Unpin),
    total: u64,
) -> Result<ClientWriteResponse<TypeConfig>, ProposeError> {
    let load: u64 = rand::random();
    let (mut seq, mut len, mut crc) = (0u32, 0u64, crc32fast::Hasher::new());
    let mut next_report = 0u64;
    loop {
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        (&mut *src)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut buf)
            .await?;
        if buf.is_empty() && seq > 0 {
            break;
        }
        let n = buf.len();
        crc.update(&buf);
        writes
            .write(Command::LoadChunk {
                load,
                seq,
                data: buf,
            })
            .await?;
        seq += 1;
        len += n as u64;
        if len >= next_report && total > 4 * CHUNK_BYTES as u64 {
            tracing::info!(
                done_mib = len >> 20,
                total_mib = total >> 20,
                "loading a database image"
            );
            next_report = len + total / 10;
        }
        if n < CHUNK_BYTES {
            break;
        }
    }
    let resp = writes
        .write(Command::LoadCommit {
            load,
            chunks: seq,
            len,
            crc32: crc.finalize(),
            at_ms: Some(crate::command::now_ms()),
        })
        .await?;
    tracing::info!(
        bytes = len,
        pieces = seq,
        index = resp.log_id.index,
        "database image loaded"
    );
    Ok(resp)
}
