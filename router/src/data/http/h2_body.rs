//! Plain requests over HTTP/2: a stream's request body as a body the pool can send
//! ([`H2Body`]), and any answer's body sent on its stream as it comes ([`send`]), data
//! under the stream's flow control, trailers passed on, stopped when the client resets
//! the stream or stops reading.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::HeaderMap;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::data::http::body::ProxyBody;
use crate::data::http::request;

/// An HTTP/2 request stream's body. Flow-control capacity is given back as each DATA
/// frame is taken, and frames are taken only as the pod's connection sends them, so
/// a slow pod holds the client back by the stream's window (64 KiB), no more.
pub(crate) struct H2Body {
    recv: RecvStream,
    /// The length the request declared: h2 checks the DATA against it.
    length: Option<u64>,
    data_done: bool,
}

impl H2Body {
    pub(crate) fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        Self {
            recv,
            length: request::content_length(headers),
            data_done: false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Sends an answer on its stream: the head, then each frame of its body as it comes.
/// Ends when the body does, when the client resets the stream, or when the client
/// leaves data unread (no window) for `stall`.
pub(crate) async fn send(
    head: Response<()>,
    body: ProxyBody,
    respond: &mut SendResponse<Bytes>,
    stall: Duration,
) {
    let empty = body.is_end_stream();
    let Ok(mut stream) = respond.send_response(head, empty) else {
        return;
    };
    if empty {
        return;
    }
    let mut body = std::pin::pin!(body);
    loop {
        // A client that resets the stream is gone: whatever the pod still has to say
        // is dropped with the body (its pooled connection closed).
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if send_data(&mut stream, data, stall).await.is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
            Some(Err(e)) => {
                // The pod's body failed or stalled: the client must not take a cut
                // answer for a whole one.
                tracing::debug!(error = %e, "answer's body failed; stream reset");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
        }
    }
}

/// One DATA payload, in pieces as the client's window opens. `Err`: the stream is gone
/// or the client left its window shut for `stall`.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    stall: Duration,
) -> Result<(), ()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let capacity = std::future::poll_fn(|cx| stream.poll_capacity(cx));
        match tokio::time::timeout(stall, capacity).await {
            Ok(Some(Ok(n))) if n > 0 => {
                let chunk = data.split_to(n.min(data.len()));
                stream.send_data(chunk, false).map_err(|_| ())?;
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Err(()),
            Err(_) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(());
            }
        }
    }
    Ok(())
}
