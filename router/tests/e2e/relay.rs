//! Faults after the upgrade: a dying backend closes only its own sockets.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_closes_only_its_own_sockets() -> Result<()> {
    let h = Harness::start(Options {
        interval: Duration::from_millis(25),
        ..Options::default()
    })
    .await?;
    let mut victims = Vec::new();
    let mut others = Vec::new();
    for ordinal in 0..4 {
        for k in 0..3 {
            let ns = tenant_on(&h, ordinal, k);
            let mut ws = h.ws(&ns).await?;
            assert_eq!(
                next_counter(&mut ws).await?.server,
                format!("backend-{ordinal}")
            );
            if ordinal == 1 {
                victims.push(ws);
            } else {
                others.push(ws);
            }
        }
    }

    let killed = Instant::now();
    within(WAIT, "backend kill", h.backends[1].kill()).await?;
    for mut ws in victims {
        // The backend vanished without a close frame: the router, as the gateway, tells
        // the client so with close 1011, within a second.
        let end = within(Duration::from_secs(1), "victim close", async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return Some(frame.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await?;
        assert_eq!(
            end,
            Some(Some(1011)),
            "a close frame saying the backend went away"
        );
    }
    assert!(killed.elapsed() < Duration::from_secs(2));

    // Everyone else keeps streaming, in order.
    for ws in &mut others {
        let a = next_counter(ws).await?.counter;
        let b = next_counter(ws).await?.counter;
        assert_eq!(b, a + 1);
    }
    Ok(())
}

/// A client that vanishes mid-stream frees its slot, and its backend hears a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_releases_its_relay() -> Result<()> {
    let h = Harness::start(Options {
        interval: Duration::from_millis(10),
        ..Options::default()
    })
    .await?;
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    let adm = h.router.admission();
    assert_eq!(adm.live_count(), 1);
    drop(ws);
    within(
        WAIT,
        "relay to end",
        h.router.changes().until(|| adm.live_count() == 0),
    )
    .await?;
    Ok(())
}

/// On dedicated I/O threads (how the binary serves: SO_REUSEPORT listeners, one event
/// loop each), connections relay byte for byte, spread evenly over the threads whatever
/// the kernel's hash did (it put 18 and 34 of 52 in one benchmark start); a drain then
/// closes every one with 1001 and completes, the I/O threads' event loops included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_threads_relay_then_drain() -> Result<()> {
    let h = Harness::start(Options {
        io_threads: 2,
        interval: Duration::from_secs(3600),
        drain_grace: Duration::from_millis(100),
        ..Options::default()
    })
    .await?;
    let mut sockets = Vec::new();
    for i in 0..40u8 {
        let mut ws = h.ws(&format!("ns-{i:02}")).await?;
        binary_echo(&mut ws, vec![i; 3000 + usize::from(i)]).await?;
        sockets.push(ws);
    }
    let per_thread = worker_connections(&h).await?;
    assert_eq!(per_thread.iter().sum::<f64>(), 40.0, "{per_thread:?}");
    assert!(
        (per_thread[0] - per_thread[1]).abs() <= 2.0,
        "connections per I/O thread: {per_thread:?}"
    );
    // A socket's count goes with it: half close, half remain counted.
    for mut ws in sockets.drain(20..) {
        ws.close(None).await?;
        // The router's answer to the close ends the stream.
        within(WAIT, "closed", async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await?;
    }
    within(WAIT, "uncounted", async {
        while worker_connections(&h).await?.iter().sum::<f64>() != 20.0 {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await??;
    h.router.shutdown();
    for mut ws in sockets {
        assert_eq!(next_close_code(&mut ws).await?, Some(1001));
    }
    within(WAIT, "drain", h.router.drained()).await?;
    Ok(())
}

/// `wsrouter_worker_connections` of I/O threads 0 and 1 (-1 where missing).
async fn worker_connections(h: &Harness) -> Result<Vec<f64>> {
    let (_, m) = scrape_metrics(h).await?;
    Ok((0..2)
        .map(|w| m.get(&format!("wsrouter_worker_connections{{worker=\"{w}\"}}")))
        .map(|n| n.copied().unwrap_or(-1.0))
        .collect())
}

/// On I/O threads, which hold their TLS flushes to the end of each busy spell: plain
/// requests on one keep-alive connection (pipelined, and one after another) get every
/// answer whole, and a WebSocket's backend greeting (sent with its 101) and echoes come
/// through, each with nothing left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_threads_send_every_held_answer() -> Result<()> {
    let h = Harness::start(Options {
        io_threads: 1,
        interval: Duration::from_millis(20),
        ..Options::default()
    })
    .await?;
    let get = |path: &str, close: bool| {
        let connection = if close { "close" } else { "keep-alive" };
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n")
    };
    // Three pipelined requests, the last closing: three whole answers.
    let pipelined = [
        get("/ws/ns-01/a", false),
        get("/ws/ns-02/b", false),
        get("/ws/ns-03/c", true),
    ]
    .concat();
    let out = String::from_utf8_lossy(&h.raw_bytes(pipelined.as_bytes()).await?).into_owned();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    for path in ["/ws/ns-01/a", "/ws/ns-02/b", "/ws/ns-03/c"] {
        assert!(
            out.contains(&format!("\"path\":\"{path}\"")),
            "{path} in {out}"
        );
    }
    // One after another on one connection: each answer arrives before the next is sent.
    let mut tls = h.tls().await?;
    for i in 0..20 {
        tls.write_all(get(&format!("/ws/ns-{i:02}/x"), false).as_bytes())
            .await?;
        let head = within(WAIT, "an answer", async {
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"path\"") {
                let n = tls.read(&mut b).await?;
                anyhow::ensure!(n > 0, "closed");
                got.extend_from_slice(&b[..n]);
            }
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&got).into_owned())
        })
        .await??;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    }
    // A socket: the first counter (sent by the backend with its 101), then an echo.
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    echo_text(&mut ws, "held?").await?;
    Ok(())
}
