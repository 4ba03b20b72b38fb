//! Cluster and operations endpoints: `/status`, `/nodes`, `/readyz`, `/leader`, `/remove`,
//! `/join`, `/snapshot`, `/metrics`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::forward::Incoming;
use super::render::{Flags, to_json};
use super::{AppState, json_response, text_error};
use crate::node::Node;
use crate::{MemberInfo, NodeId};

/// Parses flags or returns from the handler with 400.
macro_rules! flags_or_400 {
    ($raw:expr) => {
        match Flags::parse($raw.as_deref()) {
            Ok(f) => f,
            Err(e) => return text_error(StatusCode::BAD_REQUEST, &e),
        }
    };
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub async fn status(State(node): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let flags = flags_or_400!(raw);
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members: Vec<Json> = membership
        .nodes()
        .map(|(id, info)| json!({"id": info.name, "raft_id": id, "api_addr": info.api_addr, "addr": info.raft_addr, "voter": voters.contains(id)}))
        .collect();
    let leader = node.leader().map(|(id, info)| json!({"node_id": info.name, "raft_id": id, "api_addr": info.api_addr, "addr": info.raft_addr}));
    let mut wal = node.db_path.clone().into_os_string();
    wal.push("-wal");
    let uptime = node.started_at.elapsed();
    let mut doc = json!({
        "node": {
            "id": node.info.name,
            "raft_id": node.id,
            "api_addr": node.info.api_addr,
            "raft_addr": node.info.raft_addr,
            "start_time": crate::sqlite::rewrite::rfc3339(node.started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64), 0),
            "uptime": format!("{:.3}s", uptime.as_secs_f64()),
        },
        "build": {"version": env!("CARGO_PKG_VERSION")},
        "http": {
            "bind_addr": node.config.http_addr,
            "auth": if node.auth.is_some() { "enabled" } else { "disabled" },
            "tls": {"enabled": node.config.tls()},
            "queue": {"_default": {
                "batch_size": node.queue.settings.batch_size,
                "max_size": node.queue.settings.capacity,
                "timeout": go_duration(node.queue.settings.timeout),
                "sequence_number": node.queue.applied_seq(),
            }},
        },
        "store": {
            "node_id": node.info.name,
            "dir": node.config.data_dir,
            "db_size": file_len(&node.db_path),
            "wal_bytes": file_len(std::path::Path::new(&wal)),
            "snapshot": serde_json::to_value(&*node.snapshots.health()).unwrap_or_default(),
            "leader": leader,
            "raft": {
                "state": role(m.state),
                "term": m.current_term,
                "voter": voters.contains(&node.id),
                "last_log_index": m.last_log_index.unwrap_or(0),
                "applied_index": m.last_applied.map_or(0, |l| l.index),
                "snapshot_index": m.snapshot.map_or(0, |l| l.index),
                "purged_index": m.purged.map_or(0, |l| l.index),
                "membership_log_index": m.membership_config.log_id().map_or(0, |l| l.index),
                "millis_since_leader_contact": node.since_leader_contact().map(|d| d.as_millis() as u64),
            },
            "members": members,
        },
        "backup": crate::backup::status_json(node.backup.as_deref()),
        "restored": node.restored.get().cloned().flatten(),
        "runtime": {"num_cpu": std::thread::available_parallelism().map_or(1, |n| n.get()), "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
        "cluster": {
            "addr": node.info.raft_addr,
            "api_addr": node.info.api_addr.split_once("://").map_or(node.info.api_addr.as_str(), |(_, a)| a),
            "https": if node.config.tls() { "true" } else { "false" },
        },
        "os": {
            "executable": std::env::current_exe().ok(),
            "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
            "page_size": 4096,
            "pid": std::process::id(),
            "ppid": std::os::unix::process::parent_id(),
        },
    });
    // The keys rqlite's own store section has, which dashboards and its shell read.
    let store = &mut doc["store"];
    store["addr"] = json!(node.info.raft_addr);
    store["nodes"] = json!(
        membership
            .nodes()
            .map(|(id, info)| json!({
                "id": info.name,
                "addr": info.raft_addr,
                "suffrage": if voters.contains(id) { "Voter" } else { "Nonvoter" },
            }))
            .collect::<Vec<_>>()
    );
    store["sqlite3"] = json!({
        "version": rusqlite::version(),
        "path": node.db_path,
        "db_size": file_len(&node.db_path),
        "wal_size": file_len(std::path::Path::new(&wal)),
    });
    store["raft"]["commit_index"] = json!(m.last_applied.map_or(0, |l| l.index));
    store["raft"]["num_peers"] = json!(membership.nodes().count().saturating_sub(1));
    doc["node"]["current_time"] =
        json!(crate::sqlite::rewrite::rfc3339(Node::unix_now() as i64, 0));
    if let Some(key) = &flags.key {
        for part in key.split('.') {
            doc = doc.get(part).cloned().unwrap_or_else(|| json!({}));
        }
    }
    json_response(to_json(&doc, flags.pretty))
}

pub async fn nodes(State(node): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let flags = flags_or_400!(raw);
    let (members, voters, leader) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let members: Vec<(NodeId, MemberInfo)> =
            membership.nodes().map(|(id, i)| (*id, i.clone())).collect();
        (
            members,
            membership.voter_ids().collect::<BTreeSet<_>>(),
            m.current_leader,
        )
    };
    let timeout = flags.timeout.unwrap_or(Duration::from_secs(5));
    let probes = members
        .into_iter()
        .filter(|(id, _)| flags.nonvoters || voters.contains(id))
        .map(|(id, info)| {
            let voter = voters.contains(&id);
            let node = &node;
            async move { node_object(node, id, &info, voter, leader == Some(id), timeout).await }
        });
    let results = futures::future::join_all(probes).await;
    let doc = if flags.ver2 {
        json!({ "nodes": results })
    } else {
        Json::Object(
            results
                .into_iter()
                .map(|v| (v["id"].as_str().unwrap_or_default().to_owned(), v))
                .collect(),
        )
    };
    json_response(to_json(&doc, flags.pretty))
}

