//! The control loop: the one owner of routing state. Watchers send it what they saw
//! (overrides data, replica counts); it validates, builds the next [`RoutingTable`] off
//! the hot path, and publishes it with one `ArcSwap::store`. A bad update is rejected
//! whole and the last good table keeps serving.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wsrouter::{
    parse_configmap, Backends, ConfigMapData, Members, Overrides, RoutingTable, SetId, SetSpec,
    Split, TableError, TableSource, TenantLimits, DEFAULT_STABLE_SET,
};

use super::stats::{ControlStats, RejectReason};
use crate::data::tls::config::TlsSlot;
use crate::state::labels::{set_names, SetNames};
use crate::state::lifecycle::Lifecycle;
use crate::state::tenants::LiveTenants;

/// What a watcher saw.
#[derive(Debug, Clone)]
pub enum Input {
    /// The overrides as the source now has them; `None` when the source has none (the
    /// ConfigMap was deleted, the file is gone).
    Overrides {
        source: TableSource,
        data: Option<BTreeMap<String, String>>,
    },
    /// The StatefulSet's `spec.replicas`.
    Replicas(u32),
    /// The pod at each ordinal, merged from every EndpointSlice of the Service.
    Members(Members),
    /// Another backend set's StatefulSet's `spec.replicas` (0: it has no pods, or is
    /// not there).
    SetReplicas { set: SetId, replicas: u32 },
    /// Another backend set's pods.
    SetMembers { set: SetId, members: Members },
    /// The overrides source could not be read or parsed; already logged by the watcher.
    Unreadable,
    /// A watch (re)listed: its first list, or a relist after 410 or a lost stream.
    WatchRestarted,
    /// A watch failed (API server error or lost stream) and is retrying with backoff.
    WatchFailed,
}

/// How routing tables are made. The control loop builds every one of them, the first
/// included, as soon as it knows the replica count and (for a watched source) the
/// overrides; until then the router answers 503 and is not ready.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// How ordinals become addresses.
    pub backends: Backends,
    /// Names pods in override targets (`backend-3`).
    pub statefulset: String,
    /// Fixed by flags; `None` when the StatefulSet's `spec.replicas` is watched.
    pub replicas: Option<NonZeroU32>,
    /// Overrides known at start, and where they came from.
    pub overrides: Overrides,
    /// Per-tenant settings known at start (from the same ConfigMap as the overrides).
    pub limits: TenantLimits,
    pub source: TableSource,
    /// Overrides come from a watched source not read yet: route nothing before its
    /// first read, rather than route some tenants without their overrides.
    pub await_overrides: bool,
    /// The stable set's name (`--stable-set`).
    pub stable_set: String,
    /// The backend sets beside the stable one, in flag order (set id 1, 2, …).
    pub sets: Vec<SetConfig>,
    /// How tenants are split over the sets, known at start (from the overrides file).
    pub split: Split,
}

/// A backend set beside the stable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetConfig {
    pub name: String,
    /// How its ordinals become addresses.
    pub backends: Backends,
    /// Fixed by a list; `None` until its StatefulSet's is read (the first table waits
    /// for it).
    pub replicas: Option<u32>,
}

impl RoutingConfig {
    /// Static backends or a fixed template, no overrides.
    pub fn fixed(backends: Backends, replicas: NonZeroU32) -> Self {
        Self {
            backends,
            statefulset: "backend".to_owned(),
            replicas: Some(replicas),
            overrides: Overrides::default(),
            limits: TenantLimits::default(),
            source: TableSource::Flags,
            await_overrides: false,
            stable_set: DEFAULT_STABLE_SET.to_owned(),
            sets: Vec::new(),
            split: Split::default(),
        }
    }

    /// The names of the sets, the stable one first: their ids are their places here.
    pub fn set_names(&self) -> Vec<String> {
        std::iter::once(self.stable_set.clone())
            .chain(self.sets.iter().map(|s| s.name.clone()))
            .collect()
    }
}

/// What watchers hold: where to send [`Input`]s, and the slots the control plane fills
/// besides the table (pod readiness, the TLS config), with the signal to stop on.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::UnboundedSender<Input>,
    pub stats: Arc<ControlStats>,
    /// How many inputs the loop has finished with (published, unchanged or rejected).
    processed: watch::Receiver<u64>,
    /// The version of the table last published.
    changes: watch::Receiver<u64>,
    slots: Arc<Slots>,
    /// The StatefulSet whose pods are the backends.
    statefulset: Arc<str>,
}

