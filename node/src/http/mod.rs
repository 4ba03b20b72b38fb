//! The rqlite-compatible HTTP API and our extensions (`/join`, `/metrics`, `/snapshot`).

mod backup;
mod backup_api;
mod cluster;
mod forward;
mod query;
mod render;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::auth::Perm;
use crate::node::Node;

pub type AppState = Arc<Node>;

/// What `X-RQLITE-VERSION` and the node objects of `/nodes` say this member runs.
pub const VERSION: &str = concat!("litecluster-", env!("CARGO_PKG_VERSION"));

/// Header set on requests a member forwards to the leader, so they are never forwarded twice.
pub const FORWARDED: &str = "x-litecluster-forwarded";

pub fn router(node: AppState) -> Router {
    let limit = node.config.max_body_bytes;
    Router::new()
        .route("/db/execute", post(query::execute))
        .route("/db/query", get(query::query).post(query::query))
        .route("/db/request", post(query::request))
        .route("/db/backup", get(backup::backup))
        // Spooled to disk with its own limit (--max-load-bytes), not buffered.
        .route(
            "/db/load",
            post(backup::load).layer(DefaultBodyLimit::disable()),
        )
        .route("/status", get(cluster::status))
        .route("/nodes", get(cluster::nodes))
        .route("/readyz", get(cluster::readyz))
        .route(
            "/leader",
            get(cluster::leader)
                .post(cluster::step_down)
                .delete(cluster::step_down),
        )
        .route("/remove", delete(cluster::remove))
        .route("/join", post(cluster::join))
        .route("/snapshot", post(cluster::snapshot))
        .route("/backup", post(backup_api::push))
        .route("/metrics", get(cluster::metrics))
        // rqlite answers 302 Found (axum's `Redirect::to` would be 303).
        .route(
            "/",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/status")]) }),
        )
        .layer(middleware::from_fn_with_state(node.clone(), authorize))
        .layer(middleware::from_fn_with_state(node.clone(), common_headers))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node)
}

fn permission(path: &str) -> Option<&'static [Perm]> {
    Some(match path {
        "/db/execute" => &[Perm::Execute],
        "/db/query" => &[Perm::Query],
        "/db/request" => &[Perm::Execute, Perm::Query],
        "/db/backup" => &[Perm::Backup],
        "/db/load" => &[Perm::Load],
        "/status" | "/nodes" | "/metrics" => &[Perm::Status],
        "/readyz" => &[Perm::Ready],
        "/leader" => &[Perm::LeaderOps],
        "/remove" => &[Perm::Remove],
        "/join" => &[Perm::Join],
        "/snapshot" => &[Perm::Snapshot],
        "/backup" => &[Perm::Backup],
        _ => return None,
    })
}

/// Authentication runs before routing, as in rqlite: 401 with an empty body.
async fn authorize(State(node): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(store) = &node.auth
        && let Some(perms) = permission(req.uri().path())
    {
        let authz = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let ok = perms.iter().all(|p| store.allowed(authz, *p))
            || (req.uri().path() == "/join" && store.allowed(authz, Perm::JoinReadOnly));
        if !ok {
            node.metrics
                .http_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    next.run(req).await
}

/// Headers on every response (the version, CORS), and CORS preflight: `OPTIONS` on any path
/// is answered at once, before authentication, as in rqlite.
async fn common_headers(State(node): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = if req.method() == axum::http::Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    if let Some(origin) = node
        .config
        .http_allow_origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, GET, POST, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization"),
    );
    if node.auth.is_some() {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if resp.status().is_client_error() || resp.status().is_server_error() {
        node.metrics
            .http_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    resp.headers_mut()
        .insert("x-rqlite-version", HeaderValue::from_static(VERSION));
    resp
}

/// 413 when `cmd` would be a log entry over `--max-entry-bytes`.
pub fn entry_too_large(node: &Node, cmd: &crate::command::Command) -> Option<Response> {
    too_large(node, cmd.encoded_len())
}

/// 413 when a log entry of `len` bytes would be over `--max-entry-bytes`.
pub fn too_large(node: &Node, len: usize) -> Option<Response> {
    let limit = node.config.max_entry_bytes;
    (len > limit).then(|| {
        text_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request too large: it would be a log entry of {len} bytes, over --max-entry-bytes ({limit}); split it into smaller requests"
            ),
        )
    })
}

/// A plain-text error in Go's `http.Error` style, which rqlite clients expect.
pub fn text_error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

pub fn json_response(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Serves the API on `listener` (TLS when configured) until `shutdown` resolves.
pub async fn serve(
    node: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let app = router(node.clone());
    let addr: std::net::SocketAddr = tokio::net::lookup_host(&node.config.http_addr)
        .await
        .with_context(|| format!("resolving --http-addr {}", node.config.http_addr))?
        .next()
        .with_context(|| format!("--http-addr {} resolves to nothing", node.config.http_addr))?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let service = app.into_make_service();
    match (&node.config.http_cert, &node.config.http_key) {
        (Some(cert), Some(key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            axum_server::bind_rustls(addr, tls)
                .handle(handle)
                .serve(service)
                .await
        }
        _ => axum_server::bind(addr).handle(handle).serve(service).await,
    }
    .with_context(|| format!("serving HTTP on {addr}"))
}

#[cfg(test)]
mod props {
    use crate::testing;

    #[test]
    fn request_parsers_never_panic_on_any_input() {
        testing::run("request_parsers", 3000, |g| {
            let raw = g.bytes(64);
            let text = String::from_utf8_lossy(&raw).into_owned();
            let _ = super::query::parse_body(&raw);
            // A JSON-shaped body: arrays of strings, numbers and parameter objects.
            let json =
                format!("[[{text:?}, 1, -2.5e308, {{\"a\": [1, 300]}}], {text:?}, [\"x\", null]]");
            let _ = super::query::parse_body(json.as_bytes());
            let _ = super::render::Flags::parse(Some(&text));
            let dur = format!(
                "db_timeout={}&freshness={}s&timeout=1{}",
                text,
                g.next(),
                text
            );
            let _ = super::render::Flags::parse(Some(&dur));
            let _ = crate::config::parse_duration(&text);
        });
    }

    #[test]
    fn sql_tokenizers_never_panic_and_leave_plain_sql_alone() {
        testing::run("sql_tokenizers", 3000, |g| {
            let raw = g.bytes(96);
            let sql = String::from_utf8_lossy(&raw).into_owned();
            let ranges = crate::sqlite::split::ranges(&sql);
            let mut end = 0;
            for r in &ranges {
                assert!(
                    r.start >= end && r.start < r.end && r.end <= sql.len(),
                    "{sql:?}: {ranges:?}"
                );
                assert!(sql.is_char_boundary(r.start) && sql.is_char_boundary(r.end));
                end = r.end;
            }
            let _ = crate::sqlite::rewrite::sql_time_to_rfc3339(&sql);
            let _ = crate::sqlite::rewrite::sql_time_to_rfc3339(&format!("2024-01-02 03:04{sql}"));
            let mut rng = rand::thread_rng();
            let out = crate::sqlite::rewrite::rewrite(&sql, 1.7e9, &mut rng);
            let lower = sql.to_ascii_lowercase();
            if !lower.contains("random") && !lower.contains("now") {
                assert_eq!(out, sql.as_str(), "rewritten without a reason");
            }
        });
    }
}