pub async fn readyz(State(node): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let flags = flags_or_400!(raw);
    let plain = |code: StatusCode, body: &'static str| {
        (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    };
    if flags.noleader {
        return plain(StatusCode::OK, "[+]node ok");
    }
    if node.leader().is_none() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "[+]node ok\n[+]leader does not exist",
        );
    }
    // A member that has not yet applied anything committed cannot serve reads.
    let m = node.raft.metrics().borrow().clone();
    if m.last_applied.is_none() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "[+]node ok\n[+]leader ok\n[+]store not ready",
        );
    }
    if !flags.sync {
        return plain(StatusCode::OK, "[+]node ok\n[+]leader ok\n[+]store ok");
    }
    // `?sync`: this member has applied everything its log held when asked.
    let target = m.last_log_index.unwrap_or(0);
    let mut rx = node.raft.metrics();
    let caught_up = tokio::time::timeout(flags.timeout.unwrap_or(Duration::from_secs(30)), async {
        loop {
            if rx.borrow_and_update().last_applied.map_or(0, |l| l.index) >= target {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    match caught_up {
        Ok(()) => plain(
            StatusCode::OK,
            "[+]node ok\n[+]leader ok\n[+]store ok\n[+]sync ok",
        ),
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "[+]node ok\n[+]leader ok\n[+]store ok\n[+]sync timeout waiting for commit index",
        ),
    }
}

/// rqlite's node object, as `/nodes` and `GET /leader` give it: the member, and whether its API
/// answered (any HTTP answer, even 401, proves it is up), with its version and the time the
/// call took.
async fn node_object(
    node: &crate::node::Node,
    id: NodeId,
    info: &MemberInfo,
    voter: bool,
    leader: bool,
    timeout: Duration,
) -> Json {
    let started = Instant::now();
    let res = if id == node.id {
        Ok(None)
    } else {
        node.client
            .get(format!("{}/readyz?noleader", info.api_addr))
            .timeout(timeout)
            .send()
            .await
            .map(Some)
    };
    let took = started.elapsed();
    let (reachable, version, error) = match res {
        Ok(None) => (true, super::VERSION.to_owned(), None),
        Ok(Some(r)) => (
            true,
            r.headers()
                .get("x-rqlite-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown")
                .to_owned(),
            None,
        ),
        Err(e) if e.is_timeout() => (
            false,
            String::new(),
            Some("timeout waiting for node to respond".to_owned()),
        ),
        Err(e) => (false, String::new(), Some(e.to_string())),
    };
    let mut v = json!({
        "id": info.name, "api_addr": info.api_addr, "addr": info.raft_addr,
        "version": version, "voter": voter, "reachable": reachable, "leader": leader,
        "time": took.as_secs_f64(), "time_s": go_duration(took),
    });
    if let Some(e) = error {
        v["error"] = json!(e);
    }
    v
}

/// `d` as Go's `time.Duration.String` writes it (`82ns`, `1.203µs`, `1.5ms`, `2m3.5s`).
pub fn go_duration(d: Duration) -> String {
    fn trimmed(whole: u128, frac: u128, digits: usize) -> String {
        let f = format!("{frac:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{f}")
        }
    }
    let ns = d.as_nanos();
    match ns {
        0 => "0s".into(),
        1..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}µs", trimmed(ns / 1_000, ns % 1_000, 3)),
        1_000_000..1_000_000_000 => format!("{}ms", trimmed(ns / 1_000_000, ns % 1_000_000, 6)),
        _ => {
            let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
            let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
            let secs = format!(
                "{}s",
                trimmed(rest / 1_000_000_000, rest % 1_000_000_000, 9)
            );
            match (h, m) {
                (0, 0) => secs,
                (0, m) => format!("{m}m{secs}"),
                (h, m) => format!("{h}h{m}m{secs}"),
            }
        }
    }
}

