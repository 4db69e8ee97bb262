//! The relay step: a request whose backend has upgraded, waiting for the client's side,
//! then relayed (an HTTP/1.1 socket as a task of its own, an HTTP/2 stream in its
//! connection's task), counted while it lives and logged as it ends. Its
//! end on the router's initiative (the drain, a tenant's move) is decided here too, for
//! sockets and forwarded requests alike (`ended`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use wsrouter::{Fingerprint, RouteSource, SetId};

use crate::data::admission::pools::{LiveSlot, StreamGuard};
use crate::data::http::admit::Admitted;
use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::write_stall::WriteStall;
use crate::data::relay::close::Stop;
use crate::data::relay::drain::{DrainReason, Drains, Pod};
use crate::data::relay::peer::{OntoUring, Peer};
use crate::data::relay::pump as relay;
use crate::data::relay::signal::Gated;
use crate::data::shared::metrics::{ClosedLabels, OrdinalLabel};
use crate::data::shared::Shared;
use crate::data::socket::uring;
use crate::data::upstream::tls::BackendIo;
use crate::state::tenants::LiveGuard;
use crate::state::thread_load::Seat;

/// A backend upgraded and a 101 on its way to the client: what the relay will need once
/// the client's side of the upgrade completes.
pub(crate) struct PendingRelay {
    routed: Routed,
    /// Counted against its tenant since before the backend was asked.
    tenant_slot: LiveGuard,
    backend: BackendIo,
    backend_pre: Bytes,
    live: LiveSlot,
    /// Counted among its HTTP/2 connection's live streams.
    stream: Option<StreamGuard>,
    peer: SocketAddr,
    /// Who the request is from (the peer, or whom trusted proxies vouched for).
    client: std::net::IpAddr,
    accepted: Instant,
    shared: Arc<Shared>,
    /// An HTTP/1.1 socket's count on its I/O thread, taken over from its connection.
    seat: Option<Seat>,
}

impl PendingRelay {
    /// What the relay will need: where it goes, the places admitted, the backend's
    /// upgraded socket and the bytes it sent after its 101.
    pub(super) fn new(
        routed: Routed,
        admitted: Admitted,
        backend: BackendIo,
        backend_pre: Bytes,
        ctx: &ConnCtx,
    ) -> Self {
        let Admitted {
            client,
            live,
            tenant_slot,
            stream,
        } = admitted;
        Self {
            routed,
            tenant_slot,
            backend,
            backend_pre,
            live,
            stream,
            peer: ctx.peer,
            client: client.addr,
            accepted: ctx.accepted,
            shared: ctx.shared.clone(),
            seat: ctx.take_seat(),
        }
    }

