//! HTTP header lists as both sides of an upgrade read them: tokens, items, and the
//! hop-by-hop headers that never cross the router.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The items of a comma-separated header, over all its lines, trimmed, empty ones skipped.
pub(crate) fn list(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An extension's name, without its parameters.
pub(crate) fn extension_name(ext: &str) -> &str {
    ext.split(';').next().unwrap_or("").trim()
}

/// Whether a comma-separated header contains `token` (case-insensitive).
pub(crate) fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    list(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Takes `name` out of the `Connection` header: a header the router sets for the pod,
/// which a client naming it there would otherwise have [`strip_hop_by_hop`] remove.
pub(crate) fn unname(headers: &mut HeaderMap, name: &HeaderName) {
    let named = |t: &str| t.eq_ignore_ascii_case(name.as_str());
    if !list(headers, header::CONNECTION).any(named) {
        return;
    }
    let kept: Vec<String> = list(headers, header::CONNECTION)
        .filter(|t| !named(t))
        .map(str::to_owned)
        .collect();
    headers.remove(header::CONNECTION);
    if kept.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(header::CONNECTION, v);
    }
}

/// Headers that belong to one hop and must not be forwarded (RFC 9110 §7.6.1), plus any
/// the `Connection` header names. `Content-Length` stays: it is end-to-end, though each
/// hop's framing is its own (hyper sets it from the body it is given when it is absent).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look over the names first: most messages carry none of these, and each
    // removal below is a hash and a probe. This runs twice per forwarded request.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = list(headers, header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The headers about one connection, never forwarded, whatever `Connection` names.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether `name` is one of them (`Connection` among them: the names its list adds are
/// looked for only when it is there).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_the_router_sets_is_taken_out_of_connection() {
        let claims = HeaderName::from_static("x-wsrouter-claims");
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Wsrouter-Claims"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        unname(&mut h, &claims);
        assert_eq!(
            list(&h, header::CONNECTION).collect::<Vec<_>>(),
            ["Upgrade", "x-other"]
        );
        h.insert(
            claims.clone(),
            HeaderValue::from_static("set by the router"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(&claims));
        // Only the router's header named: Connection goes.
        let mut only = HeaderMap::new();
        only.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Wsrouter-Claims"),
        );
        unname(&mut only, &claims);
        assert!(!only.contains_key(header::CONNECTION));
        // Not named: untouched.
        let mut none = HeaderMap::new();
        none.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        unname(&mut none, &claims);
        assert_eq!(
            none.get(header::CONNECTION),
            Some(&HeaderValue::from_static("keep-alive"))
        );
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
