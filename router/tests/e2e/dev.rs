//! `wsrouter dev` as a newcomer runs it: wss with its own certificate, local backends,
//! and the overrides file honoured.

use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_routes_over_wss_with_overrides() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("wsrouter-dev-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("overrides.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata:\n  ns-01: backend-0\n",
    )?;
    let dev = start_dev(&file, &["--interval", "50ms"]).await?;
    let banner = dev.banner();
    let addr = dev.router.local_addr();
    assert!(
        banner.contains(&format!("websocat -k wss://{addr}/ws/ns-01")),
        "{banner}"
    );
    // Four stable pods, and two of a second set for trying a canary.
    assert_eq!(dev.backends.len(), 6);
    assert!(
        banner.contains("set v2:") && banner.contains("backend-v2-1"),
        "{banner}"
    );

    let connector = tokio_rustls::TlsConnector::from(dev.cert.client_config());
    // ns-01 is overridden to backend-0; acme-prod follows the hash (3 of 4).
    for (ns, want) in [
        ("ns-01", "backend-0"),
        ("acme-prod", "backend-3"),
        ("ns-02", "backend-1"),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let url = format!("wss://localhost:{}/ws/{ns}", addr.port());
        let (mut ws, _) = within(
            WAIT,
            "dev upgrade",
            tokio_tungstenite::client_async(url, tls),
        )
        .await??;
        let first = next_counter(&mut ws).await?;
        assert_eq!((first.server.as_str(), first.ns.as_str()), (want, ns));
        let second = within(Duration::from_secs(5), "second counter", ws.next()).await?;
        assert!(second.is_some());
    }
    dev.router.close_now();
    within(WAIT, "dev drain", dev.router.drained()).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A GET over TLS to `addr`, whole answer (the request asks the connection to close).
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    let _ = within(WAIT, "an answer", tls.read_to_end(&mut out)).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(RawResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_its_page_and_serve_does_not() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("wsrouter-dev-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("overrides.yaml");
    std::fs::write(&file, "kind: ConfigMap\ndata:\n  ns-01: backend-0\n")?;
    let dev = start_dev(&file, &[]).await?;
    let addr = dev.router.local_addr();
    assert!(
        dev.banner()
            .contains(&format!("https://localhost:{}/", addr.port())),
        "{}",
        dev.banner()
    );
    let connector = tokio_rustls::TlsConnector::from(dev.cert.client_config());
    let page = https_get(&connector, addr, "/").await?;
    assert_eq!(page.status, 200);
    assert!(
        page.head.contains("content-type: text/html"),
        "{}",
        page.head
    );
    assert!(
        page.head
            .contains("content-security-policy: default-src 'none'"),
        "{}",
        page.head
    );
    assert!(
        page.body.contains("new WebSocket(")
            && page.body.contains("new EventSource(")
            && page.body.contains("/dev/table")
    );
    // Self-contained: nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "//cdn", "import "] {
        assert!(!page.body.contains(external), "{external}");
    }
    let table = https_get(&connector, addr, "/dev/table").await?;
    let view: router::TableView = serde_json::from_str(&table.body)?;
    assert_eq!(view.replicas, 4);
    // The page shows both sets side by side.
    assert_eq!(view.stable_set, "stable");
    let sets: Vec<_> = view
        .sets
        .iter()
        .map(|s| (s.name.as_str(), s.replicas))
        .collect();
    assert_eq!(sets, [("v2", 2)]);
    assert!(page.body.contains("table.sets"));
    // A canary in the overrides file, edited live: everyone to v2 (blue/green).
    std::fs::write(
        &file,
        "kind: ConfigMap\ndata:\n  ns-01: backend-0\n  canary.set: v2\n  canary.weight: \"100\"\n",
    )?;
    let mut changes = dev.router.control().changes();
    within(WAIT, "the split applied", async {
        while dev
            .router
            .current_table()
            .is_none_or(|t| t.split().canary().is_none())
        {
            let _ = changes.changed().await;
        }
    })
    .await?;
    let route = https_get(&connector, addr, "/dev/route/ns-02").await?;
    let view: router::RouteView = serde_json::from_str(&route.body)?;
    assert_eq!(
        (view.set.as_str(), view.set_reason.as_str()),
        ("v2", "weight")
    );
    let config: serde_json::Value =
        serde_json::from_str(&https_get(&connector, addr, "/dev/config").await?.body)?;
    assert_eq!(
        config,
        serde_json::json!({"prefix": "/ws/", "tenant_from": "path"})
    );
    let route = https_get(&connector, addr, "/dev/route/ns-01").await?;
    let view: router::RouteView = serde_json::from_str(&route.body)?;
    assert_eq!(view.ordinal, 0);
    dev.router.close_now();
    within(WAIT, "dev drain", dev.router.drained()).await?;
    std::fs::remove_dir_all(&dir)?;

    // `serve` (the harness's router) has no page.
    let h = Harness::start(Options::default()).await?;
    let r = h
        .raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    assert_eq!(r.status, 404);
    Ok(())
}

/// Under `--tenant-from query:NAME` the in-process backends read the tenant where the
/// router does: the event stream at `/ws/events?tenant=…` is that tenant's, on its pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_backends_take_the_tenant_where_the_router_does() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("wsrouter-dev-query-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("overrides.yaml");
    std::fs::write(&file, "kind: ConfigMap\ndata:\n  ns-01: backend-0\n")?;
    let dev = start_dev(
        &file,
        &["--tenant-from", "query:tenant", "--interval", "20ms"],
    )
    .await?;
    let connector = tokio_rustls::TlsConnector::from(dev.cert.client_config());
    for (ns, pod) in [("acme-prod", "backend-3"), ("ns-01", "backend-0")] {
        let path = format!("/ws/events?tenant={ns}&count=2");
        let r = https_get(&connector, dev.router.local_addr(), &path).await?;
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(
            r.head.contains("content-type: text/event-stream"),
            "{}",
            r.head
        );
        let want = format!("id: 1\ndata: {{\"server\":\"{pod}\",\"counter\":1,\"ns\":\"{ns}\"}}");
        assert!(r.body.contains(&want), "{}", r.body);
    }
    dev.router.close_now();
    within(WAIT, "dev drain", dev.router.drained()).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
