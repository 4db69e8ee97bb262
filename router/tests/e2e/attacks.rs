//! Hostile input, second round: attacks found by a review of the hardened router, each
//! written as the attacker sends it. None may wedge a thread, hold the live pool, spoof
//! an address or lock out other clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// Reads one frame (header and payload) from a server: (first byte, payload).
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => usize::from(s.read_u16().await?),
        127 => usize::try_from(s.read_u64().await?)?,
        n => usize::from(n),
    };
    anyhow::ensure!(h[1] & 0x80 == 0, "a server frame must not be masked");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok((h[0], payload))
}

/// A WebSocket opened over raw TLS, its 101 read: the attacker's own client.
async fn raw_ws(
    h: &Harness,
    path: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tls = h.tls().await?;
    tls.write_all(&upgrade_request(path)).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    within(WAIT, "a 101", async {
        while !head.ends_with(b"\r\n\r\n") {
            anyhow::ensure!(tls.read(&mut b).await? == 1, "closed before a head");
            head.push(b[0]);
        }
        Ok(())
    })
    .await??;
    let head = String::from_utf8_lossy(&head);
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
    Ok(tls)
}

/// Attack 1: with `--ping-interval`, while the router waits for its pong, a masked frame
/// whose 64-bit length is 2^64 - 14. Header and payload added once wrapped to 0 and the
/// pong search spun its I/O thread for good. Now: the attacker gets close 1002, a socket
/// on the same (only) I/O thread keeps echoing, and `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapping_frame_length_is_a_protocol_error_and_spares_the_thread() -> Result<()> {
    let mut limits = limits();
    limits.timers.client_ping = Some(router::Ping {
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
    });
    limits.stall_threshold = Duration::from_secs(2);
    let h = Harness::start(Options {
        limits,
        io_threads: 1,
        interval: Duration::from_secs(3600),
        ..Options::default()
    })
    .await?;
    let mut bystander = h.ws("bystander").await?;
    echo_text(&mut bystander, "before").await?;

    let mut attacker = raw_ws(&h, "/ws/attacker").await?;
    within(WAIT, "the router's ping", async {
        loop {
            let (b0, payload) = read_frame(&mut attacker).await?;
            if b0 == 0x89 && payload.len() == 8 {
                return anyhow::Ok(());
            }
        }
    })
    .await??;
    // No pong: the router now searches everything the attacker sends for it.
    let mut frame = vec![0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF2];
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 64]);
    attacker.write_all(&frame).await?;
    let close = within(WAIT, "the attacker's close frame", async {
        loop {
            let (b0, payload) = read_frame(&mut attacker).await?;
            if b0 == 0x88 {
                return anyhow::Ok(payload);
            }
        }
    })
    .await??;
    assert_eq!(
        close[..2],
        1002u16.to_be_bytes(),
        "close 1002, protocol error"
    );
    drop(attacker);
    let adm = h.router.admission();
    within(
        WAIT,
        "the attacker's relay to end",
        h.router.changes().until(|| adm.live_count() == 1),
    )
    .await?;

    echo_text(&mut bystander, "after")
        .await
        .context("the bystander on the same thread")?;
    assert_eq!(h.admin_get("/healthz").await?.status, 200);
    let (_, m) = scrape_metrics(&h).await?;
    let closed: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("wsrouter_connections_closed_total")
                && k.contains("reason=\"client_protocol_error\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(closed, 1.0, "counted by its reason");
    Ok(())
}

/// Answers `GET /wedge` by blocking its I/O thread for a while, as a wedged relay
/// would: a real stall of a real event loop.
#[derive(Debug)]
struct Wedge {
    started: std::sync::mpsc::SyncSender<()>,
    for_how_long: Duration,
}

