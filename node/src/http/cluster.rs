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
        "runtime": {"num_cpu": std::thread::available_parallelism().map_or(1, |n| n.get()), "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
    });
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
    let probes = members.into_iter().filter(|(id, _)| flags.nonvoters || voters.contains(id)).map(|(id, info)| {
        let client = node.client.clone();
        let voter = voters.contains(&id);
        async move {
            let started = Instant::now();
            let res = client.get(format!("{}/readyz?noleader", info.api_addr)).timeout(timeout).send().await;
            let took = started.elapsed().as_secs_f64();
            // Any HTTP answer (even 401) proves the member is up.
            let (reachable, error) = match res {
                Ok(_) => (true, None),
                Err(e) => (false, Some(e.to_string())),
            };
            let mut v = json!({
                "id": info.name, "api_addr": info.api_addr, "addr": info.raft_addr,
                "voter": voter, "reachable": reachable, "leader": leader == Some(id), "time": took,
            });
            if let Some(e) = error {
                v["error"] = json!(e);
            }
            v
        }
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
    plain(StatusCode::OK, "[+]node ok\n[+]leader ok\n[+]store ok")
}

pub async fn leader(State(node): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let pretty = Flags::parse(raw.as_deref())
        .map(|f| f.pretty)
        .unwrap_or(false);
    match node.leader() {
        Some((id, info)) => json_response(to_json(
            &json!({"leader": {"id": info.name, "raft_id": id, "api_addr": info.api_addr, "addr": info.raft_addr}}),
            pretty,
        )),
        None => text_error(StatusCode::SERVICE_UNAVAILABLE, "leader not found"),
    }
}

/// `POST /leader`: the leader hands leadership to the most caught-up voter.
pub async fn step_down(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let flags = flags_or_400!(raw);
    if !node.is_leader() {
        return incoming.to_leader(&node, &flags, body).await;
    }
    match node
        .transfer_leadership(flags.timeout.unwrap_or(Duration::from_secs(10)))
        .await
    {
        Ok(new_leader) => json_response(to_json(
            &json!({"new_leader_raft_id": new_leader}),
            flags.pretty,
        )),
        Err(e) => text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("leadership transfer failed: {e:#}"),
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
        return text_error(StatusCode::NOT_FOUND, &format!("node {id} is not a member"));
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
        let is_voter = node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == rid);
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
