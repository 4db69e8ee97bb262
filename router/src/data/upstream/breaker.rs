//! Circuit breakers per backend address. A pod that keeps failing (connections refused or
//! reset, or no answer within the backend timeout, retries included) is left alone for a
//! cool-down: its tenants get `503` + `Retry-After` at once instead of each waiting out
//! the timeout against it. After the cool-down one connection goes through as a probe; it
//! closes the breaker if it succeeds and opens it again if not. The tenant is never
//! moved to another pod: its state lives on this one.
//!
//! Keyed by address, so a pod restarted at a new address starts closed; each table swap
//! forgets the addresses the new table no longer routes to ([`Breakers::follow`]).
//! Asked once per upgrade or plain request (never per frame). Only an address with
//! something to remember (a failure counted, a circuit open or half open) is kept, under
//! one lock; while none is, as in a healthy fleet, a permit and its success are decided by one atomic
//! read, so requests on both I/O threads never meet on that lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use wsrouter::{Backend, RoutingTable};

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failed upgrades that open the breaker; 0: never.
    pub failures: u32,
    /// How long an open breaker refuses before it lets one probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            cooldown: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over; `probing` while the one probe is out.
    HalfOpen {
        probing: bool,
    },
}

/// What an operator sees of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    /// Refusing for this much longer.
    Open(Duration),
    /// Letting one probe through (or waiting on it).
    HalfOpen,
}

impl BreakerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open(_) => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// An upgrade refused by an open breaker: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub retry_after_secs: u32,
}

#[derive(Default)]
pub(crate) struct Breakers {
    config: BreakerConfig,
    circuits: Mutex<Circuits>,
    /// How many addresses `circuits` holds, written under its lock: read without it,
    /// 0 says every circuit is closed with no failure counted.
    tracked: AtomicUsize,
}

type Circuits = HashMap<Box<str>, Circuit>;

