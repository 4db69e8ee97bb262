//! Where a client puts its token, and taking it out of what the pod is sent.
//!
//! Four places, in this order: `Authorization: Bearer` (any client that can set a
//! header), a `Sec-WebSocket-Protocol` entry `base64url.bearer.authorization.k8s.io.<token
//! in base64url>` (a browser WebSocket can set nothing else; the Kubernetes API server's
//! convention), the `access_token` query parameter (what browsers and SignalR's
//! `accessTokenFactory` send) and a cookie. The first found is the token; the others are
//! not looked at.

use std::borrow::Cow;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};

use crate::data::admission::auth::Denied;
use crate::data::upstream::headers::list;

/// The query parameter browsers and SignalR put a token in.
pub(crate) const QUERY_PARAM: &str = "access_token";

/// The subprotocol entry's prefix; the token follows, base64url without padding.
pub(crate) const SUBPROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Header,
    Subprotocol,
    Query,
    Cookie,
}

/// The request's token and where it was, `None` if it carries none; a place that holds a
/// token badly (two of them, bad base64) is `Malformed`.
pub(crate) fn find<'r>(
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    cookie: &str,
) -> Result<Option<(Cow<'r, str>, Source)>, Denied> {
    if let Some(t) = bearer(headers)? {
        return Ok(Some((Cow::Borrowed(t), Source::Header)));
    }
    if let Some(t) = subprotocol(headers)? {
        return Ok(Some((Cow::Owned(t), Source::Subprotocol)));
    }
    if let Some(q) = query {
        match wsrouter::query_param(q, QUERY_PARAM) {
            Ok(Some(t)) if !t.is_empty() => return Ok(Some((Cow::Borrowed(t), Source::Query))),
            Ok(_) => {}
            Err(_) => return Err(Denied::Malformed),
        }
    }
    Ok(cookie_value(headers, cookie)?.map(|t| (Cow::Borrowed(t), Source::Cookie)))
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Denied> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Denied::Malformed);
    }
    let v = v.to_str().map_err(|_| Denied::Malformed)?;
    let (scheme, token) = v.split_once(' ').ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic) is the pod's business, not a token here.
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Denied::Malformed);
    }
    Ok(Some(token))
}

fn subprotocol(headers: &HeaderMap) -> Result<Option<String>, Denied> {
    let mut found = list(headers, header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX));
    let Some(encoded) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(Denied::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| Denied::Malformed)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Denied::Malformed)
}

fn cookie_value<'r>(headers: &'r HeaderMap, name: &str) -> Result<Option<&'r str>, Denied> {
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((k, val)) = pair.trim().split_once('=') else {
                continue;
            };
            if k == name {
                if found.is_some() {
                    return Err(Denied::Malformed);
                }
                found = Some(val.trim_matches('"'));
            }
        }
    }
    Ok(found.filter(|t| !t.is_empty()))
}

/// The offered subprotocols without the token's entry, for the pod: `None` when the
/// header is to be removed (only the token was offered), unchanged when no entry held
/// one.
pub(crate) fn protocols_without_token(headers: &HeaderMap) -> Option<Option<HeaderValue>> {
    if !list(headers, header::SEC_WEBSOCKET_PROTOCOL).any(|p| p.starts_with(SUBPROTOCOL_PREFIX)) {
        return None;
    }
    let rest: Vec<&str> = list(headers, header::SEC_WEBSOCKET_PROTOCOL)
        .filter(|p| !p.starts_with(SUBPROTOCOL_PREFIX))
        .collect();
    if rest.is_empty() {
        return Some(None);
    }
    // Entries of a header value that parsed stay valid when joined.
    Some(HeaderValue::from_str(&rest.join(", ")).ok())
}

