//! Who may hold a connection. Two pools, each bounded on its own, so nothing that has
//! not yet sent a valid upgrade request can take a live socket's place:
//!
//! - **pending**: from accept until the request head is parsed (TLS handshake, then the
//!   HTTP head). A count cap, a byte budget for what those connections hold, and a cap
//!   per source address. When the pool is full, a pending connection is dropped to make
//!   room: the oldest of the source address that holds the most. An attacker holding
//!   slots open (silent or stalled, and reopening them as fast as the machine allows)
//!   keeps losing them, and a real client, one connection from its own address, is the
//!   last to go. A source over its own cap is refused at once instead.
//! - **live**: from the parsed request to the end of the relay (`--max-connections`),
//!   optionally per source address. Full: the client gets a 503.
//!
//! An HTTP/2 connection is pending whenever it has no live WebSocket stream: from its
//! preface to its first one, and again once its last one ends (see [`ConnStreams`]).
//! Each live stream takes its own place in the live pool, as an HTTP/1.1 socket does.
//!
//! Per-source counts key IPv4 addresses whole and IPv6 addresses by their /64, the
//! block one host usually has.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// What a pending connection is charged on admission: its task, its socket's
/// registration and rustls' handshake state (about 9 KB measured for a stalled
/// complete ClientHello, benches/RESULTS.md).
pub const PENDING_BASE_BYTES: usize = 8 << 10;
/// What reading the request head is charged: hyper's first read buffer.
pub(crate) const REQUEST_HEAD_BYTES: usize = 8 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    pub max_pending: usize,
    pub max_pending_bytes: usize,
    pub max_pending_per_ip: usize,
    pub max_live: usize,
    /// 0: no per-source cap on live connections.
    pub max_live_per_ip: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already has `--max-pending-per-ip` connections pending.
    PendingPerIp,
    /// `--max-connections` live connections.
    LiveFull,
    /// Its source already has `--max-connections-per-ip` live connections.
    LivePerIp,
    /// Its tenant already holds its cap of live sockets (`--max-connections-per-tenant`
    /// or its ConfigMap entry).
    TenantCap,
    /// Its source opened more than `--connection-rate-per-ip` allows.
    RatePerIp,
    /// Its Origin is not in `--allowed-origins`.
    Origin,
    /// The router let `--max-upgrades-per-second` through in the last second.
    UpgradeBudget,
    /// Its pod was sent `--max-upgrades-per-pod-per-second` (ramped while it warms up).
    PodUpgradeBudget,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPerIp => "pending_per_ip",
            Self::LiveFull => "live_full",
            Self::LivePerIp => "live_per_ip",
            Self::TenantCap => "tenant_cap",
            Self::RatePerIp => "rate_per_ip",
            Self::Origin => "origin",
            Self::UpgradeBudget => "upgrade_budget",
            Self::PodUpgradeBudget => "pod_upgrade_budget",
        }
    }
}

/// A source address as the per-source caps count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Source(u128);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                // The /64, with a marker bit so it cannot equal an IPv4 key.
                None => Source((u128::from(v6) >> 64) | (1 << 127)),
            },
        }
    }
}

/// Counters the pools keep for `/metrics`.
#[derive(Clone, Default)]
pub struct AdmissionStats {
    pub pending: Gauge,
    pub pending_bytes: Gauge,
    pub evicted: Counter,
}

/// The two pools. One per router; shared by every I/O thread.
pub struct Admission {
    config: AdmissionConfig,
    pending: Mutex<Pending>,
    live: Arc<Semaphore>,
    live_per_ip: Mutex<HashMap<Source, usize>>,
    stats: AdmissionStats,
    changes: crate::state::lifecycle::Changes,
}

/// One pending connection, as the pool sees it.
struct Entry {
    source: Source,
    evicted: CancellationToken,
    /// Bytes charged to it, base included.
    held: usize,
}

/// The pending pool. Every count and byte is kept here, under one lock, so an eviction
/// gives its bytes back the moment it is decided (the connection's task frees the
/// memory a moment later) and the pool never drops more than it must.
#[derive(Default)]
struct Pending {
    next_id: u64,
    /// Every pending connection, by admission number.
    entries: HashMap<u64, Entry>,
    /// Bytes charged to all of them.
    bytes: usize,
    /// Each source's pending connections, oldest first.
    by_source: HashMap<Source, VecDeque<u64>>,
    /// Sources by how many pending connections they hold, then by how old their
    /// oldest is: the last is the one to drop from.
    heaviest: BTreeSet<(usize, Reverse<u64>, Source)>,
}

