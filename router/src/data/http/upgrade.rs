//! One client request: route it, forward the upgrade to the chosen backend, answer, and
//! hand both upgraded sockets to the relay.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wsrouter::{
    AmbiguousPath, Backend, Fingerprint, NamespaceError, PathError, PathPrefix, RouteSource,
    TenantFrom,
};

use crate::data::admission::forwarded::{underscore_header, Client, Underscores};
use crate::data::admission::policy::PolicyConfig;
use crate::data::admission::pools::{ConnStreams, LiveSlot, PendingSlot, Refusal, StreamGuard};
use crate::data::relay::pump::{self as relay, Stop};
use crate::data::shared::metrics::{ClosedLabels, OrdinalLabel, StatusLabel};
use crate::data::shared::Shared;
use crate::data::upstream::breaker::Transition;

/// Response header carrying this router's local version of the table that routed the
/// request (a counter: it differs between replicas holding the same table).
pub const TABLE_VERSION_HEADER: &str = "x-wsrouter-table";
/// Response header carrying the routing fingerprint (`config/membership`) of the table
/// that routed the request: equal on every replica that routes alike.
pub const FINGERPRINT_HEADER: &str = "x-wsrouter-fingerprint";

pub type ProxyBody = Either<Full<Bytes>, Incoming>;

/// Why a request got no upgrade. One variant per answer; [`ProxyError::status`] maps them.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadNamespace(#[source] NamespaceError),
    #[error("{0}")]
    AmbiguousPath(#[source] AmbiguousPath),
    #[error("{0}")]
    BadHost(#[source] HostError),
    #[error("Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.1)")]
    BadKey,
    #[error("only WebSocket version 13 is supported")]
    UnsupportedVersion,
    #[error("at capacity ({})", .0.as_str())]
    AtCapacity(Refusal),
    #[error("too many new connections from this address; retry after {retry_after}s")]
    RateLimited { retry_after: u32 },
    #[error("this tenant has as many sockets as it may hold here; retry later")]
    TenantFull,
    #[error("origin not allowed")]
    OriginDenied,
    #[error("{0}")]
    NoTenant(#[source] PathError),
    #[error("shutting down")]
    ShuttingDown,
    #[error("backend {ordinal} ({addr}) answered 101 with a bad handshake: {why}")]
    BackendBadHandshake {
        ordinal: u32,
        addr: Box<str>,
        why: BadHandshake,
    },
    #[error(
        "this path only serves WebSocket upgrades (GET with Upgrade: websocket over HTTP/1.1)"
    )]
    UpgradeRequired,
    #[error("backend {ordinal} ({addr}) unreachable")]
    BackendUnreachable {
        ordinal: u32,
        addr: Box<str>,
        #[source]
        source: io::Error,
    },
    #[error("backend {ordinal} ({addr}) did not answer the upgrade in time")]
    BackendTimeout { ordinal: u32, addr: Box<str> },
    #[error("backend {ordinal} ({addr}) failed during the upgrade")]
    BackendProtocol {
        ordinal: u32,
        addr: Box<str>,
        #[source]
        source: hyper::Error,
    },
    #[error("backend {ordinal} ({addr}) answered 101 without a WebSocket upgrade")]
    BackendBadUpgrade { ordinal: u32, addr: Box<str> },
    #[error("header {0:?} has '_' in its name; send it with '-' (--underscore-headers refuse)")]
    UnderscoreHeader(HeaderName),
    #[error("no routing table loaded yet")]
    NoTable,
    #[error("backend {ordinal} is {}", if *.terminating { "terminating" } else { "not serving" })]
    BackendNotServing { ordinal: u32, terminating: bool },
    #[error("backend {ordinal} has no known address yet")]
    BackendUnknown { ordinal: u32 },
    #[error("backend {ordinal} keeps failing: its circuit is open")]
    BackendCircuitOpen { ordinal: u32, retry_after: u32 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadNamespace(_)
            | Self::AmbiguousPath(_)
            | Self::BadHost(_)
            | Self::BadKey
            | Self::UnderscoreHeader(_)
            | Self::NoTenant(_) => StatusCode::BAD_REQUEST,
            Self::OriginDenied => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::TenantFull => StatusCode::TOO_MANY_REQUESTS,
            Self::UpgradeRequired | Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::BackendUnreachable { .. }
            | Self::BackendProtocol { .. }
            | Self::BackendBadUpgrade { .. }
            | Self::BackendBadHandshake { .. } => StatusCode::BAD_GATEWAY,
            Self::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::AtCapacity(
                Refusal::LivePerIp
                | Refusal::PendingPerIp
                | Refusal::TenantCap
                | Refusal::RatePerIp,
            ) => StatusCode::TOO_MANY_REQUESTS,
            Self::AtCapacity(Refusal::Origin) => StatusCode::FORBIDDEN,
            Self::NoTable
            | Self::BackendNotServing { .. }
            | Self::BackendUnknown { .. }
            | Self::BackendCircuitOpen { .. }
            | Self::AtCapacity(Refusal::LiveFull)
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Refused by a cap or rule on who may connect: counted by reason.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::AtCapacity(r) => Some(*r),
            Self::RateLimited { .. } => Some(Refusal::RatePerIp),
            Self::TenantFull => Some(Refusal::TenantCap),
            Self::OriginDenied => Some(Refusal::Origin),
            _ => None,
        }
    }

    /// The backend did not answer as a live pod does: counted by its circuit breaker.
    fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Self::BackendUnreachable { .. }
                | Self::BackendTimeout { .. }
                | Self::BackendProtocol { .. }
        )
    }

    /// A connection refused, reset or aborted before the backend said anything: what a
    /// restarting pod does, and safe to try again (the client has heard nothing yet).
    fn is_retryable(&self) -> bool {
        let reset = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            )
        };
        match self {
            Self::BackendUnreachable { source, .. } => reset(source),
            Self::BackendProtocol { source, .. } => {
                let mut cause = std::error::Error::source(source);
                while let Some(c) = cause {
                    if c.downcast_ref::<io::Error>().is_some_and(reset) {
                        return true;
                    }
                    cause = c.source();
                }
                source.is_incomplete_message()
            }
            _ => false,
        }
    }

    /// Refused for what the client sent (or how much), not for the state of the router
    /// or a backend: a 4xx.
    fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// Seconds a client should wait before retrying, for answers that will change soon.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::NoTable | Self::AtCapacity(_) | Self::ShuttingDown => Some(1),
            Self::RateLimited { retry_after } => Some(*retry_after),
            // Sockets of a busy tenant end at their own pace; a few seconds is polite.
            Self::TenantFull => Some(5),
            // The EndpointSlices name a pod within a second or two of its start.
            Self::BackendUnknown { .. } => Some(2),
            // A pod restart takes seconds; sooner would only be refused again.
            Self::BackendNotServing { .. } => Some(5),
            Self::BackendCircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The one-line body a client gets. Backend errors do not reveal backend addresses.
    fn client_reason(&self) -> String {
        // A 4xx names what the client should change: its message says just that.
        if self.is_client_error() {
            return format!("{self}\n");
        }
        match self {
            Self::AtCapacity(_) => "at capacity; retry shortly\n".to_owned(),
            Self::ShuttingDown => "shutting down; retry\n".to_owned(),
            Self::BackendUnreachable { .. } => "backend unavailable\n".to_owned(),
            Self::BackendTimeout { .. } => "backend did not answer in time\n".to_owned(),
            Self::BackendProtocol { .. }
            | Self::BackendBadUpgrade { .. }
            | Self::BackendBadHandshake { .. } => "backend error\n".to_owned(),
            Self::NoTable => "not ready: no routing table yet\n".to_owned(),
            Self::BackendNotServing { .. }
            | Self::BackendUnknown { .. }
            | Self::BackendCircuitOpen { .. } => "backend not ready; retry shortly\n".to_owned(),
            // The 4xx variants, answered above.
            Self::NotFound
            | Self::BadNamespace(_)
            | Self::AmbiguousPath(_)
            | Self::BadHost(_)
            | Self::BadKey
            | Self::UpgradeRequired
            | Self::UnsupportedVersion
            | Self::RateLimited { .. }
            | Self::TenantFull
            | Self::OriginDenied
            | Self::UnderscoreHeader(_)
            | Self::NoTenant(_) => format!("{self}\n"),
        }
    }

    /// Every answer but a 101 closes the connection: a client gets one request per
    /// connection, so an idle keep-alive connection cannot hold a slot.
    fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(Either::Left(Full::new(Bytes::from(self.client_reason()))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if matches!(self, Self::UpgradeRequired | Self::UnsupportedVersion) {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Why a request's Host is refused (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HostError {
    #[error("missing Host header (RFC 9112 §3.2)")]
    Missing,
    #[error("more than one Host header (RFC 9112 §3.2)")]
    Repeated,
    #[error("Host header is not a valid host[:port]")]
    Invalid,
}

/// What was wrong with a backend's 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadHandshake {
    #[error("no Upgrade: websocket")]
    Upgrade,
    #[error("no Connection: upgrade")]
    Connection,
    #[error("Sec-WebSocket-Accept missing or not the one for the key sent")]
    Accept,
    #[error("a subprotocol the client did not offer")]
    Protocol,
    #[error("an extension the client did not offer")]
    Extension,
}

impl BadHandshake {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::Connection => "connection",
            Self::Accept => "accept",
            Self::Protocol => "protocol",
            Self::Extension => "extension",
        }
    }
}

