//! The cost of one `RateLimiter::take`, the work an I/O thread does under the lock every
//! I/O thread shares before it admits a connection:
//!
//! - `present_10k`: a source that already has a bucket, among 10,000 others (the map
//!   under half its cap: no sweep).
//! - `present_at_cap`: the same among 65,535 others still refilling (the map at its cap).
//!   The old code swept the whole map on every call once it was at the cap.
//! - `churn_limited`: a new source on every call, 200,000 addresses in turn (IPv6 /64s),
//!   each bucket still refilling when its address comes round again: an attacker keeping
//!   more addresses busy than the map holds. The old code swept the whole map on every
//!   such call.
//! - `churn_refilling`: the same, but buckets refill between visits: the old code's sweep
//!   then cleared the map, so its mean stays low. Hidden in that mean is one whole-map
//!   sweep every few tens of thousands of calls, a call costing about what
//!   `present_at_cap/old` costs every time.
//!
//! `old` is a copy of the algorithm that was replaced, kept here only so one run shows
//! both. The clock is virtual: each call is 1 µs after the last.
use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use router::RateLimiter;

/// How many addresses cycle through the map.
const SOURCES: u32 = 200_000;
const TICK: Duration = Duration::from_micros(1);

/// A distinct IPv6 /64 for each `i` (the limiter keys IPv6 by its /64).
fn net64(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8_u128 << 96) | (u128::from(i) << 64) | 1,
    ))
}

/// THE OLD CODE, for comparison only: `RateLimiter` as it was before the bounded sweep,
/// with `Source` inlined. Once the map held `MAX_BUCKETS`, every `take` swept all of it.
mod old {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    const MAX_BUCKETS: usize = 65_536;

    /// `router::Source`, which is crate-private.
    fn source(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => (u128::from(v6) >> 64) | (1 << 127),
            },
        }
    }

    pub(crate) struct RateLimiter {
        rate: f64,
        burst: f64,
        buckets: Mutex<HashMap<u128, (f64, Instant)>>,
    }

    impl RateLimiter {
        pub(crate) fn new(rate: f64, burst: u32) -> Self {
            Self {
                rate,
                burst: f64::from(burst.max(1)),
                buckets: Mutex::default(),
            }
        }

        /// Setup only: the map `take` would leave had each of `ips` taken one token at
        /// `now` and none refilled, without the sweeps that would find nothing to
        /// forget on the way (200,000 of those take minutes).
        pub(crate) fn fill(&self, ips: impl Iterator<Item = IpAddr>, now: Instant) {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            for ip in ips {
                buckets.insert(source(ip), (self.burst - 1.0, now));
            }
        }

        pub(crate) fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
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
            let (tokens, at) = buckets.entry(source(ip)).or_insert((self.burst, now));
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
}

/// Calls `take` on the next of `SOURCES` addresses in turn, 1 µs after the last call.
fn cycle(
    take: impl Fn(IpAddr, Instant) -> Result<(), Duration>,
    start: Instant,
    first: u32,
) -> impl FnMut() -> Result<(), Duration> {
    let (mut now, mut i) = (start, first);
    move || {
        now += TICK;
        i = (i + 1) % SOURCES;
        take(black_box(net64(i)), now)
    }
}

fn present(c: &mut Criterion) {
    // A slow rate, so the others stay mid-refill (not forgotten) for the whole run.
    let (rate, burst) = (0.01, 20);
    let t0 = Instant::now();
    let hot = net64(SOURCES);
    for (name, others) in [("present_10k", 10_000), ("present_at_cap", 65_535)] {
        let mut g = c.benchmark_group(format!("rate_limiter/{name}"));
        let new = RateLimiter::new(rate, burst);
        for i in 0..others {
            let _ = new.take(net64(i), t0);
        }
        let mut now = t0;
        g.bench_function("new", |b| {
            b.iter(|| {
                now += TICK;
                black_box(new.take(black_box(hot), now))
            })
        });
        let old = old::RateLimiter::new(rate, burst);
        old.fill((0..others).map(net64), t0);
        let mut now = t0;
        if others >= 65_535 {
            // Each old call sweeps the whole map: fewer samples, or the run takes minutes.
            g.sample_size(20);
        }
        g.bench_function("old", |b| {
            b.iter(|| {
                now += TICK;
                black_box(old.take(black_box(hot), now))
            })
        });
        g.finish();
    }
}

fn churn_limited(c: &mut Criterion) {
    // A bucket refills 0.2 of a token while the other 199,999 addresses take their turn:
    // it is never full again, so nothing is forgotten for being full.
    let (rate, burst) = (1.0, 20);
    let t0 = Instant::now();
    let mut g = c.benchmark_group("rate_limiter/churn_limited_200k");
    let new = RateLimiter::new(rate, burst);
    let mut warm = cycle(|ip, now| new.take(ip, now), t0, 0);
    for _ in 0..SOURCES {
        let _ = warm();
    }
    let mut next = cycle(|ip, now| new.take(ip, now), t0 + TICK * SOURCES, 0);
    g.bench_function("new", |b| b.iter(|| black_box(next())));
    // Each old call sweeps 200,000 buckets: fewer samples, or the run takes minutes.
    g.sample_size(20);
    let old = old::RateLimiter::new(rate, burst);
    old.fill((0..SOURCES).map(net64), t0);
    let mut next = cycle(|ip, now| old.take(ip, now), t0, 0);
    g.bench_function("old", |b| b.iter(|| black_box(next())));
    g.finish();
}

fn churn_refilling(c: &mut Criterion) {
    // A bucket is full again 10 ms (10,000 calls) after its one token was taken.
    let (rate, burst) = (100.0, 20);
    let t0 = Instant::now();
    let mut g = c.benchmark_group("rate_limiter/churn_refilling_200k");
    let new = RateLimiter::new(rate, burst);
    let mut next = cycle(|ip, now| new.take(ip, now), t0, 0);
    for _ in 0..SOURCES {
        let _ = next();
    }
    g.bench_function("new", |b| b.iter(|| black_box(next())));
    let old = old::RateLimiter::new(rate, burst);
    let mut next = cycle(|ip, now| old.take(ip, now), t0, 0);
    for _ in 0..SOURCES {
        let _ = next();
    }
    g.bench_function("old", |b| b.iter(|| black_box(next())));
    g.finish();
}

criterion_group!(benches, present, churn_limited, churn_refilling);
criterion_main!(benches);
