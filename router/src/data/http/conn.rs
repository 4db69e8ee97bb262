//! What every request on one client connection shares, and an HTTP/1.1 connection's
//! standing between its requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::data::admission::forwarded::Client;
use crate::data::admission::pools::{ConnStreams, PendingSlot, REQUEST_HEAD_BYTES};
use crate::data::shared::Shared;
use crate::state::thread_load::Seat;

/// How long an HTTP/1.1 connection waits for its next request before it counts as
/// pending again (up to twice this: its timer is set lazily, see `h1::Readmit`). A
/// client that sends its next request sooner (most keep-alive clients: browsers, long
/// polls, API clients) never takes the trip out of the shared pending pool and back, two
/// of its locks per request; one that idles is counted (and may be evicted, or closed if
/// its source holds its share) a moment later.
pub(crate) const READMIT_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Per client connection.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The peer as a request's client when no trusted proxy speaks for another: made
    /// once, its forwarding headers written once, for every request on the connection.
    pub direct: Client,
    pub accepted: Instant,
    /// The pending-pool place of an HTTP/1.1 connection, held while it waits for a
    /// request head: until its first, and between forwarded requests. An HTTP/2
    /// connection keeps its own (see `h2::serve`).
    pub pending: Mutex<Option<PendingSlot>>,
    /// An HTTP/2 connection's live streams: each WebSocket relayed on it counts.
    pub streams: Option<Arc<ConnStreams>>,
    /// An HTTP/1.1 connection's keep-alive standing.
    pub keepalive: Option<KeepAlive>,
    /// An HTTP/1.1 connection's count on its I/O thread, until a WebSocket relay takes it
    /// over with the socket (an HTTP/2 connection's task holds its own).
    seat: Mutex<Option<Seat>>,
}

/// An HTTP/1.1 connection between requests: pending again (its place re-admitted) once
/// it has waited [`READMIT_AFTER`] (up to twice that) after its last answer, closed if
/// its source has no room. How long it may wait for its next request head is hyper's
/// header read timeout (`--request-timeout`), which hyper arms as soon as the connection
/// is idle.
pub(crate) struct KeepAlive {
    /// Requests read on this connection.
    requests: AtomicU32,
    /// Requests whose answers are still being sent.
    in_flight: AtomicU32,
    /// The connection's eviction from the pending pool: one token for its life, handed
    /// to each re-admission, so its task watches one and is not woken per request.
    pub evicted: CancellationToken,
    /// Its source holds its share of the pending pool: close once idle.
    closing: AtomicBool,
    /// Its last answer is out and it waits for its next request, not yet back in the
    /// pending pool: it goes back once it has waited [`READMIT_AFTER`] or up to twice
    /// that (`h1::serve`).
    idle: AtomicBool,
    /// The drain's grace period is over, as the connection's task saw it: its
    /// requests, which run in that task, end on the next poll (see `live::request_ended`).
    grace_over: AtomicBool,
    /// Wakes the connection's task when it is to close.
    pub changed: Notify,
    /// The drain's events (table swaps, the drain's stages) this connection has heard,
    /// as their epoch: its task waits on them once for all its requests, and a
    /// forwarded request looks at its pod's turn only once one came while it ran (see
    /// `live::request_ended`), sparing every other request the drain's shared lock.
    heard: AtomicU64,
}

impl ConnCtx {
    /// An HTTP/1.1 connection's context, its pending slot held until the first request
    /// head is parsed.
    pub(crate) fn http1(
        shared: &Arc<Shared>,
        peer: SocketAddr,
        accepted: Instant,
        slot: PendingSlot,
        seat: Seat,
    ) -> Arc<Self> {
        let keepalive = KeepAlive {
            requests: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            evicted: slot.evicted(),
            closing: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            grace_over: AtomicBool::new(false),
            changed: Notify::new(),
            heard: AtomicU64::new(shared.drains.epoch()),
        };
        Arc::new(Self {
            shared: shared.clone(),
            peer,
            direct: Client::direct(peer.ip()),
            accepted,
            pending: Mutex::new(Some(slot)),
            streams: None,
            keepalive: Some(keepalive),
            seat: Mutex::new(Some(seat)),
        })
    }

