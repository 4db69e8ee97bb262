//! The data path's outer loop: bind, accept under a connection cap, TLS, HTTP/1.1 with
//! upgrades, and the drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use wsrouter::RoutingTable;

use crate::accept::AcceptErrors;
use crate::admin;
use crate::admission::{Admission, PendingSlot, REQUEST_HEAD_BYTES};
use crate::config::RouterConfig;
use crate::control::{Control, ControlHandle, ControlParts, ControlStats};
use crate::lifecycle::Lifecycle;
use crate::live::LiveTenants;
use crate::metrics::Metrics;
use crate::pods::PodReadiness;
use crate::proxy::{self, ConnCtx};
use crate::reroute::Reroute;
use crate::shared::Shared;
use crate::tls_io;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("building an I/O thread's event loop")]
    Runtime(#[source] std::io::Error),
    #[error("starting an I/O thread")]
    Thread(#[source] std::io::Error),
}

/// A running router.
pub struct RouterHandle {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    control: ControlHandle,
    statefulset: String,
    /// Cancelled once the router has drained and stopped.
    done: CancellationToken,
}

impl RouterHandle {
    /// The address the WebSocket listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The table now in force, if one is loaded.
    pub fn current_table(&self) -> Option<Arc<RoutingTable>> {
        self.shared.table.load_full()
    }

    /// Where watchers send what they see; the control loop builds and publishes tables.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Cancelled when the router begins to drain: watchers stop with it.
    pub fn stopping(&self) -> CancellationToken {
        self.shared.lifecycle.stop_accepting.clone()
    }

    /// The TLS config slot the certificate watcher stores into (`None`: plaintext).
    pub fn tls_config(&self) -> Option<Arc<ArcSwap<rustls::ServerConfig>>> {
        self.shared.tls_config.clone()
    }

    /// Where the EndpointSlice watcher publishes pods known not ready.
    pub fn pod_readiness(&self) -> PodReadiness {
        self.shared.not_ready.clone()
    }

    /// The StatefulSet whose pods are the backends.
    pub fn statefulset(&self) -> &str {
        &self.statefulset
    }

    /// Tenants with live sockets on this router.
    pub fn live(&self) -> Arc<LiveTenants> {
        self.shared.live.clone()
    }

    /// Client connections and relays still running.
    pub fn live_tasks(&self) -> usize {
        self.shared.lifecycle.tasks.len()
    }

    /// Connections refused by a cap (per source, or the live pool full).
    pub fn refused_connections(&self) -> u64 {
        self.shared.metrics.connections_refused.get()
    }

    /// Woken on every change of the router's state (readiness, listener, pools, relays,
    /// certificate, pod readiness): wait on it instead of polling.
    pub fn changes(&self) -> crate::lifecycle::Changes {
        self.shared.lifecycle.changes.clone()
    }

    /// Whether the listeners still accept (false once the drain has closed them).
    pub fn is_listening(&self) -> bool {
        self.shared.lifecycle.is_listening()
    }

    /// The pending and live pools, to see how full they are.
    pub fn admission(&self) -> Arc<Admission> {
        self.shared.admission.clone()
    }

    /// Begins the drain (what SIGTERM does): stop accepting, fail readiness, give live
    /// sockets the grace period, then close them with 1001.
    pub fn shutdown(&self) {
        // Readiness fails at once, not when the supervisor gets to it, so a probe right
        // after SIGTERM already sees 503.
        self.shared.lifecycle.set_draining();
        self.shared.lifecycle.stop_accepting.cancel();
    }

    /// Skips what is left of the grace period (a second SIGTERM).
    pub fn close_now(&self) {
        self.shared.lifecycle.set_draining();
        self.shared.lifecycle.stop_accepting.cancel();
        self.shared.lifecycle.close_tunnels.cancel();
    }

    /// Waits until the router has drained and stopped.
    pub async fn drained(&self) {
        self.done.cancelled().await
    }
}

/// Binds the listeners and starts serving.
pub async fn start(config: RouterConfig) -> Result<RouterHandle, ServerError> {
    let listen = config.listen;
    let bind_err = move |source| ServerError::Bind {
        addr: listen,
        source,
    };
    // A client that connects and sends nothing waits in the kernel, not in a slot.
    let defer = config.limits.handshake_timeout.max(Duration::from_secs(1));
    let listeners =
        bind_listeners(config.listen, config.io_threads.max(1), defer).map_err(bind_err)?;
    let addr = listeners[0].local_addr().map_err(bind_err)?;
    // Each I/O thread's event loop is built here, so a failure is an error of start().
    let io_runtimes = (0..config.io_threads)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServerError::Runtime)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let admin_listener = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Bind { addr: a, source })?,
        ),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let drain_grace = config.drain_grace;
    let (shared, control) = build_shared(config);

    let admin_stop = CancellationToken::new();
    let admin_task =
        admin_listener.map(|l| tokio::spawn(admin::serve(l, shared.clone(), admin_stop.clone())));
    let done = CancellationToken::new();
    let accepting = spawn_accept_loops(listeners, io_runtimes, &shared, &done, bind_err)?;
    shared.lifecycle.set_listening();
    tracing::info!(
        listen.addr = %addr,
        admin.addr = %admin_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        tls = shared.tls_config.is_some(),
        "listening"
    );
    let drained = Drain {
        shared: shared.clone(),
        accepting,
        grace: drain_grace,
        admin_stop,
        admin_task,
        done: done.clone(),
    };
    tokio::spawn(drained.run());

    Ok(RouterHandle {
        addr,
        admin_addr,
        shared,
        control: control.handle,
        statefulset: control.statefulset,
        done,
    })
}

