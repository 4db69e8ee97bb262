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
use crate::data::socket::uring::UringTcp;

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
    /// What each pod is asked for in SNI (and its certificate must name).
    naming: Naming,
}

/// How a pod's TLS server name is made (`--backend-server-name`).
#[derive(Debug)]
enum Naming {
    /// The pod's own host: its DNS name, or its IP address (then matched against the
    /// certificate's IP addresses).
    Host,
    /// One name for every pod (a wildcard certificate's).
    Fixed(ServerName<'static>),
    /// `{ordinal}` replaced by the pod's ordinal: a StatefulSet pod's stable DNS name,
    /// `backend-{ordinal}.backend.default.svc`.
    Template(String),
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("naming", &self.naming)
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
        let bad = |n: &str| BackendTlsError::BadServerName(n.to_owned());
        let naming = match server_name {
            None => Naming::Host,
            Some(t) if t.contains("{ordinal}") => {
                ServerName::try_from(t.replace("{ordinal}", "0")).map_err(|_| bad(t))?;
                Naming::Template(t.to_owned())
            }
            Some(n) => Naming::Fixed(ServerName::try_from(n.to_owned()).map_err(|_| bad(n))?),
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            naming,
        })
    }

    /// The TLS handshake on `tcp` to the pod at `addr` (`HOST:PORT`), ordinal `ordinal`.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        addr: &str,
        ordinal: Option<u32>,
    ) -> io::Result<BackendIo> {
        let tls = self
            .connector
            .connect(self.name(addr, ordinal)?, tcp)
            .await?;
        Ok(BackendIo::Tls(Box::new(tls)))
    }

    /// The server name the pod at `addr`, ordinal `ordinal`, is asked for.
    fn name(&self, addr: &str, ordinal: Option<u32>) -> io::Result<ServerName<'static>> {
        match (&self.naming, ordinal) {
            (Naming::Fixed(n), _) => Ok(n.clone()),
            (Naming::Template(t), Some(i)) => {
                ServerName::try_from(t.replace("{ordinal}", &i.to_string()))
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad server name"))
            }
            (Naming::Host | Naming::Template(_), _) => host_name(addr),
        }
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
    /// Plain TCP moved onto its I/O thread's ring (`--io-uring`).
    Uring(UringTcp),
}

impl BackendIo {
    /// A plain socket moved onto this thread's ring (see `uring::here`); a TLS one
    /// stays as it is.
    pub(crate) fn onto_uring(self) -> io::Result<Self> {
        match self {
            Self::Plain(t) => UringTcp::adopt(t).map(Self::Uring),
            other => Ok(other),
        }
    }
}

impl Peer for BackendIo {
    fn reset(&mut self) {
        match self {
            Self::Plain(t) => t.reset(),
            Self::Tls(t) => t.get_mut().0.reset(),
            Self::Uring(t) => t.reset(),
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
            Self::Uring(t) => Pin::new(t).poll_read(cx, buf),
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
            Self::Uring(t) => Pin::new(t).poll_write(cx, buf),
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
            Self::Uring(t) => Pin::new(t).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(t) => t.is_write_vectored(),
            Self::Tls(t) => t.is_write_vectored(),
            Self::Uring(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_flush(cx),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Self::Uring(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Self::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Self::Uring(t) => Pin::new(t).poll_shutdown(cx),
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
    fn a_template_names_each_pod_by_its_ordinal() {
        let pods = crate::data::tls::config::DevCert::generate(&["localhost"])
            .unwrap_or_else(|e| panic!("{e}"));
        let ca = pods.ca_pem.as_bytes();
        let named = |n: Option<&str>| {
            BackendTls::from_pem(ca, "ca.crt", None, n).unwrap_or_else(|e| panic!("{e}"))
        };
        let dns = |s: &str| ServerName::try_from(s.to_owned()).unwrap_or_else(|e| panic!("{e}"));
        let t = named(Some("backend-{ordinal}.backend.default.svc"));
        assert_eq!(
            t.name("10.0.0.7:9000", Some(3)).ok(),
            Some(dns("backend-3.backend.default.svc"))
        );
        let f = named(Some("pods.example"));
        assert_eq!(
            f.name("10.0.0.7:9000", Some(3)).ok(),
            Some(dns("pods.example"))
        );
        let h = named(None);
        assert_eq!(
            h.name("backend-1.backend:9000", Some(1)).ok(),
            Some(dns("backend-1.backend"))
        );
        assert!(matches!(
            BackendTls::from_pem(ca, "ca.crt", None, Some("bad name {ordinal}")),
            Err(BackendTlsError::BadServerName(_))
        ));
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