/// Per client connection.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub accepted: Instant,
    /// The pending-pool place of an HTTP/1.1 connection, given back once the request
    /// head is parsed. An HTTP/2 connection keeps its own (see `h2::serve`).
    pub pending: std::sync::Mutex<Option<PendingSlot>>,
    /// An HTTP/2 connection's live streams: each WebSocket relayed on it counts.
    pub streams: Option<Arc<ConnStreams>>,
}

impl ConnCtx {
    /// An HTTP/1.1 connection's context, its pending slot held until the first request
    /// head is parsed.
    pub(crate) fn http1(
        shared: &Arc<Shared>,
        peer: SocketAddr,
        accepted: Instant,
        slot: PendingSlot,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: shared.clone(),
            peer,
            accepted,
            pending: std::sync::Mutex::new(Some(slot)),
            streams: None,
        })
    }

    /// An HTTP/2 connection's context: its streams counted in `streams`.
    pub(crate) fn http2(
        shared: &Arc<Shared>,
        peer: SocketAddr,
        accepted: Instant,
        streams: Arc<ConnStreams>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: shared.clone(),
            peer,
            accepted,
            pending: std::sync::Mutex::new(None),
            streams: Some(streams),
        })
    }
}

/// Everything the relay needs to know about where it goes.
struct Routed {
    tenant: Box<str>,
    ordinal: u32,
    /// Where to connect: a pod's `IP:PORT` as the EndpointSlices give it, or a
    /// `HOST:PORT` from a list or template. Connecting parses an `IP:PORT` as it is;
    /// only a host name is resolved.
    addr: Box<str>,
    source: RouteSource,
    table_version: u64,
    fingerprint: Fingerprint,
    /// Live sockets this tenant may hold here (`None`: no cap).
    tenant_cap: Option<u32>,
    /// An HTTP/2 extended CONNECT stream (answered 200), not an HTTP/1.1 upgrade (101).
    h2: bool,
    /// The host the request was for, as forwarded (`Host` and `X-Forwarded-Host`).
    host: HeaderValue,
}

