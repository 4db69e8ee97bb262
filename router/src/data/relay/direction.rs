//! One direction of a relay ([`Pump`]): read from the source, write to the sink, and
//! follow the frames written, so that the router's own close or ping goes in at a frame
//! boundary.
//!
//! Reads go into one scratch buffer per worker thread and are written straight on; only
//! what the sink does not take yet is copied into this direction's buffer, which is
//! freed once written out (see the module docs of `pump`).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::relay::bulk::{self, Charge, ReadBudget};
use crate::data::relay::close::{CloseMsg, CloseState};
use crate::data::relay::frame::{FrameCursor, Toward};
use crate::data::relay::peer::Peer;
use crate::data::relay::pings::PingState;

thread_local! {
    /// Where every relay on this worker thread reads into. It is borrowed only for the
    /// length of one `poll_read` and the writes that follow it, never across a wait, and
    /// no reader or writer polled meanwhile can reach another relay. How much of it one
    /// read may use is the budget's call (see `bulk`).
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0u8; bulk::READ_BIG].into_boxed_slice());
}

/// The first notable thing a direction saw.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    PassedClose,
    ReadEof,
    ReadError,
    WriteError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Forward,
    Inject,
    Shutdown,
    /// Pass a reset on: the sink is reset rather than shut down.
    Reset,
    Discard,
    Done,
}

/// One direction: read from the source, write to the sink.
pub(super) struct Pump {
    pub(super) toward: Toward,
    /// Bytes read but not yet written (`buf[pos..]`): empty, and unallocated, unless the
    /// sink pushed back.
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) frames: FrameCursor,
    pub(super) state: State,
    pub(super) need_flush: bool,
    pub(super) bytes: u64,
    /// The source ended (EOF or error): what to do once the buffer is written out.
    pub(super) read_ended: bool,
    pub(super) read_failed: bool,
    pub(super) event: Option<Event>,
    /// The source was reset and the sink has been reset in turn: the whole connection
    /// is over, both ways.
    pub(super) reset_sent: bool,
    /// The router's close toward the sink, and how the source's end is passed on.
    pub(super) close: CloseState,
    /// The router's ping toward the sink, and its pong from the source.
    pub(super) pings: PingState,
    /// What this direction holds above 16 KiB, as counted against the read budget.
    pub(super) charge: Charge,
}