/// The control loop's handle, and the StatefulSet it names pods after.
struct ControlStarted {
    handle: ControlHandle,
    statefulset: String,
}

/// The state every connection reads, and the control loop (started) that owns the table.
fn build_shared(config: RouterConfig) -> (Arc<Shared>, ControlStarted) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.limits.request_timeout)
        .max_buf_size(config.limits.max_header_bytes)
        .max_headers(config.limits.max_headers);
    let stats = Arc::new(ControlStats::default());
    // One set of waiters for every change, whoever makes it.
    let lifecycle = Lifecycle::with_changes(stats.changes.clone());
    let table = Arc::new(ArcSwapOption::empty());
    let live = Arc::new(LiveTenants::default());
    let metrics = Arc::new(Metrics::new(stats.clone()));
    let statefulset = config.routing.statefulset.clone();
    let (control, handle, control_rx) = Control::new(ControlParts {
        table: table.clone(),
        routing: config.routing,
        live: live.clone(),
        lifecycle: lifecycle.clone(),
        stats,
    });
    tokio::spawn(control.run(control_rx));
    let reroute = config
        .reroute
        .map(|r| Arc::new(Reroute::new(r, table.clone(), handle.changes())));
    let shared = Arc::new(Shared {
        table,
        live,
        not_ready: PodReadiness::default(),
        reroute,
        prefix: config.path_prefix,
        admission: Admission::new(
            config.limits.admission(),
            metrics.admission.clone(),
            lifecycle.changes.clone(),
        ),
        metrics,
        limits: config.limits,
        tls_config: config.tls.map(|c| Arc::new(ArcSwap::new(c))),
        http,
        lifecycle,
    });
    (
        shared,
        ControlStarted {
            handle,
            statefulset,
        },
    )
}

/// One accept loop per listener: on the caller's runtime without I/O threads, else each
/// on its own thread's event loop. Each receiver hears when its loop has stopped.
fn spawn_accept_loops(
    listeners: Vec<TcpListener>,
    io_runtimes: Vec<tokio::runtime::Runtime>,
    shared: &Arc<Shared>,
    done: &CancellationToken,
    bind_err: impl Fn(std::io::Error) -> ServerError,
) -> Result<Vec<oneshot::Receiver<()>>, ServerError> {
    let mut accepting = Vec::new();
    if io_runtimes.is_empty() {
        let (tx, rx) = oneshot::channel();
        accepting.push(rx);
        let (listener, shared) = (listeners.into_iter().next(), shared.clone());
        tokio::spawn(async move {
            if let Some(l) = listener {
                accept_loop(l, shared).await;
            }
            let _ = tx.send(());
        });
        return Ok(accepting);
    }
    for (i, (listener, rt)) in listeners.into_iter().zip(io_runtimes).enumerate() {
        let (tx, rx) = oneshot::channel();
        accepting.push(rx);
        // The listener moves to the thread's own event loop.
        let listener = listener.into_std().map_err(&bind_err)?;
        let (shared, done) = (shared.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("wsrouter-io-{i}"))
            .spawn(move || io_thread(rt, listener, shared, done, tx))
            .map_err(ServerError::Thread)?;
    }
    Ok(accepting)
}

/// The drain, from SIGTERM (or [`RouterHandle::shutdown`]) to "drained".
struct Drain {
    shared: Arc<Shared>,
    accepting: Vec<oneshot::Receiver<()>>,
    grace: Duration,
    admin_stop: CancellationToken,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    done: CancellationToken,
}

impl Drain {
    /// Stop accepting, fail readiness, give live sockets the grace period, close the rest
    /// with 1001, bounded by the close timeout; the admin listener stays up until the end.
    async fn run(self) {
        let lc = &self.shared.lifecycle;
        lc.stop_accepting.cancelled().await;
        lc.set_draining();
        for a in self.accepting {
            let _ = a.await;
        }
        lc.set_listener_closed();
        lc.tasks.close();
        tracing::info!(live = lc.tasks.len(), grace = ?self.grace, "draining: listener closed, live sockets have the grace period");
        tokio::select! {
            _ = lc.tasks.wait() => {}
            _ = tokio::time::sleep(self.grace) => {}
            _ = lc.close_tunnels.cancelled() => {}
        }
        if !lc.tasks.is_empty() {
            tracing::info!(
                live = lc.tasks.len(),
                "grace period over: closing live sockets with 1001"
            );
        }
        lc.close_tunnels.cancel();
        // Every relay ends within close_timeout of its close; the margin covers the rest.
        let bound = self.shared.limits.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, lc.tasks.wait()).await.is_err() {
            tracing::warn!(
                live = lc.tasks.len(),
                "connections still open after the close timeout; exiting anyway"
            );
        }
        self.admin_stop.cancel();
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        tracing::info!("drained");
        self.done.cancel();
    }
}

