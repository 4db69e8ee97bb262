//! Who may open a socket, decided from the request before any backend is touched: the
//! Origin allowlist (`403`), a new-connection rate per source address (`429`), and a
//! cap on one tenant's live sockets (`429`; the count lives in `state::tenants`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, ORIGIN};
use thiserror::Error;
use wsrouter::TenantFrom;

use super::admission::Source;
use super::forwarded::{TrustedProxies, Underscores};

/// The request-level rules, built by `config`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub tenant_from: TenantFrom,
    pub origins: Origins,
    /// Live sockets one tenant may hold on this router unless its ConfigMap entry says
    /// otherwise; 0: no cap.
    pub max_per_tenant: u32,
    /// New connections per second one source address may open (token bucket); 0: no limit.
    pub rate_per_ip: f64,
    /// How many it may open at once before the rate applies.
    pub burst_per_ip: u32,
    /// Whose forwarding (PROXY protocol, `X-Forwarded-For` hops) is believed.
    pub trusted_proxies: TrustedProxies,
    /// What becomes of request headers with `_` in their names.
    pub underscores: Underscores,
    /// Send clients the `X-Wsrouter-*` headers naming the table that routed them.
    pub route_headers: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OriginError {
    #[error(
        "--allowed-origins {0:?}: expected scheme://host[:port], scheme://*.domain[:port], or null"
    )]
    Bad(String),
}

impl Default for PolicyConfig {
    /// The command line's defaults: nothing refused.
    fn default() -> Self {
        Self {
            tenant_from: TenantFrom::Path,
            origins: Origins {
                allow_missing: true,
                ..Origins::default()
            },
            max_per_tenant: 0,
            rate_per_ip: 0.0,
            burst_per_ip: 20,
            trusted_proxies: TrustedProxies::default(),
            underscores: Underscores::Drop,
            route_headers: false,
        }
    }
}

impl PolicyConfig {
    /// The most live sockets `tenant` may hold here under `table` (`None`: no cap): its
    /// ConfigMap entry if it has one, else `--max-connections-per-tenant`.
    pub fn tenant_cap(&self, table: &wsrouter::RoutingTable, tenant: &str) -> Option<u32> {
        match table.limits().max_connections(tenant) {
            Some(own) => own,
            None => (self.max_per_tenant > 0).then_some(self.max_per_tenant),
        }
    }
}

/// `--allowed-origins`: exact origins and `scheme://*.domain` patterns. Empty: every
/// origin is allowed (the check is off).
#[derive(Debug, Clone, Default)]
pub struct Origins {
    exact: Vec<String>,
    /// (scheme, ".domain", port suffix such as ":8443" or "").
    wildcard: Vec<(String, String, String)>,
    allow_missing: bool,
}

impl Origins {
    pub fn parse(list: &[String], allow_missing: bool) -> Result<Self, OriginError> {
        let mut o = Self {
            allow_missing,
            ..Self::default()
        };
        for raw in list {
            let entry = raw.trim().to_ascii_lowercase();
            if entry == "null" {
                o.exact.push(entry);
                continue;
            }
            let bad = || OriginError::Bad(raw.clone());
            let (scheme, rest) = entry.split_once("://").ok_or_else(bad)?;
            if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
                return Err(bad());
            }
            match rest.strip_prefix("*.") {
                Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                    let (host, port) = match domain.rsplit_once(':') {
                        Some((h, p)) if p.parse::<u16>().is_ok() => (h, format!(":{p}")),
                        _ => (domain, String::new()),
                    };
                    o.wildcard
                        .push((scheme.to_owned(), format!(".{host}"), port));
                }
                Some(_) => return Err(bad()),
                None if rest.contains('*') => return Err(bad()),
                None => o.exact.push(entry),
            }
        }
        Ok(o)
    }

    fn enabled(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    /// Whether a request with these headers may open a socket.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut values = headers.get_all(ORIGIN).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            // None at all: a non-browser client (browsers always send Origin on a
            // WebSocket handshake). More than one: refused.
            return headers.get(ORIGIN).is_none() && self.allow_missing;
        };
        let Ok(origin) = v.to_str() else {
            return false;
        };
        let origin = origin.trim().to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        let Some((scheme, hostport)) = origin.split_once("://") else {
            return false;
        };
        self.wildcard.iter().any(|(s, domain, port)| {
            let host = match hostport.strip_suffix(port.as_str()) {
                Some(h) if !port.is_empty() => h,
                // No port in the pattern: the origin must not name one.
                _ if port.is_empty() && !hostport.contains(':') => hostport,
                _ => return false,
            };
            s == scheme && host.len() > domain.len() && host.ends_with(domain.as_str())
        })
    }
}

/// A token bucket per source address (IPv6 by its /64).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Source, (f64, Instant)>>,
}

/// How many buckets are kept before full ones are forgotten (a full bucket is the same
/// as no bucket).
const MAX_BUCKETS: usize = 65_536;

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for a new connection from `ip`, or says how long until there is one.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(Source::from(ip)).or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_origin(o: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = o {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn origins_exact_wildcard_missing() {
        let list = [
            "https://app.example.com",
            "https://*.example.org",
            "http://*.local:8080",
        ]
        .map(String::from);
        let o = Origins::parse(&list, false).unwrap();
        for (origin, ok) in [
            (Some("https://app.example.com"), true),
            (Some("HTTPS://APP.EXAMPLE.COM"), true),
            (Some("https://evil.example.com"), false),
            (Some("http://app.example.com"), false),
            (Some("https://a.example.org"), true),
            (Some("https://a.b.example.org"), true),
            (Some("https://example.org"), false),
            (Some("https://a.example.org:444"), false),
            (Some("https://evilexample.org"), false),
            (Some("http://x.local:8080"), true),
            (Some("http://x.local"), false),
            (Some("null"), false),
            (None, false),
        ] {
            assert_eq!(o.allows(&with_origin(origin)), ok, "{origin:?}");
        }
        let lenient = Origins::parse(&list, true).unwrap();
        assert!(lenient.allows(&with_origin(None)));
        let mut two = with_origin(Some("https://app.example.com"));
        two.append(ORIGIN, HeaderValue::from_static("https://app.example.com"));
        assert!(!lenient.allows(&two));
        // No list: no check.
        assert!(Origins::default().allows(&with_origin(Some("https://anything"))));
        for bad in [
            "example.com",
            "https://",
            "https://a/b",
            "https://*",
            "https://a.*.com",
            "*.example.com",
        ] {
            assert!(Origins::parse(&[bad.to_owned()], true).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_refill_at_the_rate() {
        let r = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(r.take(ip, t0).is_ok());
        }
        let wait = r.take(ip, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(r.take(ip, t0 + Duration::from_millis(500)).is_ok());
        // Another source has its own bucket; an IPv6 /64 is one source.
        assert!(r.take("10.0.0.2".parse().unwrap(), t0).is_ok());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let r = RateLimiter::new(1.0, 1);
        assert!(r.take(a, t0).is_ok());
        assert!(r.take(b, t0).is_err());
        assert!(RateLimiter::new(0.0, 1).take(a, t0).is_ok());
    }
}
