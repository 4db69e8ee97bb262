//! Hostile clients and misbehaving backends, tried as an attacker would: none of it may
//! cost more than its own budget, and live sockets keep working throughout.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// The start of a ClientHello whose handshake header declares `declared` bytes, cut to
/// `send` bytes on the wire: what the load tool's flood sends.
use wsload::flood::client_hello_claiming;

/// Reads until EOF or error, bounded; returns what came.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    within(limit, "the router to close the connection", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await?;
    Ok(out)
}

/// A ClientHello declaring more than `--max-client-hello` gets a fatal
/// `illegal_parameter` alert as soon as its header arrives; nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_hello_is_refused_with_an_alert() -> Result<()> {
    let h = Harness::start(Options::default()).await?;
    let mut tcp = TcpStream::connect(h.addr()).await?;
    // What the attacker sent: 62 KB of a ClientHello claiming 65,520 bytes.
    let hello = client_hello_claiming(65_516, 62_000);
    // The router may close before taking it all; what it read is enough.
    let _ = tcp.write_all(&hello).await;
    let got = read_until_closed(&mut tcp, WAIT).await?;
    assert_eq!(
        got,
        [21, 3, 3, 0, 2, 2, 47],
        "a fatal illegal_parameter alert"
    );
    let adm = h.router.admission();
    within(
        WAIT,
        "the pending pool to empty",
        h.router
            .changes()
            .until(|| adm.pending_count() == 0 && adm.pending_bytes() == 0),
    )
    .await?;
    // A real client is served as before.
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    Ok(())
}

/// Stalled partial ClientHellos within the size limit cost what the byte budget allows
/// and no more: past it the oldest are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_hellos_stay_within_the_byte_budget() -> Result<()> {
    let mut limits = limits();
    limits.max_pending_bytes = 512 << 10;
    limits.max_pending_per_ip = 1000;
    let h = Harness::start(Options {
        limits,
        ..Options::default()
    })
    .await?;
    let adm = h.router.admission();
    let mut held = Vec::new();
    let mut peak = 0;
    for _ in 0..60 {
        let mut tcp = TcpStream::connect(h.addr()).await?;
        tcp.write_all(&client_hello_claiming(16_000, 15_000))
            .await?;
        held.push(tcp);
        peak = peak.max(adm.pending_bytes());
    }
    // Wait until the router has read them all (the last one is pending, or evicted).
    within(
        WAIT,
        "evictions",
        h.router
            .changes()
            .until(|| h.router.admission().pending_count() <= 40),
    )
    .await?;
    let budget = 512 << 10;
    // Over by at most one connection's charge while an eviction is under way.
    let one = router::PENDING_BASE_BYTES + 16_000 + router::MAX_RECORD;
    assert!(peak <= budget + one, "peak {peak} over {budget}");
    assert!(
        adm.pending_bytes() <= budget + one,
        "{}",
        adm.pending_bytes()
    );
    let (_, m) = scrape_metrics(&h).await?;
    assert!(
        m.get("wsrouter_pending_evicted_total")
            .copied()
            .unwrap_or(0.0)
            > 0.0
    );
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    Ok(())
}

/// One source address cannot hold more than its share of the pending pool: the rest
/// of its connections are closed at once, and other addresses are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_is_held_to_its_pending_share() -> Result<()> {
    let mut limits = limits();
    limits.max_pending_per_ip = 4;
    let h = Harness::start(Options {
        limits,
        ..Options::default()
    })
    .await?;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(attacker, h.addr()).await?;
        s.write_all(&client_hello_claiming(2000, 100)).await?;
        held.push(s);
    }
    h.pending_at_least(4).await?;
    let mut fifth = connect_from(attacker, h.addr()).await?;
    fifth.write_all(&client_hello_claiming(2000, 100)).await?;
    let got = read_until_closed(&mut fifth, WAIT).await?;
    assert!(got.is_empty(), "{got:?}");
    assert!(h.router.refused_connections() >= 1);
    // Another address gets in.
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    Ok(())
}

async fn echo(ws: &mut Ws, payload: &[u8]) -> Result<()> {
    ws.send(Message::binary(payload.to_vec())).await?;
    within(WAIT, "echo", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    anyhow::ensure!(b[..] == payload[..], "echo differs");
                    return Ok(());
                }
                Some(Ok(_)) => continue,
                other => anyhow::bail!("no echo: {other:?}"),
            }
        }
    })
    .await?
}

