//! Tenants land where the routing contract says, and bytes come back intact.

use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// 200 tenants, each through TLS, each answered by the pod the contract names (the hash,
/// or an override where one is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_land_on_their_ordinals() -> Result<()> {
    let h = Harness::start(Options {
        overrides: vec![
            ("tenant-0", "3"),
            ("tenant-1", "backend-0"),
            ("acme-prod", "2"),
        ],
        ..Options::default()
    })
    .await?;
    let tenants: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
    let mut seen = [0usize; 4];
    for batch in tenants.chunks(25) {
        let mut tasks = Vec::new();
        for ns in batch {
            let want = h.ordinal(ns);
            let h = &h;
            tasks.push(async move {
                let mut ws = h.ws(ns).await?;
                let c = next_counter(&mut ws).await?;
                anyhow::ensure!(
                    c.server == format!("backend-{want}"),
                    "{ns}: served by {} not backend-{want}",
                    c.server
                );
                anyhow::ensure!(c.ns == *ns, "{ns}: backend saw namespace {}", c.ns);
                ws.close(None).await?;
                Ok::<_, anyhow::Error>(want)
            });
        }
        for r in futures_util::future::join_all(tasks).await {
            seen[r? as usize] += 1;
        }
    }
    // Every ordinal served some of them: the hash spreads, and nothing piled up on one pod.
    assert!(seen.iter().all(|&n| n > 20), "{seen:?}");

    // The overrides won; the golden vector tenant without one follows the hash.
    assert_eq!(h.ordinal("tenant-0"), 3);
    assert_eq!(h.ordinal("tenant-1"), 0);
    assert_eq!(h.ordinal("ns-01"), 2);
    let mut ws = h.ws("ns-01").await?;
    assert_eq!(next_counter(&mut ws).await?.server, "backend-2");
    let mut ws = h.ws("acme-prod").await?;
    assert_eq!(next_counter(&mut ws).await?.server, "backend-2");
    Ok(())
}

/// Text, binary, a 1 MiB message and a fragmented message come back byte-identical, and
/// the backend's counters arrive in order around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_is_byte_identical_and_counters_are_ordered() -> Result<()> {
    let h = Harness::start(Options {
        interval: Duration::from_millis(20),
        ..Options::default()
    })
    .await?;
    let mut ws = h.ws("ns-01").await?;

    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let text = "héllo, wörld ✓".to_owned();
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let fragments = ["frag-one|", "frag-two|", "frag-three"];

    ws.send(Message::text(text.clone())).await?;
    ws.send(Message::binary(binary.clone())).await?;
    ws.send(Message::binary(big.clone())).await?;
    // One text message in three frames; control frames may come between them.
    ws.send(Message::Frame(Frame::message(
        fragments[0],
        OpCode::Data(Data::Text),
        false,
    )))
    .await?;
    ws.send(Message::Ping("between fragments".into())).await?;
    ws.send(Message::Frame(Frame::message(
        fragments[1],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await?;
    ws.send(Message::Frame(Frame::message(
        fragments[2],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await?;

    let mut counters = Vec::new();
    let mut echoes = Vec::new();
    within(WAIT, "four echoes", async {
        while echoes.len() < 4 {
            match ws.next().await {
                Some(Ok(m)) => {
                    if let Some(c) = as_counter(&m) {
                        counters.push(c.counter);
                    } else if matches!(m, Message::Text(_) | Message::Binary(_)) {
                        echoes.push(m);
                    }
                }
                other => anyhow::bail!("stream ended early: {other:?}"),
            }
        }
        Ok(())
    })
    .await??;
    assert_eq!(echoes[0], Message::text(text));
    assert_eq!(echoes[1], Message::binary(binary));
    assert!(echoes[2] == Message::binary(big), "1 MiB echo differs");
    assert_eq!(echoes[3], Message::text(fragments.concat()));

    // Keep reading counters for a bit more, then check the whole sequence.
    while counters.len() < 10 {
        counters.push(next_counter(&mut ws).await?.counter);
    }
    let expected: Vec<u64> = (counters[0]..counters[0] + counters.len() as u64).collect();
    assert_eq!(counters, expected, "counters out of order or missing");
    assert_eq!(counters[0], 0, "the first counter was lost");

    // A clean close from the client completes: the backend's close reply comes through.
    ws.close(None).await?;
    let end = within(WAIT, "close reply", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) => return false,
            }
        }
    })
    .await?;
    assert!(end);
    Ok(())
}

/// The upgrade the backend sees carries the client's headers and X-Forwarded-*, the
/// path and query unchanged; bytes the backend sends right behind its 101 reach the client;
/// the 101 carries the table version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_forwarded_faithfully() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        let head = String::from_utf8(head)?;
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .unwrap_or_default()
            .to_owned();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        // 101 and the first frame in one write, so the frame arrives with the response.
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat.v2\r\nX-Backend: yes\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(&[0x81, 5]);
        out.extend_from_slice(b"first");
        s.write_all(&out).await?;
        let _ = tx.send(head);
        // Hold the socket until the client hangs up.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        anyhow::Ok(())
    });

    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, addr)],
        ..Options::default()
    })
    .await?;
    let tls = h.tls().await?;
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "wss://localhost:{}/ws/ns-01/room/7?token=abc&x=1",
            h.addr().port()
        ))?;
    let hd = req.headers_mut();
    hd.insert("origin", "https://app.example".parse()?);
    hd.insert("sec-websocket-protocol", "chat.v2, chat.v1".parse()?);
    hd.insert("cookie", "session=s3cr3t".parse()?);
    hd.insert("x-forwarded-for", "203.0.113.9".parse()?);
    let (mut ws, resp) =
        within(WAIT, "upgrade", tokio_tungstenite::client_async(req, tls)).await??;
    assert_eq!(
        resp.headers().get("x-wsrouter-table").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let fp = h
        .router
        .current_table()
        .map(|t| t.fingerprint().to_string());
    assert_eq!(
        resp.headers()
            .get("x-wsrouter-fingerprint")
            .and_then(|v| v.to_str().ok()),
        fp.as_deref()
    );
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"chat.v2"[..])
    );
    assert_eq!(
        resp.headers().get("x-backend").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
    let first = within(WAIT, "first frame", ws.next()).await?;
    assert_eq!(first.transpose()?, Some(Message::text("first")));

    let head = within(WAIT, "backend head", rx).await??;
    let lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with("GET /ws/ns-01/room/7?token=abc&x=1 HTTP/1.1\r\n"),
        "{head}"
    );
    for want in [
        "origin: https://app.example",
        "sec-websocket-protocol: chat.v2, chat.v1",
        "sec-websocket-version: 13",
        "cookie: session=s3cr3t",
        "upgrade: websocket",
        "connection: upgrade",
        // The client's own X-Forwarded-For is not believed (no trusted proxies): the
        // router says who connected to it.
        "x-forwarded-for: 127.0.0.1\r\n",
        "forwarded: for=127.0.0.1;proto=https;host=\"localhost:",
        "x-forwarded-proto: https",
        &format!("x-forwarded-host: localhost:{}", h.addr().port()),
        &format!("host: localhost:{}", h.addr().port()),
    ] {
        assert!(lower.contains(want), "missing {want:?} in:\n{head}");
    }
    drop(ws);
    within(WAIT, "backend end", backend).await???;
    Ok(())
}
