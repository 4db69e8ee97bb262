//! Who is asking, and what the backend is told about it. A client's own forwarding
//! headers are the client's to forge, so they are believed only from
//! `--trusted-proxies`, and then only the hops those proxies appended: `X-Forwarded-For`
//! is walked from the right, past trusted addresses, to the first one that is not (the
//! way Envoy counts `xff_num_trusted_hops`). Every other client-sent forwarding header
//! is dropped and the router sets its own. Header names with `_` are dropped (or the
//! request refused): many frameworks fold `_` into `-`, so `X_Forwarded_For` would
//! spoof what the router set.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use thiserror::Error;

/// Client-sent headers that say where a request came from or how: never passed on as
/// they came; the router sets its own `X-Forwarded-For`, `-Proto`, `-Host` and
/// `Forwarded`.
fn is_forwarding(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-real-ip"
            | "x-client-ip"
            | "true-client-ip"
            | "x-original-forwarded-for"
    )
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `--trusted-proxies`: address blocks whose forwarding (PROXY protocol headers,
/// `X-Forwarded-For` hops) is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: u128,
    /// Bits that must match, counted over the 128-bit form (IPv4 is IPv4-mapped).
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "--trusted-proxies {0:?}: expected an address or a block (10.0.0.0/8, 127.0.0.1, fd00::/8)"
)]
pub struct CidrError(pub String);

/// An address as 128 bits: IPv6 as it is, IPv4 as IPv4-mapped, so one comparison serves
/// both and a mapped client matches its IPv4 block.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl TrustedProxies {
    /// Parses each entry: `ADDR` or `ADDR/LEN`. Host bits set below the prefix are an
    /// error (`10.0.0.1/8` is probably a typo for something narrower).
    pub fn parse(list: &[String]) -> Result<Self, CidrError> {
        let mut out = Vec::new();
        for raw in list {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            let bad = || CidrError(raw.clone());
            let (addr, len) = match entry.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (entry, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = match len {
                None => max,
                Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
                    l.parse().ok().filter(|&n| n <= max).ok_or_else(bad)?
                }
                Some(_) => return Err(bad()),
            };
            let prefix = if ip.is_ipv4() { len + 96 } else { len };
            let net = bits(ip);
            if net & !mask(prefix) != 0 {
                return Err(bad());
            }
            out.push(Cidr { net, prefix });
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let b = bits(ip);
        self.0.iter().any(|c| b & mask(c.prefix) == c.net)
    }
}

/// `--underscore-headers`: what becomes of a request header whose name holds `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Underscores {
    /// Not passed to the backend (NGINX's default).
    #[default]
    Drop,
    /// The request is refused with 400.
    Refuse,
}

/// The request header whose name holds `_`, if any.
pub fn underscore_header(headers: &HeaderMap) -> Option<&HeaderName> {
    headers.keys().find(|k| k.as_str().contains('_'))
}

/// Where a request came from, as the router believes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client: the connection's peer, or the first address a trusted proxy
    /// vouched for.
    pub addr: IpAddr,
    /// The hops from the client to the router, client first, the connection's peer
    /// last: what `X-Forwarded-For` says to the backend.
    pub hops: Arc<[IpAddr]>,
    /// `X-Forwarded-Proto` and `-Host` as a trusted peer gave them.
    pub proto: Option<HeaderValue>,
    pub host: Option<HeaderValue>,
    /// `X-Forwarded-For` and the `for=` of `Forwarded`, written once: a connection's
    /// direct client is made once and shared by each of its requests.
    xff: HeaderValue,
    forwarded_for: Bytes,
}

impl Client {
    /// The peer itself, with no proxy in between that the router believes.
    pub fn direct(peer: IpAddr) -> Self {
        Self::new(peer, Arc::new([peer]), None, None)
    }