impl Pending {
    fn held_by(&self, source: Source) -> usize {
        self.by_source.get(&source).map_or(0, VecDeque::len)
    }

    /// `source`'s place in `heaviest`.
    fn rank(&self, source: Source) -> Option<(usize, Reverse<u64>, Source)> {
        let q = self.by_source.get(&source)?;
        Some((q.len(), Reverse(*q.front()?), source))
    }

    /// Changes `source`'s connections, keeping its place in `heaviest` right.
    fn update(&mut self, source: Source, change: impl FnOnce(&mut VecDeque<u64>)) {
        if let Some(r) = self.rank(source) {
            self.heaviest.remove(&r);
        }
        let q = self.by_source.entry(source).or_default();
        change(q);
        if q.is_empty() {
            self.by_source.remove(&source);
        }
        if let Some(r) = self.rank(source) {
            self.heaviest.insert(r);
        }
    }

    fn insert(&mut self, id: u64, source: Source, evicted: CancellationToken) {
        self.update(source, |q| q.push_back(id));
        self.bytes += PENDING_BASE_BYTES;
        self.entries.insert(
            id,
            Entry {
                source,
                evicted,
                held: PENDING_BASE_BYTES,
            },
        );
    }

    /// Removes `id` and its bytes; its eviction token, if it was there.
    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let e = self.entries.remove(&id)?;
        self.bytes -= e.held;
        self.update(e.source, |q| q.retain(|&x| x != id));
        Some(e.evicted)
    }

    /// Counts `id` under `to` from now on, in admission order among `to`'s own.
    fn move_to(&mut self, id: u64, to: Source) {
        let Some(from) = self.entries.get(&id).map(|e| e.source) else {
            return;
        };
        self.update(from, |q| q.retain(|&x| x != id));
        self.update(to, |q| {
            let at = q.partition_point(|&x| x < id);
            q.insert(at, id);
        });
        if let Some(e) = self.entries.get_mut(&id) {
            e.source = to;
        }
    }

    /// The connection to drop for room: the oldest of the source holding the most
    /// (of equals, the one whose oldest is oldest).
    fn victim(&self) -> Option<u64> {
        let &(_, Reverse(oldest), _) = self.heaviest.last()?;
        Some(oldest)
    }
}

impl Admission {
    pub fn new(
        config: AdmissionConfig,
        stats: AdmissionStats,
        changes: crate::state::lifecycle::Changes,
    ) -> Arc<Self> {
        Arc::new(Self {
            live: Arc::new(Semaphore::new(config.max_live)),
            config,
            pending: Mutex::default(),
            live_per_ip: Mutex::default(),
            stats,
            changes,
        })
    }

    /// Connections pending now.
    pub fn pending_count(&self) -> usize {
        lock(&self.pending).entries.len()
    }

    /// Bytes charged to pending connections now.
    pub fn pending_bytes(&self) -> usize {
        lock(&self.pending).bytes
    }

    fn publish(&self, p: &Pending) {
        self.stats.pending.set(p.entries.len() as i64);
        self.stats.pending_bytes.set(p.bytes as i64);
        self.changes.note();
    }

    /// Live connections now.
    pub fn live_count(&self) -> usize {
        self.config.max_live - self.live.available_permits()
    }