/// What a request comes to: the answer, and for a WebSocket the relay, waiting for the
/// client's side of the upgrade (an HTTP/1.1 socket, or an HTTP/2 stream).
pub(crate) struct Answer {
    pub resp: Response<ProxyBody>,
    pub relay: Option<PendingRelay>,
}

/// An HTTP/1.1 request on a hyper connection: answered, and on a 101 the socket hyper
/// hands over goes to the relay.
pub(crate) async fn handle<I>(mut req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Response<ProxyBody>
where
    I: AsyncRead + AsyncWrite + crate::data::relay::pump::Peer + Unpin + Send + 'static,
{
    let Answer { resp, relay } = answer(&req, &ctx).await;
    match relay {
        // Two stages: this task waits for the client's upgrade; the relay then runs as
        // its own task holding only what a live socket needs, so the upgrade's state is
        // freed.
        Some(pending) => {
            let on_client_upgrade = hyper::upgrade::on(&mut req);
            ctx.shared
                .lifecycle
                .tasks
                .spawn(pending.await_client::<I>(on_client_upgrade));
        }
        None if req.headers().contains_key(header::UPGRADE) => close_unused_upgrade(&mut req, &ctx),
        None => {}
    }
    resp
}

/// Any request, either HTTP version: a page (dev only), a refusal, or a WebSocket
/// whose backend has upgraded (101 or 200 ready to send, the relay to start).
pub(crate) async fn answer<B>(req: &Request<B>, ctx: &ConnCtx) -> Answer {
    // The head is parsed: this connection leaves the pending pool.
    if let Ok(mut pending) = ctx.pending.lock() {
        pending.take();
    }
    if let Some(page) = ctx
        .shared
        .pages
        .as_ref()
        .and_then(|p| p.answer(req.method(), req.uri(), &ctx.shared))
    {
        return Answer {
            resp: page.map(Either::Left),
            relay: None,
        };
    }
    let (resp, relay) = match forward(req, ctx).await {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(why) = e.refusal() {
                ctx.shared.metrics.refused(why);
            }
            if let ProxyError::BackendBadHandshake { why, .. } = &e {
                ctx.shared.metrics.bad_backend_handshake(why.as_str());
            }
            match &e {
                e if e.is_client_error()
                    || e.refusal().is_some()
                    || matches!(e, ProxyError::ShuttingDown) =>
                {
                    tracing::debug!(client.addr = %ctx.peer, path = req.uri().path(), status = e.status().as_u16(), reason = %e, "request refused");
                }
                _ => {
                    tracing::warn!(client.addr = %ctx.peer, status = e.status().as_u16(), error = %crate::logging::DisplayChain(&e), "upgrade failed");
                }
            }
            (e.into_response(), None)
        }
    };
    ctx.shared
        .metrics
        .upgrade_responses
        .get_or_create(&StatusLabel {
            status: resp.status().as_u16(),
            protocol: crate::state::labels::protocol(req.version()),
        })
        .inc();
    if relay.is_some() {
        ctx.shared
            .metrics
            .upgrade_seconds
            .observe(ctx.accepted.elapsed().as_secs_f64());
    }
    Answer { resp, relay }
}

/// hyper hands the socket of an upgrade-shaped request to its upgrade future even when
/// the answer is not 101; claim it and close it cleanly (TLS close_notify, then FIN)
/// instead of letting it drop.
fn close_unused_upgrade(req: &mut Request<Incoming>, ctx: &ConnCtx) {
    let pending = hyper::upgrade::on(req);
    ctx.shared.lifecycle.tasks.spawn(async move {
        if let Ok(Ok(upgraded)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), pending).await
        {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut TokioIo::new(upgraded)).await;
        }
    });
}

/// The request's way through: route it, take a live place, upgrade the backend, and
/// answer 101 (200 on HTTP/2); the relay waits for the client's side.
async fn forward<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
) -> Result<(Response<ProxyBody>, Option<PendingRelay>), ProxyError> {
    let (routed, key) = route_request(req, &ctx.shared)?;
    let shared = &ctx.shared;
    // Every per-client decision from here keys on who the request is from, as far as
    // the router believes its trusted proxies.
    let client = Client::resolve(ctx.peer.ip(), req.headers(), &shared.policy.trusted_proxies);
    shared
        .rate
        .take(client.addr, Instant::now())
        .map_err(|wait| ProxyError::RateLimited {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u32,
        })?;
    // From here the connection counts against the live pool, backend socket included,
    // and against its tenant's cap.
    let live = shared
        .admission
        .admit_live(client.addr)
        .map_err(ProxyError::AtCapacity)?;
    let tenant_slot = shared
        .live
        .try_register(&routed.tenant, routed.tenant_cap)
        .ok_or(ProxyError::TenantFull)?;
    // An HTTP/2 connection with a stream under way is no longer pending.
    let stream = ctx.streams.as_ref().map(ConnStreams::guard);
    let (head, backend, backend_pre) =
        match upgrade_with_backend(req, ctx, &routed, &key, &client).await? {
            BackendAnswer::Refused(resp) => return Ok((relay_refusal(&routed, resp), None)),
            BackendAnswer::Upgraded { head, io, pre } => (head, io, pre),
        };
    let diagnostics = shared.policy.route_headers;
    let resp = if routed.h2 {
        answer_200(head.headers, &routed, diagnostics)
    } else {
        answer_101(head.headers, &routed, diagnostics)
    };
    let pending = PendingRelay {
        routed,
        tenant_slot,
        backend,
        backend_pre,
        live,
        stream,
        peer: ctx.peer,
        client: client.addr,
        accepted: ctx.accepted,
        shared: ctx.shared.clone(),
    };
    Ok((resp, Some(pending)))
}

