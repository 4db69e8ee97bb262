//! A pod that answers plain HTTP for the forward-path tests and records every request it
//! is given (method, target, headers, body), so a test can say what reached it and,
//! for hostile requests, that nothing did. Its answers by the path's last segment:
//! - `echo`: the request body streamed back as it comes;
//! - `sse?n=N&every=MS`: Server-Sent Events, one every MS (50) ms, N of them (0: for ever);
//! - `trailers`: a chunked body, then trailers;
//! - `status-CODE`: that status, no body;
//! - `hang`: never answers;
//! - `slow?ms=N`: answers after N ms, as a long poll does;
//! - anything else: 200 JSON naming the pod, plus hop-by-hop headers the router must
//!   not pass on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the pod got it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: http::Method,
    pub target: String,
    pub headers: HeaderMap,
    /// Read to its end, but for `echo` (streamed back) and `hang`.
    pub body: Vec<u8>,
}

pub(crate) struct HttpPod {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    /// Wakes whoever waits for a request to arrive.
    arrived: Arc<Notify>,
    /// Connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The accept loop and every connection: aborted when the pod is dropped, as a
    /// pod that stops takes its connections with it.
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Drop for HttpPod {
    fn drop(&mut self) {
        if let Ok(mut t) = self.tasks.lock() {
            t.abort_all();
        }
    }
}

/// A body either side of the tests sends: boxed, failing only as I/O does.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

impl HttpPod {
    pub(crate) async fn start(name: &str) -> Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, name).await
    }

    /// A pod on `addr` (a restarted pod takes its old address).
    pub(crate) async fn start_on(addr: SocketAddr, name: &str) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let pod = Self {
            addr: listener.local_addr()?,
            name: name.to_owned(),
            seen: Arc::default(),
            arrived: Arc::default(),
            connections: Arc::default(),
            tasks: Arc::default(),
        };
        let (seen, arrived, name, conns, tasks) = (
            pod.seen.clone(),
            pod.arrived.clone(),
            pod.name.clone(),
            pod.connections.clone(),
            pod.tasks.clone(),
        );
        let accept = async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (seen, arrived, name) = (seen.clone(), arrived.clone(), name.clone());
                let svc =
                    service_fn(move |req| answer(req, name.clone(), seen.clone(), arrived.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc);
                if let Ok(mut t) = tasks.lock() {
                    t.spawn(async move {
                        let _ = conn.await;
                    });
                }
            }
        };
        if let Ok(mut t) = pod.tasks.lock() {
            t.spawn(accept);
        }
        Ok(pod)
    }

    /// Stops the pod and waits until its listener and connections are closed.
    pub(crate) async fn stop(self) {
        let tasks = self.tasks.lock().map(|mut t| std::mem::take(&mut *t));
        if let Ok(mut tasks) = tasks {
            tasks.shutdown().await;
        }
    }

    pub(crate) fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (bounded by the caller) until `n` requests have arrived.
    pub(crate) async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.arrived.notified();
            if self.seen().len() >= n {
                return;
            }
            notified.await;
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    name: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    arrived: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let last = path.rsplit('/').next().unwrap_or_default().to_owned();
    let record = |body: Vec<u8>, req: &http::request::Parts| {
        if let Ok(mut s) = seen.lock() {
            s.push(Recorded {
                method: req.method.clone(),
                target: target.clone(),
                headers: req.headers.clone(),
                body,
            });
        }
        arrived.notify_waiters();
    };
    let (parts, body) = req.into_parts();
    match last.as_str() {
        "echo" => {
            record(Vec::new(), &parts);
            let echoed = body.map_err(std::io::Error::other).boxed();
            Ok(Response::new(echoed))
        }
        "slow" => {
            let ms = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            record(Vec::new(), &parts);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(plain("slow", &parts, &name, &[]))
        }
        "hang" => {
            record(Vec::new(), &parts);
            std::future::pending::<()>().await;
            Ok(Response::new(empty()))
        }
        _ => {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            record(bytes.clone(), &parts);
            Ok(plain(&last, &parts, &name, &bytes))
        }
    }
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

fn plain(last: &str, parts: &http::request::Parts, name: &str, body: &[u8]) -> Response<Body> {
    if last == "sse" {
        return sse(parts.uri.query().unwrap_or_default(), name);
    }
    if last == "trailers" {
        return trailers();
    }
    if let Some(code) = last.strip_prefix("status-") {
        let mut resp = Response::new(empty());
        *resp.status_mut() = code.parse().unwrap_or(StatusCode::IM_A_TEAPOT);
        return resp;
    }
    let json = format!(
        r#"{{"pod":"{name}","method":"{}","target":"{}","body_len":{}}}"#,
        parts.method,
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        body.len()
    );
    Response::builder()
        .header("content-type", "application/json")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=30")
        .body(full(json))
        .unwrap_or_else(|_| Response::new(empty()))
}

fn sse(query: &str, name: &str) -> Response<Body> {
    let param = |key: &str, default: u64| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (n, every) = (
        param("n", 0) as usize,
        Duration::from_millis(param("every", 50)),
    );
    let name = name.to_owned();
    let events = futures_util::stream::unfold(0usize, move |i| {
        let name = name.clone();
        async move {
            if n != 0 && i >= n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            let event = format!("id: {i}\ndata: {{\"pod\":\"{name}\",\"n\":{i}}}\n\n");
            Some((Ok(Frame::data(Bytes::from(event))), i + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap_or_else(|_| Response::new(empty()))
}

fn trailers() -> Response<Body> {
    let mut t = HeaderMap::new();
    t.insert("x-checksum", http::HeaderValue::from_static("abc123"));
    let frames = futures_util::stream::iter([
        Ok(Frame::data(Bytes::from_static(b"part one, "))),
        Ok(Frame::data(Bytes::from_static(b"part two"))),
        Ok(Frame::trailers(t)),
    ]);
    Response::builder()
        .header("trailer", "x-checksum")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| Response::new(empty()))
}
