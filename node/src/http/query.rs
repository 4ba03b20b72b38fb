//! `/db/execute`, `/db/query` and `/db/request`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde_json::Value as Json;

use super::forward::Incoming;
use super::render::{self, Flags, Level};
use super::{AppState, json_response, text_error};
use crate::command::{Mode, ParamValue, Params, Request, Statement, StmtResult, encoded_len};
use crate::node::Node;

/// Parses an rqlite request body: a JSON array of SQL strings or `[sql, params...]` arrays.
pub fn parse_body(body: &[u8]) -> Result<Vec<Statement>, &'static str> {
    let v: Json = serde_json::from_slice(body).map_err(|_| "invalid JSON body")?;
    let Json::Array(items) = v else {
        return Err("invalid request");
    };
    if items.is_empty() {
        return Err("no statements");
    }
    let mut stmts = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Json::String(sql) => stmts.push(Statement::new(sql)),
            Json::Array(parts) => {
                let mut parts = parts.into_iter();
                let Some(Json::String(sql)) = parts.next() else {
                    return Err("invalid request");
                };
                let (mut positional, mut named) = (Vec::new(), Vec::new());
                for p in parts {
                    match p {
                        Json::Object(map) => {
                            for (k, v) in map {
                                named.push((k, param(v)?));
                            }
                        }
                        other => positional.push(param(other)?),
                    }
                }
                let params = match (positional.is_empty(), named.is_empty()) {
                    (true, true) => Params::None,
                    (false, true) => Params::Positional(positional),
                    (true, false) => Params::Named(named),
                    (false, false) => {
                        return Err(
                            "mixing positional and named parameters in one statement is not supported",
                        );
                    }
                };
                stmts.push(Statement { sql, params });
            }
            _ => return Err("invalid request"),
        }
    }
    Ok(stmts)
}

fn param(v: Json) -> Result<ParamValue, &'static str> {
    Ok(match v {
        Json::Null => ParamValue::Null,
        Json::Bool(b) => ParamValue::Bool(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ParamValue::Int(i),
            None => ParamValue::Float(n.as_f64().ok_or("unsupported type")?),
        },
        Json::String(s) => ParamValue::Text(s),
        // A byte array binds as a BLOB (rqlite has no JSON form for BLOB parameters).
        Json::Array(a) => ParamValue::Bytes(
            a.into_iter()
                .map(|x| {
                    x.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or("unsupported type")
                })
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(_) => return Err("unsupported type"),
    })
}

fn is_read_only(sql: &str) -> bool {
    let head = sql.trim_start();
    let word = head
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    word.eq_ignore_ascii_case("select") || word.eq_ignore_ascii_case("explain")
}

/// Replaces what would differ between members (the time, random numbers) with literals, so
/// the log holds what every member applies identically.
fn rewrite_nondeterministic(stmts: &mut [Statement]) {
    let now = Node::unix_now();
    let mut rng = rand::thread_rng();
    for s in stmts {
        if let std::borrow::Cow::Owned(new) = crate::sqlite::rewrite::rewrite(&s.sql, now, &mut rng)
        {
            s.sql = new;
        }
    }
}

fn drop_empty(stmts: &mut Vec<Statement>) {
    // rqlite skips empty statements and gives them no result.
    stmts.retain(|s| !s.sql.trim().is_empty());
}

struct Ctx<'a> {
    node: &'a Node,
    /// The endpoint: `/db/execute`, `/db/query` or `/db/request`.
    endpoint: Mode,
    flags: Flags,
    incoming: Incoming,
    body: Bytes,
    started: Instant,
}