/// What a request says about where it goes, checked from the request alone.
#[derive(Debug)]
pub struct Inspected<'r> {
    /// The host it is for, as forwarded (`Host` and `X-Forwarded-Host`).
    pub host: HeaderValue,
    pub tenant: &'r str,
    /// The `Sec-WebSocket-Key` for the backend's handshake.
    pub key: HeaderValue,
}

/// Checks a request head (Host, header names, tenant, upgrade, key, Origin) with no
/// state but the settings: pure, so it is fuzzed on its own (`fuzz/`).
pub fn inspect<'r, B>(
    req: &'r Request<B>,
    prefix: &PathPrefix,
    policy: &PolicyConfig,
) -> Result<Inspected<'r>, ProxyError> {
    let host = request_host(req).map_err(ProxyError::BadHost)?;
    if policy.underscores == Underscores::Refuse {
        if let Some(name) = underscore_header(req.headers()) {
            return Err(ProxyError::UnderscoreHeader(name.clone()));
        }
    }
    let header: Vec<&[u8]> = match &policy.tenant_from {
        TenantFrom::Header(name) => req
            .headers()
            .get_all(name.as_str())
            .iter()
            .map(HeaderValue::as_bytes)
            .collect(),
        _ => Vec::new(),
    };
    let tenant = match prefix.tenant(
        &policy.tenant_from,
        req.uri().path(),
        req.uri().query(),
        &header,
    ) {
        Ok(ns) => ns,
        Err(PathError::NotUnderPrefix) => return Err(ProxyError::NotFound),
        Err(PathError::Namespace(e)) => return Err(ProxyError::BadNamespace(e)),
        Err(PathError::Ambiguous(e)) => return Err(ProxyError::AmbiguousPath(e)),
        Err(e @ (PathError::Missing(_) | PathError::Repeated(_))) => {
            return Err(ProxyError::NoTenant(e))
        }
    };
    let key = if is_extended_connect(req) {
        // RFC 8441 carries no key: the backend's handshake gets a fresh one, and its
        // answer is checked against that.
        websocket_version(req.headers())?;
        fresh_key()
    } else if is_websocket_upgrade(req) {
        websocket_key(req.headers())?
    } else {
        return Err(ProxyError::UpgradeRequired);
    };
    // Cross-site WebSocket hijacking stops here, before any backend is touched.
    if !policy.origins.allows(req.headers()) {
        return Err(ProxyError::OriginDenied);
    }
    Ok(Inspected { host, tenant, key })
}

/// Checks the request (see [`inspect`]) and makes the one table load of this
/// connection: the backend chosen here is kept for life.
fn route_request<B>(
    req: &Request<B>,
    shared: &Shared,
) -> Result<(Routed, HeaderValue), ProxyError> {
    // After GOAWAY a client may still open streams it had in flight (h2's shutdown is
    // two-step); while draining they are refused like a new connection would be.
    if req.version() == Version::HTTP_2 && shared.lifecycle.is_draining() {
        return Err(ProxyError::ShuttingDown);
    }
    let policy = &shared.policy;
    let Inspected { host, tenant, key } = inspect(req, &shared.prefix, policy)?;
    let routed = {
        let guard = shared.table.load();
        let Some(table) = guard.as_deref() else {
            return Err(ProxyError::NoTable);
        };
        let route = table.route(tenant);
        let ordinal = route.ordinal;
        // A pod that is not serving, terminating or not known yet: say so now rather
        // than after a connect timeout, and never guess another. The tenant stays on its
        // pod; its state lives there.
        let addr: Box<str> = match route.backend {
            Backend::Addr(a) => a.clone(),
            Backend::Pod(m) if m.accepts_new() => m.addr.to_string().into(),
            Backend::Pod(m) => {
                return Err(ProxyError::BackendNotServing {
                    ordinal,
                    terminating: m.terminating,
                })
            }
            Backend::Unknown => return Err(ProxyError::BackendUnknown { ordinal }),
        };
        Routed {
            tenant: tenant.into(),
            ordinal,
            addr,
            source: route.source,
            table_version: table.version(),
            fingerprint: table.fingerprint(),
            tenant_cap: policy.tenant_cap(table, tenant),
            h2: req.version() == Version::HTTP_2,
            host,
        }
    };
    Ok((routed, key))
}

