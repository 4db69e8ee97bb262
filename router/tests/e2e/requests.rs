//! Every refusal gets the right status and a reason, and the router keeps serving.

use std::time::Duration;

use anyhow::Result;

use crate::harness::*;

async fn still_serving(h: &Harness, ns: &str) -> Result<()> {
    let mut ws = h.ws(ns).await?;
    let c = next_counter(&mut ws).await?;
    assert_eq!(c.ns, ns);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_right_status_and_reason() -> Result<()> {
    let hole = BlackHole::start().await?;
    let refusing = Refusing::start().await?;
    let mut limits = limits();
    // The silent backend's 504 comes after this; healthy upgrades need far less.
    limits.backend_timeout = Duration::from_secs(1);
    let h = Harness::start(Options {
        replace: vec![(1, refusing.addr.to_string()), (3, hole.addr.to_string())],
        limits,
        ..Options::default()
    })
    .await?;
    // Tenants whose pods are healthy, refused, and silent.
    let on_dead = tenant_on(&h, 1, 0);
    let on_hole = tenant_on(&h, 3, 0);
    let healthy = (0..)
        .map(|i| format!("ok-{i}"))
        .find(|ns| matches!(h.ordinal(ns), 0 | 2))
        .unwrap_or_default();

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (upgrade_request("/ws/Bad_NS"), 400, "namespace has 'B' at position 0"),
        (upgrade_request("/ws/"), 400, "missing namespace"),
        (upgrade_request("/ws/-lead"), 400, "must start with a letter or digit"),
        (upgrade_request(&format!("/ws/{}", "a".repeat(64))), 400, "at most 63"),
        (upgrade_request("/ws/ns%2F01"), 400, "'%'"),
        // Plain requests are forwarded (tests/e2e/http.rs), but not every method or framing.
        (b"TRACE /ws/ns-01 HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 405, "TRACE is not forwarded"),
        (upgrade_request("/"), 404, "not found"),
        (upgrade_request("/metrics"), 404, "not found"),
        (upgrade_request("/wsx/ns-01"), 404, "not found"),
        (upgrade_request(&format!("/ws/{on_dead}")), 502, "backend unavailable"),
        (upgrade_request(&format!("/ws/{on_hole}")), 504, "did not answer in time"),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, ""),
        // The router and a backend that normalises paths must agree on the tenant.
        (upgrade_request("/ws/a/../../ws/b/../../admin"), 400, "segment starting with '.'"),
        (upgrade_request("/ws/ns-01/%2e%2E/x"), 400, "segment starting with '.'"),
        (upgrade_request("/ws/ns-01/a%2Fb"), 400, "encoded '/'"),
        // One Host, exactly (RFC 9112 §3.2).
        (b"GET /ws/ns-01 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 400, "missing Host"),
        (b"GET /ws/ns-01 HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 400, "more than one Host"),
        (b"GET /ws/ns-01 HTTP/1.1\r\nHost: user@evil\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 400, "not a valid host"),
        // The WebSocket handshake itself (RFC 6455 §4.2.1).
        (b"GET /ws/ns-01 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 400, "Sec-WebSocket-Key"),
        (b"GET /ws/ns-01 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 400, "Sec-WebSocket-Key"),
        (b"GET /ws/ns-01 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n".to_vec(), 426, "version 13"),
    ];
    for (req, status, reason) in cases {
        let first_line = String::from_utf8_lossy(&req)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let resp = h.raw(&req).await?;
        assert_eq!(resp.status, status, "{first_line}: {resp:?}");
        assert!(
            resp.body.contains(reason),
            "{first_line}: body {:?} lacks {reason:?}",
            resp.body
        );
        if status == 426 {
            assert!(
                resp.head.contains("upgrade: websocket"),
                "{first_line}: {}",
                resp.head
            );
        }
        still_serving(&h, &healthy).await?;
    }

    Ok(())
}

/// A backend's own refusal is relayed as it was said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_refusal_is_relayed() -> Result<()> {
    fn forbidden(_: &str, _: &str) -> String {
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 8\r\n\r\nno entry".to_owned()
    }
    let fake = FakeBackend::start(FakeAnswer::Upgrade(forbidden)).await?;
    let h = Harness::start(Options {
        backends: 1,
        replace: vec![(0, fake.addr.to_string())],
        ..Options::default()
    })
    .await?;
    let resp = h.raw(&upgrade_request("/ws/ns-01")).await?;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (403, "no entry"),
        "{resp:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_and_readiness() -> Result<()> {
    let h = Harness::start(Options::default()).await?;
    assert_eq!(h.admin_get("/healthz").await?.status, 200);
    let ready = h.admin_get("/readyz").await?;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(h.admin_get("/nope").await?.status, 404);
    // A live socket keeps the router in its grace period while readiness is checked.
    let mut ws = h.ws("ns-01").await?;
    next_counter(&mut ws).await?;
    h.router.shutdown();
    let ready = h.admin_get("/readyz").await?;
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    assert_eq!(
        h.admin_get("/healthz").await?.status,
        200,
        "liveness holds while draining"
    );
    // The accept loop closes the listener as it sees the drain begin; from then on new
    // connections are refused.
    within(
        WAIT,
        "the listener to close",
        h.router.changes().until(|| !h.router.is_listening()),
    )
    .await?;
    assert!(h.tls().await.is_err(), "a closed listener accepted");
    h.router.close_now();
    within(WAIT, "drain", h.router.drained()).await?;
    Ok(())
}
