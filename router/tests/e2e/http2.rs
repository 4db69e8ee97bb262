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
use router::DevCert;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::harness::*;

/// A TLS connection to the router offering only `h2` in ALPN.
async fn tls_h2(h: &Harness, cert: &DevCert) -> Result<TlsStream<TcpStream>> {
    let mut config = (*cert.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(h.addr()).await?;
    Ok(TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// One HTTP/2 connection to the router (ALPN `h2`), ready for streams.
async fn h2_connection(h: &Harness, cert: &DevCert) -> Result<SendRequest<Empty<Bytes>>> {
    let tls = tls_h2(h, cert).await?;
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

/// A router with default options and one WebSocket on an HTTP/2 connection of its own:
/// the bystander an abuse case must not hurt.
async fn router_and_a_bystander() -> Result<(DevCert, Harness, Ws)> {
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let h = Harness::start_with_cert(Options::default(), &cert).await?;
    let mut good = h2_connection(&h, &cert).await?;
    let (_, _, ws) = open(&mut good, h.addr().port(), "/ws/ns-01").await?;
    Ok((cert, h, ws.context("a socket")?))
}

/// A WebSocket over an HTTP/2 stream, as the client sees it.
type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket on a new stream of `send`: the answer's status, and the socket if 200.
async fn open(
    send: &mut SendRequest<Empty<Bytes>>,
    port: u16,
    path: &str,
) -> Result<(StatusCode, http::HeaderMap, Option<Ws>)> {
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
        200,
        "each stream holds a live place; a connection with streams holds none"
    );
    assert_eq!(
        h.router.admission().pending_count(),
        0,
        "connections with live streams are not pending"
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
    echoes(next, "still here").await?;
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

/// A raw HTTP/2 connection (ALPN `h2`) for the abuse cases: the h2 crate's client.
async fn raw_h2(
    h: &Harness,
    cert: &DevCert,
) -> Result<(
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)> {
    let (send, conn) = h2::client::handshake(tls_h2(h, cert).await?).await?;
    Ok((send, tokio::spawn(conn)))
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, over and over. The
/// router closes that connection with ENHANCE_YOUR_CALM; a WebSocket on another
/// connection never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_closes_the_abusive_connection_only() -> Result<()> {
    let (cert, h, mut ws) = router_and_a_bystander().await?;
    let port = h.addr().port();

    let (mut abuser, conn) = raw_h2(&h, &cert).await?;
    // The router trips once more than 20 reset streams wait to be accepted: how soon
    // depends on how far its accept loop lags the flood, so the flood is long enough
    // (and ends as soon as the connection does) that even a router keeping pace on a
    // busy machine trips well within it.
    const FLOOD: u32 = 20_000;
    let mut sent = 0;
    for _ in 0..FLOOD {
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("https://localhost:{port}/ws/ns-02"))
            .body(())?;
        let Ok(ready) = abuser.clone().ready().await else {
            break;
        };
        abuser = ready;
        let Ok((_, mut stream)) = abuser.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = within(WAIT, "the abusive connection to be closed", conn).await??;
    let err = ended.err().context("the connection survived the flood")?;
    // The router's GOAWAY (ENHANCE_YOUR_CALM), or, when the client was still writing as
    // the router closed, the broken pipe that hides it.
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err} after {sent}"
    );
    assert!(sent < FLOOD, "closed before the flood ended: {sent}");

    echoes(&mut ws, "unharmed").await?;
    Ok(())
}

/// One HTTP/2 frame's bytes.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Every frame the router sent until it closed: (type, payload).
async fn frames_until_closed(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<Vec<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = within(
        WAIT,
        "the router to close the connection",
        tls.read_to_end(&mut bytes),
    )
    .await?;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        let end = (at + 9 + len).min(bytes.len());
        out.push((bytes[at + 3], bytes[at + 9..end].to_vec()));
        at += 9 + len;
    }
    Ok(out)
}

/// A CONTINUATION flood (a header block that never ends) and a PING flood: the router
/// closes the flooding connection with GOAWAY; nothing else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_and_ping_floods_are_cut_off() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (cert, h, mut ws) = router_and_a_bystander().await?;
    let connect = || async {
        let mut tls = tls_h2(&h, &cert).await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        tls.write_all(&frame(0x4, 0, 0, &[])).await?;
        anyhow::Ok(tls)
    };

    // A literal header whose value says 1 MB and arrives in 100-byte CONTINUATIONs.
    let mut tls = connect().await?;
    let mut block = vec![0x00, 5];
    block.extend_from_slice(b"x-big");
    block.extend_from_slice(&[0x7f, 0xc1, 0x83, 0x3d]); // 127 + 999,873 = 1,000,000
    tls.write_all(&frame(0x1, 0, 1, &block)).await?;
    let mut written = 0;
    for _ in 0..10_000 {
        if tls
            .write_all(&frame(0x9, 0, 1, &[b'a'; 100]))
            .await
            .is_err()
        {
            break;
        }
        written += 1;
    }
    let frames = frames_until_closed(&mut tls).await?;
    let goaway = frames
        .iter()
        .find(|(t, _)| *t == 0x7)
        .context("no GOAWAY")?;
    let code = u32::from_be_bytes(goaway.1[4..8].try_into()?);
    assert!(
        code == 11 || code == 1,
        "GOAWAY {code} after {written} CONTINUATIONs"
    );

    // 100,000 PINGs, never reading the answers.
    let mut tls = connect().await?;
    let ping = frame(0x6, 0, 0, &[7; 8]);
    let mut flood = Vec::with_capacity(ping.len() * 1000);
    for _ in 0..1000 {
        flood.extend_from_slice(&ping);
    }
    let mut sent = 0;
    for _ in 0..100 {
        match within(
            std::time::Duration::from_secs(2),
            "a write",
            tls.write_all(&flood),
        )
        .await
        {
            Ok(Ok(())) => sent += 1000,
            // The router stopped reading (its answers are not read) or closed.
            _ => break,
        }
    }
    drop(tls);
    assert!(sent > 0);

    echoes(&mut ws, "unharmed").await?;
    Ok(())
}

/// A backend that dies under an HTTP/2 stream ends that stream only (after whatever it
/// sent); the connection and its other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_ends_its_stream_only() -> Result<()> {
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let h = Harness::start_with_cert(Options::default(), &cert).await?;
    let port = h.addr().port();
    let mut conn = h2_connection(&h, &cert).await?;
    let (on2, on1) = (tenant_on(&h, 2, 0), tenant_on(&h, 1, 0));
    let (_, _, doomed) = open(&mut conn, port, &format!("/ws/{on2}")).await?;
    let mut doomed = doomed.context("a socket")?;
    let (_, _, other) = open(&mut conn, port, &format!("/ws/{on1}")).await?;
    let mut other = other.context("another socket")?;
    within(WAIT, "a counter", doomed.next())
        .await?
        .context("closed")??;
    h.backends[2].kill().await;
    // The stream ends with the router's close 1011, within a second.
    loop {
        match within(
            std::time::Duration::from_secs(1),
            "the close",
            doomed.next(),
        )
        .await?
        {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1011);
                break;
            }
            Some(Ok(Message::Text(_))) => continue,
            other => anyhow::bail!("{other:?}"),
        }
    }
    echoes(&mut other, "unharmed").await?;
    Ok(())
}

