//! The HTTP forward path's metrics: requests by status and client protocol, those in
//! flight, the time to the pod's response head, and the keep-alive pool.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::data::upstream::pool::PoolMetrics;
use crate::state::labels::StatusLabel;

pub(crate) struct HttpMetrics {
    /// Plain requests answered, by the status the client got and its protocol.
    requests: Family<StatusLabel, Counter>,
    /// Handles into `requests` for a 200 over either protocol, taken once: most answers
    /// are counted with an atomic add, not a family lookup.
    ok_h1: Counter,
    ok_h2: Counter,
    /// Forwarded requests whose answer is still being sent.
    pub active: Gauge,
    /// From the request head to the pod's response head.
    pub response_seconds: Histogram,
    pub pool: PoolMetrics,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let requests: Family<StatusLabel, Counter> = Family::default();
        let ok = |protocol| {
            requests
                .get_or_create(&StatusLabel {
                    status: 200,
                    protocol,
                })
                .clone()
        };
        Self {
            ok_h1: ok("h1"),
            ok_h2: ok("h2"),
            requests,
            active: Gauge::default(),
            // 100 µs .. ~105 s: a long poll's answer may take as long as its server holds it.
            response_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 21)),
            pool: PoolMetrics::default(),
        }
    }
}

impl HttpMetrics {
    /// Counts a plain request's answer.
    pub(crate) fn answered(&self, status: u16, protocol: &'static str) {
        let _ = match (status, protocol) {
            (200, "h1") => self.ok_h1.inc(),
            (200, "h2") => self.ok_h2.inc(),
            _ => self
                .requests
                .get_or_create(&StatusLabel { status, protocol })
                .inc(),
        };
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "Plain (non-WebSocket) requests routed under the prefix, by the status the client got (the pod's, or the router's refusal once the request was routed) and client protocol (h1, h2); requests refused while parsed (400, 404, 405) are in upgrade_responses",
            self.requests.clone(),
        );
        r.register(
            "http_requests_active",
            "Forwarded requests in flight: admitted, waiting for their pod's answer or streaming it to the client",
            self.active.clone(),
        );
        r.register(
            "http_response_seconds",
            "Time from a forwarded request's head to its pod's response head (backend connect included)",
            self.response_seconds.clone(),
        );
        let p = &self.pool;
        r.register(
            "backend_pool_opened",
            "Keep-alive connections to pods dialled",
            p.opened.clone(),
        );
        r.register(
            "backend_pool_reused",
            "Forwarded requests sent on an idle pooled connection",
            p.reused.clone(),
        );
        r.register(
            "backend_pool_closed_idle",
            "Idle pooled connections closed: past --backend-pool-idle-timeout, closed by their pod, or to a pod no longer routed to",
            p.closed_idle.clone(),
        );
        r.register(
            "backend_pool_idle",
            "Idle pooled connections to pods, over every I/O thread",
            p.idle.clone(),
        );
    }
}