    /// Waits (within the request timeout) for hyper to hand over the client's upgraded
    /// socket, then starts the relay as a task of its own.
    pub(super) async fn await_client<I>(self, on_upgrade: hyper::upgrade::OnUpgrade)
    where
        I: AsyncRead + AsyncWrite + Peer + OntoUring + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let upgrade_timeout = self.shared.limits.request_timeout;
        let client = match tokio::time::timeout(upgrade_timeout, on_upgrade).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::debug!(client.addr = %peer, error = %e, "client upgrade failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client.addr = %peer, "client upgrade timed out");
                return;
            }
        };
        // Unwrap hyper's upgrade wrapper to reach the socket itself, so the relay
        // reads and writes it directly.
        match client.downcast::<TokioIo<WriteStall<I>>>() {
            Ok(parts) => self.start(parts.io.into_inner().into_inner(), parts.read_buf),
            Err(_) => {
                tracing::error!(client.addr = %peer, "upgraded connection of an unexpected type")
            }
        }
    }

    /// Registers the live socket, counts it, and spawns the relay task: on an I/O
    /// thread with a ring (`--io-uring`), over the ring.
    pub(crate) fn start<I>(mut self, mut client_io: I, client_pre: Bytes)
    where
        I: AsyncRead + AsyncWrite + Peer + OntoUring + Unpin + Send + 'static,
    {
        // The answer's last bytes may still be with the thread, for the task that ran
        // the request: the relay's task takes them over.
        client_io.reclaim_held();
        let tasks = self.shared.lifecycle.tasks.clone();
        if !uring::here() {
            tasks.spawn(self.relay(client_io, client_pre));
            return;
        }
        let peer = self.peer;
        let moved = client_io
            .onto_uring()
            .and_then(|client| Ok((client, self.backend.onto_uring()?)));
        match moved {
            Ok((client, backend)) => {
                self.backend = backend;
                self.shared.metrics.io_uring_sockets.inc();
                tasks.spawn(self.relay(client, client_pre));
            }
            Err(e) => {
                tracing::warn!(client.addr = %peer, error = %e, "socket closed: it could not move onto the I/O thread's ring");
            }
        }
    }

    /// Registers the live socket and counts it; the returned future relays it, then
    /// counts and logs its end, in whichever task polls it: its own (`start`), or its
    /// HTTP/2 connection's, which then frames what a backend sent in the poll that read
    /// it, with no wake of another task between.
    pub(crate) fn relay<I>(self, client_io: I, client_pre: Bytes) -> impl Future<Output = ()>
    where
        I: AsyncRead + AsyncWrite + Peer + Unpin,
    {
        let Self {
            routed,
            tenant_slot,
            backend,
            backend_pre,
            live,
            stream,
            peer,
            client,
            accepted,
            shared,
            seat,
        } = self;
        let started = Instant::now();
        // One lookup for this relay's gauge; it is decremented through the same handle.
        let active = shared
            .metrics
            .connections_active
            .get_or_create(&OrdinalLabel {
                ordinal: routed.ordinal,
                set: shared.metrics.sets.name(routed.set),
            })
            .clone();
        active.inc();
        if routed.h2 {
            shared.metrics.http2_streams.inc();
        }
        tracing::debug!(client.addr = %peer, tenant = %routed.tenant, backend.ordinal = routed.ordinal, "relay started");
        // The drain: 1001; its pod leaving the table or the tenant's move: 1012; its
        // token's expiry: 1008.
        let stop = ended(&shared, &routed, true, Stop::drained);
        let stop = match routed.expires {
            Some(at) => expiring(stop, at),
            None => stop,
        };
        let relay = relay::run(
            client_io,
            backend,
            client_pre,
            backend_pre,
            stop,
            shared
                .limits
                .timers
                .relay_config(shared.limits.close_timeout),
        );
        let live = LiveRelay {
            routed: RouteKept::from(routed),
            peer,
            client,
            accepted,
            started,
            active,
            shared,
            _slot: live,
            _live: tenant_slot,
            _stream: stream,
            _seat: seat,
        };
        live.run(relay)
    }
}

/// `stop`, or the token's expiry at `exp` (seconds since the Unix epoch), whichever
/// comes first. The wall clock is read once, here: a socket's remaining life is a
/// monotonic timer from now.
fn expiring(
    stop: Pin<Box<dyn Future<Output = Stop> + Send>>,
    exp: u64,
) -> Pin<Box<dyn Future<Output = Stop> + Send>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = std::time::Duration::from_secs(exp).saturating_sub(now);
    // An `exp` centuries away (the issuer's to choose) arms no timer.
    let Some(at) = tokio::time::Instant::now().checked_add(left) else {
        return stop;
    };
    Box::pin(async move {
        tokio::select! {
            s = stop => s,
            () = tokio::time::sleep_until(at) => Stop::TOKEN_EXPIRED,
        }
    })
}

/// What ends a socket or a forwarded request on the router's own initiative, as `as_t`
/// names it: the drain's hard end (its grace over, or a second signal: `Shutdown`), or
/// the drain scheduler's turn for it (see `relay::drain`): within the shutdown's spread
/// when `spread_shutdown` (sockets), its pod leaving the table, or with
/// `--reroute-drain` its tenant's move. One boxed future of at most 224 bytes while idle
/// (a relay holds it for the socket's life, gated whole: `relay::signal::StopSignal`):
/// the turn makes its reason `T` itself, as an `async` block or `map` around it would
/// have cost the allocator's next size class (256).
pub(super) fn ended<T, F>(
    shared: &Shared,
    routed: &Routed,
    spread_shutdown: bool,
    as_t: F,
) -> Pin<Box<dyn Future<Output = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(DrainReason) -> T + Send + 'static,
{
    let (tenant, pod) = turn_of(&shared.drains, routed);
    Box::pin(
        shared
            .drains
            .clone()
            .turn_as(tenant, pod, spread_shutdown, as_t),
    )
}

