//! WebSockets over HTTP/2 (RFC 8441): a connection that chose `h2` by ALPN, its streams
//! answered by the same routing and backend upgrade as HTTP/1.1 ([`upgrade::answer`]),
//! and each accepted WebSocket relayed over its stream by the same relay.
//!
//! Served with the h2 crate directly (the one hyper uses inside), not hyper's HTTP/2
//! server, for memory: hyper bridges each upgraded stream through a task and a channel
//! of its own and keeps a reference to the last DATA frame's buffer after it has been
//! read, which measured 3.5 KB per idle stream and 11.6 KB after one 16 KiB message
//! (benches/h2.sh). Here a stream is its two h2 handles plus the bytes in flight
//! (`h2_stream`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{FutureExt, OptionFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream};
use http::{Request, Response};
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::data::admission::pools::{ConnStreams, PendingSlot, REQUEST_HEAD_BYTES};
use crate::data::http::conn::ConnCtx;
use crate::data::http::h2_body::{self, H2Body};
use crate::data::http::h2_stream::H2Stream;
use crate::data::http::request;
use crate::data::http::upgrade::{self, Answer};
use crate::data::shared::limits::Limits;
use crate::data::shared::Shared;
use crate::data::upstream::headers::strip_hop_by_hop;
use crate::state::thread_load::Seat;

/// Streams a client may have open on one connection.
pub(crate) const MAX_STREAMS: u32 = 128;
/// Keepalive: a PING this often; no answer within [`PING_TIMEOUT`] closes the connection.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The server's HTTP/2 settings, every guard set explicitly:
/// - extended CONNECT on (`SETTINGS_ENABLE_CONNECT_PROTOCOL`), 128 streams per connection;
/// - a header list at most `max_header_bytes` (HPACK-decoded size), so a CONTINUATION
///   flood is cut off at that size;
/// - rapid reset (CVE-2023-44487): at most 20 streams reset before they were accepted,
///   and 64 streams reset for protocol errors, before the connection is closed with
///   ENHANCE_YOUR_CALM;
/// - flow-control windows of 64 KiB per stream and 1 MiB per connection, and 64 KiB of
///   send buffer per stream, so a slow reader holds about what an HTTP/1.1 relay holds.
///
/// PING and SETTINGS floods are h2's to bound: it answers each PING once, queues at most
/// a few pending acknowledgements, and closes a connection that floods SETTINGS.
pub(crate) fn builder(max_header_bytes: usize) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.enable_connect_protocol()
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(64))
        .initial_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buffer_size(64 * 1024);
    b
}

