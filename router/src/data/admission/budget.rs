//! The upgrade budget: how many new WebSockets the router lets through per second, in
//! all (`--max-upgrades-per-second`) and per backend pod
//! (`--max-upgrades-per-pod-per-second`), so a reconnect wave (another replica's drain,
//! a pod's restart) reaches the pods as a steady stream, not at once. Each is a token
//! bucket holding one second's worth. An upgrade past either is refused with `503` before
//! any backend is asked, and its `Retry-After` is drawn at random over the time the
//! budget needs to let in everyone refused lately, so the refused come back spread out
//! rather than together a second later.
//!
//! A pod that joins the table after the table of the router's first upgrade (a new pod,
//! or a restarted one: another pod UID, or for a listed backend another address) gets a
//! ramp: for `--warmup` its per-pod
//! budget grows from a tenth to all of it, so a pod with cold caches is not handed its
//! share of a wave in its first second.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use wsrouter::{Backend, RoutingTable};

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
}

#[derive(Debug, Default)]
struct State {
    global: Option<Bucket>,
    /// By ordinal.
    pods: Vec<Option<Pod>>,
    /// Refusals in the current one-second window, and when it began: how deep the
    /// wave waiting outside is, which `Retry-After` spreads over.
    refused: u32,
    window: Option<Instant>,
    /// Whether a table has been seen (the pods of the first are settled).
    first_table_seen: bool,
}

#[derive(Debug)]
pub(crate) struct UpgradeBudget {
    config: BudgetConfig,
    state: Mutex<State>,
}

impl UpgradeBudget {
    /// The budgets of `config`, shown in `metrics` (`wsrouter_upgrade_budget_per_second`).
    pub(crate) fn new(
        config: BudgetConfig,
        metrics: &crate::data::shared::metrics::Metrics,
    ) -> Self {
        metrics
            .upgrade_budget_router
            .set(i64::from(config.per_second.unwrap_or(0)));
        metrics
            .upgrade_budget_pod
            .set(i64::from(config.per_pod_per_second.unwrap_or(0)));
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
        for (ordinal, backend) in table.backends().iter().enumerate() {
            *pod_slot(&mut s.pods, ordinal as u32) = Some(Pod {
                bucket: Bucket::full(rate, now),
                id: identity(backend).to_owned(),
                since: now,
                settled: true,
            });
        }
    }

    /// Takes one upgrade to pod `ordinal` of `table` out of the budgets, or says which
    /// refused it and when to come back.
    pub(crate) fn take(
        &self,
        table: &RoutingTable,
        ordinal: u32,
        now: Instant,
    ) -> Result<(), OverBudget> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *s;
        if let Some(rate) = self.config.per_second.map(f64::from) {
            let global = s.global.get_or_insert_with(|| Bucket::full(rate, now));
            if !global.take(rate, now) {
                return Err(self.refuse(s, Spent::Global, rate, now));
            }
        }
        let Some(per_pod) = self.config.per_pod_per_second.map(f64::from) else {
            return Ok(());
        };
        if !s.first_table_seen {
            self.settle(s, table, now);
        }
        let id = table.backends().get(ordinal as usize).map_or("", identity);
        let slot = pod_slot(&mut s.pods, ordinal);
        let pod = match slot {
            Some(p) if p.id == id => p,
            // New here, or restarted: it warms up from now.
            _ => slot.insert(Pod {
                bucket: Bucket {
                    tokens: 1.0,
                    at: now,
                },
                id: id.to_owned(),
                since: now,
                settled: false,
            }),
        };
        let rate = per_pod * self.ramp(pod, now);
        if pod.bucket.take(rate, now) {
            return Ok(());
        }
        if let Some(g) = &mut s.global {
            g.give_back();
        }
        Err(self.refuse(s, Spent::Pod, rate, now))
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

    /// Counts a refusal and draws its `Retry-After`: at random over the seconds `rate`
    /// needs to let in everyone refused in the last second, at least 1 to 2 s.
    fn refuse(&self, s: &mut State, spent: Spent, rate: f64, now: Instant) -> OverBudget {
        let fresh = s
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1));
        if fresh {
            s.window = Some(now);
            s.refused = 0;
        }
        s.refused = s.refused.saturating_add(1);
        let span = (f64::from(s.refused) / rate.max(0.1)).ceil() as u32;
        let span = span.clamp(2, MAX_RETRY_AFTER);
        OverBudget {
            spent,
            retry_after: 1 + fastrand::u32(..span),
        }
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