/// As [`ended`], for a request forwarded on `ctx`'s connection; its answer is not spread
/// by the shutdown (it ends with the grace, between two chunks). An HTTP/1.1
/// connection's requests run in its own task, which already watches the drain (see
/// `h1::serve`), once for all of them, and polls them once more when the grace ends or
/// the drain has news: a request reads the connection's flag and count, and waits on
/// its pod's turn (as a socket does) only once news came while it ran. A table swap
/// before that was the table it was routed by: the count is read here, in the poll that
/// made the routing decision, and only the connection's task (this one) moves it. Keep
/// it so: an await between `decide` and this call would let a move go unheard. An
/// HTTP/2 stream's request waits on its turn from the start, gated as a relay's is: an
/// answer polls it at every frame, and an ungated poll takes the lock of the drain's
/// waiters.
pub(super) fn request_ended<T: Send + 'static>(
    ctx: &Arc<ConnCtx>,
    routed: &Routed,
    as_t: fn(DrainReason) -> T,
) -> Pin<Box<dyn Future<Output = T> + Send>> {
    if ctx.keepalive.is_none() {
        return Box::pin(Gated::new(ended(&ctx.shared, routed, false, as_t)));
    }
    let (tenant, pod) = turn_of(&ctx.shared.drains, routed);
    Box::pin(Hearing {
        heard: ctx.events_heard(),
        conn: ctx.clone(),
        tenant,
        pod,
        turn: None,
        as_t,
    })
}

/// An HTTP/1.1 request's end on the router's initiative: the grace's end, or its pod's
/// turn once the connection heard the drain's news (see [`request_ended`]).
struct Hearing<T> {
    conn: Arc<ConnCtx>,
    /// The connection's count of the drain's news as the request began.
    heard: u64,
    /// What the turn needs, kept until it is taken (see [`turn_of`]).
    tenant: Box<str>,
    pod: Pod,
    turn: Option<Gated<Pin<Box<dyn Future<Output = DrainReason> + Send>>>>,
    as_t: fn(DrainReason) -> T,
}

impl<T> Future for Hearing<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
        let this = self.get_mut();
        if this.conn.grace_over() {
            return std::task::Poll::Ready((this.as_t)(DrainReason::Shutdown));
        }
        if this.turn.is_none() {
            if this.conn.events_heard() == this.heard {
                return std::task::Poll::Pending;
            }
            let drains = this.conn.shared.drains.clone();
            let tenant = std::mem::take(&mut this.tenant);
            this.turn = Some(Gated::new(Box::pin(drains.turn(tenant, this.pod, false))));
        }
        match &mut this.turn {
            Some(turn) => turn.poll_gated(cx).map(this.as_t),
            None => std::task::Poll::Pending,
        }
    }
}

/// What the drain scheduler's turn for `routed`'s socket or answer needs: the tenant's
/// name, kept only when a move can close it (`--reroute-drain`): every socket holds
/// this, and its pod.
fn turn_of(drains: &Drains, routed: &Routed) -> (Box<str>, Pod) {
    let tenant = if drains.reroutes() {
        routed.tenant.clone()
    } else {
        Box::default()
    };
    let pod = Pod {
        set: routed.set,
        ordinal: routed.ordinal,
        hints: routed.hints,
    };
    (tenant, pod)
}

/// What a running relay keeps of its route, to count and log its end: [`Routed`] less
/// what only admitting, dialling and answering it needed (the pod's socket address, the
/// tenant's cap, the canary hints, the token's expiry). Every socket holds one for its
/// life.
struct RouteKept {
    tenant: Box<str>,
    set: SetId,
    ordinal: u32,
    addr: Box<str>,
    source: RouteSource,
    table_version: u64,
    fingerprint: Fingerprint,
    host: HeaderValue,
    h2: bool,
}