/// The lock on the circuits; dropped, it publishes how many are kept.
struct Locked<'a> {
    circuits: MutexGuard<'a, Circuits>,
    tracked: &'a AtomicUsize,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Circuits;
    fn deref(&self) -> &Circuits {
        &self.circuits
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Circuits {
        &mut self.circuits
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.tracked.store(self.circuits.len(), Ordering::Release);
    }
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            circuits: Mutex::default(),
            tracked: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            // Each update is one insert; a panic elsewhere cannot leave it half done.
            circuits: self.circuits.lock().unwrap_or_else(|p| p.into_inner()),
            tracked: &self.tracked,
        }
    }

    /// Whether no address has anything to remember. A permit or a success decided on
    /// this read without the lock is one ordered just before a concurrent failure's
    /// count, as it could have been under the lock.
    fn all_clear(&self) -> bool {
        self.tracked.load(Ordering::Acquire) == 0
    }

    /// May an upgrade or request to `addr` go ahead? The permit says how it went.
    pub(crate) fn admit<'a>(&'a self, addr: &'a str) -> Result<Permit<'a>, Refused> {
        if self.config.failures == 0 || self.all_clear() {
            return Ok(self.permit(addr, false));
        }
        let now = Instant::now();
        let mut circuits = self.lock();
        let probe = match circuits.get(addr).copied() {
            None | Some(Circuit::Closed { .. }) => false,
            Some(Circuit::Open { until }) if now < until => {
                let left = until - now;
                return Err(Refused {
                    retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u32,
                });
            }
            Some(Circuit::Open { .. }) | Some(Circuit::HalfOpen { probing: false }) => {
                circuits.insert(addr.into(), Circuit::HalfOpen { probing: true });
                true
            }
            Some(Circuit::HalfOpen { probing: true }) => {
                return Err(Refused {
                    retry_after_secs: 1,
                })
            }
        };
        drop(circuits);
        Ok(self.permit(addr, probe))
    }

    fn permit<'a>(&'a self, addr: &'a str, probe: bool) -> Permit<'a> {
        Permit {
            breakers: self,
            addr,
            probe,
            decided: false,
        }
    }

    pub(crate) fn cooldown(&self) -> Duration {
        self.config.cooldown
    }

    /// Forgets, at each table swap (`changes`), the addresses the new table no longer
    /// routes to: one that failed and left for good (a pod replaced at another address)
    /// would otherwise keep every later request on the lock. Spawned once, beside the
    /// router; returns when the control loop is gone.
    pub(crate) async fn follow(
        self: Arc<Self>,
        mut changes: watch::Receiver<u64>,
        table: Arc<ArcSwapOption<RoutingTable>>,
    ) {
        while changes.changed().await.is_ok() {
            if self.all_clear() {
                continue;
            }
            let Some(t) = table.load_full() else {
                continue;
            };
            // As the keys are written: a list entry as given, a pod's `IP:PORT`.
            let routed: Vec<String> = t.backends().iter().filter_map(Backend::address).collect();
            self.lock()
                .retain(|addr, _| routed.iter().any(|r| **r == **addr));
        }
    }

    /// How the breaker for `addr` stands now.
    pub(crate) fn state(&self, addr: &str) -> BreakerState {
        match self.lock().get(addr).copied() {
            None | Some(Circuit::Closed { .. }) => BreakerState::Closed,
            Some(Circuit::Open { until }) => {
                let now = Instant::now();
                if now < until {
                    BreakerState::Open(until - now)
                } else {
                    BreakerState::HalfOpen
                }
            }
            Some(Circuit::HalfOpen { .. }) => BreakerState::HalfOpen,
        }
    }

    /// Records an outcome; returns `Some(true)` when this opened the breaker and
    /// `Some(false)` when it closed it.
    fn record(&self, addr: &str, ok: bool, probe: bool) -> Option<bool> {
        if ok && self.all_clear() {
            return None;
        }
        let mut circuits = self.lock();
        if ok {
            let was_open = !matches!(circuits.remove(addr), None | Some(Circuit::Closed { .. }));
            return was_open.then_some(false);
        }
        let failures = match circuits.get(addr).copied() {
            Some(Circuit::Closed { failures }) => failures + 1,
            None => 1,
            // Another upgrade that was already under way when it opened: no news.
            Some(Circuit::Open { .. }) | Some(Circuit::HalfOpen { .. }) if !probe => return None,
            Some(_) => self.config.failures,
        };
        if failures >= self.config.failures {
            let until = Instant::now() + self.config.cooldown;
            circuits.insert(addr.into(), Circuit::Open { until });
            Some(true)
        } else {
            circuits.insert(addr.into(), Circuit::Closed { failures });
            None
        }
    }
}

/// One upgrade or request under a breaker. Say how it went with [`Permit::succeeded`]
/// or [`Permit::failed`]; dropped undecided (the client left, the router is draining),
/// it counts for nothing, and a probe hands its turn to the next upgrade.
pub(crate) struct Permit<'a> {
    breakers: &'a Breakers,
    addr: &'a str,
    probe: bool,
    decided: bool,
}

/// What a decided permit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

