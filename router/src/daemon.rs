//! The composition root: builds the state the planes share, starts the control loop,
//! the data path's listeners and the admin listener, and runs the drain. The planes do
//! not start one another; only this module knows them all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::data::shared::coarse::CoarseTimer;
use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wsrouter::RoutingTable;

use crate::admin::{self, metrics::AdminMetrics};
use crate::config::{AuthSetup, RouterConfig};
use crate::control::{Control, ControlHandle, ControlParts, ControlStats, Slots};
use crate::data::admission::auth::forward::ForwardAuth;
use crate::data::admission::auth::Auth;
use crate::data::admission::budget::UpgradeBudget;
use crate::data::admission::policy::{PolicyConfig, RateLimiter};
use crate::data::admission::pools::Admission;
pub(crate) use crate::data::edge::listen::ServerError;
use crate::data::edge::listen::{IoThreads, Listeners};
use crate::data::relay::drain::Drains;
use crate::data::shared::limits::Limits;
use crate::data::shared::metrics::Metrics;
use crate::data::shared::Shared;
use crate::data::upstream::breaker::Breakers;
use crate::data::upstream::pool::Pool;
use crate::state::heartbeat::Heartbeats;
use crate::state::lifecycle::{Changes, Lifecycle};
use crate::state::tenants::LiveTenants;
use crate::state::thread_load::ThreadLoad;

/// A running router.
pub struct RouterHandle {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    control: ControlHandle,
    /// Cancelled once the router has drained and stopped.
    done: CancellationToken,
}

impl RouterHandle {
    /// The address the WebSocket listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The table now in force, if one is loaded.
    pub fn current_table(&self) -> Option<Arc<RoutingTable>> {
        self.shared.table.load_full()
    }

    /// Where watchers send what they see; the control loop builds and publishes tables.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Tenants with live sockets on this router.
    pub fn live(&self) -> Arc<LiveTenants> {
        self.shared.live.clone()
    }

    /// Client connections and relays still running.
    pub fn live_tasks(&self) -> usize {
        self.shared.lifecycle.tasks.len()
    }

    /// Connections refused by a cap (per source, or the live pool full).
    pub fn refused_connections(&self) -> u64 {
        self.shared.metrics.connections_refused.get()
    }

    /// Woken on every change of the router's state (readiness, listener, pools, relays,
    /// certificate, pod readiness): wait on it instead of polling.
    pub fn changes(&self) -> Changes {
        self.shared.lifecycle.changes.clone()
    }

    /// Whether the listeners still accept (false once the drain has closed them).
    pub fn is_listening(&self) -> bool {
        self.shared.lifecycle.is_listening()
    }

    /// The pending and live pools, to see how full they are.
    pub fn admission(&self) -> Arc<Admission> {
        self.shared.admission.clone()
    }

    /// Begins the drain (what SIGTERM does): stop accepting, fail readiness, give live
    /// sockets the grace period, then close them with 1001.
    pub fn shutdown(&self) {
        // Readiness fails at once, not when the supervisor gets to it, so a probe right
        // after SIGTERM already sees 503.
        self.shared.lifecycle.set_draining();
        self.shared.lifecycle.stop_accepting.cancel();
    }

    /// Skips what is left of the grace period (a second SIGTERM).
    pub fn close_now(&self) {
        self.shared.lifecycle.set_draining();
        self.shared.lifecycle.stop_accepting.cancel();
        self.shared.lifecycle.close_tunnels.cancel();
    }

    /// Waits until the router has drained and stopped.
    pub async fn drained(&self) {
        self.done.cancelled().await
    }
}

/// Follows the JWKS from the start (`--auth jwt`), so no rotation is missed.
fn follow_jwks(auth: Option<AuthSetup>, control: &ControlHandle) -> Result<(), ServerError> {
    let Some(a) = auth else { return Ok(()) };
    let path = a.jwks.clone();
    crate::control::watch::jwks::spawn(a.jwks, a.auth, control).map_err(|e| {
        ServerError::Watch {
            path,
            source: Box::new(e),
        }
    })?;
    Ok(())
}

