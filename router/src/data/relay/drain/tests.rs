//! The scheduler on a paused clock: shutdown closes spread over the grace, a pod leaving
//! the table, a reroute's grace and rate, and causes that go away before their turn.

use std::num::NonZeroU32;

use wsrouter::{Backends, Overrides, TableSource};

use super::*;

const GRACE: Duration = Duration::from_secs(20);

fn table(replicas: u32, overrides: &[(&str, &str)]) -> RoutingTable {
    let addrs = (0..replicas).map(|i| format!("10.0.0.{i}:9000")).collect();
    let list = Backends::static_list(addrs).unwrap_or_else(|e| panic!("{e}"));
    let n = NonZeroU32::new(replicas).unwrap_or(NonZeroU32::MIN);
    let o =
        Overrides::parse(overrides.iter().copied(), "backend").unwrap_or_else(|e| panic!("{e:?}"));
    RoutingTable::build(1, TableSource::Flags, &list, n, o).unwrap_or_else(|e| panic!("{e}"))
}

struct Fixture {
    drains: Arc<Drains>,
    table: Arc<ArcSwapOption<RoutingTable>>,
    changes: watch::Sender<u64>,
    hard_end: CancellationToken,
    closes: DrainCloses,
}

impl Fixture {
    fn new(reroute: Option<RerouteConfig>, t: RoutingTable) -> Self {
        let table = Arc::new(ArcSwapOption::from_pointee(t));
        let (changes, rx) = watch::channel(0);
        let closes = DrainCloses::default();
        let drains = Arc::new(Drains::new(GRACE, reroute, table.clone(), closes.clone()));
        let hard_end = CancellationToken::new();
        tokio::spawn(drains.clone().relay_events(rx, hard_end.clone()));
        Self {
            drains,
            table,
            changes,
            hard_end,
            closes,
        }
    }

    fn swap(&self, t: RoutingTable) {
        self.table.store(Some(Arc::new(t)));
        self.changes.send_modify(|v| *v += 1);
    }

    /// Sockets of `tenant` on stable pod `ordinal`, each reporting (when, why) as its
    /// turn comes.
    fn sockets(
        &self,
        n: usize,
        tenant: &str,
        ordinal: u32,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, DrainReason)> {
        self.sockets_on(n, tenant, stable(ordinal))
    }

    /// Sockets of `tenant` on `pod`.
    fn sockets_on(
        &self,
        n: usize,
        tenant: &str,
        pod: Pod,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, DrainReason)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..n {
            let (d, tx, tenant) = (self.drains.clone(), tx.clone(), tenant.to_owned());
            tokio::spawn(async move {
                let why = d.turn(tenant.into(), pod, true).await;
                let _ = tx.send((Instant::now(), why));
            });
        }
        rx
    }
}

/// Whether a close at `at` fell within the grace that began at `start`. Tokio's timer
/// fires on whole milliseconds, rounding a deadline up, so a moment drawn in the grace's
/// last millisecond fires exactly at its end: that is still within it.
fn within_grace(at: Instant, start: Instant) -> bool {
    at.duration_since(start) <= GRACE
}

/// Stable pod `ordinal`, routed without canary header or cookie.
fn stable(ordinal: u32) -> Pod {
    Pod {
        set: wsrouter::STABLE,
        ordinal,
        hints: Hints::default(),
    }
}

/// The tenant name that hashes to `ordinal` of `replicas`.
fn tenant_on(ordinal: u32, replicas: u32) -> String {
    let n = NonZeroU32::new(replicas).unwrap_or(NonZeroU32::MIN);
    (0..10_000)
        .map(|i| format!("t{i}"))
        .find(|t| wsrouter::ordinal_for(t, n) == ordinal)
        .unwrap_or_else(|| panic!("no tenant on {ordinal}"))
}

