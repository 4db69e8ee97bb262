//! The control plane's counters and gauges. It registers them itself; the admin
//! listener only encodes the registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use wsrouter::{Fingerprint, RoutingTable};

use crate::state::labels::{FingerprintLabels, ReasonLabel, SetLabel, SetNames};
use crate::state::lifecycle::Changes;

/// Why an update did not become a table. Bounded, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A key that is not a DNS-1123 label, a bad target, or a duplicate key.
    InvalidOverrides,
    /// The source could not be read or parsed (bad YAML, not a ConfigMap, non-string value).
    Unparsable,
    /// Zero replicas, or more than a static backend list has addresses for.
    BadReplicas,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidOverrides => "invalid_overrides",
            Self::Unparsable => "unparsable",
            Self::BadReplicas => "bad_replicas",
        }
    }
}

/// The control plane's counters and gauges, registered as Prometheus metrics.
#[derive(Debug, Default)]
pub struct ControlStats {
    pub table_version: Gauge,
    pub table_replicas: Gauge,
    pub table_overrides: Gauge,
    pub inactive_overrides: Gauge,
    pub swaps: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Watches (re)started: the first list and every relist.
    pub watch_restarts: Counter,
    /// Errors from the API server or a broken watch stream.
    pub watch_errors: Counter,
    /// TLS certificates reloaded, and new pairs refused (the last good one kept).
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    /// JWKS files reloaded, and new ones refused (the last good keys kept).
    pub jwks_reloads: Counter,
    pub jwks_reload_failures: Counter,
    pub ticket_key_reloads: Counter,
    pub ticket_key_reload_failures: Counter,
    /// `wsrouter_routing_info{config, membership} 1`: the fingerprint of the table in
    /// force, one series at a time.
    pub routing_info: Family<FingerprintLabels, Gauge>,
    /// Woken on every change watchers make outside the table (certificate).
    pub changes: Changes,
    /// Each backend set's replicas, and the percent of tenants the weight sends it.
    pub(crate) set_replicas: Family<SetLabel, Gauge>,
    pub(crate) set_weight: Family<SetLabel, Gauge<f64, AtomicU64>>,
}

impl ControlStats {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Shows each backend set of `table` (named `names` by id): its replicas, and its
    /// weight (the canary's; the stable set has the rest, the others none).
    pub fn set_sets(&self, table: &RoutingTable, names: &SetNames) {
        let canary = table.split().canary();
        let canary_weight = canary.map_or(0.0, |c| f64::from(c.weight) / 100.0);
        for (i, set) in table.sets().iter().enumerate() {
            let Some(&name) = names.get(i) else { continue };
            let label = SetLabel { set: name };
            self.set_replicas
                .get_or_create(&label)
                .set(i64::from(set.replicas()));
            let weight = match canary {
                _ if i == 0 => 100.0 - canary_weight,
                Some(c) if *c.set == *set.name() => canary_weight,
                _ => 0.0,
            };
            self.set_weight.get_or_create(&label).set(weight);
        }
    }

    /// Shows `f` (the table now in force) as the one `routing_info` series.
    pub fn set_fingerprint(&self, f: Option<Fingerprint>) {
        self.routing_info.clear();
        if let Some(f) = f {
            self.routing_info
                .get_or_create(&FingerprintLabels {
                    config: f.config_hex(),
                    membership: f.membership_hex(),
                })
                .set(1);
        }
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .get()
    }
}

impl ControlStats {
    /// Adds the control plane's series to `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "routing_info",
            "The routing fingerprint of the table in force (config: contract, replicas, overrides; membership: the pod at each ordinal); equal on replicas that route alike",
            self.routing_info.clone(),
        );
        r.register(
            "table_version",
            "Version of the routing table in force (0: none yet)",
            self.table_version.clone(),
        );
        r.register(
            "table_replicas",
            "Backend replicas in the routing table",
            self.table_replicas.clone(),
        );
        r.register(
            "table_overrides",
            "Overrides in the routing table",
            self.table_overrides.clone(),
        );
        r.register(
            "table_inactive_overrides",
            "Overrides pointing beyond the current replicas (the tenant follows its hash)",
            self.inactive_overrides.clone(),
        );
        r.register(
            "table_swaps",
            "Routing tables published",
            self.swaps.clone(),
        );
        r.register(
            "table_rejected_updates",
            "Updates rejected whole, the last good table kept, by reason",
            self.rejected.clone(),
        );
        r.register(
            "watch_restarts",
            "Kubernetes watches (re)listed: first list, relist after 410 or a lost stream",
            self.watch_restarts.clone(),
        );
        r.register(
            "watch_errors",
            "Kubernetes API errors and broken watch streams (retried with backoff)",
            self.watch_errors.clone(),
        );
        r.register(
            "set_replicas",
            "Replicas of each backend set (a version of the backend) in the routing table",
            self.set_replicas.clone(),
        );
        r.register(
            "set_weight_percent",
            "Percent of tenants the split's weight sends to each backend set (the stable set has what the canary does not); pins, overrides and header or cookie rules aside",
            self.set_weight.clone(),
        );
        self.register_files(r);
    }

    /// The files the router follows besides the overrides: certificate and JWKS.
    fn register_files(&self, r: &mut Registry) {
        r.register(
            "tls_reloads",
            "TLS certificates reloaded from disk",
            self.tls_reloads.clone(),
        );
        r.register(
            "tls_reload_failures",
            "New TLS certificate pairs refused (the last good one kept)",
            self.tls_reload_failures.clone(),
        );
        r.register(
            "jwks_reloads",
            "JSON Web Key Sets reloaded from disk (--jwks-file)",
            self.jwks_reloads.clone(),
        );
        r.register(
            "jwks_reload_failures",
            "New JSON Web Key Sets refused (the last good keys kept)",
            self.jwks_reload_failures.clone(),
        );
        r.register(
            "tls_ticket_key_reloads",
            "TLS session-ticket key files reloaded from disk (--tls-ticket-keys)",
            self.ticket_key_reloads.clone(),
        );
        r.register(
            "tls_ticket_key_reload_failures",
            "New TLS session-ticket key files refused (the last good keys kept)",
            self.ticket_key_reload_failures.clone(),
        );
    }
}
