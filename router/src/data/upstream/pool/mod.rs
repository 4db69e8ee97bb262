//! Kept-alive HTTP/1.1 connections to backends, for the plain HTTP requests a tenant's
//! pod answers (SignalR negotiate, Socket.IO long polling, SSE): a request takes an idle
//! connection to its pod if one is ready, else dials one, and gives it back when its
//! response has been read to the end.
//!
//! One pool per I/O thread. A connection never moves between I/O threads, so neither
//! does a pooled one: the idle connections live in a `thread_local!` (a `RefCell` per
//! thread, borrowed within one synchronous call, never across an await), and the
//! [`Pool`] handle is one shared, read-only value (its settings and metric handles) that
//! every thread checks out through, each from its own idle set. Nothing on a request's
//! path takes a lock or writes an atomic another thread touches but the counters (once
//! per checkout or connection event). The handle, the guard and the response body are
//! `Send`, so a request's future holding them can be `tokio::spawn`ed; a guard dropped
//! on another thread gives its connection to that thread's idle set of the pool if it
//! has one, else closes it (on the I/O threads neither happens).
//!
//! A connection goes back to the pool when its response body has been read to its end
//! (its last frame); a body dropped before that, or a failed exchange, closes it. One
//! given back before hyper has finished with it (not yet `is_ready`) stays idle and is
//! passed over at checkout until it is ready or closed.
//!
//! Because each thread keeps its own idle set, [`Pool::sweep`] and [`Pool::retain`] act
//! on the calling thread's: call them from every I/O thread (one small task per thread).
//!
//! A connection's driving task is spawned untracked: it outlives any one request, and
//! the drain waiting for idle keep-alives would wait out the idle timeout. A request in
//! flight keeps its client's (tracked) task waiting on the response, so the drain still
//! waits for it; the idle ones close when their I/O thread's event loop ends.

mod held;
mod idle;
pub(crate) mod pooled;

use crate::data::upstream::tls::{BackendIo, BackendTls};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use thiserror::Error;
use tokio::net::TcpStream;

use pooled::Pooled;

/// Any error a request body may end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the pool sends it: any body (the client's, streamed as it arrives,
/// or one of the router's own), boxed so one pool serves them all.
pub(crate) type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// The pool's bounds. The connect timeout is the caller's (a deadline around
/// [`Pool::checkout`]), as the backend timeout is for the upgrade.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Idle connections kept per pod, per I/O thread; a connection given back past this
    /// is closed.
    pub max_idle_per_pod: usize,
    /// An idle connection unused this long is closed (at the next checkout for its pod,
    /// or the next sweep).
    pub idle_timeout: Duration,
    /// Requests one connection carries; after the last it is closed, not given back.
    pub max_requests_per_conn: u32,
    /// TCP keepalive on backend sockets, as for the upgrade's.
    pub tcp_keepalive: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_pod: 32,
            idle_timeout: Duration::from_secs(90),
            max_requests_per_conn: 1000,
            tcp_keepalive: Some(Duration::from_secs(60)),
        }
    }
}

/// What the pool counts, as handles the metrics module registers; every I/O thread
/// updates the same series.
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolMetrics {
    /// Connections dialled.
    pub opened: Counter,
    /// Checkouts served by an idle connection.
    pub reused: Counter,
    /// Idle connections closed by the pool: past the idle timeout, found closed by their
    /// backend, or of a pod no longer routed to.
    pub closed_idle: Counter,
    /// Idle connections now, over every I/O thread.
    pub idle: Gauge,
}

