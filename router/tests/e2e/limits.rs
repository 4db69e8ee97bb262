//! Slow or excess clients cannot hold slots; live sockets are untouched by refusals.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_fast_and_spares_live_sockets() -> Result<()> {
    let mut limits = limits();
    limits.max_connections = 2;
    let h = Harness::start(Options {
        limits,
        ..Options::default()
    })
    .await?;
    let mut a = h.ws("tenant-a").await?;
    let mut b = h.ws("tenant-b").await?;
    // The third is answered at once: 503, try again shortly.
    let third = h.raw(&upgrade_request("/ws/tenant-c")).await?;
    assert_eq!(third.status, 503, "{third:?}");
    assert!(third.head.contains("retry-after: 1"), "{}", third.head);
    assert!(h.router.refused_connections() >= 1);
    echo_text(&mut a, "a still works").await?;
    echo_text(&mut b, "b still works").await?;

    // Once a slot frees, a new client gets in (wait for the slot on events, bounded).
    a.close(None).await?;
    drop(a);
    let adm = h.router.admission();
    within(
        WAIT,
        "a free slot",
        h.router.changes().until(|| adm.live_count() < 2),
    )
    .await?;
    let mut c = h.ws("tenant-c").await?;
    echo_text(&mut c, "c works").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_cut_off() -> Result<()> {
    let mut limits = limits();
    // Long enough for this test's own client under a loaded CI machine; the cut-offs are
    // awaited with the usual bound.
    limits.handshake_timeout = Duration::from_secs(1);
    limits.request_timeout = Duration::from_secs(1);
    let h = Harness::start(Options {
        limits,
        ..Options::default()
    })
    .await?;

    // Connects and never starts TLS.
    let mut silent = TcpStream::connect(h.addr()).await?;
    let mut buf = [0u8; 64];
    // TCP_DEFER_ACCEPT holds it in the kernel for about a second first.
    let n = within(WAIT, "handshake timeout", silent.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0) | Err(_)), "silent client got {n:?}");

    // Finishes TLS, then trickles half a request.
    let mut slow = h.tls().await?;
    slow.write_all(b"GET /ws/ns-01 HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut out = Vec::new();
    let r = within(WAIT, "request timeout", slow.read_to_end(&mut out)).await?;
    assert!(r.is_ok() || out.is_empty(), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() -> Result<()> {
    let h = Harness::start(Options::default()).await?;
    let big = "x".repeat(20 * 1024);
    let req = format!("GET /ws/ns-01 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    let resp = h.raw(req.as_bytes()).await?;
    assert_eq!(resp.status, 431, "{resp:?}");
    let mut many = String::from("GET /ws/ns-01 HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = h.raw(many.as_bytes()).await?;
    assert_eq!(resp.status, 431, "{resp:?}");
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    Ok(())
}
