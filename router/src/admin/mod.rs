//! The admin listener: plain HTTP on its own port, for probes and operators.
//!
//! - `/healthz`: 200 while every I/O thread's event loop turns; 503 naming the thread
//!   once one has not turned for `--stall-threshold`. `/readyz`: 200 once a table is
//!   loaded and the listener bound, 503 while draining.
//! - `/metrics`: Prometheus metrics (OpenMetrics text).
//! - `/route/{namespace}`: how a tenant routes now, and why.
//! - `/table`: the whole routing table, where it came from, and the live tenants.
//!
//! - [`metrics`]: the registry every component registers into, encoded for `/metrics`.
//! - [`views`]: the JSON this listener serves and the commands read, typed both ways.

pub(crate) mod metrics;
pub(crate) mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsrouter::split::split_bucket;
use wsrouter::{ordinal_for, validate_namespace, Backend, Fingerprint, Hint, Hints, Split, STABLE};

use self::metrics::{AdminMetrics, WorkerLabel, CONTENT_TYPE};
use self::views::{
    BackendView, ErrorView, FingerprintView, OverrideView, RouteView, SetView, SplitView,
    TableView, UpgradeBudgetView,
};
use crate::data::admission::pools::{Admission, AdmissionConfig, AdmissionStats};
use crate::data::edge::accept::AcceptErrors;
use crate::data::shared::Shared;
use crate::data::upstream::breaker::BreakerState;

/// Most admin connections at once. Probes and a scraper need a handful; when full the
/// oldest of the busiest address is dropped, so a probe still gets through while
/// something holds many open.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Time to send a request head, and the longest an idle keep-alive connection stays.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an admin connection lives, whatever it does.
pub(crate) const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The admin listener's own settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdminConfig {
    /// Asked for (`Authorization: Bearer`) on everything but the probes and `/metrics`.
    pub token: Option<AdminToken>,
}

/// `--admin-token`: a secret, so it is never printed (`Debug` shows its length only).
#[derive(Clone)]
pub struct AdminToken(pub Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({} bytes)", self.0.len())
    }
}

/// Serves until `stop` is cancelled. It stays up while the router drains, so probes see
/// `/readyz` fail rather than a refused connection.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    metrics: Arc<AdminMetrics>,
    config: AdminConfig,
    stop: CancellationToken,
) {
    let config = Arc::new(config);
    let conns = tokio_util::task::TaskTracker::new();
    // The admin listener's own pool: the pending pool's rules (a cap; when full, the
    // busiest address's oldest is dropped), with nothing shared with the data path.
    let pool = Admission::new(
        AdmissionConfig {
            max_pending: MAX_ADMIN_CONNECTIONS,
            max_pending_bytes: usize::MAX,
            // Probes come from the node, scrapes from one pod: a per-source cap would
            // only let a crowd from one address lock them out.
            max_pending_per_ip: usize::MAX,
            max_live: 1,
            max_live_per_ip: 0,
        },
        AdmissionStats {
            evicted: metrics.evicted.clone(),
            ..AdmissionStats::default()
        },
        Default::default(),
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(8192);
    let mut errors = AcceptErrors::new("admin");
    while let Some((tcp, peer)) = errors.next(&listener, &stop).await {
        let Ok(slot) = pool.admit_pending(peer.ip()) else {
            continue;
        };
        let (shared, metrics, config) = (shared.clone(), metrics.clone(), config.clone());
        let stop = stop.clone();
        let http = http.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, metrics, config) = (shared.clone(), metrics.clone(), config.clone());
                async move { Ok::<_, Infallible>(route(&req, &shared, &metrics, &config)) }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), svc);
            let evicted = slot.evicted();
            tokio::select! {
                _ = tokio::time::timeout(ADMIN_CONNECTION_LIFETIME, conn) => {}
                _ = evicted.cancelled() => {}
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
    conns.close();
    conns.wait().await;
}