/// Why no connection to a backend could be had.
#[derive(Debug, Error)]
pub(crate) enum PoolError {
    #[error("connecting to backend {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with backend {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// The pool: a handle to the calling thread's idle connections. Clones share settings
/// and metrics.
#[derive(Clone)]
pub(crate) struct Pool {
    settings: Arc<Settings>,
}

/// What every thread's idle set of one pool shares, read-only.
struct Settings {
    /// Tells this pool's idle sets from another's on the same thread.
    id: u64,
    config: PoolConfig,
    metrics: PoolMetrics,
    /// TLS to the pods (`--backend-tls`).
    tls: Option<Arc<BackendTls>>,
}

impl Pool {
    pub(crate) fn new(
        config: PoolConfig,
        metrics: PoolMetrics,
        tls: Option<Arc<BackendTls>>,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let settings = Settings {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            metrics,
            tls,
        };
        Self {
            settings: Arc::new(settings),
        }
    }

    /// A connection to `addr` ready for a request: an idle one of this thread's if one
    /// is (newest first), else a new one.
    #[cfg(test)]
    pub(crate) async fn checkout(&self, addr: SocketAddr) -> Result<Pooled, PoolError> {
        self.checkout_for(addr, None, tokio::time::Instant::now())
            .await
    }

    /// [`Pool::checkout`] for the pod of `ordinal` (its TLS server name may say it),
    /// idle connections judged as of `now`.
    pub(crate) async fn checkout_for(
        &self,
        addr: SocketAddr,
        ordinal: Option<u32>,
        now: tokio::time::Instant,
    ) -> Result<Pooled, PoolError> {
        let s = &self.settings;
        if let Some(conn) = idle::take(s, addr, now) {
            s.metrics.reused.inc();
            return Ok(Pooled::new(s.id, addr, conn, true));
        }
        // Boxed: a dial (TCP, TLS, the handshake) is a future of over a kilobyte, and
        // every request's future would carry it, and copy it at each step, though a
        // warm pool seldom dials.
        let sender = Box::pin(self.dial(addr, ordinal)).await?;
        s.metrics.opened.inc();
        Ok(Pooled::new(s.id, addr, idle::Conn::new(sender), false))
    }

    /// Closes this thread's idle connections past the idle timeout or closed by their
    /// backend; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        idle::sweep(&self.settings)
    }

    /// Closes this thread's idle connections to every pod `keep` refuses (those no longer
    /// in the routing table); returns how many.
    pub(crate) fn retain(&self, keep: impl FnMut(&SocketAddr) -> bool) -> usize {
        idle::retain(&self.settings, keep)
    }

    /// A new connection: TCP (an `IP:PORT`, no lookup), no Nagle, keepalive, the
    /// HTTP/1.1 handshake, and its task driving it.
    async fn dial(
        &self,
        addr: SocketAddr,
        ordinal: Option<u32>,
    ) -> Result<SendRequest<ReqBody>, PoolError> {
        let handshake = |source| PoolError::Handshake { addr, source };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| PoolError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = self.settings.config.tcp_keepalive {
            let _ = crate::data::socket::set_keepalive(&tcp, idle);
        }
        let io = match &self.settings.tls {
            Some(tls) => tls
                .connect(tcp, &addr.to_string(), ordinal)
                .await
                .map_err(|source| PoolError::Connect { addr, source })?,
            None => BackendIo::Plain(tcp),
        };
        // A plain connection holds its writes; a TLS one (tokio-rustls) writes at once.
        let hold = match &io {
            BackendIo::Plain(tcp) => Some(std::os::fd::AsRawFd::as_raw_fd(tcp)),
            _ => None,
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, ReqBody>(TokioIo::new(held::HeldWrites::new(io, hold)))
            .await
            .map_err(handshake)?;
        // Untracked: see the module's doc.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Ready once its task has run: a connection the backend dropped at once fails
        // here, not with the request.
        sender.ready().await.map_err(handshake)?;
        Ok(sender)
    }
}

#[cfg(test)]
mod test_backend;
#[cfg(test)]
mod tests;

#[cfg(test)]
impl Pool {
    /// This thread's idle connections to `addr` that their backend has closed.
    fn idle_closed(&self, addr: SocketAddr) -> usize {
        idle::closed(&self.settings, addr)
    }
}