/// How long an HTTP/2 connection with no open stream may stay when `--idle-timeout` is
/// off.
pub(crate) const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// One HTTP/2 connection, start to end. It is pending (in the pending pool, under its
/// byte budget, per-source cap and eviction) whenever it has no live WebSocket stream:
/// its preface and its first extended CONNECT must come within the request and backend
/// timeouts, as an HTTP/1.1 upgrade must; once its last stream ends it enters the pool
/// again, and after `--idle-timeout` (60 s when that is off) with no stream it gets
/// GOAWAY and is closed. Each live stream holds its own place in the live pool.
pub(crate) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    slot: PendingSlot,
    _seat: Seat,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.limits;
    let first_stream_by =
        tokio::time::Instant::now() + limits.request_timeout + limits.backend_timeout;
    let Some(mut conn) = handshake(&shared, io, peer, &slot).await else {
        return;
    };
    shared.metrics.http2_connections.inc();
    let _open = OpenGauge(shared.metrics.http2_connections.clone());
    let streams = Arc::new(ConnStreams::default());
    let ctx = ConnCtx::http2(&shared, peer, accepted, streams.clone());
    let mut life = Life::new(slot, first_stream_by, limits);
    let mut keepalive = Keepalive::new(conn.ping_pong());
    // Every stream of the connection, relays included, runs in this task (see `drive`).
    let mut running = FuturesUnordered::new();
    loop {
        let evicted = life.pending.as_ref().map(PendingSlot::evicted);
        let open = tokio::select! {
            r = drive(&mut conn, &mut running) => match r {
                Some(Ok((req, respond))) => {
                    // Boxed: the node and the stream each land in a snug size class
                    // (together about 150 bytes less than one node holding it).
                    running.push(Box::pin(stream(req, respond, ctx.clone())));
                    true
                }
                ended => connection_over(ended, peer),
            },
            _ = cancelled(evicted), if life.pending.is_some() => {
                tracing::debug!(client.addr = %peer, "pending connection dropped to make room (HTTP/2)");
                false
            }
            _ = streams.changed() => life.streams_changed(streams.live(), &shared, peer),
            _ = sleep_until_some(life.idle_until), if life.idle_until.is_some() && life.last_call.is_none() => {
                tracing::debug!(client.addr = %peer, "HTTP/2 connection with no open stream: GOAWAY");
                conn.graceful_shutdown();
                life.close_within(limits.close_timeout)
            }
            // The drain: GOAWAY at once, so the client opens no more streams here; the
            // streams already open run on (they get 1001 when the grace period ends),
            // and the connection with them.
            _ = shared.lifecycle.stop_accepting.cancelled(), if !life.draining => {
                life.draining = true;
                conn.graceful_shutdown();
                true
            }
            _ = shared.lifecycle.close_tunnels.cancelled(), if life.last_call.is_none() => {
                life.close_within(limits.close_timeout)
            }
            _ = sleep_until_some(life.last_call), if life.last_call.is_some() => {
                tracing::debug!(client.addr = %peer, "HTTP/2 connection still open after GOAWAY: closing");
                false
            }
            alive = keepalive.tick() => {
                if !alive {
                    tracing::debug!(client.addr = %peer, "HTTP/2 keepalive PING unanswered: closing");
                }
                alive
            }
        };
        if !open {
            break;
        }
    }
    // The connection is over: its streams hear so (h2 ends them as it drops) and end
    // their relays as a client's going away does, each within the close timeout.
    drop(conn);
    while running.next().await.is_some() {}
}

/// The connection's end (an error, or the client closed it): `false`.
fn connection_over(ended: Accepted, peer: SocketAddr) -> bool {
    if let Some(Err(e)) = ended {
        tracing::debug!(client.addr = %peer, error = %e, "HTTP/2 connection error");
    }
    false
}

