//! Plain HTTP beside the sockets: every request under the prefix reaches its tenant's
//! pod, per request (one client connection carries many tenants), over HTTP/1.1 and
//! HTTP/2, with proxy semantics, streaming bodies, limits, and table swaps that never
//! cut a request in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::{DevCert, Input, RerouteConfig};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use wsrouter::TableSource;

use crate::harness::*;
use crate::http_backend::{empty, full, Body, HttpPod};

/// Four recording pods behind a router started with `opts` (its backends replaced).
pub(crate) async fn router_over_pods(
    mut opts: Options,
) -> Result<(Harness, Vec<HttpPod>, DevCert)> {
    let mut pods = Vec::new();
    for i in 0..opts.backends {
        pods.push(HttpPod::start(&format!("backend-{i}")).await?);
    }
    opts.replace = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.addr.to_string()))
        .chain(opts.replace.clone())
        .collect();
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let h = Harness::start_with_cert(opts, &cert).await?;
    Ok((h, pods, cert))
}

/// An HTTP client connection to the router: HTTP/1.1, or HTTP/2 by ALPN.
pub(crate) enum Client {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Client {
    pub(crate) async fn connect(h: &Harness, cert: &DevCert, h2: bool) -> Result<Self> {
        let mut config = (*cert.client_config()).clone();
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let tcp = TcpStream::connect(h.addr()).await?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await?;
            tokio::spawn(conn);
            Ok(Self::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Self::H1(send))
        }
    }

    pub(crate) async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>> {
        within(WAIT, "an answer", async {
            Ok(match self {
                Self::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Self::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            })
        })
        .await?
    }

    /// GET `path` with `headers`; the status and the whole body.
    pub(crate) async fn get(&mut self, path: &str) -> Result<(StatusCode, String)> {
        let resp = self.send(get(path)).await?;
        let status = resp.status();
        let body = within(WAIT, "a body", resp.into_body().collect()).await??;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    }
}

