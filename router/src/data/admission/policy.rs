//! Who may open a socket, decided from the request before any backend is touched: the
//! Origin allowlist (`403`), a new-connection rate per source address (`429`), and a
//! cap on one tenant's live sockets (`429`; the count lives in `state::tenants`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, ORIGIN};
use thiserror::Error;
use wsrouter::TenantFrom;

use crate::data::admission::forwarded::{TrustedProxies, Underscores};
use crate::data::admission::pools::Source;

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
    /// New upgrades per second, in all and per pod, and the new pods' ramp.
    pub budget: crate::data::admission::budget::BudgetConfig,
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
            budget: crate::data::admission::budget::BudgetConfig::default(),
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
///
/// A bucket that has refilled to `burst` is the same as no bucket, so full buckets are
/// forgotten. Finding them is spread over the calls: once the map is half full, each
/// `take` that adds a bucket examines at most [`SWEEP_PER_TAKE`] others, never the whole
/// map, because `take` runs on an I/O thread under a lock every I/O thread shares, and
/// an attacker with many addresses (IPv6 /64s are cheap) decides how big the map gets.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// The most buckets kept: [`MAX_BUCKETS`], smaller in tests.
    cap: usize,
    /// How many buckets the map holds before `take` sweeps: half the cap (see `take`).
    sweep_from: usize,
    buckets: Mutex<Buckets>,
}

/// The most buckets kept (a few MB). The map only gets near it when that many sources
/// have opened connections recently enough that their buckets are still refilling.
const MAX_BUCKETS: usize = 65_536;

/// How many buckets a `take` that adds one examines. Looking at several per bucket added
/// lets the sweep outpace arrivals whenever buckets do refill, while the work under the
/// lock stays a handful of hash lookups.
const SWEEP_PER_TAKE: usize = 8;

