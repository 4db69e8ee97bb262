//! External authorization (`--auth forward:URL`) against a real HTTP service started by
//! the test: its yes lets a request in with its headers for the pod, its no goes back to
//! the client as it said it, its answers are remembered, and its outage meets the
//! failure policy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::harness::*;

/// What the service was asked: the request line and its headers, lower-cased.
type Asked = Arc<Mutex<Vec<String>>>;

/// An authorization service: `Bearer alice` may open `acme` (answered with `X-User:
/// alice`), another token nothing (403), no token 401 with a challenge. It lives until
/// its task is aborted.
struct AuthService {
    addr: SocketAddr,
    asked: Asked,
    task: tokio::task::JoinHandle<()>,
    /// Ends every connection it serves, as a pod's death would.
    stop: tokio_util::sync::CancellationToken,
}

impl AuthService {
    async fn start() -> Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    async fn start_on(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let asked = Asked::default();
        let seen = asked.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                let svc = service_fn(move |req| answer(req, seen.clone()));
                let stopping = stopping.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = stopping.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            asked,
            task,
            stop,
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
        self.stop.cancel();
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Asked,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let mut line = format!("{} {}", req.method(), req.uri());
    for (k, v) in req.headers() {
        line.push_str(&format!(
            "\n{}: {}",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    if let Ok(mut s) = seen.lock() {
        s.push(line);
    }
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.as_bytes().to_vec());
    let acme = req.uri().path().starts_with("/check/ws/acme");
    let resp = match auth.as_deref() {
        None => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Bearer realm=\"corp\"")
            .body(Full::new(Bytes::from_static(b"who are you?"))),
        Some(b"Bearer alice") if acme => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("x-user", "alice")
            .header("x-secret", "not for the pod")
            .body(Full::new(Bytes::new())),
        Some(b"Bearer crash") => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::new(Bytes::new())),
        Some(_) => Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Full::new(Bytes::new())),
    };
    resp.map_err(std::io::Error::other)
}

fn settings(url: &str, ttl: Duration, fail_open: bool) -> Result<router::ForwardSettings> {
    Ok(router::ForwardSettings {
        url: url.parse()?,
        request_headers: vec![http::header::AUTHORIZATION],
        response_headers: vec![http::HeaderName::from_static("x-user")],
        cache_ttl: ttl,
        timeout: Duration::from_millis(500),
        fail_open,
    })
}

fn request(path: &str, auth: Option<&str>, upgrade: bool) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let upgrade = if upgrade {
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-User: mallory\r\n{auth}{upgrade}\r\n")
        .into_bytes()
}

/// The service decides: yes opens the socket (the pod gets the service's `X-User`, not
/// the client's), no is its own 401 (with its challenge) or 403, and a refused request
/// never reaches the pod; the service is asked with the method, path, the selected
/// headers and the forwarding headers, never the upgrade's; a repeated credential is
/// answered from memory.
#[tokio::test]
async fn the_service_decides_and_its_answers_are_remembered() -> Result<()> {
    let service = AuthService::start().await?;
    let backend = FakeBackend::start(FakeAnswer::Upgrade(good_101)).await?;
    let url = format!("http://{}/check", service.addr);
    let h = Harness::start(Options {
        replace: (0..4).map(|i| (i, backend.addr.to_string())).collect(),
        forward_auth: Some(settings(&url, Duration::from_secs(60), false)?),
        ..Options::default()
    })
    .await?;
    let r = h.raw(&request("/ws/acme", None, true)).await?;
    assert_eq!(r.status, 401, "{}", r.head);
    assert!(
        r.head.contains("www-authenticate: bearer realm=\"corp\""),
        "{}",
        r.head
    );
    let r = h
        .raw(&request("/ws/acme", Some("Bearer bob"), true))
        .await?;
    assert_eq!(r.status, 403, "{}", r.head);
    let r = h
        .raw(&request("/ws/globex", Some("Bearer alice"), true))
        .await?;
    assert_eq!(r.status, 403, "{}", r.head);
    assert!(
        backend.heads().is_empty(),
        "a refused request reached the pod"
    );
    // A client naming the service's header in Connection cannot have it stripped.
    let naming = String::from_utf8(request("/ws/acme?room=7", Some("Bearer alice"), true))?
        .replace(
            "X-User: mallory\r\n",
            "X-User: mallory\r\nConnection: X-User\r\n",
        );
    let head = h.raw_head(naming.as_bytes()).await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let heads = backend.heads();
    let sent = heads
        .first()
        .map(String::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(sent.contains("x-user: alice"), "{sent}");
    assert!(
        !sent.contains("mallory") && !sent.contains("x-secret"),
        "{sent}"
    );
    let asked = service.asked();
    assert_eq!(asked.len(), 4, "{asked:#?}");
    let last = asked.last().map(String::as_str).unwrap_or_default();
    assert!(last.starts_with("GET /check/ws/acme?room=7"), "{last}");
    for want in [
        "authorization: bearer alice",
        "x-forwarded-method: get",
        "x-forwarded-uri: /ws/acme?room=7",
        "x-forwarded-host: localhost",
        "x-forwarded-for: 127.0.0.1",
    ] {
        assert!(last.to_ascii_lowercase().contains(want), "{want} in {last}");
    }
    for never in ["upgrade", "sec-websocket-key", "x-user"] {
        assert!(
            !last.to_ascii_lowercase().contains(never),
            "{never} in {last}"
        );
    }
    // The same credential again, yes and no: answered from memory.
    let head = h
        .raw_head(&request("/ws/acme?room=7", Some("Bearer alice"), true))
        .await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        h.raw(&request("/ws/acme", Some("Bearer bob"), true))
            .await?
            .status,
        403
    );
    assert_eq!(
        service.asked().len(),
        4,
        "asked again within the cache's TTL"
    );
    // A plain request is asked about too.
    assert_eq!(
        h.raw(&request("/ws/acme/negotiate", Some("Bearer bob"), false))
            .await?
            .status,
        403
    );
    assert_eq!(service.asked().len(), 5);
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(
        m.get("wsrouter_auth_refused_total{reason=\"service_refused\"}")
            .copied(),
        Some(5.0)
    );
    Ok(())
}