/// `GET /leader`: the leader's node object, as in rqlite; 503 while there is none.
pub async fn leader(State(node): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let flags = flags_or_400!(raw);
    let Some((id, info)) = node.leader() else {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "leader not found");
    };
    let voter = node.is_voter(id);
    let timeout = flags.timeout.unwrap_or(Duration::from_secs(5));
    let v = node_object(&node, id, &info, voter, true, timeout).await;
    json_response(to_json(&v, flags.pretty))
}

#[derive(Deserialize)]
struct StepDownBody {
    #[serde(default)]
    id: Option<String>,
}

/// `POST /leader`: the leader hands leadership to the member named by `{"id": ...}`, or to the
/// most caught-up voter, and answers 200 with an empty body once it has moved (rqlite's
/// `?wait`; without it rqlite answers before, we always wait).
pub async fn step_down(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let flags = flags_or_400!(raw);
    let wanted = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<StepDownBody>(&body) {
            Ok(b) => b.id,
            Err(e) => return text_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
        }
    };
    if !node.is_leader() {
        return incoming.to_leader(&node, &flags, body).await;
    }
    let target = match wanted.as_deref() {
        None => None,
        Some(id) => match find_member(&node, id) {
            Some((rid, _)) if rid == node.id => {
                return text_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "stepdown: cannot step down to the current Leader",
                );
            }
            Some((rid, true)) => Some(rid),
            Some((_, false)) => {
                return text_error(
                    StatusCode::BAD_REQUEST,
                    &format!("stepdown: node {id} is not a voter, so it cannot lead"),
                );
            }
            None => {
                return text_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "stepdown: node not found in cluster",
                );
            }
        },
    };
    match node
        .transfer_leadership_to(target, flags.timeout.unwrap_or(Duration::from_secs(10)))
        .await
    {
        Ok(new_leader) => {
            tracing::info!(new_leader, "leadership handed over on request");
            StatusCode::OK.into_response()
        }
        Err(e) => text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("stepdown: leadership transfer failed: {e:#}"),
        ),
    }
}

#[derive(Deserialize)]
struct RemoveBody {
    id: String,
}

fn find_member(node: &crate::node::Node, id: &str) -> Option<(NodeId, bool)> {
    let m = node.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .find(|(rid, info)| info.name == id || rid.to_string() == id)
        .map(|(rid, _)| (*rid, voters.contains(rid)))
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberInfo>>) -> Response {
    text_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("membership change failed: {e}; retry"),
    )
}

pub async fn remove(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let flags = flags_or_400!(raw);
    let Ok(RemoveBody { id }) = serde_json::from_slice::<RemoveBody>(&body) else {
        return text_error(
            StatusCode::BAD_REQUEST,
            r#"invalid request: want {"id": "<node id>"}"#,
        );
    };
    if !node.is_leader() {
        return incoming.to_leader(&node, &flags, body).await;
    }
    let _one_change = node.membership_lock.lock().await;
    let Some((rid, voter)) = find_member(&node, &id) else {
        // Already gone (or never there): nothing to do, as in rqlite, so automation can retry.
        tracing::info!(node = %id, "remove of a node that is not a member: nothing to do");
        return StatusCode::OK.into_response();
    };
    let change = if voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([rid]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([rid]))
    };
    match node.raft.change_membership(change, false).await {
        Ok(_) => {
            tracing::info!(node = %id, raft_id = rid, voter, "member removed");
            StatusCode::OK.into_response()
        }
        Err(e) => membership_error(e),
    }
}

