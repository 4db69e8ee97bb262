//! The answer step: what the client hears. A backend's 101 passed on as a 101 (a 200 on
//! HTTP/2), a backend's own refusal as it was said, or the router's refusal as its
//! error's verdict says.

use crate::data::admission::auth::ForwardDenied;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::data::http::body::ProxyBody;
use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::error::ProxyError;
use crate::data::http::verdict::{Counted, Log, Verdict};
use crate::data::upstream::headers::strip_hop_by_hop;

/// Response header carrying this router's local version of the table that routed the
/// request (a counter: it differs between replicas holding the same table).
const TABLE_VERSION_HEADER: &str = "x-wsrouter-table";
/// Response header carrying the routing fingerprint (`config/membership`) of the table
/// that routed the request: equal on every replica that routes alike.
const FINGERPRINT_HEADER: &str = "x-wsrouter-fingerprint";

/// The client's answer once its backend has upgraded: a 101, or a 200 to an HTTP/2
/// extended CONNECT.
pub(super) fn upgraded(
    headers: HeaderMap,
    routed: &Routed,
    diagnostics: bool,
) -> Response<ProxyBody> {
    if routed.h2 {
        answer_200(headers, routed, diagnostics)
    } else {
        answer_101(headers, routed, diagnostics)
    }
}

/// The backend said no (e.g. 403 or 404): the client hears it as it was said.
pub(super) fn backend_refusal(routed: &Routed, resp: Response<Incoming>) -> Response<ProxyBody> {
    tracing::debug!(tenant = %routed.tenant, backend.ordinal = routed.ordinal, status = resp.status().as_u16(), "backend refused the upgrade");
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Response::from_parts(parts, ProxyBody::Backend(body))
}

/// The client's 101: the backend's end-to-end headers (its accept, subprotocol,
/// extensions), the upgrade tokens, and the table version and fingerprint that routed it.
fn answer_101(mut headers: HeaderMap, routed: &Routed, diagnostics: bool) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Full(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // The router's internals (its table's local version, the fleet's digests) are for
    // operators who ask (`--route-headers`), not for every client.
    if diagnostics {
        route_headers(&mut headers, routed);
    }
    *resp.headers_mut() = headers;
    resp
}

/// The table version and fingerprint that routed a request, on its answer: the 101, or
/// a forwarded answer.
pub(super) fn route_headers(headers: &mut HeaderMap, routed: &Routed) {
    headers.insert(
        HeaderName::from_static(TABLE_VERSION_HEADER),
        HeaderValue::from(routed.table_version),
    );
    if let Ok(v) = HeaderValue::from_str(&routed.fingerprint.to_string()) {
        headers.insert(HeaderName::from_static(FINGERPRINT_HEADER), v);
    }
}

/// The answer to an HTTP/2 extended CONNECT (RFC 8441 §5): 200, with the backend's
/// subprotocol and extensions; nothing of HTTP/1.1's upgrade (no Upgrade, Connection or
/// Sec-WebSocket-Accept).
fn answer_200(headers: HeaderMap, routed: &Routed, diagnostics: bool) -> Response<ProxyBody> {
    let mut resp = answer_101(headers, routed, diagnostics);
    *resp.status_mut() = StatusCode::OK;
    // Upgrade and Connection go with the other hop-by-hop headers when data::http::h2 sends
    // the answer; the accept answers a key the client never sent.
    resp.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
    resp
}

/// What a refused request was after, for its log line.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refused {
    /// A WebSocket, or a request not routed yet.
    Upgrade,
    /// A plain request being forwarded.
    Request,
}

/// A request that got no upgrade or no forwarded answer: counted, logged and answered as
/// its verdict says.
pub(super) fn refused(
    e: ProxyError,
    uri: &Uri,
    ctx: &ConnCtx,
    what: Refused,
) -> Response<ProxyBody> {
    let verdict = e.classify();
    let metrics = &ctx.shared.metrics;
    match verdict.counted {
        Some(Counted::Refused(why)) => metrics.refused(why),
        Some(Counted::BadHandshake(why)) => metrics.bad_backend_handshake(why.as_str()),
        Some(Counted::Auth(why)) => metrics.auth_refused(why),
        None => {}
    }
    let status = verdict.status.as_u16();
    match verdict.log {
        Log::Refused => {
            tracing::debug!(client.addr = %ctx.peer, path = uri.path(), status, reason = %e, "request refused");
        }
        Log::Failed => {
            let message = match what {
                Refused::Upgrade => "upgrade failed",
                Refused::Request => "request failed",
            };
            tracing::warn!(client.addr = %ctx.peer, status, error = %crate::logging::DisplayChain(&e), "{message}");
        }
    }
    error_response(&e, &verdict)
}

/// The answer to an error. It closes the connection: a client the router refused gets
/// no second request on it, so a refused connection cannot hold a slot.
fn error_response(e: &ProxyError, verdict: &Verdict) -> Response<ProxyBody> {
    let body = Bytes::from(verdict.body.text(e));
    let mut resp = Response::new(ProxyBody::Full(Full::new(body)));
    *resp.status_mut() = verdict.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if verdict.advertise_upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    if let Some(challenge) = verdict.challenge {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let ProxyError::AuthService(ForwardDenied::Refused {
        challenge: Some(c), ..
    }) = e
    {
        h.insert(header::WWW_AUTHENTICATE, c.clone());
    }
    if let Some(secs) = verdict.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