    /// An HTTP/2 connection's context: its streams counted in `streams`.
    pub(crate) fn http2(
        shared: &Arc<Shared>,
        peer: SocketAddr,
        accepted: Instant,
        streams: Arc<ConnStreams>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: shared.clone(),
            peer,
            direct: Client::direct(peer.ip()),
            accepted,
            pending: Mutex::new(None),
            streams: Some(streams),
            keepalive: None,
            seat: Mutex::new(None),
        })
    }

    /// The connection's count on its I/O thread, for the relay its socket becomes.
    pub(crate) fn take_seat(&self) -> Option<Seat> {
        lock(&self.seat).take()
    }

    /// A request head is parsed: the connection leaves the pending pool (if it was back
    /// in it) until its answer is out.
    pub(crate) fn request_started(&self) {
        if let Some(k) = &self.keepalive {
            k.idle.store(false, Ordering::Relaxed);
            k.requests.fetch_add(1, Ordering::Relaxed);
            k.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.pending).take();
    }

    /// Whether the request being answered is the connection's last (`Connection: close`).
    pub(crate) fn last_request(&self) -> bool {
        self.keepalive.as_ref().is_some_and(|k| {
            k.requests.load(Ordering::Relaxed) >= self.shared.limits.http.max_requests_per_conn
        })
    }

    /// A request's answer is out (or abandoned). With none left in flight, an HTTP/1.1
    /// connection waits for its next request, and after [`READMIT_AFTER`] (up to twice
    /// that) as a pending one (see [`ConnCtx::readmit`]).
    pub(crate) fn request_done(&self) {
        let Some(k) = &self.keepalive else { return };
        // A connection whose last answer closes it (a refusal, its last allowed request, an
        // upgrade handing it to the relay) does not wait for another request.
        if k.in_flight.fetch_sub(1, Ordering::Relaxed) != 1 || k.closing.load(Ordering::Relaxed) {
            return;
        }
        k.idle.store(true, Ordering::Relaxed);
    }

    /// Requests read on an HTTP/1.1 connection so far (0 on an HTTP/2 one).
    pub(crate) fn requests_read(&self) -> u32 {
        self.keepalive
            .as_ref()
            .map_or(0, |k| k.requests.load(Ordering::Relaxed))
    }

    /// Whether the connection waits for its next request and is not yet pending again.
    pub(crate) fn idle_unadmitted(&self) -> bool {
        self.keepalive
            .as_ref()
            .is_some_and(|k| k.idle.load(Ordering::Relaxed))
    }

    /// The connection has waited [`READMIT_AFTER`] (or up to twice that) for its next
    /// request: it is pending again, admitted under its source's share, or closed if the
    /// source holds it.
    pub(crate) fn readmit(&self) {
        let Some(k) = &self.keepalive else { return };
        if !k.idle.swap(false, Ordering::Relaxed) || k.closing.load(Ordering::Relaxed) {
            return;
        }
        let shared = &self.shared;
        match shared
            .admission
            .readmit_pending(self.peer.ip(), k.evicted.clone())
        {
            Ok(mut slot) => {
                slot.hold(REQUEST_HEAD_BYTES);
                *lock(&self.pending) = Some(slot);
            }
            Err(why) => {
                shared.metrics.refused(why);
                tracing::debug!(client.addr = %self.peer, reason = why.as_str(), "idle HTTP/1.1 connection closed: its source holds its share of the pending pool");
                k.closing.store(true, Ordering::Relaxed);
                k.changed.notify_one();
            }
        }
    }

    /// The answer being sent is the connection's last: it closes (`Connection: close`)
    /// or leaves HTTP (an upgrade).
    pub(crate) fn last_answer(&self) {
        if let Some(k) = &self.keepalive {
            k.closing.store(true, Ordering::Relaxed);
        }
    }

    /// The connection's task saw the drain's grace period end: its requests are to end.
    pub(crate) fn end_grace(&self) {
        if let Some(k) = &self.keepalive {
            k.grace_over.store(true, Ordering::Relaxed);
        }
    }

    /// The drain's events this connection has heard (0 for an HTTP/2 one, which does
    /// not listen).
    pub(crate) fn events_heard(&self) -> u64 {
        self.keepalive
            .as_ref()
            .map_or(0, |k| k.heard.load(Ordering::Relaxed))
    }

    /// The connection's task heard the drain's events up to `epoch`: its requests are
    /// polled next, and look.
    pub(crate) fn hear_events_up_to(&self, epoch: u64) {
        if let Some(k) = &self.keepalive {
            k.heard.store(epoch, Ordering::Relaxed);
        }
    }

    /// Whether [`ConnCtx::end_grace`] was called.
    pub(crate) fn grace_over(&self) -> bool {
        self.keepalive
            .as_ref()
            .is_some_and(|k| k.grace_over.load(Ordering::Relaxed))
    }

    /// Whether the connection is to close once its answers are out.
    pub(crate) fn closing(&self) -> bool {
        self.keepalive
            .as_ref()
            .is_some_and(|k| k.closing.load(Ordering::Relaxed))
    }
}

/// A lock no panic can poison for good: the state it guards is whole after every write.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
