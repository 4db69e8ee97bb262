//! One HTTP/1.1 client connection, start to end: hyper serves its requests one after
//! another; a WebSocket upgrade hands the socket to the relay, plain requests keep the
//! connection alive. Between requests the connection is pending (in the pending pool,
//! under eviction) and goes after the keep-alive idle time; while a request is in
//! flight its own timeouts apply. A client that stops reading an answer for the stall
//! time loses the connection ([`WriteStall`]), whatever the answer.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::data::admission::pools::PendingSlot;
use crate::data::http::conn::{ConnCtx, Standing};
use crate::data::http::upgrade;
use crate::data::relay::peer::Peer;
use crate::data::shared::Shared;

/// Serves one HTTP/1.1 connection until it closes, is upgraded, evicted, idle too long,
/// or the drain ends it.
pub(crate) async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    slot: PendingSlot,
) where
    I: AsyncRead + AsyncWrite + Peer + Unpin + Send + 'static,
{
    let limits = &shared.limits;
    let first_by = tokio::time::Instant::now() + limits.request_timeout;
    let ctx = ConnCtx::http1(&shared, peer, accepted, slot, first_by);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
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
    let mut draining = false;
    loop {
        let Standing {
            evicted,
            idle_until,
            closing,
        } = ctx.standing();
        if closing && !draining {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client.addr = %peer, error = %e, "HTTP connection error");
                }
                return;
            }
            _ = keepalive.changed.notified() => {}
            // Only while it waits for a request head: the pool may take its place.
            _ = cancelled(evicted) => {
                tracing::debug!(client.addr = %peer, "pending connection dropped to make room (request head)");
                return;
            }
            _ = sleep_until_some(idle_until) => {
                tracing::debug!(client.addr = %peer, "HTTP/1.1 connection idle: closed");
                return;
            }
            // The drain: answers under way are finished, then the connection closes;
            // an idle one closes now.
            _ = shared.lifecycle.stop_accepting.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shared.lifecycle.close_tunnels.cancelled() => {
                // The grace period is over. A request being handled gets its answer (a
                // 503 if it still waits on the backend); a connection with none closes.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                return;
            }
        }
    }
}

async fn cancelled(token: Option<tokio_util::sync::CancellationToken>) {
    match token {
        Some(t) => t.cancelled_owned().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

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
    fn new(inner: I, stall: Duration) -> Self {
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

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
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
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