    fn new(
        addr: IpAddr,
        hops: Arc<[IpAddr]>,
        proto: Option<HeaderValue>,
        host: Option<HeaderValue>,
    ) -> Self {
        use std::fmt::Write;
        let mut xff = String::with_capacity(16 * hops.len());
        for (i, hop) in hops.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(xff, "{sep}{hop}");
        }
        let forwarded_for = match addr {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        Self {
            addr,
            hops,
            proto,
            host,
            // Addresses only: always a valid value.
            xff: HeaderValue::from_maybe_shared(Bytes::from(xff))
                .unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for: Bytes::from(forwarded_for),
        }
    }

    /// The client of a request that reached the router from `peer` (the TCP peer, or
    /// the address a PROXY protocol header named).
    pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Self {
        Self::resolve_from(&Self::direct(peer), headers, trusted)
    }

    /// As [`Client::resolve`], from the connection's direct client (made once per
    /// connection): when the peer is not a trusted proxy, a copy of it.
    pub fn resolve_from(direct: &Self, headers: &HeaderMap, trusted: &TrustedProxies) -> Self {
        let peer = direct.addr;
        if trusted.is_empty() || !trusted.contains(peer) {
            return direct.clone();
        }
        // Every X-Forwarded-For line, in order, as one list.
        let listed: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut hops = vec![peer];
        let mut client = peer;
        for entry in listed.iter().rev() {
            // What a trusted hop wrote that is not an address ends the walk: the
            // client is the last address vouched for.
            let Some(ip) = parse_hop(entry) else {
                break;
            };
            hops.push(ip);
            client = ip;
            if !trusted.contains(ip) {
                break;
            }
        }
        hops.reverse();
        Self::new(
            client,
            hops.into(),
            single(headers, X_FORWARDED_PROTO)
                .filter(|v| v.as_bytes() == b"https" || v.as_bytes() == b"http"),
            single(headers, X_FORWARDED_HOST).filter(|v| {
                v.to_str()
                    .is_ok_and(|h| h.parse::<http::uri::Authority>().is_ok())
            }),
        )
    }

    /// Sets what the backend hears of the request's origin on `out` (the request's
    /// headers, to be forwarded): every client-sent forwarding header goes, then
    /// `X-Forwarded-For` (the hops), `-Proto`, `-Host` and `Forwarded`.
    pub fn set_headers(&self, out: &mut HeaderMap, tls: bool, host: &HeaderValue) {
        // One look over the names first: a removal is a hash and a probe each, and
        // most requests carry none of these. This runs for every forwarded request.
        if out.keys().any(is_forwarding) {
            let names: Vec<HeaderName> = out.keys().filter(|k| is_forwarding(k)).cloned().collect();
            for name in names {
                out.remove(name);
            }
        }
        let proto = self
            .proto
            .clone()
            .unwrap_or(HeaderValue::from_static(if tls { "https" } else { "http" }));
        let host = self.host.as_ref().unwrap_or(host);
        let mut forwarded = Vec::with_capacity(self.forwarded_for.len() + 20 + host.len());
        forwarded.extend_from_slice(&self.forwarded_for);
        forwarded.extend_from_slice(b";proto=");
        forwarded.extend_from_slice(proto.as_bytes());
        forwarded.extend_from_slice(b";host=");
        push_quoted(&mut forwarded, host.as_bytes());
        // Built from addresses, "http(s)" and a checked host: always a valid value.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
            out.insert(FORWARDED, v);
        }
        out.insert(X_FORWARDED_FOR, self.xff.clone());
        out.insert(X_FORWARDED_PROTO, proto);
        out.insert(X_FORWARDED_HOST, host.clone());
    }
}

/// One `X-Forwarded-For` entry: an address, bare or with a port (`1.2.3.4:5`,
/// `[::1]:5`), as proxies write them.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse().ok()
}

/// The one value of `name`, if it is there exactly once.
fn single(headers: &HeaderMap, name: HeaderName) -> Option<HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v.clone()),
        _ => None,
    }
}

