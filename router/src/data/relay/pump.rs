//! The bidirectional relay between an upgraded client and its backend.
//!
//! One future polls both directions (no task per direction, no lock around a split TLS
//! stream). Bytes are copied as they come; a frame cursor per direction follows frame
//! headers so the relay knows where it may inject a close frame.
//!
//! This file holds the relay as a whole: its configuration, its report, and the poll
//! that runs both directions and decides between them. Its parts are siblings: one
//! direction (`direction`), each direction's part in the close handshake (`close`) and
//! in the router's pings (`pings`), the clocks (`timers`), the stop signal (`signal`),
//! and what a side must offer (`peer`).
//!
//! The relay is transparent: it originates close frames only for the router's own
//! events (drain: 1001, reroute: 1012, a backend gone: 1011), and only while no close
//! frame has passed either way (the peers' own closing handshake is then under way).
//! When the backend ends its connection without a close frame (FIN or reset), the client
//! gets close 1011 and then a FIN: as the gateway, the router knows its upstream failed,
//! and says so rather than leaving the client a bare 1006. When the client ends its
//! connection so, the backend sees it end the same way: a FIN for a FIN, a reset for a
//! reset (an HTTP/2 stream's end, which is not the connection's, is a 1001).
//!
//! Once either side has ended, or a close frame has passed, `close_timeout` bounds how
//! long the rest may take; then both sides get FIN. A relay never hangs.
//!
//! Memory: an idle connection holds no relay buffer. Reads (64 KiB at a time while the
//! shared budget in `bulk` lasts, else 16 KiB) go into one scratch buffer per worker
//! thread and are written straight on; only bytes the sink cannot take yet
//! (backpressure) are copied into a buffer of this direction, which is freed as soon as
//! it has been written out. So 9,000 idle sockets cost no more after a 16 KiB burst
//! than before it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

use crate::data::relay::bulk::{self, ReadBudget};
use crate::data::relay::direction::{Event, Pump, State};
use crate::data::relay::frame::Toward;
use crate::data::relay::signal::StopSignal;
use crate::data::relay::timers::Timers;

use crate::data::relay::close::{CloseMsg, CloseReason, Stop};
use crate::data::relay::peer::Peer;
use crate::data::relay::pings::Ping;

#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Once one side has ended, a close frame has passed, or a drain began, how long
    /// the rest may take.
    pub close_timeout: Duration,
    /// No data frame either way for this long: close 1001 to both sides.
    pub idle_timeout: Option<Duration>,
    /// This socket's lifetime (already jittered): then close 1012 to both sides.
    pub max_age: Option<Duration>,
    /// Ping the client this often and give up on it (close 1001) without a pong this soon.
    pub client_ping: Option<Ping>,
    /// The same toward the backend.
    pub backend_ping: Option<Ping>,
    /// Where big reads are paid for: `bulk::BUDGET`, but for tests.
    pub budget: &'static ReadBudget,
}

impl RelayConfig {
    /// Only the close timeout: no idle, age or ping timers.
    pub fn closing_within(close_timeout: Duration) -> Self {
        Self {
            close_timeout,
            idle_timeout: None,
            max_age: None,
            client_ping: None,
            backend_ping: None,
            budget: &bulk::BUDGET,
        }
    }
}

/// What a relay did, for the per-connection log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayReport {
    pub reason: CloseReason,
    pub bytes_from_client: u64,
    pub bytes_from_backend: u64,
    /// Close code in the client's close frame, if it sent one.
    pub client_close_code: Option<u16>,
    /// Close code in the backend's close frame, if it sent one.
    pub backend_close_code: Option<u16>,
    /// Close code the router injected toward the client.
    pub sent_to_client: Option<u16>,
    /// Close code the router injected toward the backend.
    pub sent_to_backend: Option<u16>,
    /// `close_timeout` ran out before both sides finished.
    pub timed_out: bool,
}

