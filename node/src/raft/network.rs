//! The client side of Raft RPCs: one reusable TCP connection per target member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::{BufReader, BufWriter};
use tokio::net::TcpStream;

use super::rpc::{
    self, KIND_APPEND, KIND_ELECT, KIND_PREVOTE, KIND_SNAPSHOT_B64, KIND_VOTE, SnapshotChunk,
};
use super::tls::{self, RaftTls, ReadHalf, WriteHalf};
use crate::{MemberInfo, NodeId, TypeConfig};

/// Makes connections to other members, over TLS when the Raft port uses it.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    pub tls: Option<RaftTls>,
    pool: Pool,
}

impl NetworkFactory {
    pub fn new(tls: Option<RaftTls>) -> Self {
        Self {
            tls,
            pool: Pool::default(),
        }
    }
}

type Stream = (BufReader<ReadHalf>, BufWriter<WriteHalf>);

/// Idle connections by address. openraft makes a new client for every leadership check of a
/// linearizable read (and every vote): without the pool each one was a TCP connect, and a TLS
/// handshake under mTLS. A connection goes back only after a complete exchange.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<HashMap<String, Vec<Stream>>>>);

/// Idle connections kept per member.
const POOL_PER_TARGET: usize = 8;

impl Pool {
    fn take(&self, addr: &str) -> Option<Stream> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)?
            .pop()
    }

    fn put(&self, addr: &str, s: Stream) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = idle.entry(addr.to_owned()).or_default();
        if v.len() < POOL_PER_TARGET {
            v.push(s);
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &MemberInfo) -> Connection {
        Connection {
            target,
            node: node.clone(),
            tls: self.tls.clone(),
            stream: None,
            buf: Vec::new(),
            pool: Some(self.pool.clone()),
            append_budget: APPEND_BUDGET,
        }
    }
}

pub struct Connection {
    target: NodeId,
    node: MemberInfo,
    tls: Option<RaftTls>,
    stream: Option<Stream>,
    buf: Vec<u8>,
    pool: Option<Pool>,
    /// Bytes of entries the next AppendEntries may carry (see [`next_budget`]).
    append_budget: usize,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let (Some(pool), Some(s)) = (&self.pool, self.stream.take()) {
            pool.put(&self.node.raft_addr, s);
        }
    }
}

enum CallError {
    Unreachable(std::io::Error),
    Network(std::io::Error),
    Timeout,
}

impl Connection {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &mut self,
        kind: u8,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let body =
            serde_json::to_vec(req).map_err(|e| CallError::Network(std::io::Error::other(e)))?;
        self.call_encoded(kind, &body, ttl).await
    }

    async fn call_encoded<Resp: serde::de::DeserializeOwned>(
        &mut self,
        kind: u8,
        body: &[u8],
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        match tokio::time::timeout(ttl, self.round_trip(kind, body)).await {
            Ok(Ok(())) => serde_json::from_slice(&self.buf).map_err(|e| {
                self.stream = None;
                CallError::Network(std::io::Error::other(e))
            }),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                // The connection may hold a late reply; never reuse it.
                self.stream = None;
                Err(CallError::Timeout)
            }
        }
    }

    /// One request and its reply. The stream is taken out for the exchange and put back only
    /// after the reply is read: if openraft drops this future on its own timeout mid-exchange,
    /// the connection goes with it, so a late reply can never answer the next request.
    async fn round_trip(&mut self, kind: u8, body: &[u8]) -> Result<(), CallError> {
        if self.stream.is_none()
            && let Some(s) = self
                .pool
                .as_ref()
                .and_then(|p| p.take(&self.node.raft_addr))
        {
            self.stream = Some(s);
            // An idle connection may have been closed by the other side (it restarted): then
            // once more on a new one. Every Raft RPC is idempotent.
            match self.exchange(kind, body).await {
                Err(CallError::Network(_)) => {}
                done => return done,
            }
        }
        self.exchange(kind, body).await
    }

    async fn exchange(&mut self, kind: u8, body: &[u8]) -> Result<(), CallError> {
        let (mut r, mut w) = match self.stream.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(&self.node.raft_addr)
                    .await
                    .map_err(CallError::Unreachable)?;
                s.set_nodelay(true).map_err(CallError::Unreachable)?;
                let (r, w) = match &self.tls {
                    Some(t) => t
                        .connect(&self.node.raft_addr, s)
                        .await
                        .map_err(CallError::Unreachable)?,
                    None => tls::plain(s),
                };
                (BufReader::new(r), BufWriter::new(w))
            }
        };
        rpc::write_frame(&mut w, Some(kind), body)
            .await
            .map_err(CallError::Network)?;
        rpc::read_frame(&mut r, &mut self.buf)
            .await
            .map_err(CallError::Network)?;
        self.stream = Some((r, w));
        Ok(())
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        ttl: Duration,
    ) -> RPCError<NodeId, MemberInfo, E> {
        match e {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::Timeout => RPCError::Network(NetworkError::new(&std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply from {} within {ttl:?}", self.node.raft_addr),
            ))),
        }
    }
}

