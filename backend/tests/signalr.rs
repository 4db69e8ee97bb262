//! The SignalR test hub on real sockets: negotiate, an unknown token (404, counted),
//! one invocation over each transport (WebSocket, Server-Sent Events with POSTs, long
//! polling), pings, and connections forgotten after idling.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{contains, get, read_until, request, start, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const RS: char = '\u{1e}';
const HANDSHAKE: &str = "{\"protocol\":\"json\",\"version\":1}\u{1e}";

fn config() -> backend::EchoConfig {
    backend::EchoConfig::new("backend-3")
}

/// The hub messages in `text` (records ending in 0x1e), parsed.
fn messages(text: &str) -> Vec<Value> {
    assert!(text.ends_with(RS), "{text:?}");
    text.split(RS)
        .filter(|m| !m.is_empty())
        .map(|m| serde_json::from_str(m).expect("a JSON message"))
        .collect()
}

fn invocation(id: &str, target: &str, args: Value) -> String {
    format!(
        "{}{RS}",
        json!({"type": 1, "invocationId": id, "target": target, "arguments": args})
    )
}

/// Negotiates (version 1) at `hub` (a path; `query` goes after `?`, the client puts
/// `negotiateVersion` last) and returns the connection token.
async fn negotiate(addr: SocketAddr, hub: &str, query: &str) -> Result<String> {
    let target = format!("{hub}/negotiate?{query}negotiateVersion=1");
    let a = request(addr, "POST", &target, &[], b"").await?;
    anyhow::ensure!(a.status == 200, "negotiate: {}", a.status);
    let v = a.json()?;
    Ok(v["connectionToken"].as_str().context("token")?.to_owned())
}

async fn stats(addr: SocketAddr) -> Result<Value> {
    get(addr, "/stats").await?.json()
}