    /// Admits a newly accepted connection to the pending pool, dropping another pending
    /// one if the pool is full (see the module docs for which).
    pub fn admit_pending(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, Refusal> {
        self.admit(ip, true)
    }

    /// Admits a connection from a trusted proxy, whose client is not known until its
    /// PROXY protocol header is read: no per-source cap for the proxy's own address
    /// (every client behind it shares it); [`PendingSlot::rekey`] applies the client's.
    pub fn admit_pending_from_proxy(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, Refusal> {
        self.admit(ip, false)
    }

    /// Admits a kept-alive connection back to the pending pool between its requests,
    /// under the same caps as a new one. It keeps its eviction token (never cancelled
    /// while it was not pending), so its task need not watch a new one each time.
    pub fn readmit_pending(
        self: &Arc<Self>,
        ip: IpAddr,
        evicted: CancellationToken,
    ) -> Result<PendingSlot, Refusal> {
        self.admit_with(ip, true, evicted)
    }

    fn admit(self: &Arc<Self>, ip: IpAddr, per_source_cap: bool) -> Result<PendingSlot, Refusal> {
        self.admit_with(ip, per_source_cap, CancellationToken::new())
    }

    fn admit_with(
        self: &Arc<Self>,
        ip: IpAddr,
        per_source_cap: bool,
        evicted: CancellationToken,
    ) -> Result<PendingSlot, Refusal> {
        let source = Source::from(ip);
        let id = {
            let mut p = lock(&self.pending);
            if per_source_cap && p.held_by(source) >= self.config.max_pending_per_ip {
                return Err(Refusal::PendingPerIp);
            }
            while p.entries.len() >= self.config.max_pending
                || p.bytes + PENDING_BASE_BYTES > self.config.max_pending_bytes
            {
                if !self.evict(&mut p) {
                    break;
                }
            }
            let id = p.next_id;
            p.next_id += 1;
            p.insert(id, source, evicted.clone());
            self.publish(&p);
            id
        };
        Ok(PendingSlot {
            admission: self.clone(),
            id,
            evicted,
        })
    }

    /// Drops one pending connection to make room; false if there is none.
    fn evict(&self, p: &mut Pending) -> bool {
        let Some(token) = p.victim().and_then(|id| p.remove(id)) else {
            return false;
        };
        token.cancel();
        self.stats.evicted.inc();
        true
    }

    /// A place in the live pool, for a connection whose request is parsed.
    pub fn admit_live(self: &Arc<Self>, ip: IpAddr) -> Result<LiveSlot, Refusal> {
        let source = Source::from(ip);
        let permit = self
            .live
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::LiveFull)?;
        if self.config.max_live_per_ip > 0 {
            let mut per_ip = lock(&self.live_per_ip);
            let n = per_ip.entry(source).or_default();
            if *n >= self.config.max_live_per_ip {
                return Err(Refusal::LivePerIp);
            }
            *n += 1;
        }
        self.changes.note();
        Ok(LiveSlot {
            admission: self.clone(),
            source,
            permit: Some(permit),
        })
    }
}

/// A place in the pending pool; given back when dropped.
pub struct PendingSlot {
    admission: Arc<Admission>,
    id: u64,
    evicted: CancellationToken,
}

impl PendingSlot {
    /// Cancelled when the pool dropped this connection to make room.
    pub fn evicted(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// This connection now holds `bytes` (besides its base charge). Over the budget,
    /// pending connections are dropped (as for a full pool) until it fits; this one
    /// too, if it is the one to go.
    pub fn hold(&mut self, bytes: usize) {
        let a = &self.admission;
        let mut p = lock(&a.pending);
        let Some(e) = p.entries.get_mut(&self.id) else {
            // Already dropped: its bytes are no longer counted.
            return;
        };
        let total = PENDING_BASE_BYTES + bytes;
        let before = std::mem::replace(&mut e.held, total);
        p.bytes = p.bytes - before + total;
        while p.bytes > a.config.max_pending_bytes {
            if !a.evict(&mut p) {
                break;
            }
        }
        a.publish(&p);
    }
}

impl PendingSlot {
    /// The connection turned out to be `ip`'s (a PROXY protocol header named it): it
    /// counts against `ip`'s share of the pool from now on, or is refused if `ip`
    /// already holds its share.
    pub fn rekey(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let a = &self.admission;
        let to = Source::from(ip);
        let mut p = lock(&a.pending);
        if !p.entries.contains_key(&self.id) {
            // Already dropped to make room; the connection is on its way out.
            return Ok(());
        }
        if p.entries.get(&self.id).is_some_and(|e| e.source == to) {
            return Ok(());
        }
        if p.held_by(to) >= a.config.max_pending_per_ip {
            return Err(Refusal::PendingPerIp);
        }
        p.move_to(self.id, to);
        Ok(())
    }
}

impl crate::data::tls::stream::Meter for PendingSlot {
    fn held(&mut self, bytes: usize) {
        self.hold(bytes);
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut p = lock(&a.pending);
        p.remove(self.id);
        a.publish(&p);
    }
}

/// A place in the live pool; given back when dropped.
pub struct LiveSlot {
    admission: Arc<Admission>,
    source: Source,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        if self.admission.config.max_live_per_ip > 0 {
            let mut per_ip = lock(&self.admission.live_per_ip);
            if let Some(n) = per_ip.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.source);
                }
            }
        }
        // The place is free once the permit is back: only then wake the waiters.
        drop(self.permit.take());
        self.admission.changes.note();
    }
}

