//! Sending a request on to the leader, or redirecting the client there (`?redirect`).

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::render::Flags;
use super::{FORWARDED, text_error};
use crate::MemberInfo;
use crate::node::Node;

pub struct Original<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Relays the request to `leader`, or answers 301 when the client asked for `redirect`.
pub async fn to_leader(
    node: &Node,
    leader: Option<MemberInfo>,
    flags: &Flags,
    req: Original<'_>,
) -> Response {
    let Some(leader) = leader.filter(|l| l.name != node.info.name) else {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "leader not found");
    };
    if req.headers.contains_key(FORWARDED) {
        // We were the leader when the sender looked; leadership moved. Let the client retry.
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "leader not found");
    }
    let path = req
        .uri
        .path_and_query()
        .map_or(req.uri.path(), |p| p.as_str());
    let target = format!("{}{}", leader.api_addr.trim_end_matches('/'), path);
    if flags.redirect {
        return (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, target)]).into_response();
    }
    // A leader silent for several heartbeats is most likely gone: say so at once rather than
    // hold the client until a new one is elected. Nothing was sent, so this is a clean refusal.
    let silent = node.config.heartbeat_interval * 5;
    if let Some(d) = node.since_leader_contact().filter(|d| *d > silent) {
        return text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "leader not found: {} has been silent for {:.1}s; retry",
                leader.name,
                d.as_secs_f64()
            ),
        );
    }
    node.metrics
        .forwarded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut fwd = node
        .client
        .request(req.method.clone(), &target)
        .timeout(flags.timeout.unwrap_or(std::time::Duration::from_secs(30)))
        .header(FORWARDED, "1")
        .body(req.body);
    for h in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = req.headers.get(&h) {
            fwd = fwd.header(h, v);
        }
    }
    // If another member becomes leader meanwhile, the old one may never answer: give the client
    // its answer now (outcome unknown) so it can retry on the new leader.
    let mut metrics = node.raft.metrics();
    let moved = metrics.wait_for(|m| {
        m.current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned())
            .is_some_and(|n| n.name != leader.name)
    });
    let sent = tokio::select! {
        r = fwd.send() => r,
        _ = moved => {
            return text_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "leadership moved from {} while it held this request; whether it was applied is unknown: retry, or check",
                    leader.name
                ),
            );
        }
    };
    match sent {
        Ok(resp) => {
            let status = resp.status();
            let ctype = resp.headers().get(header::CONTENT_TYPE).cloned();
            match resp.bytes().await {
                Ok(body) => {
                    let mut out = (status, body).into_response();
                    if let Some(c) = ctype {
                        out.headers_mut().insert(header::CONTENT_TYPE, c);
                    }
                    if let Ok(v) = HeaderValue::from_str(&leader.api_addr) {
                        out.headers_mut().insert("x-rqlite-served-by", v);
                    }
                    out
                }
                Err(e) => text_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("reading reply from leader {}: {e}", leader.api_addr),
                ),
            }
        }
        Err(e) => text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "leader {} unreachable: {e}; retry, the cluster may be electing a new leader",
                leader.api_addr
            ),
        ),
    }
}

/// What a handler needs to pass a request on to the leader: method, URI and headers.
pub struct Incoming {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Incoming {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
}

impl Incoming {
    /// Relays to `leader` (or redirects, with `?redirect`). With no leader known, as during an
    /// election, waits a few election timeouts for one rather than failing the write at once.
    pub async fn forward(
        &self,
        node: &Node,
        leader: Option<MemberInfo>,
        flags: &Flags,
        body: Bytes,
    ) -> Response {
        let leader = match leader {
            Some(l) => Some(l),
            None => node
                .wait_for_leader(node.config.election_timeout * 3)
                .await
                .map(|(_, info)| info),
        };
        to_leader(
            node,
            leader,
            flags,
            Original {
                method: &self.method,
                uri: &self.uri,
                headers: &self.headers,
                body,
            },
        )
        .await
    }

    /// Relays to the leader this member currently knows.
    pub async fn to_leader(&self, node: &Node, flags: &Flags, body: Bytes) -> Response {
        self.forward(node, node.leader().map(|(_, i)| i), flags, body)
            .await
    }
}
