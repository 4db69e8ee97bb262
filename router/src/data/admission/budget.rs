//! The upgrade budget: how many new WebSockets the router lets through per second, in
//! all (`--max-upgrades-per-second`) and per backend pod
//! (`--max-upgrades-per-pod-per-second`), so a reconnect wave (another replica's drain,
//! a pod's restart) reaches the pods as a steady stream, not at once. Each is a token
//! bucket holding one second's worth. An upgrade past either is refused with `503` before
//! any backend is asked, and its `Retry-After` is the time the budget needs to let in
//! everyone it refused before it (and not yet let in), plus a random second: the refused
//! come back at the budget's rate, rather than together a second later.
//!
//! A pod that joins the table after the table of the router's first upgrade (a new pod,
//! or a restarted one: another pod UID, or for a listed backend another address) gets a
//! ramp: for `--warmup` its per-pod
//! budget grows from a tenth to all of it, so a pod with cold caches is not handed its
//! share of a wave in its first second.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use wsrouter::{Backend, BackendSet, RoutingTable, SetId};

/// The budgets' settings; `None` rates are off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub per_second: Option<u32>,
    pub per_pod_per_second: Option<u32>,
    pub warmup: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            per_second: None,
            per_pod_per_second: None,
            warmup: Duration::from_secs(30),
        }
    }
}

/// Which budget refused an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// The router's, over every pod.
    Global,
    /// The pod's (ramped while it warms up).
    Pod,
}

/// An upgrade refused: which budget, and when to come back (seconds, at random).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget {
    pub spent: Spent,
    pub retry_after: u32,
}

/// The longest `Retry-After` handed out, however deep the wave.
const MAX_RETRY_AFTER: u32 = 60;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Self {
        Self {
            tokens: rate,
            at: now,
        }
    }

    /// Takes a token if there is one after refilling at `rate` (capacity one second's
    /// worth).
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for an upgrade another budget then refused.
    fn give_back(&mut self) {
        self.tokens += 1.0;
    }
}

/// One pod's bucket and what the ramp needs: which pod it was when first seen, and since
/// when.
#[derive(Debug, Clone)]
struct Pod {
    bucket: Bucket,
    /// Its UID (a pod from the EndpointSlices) or address (a listed backend).
    id: String,
    since: Instant,
    /// Seen in the first table: it did not just start, whatever its age.
    settled: bool,
    /// The pod's refused, still to be let in.
    owed: Owed,
}

/// The refused a budget still owes a place: each refusal adds one, the budget's rate
/// pays them off. Owed over the rate is how long the last one refused must wait.
#[derive(Debug, Clone, Copy, Default)]
struct Owed {
    count: f64,
    at: Option<Instant>,
}

impl Owed {
    /// Adds one refused at `now`, after paying off what `rate` has let in since the
    /// last; the seconds until it can be let in (at least 1).
    fn refuse(&mut self, rate: f64, now: Instant) -> f64 {
        let rate = rate.max(0.1);
        let paid = self.at.map_or(0.0, |at| {
            now.saturating_duration_since(at).as_secs_f64() * rate
        });
        self.count = (self.count - paid).max(0.0) + 1.0;
        self.at = Some(now);
        self.count / rate
    }
}

#[derive(Debug, Default)]
struct State {
    global: Option<Bucket>,
    /// By ordinal.
    /// By backend set, then ordinal.
    pods: Vec<Vec<Option<Pod>>>,
    /// The router budget's refused, still to be let in.
    owed: Owed,
    /// Whether a table has been seen (the pods of the first are settled).
    first_table_seen: bool,
}

#[derive(Debug)]
pub(crate) struct UpgradeBudget {
    config: BudgetConfig,
    state: Mutex<State>,
}

impl UpgradeBudget {
    /// The budgets of `config`, shown in `gauges` (`wsrouter_upgrade_budget_per_second`:
    /// the router's, then the pod's; 0 when off).
    pub(crate) fn new(config: BudgetConfig, gauges: [&Gauge; 2]) -> Self {
        gauges[0].set(i64::from(config.per_second.unwrap_or(0)));
        gauges[1].set(i64::from(config.per_pod_per_second.unwrap_or(0)));
        Self {
            config,
            state: Mutex::default(),
        }
    }

    /// Whether either budget is on; with neither, [`UpgradeBudget::take`] is never called.
    pub(crate) fn is_on(&self) -> bool {
        self.config.per_second.is_some() || self.config.per_pod_per_second.is_some()
    }

    /// Marks the pods of `table`, the first the budget sees, as settled (no ramp): a
    /// router that starts into a running fleet is not the pods starting.
    fn settle(&self, s: &mut State, table: &RoutingTable, now: Instant) {
        s.first_table_seen = true;
        let rate = f64::from(self.config.per_pod_per_second.unwrap_or(0));
        s.pods = table
            .sets()
            .iter()
            .map(|set| {
                let pod = |backend| {
                    Some(Pod {
                        bucket: Bucket::full(rate, now),
                        id: identity(backend).to_owned(),
                        since: now,
                        settled: true,
                        owed: Owed::default(),
                    })
                };
                set.backends().iter().map(pod).collect()
            })
            .collect();
    }