impl Connection {
    /// One RPC: transport failures become `Unreachable`/`Network`, the receiver's Raft error a
    /// `RemoteError`.
    async fn rpc<Req, Resp, E>(
        &mut self,
        kind: u8,
        req: &Req,
        option: RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberInfo, E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let res: Result<Resp, E> = self
            .call(kind, req, ttl)
            .await
            .map_err(|e| self.rpc_error(e, ttl))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// Bytes of entries one AppendEntries carries at most (it always carries at least one): small
/// enough to be sent, decoded, written and fsynced within the heartbeat openraft allows an RPC,
/// and far below the receiver's frame limit.
pub const APPEND_BUDGET: usize = 2 << 20;

/// The smallest budget: one entry always goes whatever the budget.
const MIN_APPEND_BUDGET: usize = 64 << 10;

/// The budget after an AppendEntries of `sent` entries. A follower too slow (a starved CPU, a
/// slow disk) to take a full one within the RPC's deadline would get the same request again
/// and never catch up: each timeout halves the budget, each answer in time doubles it back.
fn next_budget(budget: usize, sent: usize, timed_out: bool) -> usize {
    if timed_out && sent > 1 {
        (budget / 2).max(MIN_APPEND_BUDGET)
    } else if timed_out {
        budget
    } else {
        (budget * 2).min(APPEND_BUDGET)
    }
}

/// Encodes an AppendEntries with as many of its entries as fit `budget` bytes; returns the
/// frame body and how many entries it holds.
pub fn encode_append(
    rpc: &AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> serde_json::Result<(Vec<u8>, usize)> {
    let head = AppendEntriesRequest::<TypeConfig> {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        leader_commit: rpc.leader_commit,
        entries: Vec::new(),
    };
    let head = serde_json::to_vec(&head)?;
    const EMPTY: &[u8] = b"\"entries\":[]";
    let Some(at) = head.windows(EMPTY.len()).position(|w| w == EMPTY) else {
        // Not the layout this splices into: send the request whole.
        return Ok((serde_json::to_vec(rpc)?, rpc.entries.len()));
    };
    let split = at + EMPTY.len() - 1;
    let (before, after) = head.split_at(split);
    let mut out = before.to_vec();
    let mut sent = 0;
    for e in &rpc.entries {
        let mark = out.len();
        if sent > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, e)?;
        if sent > 0 && out.len() + after.len() > budget {
            out.truncate(mark);
            break;
        }
        sent += 1;
    }
    out.extend_from_slice(after);
    Ok((out, sent))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberInfo, RaftError<NodeId>>>
    {
        let ttl = option.hard_ttl();
        let (body, sent) = encode_append(&rpc, self.append_budget)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let res = self.call_encoded(KIND_APPEND, &body, ttl).await;
        self.append_budget = next_budget(
            self.append_budget,
            sent,
            matches!(res, Err(CallError::Timeout)),
        );
        let res: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            res.map_err(|e| self.rpc_error(e, ttl))?;
        match res {
            // openraft sends the rest from where the follower now matches.
            Ok(AppendEntriesResponse::Success) if sent < rpc.entries.len() => Ok(
                AppendEntriesResponse::PartialSuccess(Some(rpc.entries[sent - 1].log_id)),
            ),
            Ok(r) => Ok(r),
            Err(e) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(KIND_SNAPSHOT_B64, &SnapshotChunk::from(rpc), option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberInfo, RaftError<NodeId>>> {
        self.rpc(KIND_VOTE, &rpc, option).await
    }
}

impl Connection {
    /// A connection for one call outside openraft (pre-vote, hand-over).
    fn one_off(raft_addr: &str, tls: Option<RaftTls>) -> Self {
        Self {
            target: 0,
            node: MemberInfo {
                raft_addr: raft_addr.to_owned(),
                ..MemberInfo::default()
            },
            tls,
            stream: None,
            buf: Vec::new(),
            pool: None,
            append_budget: APPEND_BUDGET,
        }
    }
}

/// Asks the voter at `raft_addr` whether it would vote for us (pre-vote). Unreachable or silent
/// is no. A member older than pre-vote drops the connection on the unknown request: that is yes,
/// or a rolling upgrade could leave no member able to start an election.
pub async fn request_prevote(
    raft_addr: &str,
    tls: Option<RaftTls>,
    req: &super::prevote::PreVoteRequest,
    ttl: Duration,
) -> bool {
    let mut conn = Connection::one_off(raft_addr, tls);
    match conn.call::<_, bool>(KIND_PREVOTE, req, ttl).await {
        Ok(granted) => granted,
        Err(CallError::Network(e)) => e.kind() == std::io::ErrorKind::UnexpectedEof,
        Err(_) => false,
    }
}

/// Asks the member at `raft_addr` to start an election (leadership hand-over on shutdown).
pub async fn request_election(
    raft_addr: &str,
    tls: Option<RaftTls>,
    ttl: Duration,
) -> Result<(), String> {
    let mut conn = Connection::one_off(raft_addr, tls);
    match conn
        .call::<(), Result<(), String>>(KIND_ELECT, &(), ttl)
        .await
    {
        Ok(r) => r,
        Err(CallError::Unreachable(e) | CallError::Network(e)) => Err(e.to_string()),
        Err(CallError::Timeout) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn entry(index: u64, bytes: usize) -> crate::Entry {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Command::LoadChunk {
                load: 7,
                seq: index as u32,
                data: vec![index as u8; bytes],
            }),
        }
    }

    #[test]
    fn a_follower_that_times_out_gets_smaller_appends_until_it_answers_in_time() {
        let mut b = APPEND_BUDGET;
        for _ in 0..20 {
            b = next_budget(b, 3, true);
        }
        assert_eq!(b, MIN_APPEND_BUDGET);
        // A lone entry that timed out: nothing smaller to send, the budget stays.
        assert_eq!(next_budget(b, 1, true), b);
        let mut steps = 0;
        while b < APPEND_BUDGET {
            b = next_budget(b, 3, false);
            steps += 1;
        }
        assert_eq!(b, APPEND_BUDGET);
        assert!(steps <= 6, "{steps} answers to recover the full budget");
    }

    #[test]
    fn append_entries_are_cut_to_the_byte_budget_and_decode_whole() {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=5).map(|i| entry(i, 5 << 17)).collect(),
        };
        let (body, sent) = encode_append(&rpc, APPEND_BUDGET).unwrap();
        assert_eq!(sent, 2, "two entries of 0.8 MiB (base64) fit 2 MiB");
        assert!(body.len() <= APPEND_BUDGET);
        let back: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.entries, rpc.entries[..2]);
        assert_eq!(back.vote, rpc.vote);
        // One entry over the budget still goes, alone; the whole request when all fit.
        let (_, sent) = encode_append(&rpc, 1).unwrap();
        assert_eq!(sent, 1);
        let (body, sent) = encode_append(&rpc, usize::MAX).unwrap();
        assert_eq!(sent, 5);
        assert_eq!(body, serde_json::to_vec(&rpc).unwrap());
    }
}