/// The attack of the issue: the pending pool held full by stalled and silent
/// connections from many addresses, each reopened as soon as the router drops it, while
/// a normal client connects and 100 live sockets keep echoing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pending_pool_does_not_lock_out_clients_or_touch_live_sockets() -> Result<()> {
    let mut limits = limits();
    limits.max_pending = 64;
    limits.max_pending_per_ip = 16;
    limits.handshake_timeout = Duration::from_secs(5);
    let h = Harness::start(Options {
        limits,
        interval: Duration::from_secs(3600),
        ..Options::default()
    })
    .await?;
    let mut live = Vec::new();
    for i in 0..100 {
        live.push(h.ws(&format!("live-{i}")).await?);
    }

    // Eight attacker addresses, 16 connections each: twice the pool. Half send the
    // start of a ClientHello and stall, half send nothing at all.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    let addr = h.addr();
    for a in 0..8u8 {
        for c in 0..16 {
            let (stop, opened) = (stop.clone(), opened.clone());
            attackers.push(tokio::spawn(async move {
                let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + a));
                // Bounded: at most 2,000 reconnects per task, and the stop flag.
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut s) = connect_from(src, addr).await else {
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    if c % 2 == 0 {
                        let _ = s.write_all(&client_hello_claiming(4000, 300)).await;
                    }
                    let mut buf = [0u8; 64];
                    // Hold it until the router drops it (or the test ends).
                    let _ = tokio::time::timeout(Duration::from_secs(30), async {
                        while !stop.load(Ordering::Relaxed) {
                            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                                .await
                            {
                                Ok(Ok(0)) | Ok(Err(_)) => return,
                                _ => {}
                            }
                        }
                    })
                    .await;
                }
            }));
        }
    }
    // The attackers fill the pending pool.
    h.pending_at_least(64).await?;

    // A normal client, ten tries, each within the handshake timeout.
    let mut ok = 0;
    for i in 0..10 {
        let attempt = within(Duration::from_secs(5), "a normal client", async {
            let mut ws = h.ws(&format!("normal-{i}")).await?;
            echo(&mut ws, format!("hello {i}").as_bytes()).await
        })
        .await;
        if matches!(attempt, Ok(Ok(()))) {
            ok += 1;
        }
        // The live sockets keep echoing, byte for byte, while the attack goes on.
        for (k, ws) in live.iter_mut().enumerate().skip(i * 10).take(10) {
            let payload: Vec<u8> = (0..1000u32).map(|j| (j * 7 + k as u32) as u8).collect();
            echo(ws, &payload)
                .await
                .with_context(|| format!("live socket {k}"))?;
        }
    }
    // The liveness probe is answered while the attack holds the pending pool.
    let healthz = h.admin_get("/healthz").await?.status;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = within(WAIT, "attackers to stop", a).await;
    }
    assert!(ok >= 9, "a normal client got through {ok} times out of 10");
    assert_eq!(healthz, 200, "/healthz during the attack");
    let (_, m) = scrape_metrics(&h).await?;
    let evicted = m
        .get("wsrouter_pending_evicted_total")
        .copied()
        .unwrap_or(0.0);
    assert!(evicted > 0.0, "the pool never had to drop anyone");
    assert_eq!(
        m.get("wsrouter_connections_active{ordinal=\"0\",set=\"stable\"}")
            .copied()
            .unwrap_or(0.0)
            + m.get("wsrouter_connections_active{ordinal=\"1\",set=\"stable\"}")
                .copied()
                .unwrap_or(0.0)
            + m.get("wsrouter_connections_active{ordinal=\"2\",set=\"stable\"}")
                .copied()
                .unwrap_or(0.0)
            + m.get("wsrouter_connections_active{ordinal=\"3\",set=\"stable\"}")
                .copied()
                .unwrap_or(0.0),
        100.0,
        "a live socket was dropped"
    );
    eprintln!(
        "attack: {} connections opened, {evicted} evicted; normal client {ok}/10",
        opened.load(Ordering::Relaxed)
    );
    Ok(())
}

/// A TCP connection that never sends a byte never reaches the router's accept loop
/// (TCP_DEFER_ACCEPT), so it takes no pending slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_take_no_pending_slot() -> Result<()> {
    let h = Harness::start(Options::default()).await?;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(h.addr()).await?);
    }
    // A client that speaks is accepted and served; by then the silent ones, had they
    // been accepted, would be in the pool before it.
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    assert_eq!(h.router.admission().pending_count(), 0);
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(m.get("wsrouter_connections_accepted_total"), Some(&1.0));
    Ok(())
}

/// TLS failures end with their alert, after whatever rustls had queued: a client that
/// offers only `h2` hears `no_application_protocol`, on TLS 1.2 and on TLS 1.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_end_with_the_alert() -> Result<()> {
    let cert = router::DevCert::generate(&["localhost"])?;
    let h = Harness::start_with_cert(Options::default(), &cert).await?;
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let mut config = router::client_config(std::slice::from_ref(&cert.ca_der), versions)?;
        // A protocol the router does not speak (it speaks h2 and http/1.1).
        config.alpn_protocols = vec![b"h3".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(h.addr()).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let err = within(WAIT, "handshake", connector.connect(name, tcp))
            .await?
            .err()
            .context("the handshake succeeded without a common protocol")?;
        assert!(
            format!("{err}").contains("NoApplicationProtocol"),
            "{versions:?}: {err}"
        );
    }
    Ok(())
}

