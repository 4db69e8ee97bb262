//! The echo backend: serves `{prefix}{namespace}` WebSocket connections that stream
//! `{"server":…,"counter":N,"ns":…}` once per interval and echo every text and binary
//! message verbatim, plus `/healthz`. Used by `wsrouter dev`, the tests and the
//! `echo-backend` binary, so what runs in a cluster is what the tests exercise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsrouter::{PathError, PathPrefix};

/// What an echo server says about itself and how often it streams.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// The `server` field of every counter message (the pod name in a cluster).
    pub server_name: String,
    /// Time between counter messages.
    pub interval: Duration,
    pub path_prefix: PathPrefix,
    /// Stream counters (the first at connect) besides echoing; off: a pure echo server,
    /// as conformance suites expect.
    pub counters: bool,
}

impl EchoConfig {
    pub fn new(server_name: impl Into<String>) -> Self {
        Self {
            server_name: server_name.into(),
            interval: Duration::from_secs(1),
            path_prefix: PathPrefix::default(),
            counters: true,
        }
    }

    /// Echo only: no counter messages.
    pub fn echo_only(mut self) -> Self {
        self.counters = false;
        self
    }

    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// The pod name from `POD_NAME` (downward API), falling back to the hostname.
pub fn default_server_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "echo-backend".to_owned())
}

/// A running echo server.
pub struct EchoHandle {
    addr: SocketAddr,
    graceful: CancellationToken,
    kill: CancellationToken,
    tasks: TaskTracker,
}

impl EchoHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, sends every live socket a close 1001, and waits for them to end.
    pub async fn shutdown(&self) {
        self.graceful.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Like a crashed process: stops accepting and drops every socket at once, without
    /// a close frame. Returns once every socket is gone.
    pub async fn kill(&self) {
        self.kill.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Serves on `listener` (in background tasks) until the returned handle shuts it down.
pub fn serve(listener: TcpListener, config: EchoConfig) -> std::io::Result<EchoHandle> {
    let addr = listener.local_addr()?;
    let graceful = CancellationToken::new();
    let kill = CancellationToken::new();
    let tasks = TaskTracker::new();
    let shared = Arc::new(Shared {
        config,
        graceful: graceful.clone(),
        kill: kill.clone(),
        tasks: tasks.clone(),
    });
    tasks.spawn(accept_loop(listener, shared));
    Ok(EchoHandle {
        addr,
        graceful,
        kill,
        tasks,
    })
}

struct Shared {
    config: EchoConfig,
    graceful: CancellationToken,
    kill: CancellationToken,
    tasks: TaskTracker,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = tokio::select! {
            _ = shared.graceful.cancelled() => return,
            _ = shared.kill.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or similar: back off (exponentially, logged
                    // once per step) instead of spinning.
                    if backoff < Duration::from_secs(1) {
                        tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        let _ = stream.set_nodelay(true);
        let conn_shared = shared.clone();
        shared.tasks.spawn(async move {
            let svc_shared = conn_shared.clone();
            let svc = service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(handle(req, shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = conn_shared.kill.cancelled() => {}
            }
        });
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn handle(mut req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        return plain(StatusCode::OK, "ok\n");
    }
    let ns = match shared.config.path_prefix.namespace(req.uri().path()) {
        Ok(ns) => ns.to_owned(),
        Err(PathError::NotUnderPrefix) => return plain(StatusCode::NOT_FOUND, "not found\n"),
        Err(PathError::Namespace(_)) => return plain(StatusCode::BAD_REQUEST, "bad namespace\n"),
        Err(PathError::Ambiguous(_)) => return plain(StatusCode::BAD_REQUEST, "bad path\n"),
        // Only for a tenant taken from a header or query, which this server does not do.
        Err(PathError::Missing(_) | PathError::Repeated(_)) => {
            return plain(StatusCode::BAD_REQUEST, "no tenant\n")
        }
    };
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, is_upgrade, version_ok) else {
        return plain(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n");
    };
    // Agree to the first subprotocol offered, so clients that insist on one can connect.
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());

    let on_upgrade = hyper::upgrade::on(&mut req);
    let conn_shared = shared.clone();
    shared.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => stream_and_echo(upgraded, ns, conn_shared).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

/// One counter message; fields serialize in this order.
#[derive(serde::Serialize)]
struct Tick<'a> {
    server: &'a str,
    counter: u64,
    ns: &'a str,
}

async fn stream_and_echo(upgraded: hyper::upgrade::Upgraded, ns: String, shared: Arc<Shared>) {
    // A 16 KiB read buffer, not tungstenite's 128 KiB: it zero-fills the spare room before
    // every read, which at 128 KiB costs more than the echo itself.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let mut ticker = tokio::time::interval(shared.config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = shared.config.counters;
    let mut counter: u64 = 0;
    loop {
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return,
            _ = shared.graceful.cancelled() => {
                return close_with(&mut ws, CloseCode::Away, "backend shutting down").await;
            }
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings and queues the close reply itself; keep polling
                // until the stream ends so that reply is flushed.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // Fail the connection with a close frame that says why (RFC 6455
                    // §7.1.7), not a bare FIN: a peer learns its mistake, and a proxy in
                    // front has no reason to report this backend as gone.
                    if let Some((code, reason)) = failure_close(&e) {
                        tracing::debug!(error = %e, "failing the WebSocket connection");
                        close_with(&mut ws, code, reason).await;
                    }
                    return;
                }
                None => return,
            },
            _ = ticker.tick(), if counters => {
                let tick = Tick { server: &shared.config.server_name, counter, ns: &ns };
                let Ok(line) = serde_json::to_string(&tick) else { return };
                counter += 1;
                if ws.send(Message::text(line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The close code for a read error that fails the connection, or None when the
/// connection is already gone (nothing could carry a close frame).
fn failure_close(e: &WsError) -> Option<(CloseCode, &'static str)> {
    match e {
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8 in a text message")),
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        _ => None,
    }
}

/// Send a close frame and wait (bounded) for the peer's reply, so the closing handshake
/// completes before the socket is dropped.
async fn close_with<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let close = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.close(Some(close)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}
