//! A tiny HTTP/1.1 backend for the pool's tests, on 127.0.0.1: it answers each request
//! with the number of the connection it came on (1 for the first accepted), so reuse is
//! observable; passes on each request body chunk as it arrives; answers `/stream` with
//! one chunk of a body that never ends; and can drop every connection without a word.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

pub(super) struct Backend {
    pub addr: SocketAddr,
    /// Connections open now.
    live: watch::Receiver<usize>,
    /// Every request body chunk, as the backend reads it.
    pub chunks: mpsc::UnboundedReceiver<Bytes>,
    /// Cancelled to drop the connections open now; replaced by a fresh one.
    kill: Arc<Mutex<CancellationToken>>,
}

/// Bounds every wait of the tests.
pub(super) async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("within 5 s")
}

impl Backend {
    pub(super) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (live_tx, live) = watch::channel(0);
        let (chunk_tx, chunks) = mpsc::unbounded_channel();
        let kill = Arc::new(Mutex::new(CancellationToken::new()));
        let k = kill.clone();
        tokio::spawn(async move {
            let live = Arc::new(live_tx);
            for n in 1usize.. {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                live.send_modify(|l| *l += 1);
                let kill = k.lock().expect("kill lock").clone();
                let (live, chunk_tx) = (live.clone(), chunk_tx.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(n, req, chunk_tx.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.cancelled() => {}
                    }
                    live.send_modify(|l| *l -= 1);
                });
            }
        });
        Self {
            addr,
            live,
            chunks,
            kill,
        }
    }

    /// Closes every connection open now (no `Connection: close`, just the socket).
    pub(super) fn drop_connections(&self) {
        let old = std::mem::take(&mut *self.kill.lock().expect("kill lock"));
        old.cancel();
    }

    /// Waits (bounded) until `n` connections are open.
    pub(super) async fn wait_live(&mut self, n: usize) {
        within(self.live.wait_for(|l| *l == n))
            .await
            .expect("backend running");
    }
}

async fn answer(
    n: usize,
    req: Request<Incoming>,
    chunks: mpsc::UnboundedSender<Bytes>,
) -> Result<Response<RespBody>, Infallible> {
    if req.uri().path() == "/stream" {
        return Ok(Response::new(Endless { sent: false }.boxed_unsync()));
    }
    let mut body = req.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let _ = chunks.send(data);
        }
    }
    let number = Full::new(Bytes::from(n.to_string()));
    Ok(Response::new(number.boxed_unsync()))
}

/// One chunk, then nothing, never ending (an event stream with no second event).
struct Endless {
    sent: bool,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
    }
}
