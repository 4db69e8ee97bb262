//! Riding out pod restarts: a connection refused or reset is retried within the backend
//! timeout, and a pod that keeps failing is circuit-broken (503 + Retry-After with no
//! connect attempt for a cool-down, then one probe).

use std::time::Duration;

use anyhow::{Context, Result};
use router::BreakerConfig;
use serde_json::Value;

use crate::harness::*;

fn options(pod: &FlakyPod, breaker: BreakerConfig) -> Options {
    let mut limits = limits();
    limits.backend_timeout = Duration::from_secs(2);
    limits.breaker = breaker;
    Options {
        backends: 2,
        replace: vec![(0, pod.addr.to_string())],
        limits,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_restarting_on_its_address_is_waited_for_not_502() -> Result<()> {
    // Its first five connections are reset (the process restarting), then it answers.
    let pod = FlakyPod::start(Some(5)).await?;
    let h = Harness::start(options(&pod, BreakerConfig::default())).await?;
    let tenant = tenant_on(&h, 0, 0);
    let req = upgrade_request(&format!("/ws/{tenant}"));
    let heads = futures_util::future::join_all((0..4).map(|_| h.raw_head(&req))).await;
    let mut statuses = Vec::new();
    for head in heads {
        statuses.push(head?.lines().next().unwrap_or_default().to_owned());
    }
    assert!(
        statuses.iter().all(|s| s.contains(" 101 ")),
        "every client waited and got through: {statuses:?}"
    );
    assert!(
        pod.accepted() >= 6,
        "retried: {} connections",
        pod.accepted()
    );
    let metrics = samples(&h.admin_get("/metrics").await?.body);
    assert!(metrics["wsrouter_backend_connect_retries_total"] >= 5.0);
    assert_eq!(
        metrics.get("wsrouter_backend_circuit_trips_total{ordinal=\"0\",set=\"stable\"}"),
        None
    );
    Ok(())
}

async fn circuit(h: &Harness) -> Result<String> {
    let t: Value = serde_json::from_str(&h.admin_get("/table").await?.body)?;
    Ok(t["backends"][0]["circuit"]
        .as_str()
        .context("circuit")?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_keeps_failing_is_left_alone_for_a_cooldown() -> Result<()> {
    let pod = FlakyPod::start(None).await?;
    let cooldown = Duration::from_secs(3);
    let h = Harness::start(options(
        &pod,
        BreakerConfig {
            failures: 3,
            cooldown,
        },
    ))
    .await?;
    let tenant = tenant_on(&h, 0, 0);
    let req = upgrade_request(&format!("/ws/{tenant}"));
    // Three upgrades fail after their retries (502): the circuit opens.
    for _ in 0..3 {
        let resp = h.raw(&req).await?;
        assert_eq!(resp.status, 502, "{resp:?}");
    }
    assert_eq!(circuit(&h).await?, "open");
    let tried = pod.accepted();
    // Open: 503 at once, Retry-After the cool-down's rest, no connection to the pod.
    let resp = h.raw(&req).await?;
    assert_eq!(resp.status, 503, "{resp:?}");
    let retry_after: u64 = resp
        .head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .context("retry-after")?
        .trim()
        .parse()?;
    assert!((1..=3).contains(&retry_after), "{}", resp.head);
    assert_eq!(pod.accepted(), tried, "no connect attempt while open");
    // The other pod is untouched.
    assert_eq!(
        next_counter(&mut h.ws(&tenant_on(&h, 1, 0)).await?)
            .await?
            .server,
        "backend-1"
    );
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(
        m["wsrouter_backend_circuit_trips_total{ordinal=\"0\",set=\"stable\"}"],
        1.0
    );
    assert_eq!(
        m["wsrouter_backend_circuit_open{ordinal=\"0\",set=\"stable\"}"],
        1.0
    );

    // The pod recovers; a client that honours Retry-After is the probe, and it closes
    // the circuit.
    pod.recover();
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let mut ws = h.ws(&tenant).await?;
    assert_eq!(next_counter(&mut ws).await?.server, "backend-0");
    assert_eq!(circuit(&h).await?, "closed");
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(
        m["wsrouter_backend_circuit_open{ordinal=\"0\",set=\"stable\"}"],
        0.0
    );
    Ok(())
}
