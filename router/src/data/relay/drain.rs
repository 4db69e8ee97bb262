//! The drain scheduler: when the router ends live sockets on its own initiative so their
//! clients reconnect elsewhere, it spreads the closes out, so a restart or a move is a
//! trickle of reconnects, never a wave. Three causes, one scheduler, one metric
//! (`wsrouter_drain_closes_total{reason}`):
//!
//! - **shutdown** (SIGTERM): once the listener has closed, each socket closes (1001) at
//!   its own random moment, drawn evenly over `--drain-grace`; the drain's hard end (the
//!   grace's end, or a second signal) closes whatever is left at once.
//! - **pod_gone**: the socket's pod left the table (the StatefulSet scaled down, or the
//!   backend list lost it): the socket closes (1012) at a random moment within
//!   `--drain-grace` of the swap, unless the pod comes back first.
//! - **rerouted** (opt-in, `--reroute-drain GRACE`): the socket's tenant now routes to
//!   another pod: it closes (1012) after the grace plus up to a grace of jitter, at most
//!   `--reroute-drain-rate` per second; a tenant that moves back before its turn keeps its
//!   sockets.
//!
//! Each socket waits on its own future (a relay holds it for its life); nothing walks the
//! sockets. Whatever a waiting socket must look at (a table swap, the spread's start,
//! the drain's hard end) wakes every waiting socket through one `Notify`
//! ([`Drains::relay_events`] hears the control loop and the hard end for them), so an
//! idle socket's wait is one waiter: 224 bytes, with a timer only once a cause
//! has come.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsrouter::{Hints, RoutingTable, SetId};

/// A random share of `span`, in `[0, span)` (zero for a zero span). `fastrand` seeds each
/// thread from the operating system's randomness, so replicas that act at the same moment
/// do not pick the same moments (a seed from the clock or the table would line them up).
fn share_of(span: Duration) -> Duration {
    match u64::try_from(span.as_nanos()).unwrap_or(u64::MAX) {
        0 => Duration::ZERO,
        n => Duration::from_nanos(fastrand::u64(..n)),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RerouteConfig {
    /// How long a moved tenant's sockets keep running before their close is scheduled.
    pub grace: Duration,
    /// Most reroute closes per second, across the router.
    pub per_second: u32,
}

/// Why the drain scheduler closes a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainReason {
    /// The router is shutting down: its turn within the drain's grace came.
    Shutdown,
    /// Its pod left the table.
    PodGone,
    /// Its tenant routes to another pod now (`--reroute-drain`).
    Rerouted,
}

impl DrainReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::PodGone => "pod_gone",
            Self::Rerouted => "rerouted",
        }
    }
}

/// Closes counted by reason, as handles into `wsrouter_drain_closes_total`.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrainCloses {
    pub shutdown: Counter,
    pub pod_gone: Counter,
    pub rerouted: Counter,
}

impl DrainCloses {
    fn of(&self, why: DrainReason) -> &Counter {
        match why {
            DrainReason::Shutdown => &self.shutdown,
            DrainReason::PodGone => &self.pod_gone,
            DrainReason::Rerouted => &self.rerouted,
        }
    }
}

pub(crate) struct Drains {
    /// `--drain-grace`: the span shutdown and pod-gone closes are spread over.
    grace: Duration,
    reroute: Option<RerouteConfig>,
    table: Arc<ArcSwapOption<RoutingTable>>,
    /// Wakes every waiting socket to look again: a table swap, the spread's start, the
    /// hard end, the control loop's end. Every HTTP/1.1 connection waits on it too, once
    /// for all its requests (see `h1::serve`): a swap wakes each, as it does each socket.
    events: Notify,
    /// How many times `events` has fired, raised just before each: what an HTTP/1.1
    /// connection's one wait compares after it registers, so an event between two of
    /// its waits is not missed (see [`Drains::next_event`]).
    epoch: AtomicU64,
    /// The drain's spread began (the listener has closed).
    spreading: AtomicBool,
    /// The drain's hard end (its grace over, or a second signal): every socket ends now.
    hard_end: AtomicBool,
    /// The control loop is gone (the router is stopping): no table will change again.
    api_gone: AtomicBool,
    /// The earliest time the next reroute close may happen.
    next_turn: Mutex<Instant>,
    closes: DrainCloses,
}