/// Relays until both directions end. `client_pre` and `backend_pre` are bytes each side
/// sent that were read along with the HTTP upgrade; they go out first. When `stop`
/// resolves both sides get its close code at their next frame boundary.
///
/// The returned future is the whole per-connection state of a relay; it is kept small
/// (no async-fn frames around it) because 9,000 idle sockets hold 9,000 of them.
pub(crate) fn run<C, B>(
    client: C,
    backend: B,
    client_pre: Bytes,
    backend_pre: Bytes,
    stop: impl Future<Output = Stop> + Send + 'static,
    config: RelayConfig,
) -> Relay<C, B>
where
    C: AsyncRead + AsyncWrite + Peer + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Relay {
        client,
        backend,
        to_backend: Pump::new(
            Toward::Backend,
            client_pre,
            C::RESET_IS_GOING_AWAY.then_some(&CloseMsg::CLIENT_WENT_AWAY),
        ),
        to_client: Pump::new(
            Toward::Client,
            backend_pre,
            Some(&CloseMsg::BACKEND_WENT_AWAY),
        ),
        stop_signal: Some(StopSignal::new(Box::pin(stop))),
        close_timeout: config.close_timeout,
        deadline: None,
        reason: None,
        timed_out: false,
        timers: Timers::new(
            config.idle_timeout,
            config.max_age,
            config.client_ping,
            config.backend_ping,
        ),
        budget: config.budget,
    }
}

/// A running relay; see [`run`].
pub(crate) struct Relay<C, B> {
    client: C,
    backend: B,
    to_backend: Pump,
    to_client: Pump,
    /// Resolves when the router wants this socket closed; gone once it has.
    stop_signal: Option<StopSignal>,
    close_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    reason: Option<CloseReason>,
    timed_out: bool,
    timers: Timers,
    budget: &'static ReadBudget,
}

impl<C, B> Relay<C, B> {
    /// A close frame has passed one way or the other: the peers are closing.
    fn close_passed(&self) -> bool {
        self.to_backend.frames.passed_close() || self.to_client.frames.passed_close()
    }

    /// Both sides get the stop's close frame at their next frame boundary, unless the
    /// peers' own close is already under way: then that finishes, bounded by the close
    /// timeout, and the router adds nothing.
    fn stop(&mut self, why: Stop) {
        self.reason.get_or_insert(why.close_reason);
        if self.close_passed() {
            return;
        }
        for p in [&mut self.to_backend, &mut self.to_client] {
            p.close.request(why.said);
        }
    }

    /// A peer sent a frame no extension makes valid: its direction already stops at
    /// that frame (the other peer hears 1001, or 1011 from a broken backend); the
    /// offender gets 1002, protocol error, unless a close is already under way.
    fn protocol_error(&mut self) {
        let closing = self.close_passed();
        let (reason, offender) = if self.to_backend.close.violated() {
            (CloseReason::ClientProtocolError, &mut self.to_client)
        } else if self.to_client.close.violated() {
            (CloseReason::BackendProtocolError, &mut self.to_backend)
        } else {
            return;
        };
        if offender.close.pending().is_some() || offender.state != State::Forward {
            return;
        }
        if !closing {
            offender.close.request(&CloseMsg::PROTOCOL_ERROR);
        }
        self.reason.get_or_insert(reason);
    }

    /// A stop not yet begun, and a close frame for a peer's end, are dropped once a
    /// peer's close frame passes.
    fn withdraw_stops(&mut self) {
        // Once the client's stream cannot be followed, a backend that drops its
        // connection is most likely answering what the client sent, as a strict server
        // does: the client hears it as it happened, not as a failure of the router's.
        if self.to_backend.frames.desynced() {
            self.to_client.close.forget_source_end();
        }
        if !self.close_passed() {
            return;
        }
        for p in [&mut self.to_backend, &mut self.to_client] {
            p.close.withdraw(p.state == State::Forward);
        }
    }