/// A backend 101 that does not complete the handshake the client asked for is a 502,
/// counted by what was wrong; it never reaches the client as an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_backend_handshake_is_a_502() -> Result<()> {
    fn wrong_accept(_: &str, _: &str) -> String {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_owned()
    }
    fn no_accept(_: &str, _: &str) -> String {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_owned()
    }
    fn no_connection(key: &str, _: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(key)
        )
    }
    fn unoffered_protocol(key: &str, _: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
            accept_for(key)
        )
    }
    fn unoffered_extension(key: &str, _: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
            accept_for(key)
        )
    }
    let cases: [(Answer, &str); 5] = [
        (wrong_accept, "accept"),
        (no_accept, "accept"),
        (no_connection, "connection"),
        (unoffered_protocol, "protocol"),
        (unoffered_extension, "extension"),
    ];
    for (answer, reason) in cases {
        let fake = FakeBackend::start(FakeAnswer::Upgrade(answer)).await?;
        let h = Harness::start(Options {
            backends: 1,
            replace: vec![(0, fake.addr.to_string())],
            ..Options::default()
        })
        .await?;
        let resp = h.raw(&upgrade_request("/ws/ns-01")).await?;
        assert_eq!(resp.status, 502, "{reason}: {resp:?}");
        let (_, m) = scrape_metrics(&h).await?;
        let key = format!("wsrouter_backend_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(m.get(&key), Some(&1.0), "{key}");
    }
    // What the client offered, the backend may pick.
    fn offered_protocol(key: &str, head: &str) -> String {
        assert!(head.contains("chat, superchat"), "{head}");
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: superchat\r\n\r\n",
            accept_for(key)
        )
    }
    let fake = FakeBackend::start(FakeAnswer::Upgrade(offered_protocol)).await?;
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, fake.addr.to_string())],
        ..Options::default()
    })
    .await?;
    let resp = h.raw_head(b"GET /ws/ns-01 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n").await?;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("sec-websocket-protocol: superchat"),
        "{resp}"
    );
    Ok(())
}

/// The backend gets exactly one Host, the one the router routed and logged; an
/// absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_the_host_the_router_saw() -> Result<()> {
    let fake = FakeBackend::start(FakeAnswer::Upgrade(good_101)).await?;
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, fake.addr.to_string())],
        ..Options::default()
    })
    .await?;
    let resp = h.raw_head(b"GET https://tenant.example:8443/ws/ns-01?x=1 HTTP/1.1\r\nHost: other.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await?;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let heads = fake.heads();
    let head = heads
        .first()
        .context("no request reached the backend")?
        .to_ascii_lowercase();
    assert!(head.starts_with("get /ws/ns-01?x=1 http/1.1\r\n"), "{head}");
    assert_eq!(head.matches("\r\nhost:").count(), 1, "{head}");
    assert!(head.contains("\r\nhost: tenant.example:8443\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-host: tenant.example:8443\r\n"),
        "{head}"
    );
    Ok(())
}

/// A backend that ends its connection without a close frame, with a FIN or a reset: the
/// client gets the router's close 1011 ("backend went away"), then a clean TLS end
/// (close_notify, FIN), never a reset of its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_ends_without_a_close_frame_is_a_1011_to_the_client() -> Result<()> {
    for answer in [FakeAnswer::UpgradeThenFin, FakeAnswer::UpgradeThenReset] {
        let fake = FakeBackend::start(answer).await?;
        let h = Harness::start(Options {
            backends: 1,
            replace: vec![(0, fake.addr.to_string())],
            ..Options::default()
        })
        .await?;
        let mut tls = h.tls().await?;
        tls.write_all(&upgrade_request("/ws/ns-01")).await?;
        let mut out = Vec::new();
        within(WAIT, "the end", tls.read_to_end(&mut out)).await??;
        let head_end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no 101")?;
        let (head, after) = (
            String::from_utf8_lossy(&out[..head_end]),
            &out[head_end + 4..],
        );
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut want = vec![0x88, 2 + 17, 0x03, 0xf3];
        want.extend_from_slice(b"backend went away");
        assert_eq!(after, want, "{answer:?}: one close frame, 1011");
    }
    Ok(())
}

