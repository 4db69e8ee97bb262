//! A reconnect wave at the door: upgrades past the router's and a pod's budget get `503`
//! with a `Retry-After` drawn at random (so the refused come back spread out), before
//! any pod is asked; the budget's reconnect time shows in `/table` for `wsrouter plan`.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};

use crate::harness::*;

/// Opens one upgrade per tenant in `tenants` at once; their statuses and `Retry-After`s.
async fn wave(h: &Harness, tenants: &[String]) -> Result<Vec<(u16, Option<u32>)>> {
    let heads = tenants.iter().map(|t| async move {
        let head = h.raw_head(&upgrade_request(&format!("/ws/{t}"))).await?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let retry = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .and_then(|v| v.trim().parse().ok());
        Ok::<_, anyhow::Error>((status, retry))
    });
    futures_util::future::join_all(heads)
        .await
        .into_iter()
        .collect()
}

fn budget(per_second: u32, per_pod: u32) -> Options {
    let mut limits = limits();
    limits.policy.budget = router::BudgetConfig {
        per_second: Some(per_second).filter(|r| *r > 0),
        per_pod_per_second: Some(per_pod).filter(|r| *r > 0),
        warmup: std::time::Duration::from_secs(30),
    };
    Options {
        limits,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_past_the_upgrade_budget_is_shed_with_503_and_a_spread_retry_after() -> Result<()> {
    let h = Harness::start(budget(2, 0)).await?;
    // 30 at once (under the pending connections one address may hold).
    let tenants: Vec<String> = (0..30).map(|i| format!("wave-{i}")).collect();
    let answers = wave(&h, &tenants).await?;
    let admitted = answers.iter().filter(|(s, _)| *s == 101).count();
    let refused: Vec<u32> = answers
        .iter()
        .filter(|(s, _)| *s == 503)
        .filter_map(|(_, r)| *r)
        .collect();
    // A second's worth (2), and what refills while the wave arrives.
    ensure!((2..=6).contains(&admitted), "{answers:?}");
    ensure!(
        admitted + refused.len() == 30,
        "every other one a 503 with Retry-After: {answers:?}"
    );
    // Drawn over the seconds the budget needs for them (up to 14), not all "1".
    ensure!(refused.iter().all(|r| (1..=60).contains(r)), "{refused:?}");
    let distinct: BTreeSet<_> = refused.iter().collect();
    ensure!(distinct.len() >= 4, "Retry-After values: {distinct:?}");
    ensure!(refused.iter().any(|r| *r >= 4), "{refused:?}");
    // Counted, and no pod was asked for them: only the admitted are live.
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(
        m.get("wsrouter_connections_refused_total{reason=\"upgrade_budget\"}"),
        Some(&(refused.len() as f64))
    );
    let upgraded: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("wsrouter_upgrade_responses_total{status=\"101\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        upgraded, admitted as f64,
        "backends answered only the admitted"
    );
    assert_eq!(
        m.get("wsrouter_upgrade_budget_per_second{scope=\"router\"}"),
        Some(&2.0)
    );
    assert_eq!(
        m.get("wsrouter_upgrade_budget_per_second{scope=\"pod\"}"),
        Some(&0.0)
    );
    let table = h.admin_get("/table").await?;
    ensure!(
        table
            .body
            .contains("\"upgrade_budget\":{\"per_second\":2,\"per_pod_per_second\":null}"),
        "{}",
        table.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_has_its_own_budget() -> Result<()> {
    let h = Harness::start(budget(0, 3)).await?;
    let on_two: Vec<String> = (0..12).map(|i| tenant_on(&h, 2, i)).collect();
    let answers = wave(&h, &on_two).await?;
    let admitted = answers.iter().filter(|(s, _)| *s == 101).count();
    ensure!((3..=5).contains(&admitted), "{answers:?}");
    ensure!(
        answers
            .iter()
            .all(|(s, r)| *s == 101 || (*s == 503 && r.is_some())),
        "{answers:?}"
    );
    // Another pod's budget is untouched.
    let others: Vec<String> = (0..3).map(|i| tenant_on(&h, 0, i)).collect();
    let answers = wave(&h, &others).await?;
    ensure!(answers.iter().all(|(s, _)| *s == 101), "{answers:?}");
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(
        m.get("wsrouter_connections_refused_total{reason=\"pod_upgrade_budget\"}"),
        Some(&((12 - admitted) as f64))
    );
    Ok(())
}