#[derive(Default)]
struct Buckets {
    /// Tokens left, and when they were counted.
    tokens: HashMap<Source, (f64, Instant)>,
    /// Every key of `tokens` exactly once, in the order the sweep comes to them: a source
    /// joins the back when its bucket is made, and goes back there each time the sweep
    /// finds its bucket still refilling. One entry per bucket (not one per `take`) keeps
    /// this as bounded as the map.
    queue: VecDeque<Source>,
    /// How many buckets the last `take` examined: the bound the tests check.
    #[cfg(test)]
    examined: usize,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            cap: MAX_BUCKETS,
            sweep_from: MAX_BUCKETS / 2,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for a new connection from `ip`, or says how long until there is one.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let source = Source::from(ip);
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut *guard;
        #[cfg(test)]
        {
            b.examined = 0;
        }
        if let Some(bucket) = b.tokens.get_mut(&source) {
            return self.spend(bucket, now);
        }
        // A new bucket: the call that grows the map pays to keep it bounded, so a source
        // that already has one never waits for the sweep. Below half the cap the map is
        // left alone: the usual case, a few thousand recent clients, pays nothing (each
        // bucket examined is a likely cache miss). From there every new bucket brings a
        // sweep, so full ones are forgotten well before the cap, and reaching it means
        // that many sources really are being limited at once.
        let nearest_full = if b.tokens.len() >= self.sweep_from {
            self.sweep(b, now)
        } else {
            None
        };
        if b.tokens.len() >= self.cap {
            Self::make_room(b, nearest_full);
        }
        b.queue.push_back(source);
        self.spend(b.tokens.entry(source).or_insert((self.burst, now)), now)
    }

    /// Refills `bucket` to `now` and takes a token from it if it has one.
    fn spend(&self, (tokens, at): &mut (f64, Instant), now: Instant) -> Result<(), Duration> {
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            // `try_`: a rate so small that the wait overflows a Duration must not panic
            // under the lock; it waits "forever".
            Err(Duration::try_from_secs_f64((1.0 - refilled) / self.rate).unwrap_or(Duration::MAX))
        }
    }

    /// Examines up to [`SWEEP_PER_TAKE`] buckets from the front of the queue: forgets the
    /// full ones and sends the others to the back. Returns where, in the queue, the
    /// examined bucket nearest to full now is, for [`Self::make_room`].
    fn sweep(&self, b: &mut Buckets, now: Instant) -> Option<usize> {
        // (place among those sent back, tokens it would have now)
        let mut nearest: Option<(usize, f64)> = None;
        let mut sent_back = 0;
        // No more than the queue holds, so no bucket is examined twice in one call.
        let n = SWEEP_PER_TAKE.min(b.queue.len());
        for _ in 0..n {
            let Some(source) = b.queue.pop_front() else {
                break;
            };
            // A queued source always has a bucket; if one ever did not, dropping it from
            // the queue is the repair.
            let Entry::Occupied(bucket) = b.tokens.entry(source) else {
                continue;
            };
            let (tokens, at) = *bucket.get();
            // The test the old whole-map sweep applied: full means `take` would see
            // exactly `burst`, as it does for a source with no bucket.
            let refilled = tokens + now.duration_since(at).as_secs_f64() * self.rate;
            if refilled >= self.burst {
                bucket.remove();
            } else {
                if nearest.is_none_or(|(_, most)| refilled > most) {
                    nearest = Some((sent_back, refilled));
                }
                b.queue.push_back(source);
                sent_back += 1;
            }
        }
        #[cfg(test)]
        {
            b.examined = n;
        }
        // Those sent back are the last `sent_back` in the queue, in the order examined.
        nearest.map(|(place, _)| b.queue.len() - sent_back + place)
    }

    /// The map is at the cap and a source with no bucket wants one, and the sweep found
    /// nothing full: every bucket it looked at is still refilling, which means that many
    /// sources are being limited right now (an attacker keeping its addresses busy).
    ///
    /// Forget the examined bucket nearest to full. Its source gets a full burst back a
    /// little early: `burst - refilled` tokens, the fewest among those examined. That
    /// is no more than any new address gets, and an attacker who fills the map has more
    /// addresses than buckets, so it gains nothing it could not get by moving to a fresh
    /// one; a real client whose bucket goes is only treated more leniently. The other
    /// bounded choice, refusing sources without a bucket while the map is full, would
    /// let that same attacker lock every new client out: the rate limit would become the
    /// denial of service. What does get through still meets the pending and live pools'
    /// caps. Removing it from near the back of the queue moves at most
    /// [`SWEEP_PER_TAKE`] entries.
    fn make_room(b: &mut Buckets, nearest_full: Option<usize>) {
        let victim = match nearest_full {
            Some(place) => b.queue.remove(place),
            // Nothing examined was still refilling: only if the queue had lost track of
            // buckets. The oldest in the queue goes instead.
            None => b.queue.pop_front(),
        };
        if let Some(victim) = victim {
            b.tokens.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::net::Ipv6Addr;

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

    impl RateLimiter {
        fn with_cap(rate: f64, burst: u32, cap: usize) -> Self {
            Self {
                cap,
                sweep_from: cap / 2,
                ..Self::new(rate, burst)
            }
        }

        /// (buckets, queue length, buckets the last `take` examined)
        fn sizes(&self) -> (usize, usize, usize) {
            let b = self.buckets.lock().unwrap();
            (b.tokens.len(), b.queue.len(), b.examined)
        }
    }

    /// A distinct IPv6 /64 for each `i`, with host bits that vary.
    fn net64(i: u32) -> IpAddr {
        let prefix = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64);
        IpAddr::V6(Ipv6Addr::from(
            prefix | u128::from(i.wrapping_mul(2_654_435_761)),
        ))
    }

    /// The old limiter with no forgetting at all: what every answer must match.
    struct Reference {
        rate: f64,
        burst: f64,
        buckets: HashMap<Source, (f64, Instant)>,
    }

    impl Reference {
        fn take(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
            let (tokens, at) = self
                .buckets
                .entry(Source::from(ip))
                .or_insert((self.burst, now));
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

    #[test]
    fn forgetting_full_buckets_changes_no_answer() {
        let (rate, burst) = (5.0, 3);
        // The sweep on every new bucket, and a cap the map never reaches, where a bucket
        // still refilling could be forgotten (checked below).
        let cap = 10_000;
        let r = RateLimiter {
            sweep_from: 0,
            ..RateLimiter::with_cap(rate, burst, cap)
        };
        let mut reference = Reference {
            rate,
            burst: f64::from(burst),
            buckets: HashMap::new(),
        };
        let mut now = Instant::now();
        // xorshift: a fixed, varied mix of sources and gaps.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut refused = 0;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sources 0..2^17, the low ones far more often (log-uniform): some always
            // refused, some full long before they come back, and in between many whose
            // buckets are nearly full when the sweep meets them, which is where forgetting
            // too early would show.
            let n = (x % (1 << ((x >> 59) % 17))) as u32;
            // IPv4 sources, and IPv6 hosts three to a /64 (one bucket between them).
            let ip = if n.is_multiple_of(2) {
                IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8])
            } else {
                let host = u128::from(x >> 40) % 3;
                IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0db8_u128 << 96) | (u128::from(n) << 64) | host,
                ))
            };
            now += Duration::from_micros((x >> 32) % 2_000);
            let got = r.take(ip, now);
            assert_eq!(got, reference.take(ip, now), "call {i}, {ip}");
            refused += usize::from(got.is_err());
            let (buckets, queued, _) = r.sizes();
            assert_eq!(buckets, queued);
            assert!(buckets < cap, "call {i}: {buckets}");
        }
        // Both paths were taken: many refusals, and most buckets forgotten by the sweep
        // (the reference keeps every source it has seen).
        assert!(refused > 10_000, "{refused}");
        let seen = reference.buckets.len();
        assert!(r.sizes().0 < seen / 10, "{:?} of {seen}", r.sizes());
    }

    #[test]
    fn work_per_call_is_bounded() {
        let r = RateLimiter::new(1.0, 20);
        let t0 = Instant::now();
        let mut most = 0;
        // 200,000 new sources at one instant: nothing refills, so past the cap every call
        // has to make room. Then again 30 s later, when every bucket is full.
        for now in [t0, t0 + Duration::from_secs(30)] {
            for i in 0..200_000 {
                assert!(r.take(net64(i), now).is_ok());
                let examined = r.sizes().2;
                assert!(examined <= SWEEP_PER_TAKE, "call {i}: {examined}");
                most = most.max(examined);
            }
        }
        assert_eq!(most, SWEEP_PER_TAKE);
    }

    #[test]
    fn memory_stays_bounded_by_the_cap() {
        let r = RateLimiter::new(1.0, 2);
        let now = Instant::now();
        // Every source spends its whole burst: no bucket is anywhere near full.
        for i in 0..200_000 {
            let ip = net64(i);
            assert!(r.take(ip, now).is_ok());
            assert!(r.take(ip, now).is_ok());
            assert!(r.take(ip, now).is_err());
            let (buckets, queued, _) = r.sizes();
            assert!(buckets <= MAX_BUCKETS, "call {i}: {buckets}");
            assert_eq!(buckets, queued);
        }
        assert_eq!(r.sizes().0, MAX_BUCKETS);
    }

    #[test]
    fn at_the_cap_the_bucket_nearest_full_is_forgotten() {
        let r = RateLimiter::with_cap(1.0, 4, 3);
        let t0 = Instant::now();
        let [a, b, c, d] = [1, 2, 3, 4].map(|i| IpAddr::from([192, 0, 2, i]));
        let spend = |ip, n| (0..n).for_each(|_| assert!(r.take(ip, t0).is_ok()));
        spend(a, 4);
        spend(b, 1);
        spend(c, 2);
        // The map is full and nothing in it is: b, with the most tokens left, goes.
        spend(d, 1);
        assert_eq!(r.sizes().0, 3);
        // a and c kept their buckets.
        assert_eq!(r.take(a, t0), Err(Duration::from_secs(1)));
        spend(c, 2);
        assert!(r.take(c, t0).is_err());
        // b starts again with a full burst (and d, nearest full now, makes room for it).
        spend(b, 4);
        assert_eq!(r.sizes().0, 3);
        assert!(r.take(b, t0).is_err());
        spend(d, 4);
        assert!(r.take(d, t0).is_err());
    }
}