impl router::Pages for Wedge {
    fn answer(
        &self,
        _: &http::Method,
        uri: &http::Uri,
        _: &router::Shared,
    ) -> Option<http::Response<http_body_util::Full<bytes::Bytes>>> {
        if uri.path() != "/wedge" {
            return None;
        }
        let _ = self.started.try_send(());
        // The point of the test: this thread's event loop does not turn meanwhile.
        std::thread::sleep(self.for_how_long);
        Some(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::new(),
        )))
    }
}

/// Liveness sees a wedged I/O thread: `/healthz` fails and names it, and
/// `wsrouter_worker_stalled` says which; once the thread turns again, both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_io_thread_fails_healthz_until_it_turns_again() -> Result<()> {
    let (started, wedged) = std::sync::mpsc::sync_channel(1);
    let mut limits = limits();
    limits.stall_threshold = Duration::from_millis(500);
    let h = Harness::start(Options {
        limits,
        io_threads: 1,
        pages: Some(Arc::new(Wedge {
            started,
            for_how_long: Duration::from_secs(3),
        })),
        ..Options::default()
    })
    .await?;
    assert_eq!(h.admin_get("/healthz").await?.status, 200);
    let request = tokio::spawn({
        let mut tls = h.tls().await?;
        async move {
            tls.write_all(b"GET /wedge HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut b = [0u8; 1];
            let _ = tls.read(&mut b).await?;
            anyhow::Ok(())
        }
    });
    within(WAIT, "the thread to wedge", async {
        tokio::task::spawn_blocking(move || wedged.recv()).await
    })
    .await???;
    let failing = within(WAIT, "/healthz to fail", async {
        loop {
            let r = h.admin_get("/healthz").await?;
            if r.status == 503 {
                return anyhow::Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert!(
        failing.body.contains("I/O thread 0 has not turned"),
        "{}",
        failing.body
    );
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(m.get("wsrouter_worker_stalled{worker=\"0\"}"), Some(&1.0));
    within(WAIT, "the wedged request to end", request).await???;
    within(WAIT, "/healthz to recover", async {
        while h.admin_get("/healthz").await?.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(m.get("wsrouter_worker_stalled{worker=\"0\"}"), Some(&0.0));
    Ok(())
}

/// A TLS connection to the router from loopback address `src`, offering `alpn`.
async fn tls_from(
    h: &Harness,
    cert: &router::DevCert,
    src: std::net::IpAddr,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = (*cert.client_config()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = connect_from(src, h.addr()).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(tls)
}

type H2Send = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/2 connection over `tls`; the returned task ends when the connection does.
async fn h2_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<(H2Send, tokio::task::JoinHandle<()>)> {
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((send, task))
}

/// An extended CONNECT for a WebSocket on `path`: its status, and the socket on 200.
async fn h2_ws(
    send: &mut H2Send,
    path: &str,
) -> Result<(
    http::StatusCode,
    Option<tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>>,
)> {
    within(WAIT, "a stream", send.ready()).await??;
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = within(WAIT, "the answer", send.send_request(req)).await??;
    let status = resp.status();
    if status != http::StatusCode::OK {
        return Ok((status, None));
    }
    let upgraded = within(WAIT, "the upgrade", hyper::upgrade::on(&mut resp)).await??;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    Ok((status, Some(ws)))
}

/// Attack 2: h2 connections that send nothing after TLS, or one plain GET, once each
/// held a live place for good. 30 of them and 30 idle HTTP/1.1 TLS connections against
/// `--max-connections 20` and a pending pool of 40: the pool drops the crowd's oldest,
/// no live place is taken, and a well-behaved HTTP/1.1 client and a well-behaved h2
/// client are both served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_hold_no_live_place_and_are_evicted() -> Result<()> {
    let cert = router::DevCert::generate(&["localhost", "127.0.0.1"])?;
    let mut limits = limits();
    limits.max_connections = 20;
    limits.max_pending = 40;
    limits.max_pending_per_ip = 40;
    let h = Harness::start_with_cert(
        Options {
            limits,
            ..Options::default()
        },
        &cert,
    )
    .await?;
    let crowd = |i: u8| std::net::IpAddr::from([127, 0, 3, 1 + i % 2]);
    let mut held = Vec::new();
    for i in 0..30u8 {
        let tls = tls_from(&h, &cert, crowd(i), b"h2").await?;
        if i % 2 == 0 {
            // Silent after TLS: not even the preface.
            held.push((Some(tls), None));
            continue;
        }
        // The preface and one plain GET, forwarded and answered whole; then nothing.
        let (mut send, task) = h2_over(tls).await?;
        let req = http::Request::builder()
            .uri("https://localhost/ws/ns-01")
            .body(http_body_util::Empty::new())?;
        if let Ok(Ok(r)) = tokio::time::timeout(WAIT, send.send_request(req)).await {
            assert_eq!(r.status(), 200, "a plain GET is forwarded");
            within(
                WAIT,
                "its body",
                http_body_util::BodyExt::collect(r.into_body()),
            )
            .await??;
        }
        held.push((None, Some((send, task))));
    }
    let mut idle_h1 = Vec::new();
    for i in 0..30u8 {
        idle_h1.push(tls_from(&h, &cert, crowd(i), b"http/1.1").await?);
    }
    let adm = h.router.admission();
    // Nothing but a live stream holds a live place: a forwarded request's is given back
    // as its answer ends.
    within(
        WAIT,
        "the answered requests' places back",
        h.router.changes().until(|| adm.live_count() == 0),
    )
    .await?;
    assert!(adm.pending_count() <= 40);

    let mut ws = h.ws("ns-01").await.context("the HTTP/1.1 client")?;
    echo_text(&mut ws, "h1").await?;
    let tls = tls_from(&h, &cert, [127, 0, 0, 1].into(), b"h2").await?;
    let (mut send, _task) = h2_over(tls).await?;
    let (status, ws2) = h2_ws(&mut send, "/ws/ns-02").await?;
    assert_eq!(status, 200, "the h2 client");
    let mut ws2 = ws2.context("a socket")?;
    ws2.send(Message::text("h2")).await?;
    let (_, m) = scrape_metrics(&h).await?;
    assert!(
        m.get("wsrouter_pending_evicted_total")
            .copied()
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(adm.live_count(), 2, "one place per live socket");
    drop((held, idle_h1));
    Ok(())
}

/// An h2 connection must send its first extended CONNECT within the request and
/// backend timeouts, and one whose last stream ended is closed (GOAWAY) after the idle
/// timeout: neither lingers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_without_streams_are_closed() -> Result<()> {
    let cert = router::DevCert::generate(&["localhost", "127.0.0.1"])?;
    let mut limits = limits();
    limits.request_timeout = Duration::from_millis(500);
    limits.backend_timeout = Duration::from_millis(500);
    limits.timers.idle_timeout = Some(Duration::from_secs(1));
    let h = Harness::start_with_cert(
        Options {
            limits,
            ..Options::default()
        },
        &cert,
    )
    .await?;
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    // A preface and nothing more: closed once the first stream is overdue.
    let (_send, silent) = h2_over(tls_from(&h, &cert, local, b"h2").await?).await?;
    within(WAIT, "the silent h2 connection to be closed", silent).await??;
    // A socket that ends: then, with no stream, the connection goes too.
    let (mut send, conn) = h2_over(tls_from(&h, &cert, local, b"h2").await?).await?;
    let (status, ws) = h2_ws(&mut send, "/ws/ns-03").await?;
    assert_eq!(status, 200);
    let adm = h.router.admission();
    assert_eq!((adm.live_count(), adm.pending_count()), (1, 0));
    let mut ws = ws.context("a socket")?;
    ws.close(None).await?;
    while ws.next().await.is_some() {}
    within(
        WAIT,
        "the connection to be pending again",
        h.router
            .changes()
            .until(|| adm.live_count() == 0 && adm.pending_count() == 1),
    )
    .await?;
    within(WAIT, "the idle h2 connection to be closed", conn).await??;
    within(
        WAIT,
        "the pool to empty",
        h.router.changes().until(|| adm.pending_count() == 0),
    )
    .await?;
    Ok(())
}

/// A backend that records each request head it gets, answers 101, and holds the socket.
async fn recording_backend() -> Result<FakeBackend> {
    FakeBackend::start(FakeAnswer::Upgrade(good_101)).await
}

/// The one value of header `name` in a raw request head, if it has exactly one.
fn header_in(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// An upgrade request for `path` with extra raw header lines.
fn upgrade_with(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Attack 3: forwarding headers are the client's to forge. By default the backend hears
/// only the router's own (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`); names with
/// '_' are dropped; the client is not told the router's internals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_never_reach_the_backend() -> Result<()> {
    let backend = recording_backend().await?;
    let mut limits = limits();
    limits.policy.route_headers = false;
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, backend.addr.to_string())],
        limits,
        ..Options::default()
    })
    .await?;
    let forged = "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: gopher\r\nX_Forwarded_For: 6.6.6.6\r\nX_Tenant: other\r\nTrue-Client-IP: 6.6.6.6\r\n";
    let head = h.raw_head(&upgrade_with("/ws/ns-01", forged)).await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("x-wsrouter"),
        "internal diagnostics sent to a client: {head}"
    );
    let got = first_head(&backend)?;
    assert_eq!(header_in(&got, "x-forwarded-for"), ["127.0.0.1"], "{got}");
    assert_eq!(header_in(&got, "x-forwarded-proto"), ["https"]);
    assert_eq!(header_in(&got, "x-forwarded-host"), ["localhost"]);
    assert_eq!(
        header_in(&got, "forwarded"),
        ["for=127.0.0.1;proto=https;host=localhost"]
    );
    for gone in ["x-real-ip", "x_forwarded_for", "x_tenant", "true-client-ip"] {
        assert!(header_in(&got, gone).is_empty(), "{gone} passed:\n{got}");
    }
    assert!(!got.contains("6.6.6.6") && !got.contains("evil"), "{got}");
    Ok(())
}

/// Behind trusted proxies: only the hops they appended are believed, walking
/// X-Forwarded-For from the right; the client they name is who the per-address cap
/// counts. And `--underscore-headers refuse` answers 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_hops_are_believed_and_drive_the_per_address_cap() -> Result<()> {
    let backend = recording_backend().await?;
    let mut limits = limits();
    limits.max_connections_per_ip = 1;
    limits.policy.trusted_proxies =
        router::TrustedProxies::parse(&["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()])?;
    limits.policy.underscores = router::Underscores::Refuse;
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, backend.addr.to_string())],
        limits,
        ..Options::default()
    })
    .await?;
    // The peer (127.0.0.1) is trusted, so is 10.0.0.5; 198.51.100.7 is the client; the
    // 6.6.6.6 left of it is the client's own forgery.
    let xff = "X-Forwarded-For: 6.6.6.6, 198.51.100.7, 10.0.0.5\r\nX-Forwarded-Proto: http\r\n";
    let mut first = h.tls().await?;
    first.write_all(&upgrade_with("/ws/ns-01", xff)).await?;
    let mut b = [0u8; 12];
    first.read_exact(&mut b).await?;
    assert_eq!(&b, b"HTTP/1.1 101");
    let got = first_head(&backend)?;
    assert_eq!(
        header_in(&got, "x-forwarded-for"),
        ["198.51.100.7, 10.0.0.5, 127.0.0.1"]
    );
    assert_eq!(
        header_in(&got, "x-forwarded-proto"),
        ["http"],
        "a trusted proxy's proto"
    );
    assert!(header_in(&got, "forwarded")[0].starts_with("for=198.51.100.7;proto=http;"));
    // The same client again: over its one live place. Another client: in.
    let again = h.raw(&upgrade_with("/ws/ns-02", xff)).await?;
    assert_eq!(again.status, 429, "{again:?}");
    let other = h
        .raw_head(&upgrade_with(
            "/ws/ns-02",
            "X-Forwarded-For: 198.51.100.8\r\n",
        ))
        .await?;
    assert!(other.starts_with("HTTP/1.1 101"), "{other}");
    let refused = h.raw(&upgrade_with("/ws/ns-03", "X_Tenant: a\r\n")).await?;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("x_tenant"), "{}", refused.body);
    drop(first);
    Ok(())
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `src` to `dst`, or a
/// LOCAL one when `src` is `None`.
fn proxy_v2(src: Option<std::net::SocketAddrV4>, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match src {
        None => h.extend([0x20, 0x00, 0, 0]),
        Some(src) => {
            h.extend([0x21, 0x11, 0, 12]);
            h.extend(src.ip().octets());
            h.extend(dst.ip().octets());
            h.extend(src.port().to_be_bytes());
            h.extend(dst.port().to_be_bytes());
        }
    }
    h
}