/// The query without the token's parameter (`None`: nothing left), or the query as it
/// was if it held none.
pub(crate) fn query_without_token(query: &str) -> Option<Cow<'_, str>> {
    let is_token = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == QUERY_PARAM;
    if !query.split('&').any(|p| is_token(&p)) {
        return Some(Cow::Borrowed(query));
    }
    let rest: Vec<&str> = query.split('&').filter(|p| !is_token(p)).collect();
    (!rest.is_empty()).then(|| Cow::Owned(rest.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            h.append(
                name,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    fn found(h: &HeaderMap, q: Option<&str>) -> Result<Option<(String, Source)>, Denied> {
        find(h, q, "access_token").map(|o| o.map(|(t, s)| (t.into_owned(), s)))
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn each_place_is_read_in_its_turn() {
        let none = HeaderMap::new();
        assert_eq!(found(&none, None), Ok(None));
        assert_eq!(found(&none, Some("a=1")), Ok(None));
        let h = headers(&[("authorization", "Bearer h.h.h")]);
        assert_eq!(
            found(&h, Some("access_token=q.q.q")),
            Ok(Some(("h.h.h".into(), Source::Header)))
        );
        let sp = format!("chat, {SUBPROTOCOL_PREFIX}{}", b64("s.s.s"));
        let h = headers(&[("sec-websocket-protocol", &sp)]);
        assert_eq!(
            found(&h, Some("access_token=q.q.q")),
            Ok(Some(("s.s.s".into(), Source::Subprotocol)))
        );
        assert_eq!(
            found(&none, Some("x=1&access_token=q.q.q")),
            Ok(Some(("q.q.q".into(), Source::Query)))
        );
        let h = headers(&[("cookie", "theme=dark; access_token=c.c.c")]);
        assert_eq!(found(&h, None), Ok(Some(("c.c.c".into(), Source::Cookie))));
        // Another scheme is not a token here.
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(found(&h, None), Ok(None));
        let h = headers(&[("authorization", "bearer lower.case.ok")]);
        assert_eq!(
            found(&h, None),
            Ok(Some(("lower.case.ok".into(), Source::Header)))
        );
    }

    #[test]
    fn a_token_held_twice_or_badly_is_malformed() {
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(found(&two, None), Err(Denied::Malformed));
        let empty = headers(&[("authorization", "Bearer  ")]);
        assert_eq!(found(&empty, None), Err(Denied::Malformed));
        let bad64 = format!("{SUBPROTOCOL_PREFIX}!!!");
        assert_eq!(
            found(&headers(&[("sec-websocket-protocol", &bad64)]), None),
            Err(Denied::Malformed)
        );
        let twice = format!("{SUBPROTOCOL_PREFIX}{0}, {SUBPROTOCOL_PREFIX}{0}", b64("t"));
        assert_eq!(
            found(&headers(&[("sec-websocket-protocol", &twice)]), None),
            Err(Denied::Malformed)
        );
        assert_eq!(
            found(&HeaderMap::new(), Some("access_token=a&access_token=b")),
            Err(Denied::Malformed)
        );
        let cookies = headers(&[("cookie", "access_token=a"), ("cookie", "access_token=b")]);
        assert_eq!(found(&cookies, None), Err(Denied::Malformed));
    }

    #[test]
    fn the_token_leaves_the_query_and_the_offered_protocols() {
        assert_eq!(query_without_token("a=1&b=2").as_deref(), Some("a=1&b=2"));
        assert_eq!(
            query_without_token("a=1&access_token=t&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(query_without_token("access_token=t").as_deref(), None);
        assert_eq!(query_without_token("access_token").as_deref(), None);
        // A parameter that only starts with the name stays.
        assert_eq!(
            query_without_token("access_token2=x").as_deref(),
            Some("access_token2=x")
        );

        let plain = headers(&[("sec-websocket-protocol", "chat, superchat")]);
        assert_eq!(protocols_without_token(&plain), None);
        let sp = format!("chat, {SUBPROTOCOL_PREFIX}{}, superchat", b64("t"));
        let with = headers(&[("sec-websocket-protocol", &sp)]);
        assert_eq!(
            protocols_without_token(&with),
            Some(Some(HeaderValue::from_static("chat, superchat")))
        );
        let only = format!("{SUBPROTOCOL_PREFIX}{}", b64("t"));
        let only = headers(&[("sec-websocket-protocol", &only)]);
        assert_eq!(protocols_without_token(&only), Some(None));
    }
}