/// A socket's wait for its turn to close.
type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where a socket was routed: its set, its pod's ordinal there, and what its canary
/// header and cookie asked (so a swap is judged as it was routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pod {
    pub(crate) set: SetId,
    pub(crate) ordinal: u32,
    pub(crate) hints: Hints,
}

/// What a socket is waiting for, as of what it last looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    None,
    PodGone,
    Moved,
    /// The shutdown's spread: its moment within the grace.
    Shutdown,
}

impl Drains {
    pub(crate) fn new(
        grace: Duration,
        reroute: Option<RerouteConfig>,
        table: Arc<ArcSwapOption<RoutingTable>>,
        closes: DrainCloses,
    ) -> Self {
        Self {
            grace,
            reroute,
            table,
            events: Notify::new(),
            epoch: AtomicU64::new(0),
            spreading: AtomicBool::new(false),
            hard_end: AtomicBool::new(false),
            api_gone: AtomicBool::new(false),
            next_turn: Mutex::new(Instant::now()),
            closes,
        }
    }

    /// Wakes the waiting sockets for each table swap (`changes`), and once more for the
    /// hard end (`hard_end` cancelled), then returns. Spawned once, beside the router.
    pub(crate) async fn relay_events(
        self: Arc<Self>,
        mut changes: watch::Receiver<u64>,
        hard_end: CancellationToken,
    ) {
        let mut api = true;
        loop {
            tokio::select! {
                r = changes.changed(), if api => {
                    if r.is_err() {
                        api = false;
                        self.api_gone.store(true, Ordering::Release);
                    }
                }
                () = hard_end.cancelled() => {
                    self.hard_end.store(true, Ordering::Release);
                    self.notify();
                    return;
                }
            }
            self.notify();
        }
    }

