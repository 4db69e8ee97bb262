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
    parse_configmap, Backends, Members, Overrides, RoutingTable, TableSource, TenantLimits,
};

use super::stats::{ControlStats, RejectReason};
use crate::data::tls::config::TlsSlot;
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
        }
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
        let mut control = Self {
            table: parts.table,
            backends: r.backends,
            statefulset: r.statefulset,
            replicas: r.replicas,
            overrides: r.overrides,
            limits: r.limits,
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
        let applied = self.publish(next.replicas, &overrides, &source);
        if matches!(applied, Applied::Rejected(_)) {
            self.overrides_known = was_known;
            if let Some(l) = previous_limits {
                self.limits = l;
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
            source: None,
            replicas: self.replicas,
        };
        match input {
            Input::Overrides { source, data } => {
                let data = data.unwrap_or_default();
                match parse_configmap(&data, &self.statefulset) {
                    Ok((o, l)) => {
                        next.overrides = Some(o);
                        next.limits = Some(l);
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

    fn publish(
        &mut self,
        replicas: Option<NonZeroU32>,
        overrides: &Overrides,
        source: &TableSource,
    ) -> Applied {
        let (Some(replicas), true) = (replicas, self.overrides_known) else {
            return Applied::Pending;
        };
        let next = match RoutingTable::build(
            self.version + 1,
            source.clone(),
            &self.backends,
            replicas,
            overrides.clone(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "table rejected; the last good table keeps serving");
                self.stats.reject(RejectReason::BadReplicas);
                return Applied::Rejected(RejectReason::BadReplicas);
            }
        };
        let next = next.with_limits(self.limits.clone());
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
        self.stats
            .set_fingerprint(self.table.load().as_deref().map(RoutingTable::fingerprint));
        self.lifecycle.set_table_loaded();
        self.changed.send_replace(self.version);
    }
}

/// What one input would change; `None` keeps the current value.
struct Candidate {
    overrides: Option<Overrides>,
    limits: Option<TenantLimits>,
    source: Option<TableSource>,
    replicas: Option<NonZeroU32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsrouter::BackendTemplate;

    fn routing(replicas: Option<u32>, await_overrides: bool) -> RoutingConfig {
        let t =
            BackendTemplate::parse("{statefulset}-{i}:9000", "backend", "backend", "ns").unwrap();
        RoutingConfig {
            backends: Backends::Template(t),
            statefulset: "backend".into(),
            replicas: replicas.and_then(NonZeroU32::new),
            overrides: Overrides::default(),
            limits: TenantLimits::default(),
            source: TableSource::Flags,
            await_overrides,
        }
    }

    #[test]
    fn tenant_caps_come_with_the_overrides_and_do_not_move_the_fingerprint() {
        let (mut c, table) = control(Some(4));
        let current = || table.load_full().unwrap();
        assert_eq!(
            c.apply(overrides(
                cm("1"),
                &[("ns-01", "0"), ("max-connections.ns-01", "2")]
            )),
            Applied::Published { version: 2 }
        );
        let before = current().fingerprint();
        assert_eq!(current().limits().max_connections("ns-01"), Some(Some(2)));
        // Only the cap changes: a new table (the data path must see it), same routes.
        assert_eq!(
            c.apply(overrides(
                cm("2"),
                &[("ns-01", "0"), ("max-connections.ns-01", "5")]
            )),
            Applied::Published { version: 3 }
        );
        assert_eq!(current().fingerprint(), before);
        assert_eq!(current().limits().max_connections("ns-01"), Some(Some(5)));
        // A bad setting rejects the whole update, routes included.
        assert_eq!(
            c.apply(overrides(
                cm("3"),
                &[("ns-01", "1"), ("max-connection.ns-01", "5")]
            )),
            Applied::Rejected(RejectReason::InvalidOverrides)
        );
        assert_eq!(current().version(), 3);
        assert_eq!(current().route("ns-01").ordinal, 0);
    }

    fn control_with(routing: RoutingConfig) -> (Control, Arc<ArcSwapOption<RoutingTable>>) {
        let table = Arc::new(ArcSwapOption::empty());
        let (c, _, _) = Control::new(ControlParts {
            table: table.clone(),
            routing,
            live: Arc::new(LiveTenants::default()),
            lifecycle: Lifecycle::default(),
            stats: Arc::default(),
            slots: Slots {
                stopping: CancellationToken::new(),
                tls: None,
            },
        });
        (c, table)
    }

    fn control(replicas: Option<u32>) -> (Control, Arc<ArcSwapOption<RoutingTable>>) {
        control_with(routing(replicas, false))
    }

    fn data(entries: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn cm(rv: &str) -> TableSource {
        TableSource::ConfigMap {
            namespace: "ns".into(),
            name: "wsrouter-overrides".into(),
            resource_version: rv.into(),
        }
    }

    fn overrides(source: TableSource, entries: &[(&str, &str)]) -> Input {
        Input::Overrides {
            source,
            data: data(entries),
        }
    }

    #[test]
    fn updates_publish_new_versions_and_bad_ones_keep_the_last_good_table() {
        let (mut c, table) = control(Some(4));
        let current = || table.load_full().unwrap();
        assert_eq!(current().version(), 1);
        assert_eq!(
            c.apply(overrides(cm("10"), &[("ns-01", "0")])),
            Applied::Published { version: 2 }
        );
        assert_eq!(current().route("ns-01").ordinal, 0);
        // Same data again (a resync): nothing to publish.
        assert_eq!(
            c.apply(overrides(cm("11"), &[("ns-01", "0")])),
            Applied::Unchanged
        );
        // One bad key rejects the whole update; the table stays.
        let bad = overrides(cm("12"), &[("ns-01", "1"), ("Bad_Key", "2")]);
        assert_eq!(
            c.apply(bad),
            Applied::Rejected(RejectReason::InvalidOverrides)
        );
        assert_eq!(current().version(), 2);
        assert_eq!(current().route("ns-01").ordinal, 0);
        assert_eq!(c.stats.rejected(RejectReason::InvalidOverrides), 1);
        // Deleted ConfigMap: no overrides.
        let deleted = Input::Overrides {
            source: cm(""),
            data: None,
        };
        assert_eq!(c.apply(deleted), Applied::Published { version: 3 });
        assert_eq!(current().route("ns-01").ordinal, 2);
        assert_eq!(c.stats.swaps.get(), 3);
    }

    #[test]
    fn replicas_rebuild_and_inactive_overrides_wait_for_growth() {
        let (mut c, table) = control(Some(4));
        c.apply(overrides(cm("1"), &[("acme-prod", "backend-5")]));
        let t = table.load_full().unwrap();
        assert_eq!(t.route("acme-prod").inactive_override, Some(5));
        assert_eq!(c.stats.inactive_overrides.get(), 1);
        assert_eq!(
            c.apply(Input::Replicas(6)),
            Applied::Published { version: 3 }
        );
        let t = table.load_full().unwrap();
        assert_eq!((t.replicas().get(), t.route("acme-prod").ordinal), (6, 5));
        assert_eq!(c.stats.inactive_overrides.get(), 0);
        assert_eq!(
            c.apply(Input::Replicas(0)),
            Applied::Rejected(RejectReason::BadReplicas)
        );
        assert_eq!(table.load_full().unwrap().replicas().get(), 6);
    }

    #[test]
    fn no_table_until_replicas_are_known() {
        let (mut c, table) = control(None);
        assert_eq!(
            c.apply(overrides(cm("1"), &[("ns-01", "1")])),
            Applied::Pending
        );
        assert!(table.load().is_none());
        assert!(!c.lifecycle.is_ready());
        assert_eq!(
            c.apply(Input::Replicas(3)),
            Applied::Published { version: 1 }
        );
        assert_eq!(table.load_full().unwrap().route("ns-01").ordinal, 1);
    }

    #[test]
    fn a_watched_source_is_awaited_before_the_first_table() {
        let (mut c, table) = control_with(routing(Some(4), true));
        assert!(table.load().is_none());
        assert_eq!(c.apply(Input::Replicas(5)), Applied::Pending);
        // A bad first read does not unblock routing either.
        let bad = overrides(cm("1"), &[("X", "1")]);
        assert_eq!(
            c.apply(bad),
            Applied::Rejected(RejectReason::InvalidOverrides)
        );
        assert!(table.load().is_none());
        let good = overrides(cm("2"), &[("ns-01", "4")]);
        assert_eq!(c.apply(good), Applied::Published { version: 1 });
        let t = table.load_full().unwrap();
        assert_eq!((t.replicas().get(), t.route("ns-01").ordinal), (5, 4));
    }

    #[test]
    fn static_lists_cannot_grow() {
        let backends =
            Backends::static_list(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]).unwrap();
        let (mut c, table) =
            control_with(RoutingConfig::fixed(backends, NonZeroU32::new(2).unwrap()));
        assert_eq!(
            c.apply(Input::Replicas(3)),
            Applied::Rejected(RejectReason::BadReplicas)
        );
        assert_eq!(table.load_full().unwrap().replicas().get(), 2);
        // The rejected count is not remembered: the next overrides update still builds.
        let src = TableSource::File { path: "f".into() };
        assert_eq!(
            c.apply(overrides(src, &[("ns-01", "1")])),
            Applied::Published { version: 2 }
        );
        assert_eq!(table.load_full().unwrap().replicas().get(), 2);
    }
}
