//! A connection out of the pool, and the response body that gives it back: to the
//! pool once the body has been read to its end, closed if the body is dropped first
//! (the rest of the response would still be on it) or the exchange failed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use thiserror::Error;

use super::idle::{self, Conn};
use super::ReqBody;

/// A connection checked out of the pool for one request. Dropped unused, it goes back
/// as it came; [`Pooled::send`] hands it on to the response's body.
pub(crate) struct Pooled {
    pool: u64,
    addr: SocketAddr,
    /// Held until the guard ends; `None` once the connection may not be reused.
    conn: Option<Conn>,
    reused: bool,
}

/// A request the backend did not answer.
#[derive(Debug, Error)]
#[error("backend {addr} did not answer the request")]
pub(crate) struct SendError {
    pub addr: SocketAddr,
    #[source]
    pub source: hyper::Error,
    /// The request, when it never left: it may go again on another connection. The
    /// usual case is an idle connection its backend closed as it was handed out.
    pub unsent: Option<Box<Request<ReqBody>>>,
}

impl Pooled {
    pub(super) fn new(pool: u64, addr: SocketAddr, conn: Conn, reused: bool) -> Self {
        Self {
            pool,
            addr,
            conn: Some(conn),
            reused,
        }
    }

    /// Whether it was idle in the pool (and so may have been closed by its backend just
    /// now) rather than dialled for this request.
    pub(crate) fn is_reused(&self) -> bool {
        self.reused
    }

    /// Sends `req` (its body streamed as it comes) and waits for the response head. The
    /// connection then belongs to the response body. Dropping this future before the
    /// head closes the connection: HTTP/1.1 cannot abandon a request any other way.
    pub(crate) async fn send(
        mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        // Out of the guard while the request is out, so a cancelled send takes it along.
        let Some(mut conn) = self.conn.take() else {
            unreachable!("a guard holds its connection until it ends")
        };
        conn.requests += 1;
        match conn.sender.try_send_request(req).await {
            Ok(response) => {
                self.conn = Some(conn);
                Ok(response.map(|body| PooledBody {
                    body,
                    lease: Some(self),
                }))
            }
            Err(mut e) => Err(SendError {
                addr: self.addr,
                unsent: e.take_message().map(Box::new),
                source: e.into_error(),
            }),
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            idle::put(self.pool, self.addr, conn);
        }
    }
}

/// A response's body, holding its connection: given back to the pool as the body ends.
pub(crate) struct PooledBody {
    body: Incoming,
    /// Until the body has ended (or failed).
    lease: Option<Pooled>,
}

impl PooledBody {
    /// The connection is done: back to the pool if `reusable`, else closed.
    fn release(&mut self, reusable: bool) {
        if let Some(mut lease) = self.lease.take() {
            if !reusable {
                lease.conn = None;
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.release(true),
            Some(Err(_)) => self.release(false),
            // The last frame: the connection may serve another request while this one
            // is still on its way to the client.
            Some(Ok(_)) if self.body.is_end_stream() => self.release(true),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing more to read (a HEAD's, a 204's, or one read to its
        // last byte) leaves its connection clean; any other still has the rest on it.
        let ended = self.body.is_end_stream();
        self.release(ended);
    }
}

#[cfg(test)]
impl Pooled {
    /// Whether its backend has closed the connection (as far as this side has read).
    pub(super) fn is_closed(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.sender.is_closed())
    }
}