/// A WebSocket through the router from loopback address `from`, with `before` written
/// ahead of the TLS handshake (a PROXY protocol header, or anything).
async fn ws_after(
    h: &Harness,
    cert: &router::DevCert,
    from: std::net::IpAddr,
    before: &[u8],
    tenant: &str,
) -> Result<Ws> {
    let mut tcp = connect_from(from, h.addr()).await?;
    tcp.write_all(before).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(cert.client_config())
        .connect(name, tcp)
        .await?;
    let url = format!("wss://localhost:{}/ws/{tenant}", h.addr().port());
    Ok(
        within(WAIT, "a socket", tokio_tungstenite::client_async(url, tls))
            .await??
            .0,
    )
}

/// A router that takes the PROXY protocol from one balancer, 127.0.0.200, with one live
/// socket per client, in front of a backend that records what it is sent.
async fn behind_a_balancer(
    handshake_timeout: Duration,
) -> Result<(router::DevCert, FakeBackend, Harness)> {
    let cert = router::DevCert::generate(&["localhost", "127.0.0.1"])?;
    let backend = recording_backend().await?;
    let mut limits = limits();
    limits.proxy_protocol = router::ProxyProtocol::On;
    limits.max_connections_per_ip = 1;
    limits.handshake_timeout = handshake_timeout;
    limits.policy.trusted_proxies = router::TrustedProxies::parse(&["127.0.0.200".to_owned()])?;
    let options = Options {
        backends: 1,
        replace: vec![(0, backend.addr.to_string())],
        limits,
        ..Options::default()
    };
    let h = Harness::start_with_cert(options, &cert).await?;
    Ok((cert, backend, h))
}

