//! Who may open a socket: the Origin allowlist, the tenant from a header or a query
//! parameter, the cap per tenant and the new-connection rate per source address.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use router::{Origins, PolicyConfig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsrouter::TenantFrom;

use crate::harness::*;

fn with_policy(policy: PolicyConfig) -> Options {
    let mut limits = limits();
    limits.policy = policy;
    Options {
        limits,
        plaintext: true,
        ..Options::default()
    }
}

fn request(path: &str, origin: Option<&str>, extra: &str) -> Vec<u8> {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}{extra}\r\n"
    )
    .into_bytes()
}

/// The status line's code of the router's answer (plain TCP), the head, and the body.
async fn answer(h: &Harness, req: &[u8]) -> Result<RawResponse> {
    plain_raw(h.addr(), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_before_any_backend_is_touched() -> Result<()> {
    let pod = FlakyPod::start(Some(0)).await?;
    let list = ["https://app.example.com", "https://*.example.org"].map(String::from);
    let mut opts = with_policy(PolicyConfig {
        origins: Origins::parse(&list, true)?,
        ..PolicyConfig::default()
    });
    opts.replace = (0..4).map(|i| (i, pod.addr.to_string())).collect();
    let h = Harness::start(opts).await?;
    for (origin, status) in [
        (Some("https://app.example.com"), 101),
        (Some("https://chat.example.org"), 101),
        (Some("https://evil.example.com"), 403),
        (Some("https://example.org"), 403),
        (Some("null"), 403),
        (None, 101),
    ] {
        let before = pod.accepted();
        let head = plain_head(h.addr(), &request("/ws/ns-01", origin, "")).await?;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{origin:?}: {head}"
        );
        if status == 403 {
            assert_eq!(
                pod.accepted(),
                before,
                "{origin:?}: the backend was contacted"
            );
        }
    }
    let resp = answer(
        &h,
        &request("/ws/ns-01", Some("https://evil.example.com"), ""),
    )
    .await?;
    assert_eq!(resp.body, "origin not allowed\n");
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(
        m["wsrouter_connections_refused_total{reason=\"origin\"}"],
        4.0
    );

    // --require-origin: a request without one is refused too.
    let mut opts = with_policy(PolicyConfig {
        origins: Origins::parse(&list, false)?,
        ..PolicyConfig::default()
    });
    opts.backends = 1;
    let h = Harness::start(opts).await?;
    let resp = answer(&h, &request("/ws/ns-01", None, "")).await?;
    assert_eq!(resp.status, 403);
    Ok(())
}

async fn lands(h: &Harness, req: http::Request<()>) -> Result<String> {
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(req)).await??;
    let first = within(WAIT, "a counter", ws.next())
        .await?
        .context("closed")??;
    let _ = h;
    Ok(as_counter(&first).context("a counter")?.server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_can_come_from_a_header_or_a_query_parameter() -> Result<()> {
    for from in ["header:X-Tenant", "query:tenant"] {
        let from: TenantFrom = from.parse()?;
        let h = Harness::start(with_policy(PolicyConfig {
            tenant_from: from.clone(),
            ..PolicyConfig::default()
        }))
        .await?;
        let table = h.router.current_table().context("table")?;
        let port = h.addr().port();
        for i in 0..200 {
            let tenant = format!("t-{i}");
            let req = match &from {
                TenantFrom::Header(name) => {
                    let mut r = format!("ws://127.0.0.1:{port}/ws/hub").into_client_request()?;
                    r.headers_mut().insert(
                        http::HeaderName::from_bytes(name.as_bytes())?,
                        tenant.parse()?,
                    );
                    r
                }
                _ => format!("ws://127.0.0.1:{port}/ws/hub?x=1&tenant={tenant}")
                    .into_client_request()?,
            };
            let server = lands(&h, req).await?;
            assert_eq!(
                server,
                format!("backend-{}", table.route(&tenant).ordinal),
                "{from}: {tenant}"
            );
        }
        // Missing, repeated or invalid: 400 with the reason; outside the prefix: 404.
        let (missing, repeated, invalid) = match &from {
            TenantFrom::Header(_) => (
                request("/ws/hub", None, ""),
                request("/ws/hub", None, "X-Tenant: a\r\nX-Tenant: b\r\n"),
                request("/ws/hub", None, "X-Tenant: Bad_NS\r\n"),
            ),
            _ => (
                request("/ws/hub?x=1", None, ""),
                request("/ws/hub?tenant=a&tenant=b", None, ""),
                request("/ws/hub?tenant=Bad_NS", None, ""),
            ),
        };
        let r = answer(&h, &missing).await?;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.body.starts_with("no tenant: the request has no "),
            "{r:?}"
        );
        let r = answer(&h, &repeated).await?;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains("more than once"), "{r:?}");
        let r = answer(&h, &invalid).await?;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains("position 0"), "{r:?}");
        let r = answer(&h, &request("/elsewhere?tenant=a", None, "X-Tenant: a\r\n")).await?;
        assert_eq!(r.status, 404, "{r:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_cap_gets_429_and_others_do_not_notice() -> Result<()> {
    let h = Harness::start(with_policy(PolicyConfig {
        max_per_tenant: 3,
        ..PolicyConfig::default()
    }))
    .await?;
    let url = |t: &str| format!("ws://127.0.0.1:{}/ws/{t}", h.addr().port());
    let mut held = Vec::new();
    for _ in 0..3 {
        let (ws, _) = within(
            WAIT,
            "connect",
            tokio_tungstenite::connect_async(url("busy")),
        )
        .await??;
        held.push(ws);
    }
    let r = answer(&h, &request("/ws/busy", None, "")).await?;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.head.contains("retry-after: 5"), "{}", r.head);
    // Another tenant is unaffected.
    let (_other, _) = within(
        WAIT,
        "connect",
        tokio_tungstenite::connect_async(url("quiet")),
    )
    .await??;
    let route: serde_json::Value = serde_json::from_str(&h.admin_get("/route/busy").await?.body)?;
    assert_eq!(
        (
            route["live_sockets"].as_u64(),
            route["max_connections"].as_u64()
        ),
        (Some(3), Some(3))
    );
    // One leaves: the tenant may open one more.
    drop(held.pop());
    within(
        WAIT,
        "the socket to end",
        h.router
            .changes()
            .until(|| h.router.live().count("busy") == 2),
    )
    .await?;
    let (_again, _) = within(
        WAIT,
        "connect",
        tokio_tungstenite::connect_async(url("busy")),
    )
    .await??;
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(
        m["wsrouter_connections_refused_total{reason=\"tenant_cap\"}"],
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_source_address_are_rate_limited() -> Result<()> {
    let h = Harness::start(with_policy(PolicyConfig {
        rate_per_ip: 0.5,
        burst_per_ip: 3,
        ..PolicyConfig::default()
    }))
    .await?;
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let mut held = Vec::new();
    for _ in 0..3 {
        let (ws, _) = within(
            WAIT,
            "connect",
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await??;
        held.push(ws);
    }
    let r = answer(&h, &request("/ws/ns-02", None, "")).await?;
    assert_eq!(r.status, 429, "{r:?}");
    // A token every 2 s: the answer says when.
    assert!(r.head.contains("retry-after: 2"), "{}", r.head);
    // Another source address has its own bucket.
    let other = connect_from("127.0.0.7".parse()?, h.addr()).await?;
    let (_ws, _) = within(
        WAIT,
        "connect from another address",
        tokio_tungstenite::client_async(url.as_str(), other),
    )
    .await??;
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(
        m["wsrouter_connections_refused_total{reason=\"rate_per_ip\"}"],
        1.0
    );
    let _ = Duration::ZERO;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_sets_a_tenants_own_cap() -> Result<()> {
    let h = Harness::start(with_policy(PolicyConfig {
        max_per_tenant: 1,
        ..PolicyConfig::default()
    }))
    .await?;
    let url = |t: &str| format!("ws://127.0.0.1:{}/ws/{t}", h.addr().port());
    let connect = |t: &'static str| {
        let u = url(t);
        async move {
            let (ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(u)).await??;
            anyhow::Ok(ws)
        }
    };
    // The ConfigMap gives one tenant more room and exempts another.
    h.router.control().send(router::Input::Overrides {
        source: wsrouter::TableSource::Flags,
        data: Some(
            [
                ("max-connections.roomy", "3"),
                ("max-connections.free", "unlimited"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ),
    });
    h.wait_table("the caps", |t| t.limits().len() == 2).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect("roomy").await?);
    }
    assert_eq!(
        answer(&h, &request("/ws/roomy", None, "")).await?.status,
        429
    );
    for _ in 0..5 {
        held.push(connect("free").await?);
    }
    held.push(connect("plain").await?);
    assert_eq!(
        answer(&h, &request("/ws/plain", None, "")).await?.status,
        429
    );
    let route: serde_json::Value = serde_json::from_str(&h.admin_get("/route/roomy").await?.body)?;
    assert_eq!(
        (
            route["live_sockets"].as_u64(),
            route["max_connections"].as_u64()
        ),
        (Some(3), Some(3))
    );
    let route: serde_json::Value = serde_json::from_str(&h.admin_get("/route/free").await?.body)?;
    assert!(route["max_connections"].is_null(), "{route}");
    Ok(())
}
