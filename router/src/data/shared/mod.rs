//! Owns: what every connection reads, in one place: the settings (`limits`), the data
//! path's counters (`metrics`, `http_metrics`), the `Shared` handle (table, pools,
//! breaker, keep-alive pool, TLS slot) and each I/O thread's coarse deadlines (`coarse`).
//! May not touch: connections themselves; it is wired by `daemon` and read by `http`/`edge`.

pub(crate) mod coarse;
pub(crate) mod http_metrics;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod set_metrics;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hyper::server::conn::http1;
use wsrouter::{PathPrefix, RoutingTable};

use crate::data::admission::auth::forward::ForwardAuth;
use crate::data::admission::auth::Auth;
use crate::data::admission::budget::UpgradeBudget;
use crate::data::admission::policy::{PolicyConfig, RateLimiter};
use crate::data::admission::pools::Admission;
use crate::data::relay::drain::Drains;
use crate::data::shared::limits::Limits;
use crate::data::shared::metrics::Metrics;
use crate::data::tls::config::TlsSlot;
use crate::data::upstream::breaker::Breakers;
use crate::data::upstream::pool::Pool;
use crate::data::upstream::tls::BackendTls;
use crate::state::heartbeat::Heartbeats;
use crate::state::lifecycle::Lifecycle;
use crate::state::tenants::LiveTenants;
use crate::state::thread_load::ThreadLoad;

/// State every connection reads; owned by the router, shared by reference count.
pub struct Shared {
    /// The routing table. The data path only loads it; the control plane only stores it.
    /// Empty until the replica count is known.
    pub(crate) table: Arc<ArcSwapOption<RoutingTable>>,
    /// Tenants with live sockets here.
    pub(crate) live: Arc<LiveTenants>,
    /// When the router closes live sockets itself (shutdown, a pod leaving the table,
    /// `--reroute-drain`), spread out.
    pub(crate) drains: Arc<Drains>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) prefix: PathPrefix,
    pub(crate) limits: Limits,
    /// The TLS config new handshakes use; the certificate watcher swaps it.
    pub(crate) tls_config: Option<TlsSlot>,
    /// How client connections speak HTTP/1.1 (limits, timeouts).
    pub(crate) http: http1::Builder,
    /// How they speak HTTP/2 (streams, windows, header list size, reset limits).
    pub(crate) http2: h2::server::Builder,
    pub(crate) lifecycle: Lifecycle,
    /// The pending and live pools.
    pub(crate) admission: Arc<Admission>,
    /// Extra plain-HTTP answers on the WebSocket listener (`wsrouter dev`'s page);
    /// `None` in `serve`, where anything but an upgrade path is 404.
    pub(crate) pages: Option<Arc<dyn Pages>>,
    /// A circuit breaker per backend address.
    pub(crate) breakers: Arc<Breakers>,
    /// Keep-alive connections to the pods, for plain requests (each I/O thread its own).
    pub(crate) pool: Pool,
    /// Who may open a socket (Origin, tenant source, caps), and the rate per source.
    pub(crate) policy: PolicyConfig,
    pub(crate) rate: RateLimiter,
    /// New upgrades per second, in all and per pod (`--max-upgrades-per-second`...).
    pub(crate) budget: UpgradeBudget,
    /// Each I/O thread's last turn of its event loop (`/healthz` reads them).
    pub(crate) heartbeats: Arc<Heartbeats>,
    /// Identity at the door (`--auth jwt`); `None` lets everyone in, as before.
    pub(crate) auth: Option<Arc<Auth>>,
    /// External authorization (`--auth forward:URL`); `None` asks no service.
    pub(crate) forward_auth: Option<Arc<ForwardAuth>>,
    /// TLS to the pods (`--backend-tls`), for sockets and the keep-alive pool alike.
    pub(crate) backend_tls: Option<Arc<BackendTls>>,
    /// Live connections per I/O thread, which the accept loops balance.
    pub(crate) thread_load: Arc<ThreadLoad>,
}

/// Plain GETs the WebSocket listener answers before routing, when given some. A hook, so
/// the data path knows nothing of what is served (the dev page lives with the `dev`
/// command).
pub trait Pages: Send + Sync + std::fmt::Debug {
    /// The answer to a request (either HTTP version), or `None` to route it as usual.
    fn answer(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        shared: &Shared,
    ) -> Option<http::Response<http_body_util::Full<bytes::Bytes>>>;
}