impl Permit<'_> {
    pub(crate) fn succeeded(mut self) -> Transition {
        self.decide(true)
    }

    pub(crate) fn failed(mut self) -> Transition {
        self.decide(false)
    }

    fn decide(&mut self, ok: bool) -> Transition {
        self.decided = true;
        if self.breakers.config.failures == 0 {
            return Transition::None;
        }
        match self.breakers.record(self.addr, ok, self.probe) {
            Some(true) => Transition::Opened,
            Some(false) => Transition::Closed,
            None => Transition::None,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.decided {
            let mut circuits = self.breakers.lock();
            if let Some(c @ Circuit::HalfOpen { probing: true }) = circuits.get_mut(self.addr) {
                *c = Circuit::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(cooldown: Duration) -> Arc<Breakers> {
        Breakers::new(BreakerConfig {
            failures: 3,
            cooldown,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breakers(Duration::from_secs(60));
        for _ in 0..2 {
            assert_eq!(b.admit("a:1").unwrap().failed(), Transition::None);
        }
        assert_eq!(b.admit("a:1").unwrap().succeeded(), Transition::None);
        for _ in 0..2 {
            b.admit("a:1").unwrap().failed();
        }
        assert_eq!(b.state("a:1"), BreakerState::Closed);
        assert_eq!(b.admit("a:1").unwrap().failed(), Transition::Opened);
        let refused = b.admit("a:1").map(|_| ()).unwrap_err();
        assert_eq!(refused.retry_after_secs, 60);
        assert!(matches!(b.state("a:1"), BreakerState::Open(_)));
        // Another address is its own breaker.
        assert!(b.admit("b:1").is_ok());
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_or_reopens() {
        let b = breakers(Duration::ZERO);
        for _ in 0..3 {
            b.admit("a:1").unwrap().failed();
        }
        assert_eq!(b.state("a:1"), BreakerState::HalfOpen);
        let probe = b.admit("a:1").unwrap();
        // Only one probe at a time.
        assert!(b.admit("a:1").is_err());
        assert_eq!(probe.failed(), Transition::Opened);
        let probe = b.admit("a:1").unwrap();
        assert_eq!(probe.succeeded(), Transition::Closed);
        assert_eq!(b.state("a:1"), BreakerState::Closed);
        assert!(b.admit("a:1").is_ok());
    }

    #[test]
    fn an_undecided_probe_hands_its_turn_on() {
        let b = breakers(Duration::ZERO);
        for _ in 0..3 {
            b.admit("a:1").unwrap().failed();
        }
        drop(b.admit("a:1").unwrap());
        let next = b.admit("a:1").unwrap();
        assert_eq!(next.succeeded(), Transition::Closed);
    }

    #[test]
    fn only_an_address_with_something_to_remember_is_kept() {
        let b = breakers(Duration::from_secs(60));
        // Healthy: nothing kept, so admits and successes skip the lock.
        assert_eq!(b.admit("a:1").unwrap().succeeded(), Transition::None);
        assert!(b.all_clear());
        // A permit taken while all was clear still counts its failure.
        let early = b.admit("a:1").unwrap();
        b.admit("a:1").unwrap().failed();
        assert!(!b.all_clear());
        early.failed();
        assert_eq!(b.admit("a:1").unwrap().failed(), Transition::Opened);
        // Another address's success leaves the open one open, and keeps nothing of its own.
        assert_eq!(b.admit("b:1").unwrap().succeeded(), Transition::None);
        assert!(b.admit("a:1").is_err());
        assert_eq!(b.lock().len(), 1);
        // A success after the cool-down forgets the address again.
        let b = breakers(Duration::ZERO);
        for _ in 0..3 {
            b.admit("a:1").unwrap().failed();
        }
        assert_eq!(b.admit("a:1").unwrap().succeeded(), Transition::Closed);
        assert!(b.all_clear());
    }

    #[tokio::test]
    async fn a_swap_forgets_the_addresses_its_table_no_longer_routes_to() {
        let table = |addrs: &[&str]| {
            let list =
                wsrouter::Backends::static_list(addrs.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_else(|e| panic!("{e}"));
            let n =
                std::num::NonZeroU32::new(addrs.len() as u32).unwrap_or(std::num::NonZeroU32::MIN);
            RoutingTable::build(
                1,
                wsrouter::TableSource::Flags,
                &list,
                n,
                wsrouter::Overrides::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let b = breakers(Duration::from_secs(60));
        let current = Arc::new(ArcSwapOption::from_pointee(table(&["gone:1", "kept:1"])));
        let (changes, rx) = watch::channel(0u64);
        let follower = tokio::spawn(b.clone().follow(rx, current.clone()));
        for _ in 0..3 {
            b.admit("gone:1").unwrap().failed();
        }
        b.admit("kept:1").unwrap().failed();
        // The pod at gone:1 is replaced at new:1.
        current.store(Some(Arc::new(table(&["new:1", "kept:1"]))));
        changes.send_replace(1);
        // The swap is heard when the follower has run; its end (the control loop gone)
        // says it has.
        drop(changes);
        follower.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.lock().len(), 1);
        assert_eq!(b.state("gone:1"), BreakerState::Closed);
        b.admit("kept:1").unwrap().succeeded();
        assert!(b.all_clear(), "the lock is skipped again");
    }

    #[test]
    fn zero_failures_means_never() {
        let b = Breakers::new(BreakerConfig {
            failures: 0,
            cooldown: Duration::from_secs(60),
        });
        for _ in 0..10 {
            b.admit("a:1").unwrap().failed();
        }
        assert_eq!(b.state("a:1"), BreakerState::Closed);
    }
}
