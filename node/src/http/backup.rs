//! `/db/backup` (a consistent SQLite file of the database) and `/db/load` (replace it).

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use openraft::error::{ClientWriteError, RaftError};

use super::forward::Incoming;
use super::render::{self, Flags};
use super::{AppState, text_error};
use crate::command::{Command, Mode, Statement};

const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// Copies the database with SQLite's online backup API from a read-only connection, then empties
/// our bookkeeping table in the copy so the file holds only the user's data.
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
    crate::sqlite::clear_meta(&copy)?;
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

/// `?compress`: gzip at the fastest level. As in rqlite the body itself is gzip, with no
/// `Content-Encoding` (clients gunzip it, and HTTP stacks must not undo it on the way).
fn compressed(body: Vec<u8>, compress: bool) -> Vec<u8> {
    use std::io::Write;
    if !compress {
        return body;
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(&body);
    gz.finish().unwrap_or_default()
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
            Ok(Ok(text)) => (
                [(header::CONTENT_TYPE, "application/sql")],
                compressed(text.into_bytes(), flags.compress),
            )
                .into_response(),
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
        Ok(Ok(bytes)) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            compressed(bytes, flags.compress),
        )
            .into_response(),
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

/// A spooled upload, removed when the request ends.
struct Spool(std::path::PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum SpoolError {
    TooLarge,
    Body(axum::Error),
    Io(std::io::Error),
}

/// Writes the body to `path`, refusing more than `limit` bytes. Returns its size and whether it
/// starts like a SQLite file.
async fn spool(body: Body, path: &std::path::Path, limit: u64) -> Result<(u64, bool), SpoolError> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::io::BufWriter::new(
        tokio::fs::File::create(path)
            .await
            .map_err(SpoolError::Io)?,
    );
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(SpoolError::Body)?;
        let want = SQLITE_HEADER.len() - head.len();
        head.extend_from_slice(&chunk[..want.min(chunk.len())]);
        n += chunk.len() as u64;
        if n > limit {
            return Err(SpoolError::TooLarge);
        }
        file.write_all(&chunk).await.map_err(SpoolError::Io)?;
    }
    file.flush().await.map_err(SpoolError::Io)?;
    Ok((n, head == SQLITE_HEADER))
}

/// Accepts a SQLite file (replaces the database) or SQL text (executed as one batch), as rqlite.
/// The body is spooled to the data dir; a database image is replicated in pieces.
pub async fn load(
    State(node): State<AppState>,
    RawQuery(raw): RawQuery,
    incoming: Incoming,
    body: Body,
) -> Response {
    let flags = match Flags::parse(raw.as_deref()) {
        Ok(f) => f,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, &e),
    };
    let file = Spool(
        node.config
            .data_dir
            .join(format!("upload-{:016x}.tmp", rand::random::<u64>())),
    );
    let limit = node.config.max_load_bytes;
    let (size, is_image) = match spool(body, &file.0, limit).await {
        Ok(r) => r,
        Err(SpoolError::TooLarge) => {
            return text_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("load body exceeds --max-load-bytes ({limit} bytes)"),
            );
        }
        Err(SpoolError::Body(e)) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                &format!("reading the load body: {e}"),
            );
        }
        Err(SpoolError::Io(e)) => {
            return text_error(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!("spooling the load body to the data dir: {e}; free some space and retry"),
            );
        }
    };
    if size == 0 {
        return text_error(
            StatusCode::BAD_REQUEST,
            "empty load body: send a SQLite database file or SQL text",
        );
    }
    let small = size <= node.config.max_body_bytes as u64;
    if !node.is_leader() {
        if !small {
            let leader = node.leader().map_or("unknown".into(), |(_, i)| i.api_addr);
            return text_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "a load over --max-body-bytes ({} bytes) is not forwarded: send it to the leader ({leader})",
                    node.config.max_body_bytes
                ),
            );
        }
        return match tokio::fs::read(&file.0).await {
            Ok(body) => incoming.to_leader(&node, &flags, body.into()).await,
            Err(e) => text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading the spooled load: {e}"),
            ),
        };
    }
    if is_image {
        let mut f = match tokio::fs::File::open(&file.0).await {
            Ok(f) => tokio::io::BufReader::new(f),
            Err(e) => {
                return text_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("reading the spooled load: {e}"),
                );
            }
        };
        return match crate::raft::loader::propose(&node.proposer, &mut f, size).await {
            Ok(resp) => load_reply(&resp.data, flags.pretty),
            Err(crate::raft::loader::ProposeError::Raft(e))
                if matches!(
                    *e,
                    RaftError::APIError(ClientWriteError::ForwardToLeader(_))
                ) =>
            {
                text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "leadership changed during the load: retry it",
                )
            }
            Err(e) => text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("load not committed: {e}; retry"),
            ),
        };
    }
    if !small {
        return text_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "SQL text over --max-body-bytes ({} bytes): split it, or load a SQLite file",
                node.config.max_body_bytes
            ),
        );
    }
    let text = match tokio::fs::read(&file.0).await.map(String::from_utf8) {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                "load body is neither a SQLite database nor UTF-8 SQL text",
            );
        }
        Err(e) => {
            return text_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading the spooled load: {e}"),
            );
        }
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
    let cmd = Command::Statements {
        stmts: vec![Statement::new(sql)],
        transaction: true,
        mode: Mode::Execute,
        at_ms: Some(crate::command::now_ms()),
    };
    if let Some(resp) = super::entry_too_large(&node, &cmd) {
        return resp;
    }
    match node.write(cmd).await {
        Ok(resp) => load_reply(&resp.data, flags.pretty),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            let body = text.into_bytes().into();
            incoming.forward(&node, f.leader_node, &flags, body).await
        }
        Err(e) => text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("load not committed: {e}; retry"),
        ),
    }
}

fn load_reply(data: &crate::command::CommandResponse, pretty: bool) -> Response {
    if let Some(e) = &data.error {
        return text_error(StatusCode::BAD_REQUEST, e);
    }
    let body = render::to_json(
        &render::Response {
            results: &data.results,
            error: None,
            time: None,
            timings: false,
            associative: false,
            blob_array: false,
            queries: false,
        },
        pretty,
    );
    // rqlite sets no type here, so Go sniffs text/plain; clients parse the JSON regardless.
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
