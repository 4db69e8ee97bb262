//! A client connection whose writes may not stall (HTTP/1.1; HTTP/2 bounds each stream's
//! wait for window in `h2_body`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::data::relay::peer::Peer;

/// A client connection whose writes may not stall: a write that makes no progress for
/// `stall` fails, and hyper closes the connection. Without it a client that stops
/// reading a long answer would hold its pod connection and its places for ever (its
/// TCP stack still acknowledges, so keepalive never notices). The timer exists only
/// while a write is stalled. The relay unwraps it ([`WriteStall::into_inner`]): a
/// WebSocket has its own timers.
pub(crate) struct WriteStall<I> {
    inner: I,
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteStall<I> {
    pub(crate) fn new(inner: I, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            timer: None,
        }
    }

    pub(crate) fn into_inner(self) -> I {
        self.inner
    }

    /// A write made no progress: `Pending` until the stall time is up, then an error.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client left the answer unread",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Peer + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_pending() && self.inner.flush_held() {
            // Parked for the thread's turn to end (a stream on a ring; one on a TCP
            // socket hands its bytes to the thread and is done): not a stall, and no
            // timer for it.
            return Poll::Pending;
        }
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_fails_after_the_stall_time() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut io = WriteStall::new(near, Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let err = io
            .write_all(&[0u8; 64 * 1024])
            .await
            .expect_err("nobody reads the other end");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = WriteStall::new(near, Duration::from_secs(60));
        // The reader takes 1 KiB every 50 s: each write waits, none for the stall time.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < 8 * 1024 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap_or(0);
            }
            total
        });
        io.write_all(&[1u8; 8 * 1024])
            .await
            .expect("a reader that reads");
        drop(io);
        assert!(reader.await.unwrap_or(0) >= 7 * 1024);
    }
}
