//! The forward step: a plain request (not a WebSocket) under the routed prefix, sent to
//! the pod its tenant routes to over the keep-alive pool, the answer streamed back. Each
//! request is routed on its own, so one client connection may carry several tenants'.
//!
//! Proxy semantics (RFC 9110 §7.6, RFC 9112): hop-by-hop headers go both ways, `Host`
//! is kept, `Via` is added, the forwarding headers are the router's own; the body keeps
//! its length (hyper frames it from the body it is given). `Expect: 100-continue` is
//! answered here: hyper sends the client its 100 when the body is first read, that is
//! once a pod has been reached, so a refusal (413, 503) costs the client no upload.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::time::Instant;

use crate::data::admission::forwarded::{underscore_header, Client};
use crate::data::http::admit::{self, Admitted};
use crate::data::http::answer::{self, route_headers, Refused};
use crate::data::http::body::{
    BodyOutcome, ClientBody, Ended, ForwardBody, Outcome, ProxyBody, Stop,
};
use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::dial::{reaching, settle_breaker};
use crate::data::http::error::ProxyError;
use crate::data::http::in_flight::InFlight;
use crate::data::http::live;
use crate::data::http::request;
use crate::data::shared::coarse::Deadline;
use crate::data::shared::set_metrics::Kind;
use crate::data::shared::Shared;
use crate::data::upstream::dial::{self, Dial};
use crate::data::upstream::error::{Target, UpstreamError};
use crate::data::upstream::headers::{header_has_token, strip_hop_by_hop};
use crate::data::upstream::pool::pooled::{Pooled, PooledBody};
use crate::data::upstream::pool::{BoxError, PoolError, ReqBody};

/// What a client's request body may be: hyper's (HTTP/1.1) or an HTTP/2 stream's.
pub(crate) trait ClientBodyIn:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}
impl<B> ClientBodyIn for B where
    B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// Forwards `req` to its routed pod: the pod's answer, streaming, or the router's
/// refusal, as the client gets it. Counted by that status (`http_requests`).
pub(super) async fn forward<B: ClientBodyIn>(
    req: Box<Request<B>>,
    uri: &http::Uri,
    routed: Result<Routed, ProxyError>,
    ctx: &Arc<ConnCtx>,
) -> Response<ProxyBody> {
    let protocol = crate::state::labels::protocol(req.version());
    let started = Instant::now();
    let metrics = &ctx.shared.metrics;
    let mut set = match &routed {
        Ok(r) => Some(r.set),
        Err(e) => e.set(),
    };
    let (resp, took) = match forward_request(req, routed, ctx, started).await {
        Ok((resp, answered)) => {
            let took = (answered - started).as_secs_f64();
            metrics.http.response_seconds.observe(took);
            (resp, Some(took))
        }
        Err(e) => {
            // Counted for its backend set only when the refusal is about its pod.
            set = set.filter(|_| e.about_the_pod());
            (answer::refused(e, uri, ctx, Refused::Request), None)
        }
    };
    let status = resp.status().as_u16();
    metrics.http.answered(status, protocol);
    if let Some(set) = set {
        metrics.sets.answered(set, Kind::Http, status, took);
    }
    resp
}

/// The pod's answer and when its head came, or why there is none. The request's start
/// (`started`) and its answer's time are the clock reads its deadlines and stamps share:
/// the backend deadline, the pool's idle check, its body's start and its answer's first
/// stall stamp. Its body is timed only as it waits or ends, not per frame.
async fn forward_request<B: ClientBodyIn>(
    req: Box<Request<B>>,
    routed: Result<Routed, ProxyError>,
    ctx: &Arc<ConnCtx>,
    started: Instant,
) -> Result<(Response<ProxyBody>, Instant), ProxyError> {
    let routed = routed?;
    let shared = &ctx.shared;
    let limit = shared.limits.http.max_request_body;
    if request::content_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let Admitted {
        client,
        live,
        tenant_slot,
        stream,
    } = admit::admit_request(&req, ctx, &routed)?;
    // The client is the request's to forward; the places are its answer's to hold.
    let in_flight = InFlight::new(live, tenant_slot, stream, ctx);
    let (backend_req, outcome) = backend_request(*req, &client, shared, &routed, started);
    // Armed from the start: a tenant that moves while its long poll waits for the pod
    // is told to come back (to its new pod), as one whose answer streams is.
    let mut stop = live::request_ended(ctx, &routed, Ended::drained);
    let resp = exchange(backend_req, &routed, shared, &outcome, &mut stop, started)
        .await
        .map_err(|e| {
            outcome
                .error(limit, shared.limits.http.timers.idle)
                .unwrap_or(e)
        })?;
    let answered = Instant::now();
    let resp = client_response(resp, &routed, in_flight, stop, ctx, answered);
    Ok((resp, answered))
}