/// Appends `v`, quoted if it is not an RFC 7230 token (a host with a port has ':').
fn push_quoted(out: &mut Vec<u8>, v: &[u8]) {
    let token = !v.is_empty()
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if token {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'\\' || b == b'"' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn blocks_parse_and_match() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1", "fd00::/8", "192.168.1.0/24"]);
        for (addr, inside) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("::ffff:10.0.0.1", true),
            ("fd12::1", true),
            ("fe80::1", false),
            ("192.168.1.200", true),
            ("192.168.2.1", false),
        ] {
            assert_eq!(t.contains(ip(addr)), inside, "{addr}");
        }
        assert!(trusted(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        assert!(!trusted(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(trusted(&["::/0"]).contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "x",
            "10.0.0.0/+8",
            "::1/129",
        ] {
            assert!(TrustedProxies::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse(&[]).is_ok_and(|t| t.is_empty()));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        for t in [trusted(&[]), trusted(&["10.0.0.0/8"])] {
            let c = Client::resolve(ip("203.0.113.9"), &h, &t);
            assert_eq!(c.addr, ip("203.0.113.9"));
            assert_eq!(*c.hops, [ip("203.0.113.9")]);
            assert_eq!((c.proto, c.host), (None, None));
        }
    }

    #[test]
    fn trusted_hops_are_walked_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example.com"),
        ]);
        let c = Client::resolve(ip("10.0.0.9"), &h, &t);
        assert_eq!(
            c.addr,
            ip("1.2.3.4"),
            "the spoofed 6.6.6.6 is left of the client"
        );
        assert_eq!(*c.hops, [ip("1.2.3.4"), ip("10.0.0.5"), ip("10.0.0.9")]);
        assert_eq!(c.proto.as_ref().map(|v| v.as_bytes()), Some(&b"https"[..]));
        assert_eq!(
            c.host.as_ref().map(|v| v.as_bytes()),
            Some(&b"app.example.com"[..])
        );
        // All trusted: the leftmost is the client. Ports and brackets are read.
        let h = headers(&[("x-forwarded-for", "10.1.1.1:4000, [fd00::1]:99")]);
        let t2 = trusted(&["10.0.0.0/8", "fd00::/8"]);
        let c = Client::resolve(ip("10.0.0.9"), &h, &t2);
        assert_eq!(c.addr, ip("10.1.1.1"));
        // Garbage from a trusted hop ends the walk at the last address vouched for.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, unknown, 10.0.0.5")]);
        assert_eq!(Client::resolve(ip("10.0.0.9"), &h, &t).addr, ip("10.0.0.5"));
        // No header: the trusted peer itself.
        assert_eq!(
            Client::resolve(ip("10.0.0.9"), &HeaderMap::new(), &t).addr,
            ip("10.0.0.9")
        );
        // A bad proto or host from a trusted peer is not believed.
        let h = headers(&[("x-forwarded-proto", "gopher"), ("x-forwarded-host", "a b")]);
        let c = Client::resolve(ip("10.0.0.9"), &h, &t);
        assert_eq!((c.proto, c.host), (None, None));
    }

    #[test]
    fn the_backend_hears_only_the_routers_forwarding_headers() {
        let mut out = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "gopher"),
            ("true-client-ip", "6.6.6.6"),
            ("cookie", "a=b"),
        ]);
        let c = Client::resolve(ip("2001:db8::7"), &out.clone(), &trusted(&[]));
        c.set_headers(&mut out, true, &HeaderValue::from_static("localhost:8443"));
        let got = |k: &str| {
            out.get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(got("x-forwarded-for"), ["2001:db8::7"]);
        assert_eq!(
            got("forwarded"),
            ["for=\"[2001:db8::7]\";proto=https;host=\"localhost:8443\""]
        );
        assert_eq!(got("x-forwarded-proto"), ["https"]);
        assert_eq!(got("x-forwarded-host"), ["localhost:8443"]);
        assert!(got("x-real-ip").is_empty() && got("true-client-ip").is_empty());
        assert_eq!(got("cookie"), ["a=b"]);
    }

    #[test]
    fn underscored_names_are_found() {
        assert_eq!(
            underscore_header(&headers(&[("x_forwarded_for", "1.1.1.1"), ("a", "b")]))
                .map(HeaderName::as_str),
            Some("x_forwarded_for")
        );
        assert!(underscore_header(&headers(&[("x-tenant", "a")])).is_none());
    }
}