/// One turn of the connection and its streams, in one poll: the streams first (what
/// backends sent is queued on h2 as it is read), then the connection (it writes what
/// was queued and reads the client's frames, which wakes their streams), then the
/// streams again (what the client sent goes to its backend in this same poll, not after
/// a trip through the run queue), and the connection once more (it writes what they
/// queued). Resolves with a stream the client opened, or the connection's end.
fn drive<'a, I, F>(
    conn: &'a mut h2::server::Connection<I, Bytes>,
    streams: &'a mut FuturesUnordered<F>,
) -> impl Future<Output = Accepted> + 'a
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    std::future::poll_fn(move |cx| {
        for _ in 0..2 {
            // Streams that ended are dropped as they do; `Pending` (or none left) ends
            // the pass. `FuturesUnordered` polls each woken stream once per pass and
            // yields after a bounded number, so a stream that always has data takes
            // its turn and no more: h2's own send queue interleaves their frames.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if let Poll::Ready(r) = conn.poll_accept(cx) {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
}

/// The client's preface and settings, within the request timeout, unless the pending
/// pool or the drain's end drops the connection first.
async fn handshake<I>(
    shared: &Shared,
    io: I,
    peer: SocketAddr,
    slot: &PendingSlot,
) -> Option<h2::server::Connection<I, Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = shared.http2.handshake::<I, Bytes>(io);
    let evicted = slot.evicted();
    tokio::select! {
        r = tokio::time::timeout(shared.limits.request_timeout, handshake) => match r {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                tracing::debug!(client.addr = %peer, error = %e, "HTTP/2 handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(client.addr = %peer, "HTTP/2 handshake timed out");
                None
            }
        },
        _ = evicted.cancelled() => {
            tracing::debug!(client.addr = %peer, "pending connection dropped to make room (HTTP/2 preface)");
            None
        }
        _ = shared.lifecycle.close_tunnels.cancelled() => None,
    }
}

/// What `accept` on an h2 server connection yields: a stream the client opened, an error,
/// or the end.
type Accepted = Option<Result<(Request<RecvStream>, SendResponse<Bytes>), h2::Error>>;

/// Where a connection stands between its streams.
struct Life {
    /// Its place in the pending pool, while it has no live stream.
    pending: Option<PendingSlot>,
    /// While no stream is live: when the connection goes (GOAWAY, then closed).
    idle_until: Option<tokio::time::Instant>,
    /// How long it may stay with no stream once it had one.
    idle_after: Duration,
    /// GOAWAY sent for the drain.
    draining: bool,
    /// Once the grace period is over (or the connection is idle), the relays send their
    /// 1001s through this connection; it gets the close timeout for that, then is
    /// dropped whatever its peer does (one that stopped reading cannot hold it up).
    last_call: Option<tokio::time::Instant>,
}

impl Life {
    fn new(slot: PendingSlot, first_stream_by: tokio::time::Instant, limits: &Limits) -> Self {
        Self {
            pending: Some(slot),
            idle_until: Some(first_stream_by),
            idle_after: limits.timers.idle_timeout.unwrap_or(IDLE_CONNECTION),
            draining: false,
            last_call: None,
        }
    }

    /// Its streams changed, `live` of them now. `false`: the connection is to close.
    fn streams_changed(&mut self, live: usize, shared: &Shared, peer: SocketAddr) -> bool {
        if live > 0 {
            // Its streams hold live places now; the connection is not pending.
            self.pending = None;
            self.idle_until = None;
        } else if self.idle_until.is_none() && self.last_call.is_none() {
            // Its last stream ended: pending again, or gone if its source already holds
            // its share of the pool.
            match shared.admission.admit_pending(peer.ip()) {
                Ok(mut slot) => {
                    slot.hold(REQUEST_HEAD_BYTES);
                    self.pending = Some(slot);
                    self.idle_until = Some(tokio::time::Instant::now() + self.idle_after);
                }
                Err(why) => {
                    shared.metrics.refused(why);
                    tracing::debug!(client.addr = %peer, reason = why.as_str(), "idle HTTP/2 connection closed: its source holds its share of the pending pool");
                    return false;
                }
            }
        }
        true
    }

    /// The connection's last call: it closes `close_timeout` from now.
    fn close_within(&mut self, close_timeout: Duration) -> bool {
        self.last_call = Some(tokio::time::Instant::now() + close_timeout);
        true
    }
}

/// Resolves when `token` is cancelled; never without one.
async fn cancelled(token: Option<tokio_util::sync::CancellationToken>) {
    match token {
        Some(t) => t.cancelled_owned().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts a gauge down however the function holding it ends.
struct OpenGauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A PING every [`PING_INTERVAL`]; unanswered for [`PING_TIMEOUT`], the peer is gone.
struct Keepalive {
    ping_pong: Option<PingPong>,
    /// When the PING in flight was sent.
    sent: Option<tokio::time::Instant>,
    next: tokio::time::Instant,
}

impl Keepalive {
    fn new(ping_pong: Option<PingPong>) -> Self {
        Self {
            ping_pong,
            sent: None,
            next: tokio::time::Instant::now() + PING_INTERVAL,
        }
    }

    /// Resolves when something happened: `false` if the peer failed to answer in time
    /// (or the connection can no longer ping).
    async fn tick(&mut self) -> bool {
        let Some(pp) = self.ping_pong.as_mut() else {
            return std::future::pending().await;
        };
        match self.sent {
            None => {
                tokio::time::sleep_until(self.next).await;
                if pp.send_ping(Ping::opaque()).is_err() {
                    return false;
                }
                self.sent = Some(tokio::time::Instant::now());
                true
            }
            Some(sent) => {
                let pong = std::future::poll_fn(|cx| pp.poll_pong(cx));
                match tokio::time::timeout_at(sent + PING_TIMEOUT, pong).await {
                    Ok(Ok(_)) => {
                        self.sent = None;
                        self.next = tokio::time::Instant::now() + PING_INTERVAL;
                        true
                    }
                    _ => false,
                }
            }
        }
    }
}

/// One stream, in its connection's task: answered like any request; a WebSocket's
/// stream is then relayed, a plain request's answer streams back on it.
///
/// The answer is boxed (an `async fn` holds the largest of its steps for its whole
/// life, and a relay lives for hours), and the relay it returns is polled in place
/// (`then`, `OptionFuture`): awaited from an `async fn` it would be held twice, as the
/// value returned and as the future awaited.
fn stream(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    ctx: Arc<ConnCtx>,
) -> impl Future<Output = ()> {
    Box::pin(answer(req, respond, ctx))
        .then(OptionFuture::from)
        .map(drop)
}

/// The stream's answer: sent whole for a plain request (or a refused upgrade), or its
/// head sent and the relay it starts returned, ready to be polled.
async fn answer(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ctx: Arc<ConnCtx>,
) -> Option<impl Future<Output = ()>> {
    let (parts, recv) = req.into_parts();
    let limits = &ctx.shared.limits;
    // A client that leaves an answer unread this long (no window) loses the stream.
    let stall = limits.http.timers.unread();
    if !request::is_extended_connect_head(&parts) {
        let body = H2Body::new(recv, &parts.headers);
        let req = Box::new(Request::from_parts(parts, body));
        let Answer { resp, .. } = upgrade::answer(req, &ctx).await;
        let (mut head, body) = resp.into_parts();
        strip_hop_by_hop(&mut head.headers);
        h2_body::send(Response::from_parts(head, ()), body, &mut respond, stall).await;
        return None;
    }
    let req = Box::new(Request::from_parts(parts, Empty::<Bytes>::new()));
    let Answer { resp, relay } = upgrade::answer(req, &ctx).await;
    let (mut head, body) = resp.into_parts();
    // HTTP/2 forbids connection-specific fields (RFC 9113 §8.2.2), and h2 refuses to
    // send them: an answer built for either version loses its hop-by-hop headers here.
    strip_hop_by_hop(&mut head.headers);
    let Some(relay) = relay else {
        h2_body::send(Response::from_parts(head, ()), body, &mut respond, stall).await;
        return None;
    };
    match respond.send_response(Response::from_parts(head, ()), false) {
        Ok(send) => Some((*relay).relay(H2Stream::new(send, recv), Bytes::new())),
        // The client reset the stream meanwhile: the backend's socket and the relay's
        // places are released as `relay` drops.
        Err(e) => {
            tracing::debug!(client.addr = %ctx.peer, error = %e, "HTTP/2 stream gone before its answer");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Client = (
        h2::client::SendRequest<Bytes>,
        Option<h2::client::Connection<tokio::io::DuplexStream, Bytes>>,
    );

    /// A server connection with the router's settings and a client over an in-memory
    /// pipe, kept open by the returned handles. The client's connection answers PINGs
    /// only if it is driven (`answer`).
    async fn pair(
        answer: bool,
    ) -> (
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
        Client,
    ) {
        let (c, s) = tokio::io::duplex(64 << 10);
        let server = builder(16 << 10);
        let (client, server) = tokio::join!(h2::client::handshake(c), server.handshake(s));
        let (send, client_conn) = client.unwrap_or_else(|e| panic!("client handshake: {e}"));
        let server = server.unwrap_or_else(|e| panic!("server handshake: {e}"));
        if answer {
            tokio::spawn(client_conn);
            (server, (send, None))
        } else {
            (server, (send, Some(client_conn)))
        }
    }

    /// Runs the connection's loop as `serve` does, for at most `limit`: when the
    /// keepalive gave up, or `None` if the connection was still up at the limit.
    async fn keepalive_gives_up(
        mut server: h2::server::Connection<tokio::io::DuplexStream, Bytes>,
        limit: Duration,
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut keepalive = Keepalive::new(server.ping_pong());
        let run = async {
            loop {
                tokio::select! {
                    r = server.accept() => if !matches!(r, Some(Ok(_))) {
                        panic!("the connection ended on its own");
                    },
                    alive = keepalive.tick() => if !alive {
                        return Some(start.elapsed());
                    },
                }
            }
        };
        tokio::time::timeout(limit, run).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_answering_pings_keeps_its_connection() {
        let (server, _client) = pair(true).await;
        assert_eq!(
            keepalive_gives_up(server, Duration::from_secs(600)).await,
            None,
            "twenty PING intervals"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_dropped_after_interval_and_timeout() {
        let (server, _silent) = pair(false).await;
        let gave_up = keepalive_gives_up(server, Duration::from_secs(600)).await;
        assert_eq!(gave_up, Some(PING_INTERVAL + PING_TIMEOUT));
    }
}
