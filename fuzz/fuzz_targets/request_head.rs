//! A client's request head, as far as the router's own code reads it: parsed with
//! `httparse` (hyper's parser; a head either refuses is hyper's to answer, and skipped
//! here), then `upgrade::inspect` (Host, header names, tenant, upgrade, key, Origin)
//! under the default policy and under a variant, and `forwarded::Client` (trusted hops,
//! then the forwarding headers the backend gets).
//!
//! Input: `variant peer_kind addr[16] head...`
//! - `variant & 3`: the tenant from the path, `header:x-tenant`, `query:tenant`, or
//!   `header:X_Tenant`; `& 4`: `--underscore-headers refuse`; `& 8`: an Origin allowlist
//!   (`& 0x20`: a missing Origin allowed); `& 0x10`: the head as an HTTP/2 extended
//!   CONNECT (version 2, `:protocol websocket`); `& 0x40`: prefix `/` instead of `/ws/`;
//!   `& 0x80`: the client connection is not TLS.
//! - `peer_kind % 4`: the TCP peer is 127.x.y.z (trusted), the IPv4 `addr[..4]`, the
//!   IPv6 `addr`, or an IPv4-mapped 127.0.0.x.
//!
//! Invariants: no panic; an accepted request's tenant is a valid namespace, a WebSocket's
//! key 16 bytes of base64, a plain request (forwarded) neither CONNECT nor TRACE; the client is the first hop, the peer the last, every hop after
//! the client trusted; the backend gets exactly one of each forwarding header the
//! router sets and none of the others a client might send.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use router::fuzzing::{inspect, underscore_header, Client, Inspected, Kind, ProxyError};
use router::{Origins, PolicyConfig, TrustedProxies, Underscores};
use wsrouter::{validate_namespace, PathPrefix, TenantFrom};

/// Headers a head may have (hyper's default is 100; 64 keeps the fuzzer's inputs small).
const MAX_HEADERS: usize = 64;

/// What the router sets for the backend, once each.
const SET: [&str; 4] = [
    "x-forwarded-for",
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
];
/// What a client may send and the backend never gets.
const DROPPED: [&str; 6] = [
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-forwarded-for",
];

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let [variant, peer_kind, rest @ ..] = data else {
        return;
    };
    let Some((addr, head)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let Some(req) = parse_head(head, variant & 0x10 != 0) else {
        return;
    };

    let default = PolicyConfig::default();
    let prefix = PathPrefix::default();
    let inspected = inspect(&req, &prefix, &default);
    check_inspected(&inspected, req.method());

    let policy = variant_policy(*variant);
    let prefix = if variant & 0x40 != 0 {
        PathPrefix::new("/").expect("/ is a valid prefix")
    } else {
        prefix
    };
    let varied = inspect(&req, &prefix, &policy);
    check_inspected(&varied, req.method());
    if policy.underscores == Underscores::Refuse {
        if let Ok(ok) = &varied {
            assert!(
                underscore_header(req.headers()).is_none(),
                "{:?}",
                ok.tenant
            );
        }
    }

    let trusted = TrustedProxies::parse(&["127.0.0.0/8".to_owned()]).expect("valid block");
    let peer = peer_addr(*peer_kind, addr);
    let client = Client::resolve(peer, req.headers(), &trusted);
    assert_eq!(client.hops.last(), Some(&peer), "{client:?}");
    assert_eq!(client.hops.first(), Some(&client.addr), "{client:?}");
    // Every hop right of the client was walked past: trusted.
    assert!(
        client.hops[1..].iter().all(|&ip| trusted.contains(ip)),
        "{client:?}"
    );
    if !trusted.contains(peer) {
        assert_eq!(client.hops, [peer]);
        assert!(
            client.proto.is_none() && client.host.is_none(),
            "{client:?}"
        );
    }

    // The backend's headers, as `backend_request` builds them.
    let host = match (&varied, &inspected) {
        (Ok(i), _) | (_, Ok(i)) => i.host.clone(),
        _ => req
            .headers()
            .get(HOST)
            .cloned()
            .unwrap_or(HeaderValue::from_static("localhost")),
    };
    let mut headers = req.headers().clone();
    while let Some(name) = underscore_header(&headers).cloned() {
        headers.remove(name);
    }
    client.set_headers(&mut headers, variant & 0x80 == 0, &host);
    for name in SET {
        let n = headers.get_all(name).iter().count();
        assert_eq!(
            n, 1,
            "{n} {name} headers for the backend ({client:?}, host {host:?})"
        );
    }
    for name in DROPPED {
        assert!(headers.get(name).is_none(), "{name} passed on");
    }
    let xff = headers.get("x-forwarded-for").expect("checked above");
    let last = xff.to_str().ok().and_then(|v| v.rsplit(", ").next());
    assert_eq!(last, Some(peer.to_string().as_str()), "{xff:?}");
}

/// The head as hyper would hand it over, or `None` where hyper would answer it itself.
fn parse_head(bytes: &[u8], h2: bool) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *req.uri_mut() = parsed.path?.parse::<Uri>().ok()?;
    *req.version_mut() = match (h2, parsed.version?) {
        (true, _) => Version::HTTP_2,
        (false, 0) => Version::HTTP_10,
        (false, 1) => Version::HTTP_11,
        _ => return None,
    };
    if h2 {
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
    }
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fn check_inspected(result: &Result<Inspected<'_>, ProxyError>, method: &Method) {
    let Ok(ok) = result else {
        return;
    };
    assert!(
        validate_namespace(ok.tenant).is_ok(),
        "tenant {:?} accepted",
        ok.tenant
    );
    match &ok.kind {
        Kind::WebSocket { key } => assert_eq!(key.len(), 24, "key {key:?}"),
        // A plain request is forwarded: never a tunnel, never TRACE.
        Kind::Plain => assert!(
            !matches!(*method, Method::CONNECT | Method::TRACE),
            "a plain {:?} accepted",
            ok.tenant
        ),
    }
}

fn variant_policy(variant: u8) -> PolicyConfig {
    let tenant_from =
        ["path", "header:x-tenant", "query:tenant", "header:X_Tenant"][usize::from(variant & 3)];
    let tenant_from: TenantFrom = tenant_from.parse().expect("a valid --tenant-from");
    let underscores = if variant & 4 != 0 {
        Underscores::Refuse
    } else {
        Underscores::Drop
    };
    let origins = if variant & 8 != 0 {
        let list = [
            "https://app.example.com",
            "https://*.example.org:8443",
            "null",
        ]
        .map(String::from);
        Origins::parse(&list, variant & 0x20 != 0).expect("valid origins")
    } else {
        PolicyConfig::default().origins
    };
    PolicyConfig {
        tenant_from,
        underscores,
        origins,
        ..PolicyConfig::default()
    }
}

fn peer_addr(kind: u8, addr: &[u8; 16]) -> IpAddr {
    let [a, b, c, d, ..] = *addr;
    match kind % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(127, a, b, c)),
        1 => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        2 => IpAddr::V6(Ipv6Addr::from(*addr)),
        _ => IpAddr::V6(Ipv4Addr::new(127, 0, 0, a).to_ipv6_mapped()),
    }
}
