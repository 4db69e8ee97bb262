//! The bidirectional relay between an upgraded client and its backend.
//!
//! One future polls both directions (no task per direction, no lock around a split TLS
//! stream). Bytes are copied as they come; a [`FrameCursor`] per direction follows frame
//! headers so the relay knows where it may inject a close frame.
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

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::data::relay::bulk::{self, ReadBudget};
use crate::data::relay::frame::{close_frame, code, find_pong, ping_frame, FrameCursor, PongScan};

/// What the relay needs of each side besides reading and writing.
pub trait Peer {
    /// Ends the connection abruptly (a TCP reset), to pass on a peer's reset as it was.
    fn reset(&mut self);

    /// Bytes written to this side that it has taken but not yet sent (encrypted records
    /// its socket has not accepted): the relay counts them as held.
    fn queued(&self) -> usize {
        0
    }

    /// This side ending without a close frame means its peer left: the other side is
    /// told with close 1001 (going away) rather than a reset or a FIN. An HTTP/2 stream
    /// the client resets or ends is that: the connection under it lives on.
    const RESET_IS_GOING_AWAY: bool = false;
}

impl Peer for tokio::net::TcpStream {
    fn reset(&mut self) {
        // Linger 0: closing the socket (when the relay drops it) sends RST, not FIN.
        #[allow(deprecated)]
        let _ = self.set_linger(Some(Duration::ZERO));
    }
}

impl<S: Peer + AsyncRead + AsyncWrite + Unpin> Peer for crate::data::tls::stream::TlsStream<S> {
    fn reset(&mut self) {
        self.get_mut().reset();
    }

    fn queued(&self) -> usize {
        self.unsent()
    }
}

impl Peer for tokio::io::DuplexStream {
    fn reset(&mut self) {}
}

thread_local! {
    /// Where every relay on this worker thread reads into. It is borrowed only for the
    /// length of one `poll_read` and the writes that follow it, never across a wait, and
    /// no reader or writer polled meanwhile can reach another relay. How much of it one
    /// read may use is the budget's call (see `bulk`).
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0u8; bulk::READ_BIG].into_boxed_slice());
}

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

/// Router-originated pings toward one peer.
#[derive(Debug, Clone, Copy)]
pub struct Ping {
    pub interval: Duration,
    pub timeout: Duration,
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

/// Why a relayed connection ended: the first thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClosed,
    /// The backend sent a close frame.
    BackendClosed,
    /// The client's connection ended without a close frame.
    ClientGone,
    /// The backend's connection ended without a close frame.
    BackendGone,
    /// Reading from or writing to the client failed.
    ClientError,
    /// Reading from or writing to the backend failed.
    BackendError,
    /// The router closed it while draining.
    Shutdown,
    /// The router closed it because the tenant's route moved (`--reroute-drain`).
    Rerouted,
    /// No data frame either way for `--idle-timeout`.
    Idle,
    /// The client (or the backend) did not answer the router's ping in time.
    PingTimeout,
    /// The socket reached `--max-connection-age`.
    MaxAge,
    /// The client sent a frame no extension makes valid.
    ClientProtocolError,
    /// The backend sent a frame no extension makes valid.
    BackendProtocolError,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::BackendClosed => "backend_closed",
            Self::ClientGone => "client_gone",
            Self::BackendGone => "backend_gone",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::Shutdown => "shutdown",
            Self::Rerouted => "rerouted",
            Self::Idle => "idle",
            Self::PingTimeout => "ping_timeout",
            Self::MaxAge => "max_age",
            Self::ClientProtocolError => "client_protocol_error",
            Self::BackendProtocolError => "backend_protocol_error",
        }
    }
}

/// What a relay did, for the per-connection log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
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

/// Why the router ends a relay itself, and what it tells both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub code: u16,
    pub reason: &'static str,
    pub close_reason: CloseReason,
}

impl Stop {
    /// The router is draining: 1001 going away.
    pub const SHUTDOWN: Stop = Stop {
        code: code::GOING_AWAY,
        reason: "wsrouter shutting down",
        close_reason: CloseReason::Shutdown,
    };
    /// The tenant's route moved: 1012 service restart, so the client reconnects to its
    /// new home.
    pub const REROUTED: Stop = Stop {
        code: code::SERVICE_RESTART,
        reason: "tenant moved; reconnect",
        close_reason: CloseReason::Rerouted,
    };
    /// No data either way for the idle timeout: 1001 going away.
    pub const IDLE: Stop = Stop {
        code: code::GOING_AWAY,
        reason: "idle timeout",
        close_reason: CloseReason::Idle,
    };
    /// A peer did not answer the router's ping: the other side hears 1001.
    pub const PING_TIMEOUT: Stop = Stop {
        code: code::GOING_AWAY,
        reason: "peer did not answer ping",
        close_reason: CloseReason::PingTimeout,
    };
    /// The socket is as old as it may get: 1012, reconnect (to wherever it routes now).
    pub const MAX_AGE: Stop = Stop {
        code: code::SERVICE_RESTART,
        reason: "connection age limit; reconnect",
        close_reason: CloseReason::MaxAge,
    };
}