impl Ctx<'_> {
    async fn forward(self, leader: Option<crate::MemberInfo>) -> Response {
        self.incoming
            .forward(self.node, leader, &self.flags, self.body.clone())
            .await
    }

    fn reply(&self, results: &[StmtResult], error: Option<&str>) -> Response {
        let body = render::to_json(
            &render::Response {
                results,
                error,
                time: Some(self.started.elapsed().as_secs_f64()),
                // rqlite's /db/execute has neither: rows of a RETURNING come as plain values.
                timings: self.flags.timings,
                associative: self.flags.associative && self.endpoint != Mode::Execute,
                blob_array: self.flags.blob_array && self.endpoint != Mode::Execute,
                queries: self.endpoint == Mode::Query,
            },
            self.flags.pretty,
        );
        json_response(body)
    }

    /// Proposes statements through the Raft log (writes, and reads at `level=strong`).
    async fn through_log(self, mut stmts: Vec<Statement>, mode: Mode) -> Response {
        if !self.node.is_leader() {
            let leader = self.node.leader().map(|(_, i)| i);
            return self.forward(leader).await;
        }
        rewrite_nondeterministic(&mut stmts);
        let req = Request {
            stmts,
            transaction: self.flags.transaction,
            mode,
        };
        // The request's encoding plus the few bytes of the entry around it.
        let bytes = encoded_len(&req) + 32;
        if let Some(resp) = super::too_large(self.node, bytes) {
            return resp;
        }
        // Refuse at once rather than hold the client until the write times out: it would not
        // commit here, and another member is most likely leader by now.
        if let Some(d) = self.node.quorum_silence() {
            return text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "leader not found: this member leads but has not heard from a quorum for {:.1}s; retry on another member",
                    d.as_secs_f64()
                ),
            );
        }
        match self.node.proposer.propose(req, bytes).await {
            Ok(results) => {
                self.node
                    .metrics
                    .executions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.reply(&results, None)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.forward(f.leader_node).await
            }
            Err(e) => text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("write not committed: {e}; retry"),
            ),
        }
    }

    /// `?queue`: acknowledged at once with a sequence number, applied in a later batch;
    /// with `wait`, answered once applied (or 408 after `timeout`, the write still queued).
    async fn queued(self, mut stmts: Vec<Statement>) -> Response {
        if stmts.is_empty() && !self.flags.wait {
            return bad_request("no statements");
        }
        if !self.node.is_leader() {
            let leader = self.node.leader().map(|(_, i)| i);
            return self.forward(leader).await;
        }
        rewrite_nondeterministic(&mut stmts);
        let bytes = encoded_len(&Request {
            stmts: stmts.clone(),
            transaction: self.flags.transaction,
            mode: Mode::Execute,
        }) + 32;
        if let Some(resp) = super::too_large(self.node, bytes) {
            return resp;
        }
        let auth = self
            .incoming
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (seq, applied) = match self.node.queue.enqueue(stmts, bytes, auth).await {
            Ok(q) => q,
            Err(e) => return text_error(StatusCode::SERVICE_UNAVAILABLE, e),
        };
        if self.flags.wait {
            let limit = self
                .flags
                .timeout
                .unwrap_or(std::time::Duration::from_secs(30));
            if tokio::time::timeout(limit, applied).await.is_err() {
                return text_error(StatusCode::REQUEST_TIMEOUT, "queue wait timeout");
            }
        }
        let mut body = serde_json::json!({"results": [], "sequence_number": seq});
        if self.flags.timings {
            body["time"] = self.started.elapsed().as_secs_f64().into();
        }
        json_response(render::to_json(&body, self.flags.pretty))
    }

    /// Reads at `none`, `weak` or `linearizable` from the local database.
    async fn local_read(self, stmts: Vec<Statement>, mode: Mode) -> Response {
        let node = self.node;
        match self.flags.level {
            Level::None => {
                if let Some(fresh) = self.flags.freshness {
                    let stale = node.since_leader_contact().is_none_or(|d| d > fresh);
                    if stale {
                        return self.reply(&[], Some("stale read"));
                    }
                }
            }
            Level::Weak => {
                if !node.is_leader() {
                    let leader = node.leader().map(|(_, i)| i);
                    return self.forward(leader).await;
                }
            }
            Level::Linearizable => match node.leadership.confirm().await {
                Ok(_) => {}
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    return self.forward(f.leader_node).await;
                }
                Err(e) => {
                    return text_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("linearizable read failed: {e}; retry"),
                    );
                }
            },
            Level::Strong => unreachable!("strong reads go through the log"),
        }
        let timeout = self
            .flags
            .db_timeout
            .or(Some(node.config.db_timeout))
            .filter(|d| !d.is_zero());
        match node.reads.query(stmts, mode, timeout).await {
            Ok(results) => {
                node.metrics
                    .queries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.reply(&results, None)
            }
            Err(e) => text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("read failed: {e}"),
            ),
        }
    }
}

