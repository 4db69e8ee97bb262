//! One HTTP/1.1 client connection, start to end: hyper serves its requests one after
//! another; a WebSocket upgrade hands the socket to the relay, plain requests keep the
//! connection alive. Between requests the connection is pending (in the pending pool,
//! under eviction) once it has waited `READMIT_AFTER` or up to twice that (a client that
//! asks again sooner is spared the pool's locks), and waits for its next request head
//! at most `--request-timeout` (hyper's header read timeout, armed as soon as it is
//! idle); while a request is in flight its own timeouts apply. A client that stops
//! reading an answer for the stall time loses the connection (`WriteStall`), whatever
//! the answer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::data::admission::pools::PendingSlot;
use crate::data::http::conn::{ConnCtx, KeepAlive, READMIT_AFTER};
use crate::data::http::upgrade;
use crate::data::http::write_stall::WriteStall;
use crate::data::relay::peer::{OntoUring, Peer};
use crate::data::relay::signal::Gated;
use crate::data::shared::Shared;
use crate::state::thread_load::Seat;

/// Serves one HTTP/1.1 connection until it closes, is upgraded, evicted, idle too long,
/// or the drain ends it.
pub(crate) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    slot: PendingSlot,
    seat: Seat,
) where
    I: AsyncRead + AsyncWrite + Peer + OntoUring + Unpin + Send + 'static,
{
    let limits = &shared.limits;
    let ctx = ConnCtx::http1(&shared, peer, accepted, slot, seat);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        // Boxed as it comes: each step of its way (answer, story, forward) takes it by
        // value, and its 264 bytes were copied at every one.
        let req = Box::new(req);
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(upgrade::handle::<I>(req, ctx).await) }
    });
    let io = WriteStall::new(io, limits.http.timers.unread());
    let conn = shared
        .http
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let Some(keepalive) = ctx.keepalive.as_ref() else {
        return;
    };
    // Set up once: the loop turns on a drain, an eviction or a close, never per request.
    let evicted = keepalive.evicted.clone().cancelled_owned();
    let mut evicted = std::pin::pin!(evicted);
    let mut draining = false;
    let mut readmit = Readmit::new();
    loop {
        if ctx.closing() && !draining {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        // Gated: polled when one of them fires, not each time the connection's I/O
        // wakes the task.
        let signal = Gated::new(Box::pin(next_signal(
            &shared,
            &ctx,
            keepalive,
            evicted.as_mut(),
            draining,
        )));
        tokio::select! {
            biased;
            r = conn.as_mut() => return log_error(r, peer),
            () = std::future::poll_fn(|cx| readmit.poll(cx, &ctx)) => ctx.readmit(),
            signal = signal => match signal {
                Signal::Changed => {}
                Signal::DrainEvent(epoch) => ctx.hear_events_up_to(epoch),
                Signal::Evicted => {
                    tracing::debug!(client.addr = %peer, "pending connection dropped to make room (request head)");
                    return;
                }
                Signal::Draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                Signal::GraceOver => {
                    // A request being handled gets its answer (a 503 if it still waits
                    // on the backend); a connection with none closes.
                    ctx.end_grace();
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                    return;
                }
            }
        }
    }
}

fn log_error(r: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = r {
        tracing::debug!(client.addr = %peer, error = %e, "HTTP connection error");
    }
}

/// The connection's wait, once idle, before it is pending again (see `READMIT_AFTER`):
/// one timer for the connection's life, set lazily. A busy connection goes idle after
/// every answer; setting the timer each time read the clock and moved it in the timer
/// wheel once per request. Instead it is set at the first idle spell, and when it fires
/// the connection is readmitted if no request came since it was set, else it is set
/// again from then if the connection is idle. So a connection is pending again after
/// `READMIT_AFTER` to twice that of quiet, and a busy one touches the timer about once
/// per `READMIT_AFTER`, not per request.
struct Readmit {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The connection's count of requests read when the timer was set, while it runs.
    armed: Option<u32>,
}

impl Readmit {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(READMIT_AFTER)),
            armed: None,
        }
    }

    /// Ready once the connection has been idle (its last answer out, no request since)
    /// for `READMIT_AFTER` to twice that. Costs an atomic load while it is busy.
    fn poll(&mut self, cx: &mut Context<'_>, ctx: &ConnCtx) -> Poll<()> {
        // Busy: the timer, if set, wakes the task when it fires, and is looked at once
        // the connection is idle again.
        if !ctx.idle_unadmitted() {
            return Poll::Pending;
        }
        let requests = ctx.requests_read();
        if let Some(seen) = self.armed {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if seen == requests {
                self.armed = None;
                return Poll::Ready(());
            }
        }
        // Idle, and not yet timed from a quiet start: from now.
        self.armed = Some(requests);
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + READMIT_AFTER);
        // Registers the task's waker (the deadline is ahead: pending).
        let _ = self.sleep.as_mut().poll(cx);
        Poll::Pending
    }
}

/// What turns the connection's loop besides the connection itself.
enum Signal {
    /// Its keep-alive standing changed (it is to close once idle).
    Changed,
    /// The drain had news (a table swap, a stage of the drain), up to this epoch: a
    /// request in flight looks whether its answer is to end.
    DrainEvent(u64),
    /// The pending pool took its place while it waited for a request head.
    Evicted,
    /// The drain began: answers under way are finished, then the connection closes;
    /// an idle one closes now.
    Draining,
    /// The drain's grace period is over.
    GraceOver,
}

async fn next_signal(
    shared: &Shared,
    ctx: &ConnCtx,
    keepalive: &KeepAlive,
    evicted: Pin<&mut WaitForCancellationFutureOwned>,
    draining: bool,
) -> Signal {
    let life = &shared.lifecycle;
    tokio::select! {
        () = keepalive.changed.notified() => Signal::Changed,
        epoch = shared.drains.next_event(ctx.events_heard()) => Signal::DrainEvent(epoch),
        // Only while it waits for a request head: the pool may take its place.
        () = evicted => Signal::Evicted,
        () = life.stop_accepting.cancelled(), if !draining => Signal::Draining,
        () = life.close_tunnels.cancelled() => Signal::GraceOver,
    }
}