/// Forwards the upgrade to the backend under its circuit breaker, within the backend
/// timeout (retries included) and until the drain's grace period ends, and checks a 101
/// completes the handshake the client asked for.
async fn upgrade_with_backend<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    routed: &Routed,
    key: &HeaderValue,
    client: &Client,
) -> Result<BackendAnswer, ProxyError> {
    let shared = &ctx.shared;
    let permit =
        shared
            .breakers
            .admit(&routed.addr)
            .map_err(|r| ProxyError::BackendCircuitOpen {
                ordinal: routed.ordinal,
                retry_after: r.retry_after_secs,
            })?;
    let offered = Offered::from_request(req.headers());
    let deadline = tokio::time::Instant::now() + shared.limits.backend_timeout;
    let attempts = tokio::time::timeout_at(
        deadline,
        upgrade_retrying(req, ctx, routed, key, client, deadline),
    );
    let result = tokio::select! {
        r = attempts => r.unwrap_or_else(|_| Err(ProxyError::BackendTimeout {
            ordinal: routed.ordinal,
            addr: routed.addr.clone(),
        })),
        // The drain's grace period ended while the backend had not answered: that says
        // nothing about the backend.
        _ = shared.lifecycle.close_tunnels.cancelled() => return Err(ProxyError::ShuttingDown),
    };
    let transition = match &result {
        // It answered (a 101, or its own refusal): it is alive.
        Ok(_) => permit.succeeded(),
        Err(e) if e.is_backend_failure() => permit.failed(),
        Err(_) => Transition::None,
    };
    shared.metrics.breaker(routed.ordinal, transition);
    match transition {
        Transition::Opened => {
            tracing::warn!(backend.ordinal = routed.ordinal, backend.addr = %routed.addr, cooldown = ?shared.breakers.cooldown(), "backend keeps failing: circuit open, its tenants get 503 until a probe succeeds")
        }
        Transition::Closed => {
            tracing::info!(backend.ordinal = routed.ordinal, backend.addr = %routed.addr, "backend answers again: circuit closed")
        }
        Transition::None => {}
    }
    let answer = result?;
    if let BackendAnswer::Upgraded { head, .. } = &answer {
        check_backend_handshake(&head.headers, key, &offered).map_err(|why| {
            ProxyError::BackendBadHandshake {
                ordinal: routed.ordinal,
                addr: routed.addr.clone(),
                why,
            }
        })?;
    }
    Ok(answer)
}

/// Tries the backend until it answers, retrying a connection refused or reset (a pod
/// restarting) after a jittered pause while `deadline` allows one more try.
async fn upgrade_retrying<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    routed: &Routed,
    key: &HeaderValue,
    client: &Client,
    deadline: tokio::time::Instant,
) -> Result<BackendAnswer, ProxyError> {
    let tls = ctx.shared.tls_config.is_some();
    let mut pause = RETRY_FIRST;
    loop {
        let backend_req = backend_request(req, client, tls, &routed.host, key);
        let keepalive = ctx.shared.limits.timers.tcp_keepalive;
        match upgrade_backend(routed, backend_req, keepalive, &ctx.shared.lifecycle.tasks).await {
            Err(e) if e.is_retryable() => {
                // Half to all of `pause`, so a burst of clients does not retry in step.
                let wait = pause.mul_f64(0.5 + jitter() / 2.0);
                // The next try needs time of its own: one the deadline cut short would
                // turn this refusal (502) into a timeout (504) on a loaded machine.
                if tokio::time::Instant::now() + wait + RETRY_FIRST >= deadline {
                    return Err(e);
                }
                tracing::debug!(backend.ordinal = routed.ordinal, error = %crate::logging::DisplayChain(&e), ?wait, "backend connection failed; retrying");
                ctx.shared.metrics.backend_connect_retries.inc();
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            r => return r,
        }
    }
}

/// The first pause before retrying a refused or reset backend connection, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A number in `[0, 1)`, different on every call: jitter needs no more.
fn jitter() -> f64 {
    fastrand::f64()
}

/// The backend said no (e.g. 403 or 404): the client hears it as it was said.
fn relay_refusal(routed: &Routed, resp: Response<Incoming>) -> Response<ProxyBody> {
    tracing::debug!(tenant = %routed.tenant, backend.ordinal = routed.ordinal, status = resp.status().as_u16(), "backend refused the upgrade");
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Response::from_parts(parts, Either::Right(body))
}

/// The client's 101: the backend's end-to-end headers (its accept, subprotocol,
/// extensions), the upgrade tokens, and the table version and fingerprint that routed it.
fn answer_101(mut headers: HeaderMap, routed: &Routed, diagnostics: bool) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut headers);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // The router's internals (its table's local version, the fleet's digests) are for
    // operators who ask (`--route-headers`), not for every client.
    if diagnostics {
        headers.insert(
            HeaderName::from_static(TABLE_VERSION_HEADER),
            HeaderValue::from(routed.table_version),
        );
        if let Ok(v) = HeaderValue::from_str(&routed.fingerprint.to_string()) {
            headers.insert(HeaderName::from_static(FINGERPRINT_HEADER), v);
        }
    }
    *resp.headers_mut() = headers;
    resp
}

/// The answer to an HTTP/2 extended CONNECT (RFC 8441 §5): 200, with the backend's
/// subprotocol and extensions; nothing of HTTP/1.1's upgrade (no Upgrade, Connection or
/// Sec-WebSocket-Accept).
fn answer_200(headers: HeaderMap, routed: &Routed, diagnostics: bool) -> Response<ProxyBody> {
    let mut resp = answer_101(headers, routed, diagnostics);
    *resp.status_mut() = StatusCode::OK;
    // Upgrade and Connection go with the other hop-by-hop headers when data::h2 sends
    // the answer; the accept answers a key the client never sent.
    resp.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
    resp
}

