//! The data path's outer loop: bind, accept on the I/O threads under the pending pool,
//! TLS, and HTTP/1.1 up to the upgrade.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::data::admission::pools::{PendingSlot, REQUEST_HEAD_BYTES};
use crate::data::edge::accept::AcceptErrors;
use crate::data::edge::handoff::{self, Handoffs};
use crate::data::edge::proxy_protocol::{self, Proxied};
use crate::data::shared::limits::ProxyProtocol;
use crate::data::shared::Shared;
use crate::data::socket::uring;
use crate::data::tls::stream as tls_stream;
use crate::state::heartbeat::Heartbeats;
use crate::state::thread_load::Seat;
use wsrouter::Backend;

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
    #[error("--io-uring: this kernel does not let the router use io_uring with provided buffers (Linux 6.0 or later, and io_uring not disabled)")]
    IoUring(#[source] std::io::Error),
    /// A file the router follows (the JWKS) cannot be watched.
    #[error("watching {path}")]
    Watch {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The I/O threads to serve on: how many (0: the caller's runtime), and whether each
/// relays its sockets over its own io_uring (`--io-uring`, checked at bind).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IoThreads {
    pub(crate) count: usize,
    pub(crate) io_uring: bool,
}

/// The WebSocket listeners, bound, with the event loops that will run them.
pub(crate) struct Listeners {
    addr: SocketAddr,
    listeners: Vec<TcpListener>,
    io_runtimes: Vec<tokio::runtime::Runtime>,
}

impl Listeners {
    /// Binds `listen` once per I/O thread (SO_REUSEPORT) and builds each thread's event
    /// loop, so a failure of either is an error of the router's start. `threads.count` 0:
    /// one listener, served on the caller's runtime. A client that connects and sends
    /// nothing waits in the kernel, not in a slot, for up to `defer`.
    pub(crate) fn bind(
        listen: SocketAddr,
        threads: IoThreads,
        defer: Duration,
    ) -> Result<Self, ServerError> {
        let io_threads = threads.count;
        if threads.io_uring {
            uring::probe().map_err(ServerError::IoUring)?;
            if io_threads == 0 {
                tracing::warn!(
                    "--io-uring: no I/O threads (--workers 0), so every socket stays on epoll"
                );
            }
        }
        let bind_err = |source| ServerError::Bind {
            addr: listen,
            source,
        };
        let listeners = bind_listeners(listen, io_threads.max(1), defer).map_err(bind_err)?;
        let addr = listeners[0].local_addr().map_err(bind_err)?;
        let io_runtimes = (0..io_threads)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    // Sends the turn's held flushes, and submits its ring's queue,
                    // before the thread sleeps; notes when the next turn starts, as
                    // flushes are held only once a turn has run a while.
                    .on_thread_park(end_of_turn)
                    .on_thread_unpark(crate::data::tls::flush::start_of_turn)
                    .build()
                    .map_err(ServerError::Runtime)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            addr,
            listeners,
            io_runtimes,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// One accept loop per listener: on the caller's runtime without I/O threads, else each
    /// on its own thread's event loop. Each receiver hears when its loop has stopped.
    /// The I/O threads keep their event loops until `done` (the router drained).
    pub(crate) fn serve(
        self,
        shared: &Arc<Shared>,
        done: &CancellationToken,
    ) -> Result<Vec<oneshot::Receiver<()>>, ServerError> {
        let (addr, listeners, io_runtimes) = (self.addr, self.listeners, self.io_runtimes);
        let bind_err = |source| ServerError::Bind { addr, source };
        let mut accepting = Vec::new();
        if io_runtimes.is_empty() {
            let (tx, rx) = oneshot::channel();
            accepting.push(rx);
            let (listener, shared) = (listeners.into_iter().next(), shared.clone());
            tokio::spawn(heartbeat(shared.clone(), 0, done.clone()));
            tokio::spawn(async move {
                if let Some(l) = listener {
                    accept_loop(l, shared, 0, None).await;
                }
                let _ = tx.send(());
            });
            return Ok(accepting);
        }
        let (handoffs, inboxes) = Handoffs::new(io_runtimes.len());
        let threads = listeners.into_iter().zip(io_runtimes).zip(inboxes);
        for (i, ((listener, rt), inbox)) in threads.enumerate() {
            let (tx, rx) = oneshot::channel();
            accepting.push(rx);
            // The listener moves to the thread's own event loop.
            let listener = listener.into_std().map_err(&bind_err)?;
            let thread = IoThread {
                i,
                listener,
                handoffs: handoffs.clone(),
                inbox,
                shared: shared.clone(),
                done: done.clone(),
            };
            std::thread::Builder::new()
                .name(format!("wsrouter-io-{i}"))
                .spawn(move || thread.run(rt, tx))
                .map_err(ServerError::Thread)?;
        }
        Ok(accepting)
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
        crate::data::socket::set_defer_accept(&socket, defer)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// One I/O thread: its own single-threaded event loop accepts on its own listener, and
/// runs every connection it kept or was handed, start to end. No connection's wake-up
/// crosses threads after its hand-over, which on two cores was worth a fifth of the
/// throughput and most of the tail latency compared with one shared work-stealing pool
/// (benches/RESULTS.md).
struct IoThread {
    i: usize,
    listener: std::net::TcpListener,
    handoffs: Arc<Handoffs>,
    inbox: mpsc::UnboundedReceiver<handoff::Arrival>,
    shared: Arc<Shared>,
    done: CancellationToken,
}

impl IoThread {
    fn run(self, rt: tokio::runtime::Runtime, accepting: oneshot::Sender<()>) {
        let Self {
            i,
            listener,
            handoffs,
            inbox,
            shared,
            done,
        } = self;
        rt.block_on(async move {
            crate::data::tls::flush::hold_on_this_thread();
            tokio::spawn(crate::data::shared::coarse::run_on_this_thread());
            if shared.limits.io_uring {
                match uring::enable_on_this_thread() {
                    Ok(ring) => drop(tokio::spawn(uring::reap_when_ready(ring))),
                    Err(e) => tracing::error!(error = %e, "io_uring: this I/O thread has no ring; its sockets stay on epoll"),
                }
            }
            tokio::spawn(heartbeat(shared.clone(), i, done.clone()));
            tokio::spawn(pool_upkeep(shared.clone(), done.clone()));
            let accept = async {
                match TcpListener::from_std(listener) {
                    Ok(l) => accept_loop(l, shared.clone(), i, Some(handoffs)).await,
                    Err(e) => tracing::error!(error = %e, "I/O thread cannot use its listener"),
                }
            };
            // The inbox ends once every thread's accept loop has stopped.
            tokio::join!(accept, receive(inbox, shared.clone()));
            let _ = accepting.send(());
            // The relays this thread runs stay on it until the router has drained.
            done.cancelled().await;
        });
    }
}

/// What an I/O thread does as it runs dry, before it sleeps.
fn end_of_turn() {
    crate::data::tls::flush::end_of_turn();
    uring::end_of_turn();
}

/// Stamps worker `i`'s heartbeat from its own event loop until the router has drained.
async fn heartbeat(shared: Arc<Shared>, i: usize, done: CancellationToken) {
    let every = Heartbeats::interval(shared.limits.stall_threshold);
    shared
        .heartbeats
        .run(
            i,
            every,
            crate::data::tls::flush::end_overdue_turn,
            done.cancelled(),
        )
        .await;
}

/// How often each I/O thread tidies its share of the keep-alive pool.
const POOL_UPKEEP: Duration = Duration::from_secs(5);

/// Closes this thread's idle pooled connections that have timed out, that their pod
/// closed, or whose pod has left the routing table (a request in flight on one is not
/// touched: it is not idle), until the router has drained.
async fn pool_upkeep(shared: Arc<Shared>, done: CancellationToken) {
    let mut every = tokio::time::interval(POOL_UPKEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = done.cancelled() => return,
        }
        shared.pool.sweep();
        if let Some(routed) = shared.table.load().as_deref().and_then(pod_addrs) {
            shared.pool.retain(|addr| routed.contains(addr));
        }
    }
}

/// The addresses a table routes to; `None` if one is a host name (a list or template
/// outside a cluster), looked up per request: such connections are left to the idle
/// timeout.
fn pod_addrs(table: &wsrouter::RoutingTable) -> Option<Vec<SocketAddr>> {
    let mut routed = Vec::with_capacity(table.backends().len());
    for backend in table.backends() {
        match backend {
            Backend::Pod(m) => routed.push(m.addr),
            Backend::Addr(a) => routed.push(a.parse().ok()?),
            Backend::Unknown => {}
        }
    }
    Some(routed)
}

/// Accepts on thread `here` until the router stops accepting: each connection admitted
/// to the pending pool runs here, or on a less loaded thread through `handoffs`.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    here: usize,
    handoffs: Option<Arc<Handoffs>>,
) {
    let mut errors = AcceptErrors::new("wss");
    let stop = shared.lifecycle.stop_accepting.clone();
    while let Some((tcp, peer)) = errors.next(&listener, &stop).await {
        shared.metrics.connections_accepted.inc();
        let proxied = shared.limits.proxy_protocol == ProxyProtocol::On;
        if proxied && !shared.policy.trusted_proxies.contains(peer.ip()) {
            // Only a trusted balancer may say who its clients are.
            shared.metrics.proxy_header(Err("untrusted"));
            tracing::debug!(client.addr = %peer, "connection refused: PROXY protocol from an untrusted source");
            drop(tcp);
            continue;
        }
        let admitted = if proxied {
            shared.admission.admit_pending_from_proxy(peer.ip())
        } else {
            shared.admission.admit_pending(peer.ip())
        };
        let slot = match admitted {
            Ok(slot) => slot,
            Err(why) => {
                // Over its source's share: close at once; nobody else is affected.
                shared.metrics.refused(why);
                tracing::debug!(client.addr = %peer, reason = why.as_str(), "connection refused");
                drop(tcp);
                continue;
            }
        };
        let seat = shared.thread_load.place(here);
        match &handoffs {
            Some(h) if seat.thread() != here => {
                shared.metrics.connections_handed_over.inc();
                h.send(tcp, peer, slot, seat);
            }
            _ => spawn_conn(&shared, tcp, peer, slot, seat),
        }
    }
}

/// Runs the connections other threads hand to this one, on this thread's event loop,
/// until every accept loop has stopped.
async fn receive(mut inbox: mpsc::UnboundedReceiver<handoff::Arrival>, shared: Arc<Shared>) {
    while let Some(a) = inbox.recv().await {
        match TcpStream::from_std(a.tcp) {
            Ok(tcp) => spawn_conn(&shared, tcp, a.peer, a.slot, a.seat),
            Err(e) => {
                tracing::warn!(client.addr = %a.peer, error = %e, "connection closed: its new I/O thread could not take it");
            }
        }
    }
}

/// Runs a connection on this thread's event loop, counted on it while it lives.
fn spawn_conn(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: PendingSlot,
    seat: Seat,
) {
    let conn = serve_conn(shared.clone(), tcp, peer, slot, seat);
    shared.lifecycle.tasks.spawn(conn);
}

/// One connection's way from accept to HTTP: the PROXY header (behind a balancer), the
/// TLS handshake (unless serving plaintext), then the hand-over. A step returns `None`
/// when the connection ends there.
async fn serve_conn(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    slot: PendingSlot,
    seat: Seat,
) {
    let mut conn = Arriving::new(&shared, &tcp, peer, slot, seat);
    if shared.limits.proxy_protocol == ProxyProtocol::On {
        let Some(client) = conn.proxy_header(&shared, &mut tcp).await else {
            return;
        };
        conn.peer = client;
    }
    let Some(config) = shared.tls_config.as_ref().map(|c| c.load_full()) else {
        let (peer, accepted, slot, seat) = conn.into_http();
        return crate::data::http::h1::serve(shared, tcp, peer, accepted, slot, seat).await;
    };
    if let Some(tls) = conn.tls_handshake(&shared, config, tcp).await {
        hand_over(shared, tls, conn).await;
    }
}

/// A connection between accept and its hand-over to HTTP.
struct Arriving {
    /// Who it is from: its TCP peer, or the client a trusted PROXY header names.
    peer: SocketAddr,
    accepted: Instant,
    slot: PendingSlot,
    /// Its count on the I/O thread that runs it.
    seat: Seat,
    /// Cancelled when the pending pool drops the connection to make room.
    evicted: CancellationToken,
    /// The PROXY protocol header and the TLS handshake share one deadline.
    deadline: tokio::time::Instant,
}

impl Arriving {
    /// Starts the clocks and sets the socket up: no Nagle, keepalive as configured.
    fn new(
        shared: &Shared,
        tcp: &TcpStream,
        peer: SocketAddr,
        slot: PendingSlot,
        seat: Seat,
    ) -> Self {
        let accepted = Instant::now();
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = shared.limits.timers.tcp_keepalive {
            let _ = crate::data::socket::set_keepalive(tcp, idle);
        }
        let evicted = slot.evicted();
        let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
        Self {
            peer,
            accepted,
            slot,
            seat,
            evicted,
            deadline,
        }
    }

    /// What HTTP takes over: who the connection is from, when it was accepted, its
    /// pending place, now charged for a request head, and its count on this thread.
    fn into_http(self) -> (SocketAddr, Instant, PendingSlot, Seat) {
        let Self {
            peer,
            accepted,
            mut slot,
            seat,
            ..
        } = self;
        slot.hold(REQUEST_HEAD_BYTES);
        (peer, accepted, slot, seat)
    }

    /// Reads the PROXY protocol header off `tcp`: the address the connection is from
    /// (see [`client_of`]), or `None` to close it.
    async fn proxy_header(&mut self, shared: &Shared, tcp: &mut TcpStream) -> Option<SocketAddr> {
        let read = tokio::time::timeout_at(self.deadline, proxy_protocol::read_header(tcp));
        self.slot.hold(proxy_protocol::MAX_HEADER);
        let outcome = tokio::select! {
            r = read => r,
            _ = self.evicted.cancelled() => return None,
            _ = shared.lifecycle.close_tunnels.cancelled() => return None,
        };
        client_of(shared, self.peer, outcome, &mut self.slot)
    }

    /// The TLS handshake on `tcp`, its bytes charged to the slot: the stream, or `None`
    /// (failed, timed out, or dropped to make room) to close it.
    async fn tls_handshake(
        &mut self,
        shared: &Shared,
        config: Arc<rustls::ServerConfig>,
        tcp: TcpStream,
    ) -> Option<tls_stream::TlsStream> {
        let peer = self.peer;
        let limits = tls_stream::HandshakeLimits {
            max_client_hello: shared.limits.max_client_hello,
        };
        let handshake = tokio::select! {
            r = tokio::time::timeout_at(self.deadline, tls_stream::accept(config, tcp, limits, &mut self.slot)) => r,
            _ = self.evicted.cancelled() => {
                tracing::debug!(client.addr = %peer, "pending connection dropped to make room (TLS)");
                return None;
            }
            _ = shared.lifecycle.close_tunnels.cancelled() => return None,
        };
        match handshake {
            Ok(Ok(mut tls)) => {
                // Its held flushes go from the thread itself as the turn ends.
                tls.hand_over_held_flushes();
                let m = &shared.metrics;
                m.tls_handshake_seconds
                    .observe(self.accepted.elapsed().as_secs_f64());
                if tls.resumed() {
                    m.tls_handshakes_resumed.inc();
                } else {
                    m.tls_handshakes_full.inc();
                }
                Some(tls)
            }
            Ok(Err(e)) => {
                shared.metrics.tls_handshake_errors.inc();
                tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                shared.metrics.tls_handshake_timeouts.inc();
                tracing::debug!(client.addr = %peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Hands a connection whose TLS handshake is done to HTTP/2 if ALPN chose it, else to
/// HTTP/1.1.
async fn hand_over(shared: Arc<Shared>, tls: tls_stream::TlsStream, conn: Arriving) {
    let (peer, accepted, slot, seat) = conn.into_http();
    if tls.alpn() == Some(b"h2") {
        crate::data::http::h2::serve(shared, tls, peer, accepted, slot, seat).await
    } else {
        crate::data::http::h1::serve(shared, tls, peer, accepted, slot, seat).await
    }
}

/// Who a proxied connection is from, by its PROXY protocol header: the client it
/// names (now charged to that client's share of the pending pool), or the proxy itself
/// for its own health checks (v2 LOCAL). `None`: closed, the reason counted.
fn client_of(
    shared: &Shared,
    proxy: SocketAddr,
    header: Result<
        Result<(Proxied, usize), proxy_protocol::ReadError>,
        tokio::time::error::Elapsed,
    >,
    slot: &mut PendingSlot,
) -> Option<SocketAddr> {
    let why = match header {
        Ok(Ok((Proxied::Local, _))) => {
            shared.metrics.proxy_header(Ok("local"));
            slot.hold(0);
            return Some(proxy);
        }
        Ok(Ok((Proxied::Client { source, .. }, _))) => {
            shared.metrics.proxy_header(Ok("client"));
            slot.hold(0);
            match slot.rekey(source.ip()) {
                Ok(()) => return Some(source),
                Err(refusal) => {
                    shared.metrics.refused(refusal);
                    tracing::debug!(client.addr = %source, proxy.addr = %proxy, reason = refusal.as_str(), "connection refused");
                    return None;
                }
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(proxy.addr = %proxy, error = %e, "PROXY protocol header refused");
            e.as_str()
        }
        Err(_) => "timeout",
    };
    shared.metrics.proxy_header(Err(why));
    None
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use wsrouter::{Backends, Overrides, RoutingTable, TableSource};

    use super::*;

    fn table(addrs: &[&str]) -> RoutingTable {
        let list = Backends::static_list(addrs.iter().map(|a| (*a).to_owned()).collect())
            .unwrap_or_else(|e| panic!("{e}"));
        let replicas = NonZeroU32::new(addrs.len() as u32).unwrap_or(NonZeroU32::MIN);
        RoutingTable::build(1, TableSource::Flags, &list, replicas, Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_pool_keeps_connections_to_the_tables_pods_only() {
        let t = table(&["10.0.0.1:9000", "10.0.0.2:9000"]);
        let kept = pod_addrs(&t).unwrap_or_default();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept, [addr("10.0.0.1:9000"), addr("10.0.0.2:9000")]);
        // A pod no longer in the table is not kept.
        assert!(!kept.contains(&addr("10.0.0.3:9000")));
        // A host name is looked up per request: its connections are left to the idle
        // timeout, so nothing is trimmed by address.
        assert_eq!(
            pod_addrs(&table(&["10.0.0.1:9000", "backend-1:9000"])),
            None
        );
    }
}