/// The first request head a recording backend got (it records before answering, so
/// once the client has its answer the head is there).
fn first_head(backend: &FakeBackend) -> Result<String> {
    backend
        .heads()
        .into_iter()
        .next()
        .context("the backend got no request")
}

/// Attack 4, at the listener: with `--proxy-protocol on` the client is whom a trusted
/// balancer's header names (its address in X-Forwarded-For, its own per-address
/// budget); v2 LOCAL is the balancer itself; anyone else, or a bad header, is closed
/// and counted by reason, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_are_believed_only_from_trusted_balancers() -> Result<()> {
    let (cert, backend, h) = behind_a_balancer(Duration::from_millis(500)).await?;
    let balancer: std::net::IpAddr = [127, 0, 0, 200].into();
    let dst = std::net::SocketAddrV4::new([127, 0, 0, 1].into(), h.addr().port());
    let client = |i: u8| std::net::SocketAddrV4::new([198, 51, 100, i].into(), 40000);
    let _a = ws_after(
        &h,
        &cert,
        balancer,
        &proxy_v2(Some(client(1)), dst),
        "ns-01",
    )
    .await?;
    let _b = ws_after(
        &h,
        &cert,
        balancer,
        &proxy_v2(Some(client(2)), dst),
        "ns-01",
    )
    .await?;
    let heads = backend.heads();
    let xff: Vec<_> = heads
        .iter()
        .flat_map(|h| header_in(h, "x-forwarded-for"))
        .collect();
    assert_eq!(xff, ["198.51.100.1", "198.51.100.2"]);
    // The same client again is over its own budget, though the balancer is one address.
    let again = ws_after(
        &h,
        &cert,
        balancer,
        &proxy_v2(Some(client(1)), dst),
        "ns-01",
    )
    .await;
    assert!(again.is_err(), "a second socket for client 1");
    // The balancer's health check (LOCAL) is served as the balancer.
    let _check = ws_after(&h, &cert, balancer, &proxy_v2(None, dst), "ns-02").await?;
    // Refused and closed: an untrusted source, garbage, a v1 line cut short (timeout).
    for (from, before) in [
        ([127, 0, 0, 1], proxy_v2(Some(client(3)), dst)),
        ([127, 0, 0, 200], b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ([127, 0, 0, 200], b"PROXY TCP4 198.51.100.9".to_vec()),
    ] {
        let mut tcp = connect_from(from.into(), h.addr()).await?;
        tcp.write_all(&before).await?;
        let mut buf = [0u8; 64];
        let n = within(WAIT, "the router to close", tcp.read(&mut buf)).await?;
        assert!(matches!(n, Ok(0) | Err(_)), "{before:?} got {n:?}");
    }
    let (_, m) = scrape_metrics(&h).await?;
    for (series, want) in [
        (
            "wsrouter_proxy_protocol_headers_total{reason=\"client\"}",
            3.0,
        ),
        (
            "wsrouter_proxy_protocol_headers_total{reason=\"local\"}",
            1.0,
        ),
        (
            "wsrouter_proxy_protocol_errors_total{reason=\"untrusted\"}",
            1.0,
        ),
        (
            "wsrouter_proxy_protocol_errors_total{reason=\"signature\"}",
            1.0,
        ),
        (
            "wsrouter_proxy_protocol_errors_total{reason=\"timeout\"}",
            1.0,
        ),
    ] {
        assert_eq!(m.get(series), Some(&want), "{series}");
    }
    Ok(())
}