/// A backend upgraded and a 101 on its way to the client: what the relay will need once
/// the client's side of the upgrade completes.
pub(crate) struct PendingRelay {
    routed: Routed,
    /// Counted against its tenant since before the backend was asked.
    tenant_slot: crate::state::tenants::LiveGuard,
    backend: TcpStream,
    backend_pre: Bytes,
    live: LiveSlot,
    /// Counted among its HTTP/2 connection's live streams.
    stream: Option<StreamGuard>,
    peer: SocketAddr,
    /// Who the request is from (the peer, or whom trusted proxies vouched for).
    client: std::net::IpAddr,
    accepted: Instant,
    shared: Arc<Shared>,
}

impl PendingRelay {
    /// Waits (within the request timeout) for hyper to hand over the client's upgraded
    /// socket, then starts the relay as a task of its own.
    async fn await_client<I>(self, on_upgrade: hyper::upgrade::OnUpgrade)
    where
        I: AsyncRead + AsyncWrite + crate::data::relay::pump::Peer + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let upgrade_timeout = self.shared.limits.request_timeout;
        let client = match tokio::time::timeout(upgrade_timeout, on_upgrade).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::debug!(client.addr = %peer, error = %e, "client upgrade failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client.addr = %peer, "client upgrade timed out");
                return;
            }
        };
        // Unwrap hyper's upgrade wrapper to reach the socket itself, so the relay
        // reads and writes it directly.
        match client.downcast::<TokioIo<I>>() {
            Ok(parts) => self.start(parts.io.into_inner(), parts.read_buf),
            Err(_) => {
                tracing::error!(client.addr = %peer, "upgraded connection of an unexpected type")
            }
        }
    }

    /// Registers the live socket, counts it, and spawns the relay task.
    pub(crate) fn start<I>(self, client_io: I, client_pre: Bytes)
    where
        I: AsyncRead + AsyncWrite + crate::data::relay::pump::Peer + Unpin + Send + 'static,
    {
        let Self {
            routed,
            tenant_slot,
            backend,
            backend_pre,
            live,
            stream,
            peer,
            client,
            accepted,
            shared,
        } = self;
        let started = Instant::now();
        // One lookup for this relay's gauge; it is decremented through the same handle.
        let active = shared
            .metrics
            .connections_active
            .get_or_create(&OrdinalLabel {
                ordinal: routed.ordinal,
            })
            .clone();
        active.inc();
        if routed.h2 {
            shared.metrics.http2_streams.inc();
        }
        tracing::debug!(client.addr = %peer, tenant = %routed.tenant, backend.ordinal = routed.ordinal, "relay started");
        let stop = stop_signal(&shared, &routed);
        let relay = relay::run(
            client_io,
            backend,
            client_pre,
            backend_pre,
            stop,
            shared
                .limits
                .timers
                .relay_config(shared.limits.close_timeout),
        );
        let tasks = shared.lifecycle.tasks.clone();
        let live = LiveRelay {
            routed,
            peer,
            client,
            accepted,
            started,
            active,
            shared,
            _slot: live,
            _live: tenant_slot,
            _stream: stream,
        };
        tasks.spawn(live.run(relay));
    }
}

/// What ends a relay on the router's own initiative: the drain's end (1001) and, with
/// `--reroute-drain`, the tenant's move (1012).
fn stop_signal(shared: &Shared, routed: &Routed) -> Pin<Box<dyn Future<Output = Stop> + Send>> {
    let drain = shared.lifecycle.close_tunnels.clone();
    match shared.reroute.clone() {
        None => Box::pin(async move {
            drain.cancelled_owned().await;
            Stop::SHUTDOWN
        }),
        Some(r) => {
            let (tenant, ordinal) = (routed.tenant.clone(), routed.ordinal);
            Box::pin(async move {
                tokio::select! {
                    _ = drain.cancelled() => Stop::SHUTDOWN,
                    _ = r.moved(&tenant, ordinal) => Stop::REROUTED,
                }
            })
        }
    }
}

/// What a running relay keeps beside its sockets, to count and log its end.
struct LiveRelay {
    routed: Routed,
    peer: SocketAddr,
    client: std::net::IpAddr,
    accepted: Instant,
    started: Instant,
    active: prometheus_client::metrics::gauge::Gauge,
    shared: Arc<Shared>,
    // Fields drop in this order: the tenant's count first, then the live pool's place,
    // whose release wakes whoever waits on a change, so they see both.
    _live: crate::state::tenants::LiveGuard,
    _slot: LiveSlot,
    _stream: Option<StreamGuard>,
}

impl LiveRelay {
    /// The relay task: the relay itself, then the count and the log line. A plain
    /// future rather than an async fn, so the relay's state is held once, not twice
    /// (an async fn keeps its argument and the awaited future side by side).
    fn run<I>(self, relay: relay::Relay<I, TcpStream>) -> impl Future<Output = ()>
    where
        I: AsyncRead + AsyncWrite + crate::data::relay::pump::Peer + Unpin,
    {
        let mut relay = relay;
        let mut live = Some(self);
        std::future::poll_fn(move |cx| {
            let report = std::task::ready!(Pin::new(&mut relay).poll(cx));
            if let Some(live) = live.take() {
                live.finish(report);
            }
            std::task::Poll::Ready(())
        })
    }