/// `text` sent on `ws` comes back (counters in between are skipped).
async fn echoes(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::text(text)).await?;
    loop {
        match within(WAIT, "the echo", ws.next())
            .await?
            .context("closed")??
        {
            Message::Text(t) if t.as_str() == text => return Ok(()),
            Message::Text(_) => continue,
            other => anyhow::bail!("{other:?}"),
        }
    }
}

/// A connection's streams share its task: one whose backend always has data (a client
/// sending 16 KiB messages as fast as they echo) takes its turn and no more, and a
/// neighbour on the same connection gets each of its echoes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_always_has_data_does_not_starve_its_neighbours() -> Result<()> {
    let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let h = Harness::start_with_cert(Options::default(), &cert).await?;
    let port = h.addr().port();
    let mut conn = h2_connection(&h, &cert).await?;
    // Both on one backend too, so the flood and the neighbour share every hop.
    let (busy, quiet) = (tenant_on(&h, 1, 0), tenant_on(&h, 1, 1));
    let (_, _, flood) = open(&mut conn, port, &format!("/ws/{busy}")).await?;
    let (mut tx, mut rx) = flood.context("the busy socket")?.split();
    let (_, _, quiet) = open(&mut conn, port, &format!("/ws/{quiet}")).await?;
    let mut quiet = quiet.context("the quiet socket")?;
    let (echoed_tx, mut echoed) = tokio::sync::watch::channel(0usize);
    let stop = tokio_util::sync::CancellationToken::new();
    // The flood: bounded in count and time.
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let payload = vec![0x5a_u8; 16 << 10];
            for _ in 0..20_000 {
                if stop.is_cancelled() {
                    break;
                }
                if tx.send(Message::binary(payload.clone())).await.is_err() {
                    break;
                }
            }
        }
    });
    let reader = tokio::spawn(async move {
        while let Ok(Some(Ok(m))) = within(WAIT, "the flood's echo", rx.next()).await {
            if let Message::Binary(b) = m {
                echoed_tx.send_modify(|n| *n += b.len());
            }
        }
    });
    // The flood is under way before the neighbour asks.
    within(
        WAIT,
        "the flood to flow",
        echoed.wait_for(|n| *n >= 1 << 20),
    )
    .await??;
    let before = *echoed.borrow();
    for i in 0..50 {
        echoes(&mut quiet, &format!("still heard {i}")).await?;
    }
    let during = *echoed.borrow() - before;
    // The flood was still sending, and still being echoed, all along.
    assert!(
        !writer.is_finished(),
        "the flood ended before the neighbour was done"
    );
    assert!(
        during > 0,
        "the flood stalled while the neighbour was answered"
    );
    stop.cancel();
    within(WAIT, "the flood's writer to stop", writer).await??;
    reader.abort();
    Ok(())
}