impl Pump {
    /// A direction whose first bytes are `pre`; its source ending without a close frame
    /// gives the sink `on_source_end` (see [`CloseState`]).
    pub(super) fn new(
        toward: Toward,
        pre: Bytes,
        on_source_end: Option<&'static CloseMsg>,
    ) -> Self {
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
            event: None,
            reset_sent: false,
            close: CloseState::new(on_source_end),
            pings: PingState::default(),
            charge: Charge::default(),
        }
    }

    /// Counts what this direction holds now (its own buffer and what `queued` bytes
    /// its sink has yet to send) against the budget.
    #[inline]
    pub(super) fn settle(&mut self, budget: &ReadBudget, queued: usize) {
        self.charge
            .settle(budget, self.buf.len() - self.pos + queued);
    }

    /// Something waits for the next frame boundary: a close or a ping.
    #[inline]
    fn want_boundary(&self) -> bool {
        self.close.pending().is_some() || self.pings.has_out()
    }

    /// At a frame boundary: the pending ping goes out first, then what was held.
    fn start_ping(&mut self) {
        if let Some(ping) = self.pings.take_out() {
            let mut next = ping;
            next.extend_from_slice(&self.buf[self.pos..]);
            self.buf = next;
            self.pos = 0;
        }
    }

    /// Freshly read `data` as far as it may be passed on: up to a frame header no
    /// extension makes valid, if there is one. The rest is dropped; once what comes
    /// before it is written, this direction ends with the router's close at that
    /// boundary (and the offender hears 1002, see `Relay::protocol_error`).
    pub(super) fn passable<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        match self.frames.violation_at(data) {
            None => data,
            Some(at) => {
                self.close.mark_violated();
                &data[..at]
            }
        }
    }

    /// `data` has reached the sink: follow its frames and count it.
    pub(super) fn wrote(&mut self, data: &[u8]) {
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
    #[inline]
    pub(super) fn closing(&self) -> bool {
        self.state != State::Forward
            || self.read_ended
            || self.close.pending().is_some()
            || self.frames.passed_close()
    }

    fn begin_inject(&mut self, msg: &CloseMsg) {
        self.state = if self.close.begin(&self.frames, self.toward, msg) {
            State::Inject
        } else {
            State::Shutdown
        };
    }

    /// Runs this direction until it is done (`Ready`) or must wait (`Pending`): one
    /// method per state, each returning `Ready(())` when it made progress or changed
    /// state (so the loop goes on) and `Pending` when it has to wait.
    pub(super) fn poll_pump<R, W>(
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
                State::Forward if self.close.violation_unanswered() => {
                    // What came before the violation is out: close here, never read on.
                    self.close.answer_violation(self.toward);
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
                    match self.close.pending() {
                        Some(msg) => self.begin_inject(msg),
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

    /// Forward, nothing held back: mirror an ended source, start a pending stop (or
    /// ping) at a boundary, or read and pass on what comes (flushing before waiting).
    fn poll_forward<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        read_size: usize,
    ) -> Poll<()>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + Peer + ?Sized,
    {
        if self.read_ended {
            self.pass_on_source_end();
            return Poll::Ready(());
        }
        if self.begin_at_boundary() {
            return Poll::Ready(());
        }
        match self.poll_read_forward(cx, src, dst.as_mut(), read_size) {
            Poll::Ready(Ok(0)) => self.source_eof(),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => self.read_error(&e),
            Poll::Pending => return self.poll_flush_then_wait(cx, dst),
        }
        Poll::Ready(())
    }

    /// The source ended its connection without a close frame: tell the sink with a
    /// close of the router's own, or end its connection the same way.
    fn pass_on_source_end(&mut self) {
        if let Some(msg) = self.close.on_source_end() {
            self.begin_inject(msg);
        } else if self.read_failed {
            self.state = State::Reset;
        } else {
            self.state = State::Shutdown;
        }
    }

    /// A pending stop begins at a frame boundary (or once boundaries are unknown, when
    /// it can only be a FIN), a pending ping at a boundary: true when one did.
    #[inline]
    fn begin_at_boundary(&mut self) -> bool {
        if let Some(msg) = self.close.pending() {
            if self.frames.at_boundary() || self.frames.desynced() {
                self.begin_inject(msg);
                return true;
            }
        } else if self.pings.has_out() {
            if self.frames.desynced() {
                // Boundaries are unknown: a ping now could land inside a frame.
                self.pings.cancel_out();
            } else if self.frames.at_boundary() {
                self.start_ping();
                return true;
            }
        }
        false
    }

    /// One read into the scratch buffer, passed straight on (see [`Pump::forward`]):
    /// the bytes read, 0 at the source's end.
    fn poll_read_forward<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        read_size: usize,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        SCRATCH.with_borrow_mut(|scratch| {
            let size = read_size.min(scratch.len());
            let mut rb = ReadBuf::new(&mut scratch[..size]);
            let r = src.as_mut().poll_read(cx, &mut rb);
            let n = rb.filled().len();
            match r {
                Poll::Ready(Ok(())) if n > 0 => {
                    if self.pings.searching() {
                        // Once per ping: copy, so the pong can be cut out.
                        let data = self.pings.strip(&self.frames, &scratch[..n]);
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
        })
    }

    fn source_eof(&mut self) {
        self.note(Event::ReadEof);
        self.read_ended = true;
        // A partial frame at the end is passed on as it came.
        if let Some(rest) = self.pings.take_unfinished() {
            self.buf = rest;
            self.pos = 0;
        }
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

    /// Nothing to read: flush what was written since the last flush, then wait. A sink
    /// that still holds bytes is flushed too: a flush the I/O thread took over
    /// (`tls::outbox`) returned at once, and if the socket then pushed back, only a
    /// flush sends the rest (this direction may be the only one still running).
    fn poll_flush_then_wait<W>(&mut self, cx: &mut Context<'_>, mut dst: Pin<&mut W>) -> Poll<()>
    where
        W: AsyncWrite + Peer + ?Sized,
    {
        if self.need_flush || dst.queued() > 0 {
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
        while !self.close.unsent().is_empty() {
            match ready!(dst.as_mut().poll_write(cx, self.close.unsent())) {
                Ok(w) if w > 0 => self.close.sent(w),
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

#[cfg(test)]
#[path = "direction_tests.rs"]
mod tests;
