//! The echo backend's plain HTTP surface on real sockets: the JSON answer, HEAD, the
//! streamed body echo, Server-Sent Events with resume and count, /stats, the tenant
//! taken from a header or query, and a graceful stop with idle keep-alive connections.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{contains, get, head_end, parse, read_until, request, start, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config() -> backend::EchoConfig {
    backend::EchoConfig::new("backend-7").with_interval(Duration::from_millis(20))
}

#[tokio::test]
async fn get_answers_json_describing_the_request() -> Result<()> {
    let h = start(config()).await?;
    let a = get(h.local_addr(), "/ws/ns-01/a/b?q=1&r").await?;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    // The exact wire shape, field order included.
    assert_eq!(
        a.text(),
        r#"{"server":"backend-7","ns":"ns-01","method":"GET","path":"/ws/ns-01/a/b?q=1&r"}"#
    );
    // Refusals as before: a bad namespace, outside the prefix, an incomplete upgrade.
    assert_eq!(get(h.local_addr(), "/ws/Bad").await?.status, 400);
    assert_eq!(get(h.local_addr(), "/elsewhere").await?.status, 404);
    let upgrade = request(
        h.local_addr(),
        "GET",
        "/ws/ns-01",
        &["Upgrade: websocket"],
        b"",
    )
    .await?;
    assert_eq!(upgrade.status, 426);
    h.kill().await;
    Ok(())
}

/// HEAD: the GET's headers (its length too) and no body; the next answer on the same
/// connection starts right after the head.
#[tokio::test]
async fn head_has_the_headers_and_no_body() -> Result<()> {
    let h = start(config()).await?;
    // What a GET would carry, with HEAD for GET.
    let body_len =
        r#"{"server":"backend-7","ns":"ns-01","method":"HEAD","path":"/ws/ns-01"}"#.len();
    let mut tcp = TcpStream::connect(h.local_addr()).await?;
    tcp.write_all(
        b"HEAD /ws/ns-01 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut raw = Vec::new();
    read_until(&mut tcp, &mut raw, |b| contains(b, b"ok\n")).await?;
    let head_len = head_end(&raw).expect("a head");
    let head = parse(&raw[..head_len], true)?;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(
        head.header("content-length"),
        Some(body_len.to_string().as_str())
    );
    assert!(
        raw[head_len..].starts_with(b"HTTP/1.1 200"),
        "after the HEAD's head: {:?}",
        String::from_utf8_lossy(&raw[head_len..])
    );
    h.kill().await;
    Ok(())
}

/// POST: the body comes back as it arrives. The client sends the first part, reads its
/// echo, and only then sends the rest: a server that buffered the whole body would
/// never answer.
#[tokio::test]
async fn post_echoes_the_body_as_it_streams() -> Result<()> {
    let h = start(config()).await?;
    let mut tcp = TcpStream::connect(h.local_addr()).await?;
    tcp.write_all(
        b"POST /ws/ns-01/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-thing\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nfirst-\r\n",
    )
    .await?;
    let mut raw = Vec::new();
    read_until(&mut tcp, &mut raw, |b| contains(b, b"first-")).await?;
    let head = parse(&raw[..head_end(&raw).expect("a head")], true)?;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/x-thing"));
    assert!(!contains(&raw, b"second"));
    tcp.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await?;
    read_until(&mut tcp, &mut raw, |b| b.ends_with(b"0\r\n\r\n")).await?;
    assert_eq!(parse(&raw, false)?.body, b"first-second");

    // PUT with a length: the same echo, the same length.
    let put = request(
        h.local_addr(),
        "PUT",
        "/ws/ns-01",
        &["Content-Type: text/plain"],
        b"abc",
    )
    .await?;
    assert_eq!((put.status, put.body.as_slice()), (200, &b"abc"[..]));
    assert_eq!(put.header("content-type"), Some("text/plain"));
    h.kill().await;
    Ok(())
}

/// `(id, data)` of every event in an event stream's text, after checking its retry.
fn events(text: &str) -> Vec<(u64, serde_json::Value)> {
    assert!(text.starts_with("retry: 500\n\n"), "{text:?}");
    text.split("\n\n")
        .filter(|e| e.starts_with("id: "))
        .map(|e| {
            let (id, data) = e.split_once('\n').expect("id and data");
            let id = id["id: ".len()..].parse().expect("numeric id");
            let data = serde_json::from_str(&data["data: ".len()..]).expect("json data");
            (id, data)
        })
        .collect()
}

#[tokio::test]
async fn events_stream_counts_resume_and_end() -> Result<()> {
    let h = start(config()).await?;
    let a = get(h.local_addr(), "/ws/ns-01/events?count=3").await?;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let got = events(&a.text());
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [0, 1, 2], "count=3 ends after three");
    assert_eq!(
        got[1].1,
        serde_json::json!({"server": "backend-7", "counter": 1, "ns": "ns-01"})
    );

    // Reconnecting after event 41 resumes at 42.
    let a = request(
        h.local_addr(),
        "GET",
        "/ws/ns-01/events?count=2",
        &["Last-Event-ID: 41", "Accept: text/event-stream"],
        b"",
    )
    .await?;
    let got = events(&a.text());
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [42, 43]);
    assert_eq!(got[0].1["counter"], 42);
    h.kill().await;
    Ok(())
}

