//! The data path's metrics. It registers them itself into the registry the admin
//! listener serves (`/metrics`), as the control plane does its own.
//!
//! Labels are bounded: backend ordinals, close reasons, HTTP statuses, directions and
//! rejection reasons; never tenants or client addresses.

use crate::data::admission::auth::Denied;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::data::admission::pools::{AdmissionStats, Refusal};
use crate::data::relay::drain::{DrainCloses, DrainReason};
use crate::data::shared::http_metrics::HttpMetrics;
use crate::data::shared::set_metrics::SetMetrics;
pub(crate) use crate::state::labels::{
    ClosedLabels, DirectionLabel, KindLabel, OrdinalLabel, ReasonLabel, ScopeLabel, SetNames,
    StatusLabel,
};

/// The data path's metrics. Cheap to update: atomics, and for labelled families one
/// read-locked lookup per connection event (never per frame).
pub(crate) struct Metrics {
    pub connections_accepted: Counter,
    /// Accepted by one I/O thread and run by a less loaded one.
    pub connections_handed_over: Counter,
    /// Totals over every refusal reason, for tests and the handle.
    pub connections_refused: Counter,
    refused: Family<ReasonLabel, Counter>,
    pub admission: AdmissionStats,
    backend_handshake_failures: Family<ReasonLabel, Counter>,
    /// Requests turned away at the door (`--auth jwt`), by reason.
    auth_refused: Family<ReasonLabel, Counter>,
    /// Requests let in because the authorization service could not answer
    /// (`--auth-failure allow`).
    pub auth_failed_open: Counter,
    pub connections_active: Family<OrdinalLabel, Gauge>,
    pub connections_closed: Family<ClosedLabels, Counter>,
    pub upgrade_responses: Family<StatusLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    /// Handles into `bytes` for its two fixed labels, taken once so a connection's end
    /// costs two atomic adds, not two family lookups.
    pub bytes_from_client: Counter,
    pub bytes_from_backend: Counter,
    pub tls_handshake_seconds: Histogram,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    pub tls_handshake_errors: Counter,
    /// Handshakes done, by kind: `full`, or `resumed` (a session ticket opened).
    tls_handshakes: Family<KindLabel, Counter>,
    pub tls_handshakes_full: Counter,
    pub tls_handshakes_resumed: Counter,
    pub tls_handshake_timeouts: Counter,
    pub upgrade_seconds: Histogram,
    /// Backend connections refused or reset and tried again.
    pub backend_connect_retries: Counter,
    /// HTTP/2 connections open, and WebSocket streams relayed over them.
    pub http2_connections: Gauge,
    pub http2_streams: Gauge,
    /// WebSockets whose sockets moved onto an I/O thread's io_uring (`--io-uring`).
    pub io_uring_sockets: Counter,
    breaker_trips: Family<OrdinalLabel, Counter>,
    breaker_open: Family<OrdinalLabel, Gauge>,
    /// PROXY protocol headers read, by what they named (client, local), and the
    /// connections closed for theirs, by reason.
    proxy_headers: Family<ReasonLabel, Counter>,
    /// Sockets the router closed itself, spread out, by why (shutdown, pod_gone,
    /// rerouted).
    drain_closes: Family<ReasonLabel, Counter>,
    /// The upgrade budgets, per second (0: off), by scope: `router`, `pod`.
    upgrade_budget: Family<ScopeLabel, Gauge>,
    pub upgrade_budget_router: Gauge,
    pub upgrade_budget_pod: Gauge,
    proxy_header_errors: Family<ReasonLabel, Counter>,
    /// The plain requests forwarded beside the sockets.
    pub http: HttpMetrics,
    /// What each backend set was asked, and how it answered.
    pub sets: SetMetrics,
}

impl Default for Metrics {
    /// One set, named as the stable set is by default.
    fn default() -> Self {
        Self::new(crate::state::labels::set_names(&[
            wsrouter::DEFAULT_STABLE_SET.to_owned(),
        ]))
    }
}

