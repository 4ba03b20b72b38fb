//! Mutual TLS for the Raft port (`--raft-cert`, `--raft-key`, `--raft-ca-cert`).
//!
//! Without it anyone who can reach the port can append to the log, so both sides prove
//! themselves: the server requires a client certificate signed by the CA, and a client checks
//! the server's certificate against the CA and the host of the member's Raft address.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A Raft connection's halves, plain TCP or TLS.
pub type ReadHalf = Box<dyn AsyncRead + Send + Sync + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Sync + Unpin>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { what: &'static str, path: String },
    #[error("invalid raft TLS setup: {0}")]
    Config(String),
}

/// Both ends of mutual TLS on the Raft port.
#[derive(Clone)]
pub struct RaftTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl RaftTls {
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let chain = certs(cert, "certificates")?;
        let mut roots = RootCertStore::empty();
        for c in certs(ca, "CA certificates")? {
            roots
                .add(c)
                .map_err(|e| TlsError::Config(format!("CA in {}: {e}", ca.display())))?;
        }
        let roots = Arc::new(roots);
        let key = || {
            PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
                what: "a private key",
                path: key.display().to_string(),
                source,
            })
        };
        let verifier = WebPkiClientVerifier::builder(roots.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key()?)
            .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    pub async fn accept(&self, s: TcpStream) -> std::io::Result<(ReadHalf, WriteHalf)> {
        let (r, w) = tokio::io::split(self.acceptor.accept(s).await?);
        Ok((Box::new(r), Box::new(w)))
    }

    /// `addr` is the member's Raft address; its host is the name the certificate must carry.
    pub async fn connect(
        &self,
        addr: &str,
        s: TcpStream,
    ) -> std::io::Result<(ReadHalf, WriteHalf)> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("raft address {addr}: {e}"),
            )
        })?;
        let (r, w) = tokio::io::split(self.connector.connect(name, s).await?);
        Ok((Box::new(r), Box::new(w)))
    }
}

/// Plain TCP halves, for a port without TLS.
pub fn plain(s: TcpStream) -> (ReadHalf, WriteHalf) {
    let (r, w) = s.into_split();
    (Box::new(r), Box::new(w))
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.display().to_string(),
        source,
    };
    let list = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if list.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(list)
}

/// `host:port` or `[v6]:port` → host.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("db-0.db.ns.svc:4002"), "db-0.db.ns.svc");
        assert_eq!(host_of("127.0.0.1:4002"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4002"), "::1");
    }
}