/// A client whose upgrade still waits on its backend when the drain's grace period
/// ends gets a 503 with Retry-After, not a bare EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_pending_at_the_end_of_the_drain_gets_503() -> Result<()> {
    let hole = BlackHole::start().await?;
    let mut limits = limits();
    limits.backend_timeout = Duration::from_secs(30);
    limits.request_timeout = Duration::from_secs(30);
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, hole.addr.to_string())],
        drain_grace: Duration::from_millis(200),
        limits,
        ..Options::default()
    })
    .await?;
    let mut tls = h.tls().await?;
    tls.write_all(&upgrade_request("/ws/ns-01")).await?;
    // Wait until the request is with the backend (the live pool counts it).
    let adm = h.router.admission();
    within(
        WAIT,
        "the upgrade to reach the backend",
        h.router.changes().until(|| adm.live_count() != 0),
    )
    .await?;
    h.router.shutdown();
    let mut out = Vec::new();
    let _ = within(WAIT, "the answer", tls.read_to_end(&mut out)).await?;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text:?}");
    assert!(text.contains("retry-after: 1"), "{text}");
    within(WAIT, "drain", h.router.drained()).await?;
    Ok(())
}

/// Bytes a client sends right after its upgrade request, before the 101, reach the
/// backend as WebSocket data; a pipelined second request is never parsed or routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_before_the_101_are_websocket_data_only() -> Result<()> {
    let h = Harness::start(Options {
        interval: Duration::from_secs(3600),
        ..Options::default()
    })
    .await?;
    let request = upgrade_request("/ws/ns-01");
    // A masked binary frame "hi" in the same write as the request.
    let frame = [0x82, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    let mut tls = h.tls().await?;
    let mut both = request.to_vec();
    both.extend_from_slice(&frame);
    tls.write_all(&both).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    within(WAIT, "the echo", async {
        // The echo, before or after the backend's first counter.
        while !got.windows(4).any(|w| w == [0x82, 2, b'h', b'i']) {
            let n = tls.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await??;

    // A second request pipelined after the first goes to the first one's backend as
    // WebSocket bytes; that backend fails the connection, and no other tenant is routed.
    let mut tls = h.tls().await?;
    let mut both = request.to_vec();
    both.extend_from_slice(b"GET /ws/other HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(&both).await?;
    let mut out = Vec::new();
    let _ = within(
        WAIT,
        "the backend to fail the connection",
        tls.read_to_end(&mut out),
    )
    .await?;
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(
        m.get("wsrouter_upgrade_responses_total{status=\"101\",protocol=\"h1\"}"),
        Some(&2.0)
    );
    Ok(())
}

/// The admin listener: idle and half-sent requests are cut off, and a pile of open
/// connections cannot keep `/healthz` from answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_times_out_and_always_answers_healthz() -> Result<()> {
    let h = Harness::start(Options::default()).await?;
    let admin = h.router.admin_addr().context("admin")?;
    let limit = router::ADMIN_HEADER_TIMEOUT + Duration::from_secs(5);
    let mut idle = TcpStream::connect(admin).await?;
    let mut partial = TcpStream::connect(admin).await?;
    partial.write_all(b"GET /metr").await?;
    let mut crowd = Vec::new();
    for _ in 0..router::MAX_ADMIN_CONNECTIONS + 8 {
        crowd.push(TcpStream::connect(admin).await?);
    }
    // Over the cap, the oldest went: a probe still gets its answer.
    assert_eq!(h.admin_get("/healthz").await?.status, 200);
    read_until_closed(&mut idle, limit).await?;
    read_until_closed(&mut partial, limit).await?;
    Ok(())
}

/// A close frame has passed, and neither side says more: `--close-timeout` ends it,
/// and the client gets FIN; the relay and its slot are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_handshake_with_no_end_is_cut_at_the_close_timeout() -> Result<()> {
    // A backend that takes the upgrade and then reads forever, never answering a close.
    let fake = FakeBackend::start(FakeAnswer::Upgrade(good_101)).await?;
    let mut limits = limits();
    limits.close_timeout = Duration::from_millis(500);
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, fake.addr.to_string())],
        limits,
        ..Options::default()
    })
    .await?;
    let mut tls = h.tls().await?;
    tls.write_all(&upgrade_request("/ws/ns-01")).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(within(WAIT, "the 101", tls.read(&mut b)).await?? == 1);
        head.push(b[0]);
    }
    // A masked close frame, code 1000; then silence from the client too.
    tls.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .await?;
    let mut rest = Vec::new();
    let end = within(WAIT, "the router to end it", tls.read_to_end(&mut rest)).await?;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(end.is_ok(), "not a clean end: {end:?}");
    let adm = h.router.admission();
    within(
        WAIT,
        "the live slot to be given back",
        h.router.changes().until(|| adm.live_count() == 0),
    )
    .await?;
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(
        m.get("wsrouter_connections_closed_total{ordinal=\"0\",reason=\"client_closed\",protocol=\"h1\",set=\"stable\"}"),
        Some(&1.0)
    );
    Ok(())
}