/// Relays until both directions end. `client_pre` and `backend_pre` are bytes each side
/// sent that were read along with the HTTP upgrade; they go out first. When `stop`
/// resolves both sides get its close code at their next frame boundary.
///
/// The returned future is the whole per-connection state of a relay; it is kept small
/// (no async-fn frames around it) because 9,000 idle sockets hold 9,000 of them.
pub fn run<C, B>(
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
        to_backend: Pump {
            on_source_end: C::RESET_IS_GOING_AWAY.then_some((code::GOING_AWAY, "client went away")),
            ..Pump::new(Toward::Backend, client_pre)
        },
        to_client: Pump {
            on_source_end: Some((code::BACKEND_GONE, "backend went away")),
            ..Pump::new(Toward::Client, backend_pre)
        },
        stop_signal: Some(StopSignal::new(Box::pin(stop))),
        close_timeout: config.close_timeout,
        deadline: None,
        reason: None,
        timed_out: false,
        timers: Timers::new(&config),
        budget: config.budget,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toward {
    Client,
    Backend,
}

/// The first notable thing a direction saw.
#[derive(Debug, Clone, Copy)]
enum Event {
    PassedClose,
    ReadEof,
    ReadError,
    WriteError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Forward,
    Inject,
    Shutdown,
    /// Pass a reset on: the sink is reset rather than shut down.
    Reset,
    Discard,
    Done,
}

/// One direction: read from the source, write to the sink.
struct Pump {
    toward: Toward,
    /// Bytes read but not yet written (`buf[pos..]`): empty, and unallocated, unless the
    /// sink pushed back.
    buf: Vec<u8>,
    pos: usize,
    frames: FrameCursor,
    state: State,
    need_flush: bool,
    bytes: u64,
    /// The source ended (EOF or error): what to do once the buffer is written out.
    read_ended: bool,
    read_failed: bool,
    /// Inject this close code at the next frame boundary.
    stop: Option<(u16, &'static str)>,
    inject: Vec<u8>,
    injected: Option<u16>,
    event: Option<Event>,
    /// The source was reset and the sink has been reset in turn: the whole connection
    /// is over, both ways.
    reset_sent: bool,
    /// A router ping to write toward the sink at the next frame boundary.
    ping_out: Option<Vec<u8>>,
    /// The router pinged the source with this token: its pong is taken out of the
    /// stream, never passed on.
    pong_token: Option<[u8; 8]>,
    /// That pong has come.
    pong_seen: bool,
    /// The start of what may be that pong, read but not yet all here.
    pong_partial: Vec<u8>,
    /// The source ending without a close frame (EOF or reset) is passed on as this
    /// close frame (then FIN), not as a FIN or a reset. Dropped once a close has passed
    /// either way.
    on_source_end: Option<(u16, &'static str)>,
    /// What this direction holds above 16 KiB, as counted against the read budget.
    charged: u32,
    /// The source sent a frame no extension makes valid; nothing more of it is passed,
    /// and once every held byte is written (they end at a frame boundary) the sink gets
    /// the router's close.
    violated: bool,
}

impl Pump {
    fn new(toward: Toward, pre: Bytes) -> Self {
        Self {
            toward,
            buf: pre.to_vec(),
            pos: 0,
            frames: FrameCursor::default(),
            state: State::Forward,
            need_flush: false,
            bytes: 0,
            read_ended: false,
            read_failed: false,
            stop: None,
            inject: Vec::new(),
            injected: None,
            event: None,
            reset_sent: false,
            ping_out: None,
            pong_token: None,
            pong_seen: false,
            pong_partial: Vec::new(),
            on_source_end: None,
            charged: 0,
            violated: false,
        }
    }

    /// Counts what this direction holds now (its own buffer and what `queued` bytes
    /// its sink has yet to send) against the budget.
    fn settle(&mut self, budget: &ReadBudget, queued: usize) {
        self.charged = budget.settle(self.charged, self.buf.len() - self.pos + queued);
    }

    /// Something waits for the next frame boundary: a close or a ping.
    fn want_boundary(&self) -> bool {
        self.stop.is_some() || self.ping_out.is_some()
    }

    /// At a frame boundary: the pending ping goes out first, then what was held.
    fn start_ping(&mut self) {
        if let Some(ping) = self.ping_out.take() {
            let mut next = ping;
            next.extend_from_slice(&self.buf[self.pos..]);
            self.buf = next;
            self.pos = 0;
        }
    }

    /// Takes the router's pong out of freshly read `data` (the source's bytes, nothing
    /// held before them), or keeps the start of a pong that is not all here yet.
    fn strip_pong(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        let Some(token) = self.pong_token else {
            return data;
        };
        match find_pong(&self.frames, &data, &token) {
            PongScan::Found { at, len } => {
                self.pong_seen = true;
                self.pong_token = None;
                data.drain(at..at + len);
            }
            PongScan::Partial { at } => self.pong_partial = data.split_off(at),
            PongScan::Absent => {}
        }
        data
    }

    /// Freshly read `data` as far as it may be passed on: up to a frame header no
    /// extension makes valid, if there is one. The rest is dropped; once what comes
    /// before it is written, this direction ends with the router's close at that
    /// boundary (and the offender hears 1002, see [`Relay::protocol_error`]).
    fn passable<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        match self.frames.violation_at(data) {
            None => data,
            Some(at) => {
                self.violated = true;
                &data[..at]
            }
        }
    }

    /// `data` has reached the sink: follow its frames and count it.
    fn wrote(&mut self, data: &[u8]) {
        let had_close = self.frames.passed_close();
        self.frames.advance(data);
        if !had_close && self.frames.passed_close() {
            self.note(Event::PassedClose);
        }
        self.bytes += data.len() as u64;
        self.need_flush = true;
    }

    /// Writes freshly read `data` (in the scratch buffer) straight to the sink; whatever
    /// it does not take now is kept in `buf`. With a stop pending, everything is kept, so
    /// the one careful path above finds the frame boundary.
    fn forward<W>(&mut self, cx: &mut Context<'_>, mut dst: Pin<&mut W>, data: &[u8])
    where
        W: AsyncWrite + ?Sized,
    {
        let mut done = 0;
        while !self.want_boundary() && done < data.len() {
            match dst.as_mut().poll_write(cx, &data[done..]) {
                Poll::Ready(Ok(w)) if w > 0 => {
                    self.wrote(&data[done..done + w]);
                    done += w;
                }
                Poll::Ready(_) => {
                    self.note(Event::WriteError);
                    self.state = State::Done;
                    return;
                }
                Poll::Pending => break,
            }
        }
        if done < data.len() {
            self.buf = data[done..].to_vec();
            self.pos = 0;
        }
    }

    fn note(&mut self, e: Event) {
        self.event.get_or_insert(e);
    }

    /// Past plain forwarding: a close is under way in this direction.
    fn closing(&self) -> bool {
        self.state != State::Forward
            || self.read_ended
            || self.stop.is_some()
            || self.frames.passed_close()
    }

    fn begin_inject(&mut self, code: u16, reason: &str) {
        // A close already went through (the peers are mid-handshake) or boundaries are
        // unknown: a close frame now would be a protocol error, so only FIN.
        if self.frames.passed_close() || !self.frames.at_boundary() {
            self.state = State::Shutdown;
            return;
        }
        let mask = match self.toward {
            Toward::Client => None,
            // Masking toward a server is mandatory; the key need not be secret here, only
            // varied.
            Toward::Backend => Some(fastrand::u32(..).to_ne_bytes()),
        };
        self.inject = close_frame(code, reason, mask);
        self.injected = Some(code);
        self.state = State::Inject;
    }

    /// Runs this direction until it is done (`Ready`) or must wait (`Pending`): one
    /// method per state, each returning `Ready(())` when it made progress or changed
    /// state (so the loop goes on) and `Pending` when it has to wait.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        read_size: usize,
    ) -> Poll<()>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + Peer + Unpin + ?Sized,
    {
        loop {
            let step = match self.state {
                State::Forward if self.pos < self.buf.len() => {
                    self.poll_write_held(cx, dst.as_mut())
                }
                State::Forward if self.violated && self.stop.is_none() => {
                    // What came before the violation is out: close here, never read on.
                    self.stop = Some(match self.toward {
                        Toward::Backend => {
                            (code::GOING_AWAY, "client broke the WebSocket protocol")
                        }
                        Toward::Client => {
                            (code::BACKEND_GONE, "backend broke the WebSocket protocol")
                        }
                    });
                    Poll::Ready(())
                }
                State::Forward => self.poll_forward(cx, src.as_mut(), dst.as_mut(), read_size),
                State::Inject => self.poll_inject(cx, dst.as_mut()),
                State::Reset => {
                    dst.as_mut().get_mut().reset();
                    self.reset_sent = true;
                    self.state = State::Done;
                    Poll::Ready(())
                }
                State::Shutdown => {
                    // An error here means the peer is already gone, which is where we
                    // were heading anyway.
                    let _ = ready!(dst.as_mut().poll_shutdown(cx));
                    self.state = if self.read_ended {
                        State::Done
                    } else {
                        State::Discard
                    };
                    Poll::Ready(())
                }
                State::Discard => self.poll_discard(cx, src.as_mut()),
                State::Done => return Poll::Ready(()),
            };
            ready!(step);
        }
    }

    /// Forward, with bytes held back: write them first (up to the next frame boundary
    /// when a stop is pending, where the close frame goes).
    fn poll_write_held<W>(&mut self, cx: &mut Context<'_>, mut dst: Pin<&mut W>) -> Poll<()>
    where
        W: AsyncWrite + ?Sized,
    {
        let avail = &self.buf[self.pos..];
        let n = if self.want_boundary() {
            match self.frames.bytes_to_boundary(avail) {
                Some(0) => {
                    match self.stop {
                        Some((code, reason)) => self.begin_inject(code, reason),
                        None => self.start_ping(),
                    }
                    return Poll::Ready(());
                }
                Some(n) => n,
                None => avail.len(),
            }
        } else {
            avail.len()
        };
        match ready!(dst.as_mut().poll_write(cx, &avail[..n])) {
            Ok(w) if w > 0 => {
                let (pos, buf) = (self.pos, std::mem::take(&mut self.buf));
                self.wrote(&buf[pos..pos + w]);
                self.buf = buf;
                self.pos += w;
                if self.pos == self.buf.len() {
                    // Written out: give the memory back while idle.
                    self.buf = Vec::new();
                    self.pos = 0;
                }
            }
            _ => {
                self.note(Event::WriteError);
                self.state = State::Done;
            }
        }
        Poll::Ready(())
    }

    /// Forward, nothing held back: mirror an ended source, start a pending stop at a
    /// boundary, or read and pass on what comes (flushing before waiting).
    fn poll_forward<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        read_size: usize,
    ) -> Poll<()>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.read_ended {
            // The source ended its connection without a close frame: tell the sink
            // with a close of the router's own, or end its connection the same way.
            self.state = if let Some((code, reason)) = self.on_source_end {
                self.begin_inject(code, reason);
                self.state
            } else if self.read_failed {
                State::Reset
            } else {
                State::Shutdown
            };
            return Poll::Ready(());
        }
        if let Some((code, reason)) = self.stop {
            if self.frames.at_boundary() || self.frames.desynced() {
                self.begin_inject(code, reason);
                return Poll::Ready(());
            }
        } else if self.ping_out.is_some() {
            if self.frames.desynced() {
                // Boundaries are unknown: a ping now could land inside a frame.
                self.ping_out = None;
            } else if self.frames.at_boundary() {
                self.start_ping();
                return Poll::Ready(());
            }
        }
        let read = SCRATCH.with_borrow_mut(|scratch| {
            let size = read_size.min(scratch.len());
            let mut rb = ReadBuf::new(&mut scratch[..size]);
            let r = src.as_mut().poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match r {
                Poll::Ready(Ok(())) if n > 0 => {
                    if self.pong_token.is_some() || !self.pong_partial.is_empty() {
                        // Once per ping: copy, so the pong can be cut out.
                        let mut data = std::mem::take(&mut self.pong_partial);
                        data.extend_from_slice(&scratch[..n]);
                        let data = self.strip_pong(data);
                        let data = self.passable(&data);
                        self.forward(cx, dst.as_mut(), data);
                    } else {
                        let data = self.passable(&scratch[..n]);
                        self.forward(cx, dst.as_mut(), data);
                    }
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(r) => Poll::Ready(r.map(|()| 0)),
                Poll::Pending => Poll::Pending,
            }
        });
        match read {
            Poll::Ready(Ok(0)) => {
                self.note(Event::ReadEof);
                self.read_ended = true;
                // A partial frame at the end is passed on as it came.
                if !self.pong_partial.is_empty() {
                    self.buf = std::mem::take(&mut self.pong_partial);
                    self.pos = 0;
                }
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => self.read_error(&e),
            Poll::Pending => return self.poll_flush_then_wait(cx, dst),
        }
        Poll::Ready(())
    }

    fn read_error(&mut self, e: &io::Error) {
        self.read_ended = true;
        // A TLS peer that closes TCP without close_notify is common (browsers do it);
        // that is a hang-up, not a failure.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.note(Event::ReadEof);
        } else {
            self.read_failed = true;
            self.note(Event::ReadError);
        }
    }

    /// Nothing to read: flush what was written since the last flush, then wait.
    fn poll_flush_then_wait<W>(&mut self, cx: &mut Context<'_>, mut dst: Pin<&mut W>) -> Poll<()>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.need_flush {
            match dst.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(_)) => {
                    self.note(Event::WriteError);
                    self.state = State::Done;
                    return Poll::Ready(());
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Writes the router's close frame, flushes, then shuts the sink down.
    fn poll_inject<W>(&mut self, cx: &mut Context<'_>, mut dst: Pin<&mut W>) -> Poll<()>
    where
        W: AsyncWrite + ?Sized,
    {
        while !self.inject.is_empty() {
            match ready!(dst.as_mut().poll_write(cx, &self.inject)) {
                Ok(w) if w > 0 => {
                    self.inject.drain(..w);
                }
                _ => {
                    self.note(Event::WriteError);
                    self.state = State::Done;
                    return Poll::Ready(());
                }
            }
        }
        self.state = match ready!(dst.as_mut().poll_flush(cx)) {
            Ok(()) => State::Shutdown,
            Err(_) => {
                self.note(Event::WriteError);
                State::Done
            }
        };
        Poll::Ready(())
    }

    /// After the router's close, anything more from the source is moot; read it so its
    /// sender sees its close handshake complete, until it hangs up.
    fn poll_discard<R>(&mut self, cx: &mut Context<'_>, mut src: Pin<&mut R>) -> Poll<()>
    where
        R: AsyncRead + ?Sized,
    {
        let read = SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(scratch);
            ready!(src.as_mut().poll_read(cx, &mut rb))?;
            Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
        });
        match ready!(read) {
            Ok(n) if n > 0 => {}
            _ => {
                self.read_ended = true;
                self.state = State::Done;
            }
        }
        Poll::Ready(())
    }
}

/// The router's stop signal, polled only when it has woken the relay (and once at the
/// start, to register). Polling it takes the lock of the drain's `Notify`, which every
/// relay shares, and a relay is polled for every read and write: under load that was a
/// lock taken per message, bouncing between the I/O threads.
struct StopSignal {
    future: Pin<Box<dyn Future<Output = Stop> + Send>>,
    wake: Arc<StopWake>,
    /// `wake` as a waker, made once.
    waker: Waker,
}

/// Set by the stop future's waker: the future has something to say, and the relay is
/// woken to poll it.
struct StopWake {
    fired: AtomicBool,
    relay: AtomicWaker,
}

impl Wake for StopWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.relay.wake();
    }
}

impl StopSignal {
    fn new(future: Pin<Box<dyn Future<Output = Stop> + Send>>) -> Self {
        let wake = Arc::new(StopWake {
            fired: AtomicBool::new(true),
            relay: AtomicWaker::new(),
        });
        Self {
            future,
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        // Cheap when the relay's waker is the same as last time (it is, for a task).
        self.wake.relay.register(cx.waker());
        if !self.wake.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.future
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }
}

/// A running relay; see [`run`].
pub struct Relay<C, B> {
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
            p.stop.get_or_insert((why.code, why.reason));
        }
    }

    /// A peer sent a frame no extension makes valid: its direction already stops at
    /// that frame (the other peer hears 1001, or 1011 from a broken backend); the
    /// offender gets 1002, protocol error, unless a close is already under way.
    fn protocol_error(&mut self) {
        let closing = self.close_passed();
        let (reason, offender) = if self.to_backend.violated {
            (CloseReason::ClientProtocolError, &mut self.to_client)
        } else if self.to_client.violated {
            (CloseReason::BackendProtocolError, &mut self.to_backend)
        } else {
            return;
        };
        if offender.stop.is_some() || offender.state != State::Forward {
            return;
        }
        if !closing {
            offender.stop = Some((code::PROTOCOL_ERROR, "protocol error"));
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
            self.to_client.on_source_end = None;
        }
        if !self.close_passed() {
            return;
        }
        for p in [&mut self.to_backend, &mut self.to_client] {
            // A violated source is never read again: its stop ends this direction (with
            // FIN alone, since a close has passed).
            if p.state == State::Forward && p.stop.is_some() && !p.violated {
                p.stop = None;
            }
            p.on_source_end = None;
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
            sent_to_client: self.to_client.injected,
            sent_to_backend: self.to_backend.injected,
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
        for pump in [&self.to_backend, &self.to_client] {
            self.budget.settle(pump.charged, 0);
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
            if let Poll::Ready(why) = signal.poll(cx) {
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

/// The relay's clocks, each only when configured (an idle relay holds just the ones it
/// uses): idle, age and pings. Checked when the relay is polled; each sleep wakes it.
struct Timers {
    idle: Option<Box<Idle>>,
    age: Option<Pin<Box<Sleep>>>,
    client_ping: Option<Box<Pinger>>,
    backend_ping: Option<Box<Pinger>>,
}

/// The idle timeout, checked four times per period against the data frames counted so
/// far: a socket closes between one and one and a quarter periods after its last data.
struct Idle {
    check: Pin<Box<Sleep>>,
    every: Duration,
    frames: u64,
    quiet_checks: u8,
}

/// Pings toward one peer: each interval a ping (at a frame boundary), and the peer's
/// pong due within the timeout.
struct Pinger {
    ping: Ping,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
    sent: u64,
}

impl Timers {
    fn new(c: &RelayConfig) -> Self {
        let sleep = |d: Duration| Box::pin(tokio::time::sleep(d));
        let pinger = |p: Ping| {
            Box::new(Pinger {
                ping: p,
                sleep: sleep(p.interval),
                waiting: false,
                sent: 0,
            })
        };
        Self {
            idle: c.idle_timeout.map(|t| {
                let every = t / 4;
                Box::new(Idle {
                    check: sleep(every),
                    every,
                    frames: 0,
                    quiet_checks: 0,
                })
            }),
            age: c.max_age.map(sleep),
            client_ping: c.client_ping.map(pinger),
            backend_ping: c.backend_ping.map(pinger),
        }
    }

    /// Runs the clocks: a stop when one says the socket is done; pings queued as due.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        to_client: &mut Pump,
        to_backend: &mut Pump,
    ) -> Option<Stop> {
        if let Some(age) = self.age.as_mut() {
            if age.as_mut().poll(cx).is_ready() {
                self.age = None;
                return Some(Stop::MAX_AGE);
            }
        }
        if let Some(idle) = self.idle.as_mut() {
            let frames = to_client.frames.data_frames() + to_backend.frames.data_frames();
            while idle.check.as_mut().poll(cx).is_ready() {
                if frames != idle.frames {
                    idle.frames = frames;
                    idle.quiet_checks = 0;
                } else {
                    idle.quiet_checks += 1;
                }
                if idle.quiet_checks >= 4 {
                    self.idle = None;
                    return Some(Stop::IDLE);
                }
                let next = tokio::time::Instant::now() + idle.every;
                idle.check.as_mut().reset(next);
            }
        }
        // Pinging the client: the ping goes toward it, its pong comes back the other way.
        if let Some(p) = self.client_ping.as_mut() {
            if p.poll(cx, to_client, to_backend) {
                self.client_ping = None;
                return Some(Stop::PING_TIMEOUT);
            }
        }
        if let Some(p) = self.backend_ping.as_mut() {
            if p.poll(cx, to_backend, to_client) {
                self.backend_ping = None;
                return Some(Stop::PING_TIMEOUT);
            }
        }
        None
    }
}

impl Pinger {
    /// True when the peer did not answer in time.
    fn poll(&mut self, cx: &mut Context<'_>, sink: &mut Pump, source: &mut Pump) -> bool {
        if std::mem::take(&mut source.pong_seen) {
            self.waiting = false;
            let next = tokio::time::Instant::now() + self.ping.interval;
            self.sleep.as_mut().reset(next);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.waiting {
            return true;
        }
        // Once a close is under way, pings would only get in its way.
        if sink.closing() || source.closing() {
            return false;
        }
        self.sent += 1;
        let token = fastrand::u64(..).to_ne_bytes();
        let mask = match sink.toward {
            Toward::Client => None,
            Toward::Backend => Some(fastrand::u32(..).to_ne_bytes()),
        };
        sink.ping_out = Some(ping_frame(token, mask));
        source.pong_token = Some(token);
        self.waiting = true;
        let next = tokio::time::Instant::now() + self.ping.timeout;
        self.sleep.as_mut().reset(next);
        cx.waker().wake_by_ref();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::relay::test_frames::{client_frame, close_code, server_frame};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::sync::CancellationToken;

    const CFG: RelayConfig = RelayConfig {
        close_timeout: Duration::from_secs(5),
        idle_timeout: None,
        max_age: None,
        client_ping: None,
        backend_ping: None,
        budget: &bulk::BUDGET,
    };

    struct Ends {
        client: DuplexStream,
        backend: DuplexStream,
        relay: tokio::task::JoinHandle<RelayReport>,
        drain: CancellationToken,
    }

    fn start(client_pre: &[u8], backend_pre: &[u8]) -> Ends {
        let (client, relay_client) = duplex(64 * 1024);
        let (backend, relay_backend) = duplex(64 * 1024);
        let drain = CancellationToken::new();
        let d = drain.clone();
        let (cp, bp) = (
            Bytes::copy_from_slice(client_pre),
            Bytes::copy_from_slice(backend_pre),
        );
        let relay = tokio::spawn(async move {
            let stop = async move {
                d.cancelled().await;
                Stop::SHUTDOWN
            };
            run(relay_client, relay_backend, cp, bp, stop, CFG).await
        });
        Ends {
            client,
            backend,
            relay,
            drain,
        }
    }

    /// A sink that takes 256 bytes at a time makes the relay hold bytes back; they arrive
    /// whole and in order, and once written out the held-back buffer is freed.
    #[tokio::test]
    async fn backpressure_keeps_order_and_frees_the_buffer_after() {
        let (mut client, relay_client) = duplex(64 * 1024);
        let (mut backend, relay_backend) = duplex(256);
        let stop = std::future::pending::<Stop>();
        let mut relay = run(
            relay_client,
            relay_backend,
            Bytes::new(),
            Bytes::new(),
            stop,
            CFG,
        );
        let mut sent = Vec::new();
        for i in 0..2_000u32 {
            let payload: Vec<u8> = (0..100u32).map(|j| (i * 31 + j) as u8).collect();
            sent.extend(client_frame(0x2, &payload));
        }
        let n = sent.len();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            (client, sent)
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; n];
            backend.read_exact(&mut got).await.unwrap();
            (backend, got)
        });
        let (_backend, got) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                _ = &mut relay => panic!("the relay ended early"),
                r = reader => r.unwrap(),
            }
        })
        .await
        .expect("all bytes relayed in time");
        let (_client, sent) = writer.await.unwrap();
        assert!(got == sent, "bytes differ");
        assert_eq!(relay.to_backend.bytes, n as u64);
        assert_eq!(relay.to_backend.buf.capacity(), 0, "buffer kept while idle");
        assert_eq!(relay.to_client.buf.capacity(), 0);
    }

    /// The client sends close 1000; the backend receives it unchanged.
    async fn client_close_reaches_backend(e: &mut Ends) {
        let close = client_frame(8, &1000u16.to_be_bytes());
        e.client.write_all(&close).await.unwrap();
        let mut got = vec![0u8; close.len()];
        e.backend.read_exact(&mut got).await.unwrap();
        assert_eq!(got, close);
    }

    async fn read_all(s: &mut DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("peer saw EOF in time")
            .expect("read");
        out
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_pre_read_bytes_go_first() {
        let mut e = start(&client_frame(1, b"early"), &server_frame(1, b"first"));
        let later = server_frame(2, b"later");
        e.backend.write_all(&later).await.unwrap();
        let mut got = vec![0u8; 7 + later.len()];
        e.client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..7], &server_frame(1, b"first")[..]);
        assert_eq!(&got[7..], &later[..]);
        let mut early = vec![0u8; 11];
        e.backend.read_exact(&mut early).await.unwrap();
        assert_eq!(early, client_frame(1, b"early"));
        // A clean close handshake: client close passes, backend's reply passes, EOFs.
        let close = client_frame(8, &1000u16.to_be_bytes());
        e.client.write_all(&close).await.unwrap();
        let reply = server_frame(8, &1000u16.to_be_bytes());
        e.backend.write_all(&reply).await.unwrap();
        e.backend.shutdown().await.unwrap();
        // The backend's FIN reaches the client after the reply; the client hangs up in
        // turn, and only then does the backend see EOF: the relay stays transparent.
        let to_client = read_all(&mut e.client).await;
        assert_eq!(to_client, reply, "no extra close was injected");
        e.client.shutdown().await.unwrap();
        let to_backend = read_all(&mut e.backend).await;
        assert_eq!(to_backend, close);
        let r = e.relay.await.unwrap();
        assert_eq!(r.reason, CloseReason::ClientClosed);
        assert_eq!(
            (r.client_close_code, r.backend_close_code),
            (Some(1000), Some(1000))
        );
        assert_eq!((r.sent_to_client, r.sent_to_backend), (None, None));
        assert_eq!(r.bytes_from_client, 11 + close.len() as u64);
        assert_eq!(
            r.bytes_from_backend,
            7 + later.len() as u64 + reply.len() as u64
        );
    }

    /// The backend hangs up without a close frame: the client gets its data, then the
    /// router's close 1011 (the upstream failed), then EOF, so it can tell a failed
    /// backend from a network that dropped it (1006).
    #[tokio::test]
    async fn backend_gone_is_a_1011_to_the_client() {
        let mut e = start(b"", b"");
        e.backend
            .write_all(&server_frame(1, b"tick"))
            .await
            .unwrap();
        drop(e.backend);
        let got = read_all(&mut e.client).await;
        let mut want = server_frame(1, b"tick");
        want.extend(close_frame(1011, "backend went away", None));
        assert_eq!(got, want);
        drop(e.client);
        let r = e.relay.await.unwrap();
        assert_eq!(r.reason, CloseReason::BackendGone);
        assert_eq!((r.sent_to_client, r.sent_to_backend), (Some(1011), None));
    }

    /// A socket whose end reads as a reset (ECONNRESET), as a killed peer's may.
    struct ResetAtEnd(DuplexStream);

    impl AsyncRead for ResetAtEnd {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for ResetAtEnd {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Peer for ResetAtEnd {
        fn reset(&mut self) {}
    }

    /// A backend reset is a 1011 too, then FIN: the client's connection is not reset.
    #[tokio::test]
    async fn backend_reset_is_a_1011_to_the_client() {
        let (mut client, relay_client) = duplex(64 * 1024);
        let (backend, relay_backend) = duplex(64 * 1024);
        let relay = tokio::spawn(run(
            relay_client,
            ResetAtEnd(relay_backend),
            Bytes::new(),
            Bytes::new(),
            std::future::pending(),
            CFG,
        ));
        drop(backend);
        let got = read_all(&mut client).await;
        assert_eq!(got, close_frame(1011, "backend went away", None));
        drop(client);
        let r = relay.await.unwrap();
        assert_eq!(r.reason, CloseReason::BackendError);
        assert_eq!(r.sent_to_client, Some(1011));
    }

    /// Once the client's close has passed, a backend that hangs up gets the client only
    /// a FIN: the peers were already closing, and the router adds nothing.
    #[tokio::test]
    async fn backend_gone_after_a_client_close_adds_nothing() {
        let mut e = start(b"", b"");
        client_close_reaches_backend(&mut e).await;
        drop(e.backend);
        let to_client = read_all(&mut e.client).await;
        assert!(to_client.is_empty(), "the router sent {to_client:?}");
        drop(e.client);
        assert_eq!(e.relay.await.unwrap().sent_to_client, None);
    }

    /// Autobahn 7.3.6 against a strict server: the client's close frame is too long for
    /// a control frame, the server resets. The client began the close: the router adds
    /// no 1011, the reset is passed on as it came.
    #[tokio::test]
    async fn a_bad_client_close_then_a_backend_reset_adds_nothing() {
        let mut e = start(b"", b"");
        let mut bad_close = vec![0x88, 0xFE, 0x00, 0x7E, 1, 2, 3, 4];
        bad_close.extend(std::iter::repeat_n(0x55, 126));
        e.client.write_all(&bad_close).await.unwrap();
        let mut got = vec![0u8; bad_close.len()];
        e.backend.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bad_close, "passed on as it came");
        drop(e.backend);
        let to_client = read_all(&mut e.client).await;
        assert!(to_client.is_empty(), "the router sent {to_client:?}");
        drop(e.client);
        let r = e.relay.await.unwrap();
        assert_eq!(r.sent_to_client, None);
        assert_eq!(r.reason, CloseReason::ClientClosed);
    }

    /// A client frame the router cannot follow (a reserved opcode an extension might
    /// define), then the backend drops: that is the backend answering it, and the
    /// client sees the drop, not a 1011.
    #[tokio::test]
    async fn a_backend_drop_after_an_unfollowable_client_frame_adds_nothing() {
        let mut e = start(b"", b"");
        let odd = client_frame(0x3, b"x");
        e.client.write_all(&odd).await.unwrap();
        let mut got = vec![0u8; odd.len()];
        e.backend.read_exact(&mut got).await.unwrap();
        drop(e.backend);
        let to_client = read_all(&mut e.client).await;
        assert!(to_client.is_empty(), "the router sent {to_client:?}");
        drop(e.client);
        assert_eq!(e.relay.await.unwrap().sent_to_client, None);
    }

    #[tokio::test]
    async fn backend_gone_mid_frame_gets_the_client_only_fin() {
        let mut e = start(b"", b"");
        let f = server_frame(2, b"0123456789");
        e.backend.write_all(&f[..6]).await.unwrap();
        drop(e.backend);
        let got = read_all(&mut e.client).await;
        assert_eq!(got, &f[..6], "no close frame inside a frame");
        drop(e.client);
        assert_eq!(e.relay.await.unwrap().sent_to_client, None);
    }

    #[tokio::test]
    async fn client_gone_is_passed_on_as_eof() {
        let mut e = start(b"", b"");
        drop(e.client);
        let got = read_all(&mut e.backend).await;
        assert!(got.is_empty(), "the router sent the backend {got:?}");
        drop(e.backend);
        let r = e.relay.await.unwrap();
        assert_eq!(
            (r.reason, r.sent_to_backend),
            (CloseReason::ClientGone, None)
        );
    }

    /// The stop signal is polled once to register, and again only when it wakes the
    /// relay: not on every read and write (it takes a lock every relay shares).
    #[tokio::test]
    async fn the_stop_signal_is_polled_only_when_it_wakes() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let drain = tokio_util::sync::CancellationToken::new();
        let stop = {
            let (polls, drain) = (polls.clone(), drain.clone());
            let mut wait = Box::pin(drain.cancelled_owned());
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                wait.as_mut().poll(cx).map(|()| Stop::SHUTDOWN)
            })
        };
        let (mut client, relay_client) = duplex(64 * 1024);
        let (mut backend, relay_backend) = duplex(64 * 1024);
        let relay = tokio::spawn(run(
            relay_client,
            relay_backend,
            Bytes::new(),
            Bytes::new(),
            stop,
            CFG,
        ));
        for i in 0..100u8 {
            let f = client_frame(2, &[i; 10]);
            client.write_all(&f).await.unwrap();
            let mut got = vec![0u8; f.len()];
            backend.read_exact(&mut got).await.unwrap();
            let f = server_frame(2, &[i; 10]);
            backend.write_all(&f).await.unwrap();
            let mut got = vec![0u8; f.len()];
            client.read_exact(&mut got).await.unwrap();
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");
        drain.cancel();
        let mut to_client = Vec::new();
        let mut buf = [0u8; 64];
        while close_code(&to_client).is_none() {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "no close frame came");
            to_client.extend_from_slice(&buf[..n]);
        }
        assert_eq!(close_code(&to_client), Some(1001));
        assert_eq!(polls.load(Ordering::Relaxed), 2, "and once when it woke");
        drop((client, backend));
        relay.await.unwrap();
    }

    /// A close frame passed, then both peers go silent: the close timeout starts at the
    /// close frame and ends the relay.
    #[tokio::test(start_paused = true)]
    async fn a_close_handshake_that_never_finishes_is_bounded() {
        let mut e = start(b"", b"");
        client_close_reaches_backend(&mut e).await;
        let r = tokio::time::timeout(CFG.close_timeout * 2, &mut e.relay)
            .await
            .expect("the relay ended within the close timeout")
            .unwrap();
        assert!(r.timed_out);
        assert_eq!(r.reason, CloseReason::ClientClosed);
        assert_eq!((r.sent_to_client, r.sent_to_backend), (None, None));
    }

    /// A drain that begins once the peers are already closing adds no close frame of
    /// its own.
    #[tokio::test]
    async fn drain_during_a_close_handshake_adds_nothing() {
        let mut e = start(b"", b"");
        let close = server_frame(8, &1000u16.to_be_bytes());
        e.backend.write_all(&close).await.unwrap();
        let mut got = vec![0u8; close.len()];
        e.client.read_exact(&mut got).await.unwrap();
        e.drain.cancel();
        let reply = client_frame(8, &1000u16.to_be_bytes());
        e.client.write_all(&reply).await.unwrap();
        e.client.shutdown().await.unwrap();
        let to_backend = read_all(&mut e.backend).await;
        assert_eq!(
            to_backend, reply,
            "only the client's own close reached the backend"
        );
        drop(e.backend);
        let to_client = read_all(&mut e.client).await;
        assert!(to_client.is_empty(), "{to_client:?}");
        let r = e.relay.await.unwrap();
        assert_eq!((r.sent_to_client, r.sent_to_backend), (None, None));
    }

    #[tokio::test]
    async fn drain_finishes_the_frame_in_flight_then_closes_both_sides_with_1001() {
        let mut e = start(b"", b"");
        let f = server_frame(2, b"0123456789");
        e.backend.write_all(&f[..5]).await.unwrap();
        // Wait until the first half reached the client, so the drain starts mid-frame.
        let mut half = [0u8; 5];
        e.client.read_exact(&mut half).await.unwrap();
        e.drain.cancel();
        tokio::task::yield_now().await;
        e.backend.write_all(&f[5..]).await.unwrap();
        // The frame completes, then the close; then the router hangs up.
        let mut rest = read_all(&mut e.client).await;
        assert_eq!(&rest[..f.len() - 5], &f[5..]);
        let close = rest.split_off(f.len() - 5);
        assert_eq!(close_code(&close), Some(1001));
        let to_backend = read_all(&mut e.backend).await;
        assert_eq!(close_code(&to_backend), Some(1001));
        drop((e.client, e.backend));
        let r = e.relay.await.unwrap();
        assert_eq!(r.reason, CloseReason::Shutdown);
        assert_eq!(
            (r.sent_to_client, r.sent_to_backend),
            (Some(1001), Some(1001))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_finishes_is_cut_off_after_close_timeout() {
        let e = start(b"", b"");
        // The client hangs up; the backend neither reads nor closes.
        drop(e.client);
        let r = tokio::time::timeout(CFG.close_timeout * 2, e.relay)
            .await
            .expect("relay ended")
            .unwrap();
        assert!(r.timed_out);
        assert_eq!(r.reason, CloseReason::ClientGone);
        drop(e.backend);
    }
}

#[cfg(test)]
mod ping_tests {
    use super::*;
    use crate::data::relay::test_frames::{client_frame, close_code};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    /// A relay between two in-memory pipes, never asked to stop: the test's client end,
    /// its backend end, and the relay's task.
    fn relay_with(
        config: RelayConfig,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<RelayReport>,
    ) {
        let (client, relay_client) = duplex(64 * 1024);
        let (backend, relay_backend) = duplex(64 * 1024);
        let relay = tokio::spawn(run(
            relay_client,
            relay_backend,
            Bytes::new(),
            Bytes::new(),
            std::future::pending(),
            config,
        ));
        (client, backend, relay)
    }

    /// Pinging the client every 30 s, its pong due within 10 s.
    fn pinging_the_client() -> RelayConfig {
        RelayConfig {
            client_ping: Some(Ping {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(10),
            }),
            ..RelayConfig::closing_within(Duration::from_secs(5))
        }
    }

    /// The router's ping reaches the client at a frame boundary; the client's pong,
    /// even split over two writes and followed by data, is taken out of the stream; a
    /// pong the router did not ask for passes.
    #[tokio::test(start_paused = true)]
    async fn our_pong_is_consumed_however_it_is_split() {
        let (mut client, mut backend, relay) = relay_with(pinging_the_client());
        // A backend frame in flight when the interval passes: the ping comes after it.
        backend
            .write_all(&[0x81, 0x03, b'a', b'b', b'c'])
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        let mut got = [0u8; 5 + 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..5], &[0x81, 0x03, b'a', b'b', b'c']);
        assert_eq!(
            &got[5..7],
            &[0x89, 0x08],
            "an unmasked ping with an 8-byte token"
        );
        let token = &got[7..15];

        let stranger = client_frame(0xA, b"not ours");
        let mut stream = stranger.clone();
        stream.extend(client_frame(0xA, token));
        stream.extend(client_frame(0x1, b"after"));
        // Split inside our pong's header.
        let cut = stranger.len() + 3;
        client.write_all(&stream[..cut]).await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(&stream[cut..]).await.unwrap();
        let mut want = stranger;
        want.extend(client_frame(0x1, b"after"));
        let mut seen = vec![0u8; want.len()];
        backend.read_exact(&mut seen).await.unwrap();
        assert_eq!(
            seen, want,
            "the stranger's pong and the data pass; ours does not"
        );

        // No pong for the next ping: after the timeout, both sides get 1001.
        tokio::time::advance(Duration::from_secs(31)).await;
        let mut ping = [0u8; 10];
        client.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping[0], 0x89);
        tokio::time::advance(Duration::from_secs(11)).await;
        let mut close = [0u8; 2];
        backend.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88);
        drop((client, backend));
        let report = relay.await.unwrap();
        assert_eq!(report.reason, CloseReason::PingTimeout);
        assert_eq!(report.sent_to_backend, Some(code::GOING_AWAY));
    }

    /// A masked frame header claiming 2^64 - 14 bytes of payload: header and payload
    /// added wrap to 0, which once kept the pong search in place for good.
    const WRAPPING_HEADER: [u8; 14] = [
        0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF2, 1, 2, 3, 4,
    ];

    /// The attack: while the router waits for a pong, a frame whose 64-bit
    /// length has its top bit set. What came before it reaches the backend, then the
    /// backend gets 1001 and the client 1002; the relay ends (it does not spin).
    #[tokio::test(start_paused = true)]
    async fn a_length_past_2_63_is_a_protocol_error_not_a_spin() {
        let (mut client, mut backend, relay) = relay_with(pinging_the_client());
        tokio::time::advance(Duration::from_secs(31)).await;
        let mut ping = [0u8; 10];
        client.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping[..2], [0x89, 0x08]);
        // The router now looks for its pong in everything the client sends.
        let mut attack = client_frame(0x1, b"before");
        attack.extend_from_slice(&WRAPPING_HEADER);
        attack.extend_from_slice(b"whatever follows");
        client.write_all(&attack).await.unwrap();

        let before = client_frame(0x1, b"before");
        let mut seen = vec![0u8; before.len()];
        backend.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, before, "what came before the bad frame passes");
        let mut close = Vec::new();
        backend.read_to_end(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88, "then a close frame, then FIN: {close:?}");
        assert_eq!(close_code(&close), Some(code::GOING_AWAY));
        let mut to_client = Vec::new();
        client.read_to_end(&mut to_client).await.unwrap();
        assert_eq!(close_code(&to_client), Some(code::PROTOCOL_ERROR));
        let report = relay.await.unwrap();
        assert_eq!(report.reason, CloseReason::ClientProtocolError);
        assert_eq!(report.sent_to_client, Some(code::PROTOCOL_ERROR));
        assert_eq!(report.sent_to_backend, Some(code::GOING_AWAY));
    }

    /// The same from the backend, with no ping in flight: the client hears 1011 (its
    /// gateway's upstream failed) and the backend 1002.
    #[tokio::test(start_paused = true)]
    async fn a_backend_length_past_2_63_is_a_1011_to_the_client() {
        let (mut client, mut backend, relay) =
            relay_with(RelayConfig::closing_within(Duration::from_secs(5)));
        let mut bad = vec![0x81, 0x02, b'o', b'k', 0x82, 127, 0x80];
        bad.extend_from_slice(&[0; 7]);
        backend.write_all(&bad).await.unwrap();
        let mut to_client = Vec::new();
        client.read_to_end(&mut to_client).await.unwrap();
        assert_eq!(to_client[..4], [0x81, 0x02, b'o', b'k']);
        assert_eq!(close_code(&to_client[4..]), Some(code::BACKEND_GONE));
        let mut to_backend = Vec::new();
        backend.read_to_end(&mut to_backend).await.unwrap();
        assert_eq!(close_code(&to_backend), Some(code::PROTOCOL_ERROR));
        let report = relay.await.unwrap();
        assert_eq!(report.reason, CloseReason::BackendProtocolError);
    }

    /// A frame for the pong-search properties: any header shape and length class
    /// (7-bit, 16-bit, 64-bit, and 64-bit lengths near 2^63 and 2^64 whose payload is
    /// never sent), masked at random or not, valid or not.
    fn arb_frame() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let len = prop_oneof![
            6 => (0u64..140).boxed(),
            2 => (126u64..70_000).boxed(),
            1 => Just(u64::MAX - 13).boxed(),
            1 => ((1u64 << 63)..=u64::MAX).boxed(),
            1 => ((1u64 << 62)..(1u64 << 63)).boxed(),
        ];
        let opcode = prop_oneof![
            6 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
            1 => 0u8..16,
        ];
        (
            any::<bool>(),
            opcode,
            len,
            any::<Option<[u8; 4]>>(),
            any::<u8>(),
        )
            .prop_map(|(fin, op, len, mask, byte)| {
                let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
                let m = if mask.is_some() { 0x80 } else { 0 };
                // The length's own class, or a wider one than it needs: both are on the wire.
                match len {
                    n if n < 126 && byte % 5 != 0 => f.push(m | n as u8),
                    n if n <= 0xffff && byte % 7 != 0 => {
                        f.push(m | 126);
                        f.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        f.push(m | 127);
                        f.extend_from_slice(&n.to_be_bytes());
                    }
                }
                if let Some(k) = mask {
                    f.extend_from_slice(&k);
                }
                // Only small payloads are sent; a huge claimed one ends the stream.
                if len < 70_000 {
                    f.extend(std::iter::repeat_n(byte, len as usize));
                }
                f
            })
    }

    /// Our pong, masked with any key, or someone else's.
    fn arb_pong(token: [u8; 8]) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        (any::<[u8; 4]>(), any::<bool>()).prop_map(move |(key, ours)| {
            let mut payload = token;
            if !ours {
                payload[0] ^= 1;
            }
            crate::data::relay::test_frames::frame(true, 0xA, &payload, Some(key))
        })
    }

    /// What the pong search should do to a whole stream: take out the first frame at a
    /// boundary that is our pong, looking no further than the first frame that is not
    /// valid; and pass nothing from a frame no extension makes valid on. Returns what
    /// passes, and that header's bytes: a read that ends inside it has passed its
    /// start before it is known to be bad (the sink then gets FIN, not a close).
    fn reference<'s>(stream: &'s [u8], token: &[u8; 8]) -> (Vec<u8>, &'s [u8]) {
        let mut out = Vec::new();
        let mut at = 0;
        let mut searching = true;
        while at < stream.len() {
            let rest = &stream[at..];
            if rest.len() < 2 {
                out.extend_from_slice(rest);
                break;
            }
            let b1 = rest[1];
            let header =
                2 + match b1 & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                } + if b1 & 0x80 != 0 { 4 } else { 0 };
            if rest.len() < header {
                out.extend_from_slice(rest);
                break;
            }
            let len = match b1 & 0x7f {
                126 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
                127 => u64::from_be_bytes(rest[2..10].try_into().unwrap()),
                n => u64::from(n),
            };
            if len >> 63 != 0 {
                return (out, &rest[..header]);
            }
            let (op, fin) = (rest[0] & 0x0f, rest[0] & 0x80 != 0);
            let valid =
                matches!(op, 0 | 1 | 2 | 8 | 9 | 10) && (op & 8 == 0 || (fin && len <= 125));
            let end = (header as u64 + len).min(rest.len() as u64) as usize;
            if !valid {
                // Boundaries unknown: everything passes as it is from here.
                out.extend_from_slice(rest);
                break;
            }
            let ours = searching && op == 0xA && fin && len == 8 && end == header + 8 && {
                let key = if b1 & 0x80 != 0 {
                    [rest[2], rest[3], rest[4], rest[5]]
                } else {
                    [0; 4]
                };
                rest[header..end]
                    .iter()
                    .enumerate()
                    .all(|(i, b)| b ^ key[i % 4] == token[i])
            };
            if ours {
                searching = false;
            } else {
                out.extend_from_slice(&rest[..end]);
            }
            at += end;
        }
        (out, &[])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        /// Any stream (every header shape and length class, random masks, our pong or
        /// a stranger's anywhere), split anywhere across reads: what the relay passes
        /// on is the stream less our first pong, up to any frame no extension makes
        /// valid; and every read's search ends.
        #[test]
        fn the_pong_search_agrees_with_a_reference_however_split(
            token in proptest::prelude::any::<[u8; 8]>(),
            frames in proptest::collection::vec(arb_frame(), 0..8),
            pongs in proptest::collection::vec(arb_pong([7; 8]), 0..3),
            at in proptest::collection::vec(0usize..8, 0..3),
            cuts in proptest::collection::vec(0usize..4096, 0..12),
        ) {
            let mut frames = frames;
            for (p, i) in pongs.into_iter().zip(at) {
                // Re-key the pong to this case's token.
                let mut p = p;
                let ours = p[6] == 7 ^ p[2];
                let mut payload = token;
                if !ours {
                    payload[0] ^= 1;
                }
                for (j, b) in payload.iter().enumerate() {
                    p[6 + j] = b ^ p[2 + j % 4];
                }
                frames.insert(i.min(frames.len()), p);
            }
            let stream = frames.concat();
            let (want, bad_header) = reference(&stream, &token);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut pump = Pump::new(Toward::Backend, Bytes::new());
            pump.pong_token = Some(token);
            let mut out = Vec::new();
            let mut last = 0;
            for cut in cuts {
                if pump.violated || last == cut {
                    continue;
                }
                let mut data = std::mem::take(&mut pump.pong_partial);
                data.extend_from_slice(&stream[last..cut]);
                last = cut;
                let data = if pump.pong_token.is_some() { pump.strip_pong(data) } else { data };
                let passed = pump.passable(&data).to_vec();
                pump.wrote(&passed);
                out.extend_from_slice(&passed);
            }
            out.extend_from_slice(&pump.pong_partial);
            proptest::prop_assert!(out.len() >= want.len(), "{} < {}", out.len(), want.len());
            let (head, leaked) = out.split_at(want.len());
            proptest::prop_assert_eq!(head, &want[..]);
            proptest::prop_assert!(leaked.len() < bad_header.len().max(1));
            proptest::prop_assert_eq!(leaked, &bad_header[..leaked.len()]);
        }
    }
}