/// Live while every I/O thread's event loop turns: a process that runs but cannot
/// serve (a thread wedged) is not healthy.
fn healthz(shared: &Shared) -> Response<Full<Bytes>> {
    let threshold = shared.limits.stall_threshold;
    let stalled: Vec<String> = shared
        .heartbeats
        .ages()
        .filter(|(_, age)| *age >= threshold)
        .map(|(i, age)| {
            format!(
                "I/O thread {i} has not turned for {:.1}s",
                age.as_secs_f64()
            )
        })
        .collect();
    if stalled.is_empty() {
        return text(StatusCode::OK, "ok\n");
    }
    tracing::error!(stalled = %stalled.join("; "), "health check failing: an I/O thread is stalled");
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{}\n", stalled.join("\n")),
    )
}

/// Whether `req` carries the admin token (or none is asked). Compared in constant time:
/// how long a wrong guess takes says nothing about how much of it was right.
fn authorized(req: &Request<Incoming>, config: &AdminConfig) -> bool {
    let Some(token) = &config.token else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    constant_time_eq(given, &token.0)
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn route(
    req: &Request<Incoming>,
    shared: &Shared,
    metrics: &AdminMetrics,
    config: &AdminConfig,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    // Probes and scrapes need no token; what names tenants and pods does.
    if !matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics") && !authorized(req, config)
    {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "admin token required (Authorization: Bearer)\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"wsrouter-admin\""),
        );
        return r;
    }
    let lc = &shared.lifecycle;
    match req.uri().path() {
        "/healthz" => healthz(shared),
        "/readyz" if lc.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if lc.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => scrape(shared, metrics),
        "/table" => table_json(shared),
        path => match path.strip_prefix("/route/") {
            Some(ns) => route_json(shared, ns, asked(req.uri().query())),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// `/metrics`: the gauges read from shared state are set now, then everything encoded.
fn scrape(shared: &Shared, metrics: &AdminMetrics) -> Response<Full<Bytes>> {
    metrics
        .draining
        .set(i64::from(shared.lifecycle.is_draining()));
    let threshold = shared.limits.stall_threshold;
    for (worker, age) in shared.heartbeats.ages() {
        let label = WorkerLabel {
            worker: worker as u32,
        };
        let stalled = i64::from(age >= threshold);
        metrics.worker_stalled.get_or_create(&label).set(stalled);
    }
    for (worker, conns) in shared.thread_load.counts() {
        let label = WorkerLabel {
            worker: worker as u32,
        };
        let conns = i64::try_from(conns).unwrap_or(i64::MAX);
        metrics.worker_connections.get_or_create(&label).set(conns);
    }
    let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

fn no_table() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &ErrorView {
            error: "no routing table loaded yet".to_owned(),
        },
    )
}

/// `/route/{ns}`'s answer, for whoever serves it (the dev page too).
pub(crate) fn route_response(shared: &Shared, ns: &str) -> Response<Full<Bytes>> {
    route_json(shared, ns, Hints::default())
}

/// What `/route/{ns}?header=always&cookie=never` asks to be routed as: a request with
/// that canary header and cookie.
fn asked(query: Option<&str>) -> Hints {
    let hint = |name| {
        query
            .and_then(|q| wsrouter::query_param(q, name).ok().flatten())
            .and_then(Hint::parse)
    };
    Hints {
        header: hint("header"),
        cookie: hint("cookie"),
    }
}

/// `/table`'s answer, for whoever serves it (the dev page too).
pub(crate) fn table_response(shared: &Shared) -> Response<Full<Bytes>> {
    table_json(shared)
}

fn route_json(shared: &Shared, ns: &str, hints: Hints) -> Response<Full<Bytes>> {
    if let Err(e) = validate_namespace(ns) {
        return json_response(
            StatusCode::BAD_REQUEST,
            &ErrorView {
                error: e.to_string(),
            },
        );
    }
    let Some(table) = shared.table.load_full() else {
        return no_table();
    };
    let replicas = table.replicas().get();
    let route = table.route_for(ns, hints);
    let override_ = table.overrides().get(ns).map(|target| {
        let active = target < replicas;
        OverrideView {
            target,
            active,
            reason: (!active).then(|| {
                format!("target {target} is beyond the {replicas} replicas; the tenant follows its hash until the StatefulSet grows")
            }),
        }
    });
    let set_name = |id| table.set(id).name().to_owned();
    let view = RouteView {
        namespace: ns.to_owned(),
        set: set_name(route.set),
        set_reason: route.why.as_str().to_owned(),
        split_bucket: split_bucket(ns),
        unavailable_set: route.unavailable_set.map(set_name),
        ordinal: route.ordinal,
        backend: backend_view(shared, route.ordinal, route.backend),
        source: route.source.as_str().to_owned(),
        hash_ordinal: ordinal_for(ns, table.replicas()),
        override_,
        live_sockets: u64::from(shared.live.count(ns)),
        max_connections: shared.policy.tenant_cap(&table, ns),
        table_version: table.version(),
        table_source: table.source().to_string(),
        fingerprint: fingerprint_view(table.fingerprint()),
    };
    json_response(StatusCode::OK, &view)
}

fn split_view(split: &Split) -> SplitView {
    let canary = split.canary();
    SplitView {
        canary_set: canary.map(|c| c.set.to_string()),
        canary_weight_percent: canary.map_or(0.0, |c| f64::from(c.weight) / 100.0),
        header: split.header().to_owned(),
        cookie: split.cookie().to_owned(),
        pinned: split
            .pinned()
            .into_iter()
            .map(|(ns, set)| (ns.to_owned(), set.to_owned()))
            .collect(),
    }
}

fn table_json(shared: &Shared) -> Response<Full<Bytes>> {
    let Some(table) = shared.table.load_full() else {
        return no_table();
    };
    let owned = |m: Vec<(&str, u32)>| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let view = TableView {
        version: table.version(),
        source: table.source().to_string(),
        replicas: table.replicas().get(),
        fingerprint: fingerprint_view(table.fingerprint()),
        backends: (0..)
            .zip(table.backends())
            .map(|(i, b)| backend_view(shared, i, b))
            .collect(),
        overrides: owned(table.overrides().sorted()),
        inactive_overrides: owned(table.overrides().inactive(table.replicas())),
        tenant_max_connections: table
            .limits()
            .sorted()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        live_tenants: shared
            .live
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.into_string(), u64::from(v)))
            .collect(),
        upgrade_budget: UpgradeBudgetView {
            per_second: shared.policy.budget.per_second,
            per_pod_per_second: shared.policy.budget.per_pod_per_second,
        },
        stable_set: table.set(STABLE).name().to_owned(),
        sets: table.sets()[1..]
            .iter()
            .map(|set| SetView {
                name: set.name().to_owned(),
                replicas: set.replicas(),
                backends: (0..)
                    .zip(set.backends())
                    .map(|(i, b)| backend_view(shared, i, b))
                    .collect(),
            })
            .collect(),
        split: split_view(table.split()),
    };
    json_response(StatusCode::OK, &view)
}

pub(crate) fn fingerprint_view(f: Fingerprint) -> FingerprintView {
    FingerprintView {
        config: f.config_hex(),
        membership: f.membership_hex(),
    }
}

fn backend_view(shared: &Shared, ordinal: u32, b: &Backend) -> BackendView {
    let (pod, uid, state) = match b {
        Backend::Addr(_) => (None, None, "address"),
        Backend::Pod(m) => (
            Some(m.pod.clone()),
            Some(m.uid.clone()),
            match (m.serving, m.terminating) {
                (_, true) => "terminating",
                (true, false) => "serving",
                (false, false) => "not_serving",
            },
        ),
        Backend::Unknown => (None, None, "unknown"),
    };
    let address = b.address();
    let circuit = address
        .as_deref()
        .map_or(BreakerState::Closed, |a| shared.breakers.state(a));
    BackendView {
        ordinal,
        address,
        pod,
        uid,
        state: state.to_owned(),
        circuit: circuit.as_str().to_owned(),
    }
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    // Serialising these plain structs cannot fail; an empty object would be the answer.
    let mut body = serde_json::to_string(v).unwrap_or_else(|_| "{}".to_owned());
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