    /// The close timeout ran out: a last try (without waiting) to shut both sides down
    /// cleanly; the sockets are closed when the relay is dropped in any case.
    fn give_up(&mut self, cx: &mut Context<'_>)
    where
        C: AsyncWrite + Unpin,
        B: AsyncWrite + Unpin,
    {
        let _ = Pin::new(&mut self.client).poll_shutdown(cx);
        let _ = Pin::new(&mut self.backend).poll_shutdown(cx);
    }

    fn report(&self) -> RelayReport {
        RelayReport {
            reason: self.reason.unwrap_or(CloseReason::ClientGone),
            bytes_from_client: self.to_backend.bytes,
            bytes_from_backend: self.to_client.bytes,
            client_close_code: self.to_backend.frames.close_code(),
            backend_close_code: self.to_client.frames.close_code(),
            sent_to_client: self.to_client.close.injected(),
            sent_to_backend: self.to_backend.close.injected(),
            timed_out: self.timed_out,
        }
    }

    fn note_reason(&mut self) {
        if self.reason.is_some() {
            return;
        }
        self.reason = match (self.to_backend.event, self.to_client.event) {
            (Some(Event::PassedClose), _) => Some(CloseReason::ClientClosed),
            (_, Some(Event::PassedClose)) => Some(CloseReason::BackendClosed),
            (Some(Event::ReadEof), _) => Some(CloseReason::ClientGone),
            (_, Some(Event::ReadEof)) => Some(CloseReason::BackendGone),
            (Some(Event::ReadError), _) | (_, Some(Event::WriteError)) => {
                Some(CloseReason::ClientError)
            }
            (_, Some(Event::ReadError)) | (Some(Event::WriteError), _) => {
                Some(CloseReason::BackendError)
            }
            (None, None) => None,
        };
    }
}

impl<C, B> Drop for Relay<C, B> {
    /// What this relay held goes back to the budget with it.
    fn drop(&mut self) {
        for pump in [&mut self.to_backend, &mut self.to_client] {
            pump.charge.give_back(self.budget);
        }
    }
}

impl<C, B> Future for Relay<C, B>
where
    C: AsyncRead + AsyncWrite + Peer + Unpin,
    B: AsyncRead + AsyncWrite + Peer + Unpin,
{
    type Output = RelayReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayReport> {
        let this = self.get_mut();
        if let Some(signal) = this.stop_signal.as_mut() {
            if let Poll::Ready(why) = signal.poll_gated(cx) {
                this.stop_signal = None;
                this.stop(why);
            }
        }
        let read_size = this.budget.read_size();
        let up = this
            .to_backend
            .poll_pump(
                cx,
                Pin::new(&mut this.client),
                Pin::new(&mut this.backend),
                read_size,
            )
            .is_ready();
        this.protocol_error();
        // A client close that just passed rules out a 1011 for a backend ending now.
        this.withdraw_stops();
        let down = this
            .to_client
            .poll_pump(
                cx,
                Pin::new(&mut this.backend),
                Pin::new(&mut this.client),
                read_size,
            )
            .is_ready();
        this.protocol_error();
        this.to_backend.settle(this.budget, this.backend.queued());
        this.to_client.settle(this.budget, this.client.queued());
        if let Some(why) = this
            .timers
            .poll(cx, &mut this.to_client, &mut this.to_backend)
        {
            this.stop(why);
            // The pumps must see the stop (or a ping) now, not at their next wake-up.
            cx.waker().wake_by_ref();
        }
        this.withdraw_stops();
        this.note_reason();
        // A reset ends both directions at once; dropping the sockets now resets the one
        // passed on (linger 0) and closes the one already reset.
        if (up && down) || this.to_backend.reset_sent || this.to_client.reset_sent {
            return Poll::Ready(this.report());
        }
        if this.deadline.is_none() && (this.to_backend.closing() || this.to_client.closing()) {
            this.deadline = Some(Box::pin(tokio::time::sleep(this.close_timeout)));
        }
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                this.timed_out = true;
                this.give_up(cx);
                return Poll::Ready(this.report());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
#[path = "pump_tests.rs"]
mod tests;