/// The live WebSocket streams of one multiplexed (HTTP/2) connection, so the connection
/// knows when it has none and so belongs in the pending pool again. Each relay holds a
/// [`StreamGuard`]; its drop wakes the connection.
#[derive(Debug, Default)]
pub(crate) struct ConnStreams {
    live: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl ConnStreams {
    /// Live streams now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a stream as live until the guard drops.
    pub(crate) fn guard(self: &Arc<Self>) -> StreamGuard {
        self.live.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_one();
        StreamGuard(self.clone())
    }

    /// Resolves after a stream became live or ended (at once if one did since the last
    /// call).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }
}

/// One live stream of a [`ConnStreams`].
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<ConnStreams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The pools' maps stay consistent even if a holder panicked: every update is one step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(max_pending: usize, per_ip: usize, bytes: usize) -> Arc<Admission> {
        Admission::new(
            AdmissionConfig {
                max_pending,
                max_pending_bytes: bytes,
                max_pending_per_ip: per_ip,
                max_live: 2,
                max_live_per_ip: 1,
            },
            AdmissionStats::default(),
            Default::default(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_full_pool_drops_the_oldest_of_the_heaviest_source() {
        let a = pools(5, 10, usize::MAX);
        let lone = a.admit_pending(ip("10.0.0.1")).unwrap();
        let crowd: Vec<_> = (0..4)
            .map(|_| a.admit_pending(ip("10.0.0.2")).unwrap())
            .collect();
        let newcomer = a.admit_pending(ip("10.0.0.3")).unwrap();
        assert!(crowd[0].evicted().is_cancelled(), "the crowd's oldest goes");
        assert!(
            !lone.evicted().is_cancelled(),
            "older, but alone at its address"
        );
        assert!(!newcomer.evicted().is_cancelled());
        let _more = a.admit_pending(ip("10.0.0.4")).unwrap();
        assert!(crowd[1].evicted().is_cancelled());
        assert!(!lone.evicted().is_cancelled());
    }

    #[test]
    fn a_full_pending_pool_drops_its_oldest() {
        let a = pools(3, 10, usize::MAX);
        let s: Vec<_> = (0..3)
            .map(|i| a.admit_pending(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        let newest = a.admit_pending(ip("10.0.0.9")).unwrap();
        assert!(s[0].evicted().is_cancelled());
        assert!(!s[1].evicted().is_cancelled() && !newest.evicted().is_cancelled());
        assert_eq!(a.pending_count(), 3);
        assert_eq!(a.stats.evicted.get(), 1);
        drop(s);
        assert_eq!(a.pending_count(), 1);
        drop(newest);
        assert_eq!((a.pending_count(), a.pending_bytes()), (0, 0));
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let a = pools(100, 2, usize::MAX);
        let _x = a.admit_pending(ip("10.0.0.1")).unwrap();
        let y = a.admit_pending(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.admit_pending(ip("10.0.0.1")).err(),
            Some(Refusal::PendingPerIp)
        );
        // IPv6 counts by /64; mapped IPv4 is IPv4.
        let _v6 = a.admit_pending(ip("2001:db8::1")).unwrap();
        let _v6b = a.admit_pending(ip("2001:db8::2")).unwrap();
        assert!(a.admit_pending(ip("2001:db8::3")).is_err());
        assert!(a.admit_pending(ip("2001:db8:0:1::3")).is_ok());
        assert!(a.admit_pending(ip("::ffff:10.0.0.1")).is_err());
        drop(y);
        assert!(a.admit_pending(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn bytes_over_budget_drop_the_oldest() {
        let a = pools(100, 100, 4 * PENDING_BASE_BYTES);
        let old = a.admit_pending(ip("10.0.0.1")).unwrap();
        let mut big = a.admit_pending(ip("10.0.0.2")).unwrap();
        assert_eq!(a.pending_bytes(), 2 * PENDING_BASE_BYTES);
        big.hold(3 * PENDING_BASE_BYTES);
        assert!(old.evicted().is_cancelled(), "over budget: the oldest goes");
        assert!(!big.evicted().is_cancelled());
        big.hold(0);
        drop(old);
        assert_eq!(a.pending_bytes(), PENDING_BASE_BYTES);
    }

    #[test]
    fn a_proxied_connection_counts_against_its_client_once_known() {
        let a = pools(100, 2, usize::MAX);
        let proxy = ip("10.0.0.100");
        // The proxy's own address is not capped: every client behind it shares it.
        let mut behind: Vec<_> = (0..5)
            .map(|_| a.admit_pending_from_proxy(proxy).unwrap())
            .collect();
        assert!(
            a.admit_pending(proxy).is_err(),
            "a direct connection still is"
        );
        behind[0].rekey(ip("198.51.100.1")).unwrap();
        behind[1].rekey(ip("198.51.100.1")).unwrap();
        assert_eq!(
            behind[2].rekey(ip("198.51.100.1")),
            Err(Refusal::PendingPerIp),
            "the client's share is full"
        );
        behind[2].rekey(ip("198.51.100.2")).unwrap();
        // Re-keyed connections keep their age: the client's oldest is still behind[0].
        let crowd: Vec<_> = (0..95)
            .map(|i| {
                a.admit_pending(ip(&format!("10.1.{}.{}", i / 200, i % 200 + 1)))
                    .unwrap()
            })
            .collect();
        assert_eq!(a.pending_count(), 100);
        drop(crowd);
        drop(behind.pop());
        assert_eq!(a.pending_count(), 4);
    }

    #[test]
    fn live_pool_and_its_per_source_cap() {
        let a = pools(10, 10, usize::MAX);
        let one = a.admit_live(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit_live(ip("10.0.0.1")).err(), Some(Refusal::LivePerIp));
        let two = a.admit_live(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit_live(ip("10.0.0.3")).err(), Some(Refusal::LiveFull));
        assert_eq!(a.live_count(), 2);
        drop((one, two));
        assert!(a.admit_live(ip("10.0.0.1")).is_ok());
    }
}

#[cfg(test)]
mod churn {
    use super::*;

    /// Many addresses flooding a full pool, each reopening what it loses, their dropped
    /// connections slow to go: a client alone at its address is never the one dropped,
    /// and the pool never drops more than it must.
    #[test]
    fn a_lone_client_outlives_a_churning_flood() {
        let a = Admission::new(
            AdmissionConfig {
                max_pending: 1000,
                max_pending_bytes: 24 << 20,
                max_pending_per_ip: 64,
                max_live: 1,
                max_live_per_ip: 0,
            },
            AdmissionStats::default(),
            Default::default(),
        );
        let mut held: Vec<PendingSlot> = Vec::new();
        let mut lone = None;
        for i in 0..20_000u32 {
            let ip = IpAddr::from([127, 0, (i % 200 / 100) as u8 + 1, (i % 100) as u8 + 2]);
            if let Ok(mut s) = a.admit_pending(ip) {
                s.hold(16_000 + 16_600);
                held.push(s);
            }
            // Dropped connections go away only now and then, as their tasks get to run
            // under load: until then their memory is still held.
            if i % 500 == 0 {
                held.retain(|s| !s.evicted().is_cancelled());
            }
            if i == 5_000 {
                let mut s = a.admit_pending(IpAddr::from([127, 0, 0, 1])).unwrap();
                s.hold(2_000);
                lone = Some(s);
            }
            if let Some(s) = &lone {
                assert!(
                    !s.evicted().is_cancelled(),
                    "the lone client was dropped at {i}"
                );
            }
        }
        assert!(a.pending_count() <= 1000);
        // The byte budget binds first here (about 40 KB each): full to within one.
        let one = PENDING_BASE_BYTES + 16_000 + 16_600;
        assert!(a.pending_bytes() <= 24 << 20);
        assert!(
            a.pending_bytes() > (24 << 20) - 2 * one,
            "dropped too many: {} pending, {} bytes",
            a.pending_count(),
            a.pending_bytes()
        );
    }
}
