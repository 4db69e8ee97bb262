//! WebSockets over HTTP/2 (RFC 8441): extended CONNECT streams from a Rust HTTP/2 client
//! (hyper, `ext::Protocol`), HTTP/1.1 upgrades toward the backends.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::data::tls_config::DevCert;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::harness::*;

/// One HTTP/2 connection to the router (ALPN `h2`), ready for streams.
async fn h2_connection(h: &Harness, cert: &DevCert) -> Result<SendRequest<Empty<Bytes>>> {
    let mut config = (*cert.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(h.addr()).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "no h2 from ALPN"
    );
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(conn);
    Ok(send)
}

/// A WebSocket on a new stream of `send`: the answer's status, and the socket if 200.
async fn open(
    send: &mut SendRequest<Empty<Bytes>>,
    port: u16,
    path: &str,
) -> Result<(
    StatusCode,
    http::HeaderMap,
    Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
)> {
    within(WAIT, "the connection to take a stream", send.ready()).await??;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("https://localhost:{port}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within(WAIT, "the answer", send.send_request(req)).await??;
    let (status, headers) = (resp.status(), resp.headers().clone());
    if status != StatusCode::OK {
        return Ok((status, headers, None));
    }
    let upgraded = within(WAIT, "the stream", hyper::upgrade::on(resp)).await??;
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((status, headers, Some(ws)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_streams_land_where_the_contract_says() -> Result<()> {
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let h = Harness::start_with_cert(Options::default(), &cert).await?;
    let table = h.router.current_table().context("table")?;
    let port = h.addr().port();
    // 200 tenants on 10 connections, all open at once.
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(h2_connection(&h, &cert).await?);
    }
    let mut sockets = Vec::new();
    for i in 0..200 {
        let tenant = format!("t-{i}");
        let (status, headers, ws) =
            open(&mut conns[i % 10], port, &format!("/ws/{tenant}")).await?;
        assert_eq!(status, StatusCode::OK, "{tenant}");
        assert_eq!(
            headers
                .get("x-wsrouter-fingerprint")
                .and_then(|v| v.to_str().ok()),
            Some(table.fingerprint().to_string().as_str())
        );
        assert!(headers.get("sec-websocket-accept").is_none() && headers.get("upgrade").is_none());
        let mut ws = ws.context("a socket")?;
        let first = within(WAIT, "a counter", ws.next())
            .await?
            .context("closed")??;
        assert_eq!(
            as_counter(&first).context("a counter")?.server,
            format!("backend-{}", table.route(&tenant).ordinal),
            "{tenant}"
        );
        sockets.push(ws);
    }
    assert_eq!(
        h.router.admission().live_count(),
        200 + 10,
        "each stream and each connection"
    );
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(m["wsrouter_http2_connections"], 10.0);
    assert_eq!(m["wsrouter_http2_streams"], 200.0);
    assert_eq!(
        m["wsrouter_upgrade_responses_total{status=\"200\",protocol=\"h2\"}"],
        200.0
    );
    // Echo, byte for byte, text and binary, through streams of different connections.
    for (i, ws) in sockets.iter_mut().enumerate().step_by(37) {
        let payload: Vec<u8> = (0..3000u32).map(|b| (b * 7 + i as u32) as u8).collect();
        ws.send(Message::binary(payload.clone())).await?;
        loop {
            match within(WAIT, "the echo", ws.next())
                .await?
                .context("closed")??
            {
                Message::Binary(b) => {
                    assert_eq!(&b[..], &payload[..]);
                    break;
                }
                Message::Text(_) => continue,
                other => anyhow::bail!("{other:?}"),
            }
        }
    }
    // Same rules, same answers: a bad namespace is 400, an unknown path 404.
    let (status, _, _) = open(&mut conns[0], port, "/ws/Bad_NS").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = open(&mut conns[0], port, "/elsewhere").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Closing a socket ends its stream only: the others on its connection go on.
    let mut first = sockets.remove(0);
    first.close(None).await?;
    let next = &mut sockets[9];
    next.send(Message::text("still here")).await?;
    loop {
        match within(WAIT, "the echo", next.next())
            .await?
            .context("closed")??
        {
            Message::Text(t) if t.as_str() == "still here" => break,
            Message::Text(_) => continue,
            other => anyhow::bail!("{other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_sends_goaway_then_1001_on_each_stream() -> Result<()> {
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let h = Harness::start_with_cert(
        Options {
            drain_grace: std::time::Duration::from_millis(300),
            ..Options::default()
        },
        &cert,
    )
    .await?;
    let port = h.addr().port();
    let mut conn = h2_connection(&h, &cert).await?;
    let (_, _, ws) = open(&mut conn, port, "/ws/ns-01").await?;
    let mut ws = ws.context("a socket")?;
    h.router.shutdown();
    // GOAWAY at once: no new stream is accepted on this connection.
    let refused = open(&mut conn, port, "/ws/ns-02").await;
    assert!(refused.is_err() || refused.is_ok_and(|(s, _, _)| s != StatusCode::OK));
    // The live stream runs until the grace ends, then gets 1001.
    loop {
        match within(WAIT, "the close", ws.next())
            .await?
            .context("ended")??
        {
            Message::Close(Some(c)) => {
                assert_eq!(u16::from(c.code), 1001);
                break;
            }
            Message::Close(None) => anyhow::bail!("a close without a code"),
            _ => continue,
        }
    }
    within(WAIT, "the drain", h.router.drained()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_by_the_client_is_a_1001_to_the_backend() -> Result<()> {
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let mut backend = crate::lifecycle::Recorder::start(false).await?;
    let h = Harness::start_with_cert(
        Options {
            backends: 1,
            replace: vec![(0, backend.addr.to_string())],
            ..Options::default()
        },
        &cert,
    )
    .await?;
    let port = h.addr().port();
    let mut conn = h2_connection(&h, &cert).await?;
    let (_, _, ws) = open(&mut conn, port, "/ws/ns-01").await?;
    let mut ws = ws.context("a socket")?;
    ws.send(Message::text("before")).await?;
    // Delivered before the reset (a reset discards what the client still queued).
    match backend.next().await? {
        crate::lifecycle::Seen::Message(m) => assert_eq!(m, Message::text("before")),
        seen => anyhow::bail!("{seen:?}"),
    }
    let (_, _, other) = open(&mut conn, port, "/ws/ns-02").await?;
    let mut other = other.context("another socket")?;
    // Dropping the stream unfinished sends RST_STREAM.
    drop(ws);
    let (code, messages) = backend.next_close().await?;
    assert_eq!(code, Some(1001));
    assert!(messages.is_empty(), "{messages:?}");
    // The connection and its other stream are untouched.
    other.send(Message::text("after")).await?;
    match backend.next().await? {
        crate::lifecycle::Seen::Message(m) => assert_eq!(m, Message::text("after")),
        seen => anyhow::bail!("{seen:?}"),
    }
    Ok(())
}
