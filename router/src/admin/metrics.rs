//! The metrics registry `/metrics` encodes. Each component registers its own series
//! (the data path, the control plane); the admin listener adds its own two and only
//! encodes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::control::ControlStats;
use crate::data::shared::metrics::Metrics as DataMetrics;

/// The content type of [`AdminMetrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every series the router exposes, and the admin listener's own.
pub(crate) struct AdminMetrics {
    registry: Registry,
    /// 1 while the router drains; set when scraped, from the lifecycle.
    pub draining: Gauge,
    /// Admin connections dropped because the admin listener was full.
    pub evicted: Counter,
    /// Per I/O thread, 1 while its event loop has not turned for the stall threshold;
    /// set when scraped, from the heartbeats.
    pub worker_stalled: Family<WorkerLabel, Gauge>,
    /// Per I/O thread, the client connections it runs; set when scraped.
    pub worker_connections: Family<WorkerLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WorkerLabel {
    pub worker: u32,
}

impl AdminMetrics {
    pub(crate) fn new(data: &DataMetrics, control: &ControlStats) -> Self {
        let mut registry = Registry::with_prefix("wsrouter");
        data.register(&mut registry);
        control.register(&mut registry);
        let (draining, evicted) = (Gauge::default(), Counter::default());
        registry.register(
            "admin_connections_evicted",
            "Admin connections dropped (the busiest address's oldest) because the admin listener's cap was reached",
            evicted.clone(),
        );
        registry.register(
            "draining",
            "1 while the router drains after SIGTERM",
            draining.clone(),
        );
        let worker_stalled = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_stalled",
            "1 while an I/O thread's event loop has not turned for --stall-threshold (then /healthz fails)",
            worker_stalled.clone(),
        );
        let worker_connections = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_connections",
            "Client connections each I/O thread runs (handshakes included); the accept loops keep them within one or two of each other",
            worker_connections.clone(),
        );
        Self {
            registry,
            draining,
            evicted,
            worker_stalled,
            worker_connections,
        }
    }

    /// The exposition, in OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
