//! A pooled connection's writes held to the end of its I/O thread's busy turn, as a
//! client's TLS stream's are (`tls::flush`): on a plain connection hyper's write goes to
//! the socket at once, so a saturated thread woke a sleeping pod once per request; held,
//! a turn's requests for one pod reach it together. The same rule decides as for the
//! clients' answers: nothing is held on a lightly loaded thread (a turn shorter than its
//! hold threshold, or the turn's first flush), and nothing past the turn's end, which
//! comes as the thread runs dry, at a later flush that finds the turn old, or at the
//! thread's next heartbeat (`flush::end_overdue_turn`).
//!
//! Only plain connections hold. A `--backend-tls` connection (tokio-rustls) passes
//! through untouched: its writes, vectored, go out at once as before.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::data::tls::flush::{self, Held};

/// The most a connection keeps unsent before a write waits for the socket: a request
/// head, or the first chunk of a body, fits; a big upload flows as the socket takes it.
const HOLD_MAX: usize = 16 * 1024;

/// The room a connection keeps for its writes between requests.
const KEEP_ROOM: usize = 4 * 1024;

/// `io` with its writes kept until they are flushed, and its flushes held for the
/// turn's end on a thread that holds them.
pub(super) struct HeldWrites<T> {
    io: T,
    /// Whether this connection holds its writes (a plain one).
    hold: bool,
    out: Vec<u8>,
    held: Held,
}

impl<T> HeldWrites<T> {
    pub(super) fn new(io: T, hold: bool) -> Self {
        Self {
            io,
            hold,
            out: Vec::new(),
            held: Held::default(),
        }
    }
}

impl<T: AsyncWrite + Unpin> HeldWrites<T> {
    /// Sends what is kept, as far as the socket takes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        // An idle pooled connection keeps no more than a request head's room.
        if self.out.capacity() > KEEP_ROOM {
            self.out = Vec::new();
        }
        self.held.sent();
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
        if !(this.hold && flush::holding()) && this.out.is_empty() {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        if this.out.len() + data.len() > HOLD_MAX {
            ready!(this.poll_send(cx))?;
            if data.len() > HOLD_MAX {
                return Pin::new(&mut this.io).poll_write(cx, data);
            }
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
        if this.hold {
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
        !self.hold && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() && this.held.wait(cx) {
            return Poll::Pending;
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
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A connected loopback pair: (the pod's side, the pool's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (theirs.unwrap().0, ours.unwrap())
    }

    /// Nothing has reached `pod` yet (the data never went to the socket, so this does
    /// not race the network).
    fn nothing_arrived(pod: &TcpStream) {
        let mut buf = [0u8; 64];
        match pod.try_read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => panic!("the pod got something early: {other:?}"),
        }
    }

    async fn read_n(pod: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(WAIT, pod.read_exact(&mut got))
            .await
            .expect("read in time")
            .unwrap();
        got
    }

    /// On a thread that holds flushes, a request is kept until its flush, which waits
    /// for the turn's end (after the turn's first) and then sends it whole; a write past
    /// the bound goes at once; a shutdown sends what is kept first.
    #[test]
    fn a_busy_turns_requests_reach_their_pod_at_its_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(flush::end_of_turn)
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut pod, io) = pair().await;
            let mut conn = HeldWrites::new(io, true);
            flush::hold_on_this_thread();
            // Another connection's flush is the turn's first (it would send at once).
            std::future::poll_fn(|cx| {
                assert!(!Held::default().wait(cx));
                Poll::Ready(())
            })
            .await;
            conn.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            conn.write_all(b"more").await.unwrap();
            nothing_arrived(&pod);
            {
                // The flush waits for the turn's end: nothing goes within the turn...
                let mut flushing = std::pin::pin!(conn.flush());
                std::future::poll_fn(|cx| {
                    assert!(flushing.as_mut().poll(cx).is_pending(), "held");
                    Poll::Ready(())
                })
                .await;
                nothing_arrived(&pod);
                // ...and all of it once the thread has run dry (its park hook).
                tokio::time::timeout(WAIT, flushing)
                    .await
                    .expect("flush in time")
                    .unwrap();
            }
            assert_eq!(read_n(&mut pod, 22).await, b"GET / HTTP/1.1\r\n\r\nmore");
            // Past the bound: what is kept goes first, then the big write at once.
            conn.write_all(b"head").await.unwrap();
            let big = vec![7u8; HOLD_MAX + 1];
            conn.write_all(&big).await.unwrap();
            let got = read_n(&mut pod, 4 + big.len()).await;
            assert_eq!((&got[..4], &got[4..]), (&b"head"[..], &big[..]));
            conn.write_all(b"last").await.unwrap();
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
            let (mut pod, io) = pair().await;
            let mut conn = HeldWrites::new(io, hold);
            conn.write_all(b"now").await.unwrap();
            assert!(conn.out.is_empty(), "nothing kept (hold: {hold})");
            assert_eq!(read_n(&mut pod, 3).await, b"now");
        }
    }
}
