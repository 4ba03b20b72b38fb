//! Readiness and liveness probes: httpGet (HTTP or HTTPS) and tcpSocket.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(super) fn probe_port(port: &IntOrString, c: &Container) -> Option<i32> {
    match port {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok()),
    }
}

pub(super) async fn run_probe(p: &Probe, ip: &str, c: &Container) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(h) = &p.http_get {
            let port = probe_port(&h.port, c)?;
            if h.scheme.as_deref() == Some("HTTPS") {
                return https_probe(ip, port, h.path.as_deref().unwrap_or("/")).await;
            }
            let mut s = tokio::net::TcpStream::connect((ip, port as u16))
                .await
                .ok()?;
            let path = h.path.as_deref().unwrap_or("/");
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut buf = vec![0u8; 64];
            let n = s.read(&mut buf).await.ok()?;
            let head = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
            Some((200..400).contains(&code))
        } else if let Some(t) = &p.tcp_socket {
            let port = probe_port(&t.port, c)?;
            Some(
                tokio::net::TcpStream::connect((ip, port as u16))
                    .await
                    .is_ok(),
            )
        } else {
            // exec/grpc probes are not supported: treat as passing.
            Some(true)
        }
    };
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(true)))
}

/// An HTTPS probe as the kubelet makes it: TLS without checking the certificate (a probe tests
/// liveness, not identity), any status in 200..400 passes.
pub(super) async fn https_probe(ip: &str, port: i32, path: &str) -> Option<bool> {
    static CLIENT: std::sync::OnceLock<Option<reqwest::Client>> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .user_agent("kube-probe/1.33")
            .build()
            .ok()
    });
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let resp = client
        .as_ref()?
        .get(format!("https://{host}:{port}{path}"))
        .send()
        .await
        .ok()?;
    Some((200..400).contains(&resp.status().as_u16()))
}
