//! The dial step: the upgrade forwarded to the chosen backend under its circuit
//! breaker, retried while a restarting pod refuses it, and its 101 checked.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::data::admission::forwarded::{underscore_header, Client};
use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::error::{BadHandshake, ProxyError};
use crate::data::upstream::breaker::Transition;
use crate::data::upstream::headers::{extension_name, header_has_token, list, strip_hop_by_hop};

/// Forwards the upgrade to the backend under its circuit breaker, within the backend
/// timeout (retries included) and until the drain's grace period ends, and checks a 101
/// completes the handshake the client asked for.
pub(super) async fn dial<B>(
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

pub(super) enum BackendAnswer {
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