pub(crate) fn get(path: &str) -> Request<Body> {
    Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(empty())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The pod a JSON answer names.
fn pod_of(body: &str) -> String {
    body.split(r#""pod":""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_reaches_its_tenants_pod_over_one_connection() -> Result<()> {
    let (h, pods, cert) = router_over_pods(Options::default()).await?;
    for h2 in [false, true] {
        // One client connection, many tenants: the decision is per request.
        let mut client = Client::connect(&h, &cert, h2).await?;
        for i in 0..24 {
            let tenant = format!("tenant-{i}");
            let (status, body) = client.get(&format!("/ws/{tenant}/negotiate?x={i}")).await?;
            assert_eq!(status, 200, "{body}");
            let want = format!("backend-{}", h.ordinal(&tenant));
            assert_eq!(pod_of(&body), want, "h2={h2} {tenant}: {body}");
            assert!(
                body.contains(&format!("/ws/{tenant}/negotiate?x={i}")),
                "{body}"
            );
        }
        let (status, body) = client.get("/elsewhere").await?;
        assert_eq!(status, 404, "{body}");
    }
    // Twenty-four tenants over four pods, twice: the pool carried most of them.
    let m = samples(&h.admin_get("/metrics").await?.body);
    // Every request took one pooled connection, most an idle one: each I/O thread keeps
    // its own idle set, and on the tests' shared runtime a task may move between two
    // threads, so how many were dialled varies (18 of 48 seen at most).
    let (opened, reused) = (
        m["wsrouter_backend_pool_opened_total"],
        m["wsrouter_backend_pool_reused_total"],
    );
    assert_eq!(opened + reused, 48.0, "{m:?}");
    assert!(reused >= 12.0, "{m:?}");
    for proto in ["h1", "h2"] {
        let key = format!(r#"wsrouter_http_requests_total{{status="200",protocol="{proto}"}}"#);
        assert_eq!(m.get(&key), Some(&24.0), "{key}");
    }
    let seen: usize = pods.iter().map(|p| p.seen().len()).sum();
    assert_eq!(seen, 48);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_hears_a_proxied_request_and_the_client_a_proxied_answer() -> Result<()> {
    let mut limits = limits();
    // The Origin allowlist is the sockets' rule: a CORS preflight passes untouched.
    limits.policy.origins = router::Origins::parse(&["https://app.example".to_owned()], true)?;
    let (h, pods, cert) = router_over_pods(Options {
        backends: 1,
        limits,
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, false).await?;
    let req = Request::post("/ws/acme/api?q=1")
        .header("host", "example.test:8443")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x_under", "dropped")
        .header("x-forwarded-for", "6.6.6.6")
        .header("cookie", "session=1")
        .body(full("hello"))?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["via"], "1.1 wsrouter");
    for hop in ["x-hop", "keep-alive"] {
        assert!(
            !resp.headers().contains_key(hop),
            "{hop} reached the client"
        );
    }
    let seen = pods[0].seen();
    let r = seen.last().context("a request")?;
    assert_eq!(r.target, "/ws/acme/api?q=1");
    assert_eq!(r.body, b"hello");
    assert_eq!(r.headers["host"], "example.test:8443");
    assert_eq!(r.headers["via"], "1.1 wsrouter");
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers["x-forwarded-host"], "example.test:8443");
    assert_eq!(r.headers["cookie"], "session=1");
    assert_eq!(r.headers["te"], "trailers");
    for hop in ["x-secret", "keep-alive", "proxy-connection", "x_under"] {
        assert!(!r.headers.contains_key(hop), "{hop} reached the pod");
    }

    let preflight = Request::options("/ws/acme/api")
        .header("host", "localhost")
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .body(empty())?;
    assert_eq!(client.send(preflight).await?.status(), 200);
    let seen = pods[0].seen();
    let r = seen.last().context("the preflight")?;
    assert_eq!(r.method, http::Method::OPTIONS);
    assert_eq!(r.headers["origin"], "https://elsewhere.example");
    assert_eq!(r.headers["access-control-request-method"], "POST");

    // HEAD keeps its length and sends no body; 204 and 304 have none; the connection
    // carries on after each.
    let head = client
        .send(
            Request::head("/ws/acme/x")
                .header("host", "h")
                .body(empty())?,
        )
        .await?;
    assert!(head.headers().contains_key("content-length"));
    assert!(head.into_body().collect().await?.to_bytes().is_empty());
    for code in [204, 304] {
        let (status, body) = client.get(&format!("/ws/acme/status-{code}")).await?;
        assert_eq!((status.as_u16(), body.as_str()), (code, ""));
    }
    assert_eq!(client.get("/ws/acme/after").await?.0, 200);
    Ok(())
}

/// A request body the test feeds chunk by chunk.
fn streamed_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(frames)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_without_buffering() -> Result<()> {
    let (h, _pods, cert) = router_over_pods(Options {
        backends: 1,
        ..Options::default()
    })
    .await?;
    for h2 in [false, true] {
        let mut client = Client::connect(&h, &cert, h2).await?;
        let (tx, body) = streamed_body();
        let req = Request::post("https://localhost/ws/up/echo")
            .header("host", "localhost")
            .body(body)?;
        tx.send(Bytes::from_static(b"first")).await?;
        let resp = client.send(req).await?;
        let mut body = resp.into_body();
        // Each piece comes back before the next is sent: nothing waits for the whole.
        for piece in ["first", "second", "third"] {
            if piece != "first" {
                tx.send(Bytes::from(piece)).await?;
            }
            let frame = within(WAIT, "an echoed piece", body.frame()).await?;
            let data = frame.context("ended")??.into_data().ok().context("data")?;
            assert_eq!(data, piece.as_bytes(), "h2={h2}");
        }
        drop(tx);
        within(WAIT, "the end", body.collect()).await??;

        // An event stream arrives event by event.
        let resp = client.send(get("/ws/up/sse?n=0")).await?;
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut events = resp.into_body();
        for i in 0..3 {
            let frame = within(WAIT, "an event", events.frame()).await?;
            let data = frame.context("ended")??.into_data().ok().context("data")?;
            let text = String::from_utf8_lossy(&data).into_owned();
            assert!(text.starts_with(&format!("id: {i}\n")), "{text}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_to_an_http2_client() -> Result<()> {
    let (h, _pods, cert) = router_over_pods(Options {
        backends: 1,
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, true).await?;
    let mut req = get("/ws/t/trailers");
    req.headers_mut()
        .insert("te", http::HeaderValue::from_static("trailers"));
    let resp = client.send(req).await?;
    let collected = within(WAIT, "the body", resp.into_body().collect()).await??;
    let trailers = collected.trailers().cloned().context("no trailers")?;
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "part one, part two");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_fail_get_the_same_answers_as_for_sockets() -> Result<()> {
    let refusing = Refusing::start().await?;
    let hole = BlackHole::start().await?;
    let mut limits = limits();
    limits.backend_timeout = Duration::from_secs(1);
    // A pod that takes the request has as long as a body may stall to answer.
    limits.http.timers.idle = Some(Duration::from_secs(1));
    let (h, _pods, cert) = router_over_pods(Options {
        limits,
        replace: vec![(1, refusing.addr.to_string()), (3, hole.addr.to_string())],
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, false).await?;
    let cases = [
        (tenant_on(&h, 1, 0), "", 502, "backend unavailable"),
        (tenant_on(&h, 3, 0), "", 504, "did not answer in time"),
        // A pod that takes the request and never answers: the same 504.
        (tenant_on(&h, 0, 0), "/hang", 504, "did not answer in time"),
    ];
    for (tenant, tail, status, reason) in cases {
        let started = Instant::now();
        let (got, body) = client.get(&format!("/ws/{tenant}{tail}")).await?;
        assert_eq!(got.as_u16(), status, "{body}");
        assert!(body.contains(reason), "{body}");
        // The timeouts (1 s) answered, not the 60 s defaults.
        assert!(started.elapsed() < Duration::from_secs(8));
        // A refusal closes the connection; the next request takes a new one.
        client = Client::connect(&h, &cert, false).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_outlasts_the_backend_timeout_and_trips_nothing() -> Result<()> {
    let mut limits = limits();
    limits.backend_timeout = Duration::from_millis(500);
    limits.breaker.failures = 1;
    let (h, _pods, cert) = router_over_pods(Options {
        backends: 1,
        limits,
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, false).await?;
    for _ in 0..2 {
        let (status, body) = client.get("/ws/poller/slow?ms=1500").await?;
        assert_eq!(status, 200, "{body}");
    }
    let m = samples(&h.admin_get("/metrics").await?.body);
    let trips = m.get(r#"wsrouter_backend_circuit_trips_total{ordinal="0"}"#);
    assert_eq!(trips.copied().unwrap_or(0.0), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_never_cuts_a_request_and_a_move_ends_its_event_stream() -> Result<()> {
    let (h, pods, cert) = router_over_pods(Options {
        reroute: Some(RerouteConfig {
            grace: Duration::from_millis(300),
            per_second: 1000,
        }),
        ..Options::default()
    })
    .await?;
    let moving = tenant_on(&h, 1, 0);
    let staying = tenant_on(&h, 2, 0);
    let mut client = Client::connect(&h, &cert, true).await?;
    let mut moved = client
        .send(get(&format!("/ws/{moving}/sse")))
        .await?
        .into_body();
    let mut kept = client
        .send(get(&format!("/ws/{staying}/sse")))
        .await?
        .into_body();
    // The same over HTTP/1.1, whose requests hear the move from their connection's task.
    let mut client_h1 = Client::connect(&h, &cert, false).await?;
    let mut moved_h1 = client_h1
        .send(get(&format!("/ws/{moving}/sse")))
        .await?
        .into_body();
    within(WAIT, "first events", async {
        moved.frame().await;
        kept.frame().await;
        moved_h1.frame().await;
    })
    .await?;
    // A long poll of the moving tenant, held by its pod (no answer head yet).
    let mut poller = Client::connect(&h, &cert, false).await?;
    let poll_path = format!("/ws/{moving}/slow?ms=30000");
    let poll = tokio::spawn(async move { poller.get(&poll_path).await });
    // (Its pod has seen both event streams' requests, then the poll's.)
    within(WAIT, "the poll at its pod", pods[1].wait_for(3)).await?;
    let swap = Input::Overrides {
        source: TableSource::File {
            path: "test".into(),
        },
        data: Some(BTreeMap::from([(moving.clone(), "3".to_owned())])),
    };
    h.router.control().send(swap);
    h.wait_table("the move", |t| t.route(&moving).ordinal == 3)
        .await?;
    // The moved tenant's stream ends cleanly at an event boundary (no error, no
    // partial event), so its EventSource reconnects, to its new pod.
    for stream in [&mut moved, &mut moved_h1] {
        let mut events = 0;
        let ended = within(WAIT, "the moved stream's end", async {
            loop {
                match stream.frame().await {
                    None => return Ok::<_, anyhow::Error>(events),
                    Some(Ok(f)) => {
                        // (HTTP/2 ends the stream with an empty DATA frame.)
                        let data = f.into_data().unwrap_or_default();
                        if !data.is_empty() {
                            ensure!(data.ends_with(b"\n\n"), "a partial event: {data:?}");
                            events += 1;
                        }
                    }
                    Some(Err(e)) => anyhow::bail!("ended with an error: {e}"),
                }
            }
        })
        .await??;
        assert!(ended > 0, "the stream ended before the grace period");
    }
    // The held poll is told to come back: to its new pod, it now routes there.
    let (status, body) = within(WAIT, "the held poll's answer", poll).await???;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "tenant moved; retry\n")
    );
    let (_, body) = client.get(&format!("/ws/{moving}/x")).await?;
    assert_eq!(pod_of(&body), "backend-3");
    // The other tenant's stream goes on.
    for _ in 0..3 {
        let frame = within(WAIT, "an event after the swap", kept.frame()).await?;
        ensure!(frame.is_some_and(|f| f.is_ok()), "the kept stream ended");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_lets_requests_finish_and_ends_event_streams_at_its_end() -> Result<()> {
    // HTTP/1.1 requests hear the grace's end from their connection's task, HTTP/2
    // streams from the drain's token: both end their streams the same way.
    for h2 in [false, true] {
        let (h, _pods, cert) = router_over_pods(Options {
            drain_grace: Duration::from_millis(500),
            ..Options::default()
        })
        .await?;
        let mut client = Client::connect(&h, &cert, h2).await?;
        let mut stream = client.send(get("/ws/drained/sse")).await?.into_body();
        within(WAIT, "an event", stream.frame()).await?;
        let started = Instant::now();
        h.router.shutdown();
        // Events keep coming through the grace period, then the stream ends cleanly.
        let ended = within(WAIT, "the stream's end", async {
            loop {
                match stream.frame().await {
                    None => return Ok::<_, anyhow::Error>(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => anyhow::bail!("ended with an error: {e}"),
                }
            }
        })
        .await;
        ended??;
        assert!(started.elapsed() >= Duration::from_millis(450), "h2={h2}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_its_pod_closed_is_retried_unsent() -> Result<()> {
    let (h, pods, cert) = router_over_pods(Options {
        backends: 1,
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, false).await?;
    assert_eq!(client.get("/ws/t/a").await?.0, 200);
    // The pod restarts on the same address: the pooled connection is dead.
    let addr = pods[0].addr;
    for pod in pods {
        pod.stop().await;
    }
    let restarted = HttpPod::start_on(addr, "backend-0").await?;
    for i in 0..3 {
        let (status, body) = client.get(&format!("/ws/t/after-{i}")).await?;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(restarted.seen().len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_requests_count_with_its_sockets_against_its_cap() -> Result<()> {
    let mut limits = limits();
    limits.policy.max_per_tenant = 1;
    let (h, _pods, cert) = router_over_pods(Options {
        limits,
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, true).await?;
    // A long answer in flight holds the tenant's one place...
    let stream = client.send(get("/ws/capped/sse")).await?;
    assert_eq!(stream.status(), 200);
    // ...so its next request is refused like a socket would be, and another tenant's is not.
    let (status, body) = client.get("/ws/capped/x").await?;
    assert_eq!(status, 429, "{body}");
    assert_eq!(client.get("/ws/other/x").await?.0, 200);
    // Once the answer is done, the place is free again.
    drop(stream);
    within(WAIT, "the place back", async {
        loop {
            let (status, _) = client.get("/ws/capped/x").await?;
            if status == 200 {
                return Ok::<_, anyhow::Error>(());
            }
            // Polled: the client's reset reaches the router on its own time.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_event_stream_outlives_the_idle_timeout_a_quiet_answer_does_not() -> Result<()> {
    let mut limits = limits();
    // As by default: the timeout set, event streams spared (only an operator's
    // --http-idle-timeout applies to them).
    limits.http.timers.idle = Some(Duration::from_millis(500));
    limits.http.timers.event_streams_idle = false;
    let (h, _pods, cert) = router_over_pods(Options {
        backends: 1,
        limits,
        ..Options::default()
    })
    .await?;
    let mut client = Client::connect(&h, &cert, true).await?;
    // Three events 1.2 s apart, each gap past the idle timeout: all arrive, then the end.
    let resp = client.send(get("/ws/t/sse?n=3&every=1200")).await?;
    let body = within(WAIT, "the quiet stream", resp.into_body().collect()).await??;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    assert_eq!(text.matches("id: ").count(), 3, "{text}");
    // A streamed echo whose upload stops: its answer is cut once quiet for 500 ms.
    let (tx, body) = streamed_body();
    let req = Request::post("https://localhost/ws/t/echo")
        .header("host", "localhost")
        .body(body)?;
    tx.send(Bytes::from_static(b"then nothing")).await?;
    let resp = client.send(req).await?;
    let cut = within(WAIT, "the quiet answer's end", resp.into_body().collect()).await?;
    assert!(cut.is_err(), "a quiet answer outlived the idle timeout");
    drop(tx);
    Ok(())
}

/// An HTTP/1.1 connection waiting for its next request is pending again (after a
/// moment: a client that asks again at once is spared the trip): held to its source's
/// share of the pending pool like a new connection, so with the share full it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_is_held_to_its_sources_pending_share() -> Result<()> {
    let mut limits = limits();
    limits.max_pending_per_ip = 2;
    let (h, _pods, cert) = router_over_pods(Options {
        backends: 1,
        limits,
        ..Options::default()
    })
    .await?;
    let mut config = (*cert.client_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(h.addr()).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    // A request in flight: the connection is not pending while it lasts.
    let (tx, body) = streamed_body();
    let req = Request::post("https://localhost/ws/busy/echo")
        .header("host", "localhost")
        .body(body)?;
    tx.send(Bytes::from_static(b"one")).await?;
    let resp = within(WAIT, "an answer", send.send_request(req)).await??;
    assert_eq!(resp.status(), 200);
    // Meanwhile two more connections from the same address take the source's share,
    // each stalled in its TLS hello.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(h.addr()).await?;
        tcp.write_all(&wsload::flood::client_hello_claiming(2000, 100))
            .await?;
        held.push(tcp);
    }
    h.pending_at_least(2).await?;
    // The answer ends; the connection, idle, has no room in the pool and is closed.
    drop(tx);
    within(WAIT, "the answer's end", resp.into_body().collect()).await??;
    within(WAIT, "the idle connection closed", conn).await???;
    assert!(h.router.refused_connections() >= 1);
    assert_eq!(h.router.admission().pending_count(), 2, "the two held stay");
    drop(held);
    Ok(())
}