/// Binds `n` listeners on `addr` sharing one port with SO_REUSEPORT, so the kernel
/// spreads new connections over the I/O threads (port 0: the rest take the first's).
/// Clients speak first (ClientHello, or the request in plaintext), so each listener
/// defers accept until data arrives, for up to `defer`.
fn bind_listeners(
    addr: SocketAddr,
    n: usize,
    defer: Duration,
) -> std::io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if n > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        crate::sys::set_defer_accept(&socket, defer)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// One I/O thread: its own single-threaded event loop accepts on its own listener and
/// runs every connection it accepted, start to end. No connection's wake-up crosses
/// threads, which on two cores was worth a fifth of the throughput and most of the
/// tail latency compared with one shared work-stealing pool (benches/RESULTS.md).
fn io_thread(
    rt: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    done: CancellationToken,
    accepting: oneshot::Sender<()>,
) {
    rt.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(l) => accept_loop(l, shared).await,
            Err(e) => tracing::error!(error = %e, "I/O thread cannot use its listener"),
        }
        let _ = accepting.send(());
        // The relays this thread accepted run on it until the router has drained.
        done.cancelled().await;
    });
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut errors = AcceptErrors::new("wss");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.lifecycle.stop_accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    errors.failed(e).await;
                    continue;
                }
            },
        };
        errors.accepted();
        shared.metrics.connections_accepted.inc();
        let slot = match shared.admission.admit_pending(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // Over its source's share: close at once; nobody else is affected.
                shared.metrics.refused(why);
                tracing::debug!(client.addr = %peer, reason = why.as_str(), "connection refused");
                drop(tcp);
                continue;
            }
        };
        let conn_shared = shared.clone();
        shared
            .lifecycle
            .tasks
            .spawn(serve_conn(conn_shared, tcp, peer, slot));
    }
}

async fn serve_conn(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, mut slot: PendingSlot) {
    let accepted = Instant::now();
    let _ = tcp.set_nodelay(true);
    let evicted = slot.evicted();
    let Some(config) = shared.tls_config.as_ref().map(|c| c.load_full()) else {
        slot.hold(REQUEST_HEAD_BYTES);
        return serve_http(shared, tcp, peer, accepted, slot).await;
    };
    let limits = tls_io::HandshakeLimits {
        max_client_hello: shared.limits.max_client_hello,
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(shared.limits.handshake_timeout, tls_io::accept(config, tcp, limits, &mut slot)) => r,
        _ = evicted.cancelled() => {
            tracing::debug!(client.addr = %peer, "pending connection dropped to make room (TLS)");
            return;
        }
        _ = shared.lifecycle.close_tunnels.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => {
            shared
                .metrics
                .tls_handshake_seconds
                .observe(accepted.elapsed().as_secs_f64());
            slot.hold(REQUEST_HEAD_BYTES);
            serve_http(shared, tls, peer, accepted, slot).await
        }
        Ok(Err(e)) => {
            shared.metrics.tls_handshake_errors.inc();
            tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed")
        }
        Err(_) => {
            shared.metrics.tls_handshake_timeouts.inc();
            tracing::debug!(client.addr = %peer, "TLS handshake timed out")
        }
    }
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    slot: PendingSlot,
) where
    I: AsyncRead + AsyncWrite + crate::relay::Reset + Unpin + Send + 'static,
{
    let evicted = slot.evicted();
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        peer,
        accepted,
        pending: std::sync::Mutex::new(Some(slot)),
    });
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy::handle::<I>(req, ctx).await) }
    });
    let conn = shared
        .http
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // Until the upgrade: the request's headers are bounded by header_read_timeout and the
    // backend by backend_timeout; this bounds the whole exchange, whatever stalls.
    let bound = shared.limits.request_timeout + shared.limits.backend_timeout;
    tokio::select! {
        r = tokio::time::timeout(bound, conn.as_mut()) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(client.addr = %peer, error = %e, "HTTP connection error"),
            Err(_) => tracing::debug!(client.addr = %peer, "upgrade request timed out"),
        },
        // Only while the head is still being read: the handler gives the slot back.
        _ = evicted.cancelled() => {
            tracing::debug!(client.addr = %peer, "pending connection dropped to make room (request head)");
        }
        _ = shared.lifecycle.close_tunnels.cancelled() => {
            // The grace period is over. A request being handled gets its answer (a 503
            // if it still waits on the backend); a connection with none just closes.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}
