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

async fn echo(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::text(text)).await?;
    within(WAIT, "an echo", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
                Some(Ok(_)) => continue,
                other => anyhow::bail!("no echo: {other:?}"),
            }
        }
    })
    .await?
}

/// Attack 1: with `--ping-interval`, while the router waits for its pong, a masked frame
/// whose 64-bit length is 2^64 - 14. Header and payload added once wrapped to 0 and the
/// pong search spun its I/O thread for good. Now: the attacker gets close 1002, a socket
/// on the same (only) I/O thread keeps echoing, and `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapping_frame_length_is_a_protocol_error_and_spares_the_thread() -> Result<()> {
    let mut limits = limits();
    limits.timers.client_ping = Some(router::data::relay::Ping {
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
    echo(&mut bystander, "before").await?;

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

    echo(&mut bystander, "after")
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

impl router::data::shared::Pages for Wedge {
    fn answer(
        &self,
        _: &http::Method,
        uri: &http::Uri,
        _: &router::data::shared::Shared,
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