/// A real sender: HAProxy (Debian's package) in TCP mode with `send-proxy-v2` in front
/// of the router. 100 clients from distinct loopback addresses each get their own
/// per-address budget (one live socket each, a second refused), and the backend sees
/// each one's real address. Skipped when haproxy is not installed, unless
/// WSROUTER_REQUIRE_HAPROXY is set (CI installs it and sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_send_proxy_v2_each_client_is_itself() -> Result<()> {
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        anyhow::ensure!(
            std::env::var_os("WSROUTER_REQUIRE_HAPROXY").is_none(),
            "haproxy is not installed"
        );
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy)");
        return Ok(());
    }
    let (cert, backend, h) = behind_a_balancer(limits().handshake_timeout).await?;
    // A free port for HAProxy: bound, read back, freed just before it binds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("wsrouter-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server router {} send-proxy-v2 source 127.0.0.200\n",
            h.addr()
        ),
    )?;
    let _haproxy = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    within(WAIT, "haproxy to listen", async {
        while tokio::net::TcpStream::connect(front).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let connector = tokio_rustls::TlsConnector::from(cert.client_config());
    let open = |src: std::net::IpAddr, tenant: String| {
        let connector = connector.clone();
        async move {
            let tcp = connect_from(src, front).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tls = connector.connect(name, tcp).await?;
            let url = format!("wss://localhost:{port}/ws/{tenant}");
            anyhow::Ok(tokio_tungstenite::client_async(url, tls).await?.0)
        }
    };
    let client = |i: u32| std::net::IpAddr::from([127, 0, 4, 1 + i as u8]);
    let mut sockets = Vec::new();
    for i in 0..100 {
        let ws = within(
            WAIT,
            "a client through haproxy",
            open(client(i), format!("t-{i}")),
        )
        .await?
        .with_context(|| format!("client {i}"))?;
        sockets.push(ws);
    }
    // Each client's budget is its own: a second socket from client 7 is refused, and
    // everyone else is unaffected.
    let second = within(WAIT, "a second socket", open(client(7), "t-x".to_owned())).await?;
    assert!(second.is_err(), "client 7's second socket was let in");
    sockets[42].send(Message::text("still here")).await?;
    let heads = backend.heads();
    let mut seen: Vec<String> = heads
        .iter()
        .flat_map(|h| header_in(h, "x-forwarded-for"))
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..100).map(|i| client(i).to_string()).collect();
    want.sort();
    assert_eq!(seen, want, "the backend sees each client's own address");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Smaller findings: `/route` and `/table` list tenants and pod addresses, so with
/// `--admin-token` they need it (constant-time compared); the probes and `/metrics` do
/// not. And a Tomcat/Jetty path parameter (`..;`) after the tenant is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_what_names_tenants_and_paths_with_parameters_are_refused(
) -> Result<()> {
    let token = "0123456789abcdef0123456789abcdef";
    let h = Harness::start(Options {
        admin_token: Some(router::AdminToken(Arc::from(token.as_bytes()))),
        ..Options::default()
    })
    .await?;
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(h.admin_get(open).await?.status, 200, "{open}");
    }
    let admin = h.router.admin_addr().context("admin")?;
    for path in ["/table", "/route/ns-01"] {
        let none = h.admin_get(path).await?;
        assert_eq!(none.status, 401, "{path}");
        assert!(
            none.head.contains("www-authenticate: bearer"),
            "{}",
            none.head
        );
        for (auth, want) in [
            (format!("Bearer {token}"), 200),
            (format!("Bearer {}x", &token[..31]), 401),
            (format!("Bearer {token}0"), 401),
            (format!("Basic {token}"), 401),
        ] {
            let mut tcp = tokio::net::TcpStream::connect(admin).await?;
            tcp.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut out = String::new();
            within(WAIT, "the admin answer", tcp.read_to_string(&mut out)).await??;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want}")),
                "{auth}: {out}"
            );
        }
    }
    for path in ["/ws/ns-01/..;/admin", "/ws/ns-01/x;jsessionid=1"] {
        let r = h.raw(&upgrade_request(path)).await?;
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body.contains("';'"), "{}", r.body);
    }
    Ok(())
}