impl Metrics {
    /// The data path's metrics, with series for each of the backend sets `sets`.
    pub(crate) fn new(sets: SetNames) -> Self {
        let bytes = Family::default();
        let tls_handshake_failures = Family::default();
        let tls_handshakes = Family::default();
        let upgrade_budget = Family::default();
        let m = Self {
            connections_accepted: Counter::default(),
            connections_handed_over: Counter::default(),
            connections_refused: Counter::default(),
            refused: Family::default(),
            admission: Default::default(),
            backend_handshake_failures: Family::default(),
            auth_refused: Family::default(),
            auth_failed_open: Counter::default(),
            connections_active: Family::default(),
            connections_closed: Family::default(),
            upgrade_responses: Family::default(),
            bytes_from_client: series(
                &bytes,
                DirectionLabel {
                    direction: "from_client",
                },
            ),
            bytes_from_backend: series(
                &bytes,
                DirectionLabel {
                    direction: "from_backend",
                },
            ),
            bytes,
            // 100 µs .. ~3 s
            tls_handshake_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            tls_handshake_errors: series(&tls_handshake_failures, ReasonLabel { reason: "error" }),
            tls_handshakes_full: series(&tls_handshakes, KindLabel { kind: "full" }),
            tls_handshakes_resumed: series(&tls_handshakes, KindLabel { kind: "resumed" }),
            tls_handshakes,
            tls_handshake_timeouts: series(
                &tls_handshake_failures,
                ReasonLabel { reason: "timeout" },
            ),
            tls_handshake_failures,
            // 200 µs .. ~6.5 s: TLS + request + backend connect + backend 101
            upgrade_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            backend_connect_retries: Counter::default(),
            http2_connections: Gauge::default(),
            http2_streams: Gauge::default(),
            io_uring_sockets: Counter::default(),
            breaker_trips: Family::default(),
            breaker_open: Family::default(),
            proxy_headers: Family::default(),
            proxy_header_errors: Family::default(),
            drain_closes: Family::default(),
            upgrade_budget_router: series(&upgrade_budget, ScopeLabel { scope: "router" }),
            upgrade_budget_pod: series(&upgrade_budget, ScopeLabel { scope: "pod" }),
            upgrade_budget,
            http: HttpMetrics::default(),
            sets: SetMetrics::new(sets),
        };
        m.zero_series();
        let _ = m.drain_closes();
        m
    }

    /// Every reason's series from the start, so a rate() or an alert on them has a
    /// baseline.
    fn zero_series(&self) {
        let m = self;
        for reason in [
            "pending_per_ip",
            "live_full",
            "live_per_ip",
            "tenant_cap",
            "rate_per_ip",
            "origin",
            "upgrade_budget",
            "pod_upgrade_budget",
        ] {
            let _ = m.refused.get_or_create(&ReasonLabel { reason });
        }
        for reason in ["accept", "upgrade", "connection", "protocol", "extension"] {
            let _ = m
                .backend_handshake_failures
                .get_or_create(&ReasonLabel { reason });
        }
        let service = ["service_refused", "service_unavailable"];
        for reason in Denied::ALL.map(Denied::as_str).into_iter().chain(service) {
            let _ = m.auth_refused.get_or_create(&ReasonLabel { reason });
        }
    }

    /// Adds the data path's series to `r`, in the order /metrics has always listed them.
    pub(crate) fn register(&self, r: &mut Registry) {
        self.register_connections(r);
        self.register_relays(r);
        self.register_backends(r);
        self.http.register(r);
        self.sets.register(r);
    }

