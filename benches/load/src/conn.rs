//! Opening connections: TCP from a chosen loopback source address, TLS that accepts the
//! self-signed certificates benchmarks use, and the WebSocket handshake: an HTTP/1.1
//! upgrade per connection, or (RFC 8441) an extended CONNECT stream on a shared HTTP/2
//! connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{next_echo, ConnResult, LoadConfig, LoadError};

/// Where to connect: `ws://` or `wss://` HOST:PORT and the path prefix.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Host header and TLS server name.
    pub host: String,
    pub prefix: String,
    /// Begin every connection with a PROXY protocol v2 header naming the connection's
    /// own addresses, as a load balancer with `send-proxy-v2` would.
    pub proxy_v2: bool,
    /// Appended to every socket's path after `?` (`access_token=…` for a router that
    /// checks tokens).
    pub query: Option<String>,
}

impl Target {
    /// `ws://127.0.0.1:8443/ws/` or `wss://…`. The host must be an IP literal (no DNS:
    /// this tool only loads loopback).
    pub fn parse(url: &str, server_name: &str) -> Result<Self, LoadError> {
        let bad = |why| LoadError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad("must start with ws:// or wss://"));
        };
        let (authority, path) = rest.split_once('/').map_or((rest, "/"), |(a, p)| (a, p));
        let addr: SocketAddr = authority.parse().map_err(|_| bad("host must be IP:PORT"))?;
        let mut prefix = format!("/{path}");
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            addr,
            tls,
            host: server_name.to_owned(),
            prefix,
            proxy_v2: false,
            query: None,
        })
    }

    /// The path of `namespace`'s socket, with the query if one is set.
    pub(crate) fn path(&self, namespace: &str) -> String {
        match &self.query {
            Some(q) => format!("{}{namespace}?{q}", self.prefix),
            None => format!("{}{namespace}", self.prefix),
        }
    }

    pub(crate) fn check_loopback(&self) -> Result<(), LoadError> {
        if self.addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(LoadError::NotLoopback(self.addr))
        }
    }

    /// `alpn`: what the client offers (`http/1.1`, or `h2` for HTTP/2 connections).
    pub(crate) fn tls_connector(&self, alpn: &[u8]) -> Option<TlsConnector> {
        self.tls
            .then(|| TlsConnector::from(self.client_config(alpn)))
    }

    /// A connector with a TLS session cache of its own, as one real client has: its
    /// tickets are its own, whichever connection of the run got them.
    pub(crate) fn own_session_connector(&self, alpn: &[u8]) -> Option<TlsConnector> {
        self.tls.then(|| {
            let mut config = (*self.client_config(alpn)).clone();
            config.resumption = rustls::client::Resumption::in_memory_sessions(2);
            TlsConnector::from(Arc::new(config))
        })
    }

    /// The TLS client config every connection uses.
    pub(crate) fn client_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        {
            // Key exchange pinned to X25519, so every target under comparison does the same
            // handshake work (rustls would otherwise offer a post-quantum hybrid first, which
            // a rustls server would pick and OpenSSL 3.0 cannot).
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
            let provider = Arc::new(provider);
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default versions"))
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        }
    }
}

/// Accepts any certificate (benchmarks use self-signed ones) but still checks that the
/// server signed the handshake with the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client WebSocket, plain or over TLS, or a stream of an HTTP/2 connection.
pub(crate) enum Ws {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<TlsStream<TcpStream>>>),
    H2(Box<WebSocketStream<TokioIo<Upgraded>>>),
}

/// One HTTP/2 connection's handle for opening streams (cheap to clone).
pub(crate) type H2 = SendRequest<Empty<Bytes>>;