/// Without `count` the stream goes on until the server stops, and then ends cleanly.
#[tokio::test]
async fn an_endless_stream_ends_at_a_graceful_stop() -> Result<()> {
    let h = start(config()).await?;
    let mut tcp = TcpStream::connect(h.local_addr()).await?;
    tcp.write_all(b"GET /ws/ns-01/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    read_until(&mut tcp, &mut raw, |b| contains(b, b"id: 3\n")).await?;
    tokio::time::timeout(WAIT, h.shutdown()).await?;
    read_until(&mut tcp, &mut raw, |b| b.ends_with(b"0\r\n\r\n")).await?;
    Ok(())
}

#[tokio::test]
async fn the_tenant_comes_from_a_query_parameter_or_header_when_told() -> Result<()> {
    let from_query = start(config().with_tenant_from("query:tenant".parse()?)).await?;
    let a = get(from_query.local_addr(), "/ws/page?tenant=acme").await?;
    assert_eq!(a.json()?["ns"], "acme");
    assert_eq!(get(from_query.local_addr(), "/ws/page").await?.status, 400);
    assert_eq!(
        get(from_query.local_addr(), "/ws/x?tenant=a&tenant=b")
            .await?
            .status,
        400
    );
    assert_eq!(
        get(from_query.local_addr(), "/ws/x?tenant=Bad")
            .await?
            .status,
        400
    );

    let from_header = start(config().with_tenant_from("header:X-Tenant".parse()?)).await?;
    let a = request(
        from_header.local_addr(),
        "GET",
        "/ws/any/path",
        &["X-Tenant: globex"],
        b"",
    )
    .await?;
    assert_eq!(a.json()?["ns"], "globex");
    assert_eq!(get(from_header.local_addr(), "/ws/any").await?.status, 400);
    from_query.kill().await;
    from_header.kill().await;
    Ok(())
}

#[tokio::test]
async fn stats_count_what_was_served() -> Result<()> {
    let h = start(config()).await?;
    get(h.local_addr(), "/ws/ns-01").await?;
    request(h.local_addr(), "POST", "/ws/ns-01", &[], b"x").await?;
    let stats = get(h.local_addr(), "/stats").await?.json()?;
    assert_eq!(stats["unknown_connection"], 0);
    assert_eq!(stats["json_answers"], 1);
    assert_eq!(stats["echoes"], 1);
    h.kill().await;
    Ok(())
}

/// A kept-alive connection with nothing in flight (a proxy's pool) does not hold up a
/// graceful stop.
#[tokio::test]
async fn a_graceful_stop_closes_idle_keep_alive_connections() -> Result<()> {
    let h = start(config()).await?;
    let mut tcp = TcpStream::connect(h.local_addr()).await?;
    tcp.write_all(b"GET /ws/ns-01 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    read_until(&mut tcp, &mut raw, |b| contains(b, b"}")).await?;
    tokio::time::timeout(WAIT, h.shutdown()).await?;
    Ok(())
}