/// What the control plane writes besides the table, and when its watchers stop.
pub(crate) struct Slots {
    /// Cancelled when the router begins to drain: watchers stop with it.
    pub stopping: CancellationToken,
    /// Where the certificate watcher stores a reloaded TLS config (`None`: plaintext).
    pub tls: Option<TlsSlot>,
}

impl ControlHandle {
    /// Cancelled when the router begins to drain: watchers stop with it.
    pub fn stopping(&self) -> CancellationToken {
        self.slots.stopping.clone()
    }

    /// The StatefulSet whose pods are the backends.
    pub fn statefulset(&self) -> &str {
        &self.statefulset
    }

    /// The TLS config slot the certificate watcher stores into (`None`: plaintext).
    pub fn tls_slot(&self) -> Option<TlsSlot> {
        self.slots.tls.clone()
    }

    /// Hands an update to the control loop. Fails only once the router has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }

    /// Follows the number of inputs handled, for waiting on "this update was seen".
    pub fn processed(&self) -> watch::Receiver<u64> {
        self.processed.clone()
    }

    /// Follows the published table version.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// The state the control loop owns.
pub(crate) struct Control {
    table: Arc<ArcSwapOption<RoutingTable>>,
    backends: Backends,
    statefulset: String,
    replicas: Option<NonZeroU32>,
    overrides: Overrides,
    limits: TenantLimits,
    split: Split,
    stable_set: String,
    sets: Vec<SetConfig>,
    /// The sets' names by id, as metric labels.
    set_names: SetNames,
    source: TableSource,
    /// False until a watched overrides source has been read once.
    overrides_known: bool,
    version: u64,
    live: Arc<LiveTenants>,
    changed: watch::Sender<u64>,
    processed: watch::Sender<u64>,
    stats: Arc<ControlStats>,
    lifecycle: Lifecycle,
}

/// What one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    Published {
        version: u64,
    },
    Unchanged,
    /// Waiting for the replica count before a first table can be built.
    Pending,
    Rejected(RejectReason),
}

pub(crate) struct ControlParts {
    /// The slot tables are published into.
    pub table: Arc<ArcSwapOption<RoutingTable>>,
    pub routing: RoutingConfig,
    pub live: Arc<LiveTenants>,
    pub lifecycle: Lifecycle,
    /// Where the loop counts what it does (registered as metrics by the router).
    pub stats: Arc<ControlStats>,
    /// What watchers write besides the table, handed to them with the handle.
    pub slots: Slots,
}