/// A service that fails (5xx), is down, or is too slow meets the failure policy: `deny`
/// answers 503 with `Retry-After` and lets nothing through; `allow` lets the request in.
/// Failures are not remembered: the service, back, is asked again at once.
#[tokio::test]
async fn an_outage_follows_the_failure_policy() -> Result<()> {
    let backend = FakeBackend::start(FakeAnswer::Upgrade(good_101)).await?;
    let service = AuthService::start().await?;
    let addr = service.addr;
    let url = format!("http://{addr}/check");
    let deny = Harness::start(Options {
        replace: (0..4).map(|i| (i, backend.addr.to_string())).collect(),
        forward_auth: Some(settings(&url, Duration::from_secs(60), false)?),
        ..Options::default()
    })
    .await?;
    let allow = Harness::start(Options {
        replace: (0..4).map(|i| (i, backend.addr.to_string())).collect(),
        forward_auth: Some(settings(&url, Duration::from_secs(60), true)?),
        ..Options::default()
    })
    .await?;
    // A 5xx from the service.
    let r = deny
        .raw(&request("/ws/acme", Some("Bearer crash"), true))
        .await?;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.head.contains("retry-after: 1"), "{}", r.head);
    let head = allow
        .raw_head(&request("/ws/acme", Some("Bearer crash"), true))
        .await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The service down: refused connections.
    drop(service);
    let down = within(WAIT, "the service's port closed", async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    down.await?;
    assert_eq!(
        deny.raw(&request("/ws/acme", Some("Bearer carol"), true))
            .await?
            .status,
        503
    );
    let head = allow
        .raw_head(&request("/ws/acme", Some("Bearer carol"), true))
        .await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Back on the same address: asked again, not answered from a remembered failure.
    let service = AuthService::start_on(addr).await?;
    let r = deny
        .raw(&request("/ws/acme", Some("Bearer carol"), true))
        .await?;
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(service.asked().len(), 1);
    // Too slow: a listener that never answers (accepts, reads, says nothing).
    let slow = TcpListener::bind("127.0.0.1:0").await?;
    let slow_url = format!("http://{}/check", slow.local_addr()?);
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = slow.accept().await {
            held.push(tcp);
        }
    });
    let slow_door = Harness::start(Options {
        replace: (0..4).map(|i| (i, backend.addr.to_string())).collect(),
        forward_auth: Some(settings(&slow_url, Duration::ZERO, false)?),
        ..Options::default()
    })
    .await?;
    let r = slow_door
        .raw(&request("/ws/acme", Some("Bearer alice"), true))
        .await?;
    assert_eq!(r.status, 503, "{}", r.head);
    let (_, m) = scrape_metrics(&allow).await?;
    assert_eq!(m.get("wsrouter_auth_failed_open_total").copied(), Some(2.0));
    let (_, m) = scrape_metrics(&deny).await?;
    assert_eq!(
        m.get("wsrouter_auth_refused_total{reason=\"service_unavailable\"}")
            .copied(),
        Some(2.0)
    );
    Ok(())
}