fn bad_request(msg: &str) -> Response {
    text_error(StatusCode::BAD_REQUEST, msg)
}

macro_rules! ctx {
    ($node:expr, $endpoint:expr, $raw:expr, $incoming:expr, $body:expr) => {
        match Flags::parse($raw.as_deref()) {
            Ok(flags) => Ctx {
                node: &$node,
                endpoint: $endpoint,
                flags,
                incoming: $incoming,
                body: $body,
                started: Instant::now(),
            },
            Err(e) => return bad_request(&e),
        }
    };
}

pub async fn execute(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let ctx = ctx!(node, Mode::Execute, raw, incoming, body);
    let mut stmts = match parse_body(&ctx.body) {
        Ok(s) => s,
        // `?queue&wait` with nothing: waits for what was queued before (rqlite's barrier).
        Err("no statements") if ctx.flags.queue && ctx.flags.wait => Vec::new(),
        Err(e) => return bad_request(e),
    };
    drop_empty(&mut stmts);
    if ctx.flags.queue {
        return ctx.queued(stmts).await;
    }
    if stmts.is_empty() {
        return ctx.reply(&[], None);
    }
    ctx.through_log(stmts, Mode::Execute).await
}

pub async fn query(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let mut ctx = ctx!(node, Mode::Query, raw, incoming, body);
    let mut stmts = if ctx.incoming.method == Method::GET {
        // No `q` at all: nothing to run, as in rqlite (an empty `q` was refused above).
        ctx.flags.q.take().map(Statement::new).into_iter().collect()
    } else {
        match parse_body(&ctx.body) {
            Ok(s) => s,
            Err(e) => return bad_request(e),
        }
    };
    drop_empty(&mut stmts);
    if stmts.is_empty() {
        return ctx.reply(&[], None);
    }
    if ctx.flags.level == Level::Strong {
        ctx.through_log(stmts, Mode::Query).await
    } else {
        ctx.local_read(stmts, Mode::Query).await
    }
}

pub async fn request(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let ctx = ctx!(node, Mode::Request, raw, incoming, body);
    let mut stmts = match parse_body(&ctx.body) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    drop_empty(&mut stmts);
    let reads_only = stmts.iter().all(|s| is_read_only(&s.sql));
    if reads_only && ctx.flags.level != Level::Strong {
        ctx.local_read(stmts, Mode::Request).await
    } else {
        ctx.through_log(stmts, Mode::Request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let s = parse_body(br#"["CREATE TABLE t (x)", ["INSERT INTO t VALUES (?, ?)", 1, "a"], ["INSERT INTO t VALUES (:x)", {"x": 2.5}]]"#).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[1].params,
            Params::Positional(vec![ParamValue::Int(1), ParamValue::Text("a".into())])
        );
        assert_eq!(
            s[2].params,
            Params::Named(vec![("x".into(), ParamValue::Float(2.5))])
        );
        assert_eq!(parse_body(b"[]"), Err("no statements"));
        assert_eq!(parse_body(b"[\"x\""), Err("invalid JSON body"));
        assert_eq!(parse_body(b""), Err("invalid JSON body"));
        assert_eq!(parse_body(b"{}"), Err("invalid request"));
        assert_eq!(parse_body(b"[1]"), Err("invalid request"));
        assert_eq!(parse_body(b"[[1]]"), Err("invalid request"));
        assert_eq!(
            parse_body(br#"[["x", {"a": {"b": 1}}]]"#),
            Err("unsupported type")
        );
    }

    #[test]
    fn read_only_detection() {
        assert!(is_read_only("  select 1"));
        assert!(!is_read_only("INSERT INTO t VALUES (1)"));
        assert!(!is_read_only(
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x"
        ));
    }
}