impl Control {
    /// Publishes the first table at once when the configuration has all it needs
    /// (a replica count, and overrides unless they come from a source not read yet).
    pub(crate) fn new(
        parts: ControlParts,
    ) -> (Self, ControlHandle, mpsc::UnboundedReceiver<Input>) {
        let (changed, changes) = watch::channel(0);
        let (processed, processed_rx) = watch::channel(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = parts.stats;
        let r = parts.routing;
        let statefulset: Arc<str> = r.statefulset.as_str().into();
        let names = set_names(&r.set_names());
        let mut control = Self {
            table: parts.table,
            backends: r.backends,
            statefulset: r.statefulset,
            replicas: r.replicas,
            overrides: r.overrides,
            limits: r.limits,
            split: r.split,
            set_names: names,
            stable_set: r.stable_set,
            sets: r.sets,
            source: r.source,
            overrides_known: !r.await_overrides,
            version: 0,
            live: parts.live,
            changed,
            processed,
            stats: stats.clone(),
            lifecycle: parts.lifecycle,
        };
        let (replicas, overrides, source) = (
            control.replicas,
            control.overrides.clone(),
            control.source.clone(),
        );
        if let Applied::Pending = control.publish(replicas, &overrides, &source) {
            tracing::info!(
                replicas_known = replicas.is_some(),
                overrides_known = control.overrides_known,
                "no routing table until the control plane has read its sources; answering 503 until then"
            );
        }
        let handle = ControlHandle {
            tx,
            stats,
            processed: processed_rx,
            changes,
            slots: Arc::new(parts.slots),
            statefulset,
        };
        (control, handle, rx)
    }

    /// Applies inputs until every handle is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        while let Some(input) = rx.recv().await {
            self.apply(input);
            self.processed.send_modify(|n| *n += 1);
        }
    }

    /// Applies one input: the candidate state is built and published, or rejected and
    /// forgotten; only a good update becomes the state later inputs build on.
    pub(crate) fn apply(&mut self, input: Input) -> Applied {
        let next = match self.candidate(input) {
            Ok(next) => next,
            Err(done) => return done,
        };
        let overrides_changed = next.overrides.is_some();
        let overrides = next.overrides.unwrap_or_else(|| self.overrides.clone());
        let source = next.source.unwrap_or_else(|| self.source.clone());
        let was_known = self.overrides_known;
        self.overrides_known |= overrides_changed;
        let previous_limits = next.limits.map(|l| std::mem::replace(&mut self.limits, l));
        let previous_split = next.split.map(|s| std::mem::replace(&mut self.split, s));
        let applied = self.publish(next.replicas, &overrides, &source);
        if matches!(applied, Applied::Rejected(_)) {
            self.overrides_known = was_known;
            if let Some(l) = previous_limits {
                self.limits = l;
            }
            if let Some(s) = previous_split {
                self.split = s;
            }
        } else {
            self.overrides = overrides;
            self.source = source;
            self.replicas = next.replicas;
        }
        applied
    }

    /// What `input` would change (`None`: keep the current one), or the input's whole
    /// outcome when it publishes nothing (a rejection, a counted watch event, members).
    fn candidate(&mut self, input: Input) -> Result<Candidate, Applied> {
        let mut next = Candidate {
            overrides: None,
            limits: None,
            split: None,
            source: None,
            replicas: self.replicas,
        };
        match input {
            Input::Overrides { source, data } => {
                let data = data.unwrap_or_default();
                match parse_configmap(&data, &self.statefulset) {
                    Ok(ConfigMapData {
                        overrides,
                        limits,
                        split,
                    }) => {
                        next.overrides = Some(overrides);
                        next.limits = Some(limits);
                        next.split = Some(split);
                        next.source = Some(source);
                    }
                    Err(e) => {
                        for err in &e.errors {
                            tracing::warn!(source = %source, key = err.key(), error = %err, "overrides update rejected; the last good table keeps serving");
                        }
                        return Err(self.reject(RejectReason::InvalidOverrides));
                    }
                }
            }
            Input::Unreadable => return Err(self.reject(RejectReason::Unparsable)),
            Input::WatchRestarted => {
                self.stats.watch_restarts.inc();
                return Err(Applied::Unchanged);
            }
            Input::WatchFailed => {
                self.stats.watch_errors.inc();
                return Err(Applied::Unchanged);
            }
            Input::Members(m) => return Err(self.apply_members(m)),
            Input::SetReplicas { set, replicas } => {
                return Err(self.apply_set(set, |s| s.replicas = Some(replicas)))
            }
            Input::SetMembers { set, members } => {
                return Err(self.apply_set(set, |s| {
                    if matches!(s.backends, Backends::Pods(_)) {
                        s.backends = Backends::Pods(members);
                    }
                }))
            }
            Input::Replicas(n) => match NonZeroU32::new(n) {
                Some(n) => next.replicas = Some(n),
                None => {
                    tracing::warn!("the StatefulSet has 0 replicas; keeping the last table (its pods will not be ready)");
                    return Err(self.reject(RejectReason::BadReplicas));
                }
            },
        }
        Ok(next)
    }

    fn reject(&self, reason: RejectReason) -> Applied {
        self.stats.reject(reason);
        Applied::Rejected(reason)
    }

    /// New pods for the ordinals (EndpointSlices): published like any other update, so
    /// the data path sees a pod's address and whether it takes new connections.
    fn apply_members(&mut self, members: Members) -> Applied {
        if !matches!(self.backends, Backends::Pods(_)) {
            // Addresses come from a list or a template here; the slices only said which
            // pods exist, which those addresses do not depend on.
            return Applied::Unchanged;
        }
        let previous = std::mem::replace(&mut self.backends, Backends::Pods(members));
        let (replicas, overrides, source) =
            (self.replicas, self.overrides.clone(), self.source.clone());
        let applied = self.publish(replicas, &overrides, &source);
        if matches!(applied, Applied::Rejected(_)) {
            self.backends = previous;
        }
        applied
    }

    /// Another set's replicas or pods changed: published like the stable set's.
    fn apply_set(&mut self, set: SetId, change: impl FnOnce(&mut SetConfig)) -> Applied {
        let Some(i) = usize::from(set)
            .checked_sub(1)
            .filter(|&i| i < self.sets.len())
        else {
            return Applied::Unchanged;
        };
        let previous = self.sets[i].clone();
        change(&mut self.sets[i]);
        if self.sets[i] == previous {
            return Applied::Unchanged;
        }
        let (replicas, overrides, source) =
            (self.replicas, self.overrides.clone(), self.source.clone());
        let applied = self.publish(replicas, &overrides, &source);
        if matches!(applied, Applied::Rejected(_)) {
            self.sets[i] = previous;
        }
        applied
    }

    /// The table for this state, or why none (every set's replicas not known yet, or
    /// one the flags' addresses cannot cover, or a split naming an unknown set).
    fn build(
        &self,
        replicas: NonZeroU32,
        overrides: &Overrides,
        source: &TableSource,
    ) -> Result<Option<RoutingTable>, TableError> {
        let mut specs = Vec::with_capacity(self.sets.len());
        for set in &self.sets {
            let Some(replicas) = set.replicas else {
                return Ok(None);
            };
            specs.push(SetSpec {
                name: &set.name,
                backends: &set.backends,
                replicas,
            });
        }
        let table = RoutingTable::build(
            self.version + 1,
            source.clone(),
            &self.backends,
            replicas,
            overrides.clone(),
        )?;
        let table = table.with_sets(&self.stable_set, &specs, self.split.clone())?;
        Ok(Some(table.with_limits(self.limits.clone())))
    }

    fn publish(
        &mut self,
        replicas: Option<NonZeroU32>,
        overrides: &Overrides,
        source: &TableSource,
    ) -> Applied {
        let (Some(replicas), true) = (replicas, self.overrides_known) else {
            return Applied::Pending;
        };
        let next = match self.build(replicas, overrides, source) {
            Ok(Some(t)) => t,
            Ok(None) => return Applied::Pending,
            Err(TableError::UnknownSets(errors)) => {
                for err in &errors {
                    tracing::warn!(source = %source, key = err.key(), error = %err, "overrides update rejected; the last good table keeps serving");
                }
                return self.reject(RejectReason::InvalidOverrides);
            }
            Err(e) => {
                tracing::warn!(error = %e, "table rejected; the last good table keeps serving");
                return self.reject(RejectReason::BadReplicas);
            }
        };
        let current = self.table.load_full();
        let (diff, tenants_moved, sockets_moved) = match &current {
            Some(cur) => {
                let diff = cur.diff(&next);
                if diff.is_empty() {
                    return Applied::Unchanged;
                }
                let (tenants, sockets) = self.live_moved(cur, &next);
                (Some(diff), tenants, sockets)
            }
            None => (None, 0, 0),
        };
        let inactive = next.overrides().inactive(replicas);
        self.stats.inactive_overrides.set(inactive.len() as i64);
        for (ns, target) in &inactive {
            tracing::warn!(tenant = ns, target, replicas = replicas.get(), "override points beyond the StatefulSet; inactive until it grows (the tenant follows its hash)");
        }
        self.version = next.version();
        tracing::info!(
            table.version = next.version(),
            table.source = %next.source(),
            table.fingerprint = %next.fingerprint(),
            change = %diff.as_ref().map_or_else(|| "first table".to_owned(), |d| d.to_string()),
            overrides = next.overrides().len(),
            overrides.inactive = inactive.len(),
            replicas = replicas.get(),
            live.tenants_moved = tenants_moved,
            live.sockets_moved = sockets_moved,
            "routing table swapped"
        );
        if let Some(d) = &diff {
            tracing::debug!(added = ?d.added, changed = ?d.changed, removed = ?d.removed, "override changes");
        }
        self.table.store(Some(Arc::new(next)));
        self.record_swap(replicas, overrides.len());
        Applied::Published {
            version: self.version,
        }
    }

    /// How many live tenants, and their sockets, the swap from `cur` to `next` moves.
    fn live_moved(&self, cur: &RoutingTable, next: &RoutingTable) -> (u64, u64) {
        let (mut tenants, mut sockets) = (0u64, 0u64);
        for (tenant, n) in self.live.snapshot() {
            if cur.moves(next, &tenant) {
                tenants += 1;
                sockets += u64::from(n);
            }
        }
        (tenants, sockets)
    }

    /// The gauges and signals that follow a published table.
    fn record_swap(&self, replicas: NonZeroU32, overrides: usize) {
        self.stats.swaps.inc();
        self.stats.table_version.set(self.version as i64);
        self.stats.table_replicas.set(i64::from(replicas.get()));
        self.stats.table_overrides.set(overrides as i64);
        let table = self.table.load();
        self.stats
            .set_fingerprint(table.as_deref().map(RoutingTable::fingerprint));
        if let Some(t) = table.as_deref() {
            self.stats.set_sets(t, &self.set_names);
        }
        self.lifecycle.set_table_loaded();
        self.changed.send_replace(self.version);
    }
}

/// What one input would change; `None` keeps the current value.
struct Candidate {
    overrides: Option<Overrides>,
    limits: Option<TenantLimits>,
    split: Option<Split>,
    source: Option<TableSource>,
    replicas: Option<NonZeroU32>,
}

#[cfg(test)]
mod tests;