    /// Takes one upgrade to pod `ordinal` of backend set `set` in `table` out of the
    /// budgets, or says which refused it and when to come back.
    pub(crate) fn take(
        &self,
        table: &RoutingTable,
        set: SetId,
        ordinal: u32,
        now: Instant,
    ) -> Result<(), OverBudget> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *s;
        if let Some(rate) = self.config.per_second.map(f64::from) {
            let global = s.global.get_or_insert_with(|| Bucket::full(rate, now));
            if !global.take(rate, now) {
                return Err(refusal(Spent::Global, s.owed.refuse(rate, now)));
            }
        }
        let Some(per_pod) = self.config.per_pod_per_second.map(f64::from) else {
            return Ok(());
        };
        if !s.first_table_seen {
            self.settle(s, table, now);
        }
        // Pods the table no longer has are forgotten: one that comes back (a scale 4 → 3
        // → 4, at the same address) is a new pod, and warms up.
        let set = usize::from(set);
        if s.pods.len() <= set {
            s.pods.resize(set + 1, Vec::new());
        }
        let pods = &mut s.pods[set];
        let in_table = table.sets().get(set).map_or(&[][..], BackendSet::backends);
        pods.truncate(in_table.len());
        let id = in_table.get(ordinal as usize).map_or("", identity);
        let slot = pod_slot(pods, ordinal);
        let pod = match slot {
            // An empty identity is a table newer than the one that routed this request,
            // without the pod: the slot stays as it was.
            Some(p) if p.id == id || id.is_empty() => p,
            // New here, or restarted: it warms up from now.
            _ => slot.insert(Pod {
                bucket: Bucket {
                    tokens: 1.0,
                    at: now,
                },
                id: id.to_owned(),
                since: now,
                settled: false,
                owed: Owed::default(),
            }),
        };
        let rate = per_pod * self.ramp(pod, now);
        if pod.bucket.take(rate, now) {
            return Ok(());
        }
        let wait = pod.owed.refuse(rate, now);
        if let Some(g) = &mut s.global {
            g.give_back();
        }
        Err(refusal(Spent::Pod, wait))
    }

    /// The share of its budget a pod has: all once settled or warm, else from a tenth
    /// up, in proportion to how long it has been in the table.
    fn ramp(&self, pod: &Pod, now: Instant) -> f64 {
        let warmup = self.config.warmup.as_secs_f64();
        if pod.settled || warmup <= 0.0 {
            return 1.0;
        }
        let age = now.saturating_duration_since(pod.since).as_secs_f64();
        (age / warmup).clamp(0.1, 1.0)
    }
}

/// A refusal's `Retry-After`: the seconds its budget needs to let in everyone it has
/// refused and not yet let in, this one last (`wait`), plus a random second, at most
/// [`MAX_RETRY_AFTER`]. Each refusal of a wave is told a moment a little later than the
/// one before, so the wave comes back at the rate the budget takes it (a draw from zero
/// up would bring the first ones back together, and faster).
fn refusal(spent: Spent, wait: f64) -> OverBudget {
    let at = (wait.ceil() as u32).clamp(1, MAX_RETRY_AFTER);
    OverBudget {
        spent,
        retry_after: (at + fastrand::u32(..2)).min(MAX_RETRY_AFTER),
    }
}

/// What tells a restarted pod from the one before it: its UID, or a listed backend's
/// address.
fn identity(backend: &Backend) -> &str {
    match backend {
        Backend::Pod(m) => &m.uid,
        Backend::Addr(a) => a,
        Backend::Unknown => "",
    }
}

/// Pod `ordinal`'s slot, made on first use. Ordinals are a StatefulSet's (small, dense).
fn pod_slot(pods: &mut Vec<Option<Pod>>, ordinal: u32) -> &mut Option<Pod> {
    let at = ordinal as usize;
    if pods.len() <= at {
        pods.resize(at + 1, None);
    }
    &mut pods[at]
}

/// How long a full reconnect of `sockets` takes under the budgets for `pods` pods, the
/// busiest pod holding `busiest` of them: the slower of the router's budget over all and
/// the busiest pod's over its own. `None` with no budget.
pub(crate) fn reconnect_time(
    config: &BudgetConfig,
    sockets: u64,
    busiest: u64,
) -> Option<Duration> {
    let global = config
        .per_second
        .map(|r| sockets as f64 / f64::from(r.max(1)));
    let pod = config
        .per_pod_per_second
        .map(|r| busiest as f64 / f64::from(r.max(1)));
    let secs = match (global, pod) {
        (Some(g), Some(p)) => g.max(p),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests;
