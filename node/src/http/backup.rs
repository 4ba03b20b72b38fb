//! `/db/backup` (a consistent SQLite file of the database) and `/db/load` (replace it).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use openraft::error::{ClientWriteError, RaftError};

use super::forward::Incoming;
use super::render::{self, Flags};
use super::{AppState, json_response, text_error};
use crate::command::{Command, Mode, Statement};

const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// Copies the database with SQLite's online backup API from a read-only connection, then drops
/// our bookkeeping table from the copy so the file is a plain user database.
fn backup_file(db: &std::path::Path, dest: &std::path::Path) -> crate::Result<Vec<u8>> {
    let src = crate::sqlite::open_reader(db)?;
    src.backup(
        rusqlite::MAIN_DB,
        dest,
        None::<fn(rusqlite::backup::Progress)>,
    )?;
    drop(src);
    let copy = rusqlite::Connection::open(dest)?;
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    copy.execute_batch(&format!(
        "DROP TABLE IF EXISTS {}",
        crate::sqlite::META_TABLE
    ))?;
    drop(copy);
    std::fs::read(dest).map_err(|e| crate::Error::io("reading backup copy", e))
}

/// The SQL dump, from one read transaction so it is consistent.
fn dump_sql(db: &std::path::Path) -> crate::Result<String> {
    let conn = crate::sqlite::open_reader(db)?;
    let tx = conn.unchecked_transaction()?;
    let mut out = String::new();
    crate::sqlite::dump::dump(&tx, &mut out)?;
    Ok(out)
}

pub async fn backup(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
) -> Response {
    let flags = match Flags::parse(raw.as_deref()) {
        Ok(f) => f,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, &e),
    };
    let fmt = raw.as_deref().and_then(|r| {
        form_urlencoded::parse(r.as_bytes())
            .find(|(k, _)| k == "fmt")
            .map(|(_, v)| v.into_owned())
    });
    let sql = match fmt.as_deref() {
        None | Some("") | Some("binary") => false,
        Some("sql") => true,
        Some(other) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                &format!("backup format {other:?} is not supported: use binary (default) or sql"),
            );
        }
    };
    if !flags.noleader && !node.is_leader() {
        return incoming.to_leader(&node, &flags, Bytes::new()).await;
    }
    if sql {
        let db = node.db_path.clone();
        return match tokio::task::spawn_blocking(move || dump_sql(&db)).await {
            Ok(Ok(text)) => {
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
            }
            Ok(Err(crate::Error::BadRequest(msg))) => text_error(StatusCode::BAD_REQUEST, &msg),
            Ok(Err(e)) => text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("SQL dump failed: {e}"),
            ),
            Err(e) => text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("SQL dump task failed: {e}"),
            ),
        };
    }
    let db = node.db_path.clone();
    let dest = node.config.data_dir.join(format!(
        "backup-{}.tmp",
        std::process::id() as u64 ^ rand::random::<u32>() as u64
    ));
    let d = dest.clone();
    let res = tokio::task::spawn_blocking(move || backup_file(&db, &d)).await;
    let _ = std::fs::remove_file(&dest);
    match res {
        Ok(Ok(bytes)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(Err(e)) => text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("backup failed: {e}"),
        ),
        Err(e) => text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("backup task failed: {e}"),
        ),
    }
}

/// Accepts a SQLite file (replaces the database) or SQL text (executed as one batch), as rqlite.
pub async fn load(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let flags = match Flags::parse(raw.as_deref()) {
        Ok(f) => f,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, &e),
    };
    if body.is_empty() {
        return text_error(
            StatusCode::BAD_REQUEST,
            "empty load body: send a SQLite database file or SQL text",
        );
    }
    if !node.is_leader() {
        return incoming.to_leader(&node, &flags, body).await;
    }
    let cmd = if body.starts_with(SQLITE_HEADER) {
        Command::Load {
            image: body.to_vec(),
        }
    } else {
        let Ok(text) = std::str::from_utf8(&body) else {
            return text_error(
                StatusCode::BAD_REQUEST,
                "load body is neither a SQLite database nor UTF-8 SQL text",
            );
        };
        // A dump's own transaction lines are dropped: the load already runs atomically.
        let sql: String = text
            .lines()
            .filter(|l| {
                !matches!(
                    l.trim().to_ascii_uppercase().as_str(),
                    "BEGIN TRANSACTION;" | "BEGIN;" | "COMMIT;" | "END;"
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        Command::Statements {
            stmts: vec![Statement::new(sql)],
            transaction: true,
            mode: Mode::Execute,
        }
    };
    match node.write(cmd).await {
        Ok(resp) => {
            if let Some(e) = &resp.data.error {
                return text_error(StatusCode::BAD_REQUEST, e);
            }
            let body = render::to_json(
                &render::Response {
                    results: &resp.data.results,
                    error: None,
                    time: None,
                    timings: false,
                    associative: false,
                },
                flags.pretty,
            );
            json_response(body)
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            incoming.forward(&node, f.leader_node, &flags, body).await
        }
        Err(e) => text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("load not committed: {e}; retry"),
        ),
    }
}
