//! The listener: accepts connections, serves HTTP/1.1 on each (with upgrades), and stops
//! gracefully (WebSockets say 1001, keep-alive connections finish their request) or at
//! once, like a crashed process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EchoConfig;
use crate::signalr::Registry;
use crate::stats::Stats;

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

    /// Stops accepting, sends every live socket a close 1001, ends streams and idle
    /// keep-alive connections, and waits for them to end.
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
        hub: Registry::new(config.hub.clone()),
        config,
        stats: Stats::default(),
        graceful: graceful.clone(),
        kill: kill.clone(),
        tasks: tasks.clone(),
    });
    tasks.spawn(crate::signalr::reap(shared.clone()));
    tasks.spawn(accept_loop(listener, shared));
    Ok(EchoHandle {
        addr,
        graceful,
        kill,
        tasks,
    })
}

/// What every request handler shares.
pub(crate) struct Shared {
    pub(crate) config: EchoConfig,
    pub(crate) stats: Stats,
    pub(crate) hub: Registry,
    pub(crate) graceful: CancellationToken,
    pub(crate) kill: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Shared {
    /// Resolves once the server stops, either way.
    pub(crate) async fn stopping(&self) {
        tokio::select! {
            _ = self.graceful.cancelled() => {}
            _ = self.kill.cancelled() => {}
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = tokio::select! {
            _ = shared.stopping() => return,
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
        match shared.config.tls.clone() {
            None => shared.tasks.spawn(serve_connection(stream, shared.clone())),
            Some(tls) => shared.tasks.spawn(serve_tls(stream, tls, shared.clone())),
        };
    }
}

/// The TLS handshake (bounded), then the connection as any other.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
) {
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    match tokio::time::timeout(Duration::from_secs(10), accept).await {
        Ok(Ok(tls)) => serve_connection(tls, shared).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(crate::route::handle(req, shared).await) }
    });
    let mut conn = pin!(hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades());
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shared.kill.cancelled() => return,
        _ = shared.graceful.cancelled() => {}
    }
    // Graceful: finish the request in flight (streams end on the same signal), then
    // close instead of keeping the connection alive; an idle one closes at once.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        _ = shared.kill.cancelled() => {}
    }
}