#[derive(Deserialize)]
pub struct JoinBody {
    pub id: String,
    pub raft_addr: String,
    pub api_addr: String,
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}

/// `POST /join`: adds a member as a learner, waits until it has caught up, then promotes it
/// when it should vote. Idempotent: joining again with the same address changes nothing.
pub async fn join(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let flags = flags_or_400!(raw);
    let req: JoinBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid join request: {e}"),
            );
        }
    };
    let Some(rid) = crate::raft_id_from_name(&req.id) else {
        return text_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "invalid node id {:?}: want a positive integer or a name ending in -<ordinal>",
                req.id
            ),
        );
    };
    if !node.is_leader() {
        return incoming.to_leader(&node, &flags, body).await;
    }
    let _one_change = node.membership_lock.lock().await;
    let info = MemberInfo {
        name: req.id.clone(),
        raft_addr: req.raft_addr,
        api_addr: req.api_addr,
    };
    let existing = {
        let m = node.raft.metrics();
        let m = m.borrow();
        let ms = m.membership_config.membership();
        ms.get_node(&rid)
            .cloned()
            .map(|i| (i, ms.voter_ids().any(|v| v == rid)))
    };
    match existing {
        Some((old, _)) if old.name != info.name => {
            return text_error(
                StatusCode::CONFLICT,
                &format!("raft id {rid} already belongs to member {}", old.name),
            );
        }
        Some((old, is_voter)) if old == info && is_voter == req.voter => {
            return axum::Json(json!({"id": info.name, "raft_id": rid, "voter": is_voter}))
                .into_response();
        }
        Some((old, is_voter)) if old != info => {
            // Same member at a new address (e.g. a rescheduled pod): re-register it.
            if is_voter
                && let Err(e) = node
                    .raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([rid])), true)
                    .await
            {
                return membership_error(e);
            }
            if let Err(e) = node
                .raft
                .change_membership(ChangeMembers::SetNodes([(rid, info.clone())].into()), true)
                .await
            {
                return membership_error(e);
            }
        }
        Some(_) => {}
        None => {
            if let Err(e) = node.raft.add_learner(rid, info.clone(), true).await {
                return membership_error(e);
            }
            tracing::info!(node = %info.name, raft_id = rid, "learner added and caught up");
        }
    }
    if req.voter {
        let is_voter = node.is_voter(rid);
        if !is_voter {
            if let Err(e) = node
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([rid])), true)
                .await
            {
                return membership_error(e);
            }
            tracing::info!(node = %info.name, raft_id = rid, "promoted to voter");
        }
    }
    axum::Json(json!({"id": info.name, "raft_id": rid, "voter": req.voter})).into_response()
}

/// `POST /snapshot[?type=full]`: take a snapshot now and answer with the snapshot health.
/// 204 when nothing was applied since the last snapshot (unless a full one is asked for).
pub async fn snapshot(State(node): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let flags = flags_or_400!(raw);
    let full = match flags.kind.as_deref() {
        None | Some("incremental") | Some("") => false,
        Some("full") => true,
        Some(other) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                &format!("unknown snapshot type {other:?}: use full or leave it out"),
            );
        }
    };
    let (applied, snap) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
    };
    let failing = node.snapshots.health().consecutive_failures > 0;
    if applied.is_none() || (!full && !failing && applied == snap) {
        return StatusCode::NO_CONTENT.into_response();
    }
    if full {
        node.snapshots
            .force_full
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let asked = Instant::now();
    if let Err(e) = node.raft.trigger().snapshot().await {
        return text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("snapshot trigger failed: {e}"),
        );
    }
    let deadline = asked + Duration::from_secs(600);
    loop {
        if node
            .snapshots
            .health()
            .last_attempt
            .is_some_and(|t| t >= asked)
        {
            let health = serde_json::to_value(&*node.snapshots.health()).unwrap_or_default();
            return json_response(to_json(&json!({ "snapshot": health }), flags.pretty));
        }
        if Instant::now() > deadline {
            return text_error(
                StatusCode::GATEWAY_TIMEOUT,
                "snapshot still running; watch store.snapshot in /status",
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn metrics(State(node): State<AppState>) -> Response {
    let raft = node.raft.metrics().borrow().clone();
    let mut text = node.metrics.render(&raft);
    node.snapshots.health().render(&mut text);
    if let Some(m) = &node.backup {
        text.push_str(&m.metrics_text());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