/// The request as the pod gets it: origin-form, HTTP/1.1, its end-to-end headers less
/// any whose name holds `_`, `Host` as the client named it, the router's forwarding
/// headers and `Via`, and its body streamed under the body limit and stall timeout.
fn backend_request<B: ClientBodyIn>(
    req: Request<B>,
    client: &Client,
    shared: &Shared,
    routed: &Routed,
    started: Instant,
) -> (Request<ReqBody>, Outcome) {
    let (mut parts, body) = req.into_parts();
    let http = &shared.limits.http;
    let trailers = header_has_token(&parts.headers, header::TE, "trailers");
    let headers = &mut parts.headers;
    // Room for what the router adds (Host, the four forwarding headers, Via) made once:
    // hyper sizes a request's map to the headers it came with, and growing it one
    // insert at a time rehashes it as often.
    headers.reserve(6);
    strip_hop_by_hop(headers);
    // The body's own length frames it on the way out; a client's repeats are not copied.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    while let Some(name) = underscore_header(headers).cloned() {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.insert(header::HOST, routed.host.clone());
    client.set_headers(headers, shared.tls_config.is_some(), &routed.host);
    add_via(headers, parts.version);
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| http::Uri::from_static("/"), |pq| pq.clone().into());
    parts.version = Version::HTTP_11;
    let (body, outcome) = if body.is_end_stream() {
        // Nothing to stream, time or bound: an empty body, boxed without an allocation.
        let empty = http_body_util::Empty::new().map_err(|never| match never {});
        (empty.boxed_unsync(), Outcome::ended(started))
    } else {
        let (body, outcome) =
            ClientBody::new(body, http.max_request_body, http.timers.idle, started);
        (body.boxed_unsync(), Outcome::Streaming(outcome))
    };
    (Request::from_parts(parts, body), outcome)
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3): the protocol it came in by, and the
/// router's name (no host or port, which would tell the client about the inside).
fn add_via(headers: &mut HeaderMap, received: Version) {
    let hop = if received == Version::HTTP_2 {
        "2 wsrouter"
    } else {
        "1.1 wsrouter"
    };
    headers.append(header::VIA, HeaderValue::from_static(hop));
}

/// The exchange with the pod. Reaching it (a connection refused or reset is retried, as
/// for an upgrade) is bounded by the backend timeout and is what its circuit breaker
/// hears. The answer's head may then take as long as a body may stall: a long poll
/// (Socket.IO, SignalR) holds its answer until it has something to say, and a pod
/// that is thinking is not a pod that is down.
async fn exchange(
    req: Request<ReqBody>,
    routed: &Routed,
    shared: &Shared,
    body: &BodyOutcome,
    stop: &mut Stop,
    started: Instant,
) -> Result<Response<PooledBody>, ProxyError> {
    let target = Target {
        set: shared.metrics.sets.name(routed.set),
        ordinal: routed.ordinal,
        addr: &routed.addr,
    };
    let permit = dial::admit(&shared.breakers, target)?;
    let how = reaching(target, shared, started);
    // The futures are made in place and raced by reference: `select!` takes its futures
    // by value, and moving one in copied it whole (some 1.2 KB for the send) per request.
    let connecting = std::pin::pin!(tokio::time::timeout_at(
        how.deadline,
        connect(&how, routed.socket, shared, started)
    ));
    let reached = tokio::select! {
        r = connecting => r.unwrap_or_else(|_| Err(target.timeout())),
        // The drain's grace period ended, or the tenant moved, before the pod was reached.
        why = stop.as_mut() => return Err(why.into()),
    };
    settle_breaker(&how, permit, &reached, shared);
    let (addr, conn) = reached?;
    let answer = std::pin::pin!(send(conn, req, addr, &how, shared));
    let idle = shared.limits.http.timers.idle;
    tokio::select! {
        r = answer => r,
        () = quiet_for(idle, body) => Err(if body.ended() {
            target.timeout().into()
        } else {
            ProxyError::BodyStalled { idle: idle.unwrap_or_default() }
        }),
        why = stop.as_mut() => Err(why.into()),
    }
}