async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, DrainReason)>,
    n: usize,
) -> Vec<(Instant, DrainReason)> {
    let mut out = Vec::new();
    while out.len() < n {
        match rx.recv().await {
            Some(x) => out.push(x),
            None => break,
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_spread_evenly_over_the_grace() {
    let f = Fixture::new(None, table(4, &[]));
    let mut rx = f.sockets(
        400,
        "a",
        wsrouter::ordinal_for("a", NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN)),
    );
    tokio::task::yield_now().await;
    let start = Instant::now();
    f.drains.begin_shutdown();
    let closes = collect(&mut rx, 400).await;
    assert!(closes.iter().all(|(_, why)| *why == DrainReason::Shutdown));
    // Every close within the grace, and about a quarter in each quarter of it.
    let mut quarters = [0usize; 4];
    for (at, _) in &closes {
        let since = at.duration_since(start);
        assert!(within_grace(*at, start), "{since:?}");
        quarters[((since.as_millis() * 4 / GRACE.as_millis()) as usize).min(3)] += 1;
    }
    assert!(
        quarters.iter().all(|q| (60..=140).contains(q)),
        "{quarters:?}"
    );
    assert_eq!(f.closes.shutdown.get(), 400);
}

#[tokio::test(start_paused = true)]
async fn the_sockets_of_a_pod_that_leaves_the_table_close_spread_over_the_grace() {
    let f = Fixture::new(None, table(4, &[]));
    let gone = tenant_on(3, 4);
    let stays = tenant_on(1, 4);
    let mut on_gone = f.sockets(100, &gone, 3);
    let mut on_stays = f.sockets(10, &stays, 1);
    tokio::task::yield_now().await;
    let start = Instant::now();
    f.swap(table(3, &[]));
    let closes = collect(&mut on_gone, 100).await;
    assert!(closes
        .iter()
        .all(|(at, why)| *why == DrainReason::PodGone && within_grace(*at, start)));
    let first_half = closes
        .iter()
        .filter(|(at, _)| at.duration_since(start) < GRACE / 2)
        .count();
    assert!(
        (30..=70).contains(&first_half),
        "{first_half} of 100 in the first half"
    );
    // A pod still in the table keeps its sockets, even when its tenants' routes shift.
    tokio::time::sleep(GRACE * 3).await;
    assert!(on_stays.try_recv().is_err());
    assert_eq!((f.closes.pod_gone.get(), f.closes.rerouted.get()), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn a_pod_back_before_the_turn_keeps_its_sockets() {
    let f = Fixture::new(None, table(4, &[]));
    let tenant = tenant_on(3, 4);
    let mut rx = f.sockets(50, &tenant, 3);
    tokio::task::yield_now().await;
    f.swap(table(3, &[]));
    // Back before any turn could have come (each is at least a millisecond away... or
    // not: the few that drew zero may go).
    f.swap(table(4, &[]));
    tokio::time::sleep(GRACE * 2).await;
    let gone = std::iter::from_fn(|| rx.try_recv().ok()).count();
    assert!(gone <= 2, "{gone} of 50 closed though their pod came back");
}

#[tokio::test(start_paused = true)]
async fn without_reroute_drain_a_moved_tenant_keeps_its_sockets() {
    let f = Fixture::new(None, table(4, &[]));
    let mut rx = f.sockets(
        5,
        "acme",
        wsrouter::ordinal_for("acme", NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN)),
    );
    tokio::task::yield_now().await;
    let elsewhere =
        (wsrouter::ordinal_for("acme", NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN)) + 1) % 4;
    f.swap(table(4, &[("acme", &elsewhere.to_string())]));
    tokio::time::sleep(GRACE * 3).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_reroute_closes_after_its_grace_at_the_rate() {
    let reroute = RerouteConfig {
        grace: Duration::from_secs(10),
        per_second: 10,
    };
    let f = Fixture::new(Some(reroute), table(4, &[]));
    let home = wsrouter::ordinal_for("acme", NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
    let mut rx = f.sockets(50, "acme", home);
    tokio::task::yield_now().await;
    let start = Instant::now();
    f.swap(table(4, &[("acme", &((home + 1) % 4).to_string())]));
    let closes = collect(&mut rx, 50).await;
    let mut at: Vec<Duration> = closes
        .iter()
        .map(|(t, _)| t.duration_since(start))
        .collect();
    at.sort();
    assert!(closes.iter().all(|(_, why)| *why == DrainReason::Rerouted));
    assert!(at[0] >= Duration::from_secs(10), "{:?}", at[0]);
    // At most 10 a second: 50 closes span at least 4.9 s.
    assert!(
        at[49] - at[0] >= Duration::from_millis(4_900),
        "{:?}",
        at[49] - at[0]
    );
    assert_eq!(f.closes.rerouted.get(), 50);
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_pending_move_closes_within_the_grace() {
    let reroute = RerouteConfig {
        grace: Duration::from_secs(600),
        per_second: 1,
    };
    let f = Fixture::new(Some(reroute), table(4, &[]));
    let home = wsrouter::ordinal_for("acme", NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
    let mut rx = f.sockets(20, "acme", home);
    tokio::task::yield_now().await;
    f.swap(table(4, &[("acme", &((home + 1) % 4).to_string())]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    f.drains.begin_shutdown();
    let closes = collect(&mut rx, 20).await;
    assert!(closes
        .iter()
        .all(|(at, why)| *why == DrainReason::Shutdown && within_grace(*at, start)));
}

#[tokio::test(start_paused = true)]
async fn a_plain_answer_is_not_spread_by_the_shutdown() {
    let f = Fixture::new(None, table(4, &[]));
    let d = f.drains.clone();
    let home = wsrouter::ordinal_for("a", NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
    let waiting = tokio::spawn(async move { d.turn("a".into(), stable(home), false).await });
    tokio::task::yield_now().await;
    f.drains.begin_shutdown();
    tokio::time::sleep(GRACE * 2).await;
    assert!(!waiting.is_finished());
    waiting.abort();
}

#[test]
fn shares_stay_within_their_span() {
    assert_eq!(share_of(Duration::ZERO), Duration::ZERO);
    for _ in 0..1000 {
        assert!(share_of(Duration::from_millis(3)) < Duration::from_millis(3));
    }
}

#[tokio::test(start_paused = true)]
async fn a_moved_tenants_pod_leaving_meanwhile_closes_within_the_grace_as_pod_gone() {
    // A reroute whose turn is ten minutes away; the pod leaves the table a second in.
    let reroute = RerouteConfig {
        grace: Duration::from_secs(600),
        per_second: 1,
    };
    let f = Fixture::new(Some(reroute), table(4, &[]));
    let tenant = tenant_on(3, 4);
    let mut rx = f.sockets(10, &tenant, 3);
    tokio::task::yield_now().await;
    f.swap(table(4, &[(&tenant, "0")]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    f.swap(table(3, &[(&tenant, "0")]));
    let closes = collect(&mut rx, 10).await;
    assert!(closes
        .iter()
        .all(|(at, why)| *why == DrainReason::PodGone && within_grace(*at, start)));
}

#[tokio::test(start_paused = true)]
async fn a_swap_that_leaves_the_cause_as_it_was_does_not_move_the_turn() {
    let f = Fixture::new(None, table(4, &[]));
    let tenant = tenant_on(3, 4);
    let mut rx = f.sockets(50, &tenant, 3);
    tokio::task::yield_now().await;
    let start = Instant::now();
    f.swap(table(3, &[]));
    // Swaps every second that keep pod 3 out: each socket keeps its first moment, so all
    // close within the grace of the first swap.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.swap(table(3, &[]));
    }
    let closes = collect(&mut rx, 50).await;
    assert!(closes.iter().all(|(at, _)| within_grace(*at, start)));
}

/// The stable set of 4 beside `v2` (`v2_replicas` pods), split by `entries`.
fn with_v2(v2_replicas: u32, entries: &[(&str, &str)]) -> RoutingTable {
    let addrs = (0..3).map(|i| format!("10.0.1.{i}:9000")).collect();
    let v2 = Backends::static_list(addrs).unwrap_or_else(|e| panic!("{e}"));
    let split = wsrouter::Split::parse(entries.iter().copied()).unwrap_or_else(|e| panic!("{e:?}"));
    let spec = wsrouter::SetSpec {
        name: "v2",
        backends: &v2,
        replicas: v2_replicas,
    };
    table(4, &[])
        .with_sets("stable", &[spec], split)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Where `tenant` is routed by `t` with `hints`, as a socket holds it.
fn routed(t: &RoutingTable, tenant: &str, hints: Hints) -> Pod {
    let r = t.route_for(tenant, hints);
    Pod {
        set: r.set,
        ordinal: r.ordinal,
        hints,
    }
}

#[tokio::test(start_paused = true)]
async fn a_weight_change_closes_only_the_tenants_whose_set_changed_and_hints_hold() {
    let reroute = RerouteConfig {
        grace: Duration::from_secs(1),
        per_second: 1_000,
    };
    let w = |p| with_v2(3, &[("canary.set", "v2"), ("canary.weight", p)]);
    let f = Fixture::new(Some(reroute), w("0"));
    let tenants: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
    let moving: Vec<&String> = tenants
        .iter()
        .filter(|t| wsrouter::split::split_bucket(t) < 2_000)
        .collect();
    let mut rxs: Vec<_> = tenants
        .iter()
        .map(|t| (t, f.sockets_on(1, t, routed(&w("0"), t, Hints::default()))))
        .collect();
    // A socket that asked for the canary by header is on v2 whatever the weight.
    let always = Hints {
        header: Some(wsrouter::Hint::Always),
        cookie: None,
    };
    let mut asked = f.sockets_on(1, "tenant-0", routed(&w("0"), "tenant-0", always));
    tokio::task::yield_now().await;
    f.swap(w("20"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut closed = Vec::new();
    for (t, rx) in &mut rxs {
        if let Ok((_, why)) = rx.try_recv() {
            assert_eq!(why, DrainReason::Rerouted);
            closed.push(*t);
        }
    }
    assert_eq!(
        closed, moving,
        "exactly the tenants whose bucket is under 20%"
    );
    assert!(!moving.is_empty() && moving.len() < 70);
    assert!(asked.try_recv().is_err());
    // The canary scaled to zero: its sockets' pods left the table.
    f.swap(with_v2(0, &[("canary.set", "v2"), ("canary.weight", "20")]));
    tokio::time::sleep(GRACE * 2).await;
    assert_eq!(
        asked.try_recv().map(|(_, why)| why).ok(),
        Some(DrainReason::PodGone)
    );
}

#[tokio::test(start_paused = true)]
async fn the_hard_end_ends_every_waiting_socket_at_once_uncounted() {
    let f = Fixture::new(None, table(4, &[]));
    let mut spread = f.sockets(20, "a", 0);
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..5 {
        let (d, tx) = (f.drains.clone(), tx.clone());
        tokio::spawn(async move {
            let why = d.turn("a".into(), stable(0), false).await;
            let _ = tx.send((Instant::now(), why));
        });
    }
    tokio::task::yield_now().await;
    let start = Instant::now();
    f.hard_end.cancel();
    for (at, why) in collect(&mut spread, 20)
        .await
        .into_iter()
        .chain(collect(&mut answers, 5).await)
    {
        assert_eq!((at, why), (start, DrainReason::Shutdown));
    }
    assert_eq!(f.closes.shutdown.get(), 0, "the hard end is not a turn");
}

/// A socket holds its wait for its whole life: idle, it is one waiter and the socket's
/// place, nothing more (a timer is boxed only once a cause came). As a relay boxes it
/// (its reason made the relay's stop), it fits the allocator's 224-byte size class.
#[tokio::test]
async fn an_idle_sockets_wait_stays_small() {
    let f = Fixture::new(None, table(4, &[]));
    // A function item, as a relay's `Stop::drained` is: it adds nothing to the wait.
    fn as_stop(why: DrainReason) -> (u16, &'static str, DrainReason) {
        (1001, "going away", why)
    }
    let wait = f
        .drains
        .clone()
        .turn_as("a-tenant".into(), stable(0), true, as_stop);
    let size = std::mem::size_of_val(&wait);
    assert!(size <= 224, "{size} bytes");
}