    fn finish(self, report: relay::RelayReport) {
        let (routed, metrics) = (&self.routed, &self.shared.metrics);
        self.active.dec();
        if routed.h2 {
            metrics.http2_streams.dec();
        }
        metrics
            .connections_closed
            .get_or_create(&ClosedLabels {
                ordinal: routed.ordinal,
                reason: report.reason.as_str(),
                protocol: if routed.h2 { "h2" } else { "h1" },
            })
            .inc();
        metrics.bytes_from_client.inc_by(report.bytes_from_client);
        metrics.bytes_from_backend.inc_by(report.bytes_from_backend);
        tracing::info!(
            client.addr = %self.client,
            peer.addr = %self.peer,
            tenant = %routed.tenant,
            backend.ordinal = routed.ordinal,
            backend.addr = %routed.addr,
            route.source = routed.source.as_str(),
            table.version = routed.table_version,
            table.fingerprint = %routed.fingerprint,
            http.host = routed.host.to_str().unwrap_or_default(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            setup_ms = (self.started - self.accepted).as_millis() as u64,
            bytes.from_client = report.bytes_from_client,
            bytes.from_backend = report.bytes_from_backend,
            close.reason = report.reason.as_str(),
            close.client_code = report.client_close_code,
            close.backend_code = report.backend_close_code,
            close.sent_to_client = report.sent_to_client,
            close.sent_to_backend = report.sent_to_backend,
            close.timed_out = report.timed_out,
            "connection closed"
        );
    }
}

enum BackendAnswer {
    Upgraded {
        head: http::response::Parts,
        io: TcpStream,
        pre: Bytes,
    },
    Refused(Response<Incoming>),
}

async fn upgrade_backend(
    routed: &Routed,
    req: Request<Empty<Bytes>>,
    keepalive: Option<Duration>,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<BackendAnswer, ProxyError> {
    let protocol_err = |source| ProxyError::BackendProtocol {
        ordinal: routed.ordinal,
        addr: routed.addr.clone(),
        source,
    };
    // An `IP:PORT` (every pod address) is parsed, not looked up: no DNS in cluster mode.
    let tcp = TcpStream::connect(&*routed.addr).await.map_err(|source| {
        ProxyError::BackendUnreachable {
            ordinal: routed.ordinal,
            addr: routed.addr.clone(),
            source,
        }
    })?;
    let _ = tcp.set_nodelay(true);
    if let Some(idle) = keepalive {
        let _ = crate::data::socket::set_keepalive(&tcp, idle);
    }
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(protocol_err)?;
    // Drives the backend connection until it is upgraded (or, for a refusal, until the
    // body has been passed on). Tracked like every task of a connection, so the drain
    // waits for it too.
    tasks.spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = sender.send_request(req).await.map_err(protocol_err)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(BackendAnswer::Refused(resp));
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.map_err(protocol_err)?;
    let parts =
        upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map_err(|_| ProxyError::BackendBadUpgrade {
                ordinal: routed.ordinal,
                addr: routed.addr.clone(),
            })?;
    let (head, _) = resp.into_parts();
    Ok(BackendAnswer::Upgraded {
        head,
        io: parts.io.into_inner(),
        pre: parts.read_buf,
    })
}

/// The host a request is for: its one `Host` header, or, for an absolute-form target,
/// the target's authority, which replaces Host (RFC 9112 §3.2.2).
fn request_host<B>(req: &Request<B>) -> Result<HeaderValue, HostError> {
    if req.version() == Version::HTTP_2 {
        // HTTP/2 names the host in `:authority` (RFC 9113 §8.3.1); a Host header, if
        // any, must agree, and the authority is what is forwarded.
        let authority = req.uri().authority().ok_or(HostError::Missing)?;
        if authority.as_str().contains('@') {
            return Err(HostError::Invalid);
        }
        return HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::Invalid);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().ok_or(HostError::Missing)?;
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(HostError::Invalid);
        }
        return HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::Invalid);
    }
    let valid = host
        .to_str()
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('@'))
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .is_some();
    if !valid {
        return Err(HostError::Invalid);
    }
    // A copy, not `host.clone()`: hyper parses a header value as a slice of the
    // connection's read buffer (8 KiB), and the host is kept for the socket's life (the
    // close log line), which kept the whole buffer: 6.3 KB of each idle socket's 8.
    HeaderValue::from_bytes(host.as_bytes()).map_err(|_| HostError::Invalid)
}

/// Exactly one `Sec-WebSocket-Version: 13`.
fn websocket_version(headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => Ok(()),
        _ => Err(ProxyError::UnsupportedVersion),
    }
}

/// A new `Sec-WebSocket-Key` for a backend handshake the client did not key itself.
fn fresh_key() -> HeaderValue {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    // Base64 of 16 bytes is always a valid header value.
    HeaderValue::try_from(key)
        .unwrap_or_else(|_| HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// The client's `Sec-WebSocket-Key` (one, 16 bytes in base64) after checking the version.
fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, ProxyError> {
    websocket_version(headers)?;
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(k), None) if is_base64_16(k.as_bytes()) => Ok(k.clone()),
        _ => Err(ProxyError::BadKey),
    }
}

/// 16 bytes in base64: 22 characters of the alphabet, then `==`.
fn is_base64_16(k: &[u8]) -> bool {
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        // The last character's low four bits are padding and must be zero.
        && b"AQgw".contains(&k[21])
}

/// What the client offered, which the backend may pick from and nothing else; borrowed
/// from the request, so checking a 101 allocates nothing.
#[derive(Debug, Default)]
struct Offered<'r> {
    protocols: Vec<&'r str>,
    extensions: Vec<&'r str>,
}

impl<'r> Offered<'r> {
    fn from_request(headers: &'r HeaderMap) -> Self {
        Self {
            protocols: list(headers, header::SEC_WEBSOCKET_PROTOCOL).collect(),
            extensions: list(headers, header::SEC_WEBSOCKET_EXTENSIONS)
                .map(extension_name)
                .collect(),
        }
    }
}

