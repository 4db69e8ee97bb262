//! The glue the rest of the router sees: `AsyncRead` and `AsyncWrite` over the record
//! reader and the writer, each borrowing the thread's scratch for one call at most.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::receive::Then;
use super::send::{send_some, MAX_WRITE};
use super::{TlsStream, SCRATCH};
use crate::data::tls::flush;
use crate::data::tls::outbox;

/// Plaintext a stream keeps sealed for its flush at most. Small answers and messages
/// gain from going out together; a larger write fills packets anyway and is sent at
/// once, as is anything after the socket pushed back (it waits for the socket, not for
/// the turn).
const HOLD_MAX: usize = 16 << 10;

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.poll_failed(cx))?;
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            // Replies rustls queued (tickets, key updates) and held records go out as
            // reading goes on (bytes the thread holds whole wait for its turn's end);
            // a peer slow to take them does not stop us reading.
            if let Poll::Ready(Err(e)) = this.poll_send_queued(cx) {
                return Poll::Ready(Err(e));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let received = SCRATCH.with_borrow_mut(|s| this.poll_receive(cx, s, buf));
            if let Err(e) = ready!(received) {
                if buf.filled().len() > before {
                    // Hand over what was read; the error comes with the next read.
                    this.stash(e);
                    return Poll::Ready(Ok(()));
                }
                this.stash(e);
                continue;
            }
            if buf.filled().len() > before {
                if let Poll::Ready(Err(e)) = this.poll_send_queued(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_failed(cx))?;
        // On an I/O thread that holds flushes, what is sealed waits for the flush (up to
        // a bound); otherwise, or past it, queue nothing more until the socket has taken
        // what is queued (backpressure).
        let hold = flush::holding()
            && this.out_pos == 0
            && this.unsent() + data.len().min(MAX_WRITE) <= HOLD_MAX;
        if !hold {
            ready!(this.poll_send(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        // The ciphertext is made in the thread's scratch and written straight to the
        // socket: only what the socket does not take now is copied into `out` (sent at
        // the next write or flush), so a write that goes through allocates nothing.
        SCRATCH.with(|scratch| {
            // Never borrowed here in practice (no read is under way); if it were, `out`
            // serves as before.
            let mut guard = scratch.try_borrow_mut();
            let into: &mut [u8] = match &mut guard {
                Ok(scratch) => scratch,
                Err(_) => &mut [],
            };
            let mut sealed = 0;
            this.pump_partial(Then::Encrypt {
                data,
                into: &mut *into,
                sealed: &mut sealed,
            })?;
            let mut rest = &into[..sealed];
            // Anything rustls queued before this record (a handshake message) goes first.
            if this.out.is_empty() && !hold {
                rest = &rest[send_some(&mut this.tcp, cx, rest)?..];
                if !rest.is_empty() {
                    // What the socket refused waits for it, not for a turn's end.
                    this.handover.pushed_back();
                }
            }
            if hold && this.out.capacity() == 0 {
                // Kept for the flush: in a buffer the thread recycles (`outbox`).
                this.out = outbox::spare();
            }
            this.out.extend_from_slice(rest);
            Ok::<_, io::Error>(())
        })?;
        if !hold {
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handover.allowed() {
            // Held: handed to the thread, which sends it as its turn ends; the flush is
            // done (nothing of it needs the task again unless the socket pushes back).
            if this.handover.flush(&mut this.out, &mut this.out_pos, cx)? {
                return Poll::Ready(Ok(()));
            }
        } else if this.unsent() > 0 && this.held.wait(cx) {
            return Poll::Pending;
        }
        ready!(this.poll_send(cx))?;
        this.held.sent();
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            // Already closed or failed: there is nothing to say, only TCP to close.
            let _ = this.pump_partial(Then::CloseNotify);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