/// Resolves once the exchange has been quiet for `idle`: no answer, and no request body
/// moving (an upload in progress is not a pod that does not answer). Never without one.
/// The clock is read only as the timer fires, and then only if the body took frames
/// since its last stamp: the timer firing says its deadline has passed, and a body
/// that moved since it was set moves it on.
async fn quiet_for(idle: Option<std::time::Duration>, body: &BodyOutcome) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut deadline = body.last_moved() + idle;
    loop {
        // A coarse deadline: the answer almost always comes first, and a tokio timer
        // set and dropped per request cost a lock and two wheel moves (`coarse`).
        Deadline::until(deadline).await;
        body.stamp();
        let moved_on = body.last_moved() + idle;
        if moved_on <= deadline {
            return;
        }
        deadline = moved_on;
    }
}

/// The pod's address and a connection to it, from the pool or new. The first try
/// judges the pool's idle connections as of `started`; a retry, after its pause, as
/// of then.
async fn connect(
    how: &Dial<'_>,
    socket: Option<SocketAddr>,
    shared: &Shared,
    started: Instant,
) -> Result<(SocketAddr, Pooled), UpstreamError> {
    let target = how.target;
    let addr = resolve(target, socket).await?;
    let mut first = Some(started);
    let conn = how
        .retrying(|| {
            let now = first.take().unwrap_or_else(Instant::now);
            async move {
                shared
                    .pool
                    .checkout_for(addr, Some(target.ordinal), now)
                    .await
                    .map_err(|e| unreached(target, e))
            }
        })
        .await?;
    Ok((addr, conn))
}

/// Sends on `conn`; once more on a new connection (within the backend timeout) if a
/// pooled one turned out closed before the request left. Nothing that left is sent
/// twice, whatever its method.
async fn send(
    conn: Pooled,
    req: Request<ReqBody>,
    addr: SocketAddr,
    how: &Dial<'_>,
    shared: &Shared,
) -> Result<Response<PooledBody>, ProxyError> {
    let target = how.target;
    let reused = conn.is_reused();
    let e = match std::pin::pin!(conn.send(req)).await {
        Ok(resp) => return Ok(resp),
        Err(e) => e,
    };
    let Some(unsent) = e.unsent.filter(|_| reused) else {
        return Err(target.protocol(e.source).into());
    };
    tracing::debug!(backend.ordinal = target.ordinal, error = %e.source, "pooled connection closed before the request left; sending on a new one");
    // Boxed, as the pool's dial is: every request's future would carry this seldom
    // taken way's size.
    Box::pin(send_again(*unsent, addr, target, shared)).await
}

/// [`send`]'s second try, on a new connection.
async fn send_again(
    req: Request<ReqBody>,
    addr: SocketAddr,
    target: Target<'_>,
    shared: &Shared,
) -> Result<Response<PooledBody>, ProxyError> {
    let fresh = tokio::time::timeout(
        shared.limits.backend_timeout,
        shared
            .pool
            .checkout_for(addr, Some(target.ordinal), Instant::now()),
    )
    .await
    .map_err(|_| target.timeout())?
    .map_err(|e| unreached(target, e))?;
    fresh
        .send(req)
        .await
        .map_err(|e| target.protocol(e.source).into())
}

/// A connection the pool could not make, as the upgrade's errors say it.
fn unreached(target: Target<'_>, e: PoolError) -> UpstreamError {
    match e {
        PoolError::Connect { source, .. } => target.unreachable(source),
        PoolError::Handshake { source, .. } => target.protocol(source),
    }
}

/// A pod's address: as the table gave it, or, for a `HOST:PORT` from a list or
/// template, looked up.
async fn resolve(
    target: Target<'_>,
    socket: Option<SocketAddr>,
) -> Result<SocketAddr, UpstreamError> {
    if let Some(addr) = socket {
        return Ok(addr);
    }
    let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    match tokio::net::lookup_host(target.addr).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| target.unreachable(not_found())),
        Err(e) => Err(target.unreachable(e)),
    }
}

/// The pod's answer as the client gets it: hop-by-hop headers gone, `Via` added, the
/// routing diagnostics if asked for, its body streamed under the stall timeout (spared
/// for an event stream unless the operator set it) until the tenant moves or the drain
/// ends.
fn client_response(
    resp: Response<PooledBody>,
    routed: &Routed,
    in_flight: InFlight,
    stop: Stop,
    ctx: &Arc<ConnCtx>,
    answered: Instant,
) -> Response<ProxyBody> {
    let shared = &ctx.shared;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers, parts.version);
    if shared.policy.route_headers {
        route_headers(&mut parts.headers, routed);
    }
    if ctx.last_request() {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let timers = shared.limits.http.timers;
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let idle = timers
        .idle
        .filter(|_| !event_stream || timers.event_streams_idle);
    let body = ForwardBody::new(body, idle, stop, in_flight.answering(), answered);
    Response::from_parts(parts, ProxyBody::Forwarded(Box::new(body)))
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