    /// Wakes every waiter on `events`, its epoch raised first.
    fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.events.notify_waiters();
    }

    /// The epoch of the events so far, for [`Drains::next_event`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Resolves with the new epoch once an event comes after `seen`: at once if one
    /// came since (checked after registering, so none is lost in between).
    pub(crate) async fn next_event(&self, seen: u64) -> u64 {
        let event = self.events.notified();
        tokio::pin!(event);
        event.as_mut().enable();
        let now = self.epoch();
        if now != seen {
            return now;
        }
        event.await;
        self.epoch()
    }

    /// Whether a tenant's move closes its sockets (`--reroute-drain`): only then does
    /// [`Drains::turn`] read the tenant's name.
    pub(crate) fn reroutes(&self) -> bool {
        self.reroute.is_some()
    }

    /// Begins the shutdown's spread: every socket waiting with `spread_shutdown` closes
    /// at its own moment within the grace from now. Called once the listener has closed.
    pub(crate) fn begin_shutdown(&self) {
        self.spreading.store(true, Ordering::Release);
        self.notify();
    }

    /// What the current table means for a socket of `tenant` on `pod`. No table (not
    /// loaded yet) means nothing.
    fn cause(&self, tenant: &str, pod: Pod) -> Cause {
        if self.api_gone.load(Ordering::Acquire) {
            // The router is stopping: only the drain ends sockets now.
            return Cause::None;
        }
        let guard = self.table.load();
        let Some(t) = guard.as_deref() else {
            return Cause::None;
        };
        if pod.ordinal >= t.set(pod.set).replicas() {
            return Cause::PodGone;
        }
        if self.reroute.is_none() {
            return Cause::None;
        }
        let now = t.route_for(tenant, pod.hints);
        if (now.set, now.ordinal) != (pod.set, pod.ordinal) {
            Cause::Moved
        } else {
            Cause::None
        }
    }

    /// Waits for this socket's turn to close for `cause` (after its random share of the
    /// span, and for a reroute its place in the rate limit).
    async fn wait_turn(&self, cause: Cause) {
        match (cause, self.reroute) {
            (Cause::PodGone | Cause::Shutdown, _) => {
                tokio::time::sleep(share_of(self.grace)).await;
            }
            (Cause::Moved, Some(r)) => {
                tokio::time::sleep(r.grace + share_of(r.grace)).await;
                self.take_turn(r.per_second).await;
            }
            _ => std::future::pending().await,
        }
    }

    /// Waits for the next reroute close's turn, keeping them at most `per_second` apart.
    async fn take_turn(&self, per_second: u32) {
        let interval = Duration::from_secs(1) / per_second.max(1);
        let turn = {
            let mut next = self.next_turn.lock().unwrap_or_else(|p| p.into_inner());
            let turn = (*next).max(Instant::now());
            *next = turn + interval;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }

    /// Resolves at the turn of the socket of `tenant`, relayed to `pod`, to be closed by
    /// the router, saying why, or at the drain's hard end (`Shutdown`, not counted as a
    /// turn); never resolves otherwise. `spread_shutdown`: the shutdown spreads this
    /// one's close too (sockets); without it only the hard end ends it (plain answers
    /// under way).
    ///
    /// It owns what it needs (a socket's stop holds nothing else beside it).
    pub(crate) fn turn(
        self: Arc<Self>,
        tenant: Box<str>,
        pod: Pod,
        spread_shutdown: bool,
    ) -> impl Future<Output = DrainReason> + Send {
        self.turn_as(tenant, pod, spread_shutdown, std::convert::identity)
    }

    /// [`Drains::turn`], its reason made `T` by `as_t`: a relay's stop boxes this
    /// (with `as_t` a function item, nothing is added to the wait: 224 bytes, one of
    /// the allocator's size classes, where wrapping it in `map` took 232 and the next
    /// class, 256).
    pub(crate) async fn turn_as<T>(
        self: Arc<Self>,
        tenant: Box<str>,
        pod: Pod,
        spread_shutdown: bool,
        as_t: impl FnOnce(DrainReason) -> T,
    ) -> T {
        // The close waiting for its turn, and why: kept while the cause stays as it was
        // (its moment does not slide with each swap), dropped or redrawn when the cause
        // goes or changes (a moved tenant's pod leaving the table meanwhile). Boxed: an
        // idle socket holds none.
        let mut pending: Option<(Cause, Wait<'_>)> = None;
        let why = loop {
            // Registered before the state is read, so an event from here on wakes it.
            let event = self.events.notified();
            tokio::pin!(event);
            event.as_mut().enable();
            if self.hard_end.load(Ordering::Acquire) {
                return as_t(DrainReason::Shutdown);
            }
            // `&tenant` made afresh at each use, not kept across the waits: a socket's
            // wait holds the name once.
            let now = self.looks(&tenant, pod, spread_shutdown);
            match (now, &pending) {
                (Cause::None, _) => pending = None,
                (now, Some((was, _))) if now == *was => {}
                (now, _) => pending = Some((now, Box::pin(self.wait_turn(now)))),
            }
            let turn = async {
                match &mut pending {
                    Some((_, wait)) => wait.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = turn => {}
                () = event => continue,
            }
            // Its turn came: it closes if what it waited for still holds.
            match pending.take() {
                Some((cause, _)) if self.looks(&tenant, pod, spread_shutdown) == cause => {
                    break match cause {
                        Cause::PodGone => DrainReason::PodGone,
                        Cause::Moved => DrainReason::Rerouted,
                        // `None` is never pending.
                        Cause::Shutdown | Cause::None => DrainReason::Shutdown,
                    };
                }
                _ => {}
            }
        };
        self.closes.of(why).inc();
        as_t(why)
    }

    /// What a socket of `tenant` on `pod` waits for now: the shutdown's spread first
    /// (when it spreads this one), else what the table says.
    fn looks(&self, tenant: &str, pod: Pod, spread_shutdown: bool) -> Cause {
        if spread_shutdown && self.spreading.load(Ordering::Acquire) {
            Cause::Shutdown
        } else {
            self.cause(tenant, pod)
        }
    }
}

#[cfg(test)]
mod tests;
