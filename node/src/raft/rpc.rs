//! The Raft RPC wire format and its server: length-prefixed JSON frames over long-lived TCP
//! connections, one request in flight per connection.
//!
//! Frame: `u32` big-endian length, then (requests) one kind byte and the JSON body, or
//! (responses) the JSON of `Result<Response, RaftError>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;

use super::tls::{self, RaftTls, ReadHalf, WriteHalf};
use crate::Raft;

pub const KIND_APPEND: u8 = 1;
pub const KIND_VOTE: u8 = 2;
pub const KIND_SNAPSHOT: u8 = 3;
/// Ask the receiver to start an election now: the leader uses it to hand over leadership.
pub const KIND_ELECT: u8 = 4;
/// InstallSnapshot with the chunk as one base64 string ([`SnapshotChunk`]); `KIND_SNAPSHOT`
/// (a JSON array of numbers, four times the size) is still accepted from older members.
pub const KIND_SNAPSHOT_B64: u8 = 5;
/// Would you vote for me? ([`super::prevote`]); the reply is a JSON boolean.
pub const KIND_PREVOTE: u8 = 6;

/// The wire form of an InstallSnapshot request.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SnapshotChunk {
    vote: openraft::Vote<crate::NodeId>,
    meta: crate::SnapshotMeta,
    offset: u64,
    #[serde(with = "crate::command::base64_bytes")]
    data: Vec<u8>,
    done: bool,
}

type SnapshotRequest = openraft::raft::InstallSnapshotRequest<crate::TypeConfig>;

impl From<SnapshotRequest> for SnapshotChunk {
    fn from(r: SnapshotRequest) -> Self {
        Self {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: r.data,
            done: r.done,
        }
    }
}

impl From<SnapshotChunk> for SnapshotRequest {
    fn from(c: SnapshotChunk) -> Self {
        Self {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        }
    }
}

/// Frames above this size are refused; snapshot chunks and append batches stay far below it.
pub const MAX_FRAME: usize = 256 << 20;

pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("raft frame of {len} bytes exceeds the limit"),
        ));
    }
    // Grown as bytes arrive, never to the announced length up front: a peer (perhaps not a
    // member at all, without mTLS) that announces 256 MiB must send it to make us hold it.
    buf.clear();
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(GROW), 0);
        r.read_exact(&mut buf[start..]).await?;
    }
    Ok(())
}

/// How far ahead of the bytes received a frame buffer grows.
const GROW: usize = 1 << 20;

pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: Option<u8>,
    body: &[u8],
) -> std::io::Result<()> {
    let len = body.len() + usize::from(kind.is_some());
    w.write_u32(len as u32).await?;
    if let Some(k) = kind {
        w.write_u8(k).await?;
    }
    w.write_all(body).await?;
    w.flush().await
}

/// Serves Raft RPCs on `listener` until the task is dropped.
/// `contact` records when an RPC from a leader last arrived (ms since `epoch`), for freshness.
pub async fn serve(
    listener: TcpListener,
    tls: Option<RaftTls>,
    raft: Arc<Raft>,
    epoch: Instant,
    contact: Arc<AtomicU64>,
    prevote: Arc<super::prevote::PreVote>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "raft listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (raft, contact, tls, prevote) =
            (raft.clone(), contact.clone(), tls.clone(), prevote.clone());
        tokio::spawn(async move {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "raft connection lost");
                return;
            }
            let halves = match &tls {
                Some(t) => match t.accept(stream).await {
                    Ok(h) => h,
                    Err(e) => {
                        // Someone without our CA's certificate, or a member misconfigured.
                        tracing::warn!(%peer, error = %e, "raft TLS handshake refused");
                        return;
                    }
                },
                None => tls::plain(stream),
            };
            if let Err(e) = serve_conn(halves, &raft, epoch, &contact, &prevote).await
                && e.kind() != std::io::ErrorKind::UnexpectedEof
            {
                tracing::debug!(%peer, error = %e, "raft connection closed");
            }
        });
    }
}

async fn serve_conn(
    (r, w): (ReadHalf, WriteHalf),
    raft: &Raft,
    epoch: Instant,
    contact: &AtomicU64,
    prevote: &super::prevote::PreVote,
) -> std::io::Result<()> {
    let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
    let mut buf = Vec::new();
    loop {
        read_frame(&mut r, &mut buf).await?;
        let Some((&kind, body)) = buf.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "empty raft frame",
            ));
        };
        if kind == KIND_APPEND || kind == KIND_SNAPSHOT || kind == KIND_SNAPSHOT_B64 {
            contact.store(epoch.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        }
        let reply = match kind {
            KIND_APPEND => respond(body, |req| raft.append_entries(req)).await,
            KIND_VOTE => respond(body, |req| raft.vote(req)).await,
            KIND_SNAPSHOT => respond(body, |req| raft.install_snapshot(req)).await,
            KIND_SNAPSHOT_B64 => {
                respond(body, |req: SnapshotChunk| raft.install_snapshot(req.into())).await
            }
            KIND_PREVOTE => serde_json::from_slice(body)
                .map(|req| prevote.grant(&req))
                .and_then(|granted| serde_json::to_vec(&granted)),
            KIND_ELECT => {
                let res = raft.trigger().elect().await.map_err(|e| e.to_string());
                serde_json::to_vec(&res)
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown raft rpc kind {other}"),
                ));
            }
        }
        .map_err(std::io::Error::other)?;
        write_frame(&mut w, None, &reply).await?;
    }
}

async fn respond<Req, Resp, E, F, Fut>(body: &[u8], f: F) -> serde_json::Result<Vec<u8>>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    E: serde::Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, E>>,
{
    let req: Req = serde_json::from_slice(body)?;
    serde_json::to_vec(&f(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_announced_length_is_not_allocated_before_the_bytes_arrive() {
        // 200 MiB announced, 10 bytes sent, then the connection ends.
        let mut wire = (200u32 << 20).to_be_bytes().to_vec();
        wire.extend_from_slice(b"0123456789");
        let mut buf = Vec::new();
        let err = read_frame(&mut wire.as_slice(), &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(buf.capacity() <= 2 * GROW, "{} bytes held", buf.capacity());
        // A whole frame still reads back exactly.
        let body = vec![7u8; 3 * GROW + 5];
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        read_frame(&mut wire.as_slice(), &mut buf).await.unwrap();
        assert_eq!(buf, body);
    }
}
