//! TLS to the pods (`--backend-tls`): the router verifies each pod's certificate against
//! `--backend-ca`, names the pod in SNI, and shows a client certificate of its own when
//! the pods ask for one (mTLS). Both ways to a pod use it: a WebSocket's backend socket
//! and the keep-alive pool's connections.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::data::relay::peer::Peer;

#[derive(Debug, Error)]
pub enum BackendTlsError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("{0} holds no private key")]
    NoKey(String),
    #[error("{0}: not a usable CA certificate")]
    BadCa(String),
    #[error("--backend-server-name {0:?} is not a DNS name or an IP address")]
    BadServerName(String),
    #[error("building the TLS client config (the client certificate and key)")]
    ClientCert(#[source] rustls::Error),
}

/// How the router speaks TLS to the pods.
pub struct BackendTls {
    connector: TlsConnector,
    /// The name every pod is asked for (`--backend-server-name`); `None`: each pod's own
    /// host (its DNS name, or its IP address, then matched against the certificate's IP
    /// addresses).
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BackendTlsError> {
    std::fs::read(path).map_err(|source| BackendTlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl BackendTls {
    /// From PEM files: the CA bundle the pods' certificates chain to, and optionally the
    /// router's own certificate and key for pods that ask for one.
    pub fn load(
        ca: &Path,
        client: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<Self, BackendTlsError> {
        let client = match client {
            Some((cert, key)) => Some((read(cert)?, read(key)?, cert.display().to_string())),
            None => None,
        };
        Self::from_pem(
            &read(ca)?,
            &ca.display().to_string(),
            client
                .as_ref()
                .map(|(c, k, n)| (c.as_slice(), k.as_slice(), n.as_str())),
            server_name,
        )
    }

    /// From PEM bytes (`ca_name` and the client's name say which file, in errors).
    pub fn from_pem(
        ca: &[u8],
        ca_name: &str,
        client: Option<(&[u8], &[u8], &str)>,
        server_name: Option<&str>,
    ) -> Result<Self, BackendTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|_| BackendTlsError::BadCa(ca_name.to_owned()))?;
            roots
                .add(cert)
                .map_err(|_| BackendTlsError::BadCa(ca_name.to_owned()))?;
            found += 1;
        }
        if found == 0 {
            return Err(BackendTlsError::NoCertificate(ca_name.to_owned()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(BackendTlsError::ClientCert)?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key, name)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                    .filter_map(Result::ok)
                    .collect();
                if chain.is_empty() {
                    return Err(BackendTlsError::NoCertificate(name.to_owned()));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|_| BackendTlsError::NoKey(name.to_owned()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(BackendTlsError::ClientCert)?
            }
        };
        // The pods speak HTTP/1.1 (and its upgrade) to the router.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match server_name {
            Some(n) => Some(
                ServerName::try_from(n.to_owned())
                    .map_err(|_| BackendTlsError::BadServerName(n.to_owned()))?,
            ),
            None => None,
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The TLS handshake on `tcp` to the pod at `addr` (`HOST:PORT`).
    pub(crate) async fn connect(&self, tcp: TcpStream, addr: &str) -> io::Result<BackendIo> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_name(addr)?,
        };
        let tls = self.connector.connect(name, tcp).await?;
        Ok(BackendIo::Tls(Box::new(tls)))
    }
}

/// The host of `HOST:PORT` (an IPv6 address in brackets) as a TLS server name.
fn host_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} is not a TLS server name"),
        )
    })
}

/// A pod's socket: plain TCP, or TLS over it (`--backend-tls`).
pub(crate) enum BackendIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Peer for BackendIo {
    fn reset(&mut self) {
        match self {
            Self::Plain(t) => t.reset(),
            Self::Tls(t) => t.get_mut().0.reset(),
        }
    }
}

impl AsyncRead for BackendIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(t) => t.is_write_vectored(),
            Self::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_flush(cx),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_host_is_its_server_name() {
        assert!(matches!(
            host_name("10.0.0.7:9000"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            host_name("[::1]:9000"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            host_name("backend-2.backend.default.svc:9000"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(host_name("bad name:1").is_err());
    }

    #[test]
    fn a_ca_bundle_without_a_certificate_is_refused() {
        assert!(matches!(
            BackendTls::from_pem(b"", "ca.crt", None, None),
            Err(BackendTlsError::NoCertificate(_))
        ));
        assert!(matches!(
            BackendTls::from_pem(b"not pem", "ca.crt", None, None),
            Err(BackendTlsError::NoCertificate(_))
        ));
    }
}