/// Binds the listeners and starts serving: the control loop first (so a table may be
/// ready before the first connection), then the admin listener, then the data path.
pub async fn start(config: RouterConfig) -> Result<RouterHandle, ServerError> {
    // A client that connects and sends nothing waits in the kernel, not in a slot.
    let defer = config.limits.handshake_timeout.max(Duration::from_secs(1));
    let threads = IoThreads {
        count: config.io_threads,
        io_uring: config.limits.io_uring,
    };
    let listeners = Listeners::bind(config.listen, threads, defer)?;
    let addr = listeners.local_addr();
    let admin_listeners = match config.admin_listen {
        Some(a) => bind_admin(a).await?,
        None => Vec::new(),
    };
    let admin_addr = admin_listeners.first().and_then(|l| l.local_addr().ok());
    let drain_grace = config.drain_grace;
    let admin = admin::AdminConfig {
        token: config.admin_token.clone(),
    };
    let auth = config.auth.clone();
    let Planes {
        shared,
        control,
        metrics,
    } = build(config);
    follow_jwks(auth, &control)?;

    let admin_stop = CancellationToken::new();
    let admin_tasks = admin_listeners
        .into_iter()
        .map(|l| {
            let (shared, metrics, admin) = (shared.clone(), metrics.clone(), admin.clone());
            tokio::spawn(admin::serve(l, shared, metrics, admin, admin_stop.clone()))
        })
        .collect();
    let done = CancellationToken::new();
    let accepting = listeners.serve(&shared, &done)?;
    shared.lifecycle.set_listening();
    tracing::info!(
        listen.addr = %addr,
        admin.addr = %admin_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        tls = shared.tls_config.is_some(),
        "listening"
    );
    let drained = Drain {
        shared: shared.clone(),
        accepting,
        grace: drain_grace,
        admin_stop,
        admin_tasks,
        done: done.clone(),
    };
    tokio::spawn(drained.run());

    Ok(RouterHandle {
        addr,
        admin_addr,
        shared,
        control,
        done,
    })
}

/// The admin listener on `addr`; and when that is one interface's address (a pod's
/// IP), on loopback at the same port too, so `kubectl port-forward` (which connects to
/// the pod's loopback) still reaches it while nothing else on the host's other
/// interfaces can.
async fn bind_admin(addr: SocketAddr) -> Result<Vec<TcpListener>, ServerError> {
    let first = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let mut out = vec![first];
    let ip = addr.ip();
    if !ip.is_loopback() && !ip.is_unspecified() {
        let port = out[0].local_addr().map_or(addr.port(), |a| a.port());
        let local = SocketAddr::new(
            if ip.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            port,
        );
        match TcpListener::bind(local).await {
            Ok(l) => out.push(l),
            Err(e) => {
                tracing::warn!(admin.addr = %local, error = %e, "admin listener not on loopback too: kubectl port-forward will not reach it")
            }
        }
    }
    Ok(out)
}

/// What [`build`] wires: the data path's state, the control loop's handle, the registry.
struct Planes {
    shared: Arc<Shared>,
    control: ControlHandle,
    metrics: Arc<AdminMetrics>,
}

/// The state the planes share, and the control loop (started) that owns the table.
/// Every piece is made once here and handed to whoever writes or reads it.
fn build(config: RouterConfig) -> Planes {
    let http = http1_builder(&config.limits);
    let stats = Arc::new(ControlStats::default());
    // One set of waiters for every change, whoever makes it.
    let lifecycle = Lifecycle::with_changes(stats.changes.clone());
    let http2 = crate::data::http::h2::builder(config.limits.max_header_bytes);
    let table = Arc::new(ArcSwapOption::<RoutingTable>::empty());
    let live = Arc::new(LiveTenants::default());
    let tls_config = config.tls.map(|c| Arc::new(ArcSwap::new(c)));
    let set_names = crate::state::labels::set_names(&config.routing.set_names());
    let data_metrics = Arc::new(Metrics::new(set_names));
    let metrics = Arc::new(AdminMetrics::new(&data_metrics, &stats));
    let slots = Slots {
        stopping: lifecycle.stop_accepting.clone(),
        tls: tls_config.clone(),
    };
    let handle = control_loop(config.routing, &table, &live, &lifecycle, stats, slots);
    let drains = drains(
        (config.drain_grace, config.reroute),
        &table,
        &handle,
        &lifecycle,
        &data_metrics,
    );
    let breakers = breakers(config.limits.breaker, &table, &handle);
    let pool = keepalive_pool(&config.limits, &config.backend_tls, &data_metrics);
    let (rate, budget) = rates(&config.limits.policy, &data_metrics);
    let (auth, forward_auth) = doors(config.auth, config.forward_auth, &data_metrics);
    let shared = Arc::new(Shared {
        table,
        live,
        drains,
        prefix: config.path_prefix,
        breakers,
        pool,
        pages: config.pages.clone(),
        budget,
        policy: config.limits.policy.clone(),
        rate,
        admission: Admission::new(
            config.limits.admission(),
            data_metrics.admission.clone(),
            lifecycle.changes.clone(),
        ),
        metrics: data_metrics,
        heartbeats: Arc::new(Heartbeats::new(config.io_threads)),
        thread_load: Arc::new(ThreadLoad::new(config.io_threads)),
        auth,
        forward_auth,
        backend_tls: config.backend_tls.clone(),
        limits: config.limits,
        tls_config,
        http,
        http2,
        lifecycle,
    });
    Planes {
        shared,
        control: handle,
        metrics,
    }
}

/// The rates at the door: new sockets per source, and upgrades in all and per pod.
fn rates(policy: &PolicyConfig, metrics: &Metrics) -> (RateLimiter, UpgradeBudget) {
    let gauges = [&metrics.upgrade_budget_router, &metrics.upgrade_budget_pod];
    (
        RateLimiter::new(policy.rate_per_ip, policy.burst_per_ip),
        UpgradeBudget::new(policy.budget, gauges),
    )
}

