//! `POST /backup`: push a backup now (on the leader; followers forward unless `?noleader`).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::forward::Incoming;
use super::render::{Flags, to_json};
use super::{AppState, json_response, text_error};

pub async fn push(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let flags = match Flags::parse(raw.as_deref()) {
        Ok(f) => f,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(manager) = node.backup.clone() else {
        return text_error(
            StatusCode::BAD_REQUEST,
            "backups are not configured on this node: start it with --backup-config <file>",
        );
    };
    if !flags.noleader && !node.is_leader() {
        return incoming.to_leader(&node, &flags, body).await;
    }
    match manager.push_db(&node.db_path, &node.info.name).await {
        Ok(report) => json_response(to_json(&report, flags.pretty)),
        Err(e) => {
            let status = if e.retryable() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            text_error(
                status,
                &format!("backup failed: {}", crate::backup::chain(&e)),
            )
        }
    }
}