#[tokio::test]
async fn negotiate_offers_all_three_transports() -> Result<()> {
    let h = start(config()).await?;
    let a = request(
        h.local_addr(),
        "POST",
        "/ws/ns-01/hub/negotiate?negotiateVersion=1",
        &[],
        b"",
    )
    .await?;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let v = a.json()?;
    assert_eq!(v["negotiateVersion"], 1);
    let (id, token) = (v["connectionId"].as_str(), v["connectionToken"].as_str());
    assert!(
        id.is_some_and(|s| s.len() >= 16) && token.is_some_and(|s| s.len() >= 16),
        "{v}"
    );
    assert_ne!(id, token);
    assert_eq!(
        v["availableTransports"],
        json!([
            {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
            {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
            {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
        ])
    );
    // Version 0 (no negotiateVersion): the id is the token.
    let v0 = request(h.local_addr(), "POST", "/ws/ns-01/hub/negotiate", &[], b"")
        .await?
        .json()?;
    assert_eq!(v0["negotiateVersion"], 0);
    assert!(v0.get("connectionToken").is_none());
    assert_eq!(
        get(h.local_addr(), "/ws/ns-01/hub/negotiate").await?.status,
        405
    );
    h.kill().await;
    Ok(())
}

/// A token this server never issued: 404 for every kind of request, each counted. This
/// is what shows that a router sent part of a session to the wrong pod.
#[tokio::test]
async fn an_unknown_connection_is_404_and_counted() -> Result<()> {
    let h = start(config()).await?;
    let addr = h.local_addr();
    let hub = "/ws/ns-01/hub?id=0123456789abcdef";
    assert_eq!(get(addr, hub).await?.status, 404);
    assert_eq!(
        request(addr, "POST", hub, &[], b"{\"type\":6}\x1e")
            .await?
            .status,
        404
    );
    assert_eq!(request(addr, "DELETE", hub, &[], b"").await?.status, 404);
    assert_eq!(
        request(addr, "GET", hub, &["Accept: text/event-stream"], b"")
            .await?
            .status,
        404
    );
    let ws = tokio_tungstenite::connect_async(format!("ws://{addr}{hub}")).await;
    assert!(
        ws.is_err(),
        "a WebSocket to an unknown connection must be refused"
    );
    assert_eq!(stats(addr).await?["unknown_connection"], 5);
    // No id at all is a bad request, not an unknown connection.
    assert_eq!(get(addr, "/ws/ns-01/hub").await?.status, 400);
    assert_eq!(stats(addr).await?["unknown_connection"], 5);
    h.kill().await;
    Ok(())
}

#[tokio::test]
async fn websocket_transport_invokes_and_closes() -> Result<()> {
    let h = start(config().with_tenant_from("query:tenant".parse()?)).await?;
    let addr = h.local_addr();
    let token = negotiate(addr, "/ws/hub", "tenant=acme&").await?;
    let url = format!("ws://{addr}/ws/hub?tenant=acme&id={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::text(HANDSHAKE)).await?;
    let m = tokio::time::timeout(WAIT, ws.next())
        .await?
        .context("ended")??;
    assert_eq!(messages(m.to_text()?), [json!({})]);
    ws.send(Message::text(
        invocation("1", "Echo", json!([{"a": [1, 2]}])) + &invocation("2", "Whoami", json!([])),
    ))
    .await?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await?
            .context("ended")??;
        got.extend(messages(m.to_text()?));
    }
    assert_eq!(
        got,
        [
            json!({"type": 3, "invocationId": "1", "result": {"a": [1, 2]}}),
            json!({"type": 3, "invocationId": "2", "result": {"server": "backend-3", "ns": "acme"}}),
        ]
    );
    // The client's close (type 7) ends it: the server closes the socket.
    ws.send(Message::text("{\"type\":7}\u{1e}")).await?;
    let closed = tokio::time::timeout(WAIT, async {
        let mut closed = false;
        // Read on after the close frame, so the client's reply goes out.
        while let Some(Ok(m)) = ws.next().await {
            closed |= m.is_close();
        }
        closed
    })
    .await?;
    assert!(closed, "no close frame");
    assert_eq!(stats(addr).await?["hub_invocations"], 2);
    h.kill().await;
    Ok(())
}

#[tokio::test]
async fn server_sent_events_transport_invokes_over_posts() -> Result<()> {
    let h = start(config()).await?;
    let addr = h.local_addr();
    let hub = "/ws/ns-02/hub";
    let token = negotiate(addr, hub, "").await?;
    let target = format!("{hub}?id={token}");
    let mut sse = TcpStream::connect(addr).await?;
    sse.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    read_until(&mut sse, &mut raw, |b| contains(b, b"\r\n\r\n")).await?;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(contains(&raw, b"content-type: text/event-stream"));

    let post = |body: String| {
        let target = target.clone();
        async move { request(addr, "POST", &target, &[], body.as_bytes()).await }
    };
    assert_eq!(post(HANDSHAKE.into()).await?.status, 200);
    read_until(&mut sse, &mut raw, |b| contains(b, b"data: {}\x1e\n\n")).await?;
    assert_eq!(
        post(invocation("7", "Echo", json!(["hello"])))
            .await?
            .status,
        200
    );
    read_until(&mut sse, &mut raw, |b| contains(b, b"\"hello\"")).await?;
    let text = String::from_utf8_lossy(&raw);
    let line = text
        .lines()
        .find(|l| l.contains("hello"))
        .and_then(|l| l.strip_prefix("data: "))
        .context("a data line")?;
    assert_eq!(
        messages(line),
        [json!({"type": 3, "invocationId": "7", "result": "hello"})]
    );

    // The client's close ends the stream (the chunked body's last chunk).
    assert_eq!(post("{\"type\":7}\u{1e}".into()).await?.status, 200);
    read_until(&mut sse, &mut raw, |b| b.ends_with(b"0\r\n\r\n")).await?;
    assert_eq!(stats(addr).await?["unknown_connection"], 0);
    h.kill().await;
    Ok(())
}

#[tokio::test]
async fn long_polling_transport_invokes_and_ends_with_204() -> Result<()> {
    let h = start(config()).await?;
    let addr = h.local_addr();
    let hub = "/ws/ns-03/hub";
    let token = negotiate(addr, hub, "").await?;
    let target = format!("{hub}?id={token}");
    // The first poll sets the connection up and answers at once, empty.
    let first = get(addr, &target).await?;
    assert_eq!((first.status, first.body.len()), (200, 0));
    request(addr, "POST", &target, &[], HANDSHAKE.as_bytes()).await?;
    assert_eq!(messages(&get(addr, &target).await?.text()), [json!({})]);
    // A poll waiting when the answer is queued gets it.
    let poll = tokio::spawn({
        let target = target.clone();
        async move { get(addr, &target).await }
    });
    let call = invocation("9", "Echo", json!([12.5]));
    request(addr, "POST", &target, &[], call.as_bytes()).await?;
    let answer = tokio::time::timeout(WAIT, poll).await???;
    assert_eq!(
        messages(&answer.text()),
        [json!({"type": 3, "invocationId": "9", "result": 12.5})]
    );
    // DELETE ends it; a poll then learns so (204), and that is not an unknown connection.
    assert_eq!(
        request(addr, "DELETE", &target, &[], b"").await?.status,
        202
    );
    assert_eq!(get(addr, &target).await?.status, 204);
    let s = stats(addr).await?;
    assert_eq!(
        (s["unknown_connection"].clone(), s["hub_open"].clone()),
        (json!(0), json!(0))
    );
    h.kill().await;
    Ok(())
}

/// Pings every `ping_interval` once the handshake is done; a connection nothing uses is
/// closed after `idle_timeout` and forgotten after `linger` (then it is unknown).
#[tokio::test]
async fn pings_then_idle_connections_are_forgotten() -> Result<()> {
    let mut cfg = config();
    cfg.hub.ping_interval = Duration::from_millis(50);
    cfg.hub.idle_timeout = Duration::from_millis(300);
    cfg.hub.linger = Duration::from_millis(100);
    let h = start(cfg).await?;
    let addr = h.local_addr();
    let hub = "/ws/ns-04/hub";
    let token = negotiate(addr, hub, "").await?;
    let target = format!("{hub}?id={token}");
    get(addr, &target).await?;
    request(addr, "POST", &target, &[], HANDSHAKE.as_bytes()).await?;
    assert_eq!(messages(&get(addr, &target).await?.text()), [json!({})]);
    let pinged = messages(&get(addr, &target).await?.text());
    assert!(pinged.contains(&json!({"type": 6})), "{pinged:?}");

    // Left alone, it goes: bounded polling of /stats.
    let mut forgotten = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = stats(addr).await?;
        if s["hub_open"] == 0 && get(addr, "/ws/ns-04/hub?id=x").await?.status == 404 {
            // Idle-closed and past its linger: the token itself is unknown now.
            if request(addr, "POST", &target, &[], b"").await?.status == 404
                && stats(addr).await?["unknown_connection"] == 2
            {
                forgotten = true;
                break;
            }
        }
    }
    assert!(forgotten, "still known: {}", stats(addr).await?);
    h.kill().await;
    Ok(())
}
