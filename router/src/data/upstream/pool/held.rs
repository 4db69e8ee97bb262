//! A pooled connection's writes held to the end of its I/O thread's busy turn, as a
//! client's TLS stream's are (`tls::flush`): on a plain connection hyper's write goes to
//! the socket at once, so a saturated thread woke a sleeping pod once per request; held,
//! a turn's requests for one pod reach it together. The same rule decides as for the
//! clients' answers: nothing is held on a lightly loaded thread (a turn shorter than its
//! hold threshold, or the turn's first flush), and nothing past the turn's end, which
//! comes as the thread runs dry, at a later flush that finds the turn old, or at the
//! thread's next heartbeat (`flush::end_overdue_turn`). A held flush hands its bytes to
//! the thread, which sends them itself then (`tls::outbox`); the connection's task is not
//! woken for it.
//!
//! Only plain connections hold. A `--backend-tls` connection (tokio-rustls) passes
//! through untouched: its writes, vectored, go out at once as before.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::tls::flush;
use crate::data::tls::flush::Handover;
use crate::data::tls::outbox;

/// The most a connection keeps unsent before a write waits for the socket: a request
/// head, or the first chunk of a body, fits; a big upload flows as the socket takes it.
const HOLD_MAX: usize = 16 * 1024;

/// The room a connection keeps for its writes between requests.
const KEEP_ROOM: usize = 4 * 1024;

/// `io` with its writes kept until they are flushed, and its flushes held for the
/// turn's end on a thread that holds them: handed to the thread, which sends them itself
/// then (`tls::flush::Handover`), as a client's TLS stream's are.
pub(super) struct HeldWrites<T> {
    /// What the thread holds for the connection, to send as its turn ends; it goes
    /// before `out`. Only for a connection that holds its writes (a plain one). Declared
    /// before `io`: dropped first, it sends what still waits while the socket is open.
    handover: Handover,
    io: T,
    /// What is kept, sent from `pos`.
    out: Vec<u8>,
    pos: usize,
}

impl<T> HeldWrites<T> {
    /// `io`, holding its writes if its socket's descriptor is given (a plain connection).
    pub(super) fn new(io: T, hold: Option<RawFd>) -> Self {
        Self {
            handover: hold.map(Handover::to).unwrap_or_default(),
            io,
            out: Vec::new(),
            pos: 0,
        }
    }

    /// Whether this connection holds its writes.
    fn holds(&self) -> bool {
        self.handover.allowed()
    }

    /// What is kept, with what the thread holds.
    fn kept(&self) -> usize {
        self.out.len() - self.pos + self.handover.len()
    }
}

impl<T: AsyncWrite + Unpin> HeldWrites<T> {
    /// Sends what is kept, what the thread holds first, as far as the socket takes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.handover.take_back(&mut self.out, &mut self.pos)?;
        while self.pos < self.out.len() {
            let Poll::Ready(n) = Pin::new(&mut self.io).poll_write(cx, &self.out[self.pos..])
            else {
                // The socket is full: what is kept waits for it, not for a turn's end.
                self.handover.pushed_back();
                return Poll::Pending;
            };
            let n = n?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.out.clear();
        self.pos = 0;
        // An idle pooled connection keeps no more than a request head's room.
        if self.out.capacity() > KEEP_ROOM {
            self.out = Vec::new();
        }
        self.handover.sent();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeldWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeldWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !(this.holds() && flush::holding()) && this.kept() == 0 {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        if this.kept() + data.len() > HOLD_MAX {
            ready!(this.poll_send(cx))?;
            if data.len() > HOLD_MAX {
                return Pin::new(&mut this.io).poll_write(cx, data);
            }
        }
        if this.out.capacity() == 0 {
            // Kept for the flush: in a buffer the thread recycles (`outbox`).
            this.out = outbox::spare();
        }
        this.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.holds() {
            // Not vectored (see `is_write_vectored`): hyper flattens, and this is only
            // the trait's fallback.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    /// A held connection copies each write into what it keeps, so hyper had better
    /// flatten its head and body into one buffer; one that does not hold is as vectored
    /// as its socket.
    fn is_write_vectored(&self) -> bool {
        !self.holds() && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handover.flush(&mut this.out, &mut this.pos, cx)? {
            // With the thread, which sends it as its turn ends.
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::data::tls::test_io::{nothing_arrived, pair, read_n, turning_runtime, WAIT};

    /// On a thread that holds flushes, a request is kept until its flush, which hands
    /// it to the thread (after the turn's first) and is done at once; the thread sends
    /// it whole as the turn ends. A write past the bound goes at once; a shutdown sends
    /// what is kept first.
    #[test]
    fn a_busy_turns_requests_reach_their_pod_at_its_end() {
        turning_runtime().block_on(async {
            let (io, mut pod) = pair().await;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&io);
            let mut conn = HeldWrites::new(io, Some(fd));
            flush::hold_on_this_thread();
            // Another connection's flush is the turn's first (it would send at once).
            assert!(!flush::hand_over_now());
            conn.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            conn.write_all(b"more").await.unwrap();
            nothing_arrived(&pod);
            {
                // The flush hands it over and is done, in one poll; nothing goes within
                // the turn...
                let mut flushing = std::pin::pin!(conn.flush());
                std::future::poll_fn(|cx| {
                    assert!(flushing.as_mut().poll(cx).is_ready(), "handed over");
                    Poll::Ready(())
                })
                .await;
            }
            assert!(conn.out.is_empty() && conn.handover.handed_over());
            nothing_arrived(&pod);
            // ...and all of it once the thread has run dry (its park hook).
            assert_eq!(read_n(&mut pod, 22).await, b"GET / HTTP/1.1\r\n\r\nmore");
            // Past the bound: what is kept goes first, then the big write at once.
            conn.write_all(b"head").await.unwrap();
            let big = vec![7u8; HOLD_MAX + 1];
            conn.write_all(&big).await.unwrap();
            let got = read_n(&mut pod, 4 + big.len()).await;
            assert_eq!((&got[..4], &got[4..]), (&b"head"[..], &big[..]));
            // Handed over, then shut down within the turn: the bytes go before the FIN.
            let _ = flush::hand_over_now(); // this turn's first, if no other was
            conn.write_all(b"last").await.unwrap();
            conn.flush().await.unwrap();
            assert!(conn.handover.handed_over(), "handed over");
            conn.shutdown().await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(WAIT, pod.read_to_end(&mut rest))
                .await
                .expect("read in time")
                .unwrap();
            assert_eq!(rest, b"last");
        });
    }

    /// A connection that does not hold (TLS), or one on a thread that does not, writes
    /// to its socket at once.
    #[tokio::test]
    async fn elsewhere_writes_go_at_once() {
        for hold in [false, true] {
            let (io, mut pod) = pair().await;
            let fd = hold.then(|| std::os::fd::AsRawFd::as_raw_fd(&io));
            let mut conn = HeldWrites::new(io, fd);
            conn.write_all(b"now").await.unwrap();
            assert!(conn.out.is_empty(), "nothing kept (hold: {hold})");
            assert_eq!(read_n(&mut pod, 3).await, b"now");
        }
    }
}