/// The items of a comma-separated header, over all its lines, trimmed, empty ones skipped.
fn list(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An extension's name, without its parameters.
fn extension_name(ext: &str) -> &str {
    ext.split(';').next().unwrap_or("").trim()
}

/// A backend 101 is passed on only if it completes the handshake the client asked for
/// (RFC 6455 §4.1, the client's checks): the upgrade tokens, the accept value for the
/// key the router forwarded, and only a subprotocol and extensions the client offered.
fn check_backend_handshake(
    headers: &HeaderMap,
    key: &HeaderValue,
    offered: &Offered<'_>,
) -> Result<(), BadHandshake> {
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(BadHandshake::Upgrade);
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(BadHandshake::Connection);
    }
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut accepts = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if a.as_bytes() == want.as_bytes() => {}
        _ => return Err(BadHandshake::Accept),
    }
    let protocols: Vec<&str> = list(headers, header::SEC_WEBSOCKET_PROTOCOL).collect();
    match protocols[..] {
        [] => {}
        [p] if offered.protocols.contains(&p) => {}
        _ => return Err(BadHandshake::Protocol),
    }
    for ext in list(headers, header::SEC_WEBSOCKET_EXTENSIONS) {
        let name = extension_name(ext);
        if !offered
            .extensions
            .iter()
            .any(|o| o.eq_ignore_ascii_case(name))
        {
            return Err(BadHandshake::Extension);
        }
    }
    Ok(())
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441 §4).
fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<h2::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && header_has_token(req.headers(), header::UPGRADE, "websocket")
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    list(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Headers that belong to one hop and must not be forwarded (RFC 9110 §7.6.1), plus any
/// the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The upgrade request as the backend gets it: the client's end-to-end headers (its
/// WebSocket headers, Origin, cookies, auth) less any whose name holds `_`, and the
/// router's own forwarding headers in place of the client's.
fn backend_request<B>(
    req: &Request<B>,
    client: &Client,
    tls: bool,
    host: &HeaderValue,
    key: &HeaderValue,
) -> Request<Empty<Bytes>> {
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers);
    while let Some(name) = underscore_header(&headers).cloned() {
        headers.remove(name);
    }
    headers.insert(header::HOST, host.clone());
    // The same key the client sent (HTTP/1.1), or the fresh one (HTTP/2).
    headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    client.set_headers(&mut headers, tls, host);
    let uri = req.uri().path_and_query().map_or_else(
        || http::Uri::from_static("/"),
        |pq| http::Uri::from(pq.clone()),
    );
    let mut out = Request::new(Empty::new());
    *out.method_mut() = Method::GET;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_kept_for_the_sockets_life_does_not_hold_the_read_buffer() {
        // What hyper does: every header value a slice of one read buffer.
        let buffer =
            Bytes::from(b"GET /ws/a HTTP/1.1\r\nHost: example.test:8443\r\n\r\n".repeat(100));
        let at = buffer
            .windows(17)
            .position(|w| w == b"example.test:8443")
            .unwrap_or_else(|| unreachable!());
        let sliced = HeaderValue::from_maybe_shared(buffer.slice(at..at + 17))
            .unwrap_or_else(|e| panic!("{e}"));
        let req = Request::builder()
            .uri("/ws/a")
            .header(header::HOST, sliced)
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        let host = request_host(&req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host, "example.test:8443");
        let inside = buffer.as_ptr_range().contains(&host.as_bytes().as_ptr());
        assert!(!inside, "the host is a slice of the request's read buffer");
    }

    #[test]
    fn a_refused_or_reset_connection_is_retried_and_nothing_else() {
        let unreachable = |kind| ProxyError::BackendUnreachable {
            ordinal: 0,
            addr: "a:1".into(),
            source: io::Error::from(kind),
        };
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            assert!(unreachable(kind).is_retryable(), "{kind:?}");
            assert!(unreachable(kind).is_backend_failure());
        }
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::HostUnreachable] {
            assert!(!unreachable(kind).is_retryable(), "{kind:?}");
        }
        assert!(!ProxyError::NoTable.is_retryable());
        assert!(!ProxyError::NoTable.is_backend_failure());
    }

    #[test]
    fn statuses_are_pinned() {
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (ProxyError::NotFound, 404),
            (ProxyError::BadNamespace(NamespaceError::Empty), 400),
            (ProxyError::UpgradeRequired, 426),
            (
                ProxyError::BackendUnreachable {
                    ordinal: 1,
                    addr: "a:1".into(),
                    source: io(),
                },
                502,
            ),
            (
                ProxyError::BackendTimeout {
                    ordinal: 1,
                    addr: "a:1".into(),
                },
                504,
            ),
            (
                ProxyError::BackendBadUpgrade {
                    ordinal: 1,
                    addr: "a:1".into(),
                },
                502,
            ),
            (ProxyError::NoTable, 503),
            (
                ProxyError::BackendNotServing {
                    ordinal: 2,
                    terminating: true,
                },
                503,
            ),
            (ProxyError::BackendUnknown { ordinal: 2 }, 503),
            (
                ProxyError::BackendCircuitOpen {
                    ordinal: 2,
                    retry_after: 4,
                },
                503,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            let body = e.client_reason();
            assert!(
                body.ends_with('\n') && body.matches('\n').count() == 1,
                "{body:?}"
            );
            assert!(!body.contains("a:1"), "backend address leaked: {body}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://app"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["cookie", "origin", "sec-websocket-key"]);
    }

    #[test]
    fn header_tokens() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!header_has_token(&h, header::CONNECTION, "close"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(header_has_token(&h, header::UPGRADE, "websocket"));
    }
}
