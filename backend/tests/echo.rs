//! The echo backend on its own: counters in the documented shape, verbatim echo,
//! /healthz, refusals, and a graceful shutdown that says 1001.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Result<backend::EchoHandle> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(backend::serve(
        l,
        backend::EchoConfig::new("backend-7").with_interval(Duration::from_millis(20)),
    )?)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test]
async fn streams_counters_and_echoes() -> Result<()> {
    let h = start().await?;
    let url = format!("ws://{}/ws/ns-01", h.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let first = tokio::time::timeout(WAIT, ws.next())
        .await?
        .context("ended")??;
    // The exact wire shape, field order included.
    assert_eq!(
        first,
        Message::text(r#"{"server":"backend-7","counter":0,"ns":"ns-01"}"#)
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await?;
    ws.send(Message::text("ping?")).await?;
    let mut echoes = Vec::new();
    let mut last_counter = 0;
    while echoes.len() < 2 {
        match tokio::time::timeout(WAIT, ws.next())
            .await?
            .context("ended")??
        {
            Message::Text(t) if t.starts_with('{') => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                let c = v["counter"].as_u64().context("counter")?;
                assert_eq!(c, last_counter + 1);
                last_counter = c;
            }
            m => echoes.push(m),
        }
    }
    assert_eq!(
        echoes,
        [
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text("ping?")
        ]
    );

    // Graceful shutdown: the client hears 1001.
    let shutdown = tokio::spawn(async move { h.shutdown().await });
    let code = tokio::time::timeout(WAIT, async {
        let mut code = None;
        // Keep polling after the close so tungstenite sends its reply and the
        // handshake completes.
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(Some(f)) = m {
                code = Some(u16::from(f.code));
            }
        }
        code
    })
    .await?;
    assert_eq!(code, Some(1001));
    tokio::time::timeout(WAIT, shutdown).await??;
    Ok(())
}

#[tokio::test]
async fn health_and_refusals() -> Result<()> {
    let h = start().await?;
    assert!(get(h.local_addr(), "/healthz")
        .await?
        .starts_with("HTTP/1.1 200"));
    // Not an upgrade: the JSON answer (tests/http.rs), no longer 426.
    assert!(get(h.local_addr(), "/ws/ns-01")
        .await?
        .starts_with("HTTP/1.1 200"));
    assert!(get(h.local_addr(), "/ws/Bad")
        .await?
        .starts_with("HTTP/1.1 400"));
    assert!(get(h.local_addr(), "/nope")
        .await?
        .starts_with("HTTP/1.1 404"));
    h.kill().await;
    Ok(())
}

/// `--mode echo`: nothing unprompted, not even at connect; every message echoed, in
/// order; pings answered (what a conformance suite expects of an echo server).
#[tokio::test]
async fn echo_mode_only_echoes() -> Result<()> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let h = backend::serve(
        l,
        backend::EchoConfig::new("echo")
            .with_interval(Duration::from_millis(1))
            .echo_only(),
    )?;
    let url = format!("ws://{}/ws/ns-01", h.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::Ping(vec![7u8].into())).await?;
    let sent = [
        Message::text("a"),
        Message::binary(vec![1u8, 2]),
        Message::text("c"),
    ];
    for m in &sent {
        ws.send(m.clone()).await?;
    }
    // The pong first (nothing came before it, with a 1 ms interval it would have),
    // then the echoes in order.
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await?
        .context("ended")??;
    assert_eq!(pong, Message::Pong(vec![7u8].into()));
    for m in &sent {
        let got = tokio::time::timeout(WAIT, ws.next())
            .await?
            .context("ended")??;
        assert_eq!(&got, m);
    }
    Ok(())
}

/// A peer that breaks the protocol gets a close frame saying how (RFC 6455 §7.1.7), not
/// a bare FIN: behind a proxy, a bare FIN looks like a backend that died.
#[tokio::test]
async fn a_protocol_error_fails_the_connection_with_its_close_code() -> Result<()> {
    let h = start().await?;
    // (frame the client sends, close code it must get back)
    // A ping with a 126-byte payload (control frames carry at most 125), mask 0.
    let big_ping = [&[0x89u8, 0xFE, 0, 126, 0, 0, 0, 0][..], &[0u8; 126]].concat();
    let cases: [(&[u8], u16); 3] = [
        // A text frame with RSV1 set, no extension negotiated: 1002.
        (&[0xC1, 0x80, 0, 0, 0, 0], 1002),
        (&big_ping, 1002),
        // A text frame whose payload is not UTF-8 (0xFF, mask 0): 1007.
        (&[0x81, 0x81, 0, 0, 0, 0, 0xFF], 1007),
    ];
    for (frame, want) in cases {
        let mut tcp = tokio::net::TcpStream::connect(h.local_addr()).await?;
        tcp.write_all(
            b"GET /ws/ns-01 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // The 101 response, then the counter the backend streams at connect.
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await??;
            anyhow::ensure!(n > 0, "closed during the handshake");
            got.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(frame).await?;
        // Read to EOF (bounded): the last frame must be a close with the wanted code.
        tokio::time::timeout(WAIT, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await?;
        let close = got
            .windows(2)
            .rposition(|w| w[0] == 0x88)
            .context("no close frame")?;
        let code = u16::from_be_bytes([got[close + 2], got[close + 3]]);
        assert_eq!(code, want, "after {frame:02x?}");
    }
    h.kill().await;
    Ok(())
}
