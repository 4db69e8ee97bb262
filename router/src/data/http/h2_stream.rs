//! A WebSocket's HTTP/2 stream (RFC 8441) as the byte stream the relay reads and writes.
//!
//! Reads take every DATA frame h2 already holds for the stream, not one: a client's
//! messages that arrived in one TLS read then leave for the backend in one write. One
//! frame per read made a write to the backend per message, and the backends' extra
//! wake-ups cost more than the router's whole relay (`benches/RESULTS.md`, issue 30).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::relay::peer::Peer;

/// Plaintext handed to h2 per write at most: a slow stream queues no more than this
/// beyond its send buffer.
const MAX_WRITE: usize = 16 << 10;

/// A WebSocket's HTTP/2 stream as a byte stream for the relay. It keeps only bytes in
/// flight: the rest of a DATA frame the reader has not taken yet.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    unread: Bytes,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
        }
    }
}

/// An h2 error as the relay sees it: a stream the client ended or cancelled is an end
/// of input; anything else a failure.
fn read_error(e: h2::Error) -> Option<io::Error> {
    match e.reason() {
        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => None,
        _ => Some(io::Error::new(io::ErrorKind::ConnectionReset, e)),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            if this.unread.is_empty() {
                // Every DATA frame already here goes in one read, so the relay writes
                // them to the backend together: a client's messages that came in one
                // TLS read leave in one write, not one per frame.
                let polled = if buf.filled().len() > before {
                    match this.recv.poll_data(cx) {
                        Poll::Ready(p) => p,
                        Poll::Pending => break,
                    }
                } else {
                    ready!(this.recv.poll_data(cx))
                };
                match polled {
                    // Not kept: even empty, it would hold the frame's whole buffer (h2
                    // passes on an empty frame only when it ends the stream).
                    Some(Ok(data)) if data.is_empty() => continue,
                    Some(Ok(data)) => this.unread = data,
                    Some(Err(e)) if buf.filled().len() == before => {
                        return Poll::Ready(read_error(e).map_or(Ok(()), Err));
                    }
                    // Ended or failed after some bytes: those go first. h2 keeps a
                    // stream's end and its error in the stream's state, so the next
                    // read meets them again.
                    None | Some(Err(_)) => break,
                }
            }
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            if n == this.unread.len() {
                // Not `advance`: an empty slice would still hold the frame's whole buffer.
                this.unread = Bytes::new();
            } else {
                bytes::Buf::advance(&mut this.unread, n);
            }
            if buf.remaining() == 0 {
                break;
            }
        }
        // Released to the client's window once, for every byte handed over.
        let taken = buf.filled().len() - before;
        if taken > 0 {
            let _ = this.recv.flow_control().release_capacity(taken);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        send.reserve_capacity(buf.len().min(MAX_WRITE));
        let n = loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n.min(buf.len()),
                Some(Err(e)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)))
                }
                // No more capacity will come: the stream was reset.
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        match send.send_data(Bytes::copy_from_slice(&buf[..n]), false) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what streams queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM; an error means the stream is already over, which is what was asked.
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

impl Peer for H2Stream {
    /// The client's end of the stream (reset or ended) means it left: the backend
    /// hears a 1001 rather than a bare hang-up.
    const RESET_IS_GOING_AWAY: bool = true;

    fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }
}

#[cfg(test)]
#[path = "h2_stream_tests.rs"]
mod tests;