/// When the router closes live sockets itself (shutdown, a pod leaving, a reroute); its
/// waiting sockets hear each table swap and the drain's hard end through it.
fn drains(
    (grace, reroute): (Duration, Option<crate::RerouteConfig>),
    table: &Arc<ArcSwapOption<RoutingTable>>,
    control: &ControlHandle,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
) -> Arc<Drains> {
    let closes = metrics.drain_closes();
    let drains = Arc::new(Drains::new(grace, reroute, table.clone(), closes));
    tokio::spawn(
        drains
            .clone()
            .relay_events(control.changes(), lifecycle.close_tunnels.clone()),
    );
    drains
}

/// The circuit breakers per pod address; each table swap forgets the addresses it no
/// longer routes to.
fn breakers(
    config: crate::BreakerConfig,
    table: &Arc<ArcSwapOption<RoutingTable>>,
    control: &ControlHandle,
) -> Arc<Breakers> {
    let breakers = Breakers::new(config);
    tokio::spawn(breakers.clone().follow(control.changes(), table.clone()));
    breakers
}

/// The keep-alive pool to the pods, for plain requests.
fn keepalive_pool(
    limits: &Limits,
    tls: &Option<Arc<crate::BackendTls>>,
    metrics: &Metrics,
) -> Pool {
    Pool::new(limits.http.pool, metrics.http.pool.clone(), tls.clone())
}

/// Starts the control loop, the one owner of the table, and hands back its handle.
fn control_loop(
    routing: crate::control::RoutingConfig,
    table: &Arc<ArcSwapOption<RoutingTable>>,
    live: &Arc<LiveTenants>,
    lifecycle: &Lifecycle,
    stats: Arc<ControlStats>,
    slots: Slots,
) -> ControlHandle {
    let (control, handle, control_rx) = Control::new(ControlParts {
        table: table.clone(),
        routing,
        live: live.clone(),
        lifecycle: lifecycle.clone(),
        stats,
        slots,
    });
    tokio::spawn(control.run(control_rx));
    handle
}

/// The doors (`--auth jwt`, `--auth forward:URL`), as the data path holds them.
fn doors(
    jwt: Option<AuthSetup>,
    forward: Option<crate::data::admission::auth::ForwardSettings>,
    metrics: &Metrics,
) -> (Option<Arc<Auth>>, Option<Arc<ForwardAuth>>) {
    let failed_open = metrics.auth_failed_open.clone();
    let forward = forward.map(|s| Arc::new(ForwardAuth::new(s, failed_open)));
    (jwt.map(|a| a.auth), forward)
}

/// How client connections speak HTTP/1.1: the request head's timeout and limits.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut http = http1::Builder::new();
    // The head's timeout on the I/O threads' coarse deadlines: one is set per idle
    // spell of every keep-alive connection, and nearly all are dropped unfired.
    http.timer(CoarseTimer)
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    http
}

/// The drain, from SIGTERM (or [`RouterHandle::shutdown`]) to "drained".
struct Drain {
    shared: Arc<Shared>,
    accepting: Vec<oneshot::Receiver<()>>,
    grace: Duration,
    admin_stop: CancellationToken,
    admin_tasks: Vec<JoinHandle<()>>,
    done: CancellationToken,
}

impl Drain {
    /// Stop accepting, fail readiness, give live sockets the grace period, close the rest
    /// with 1001, bounded by the close timeout; the admin listener stays up until the end.
    async fn run(self) {
        let lc = &self.shared.lifecycle;
        lc.stop_accepting.cancelled().await;
        lc.set_draining();
        for a in self.accepting {
            let _ = a.await;
        }
        lc.set_listener_closed();
        lc.tasks.close();
        tracing::info!(live = lc.tasks.len(), grace = ?self.grace, "draining: listener closed, live sockets close spread over the grace period");
        // Each socket at its own moment within the grace, not all at its end: the
        // clients come back to the other replicas as a trickle, not a wave.
        self.shared.drains.begin_shutdown();
        tokio::select! {
            _ = lc.tasks.wait() => {}
            _ = tokio::time::sleep(self.grace) => {}
            _ = lc.close_tunnels.cancelled() => {}
        }
        if !lc.tasks.is_empty() {
            tracing::info!(
                live = lc.tasks.len(),
                "grace period over: closing the live sockets left with 1001"
            );
        }
        lc.close_tunnels.cancel();
        // Every relay ends within close_timeout of its close; the margin covers the rest.
        let bound = self.shared.limits.close_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, lc.tasks.wait()).await.is_err() {
            tracing::warn!(
                live = lc.tasks.len(),
                "connections still open after the close timeout; exiting anyway"
            );
        }
        self.admin_stop.cancel();
        for t in self.admin_tasks {
            let _ = t.await;
        }
        tracing::info!("drained");
        self.done.cancel();
    }
}
