//! The backend's half of the upgrade: the request it gets (an HTTP/1.1 upgrade, whatever
//! the client spoke) and the checks its 101 must pass before the client hears of it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body_util::Empty;

use crate::data::upstream::error::BadHandshake;
use crate::data::upstream::headers::{extension_name, header_has_token, list};

/// Makes `headers` an upgrade to `host`: the key the backend must answer (the one the
/// client sent over HTTP/1.1, or a fresh one for HTTP/2) and the upgrade tokens.
pub(crate) fn upgrade_headers(headers: &mut HeaderMap, host: &HeaderValue, key: &HeaderValue) {
    headers.insert(header::HOST, host.clone());
    headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
}

/// The backend's request: `GET` of the client's path and query over HTTP/1.1, with
/// `headers` as they are.
pub(crate) fn request(target: &Uri, headers: HeaderMap) -> Request<Empty<Bytes>> {
    let uri = target
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let mut out = Request::new(Empty::new());
    *out.method_mut() = Method::GET;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    out
}

/// What the client offered, which the backend may pick from and nothing else; borrowed
/// from the request, so checking a 101 allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct Offered<'r> {
    protocols: Vec<&'r str>,
    extensions: Vec<&'r str>,
}

impl<'r> Offered<'r> {
    pub(crate) fn from_request(headers: &'r HeaderMap) -> Self {
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
pub(crate) fn check(
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
