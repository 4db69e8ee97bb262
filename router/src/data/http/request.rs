//! The parse step: what a request head says about where it goes (Host, tenant, key),
//! checked from the head and the settings alone.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use wsrouter::{PathError, PathPrefix, TenantFrom};

use crate::data::admission::forwarded::{underscore_header, Underscores};
use crate::data::admission::policy::PolicyConfig;
use crate::data::http::error::{HostError, ProxyError};
use crate::data::shared::Shared;
use crate::data::upstream::headers::header_has_token;

/// What a request says about where it goes, checked from the request alone.
#[derive(Debug)]
pub struct Inspected<'r> {
    /// The host it is for, as forwarded (`Host` and `X-Forwarded-Host`).
    pub host: HeaderValue,
    pub tenant: &'r str,
    pub kind: Kind,
}

/// Which of the two paths a routed request takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket (an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT), relayed; `key`
    /// is the `Sec-WebSocket-Key` for the backend's handshake.
    WebSocket { key: HeaderValue },
    /// Any other request (SignalR negotiate, Socket.IO polling, SSE, an upload),
    /// forwarded to the same pod over the keep-alive pool.
    Plain,
}

/// Checks a request head (Host, header names, tenant, method, framing, upgrade, key,
/// Origin) with no state but the settings: pure, so it is fuzzed on its own (`fuzz/`).
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
        plain_request(req)?;
        // The Origin allowlist is a WebSocket rule: browsers enforce CORS on plain
        // requests themselves, and a preflight (OPTIONS) is the backend's to answer.
        let kind = Kind::Plain;
        return Ok(Inspected { host, tenant, kind });
    };
    // Cross-site WebSocket hijacking stops here, before any backend is touched.
    if !policy.origins.allows(req.headers()) {
        return Err(ProxyError::OriginDenied);
    }
    let kind = Kind::WebSocket { key };
    Ok(Inspected { host, tenant, kind })
}

/// A plain request the router forwards: not a tunnel (CONNECT) nor a loop-back of the
/// request's headers (TRACE, which would echo cookies to a script). Its framing is
/// hyper's to check (RFC 9112 §6.3): Content-Length values that differ are a 400, and a
/// request with both Transfer-Encoding and Content-Length is read by its chunks alone,
/// its Content-Length dropped and its connection closed after the answer, so nothing
/// after it on that connection is read as another request.
fn plain_request<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let method = req.method();
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed(method.clone()));
    }
    Ok(())
}

/// A request's `Content-Length`, if it has one (hyper and h2 check it against the body).
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The parse step: a request the router still takes, [`inspect`]ed.
pub(super) fn parse<'r, B>(
    req: &'r Request<B>,
    shared: &Shared,
) -> Result<Inspected<'r>, ProxyError> {
    // After GOAWAY a client may still open streams it had in flight (h2's shutdown is
    // two-step); while draining they are refused like a new connection would be.
    if req.version() == Version::HTTP_2 && shared.lifecycle.is_draining() {
        return Err(ProxyError::ShuttingDown);
    }
    inspect(req, &shared.prefix, &shared.policy)
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
    // A slice of the connection's read buffer, as hyper parsed it: a plain request
    // forwards it and is done. A socket keeps its own copy (see `detached`).
    Ok(host.clone())
}

/// `host` in a buffer of its own. hyper parses a header value as a slice of the
/// connection's read buffer (8 KiB); a socket keeps its host for its life (the close log
/// line), which kept the whole buffer: 6.3 KB of each idle socket's 8.
pub(super) fn detached(host: &HeaderValue) -> HeaderValue {
    // (The bytes are a header value's already: the copy is one too.)
    HeaderValue::from_bytes(host.as_bytes()).unwrap_or_else(|_| host.clone())
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

/// 16 bytes in base64, canonical: 22 characters of the alphabet, then `==`, the last
/// character's padding bits zero (the decoder refuses anything else).
fn is_base64_16(k: &[u8]) -> bool {
    use base64::Engine;
    let mut out = [0u8; 18];
    k.len() == 24 && base64::engine::general_purpose::STANDARD.decode_slice(k, &mut out) == Ok(16)
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441 §4).
fn is_extended_connect<B>(req: &Request<B>) -> bool {
    extended_connect(req.method(), req.version(), req.extensions())
}

/// [`is_extended_connect`], from the head alone.
pub(crate) fn is_extended_connect_head(head: &http::request::Parts) -> bool {
    extended_connect(&head.method, head.version, &head.extensions)
}

fn extended_connect(method: &Method, version: Version, extensions: &http::Extensions) -> bool {
    method == Method::CONNECT
        && version == Version::HTTP_2
        && extensions
            .get::<h2::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && header_has_token(req.headers(), header::UPGRADE, "websocket")
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn a_key_is_16_bytes_in_canonical_base64() {
        for ok in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/+/+/+/+/+/+/+/+/+/+/w==",
        ] {
            assert!(is_base64_16(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "short",
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",      // half the padding
            "dGhlIHNhbXBsZSBub25jZR==",     // padding bits set
            "dGhlIHNhbXBsZSBub25jZQ==\n",   // trailing byte
            "dGhlIHNhbXBsZSBub25j-Q==",     // the URL-safe alphabet
            "dGhlIHNhbXBsZSBub25jZQ=A",     // padding then data
            "dGhlIHNhbXBsZSBub25jZQAA",     // 18 bytes, no padding
            "ZGhlIHNhbXBsZSBub25jZQ==AAAA", // 20 bytes
        ] {
            assert!(!is_base64_16(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn a_sockets_host_does_not_hold_the_read_buffer_a_requests_shares_it() {
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
        let inside = |v: &HeaderValue| buffer.as_ptr_range().contains(&v.as_bytes().as_ptr());
        // A plain request forwards it as parsed, copying nothing.
        assert!(inside(&host), "the request's host was copied");
        let kept = detached(&host);
        assert_eq!(kept, "example.test:8443");
        assert!(
            !inside(&kept),
            "the socket's host is a slice of the read buffer"
        );
    }
}