/// A TLS connection that negotiated `h2`, through the HTTP/2 handshake. The connection
/// is driven by a task of its own until every handle and stream is gone.
pub(crate) async fn open_h2(
    target: &Target,
    tls: &TlsConnector,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<H2, String> {
    let work = async {
        let tls = connect_tls(target, tls, open_tcp(target, source).await?).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("the server did not choose h2 (ALPN)".to_owned());
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(send)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "connect timed out".to_owned())?
}

/// A WebSocket as an extended CONNECT stream (`:protocol websocket`) on `h2`.
pub(crate) async fn open_stream(
    target: &Target,
    h2: &mut H2,
    namespace: &str,
    with_key: bool,
    timeout: Duration,
) -> Result<Ws, String> {
    let work = async {
        h2.ready().await.map_err(|e| format!("http2: {e}"))?;
        let mut req = http::Request::builder();
        if with_key {
            req = req.header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        let mut req = req
            .method(http::Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(format!(
                "https://{}:{}{}",
                target.host,
                target.addr.port(),
                target.path(namespace)
            ))
            .header("sec-websocket-version", "13")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let resp = h2
            .send_request(req)
            .await
            .map_err(|e| format!("extended CONNECT: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("extended CONNECT answered {}", resp.status()));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| format!("stream: {e}"))?;
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Client,
            Some(ws_config()),
        )
        .await;
        Ok(Ws::H2(Box::new(ws)))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "stream open timed out".to_owned())?
}

/// tungstenite's defaults, but a 16 KiB read buffer: it zero-fills the buffer's spare
/// room before every read, and at the default 128 KiB that memset was 30% of the load
/// tool's CPU, taken from the proxies it shares the machine with.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// A TCP connection to `addr`, from `source` if given.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// A TCP connection to the target with Nagle off, as every benchmark connection is.
async fn open_tcp(target: &Target, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let mut tcp = connect_tcp(target.addr, source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if target.proxy_v2 {
        let from = tcp
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?;
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &proxy_v2_header(from, target.addr))
            .await
            .map_err(|e| format!("PROXY header: {e}"))?;
    }
    Ok(tcp)
}

/// A PROXY protocol v2 header for a TCP connection from `from` to `to` (both IPv4, or
/// both IPv6).
pub(crate) fn proxy_v2_header(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match (from, to) {
        (SocketAddr::V4(f), SocketAddr::V4(t)) => {
            h.extend([0x11, 0, 12]);
            h.extend(f.ip().octets());
            h.extend(t.ip().octets());
        }
        (f, t) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            h.extend([0x21, 0, 36]);
            h.extend(v6(f).octets());
            h.extend(v6(t).octets());
        }
    }
    h.extend(from.port().to_be_bytes());
    h.extend(to.port().to_be_bytes());
    h
}

/// TLS over `tcp`, naming the target's host.
async fn connect_tls(
    target: &Target,
    tls: &TlsConnector,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(target.host.clone()).map_err(|e| e.to_string())?;
    tls.connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}

pub(crate) async fn open(
    target: &Target,
    tls: Option<&TlsConnector>,
    source: Option<IpAddr>,
    namespace: &str,
    timeout: Duration,
) -> Result<Ws, String> {
    let work = async {
        let tcp = open_tcp(target, source).await?;
        let url = format!(
            "{}://{}:{}{}",
            if target.tls { "wss" } else { "ws" },
            target.host,
            target.addr.port(),
            target.path(namespace)
        );
        match tls {
            Some(c) => {
                let s = connect_tls(target, c, tcp).await?;
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url, s, Some(ws_config()))
                        .await
                        .map_err(upgrade_error)?;
                Ok(Ws::Tls(Box::new(ws)))
            }
            None => {
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
                        .await
                        .map_err(upgrade_error)?;
                Ok(Ws::Plain(Box::new(ws)))
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "connect timed out".to_owned())?
}

/// An upgrade that failed, said as text; a refusal's `Retry-After` (seconds) is kept as
/// `retry-after=N`, which [`retry_after`] reads back.
fn upgrade_error(e: tokio_tungstenite::tungstenite::Error) -> String {
    let retry = match &e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|v| format!(" retry-after={v}")),
        _ => None,
    };
    format!("upgrade: {e}{}", retry.unwrap_or_default())
}

/// The `Retry-After` an open's error carries, if the router sent one.
pub(crate) fn retry_after(error: &str) -> Option<Duration> {
    let secs = error.split("retry-after=").nth(1)?;
    let secs: u64 = secs.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs(secs))
}

impl Ws {
    /// Sends `p` and waits for the same bytes back.
    pub(crate) async fn send_and_check(
        &mut self,
        p: &[u8],
        timeout: Duration,
    ) -> Result<(), String> {
        let echo = match self {
            Ws::Plain(ws) => {
                ws.send(Message::binary(p.to_vec()))
                    .await
                    .map_err(|e| e.to_string())?;
                next_echo(ws, timeout).await?
            }
            Ws::Tls(ws) => {
                ws.send(Message::binary(p.to_vec()))
                    .await
                    .map_err(|e| e.to_string())?;
                next_echo(ws.as_mut(), timeout).await?
            }
            Ws::H2(ws) => {
                ws.send(Message::binary(p.to_vec()))
                    .await
                    .map_err(|e| e.to_string())?;
                next_echo(ws.as_mut(), timeout).await?
            }
        };
        if echo == p {
            Ok(())
        } else {
            Err("echo differs".to_owned())
        }
    }

    pub(crate) async fn ping_pong(
        self,
        id: usize,
        cfg: &LoadConfig,
        rate: Option<f64>,
        until: Instant,
    ) -> ConnResult {
        match self {
            Ws::Plain(ws) => crate::ping_pong(*ws, id, cfg, rate, until).await,
            Ws::Tls(ws) => crate::ping_pong(*ws, id, cfg, rate, until).await,
            Ws::H2(ws) => crate::ping_pong(*ws, id, cfg, rate, until).await,
        }
    }

    pub(crate) async fn throughput(
        self,
        id: usize,
        cfg: &LoadConfig,
        window: usize,
        until: Instant,
    ) -> ConnResult {
        match self {
            Ws::Plain(ws) => crate::throughput(*ws, id, cfg, window, until).await,
            Ws::Tls(ws) => crate::throughput(*ws, id, cfg, window, until).await,
            Ws::H2(ws) => crate::throughput(*ws, id, cfg, window, until).await,
        }
    }
}