    /// Client connections: accepted, refused, and pending.
    fn register_connections(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "connections_accepted",
            "Client TCP connections accepted",
            m.connections_accepted.clone(),
        );
        r.register(
            "connections_handed_over",
            "Client connections accepted by one I/O thread and handed to a less loaded one (the kernel's SO_REUSEPORT hash is blind to load)",
            m.connections_handed_over.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections and requests refused, by reason: pending_per_ip (closed at accept, or an idle HTTP/2 connection re-entering the pool), live_full (503), live_per_ip, tenant_cap, rate_per_ip (429), origin (403)",
            m.refused.clone(),
        );
        r.register(
            "pending_connections",
            "Pending connections: reading a PROXY protocol header, in TLS, reading their request head, or HTTP/2 connections with no live WebSocket stream",
            m.admission.pending.clone(),
        );
        r.register(
            "pending_bytes",
            "Bytes charged to pending connections (budget: --max-pending-bytes)",
            m.admission.pending_bytes.clone(),
        );
        r.register(
            "pending_evicted",
            "Pending connections dropped to make room (pool or byte budget full): the oldest of the address holding the most",
            m.admission.evicted.clone(),
        );
    }

    /// Upgrades and their relays, and client TLS handshakes.
    fn register_relays(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "backend_handshake_failures",
            "Backend 101s refused as a 502, by what was wrong (accept, upgrade, connection, protocol, extension)",
            m.backend_handshake_failures.clone(),
        );
        r.register(
            "auth_refused",
            "Requests turned away at the door by --auth jwt, by reason (--auth jwt: missing, malformed, algorithm, unknown_key, no_kid, signature, expired, not_yet_valid, issuer, audience: 401; no_tenant_claim, wrong_tenant: 403; --auth forward: service_refused, its 401 or 403; service_unavailable, 503)",
            m.auth_refused.clone(),
        );
        r.register(
            "auth_failed_open",
            "Requests let in without an answer because the authorization service could not give one (--auth-failure allow)",
            m.auth_failed_open.clone(),
        );
        r.register(
            "connections_active",
            "Upgraded connections being relayed, by backend ordinal",
            m.connections_active.clone(),
        );
        r.register(
            "connections_closed",
            "Relayed connections that ended, by backend ordinal, close reason and client protocol (h1, h2)",
            m.connections_closed.clone(),
        );
        r.register(
            "upgrade_responses",
            "Answers to requests on the WebSocket listener, by HTTP status",
            m.upgrade_responses.clone(),
        );
        r.register("relayed_bytes", "Bytes relayed, by direction (from_client, from_backend), counted when a connection ends", m.bytes.clone());
        r.register(
            "io_uring_sockets",
            "WebSockets relayed over an I/O thread's io_uring (--io-uring)",
            m.io_uring_sockets.clone(),
        );
        r.register(
            "tls_handshake_seconds",
            "Time to complete a client TLS handshake",
            m.tls_handshake_seconds.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed (error) or took too long (timeout)",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "tls_handshakes",
            "Client TLS handshakes completed, by kind: full, or resumed (a session ticket opened; with --tls-ticket-keys, one any replica issued)",
            m.tls_handshakes.clone(),
        );
    }

    /// Backends (retries, breakers), HTTP/2, the read budget, PROXY protocol headers,
    /// and the time to an upgrade.
    fn register_backends(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "backend_connect_retries",
            "Backend connections refused or reset before any answer, tried again within --backend-timeout",
            m.backend_connect_retries.clone(),
        );
        r.register(
            "http2_connections",
            "Client HTTP/2 connections open",
            m.http2_connections.clone(),
        );
        r.register(
            "http2_streams",
            "WebSockets relayed as HTTP/2 streams (RFC 8441)",
            m.http2_streams.clone(),
        );
        r.register(
            "backend_circuit_trips",
            "Times a backend's circuit breaker opened (it kept failing), by ordinal",
            m.breaker_trips.clone(),
        );
        r.register(
            "backend_circuit_open",
            "1 while a backend's circuit breaker is open or probing, by ordinal",
            m.breaker_open.clone(),
        );
        r.register(
            "relay_held_over_bytes",
            "Bytes relays hold above 16 KiB per direction for sinks slow to take them; past 32 MiB relays read 16 KiB at a time, not 64",
            HeldOver(&crate::data::relay::bulk::BUDGET),
        );
        r.register(
            "proxy_protocol_headers",
            "PROXY protocol headers read (--proxy-protocol on), by what they named: client, or local (the balancer's own health check)",
            m.proxy_headers.clone(),
        );
        r.register(
            "proxy_protocol_errors",
            "Connections closed for their PROXY protocol header, by reason (untrusted source, timeout, truncated, signature, version, command, family, length, too_long, v1_syntax, io)",
            m.proxy_header_errors.clone(),
        );
        r.register(
            "upgrade_budget_per_second",
            "New WebSockets per second the router lets through (--max-upgrades-per-second: scope router; --max-upgrades-per-pod-per-second: scope pod); 0: no budget. Live sockets over it is how long a full reconnect takes at the least",
            m.upgrade_budget.clone(),
        );
        r.register(
            "drain_closes",
            "Sockets (and streaming answers, for pod_gone and rerouted) the router closed itself, counted as each one's turn came (the drain's hard end is not counted), each at its own moment so clients come back spread out, by reason: shutdown (1001, spread over --drain-grace), pod_gone (1012, its pod left the table; spread over --drain-grace), rerouted (1012, --reroute-drain)",
            m.drain_closes.clone(),
        );
        r.register(
            "upgrade_seconds",
            "Time from accepting a connection to answering its upgrade (101, or 200 on HTTP/2)",
            m.upgrade_seconds.clone(),
        );
    }

    /// Shows a breaker opening or closing.
    pub(crate) fn breaker(
        &self,
        set: &'static str,
        ordinal: u32,
        t: crate::data::upstream::breaker::Transition,
    ) {
        let label = OrdinalLabel { ordinal, set };
        match t {
            crate::data::upstream::breaker::Transition::Opened => {
                self.breaker_trips.get_or_create(&label).inc();
                self.breaker_open.get_or_create(&label).set(1);
            }
            crate::data::upstream::breaker::Transition::Closed => {
                self.breaker_open.get_or_create(&label).set(0);
            }
            crate::data::upstream::breaker::Transition::None => {}
        }
    }

    /// Counts a refused connection.
    pub(crate) fn refused(&self, why: Refusal) {
        self.connections_refused.inc();
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .inc();
    }

    /// Counts a PROXY protocol header read (`Ok`: what it named) or refused.
    pub(crate) fn proxy_header(&self, outcome: Result<&'static str, &'static str>) {
        let (family, reason) = match outcome {
            Ok(kind) => (&self.proxy_headers, kind),
            Err(why) => (&self.proxy_header_errors, why),
        };
        family.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a request turned away at the door.
    pub(crate) fn auth_refused(&self, reason: &'static str) {
        self.auth_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Handles on the drain scheduler's series, one per reason.
    pub(crate) fn drain_closes(&self) -> DrainCloses {
        let of = |why: DrainReason| {
            series(
                &self.drain_closes,
                ReasonLabel {
                    reason: why.as_str(),
                },
            )
        };
        DrainCloses {
            shutdown: of(DrainReason::Shutdown),
            pod_gone: of(DrainReason::PodGone),
            rerouted: of(DrainReason::Rerouted),
        }
    }

    /// Counts a backend 101 refused as a 502.
    pub(crate) fn bad_backend_handshake(&self, reason: &'static str) {
        self.backend_handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// A handle on one labelled series of `family`, taken once so updating it costs an atomic
/// add, not a family lookup.
fn series<L, M>(family: &Family<L, M>, label: L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
{
    family.get_or_create(&label).clone()
}

/// The read budget's count, read when /metrics is scraped (the relays keep it in one
/// atomic, not in a metric of their own).
#[derive(Debug)]
struct HeldOver(&'static crate::data::relay::bulk::ReadBudget);

impl EncodeMetric for HeldOver {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.held_over() as i64))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}