/// The backend connection's own task (it drives a refusal's body to the client) is
/// tracked by the drain like every other: while a backend trickles a 403's body, the
/// router counts both the client's connection and that task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_connection_task_is_tracked_by_the_drain() -> Result<()> {
    fn slow_403(_: &str, _: &str) -> String {
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\nnot yet".to_owned()
    }
    let backend = FakeBackend::start(FakeAnswer::Upgrade(slow_403)).await?;
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, backend.addr.to_string())],
        ..Options::default()
    })
    .await?;
    let mut client = h.tls().await?;
    client.write_all(&upgrade_request("/ws/ns-01")).await?;
    let mut head = [0u8; 12];
    within(WAIT, "the 403", client.read_exact(&mut head)).await??;
    assert_eq!(&head, b"HTTP/1.1 403");
    // The client's connection (streaming the body), the task that closes its unused
    // upgrade (up to a second), and the backend connection's own task: untracked, it
    // was 2.
    assert_eq!(h.router.live_tasks(), 3);
    h.router.shutdown();
    let drained = tokio::time::timeout(Duration::from_millis(300), h.router.drained()).await;
    assert!(
        drained.is_err(),
        "the drain did not wait for the body in flight"
    );
    drop(backend);
    within(WAIT, "the drain", h.router.drained()).await?;
    drop(client);
    Ok(())
}
