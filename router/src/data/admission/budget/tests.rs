//! The budgets on a paused clock: a second's worth at once then the rate, the pod's own
//! bucket beside the router's, the new pod's ramp, and Retry-After spread over the wave.

use std::num::NonZeroU32;

use prometheus_client::metrics::gauge::Gauge;
use wsrouter::{Backends, Overrides, TableSource};

use super::*;

fn table(addrs: &[&str]) -> RoutingTable {
    let list = Backends::static_list(addrs.iter().map(|a| (*a).to_owned()).collect())
        .unwrap_or_else(|e| panic!("{e}"));
    let n = NonZeroU32::new(addrs.len() as u32).unwrap_or(NonZeroU32::MIN);
    RoutingTable::build(1, TableSource::Flags, &list, n, Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn budget(per_second: Option<u32>, per_pod: Option<u32>) -> UpgradeBudget {
    let config = BudgetConfig {
        per_second,
        per_pod_per_second: per_pod,
        warmup: Duration::from_secs(30),
    };
    UpgradeBudget::new(config, [&Gauge::default(), &Gauge::default()])
}

/// How many of `n` upgrades to `ordinal` at `at` the budget lets through.
fn let_through(b: &UpgradeBudget, t: &RoutingTable, ordinal: u32, n: usize, at: Instant) -> usize {
    (0..n).filter(|_| b.take(t, 0, ordinal, at).is_ok()).count()
}

#[test]
fn off_lets_everything_through() {
    let b = budget(None, None);
    assert!(!b.is_on());
    let t = table(&["10.0.0.1:9000"]);
    assert_eq!(let_through(&b, &t, 0, 10_000, Instant::now()), 10_000);
}

#[test]
fn the_router_budget_is_a_seconds_worth_then_the_rate() {
    let b = budget(Some(100), None);
    let t = table(&["10.0.0.1:9000", "10.0.0.2:9000"]);
    let start = Instant::now();
    assert_eq!(let_through(&b, &t, 0, 500, start), 100);
    // Half a second later, half a second's worth, whichever pod.
    let later = start + Duration::from_millis(500);
    assert_eq!(let_through(&b, &t, 1, 500, later), 50);
    // Idle for a minute: still only a second's worth at once.
    let much_later = later + Duration::from_secs(60);
    assert_eq!(let_through(&b, &t, 0, 500, much_later), 100);
}

#[test]
fn each_pod_has_its_own_budget_and_a_refused_one_costs_the_router_nothing() {
    let b = budget(Some(1000), Some(10));
    let t = table(&["10.0.0.1:9000", "10.0.0.2:9000"]);
    let now = Instant::now();
    assert_eq!(let_through(&b, &t, 0, 100, now), 10);
    let refused = b.take(&t, 0, 0, now).err().map(|o| o.spent);
    assert_eq!(refused, Some(Spent::Pod));
    // Pod 1 still has all of its own, and the router has 990 left, not 900.
    assert_eq!(let_through(&b, &t, 1, 100, now), 10);
    let b2 = budget(Some(25), Some(10));
    let three = table(&["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]);
    assert_eq!(let_through(&b2, &three, 0, 100, now), 10);
    assert_eq!(let_through(&b2, &three, 1, 100, now), 10);
    assert_eq!(
        b2.take(&three, 0, 1, now).err().map(|o| o.spent),
        Some(Spent::Pod)
    );
    // 20 of 25 spent, 5 left for the third pod.
    assert_eq!(let_through(&b2, &three, 2, 100, now), 5);
    assert_eq!(
        b2.take(&three, 0, 2, now).err().map(|o| o.spent),
        Some(Spent::Global)
    );
}

#[test]
fn a_pod_that_joins_later_warms_up_and_the_first_tables_pods_do_not() {
    let b = budget(None, Some(100));
    let start = Instant::now();
    let first = table(&["10.0.0.1:9000"]);
    // The first table's pod: all of its budget at once.
    assert_eq!(let_through(&b, &first, 0, 1000, start), 100);
    // A second pod joins: a tenth of its rate at first.
    let grown = table(&["10.0.0.1:9000", "10.0.0.2:9000"]);
    let mut let_in = 0;
    for ms in (0..1000).step_by(10) {
        let_in += let_through(&b, &grown, 1, 100, start + Duration::from_millis(ms));
    }
    assert!(
        (9..=12).contains(&let_in),
        "{let_in} in its first second, want about 10"
    );
    // Half-way through the warm-up: about half its rate (once the second's worth it
    // saved meanwhile is spent).
    let mid = start + Duration::from_secs(15);
    let _ = let_through(&b, &grown, 1, 1000, mid);
    let mut let_in = 0;
    for ms in (0..1000).step_by(10) {
        let_in += let_through(&b, &grown, 1, 100, mid + Duration::from_millis(ms + 10));
    }
    assert!(
        (45..=56).contains(&let_in),
        "{let_in} a second half-way, want about 50"
    );
    // Out of the table and back at the same address (a scale down and up): a new pod.
    let shrunk = table(&["10.0.0.1:9000"]);
    let later = start + Duration::from_secs(50);
    let _ = let_through(&b, &shrunk, 0, 1, later);
    assert!(let_through(&b, &grown, 1, 1000, later) <= 2);
    // Restarted at a new address: it warms up again.
    let moved = table(&["10.0.0.1:9000", "10.0.0.9:9000"]);
    let end = start + Duration::from_secs(60);
    assert!(let_through(&b, &moved, 1, 1000, end) <= 2);
}

#[test]
fn retry_after_spreads_the_refused_over_the_time_the_budget_needs() {
    let b = budget(Some(10), None);
    let t = table(&["10.0.0.1:9000"]);
    let now = Instant::now();
    let _ = let_through(&b, &t, 0, 10, now);
    let waits: Vec<u32> = (0..300)
        .filter_map(|_| b.take(&t, 0, 0, now).err().map(|o| o.retry_after))
        .collect();
    assert_eq!(waits.len(), 300);
    // 300 refused at 10 a second need 30 s: each is told its place in that, plus up to a
    // second.
    assert!(waits.iter().all(|w| (1..=MAX_RETRY_AFTER).contains(w)));
    // In the order refused: the k-th is told about k / 10 s (one second of jitter).
    for (k, w) in waits.iter().enumerate() {
        let place = (k as u32 + 1).div_ceil(10);
        assert!((place..=place + 1).contains(w), "refusal {k}: {w} s");
    }
    let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
    assert!(distinct.len() >= 30, "{distinct:?}");
    // A single refusal is told 1 or 2 s.
    let calm = budget(Some(10), None);
    let _ = let_through(&calm, &t, 0, 10, now);
    let w = calm.take(&t, 0, 0, now).err().map(|o| o.retry_after);
    assert!(matches!(w, Some(1 | 2)), "{w:?}");
}

#[test]
fn the_reconnect_time_is_the_slower_budget() {
    let c = BudgetConfig {
        per_second: Some(500),
        per_pod_per_second: Some(100),
        warmup: Duration::ZERO,
    };
    // 10,000 sockets at 500/s: 20 s; the busiest pod's 3,000 at 100/s: 30 s.
    assert_eq!(
        reconnect_time(&c, 10_000, 3_000),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        reconnect_time(&c, 10_000, 1_000),
        Some(Duration::from_secs(20))
    );
    assert_eq!(
        reconnect_time(&BudgetConfig::default(), 10_000, 1_000),
        None
    );
}

#[test]
fn a_deep_wave_comes_back_no_faster_than_the_budget_takes_it() {
    let b = budget(Some(100), None);
    let t = table(&["10.0.0.1:9000"]);
    let now = Instant::now();
    let _ = let_through(&b, &t, 0, 100, now);
    let mut back_at = std::collections::BTreeMap::<u32, u32>::new();
    for _ in 0..3000 {
        if let Err(o) = b.take(&t, 0, 0, now) {
            *back_at.entry(o.retry_after).or_default() += 1;
        }
    }
    // 3,000 refused at 100 a second: about 100 told each second 1..=31, none more than
    // the budget plus the random second's overlap.
    assert!(back_at.values().all(|n| *n <= 200), "{back_at:?}");
    assert!(back_at.keys().max() >= Some(&30), "{back_at:?}");
    // And later, once the budget has let that many in, the owed count is paid off.
    let later = now + Duration::from_secs(40);
    let _ = let_through(&b, &t, 0, 100, later);
    let w = b.take(&t, 0, 0, later).err().map(|o| o.retry_after);
    assert!(matches!(w, Some(1 | 2)), "{w:?}");
}