impl From<Routed> for RouteKept {
    fn from(r: Routed) -> Self {
        Self {
            tenant: r.tenant,
            set: r.set,
            ordinal: r.ordinal,
            addr: r.addr,
            source: r.source,
            table_version: r.table_version,
            fingerprint: r.fingerprint,
            host: r.host,
            h2: r.h2,
        }
    }
}

/// What a running relay keeps beside its sockets, to count and log its end.
struct LiveRelay {
    routed: RouteKept,
    peer: SocketAddr,
    client: std::net::IpAddr,
    accepted: Instant,
    started: Instant,
    active: prometheus_client::metrics::gauge::Gauge,
    shared: Arc<Shared>,
    // Fields drop in this order: the tenant's count first, then the live pool's place,
    // whose release wakes whoever waits on a change, so they see both.
    _live: LiveGuard,
    _slot: LiveSlot,
    _stream: Option<StreamGuard>,
    _seat: Option<Seat>,
}

impl LiveRelay {
    /// The relay task: the relay itself, then the count and the log line. A plain
    /// future rather than an async fn, so the relay's state is held once, not twice
    /// (an async fn keeps its argument and the awaited future side by side).
    fn run<I>(self, relay: relay::Relay<I, BackendIo>) -> impl Future<Output = ()>
    where
        I: AsyncRead + AsyncWrite + Peer + Unpin,
    {
        let mut relay = relay;
        let mut live = Some(self);
        std::future::poll_fn(move |cx| {
            let report = std::task::ready!(Pin::new(&mut relay).poll(cx));
            if let Some(live) = live.take() {
                live.finish(report);
            }
            std::task::Poll::Ready(())
        })
    }

    fn finish(self, report: relay::RelayReport) {
        let (routed, metrics) = (&self.routed, &self.shared.metrics);
        self.active.dec();
        if routed.h2 {
            metrics.http2_streams.dec();
        }
        metrics
            .connections_closed
            .get_or_create(&ClosedLabels {
                ordinal: routed.ordinal,
                reason: report.reason.as_str(),
                protocol: if routed.h2 { "h2" } else { "h1" },
                set: metrics.sets.name(routed.set),
            })
            .inc();
        metrics.bytes_from_client.inc_by(report.bytes_from_client);
        metrics.bytes_from_backend.inc_by(report.bytes_from_backend);
        tracing::info!(
            client.addr = %self.client,
            peer.addr = %self.peer,
            tenant = %routed.tenant,
            backend.ordinal = routed.ordinal,
            backend.addr = %routed.addr,
            route.source = routed.source.as_str(),
            table.version = routed.table_version,
            table.fingerprint = %routed.fingerprint,
            http.host = routed.host.to_str().unwrap_or_default(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            setup_ms = (self.started - self.accepted).as_millis() as u64,
            bytes.from_client = report.bytes_from_client,
            bytes.from_backend = report.bytes_from_backend,
            close.reason = report.reason.as_str(),
            close.client_code = report.client_close_code,
            close.backend_code = report.backend_close_code,
            close.sent_to_client = report.sent_to_client,
            close.sent_to_backend = report.sent_to_backend,
            close.timed_out = report.timed_out,
            "connection closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::http::h2_stream::H2Stream;

    /// An HTTP/2 stream's whole state while relayed is this one future (boxed in its
    /// connection's task): kept within the allocator's 896-byte size class, the figure
    /// of `benches/h2.sh`'s memory per stream (it was 992 bytes, in the 1,024 class,
    /// with the whole route and the close reasons as pairs).
    #[test]
    fn an_http2_streams_relay_fits_896_bytes() {
        let relay = std::mem::size_of::<relay::Relay<H2Stream, BackendIo>>();
        let live = std::mem::size_of::<Option<LiveRelay>>();
        // The future adds its state's tag and padding: a word at most.
        assert!(relay + live + 8 <= 896, "{relay} + {live} bytes");
    }
}
