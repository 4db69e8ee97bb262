//! The admin listener: plain HTTP on its own port, for probes and operators.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Lifecycle;

/// Serves until `stop` is cancelled. It stays up while the router drains, so probes see
/// `/readyz` fail rather than a refused connection.
pub async fn serve(listener: TcpListener, lifecycle: Lifecycle, stop: CancellationToken) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let lc = lifecycle.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let lc = lc.clone();
                async move { Ok::<_, Infallible>(route(&req, &lc)) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

fn route(req: &Request<Incoming>, lc: &Lifecycle) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if lc.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if lc.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
