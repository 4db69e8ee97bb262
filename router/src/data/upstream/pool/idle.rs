//! Each thread's idle connections, per pool and per pod: taken newest first (the warmest,
//! and the oldest are left to age out), closed once past the idle timeout, found closed
//! by their backend, or of a pod no longer routed to.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use super::{PoolConfig, PoolMetrics, ReqBody, Settings};

/// A connection to a backend and the requests it has carried.
pub(super) struct Conn {
    pub(super) sender: SendRequest<ReqBody>,
    pub(super) requests: u32,
}

impl Conn {
    pub(super) fn new(sender: SendRequest<ReqBody>) -> Self {
        Self {
            sender,
            requests: 0,
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One pool's idle connections on this thread, with its own copy of the pool's settings
/// so giving a connection back touches nothing another thread shares.
struct Local {
    id: u64,
    /// Whether the pool is still in use: a pool dropped leaves its idle sets to be
    /// closed by the next sweep of another pool on the thread (or the thread's end).
    owner: Weak<Settings>,
    config: PoolConfig,
    metrics: PoolMetrics,
    /// Oldest first, per pod.
    pods: HashMap<SocketAddr, VecDeque<Idle>, BuildHasherDefault<AddrHasher>>,
    count: usize,
}

/// The idle map's hash of a pod's address. The addresses come from the routing table
/// (the operator's), never from a client, so the map needs no keyed hash against
/// flooding: a multiply and a rotate per word (FxHash's), where std's SipHash cost some
/// 240 instructions a lookup, and every plain request looks twice (take and give back).
#[derive(Default)]
struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(4);
        for w in &mut words {
            self.add(u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])));
        }
        for &b in words.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// The product's high bits mixed down: the map picks its bucket from the low ones.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

thread_local! {
    static POOLS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's idle set of the pool `id`, if it has one. Never panics: a
/// thread ending, or (it cannot, but) a set already borrowed, gives `None`.
fn with<R>(id: u64, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    POOLS
        .try_with(|p| {
            let mut pools = p.try_borrow_mut().ok()?;
            pools.iter_mut().find(|l| l.id == id).map(f)
        })
        .ok()
        .flatten()
}

/// As [`with`], making the set on the pool's first use on this thread.
fn with_or_new<R>(s: &Arc<Settings>, f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    POOLS
        .try_with(|p| {
            let mut pools = p.try_borrow_mut().ok()?;
            let at = match pools.iter().position(|l| l.id == s.id) {
                Some(at) => at,
                None => {
                    pools.push(Local::new(s));
                    pools.len() - 1
                }
            };
            Some(f(&mut pools[at]))
        })
        .ok()
        .flatten()
}

/// A ready idle connection to `addr`, closing on the way those past the idle timeout or
/// closed by the backend.
pub(super) fn take(s: &Arc<Settings>, addr: SocketAddr, now: Instant) -> Option<Conn> {
    with_or_new(s, |l| l.take(addr, now)).flatten()
}

/// Gives a connection back to this thread's idle set of pool `id`, unless it may carry
/// no more requests, its backend closed it, or the pod has idle connections enough.
pub(super) fn put(id: u64, addr: SocketAddr, conn: Conn) {
    let _ = with(id, |l| l.put(addr, conn, Instant::now()));
}

pub(super) fn sweep(s: &Arc<Settings>) -> usize {
    let now = Instant::now();
    let _ = POOLS.try_with(|p| {
        if let Ok(mut pools) = p.try_borrow_mut() {
            // Pools no longer in use: their idle connections close with them.
            pools.retain(|l| l.owner.strong_count() > 0);
        }
    });
    with(s.id, |l| l.sweep(now)).unwrap_or(0)
}

pub(super) fn retain(s: &Arc<Settings>, keep: impl FnMut(&SocketAddr) -> bool) -> usize {
    with(s.id, |l| l.retain(keep)).unwrap_or(0)
}

impl Local {
    fn new(s: &Arc<Settings>) -> Self {
        Self {
            id: s.id,
            owner: Arc::downgrade(s),
            config: s.config,
            metrics: s.metrics.clone(),
            pods: HashMap::default(),
            count: 0,
        }
    }

    fn take(&mut self, addr: SocketAddr, now: Instant) -> Option<Conn> {
        let timeout = self.config.idle_timeout;
        let queue = self.pods.get_mut(&addr)?;
        let before = queue.len();
        while queue
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= timeout)
        {
            queue.pop_front();
        }
        let mut found = None;
        for at in (0..queue.len()).rev() {
            let sender = &queue[at].conn.sender;
            if sender.is_ready() {
                found = queue.remove(at).map(|i| i.conn);
                break;
            }
            if sender.is_closed() {
                queue.remove(at);
            }
            // Else still busy with its last exchange (given back as the response
            // ended, before its task had moved on, or with the request body still
            // going out): kept for a later checkout.
        }
        let gone = before - queue.len();
        if queue.is_empty() {
            self.pods.remove(&addr);
        }
        self.forget(self.count - gone, gone - usize::from(found.is_some()));
        found
    }

    fn put(&mut self, addr: SocketAddr, conn: Conn, now: Instant) {
        if conn.requests >= self.config.max_requests_per_conn || conn.sender.is_closed() {
            return;
        }
        let queue = self.pods.entry(addr).or_default();
        if queue.len() >= self.config.max_idle_per_pod {
            return;
        }
        queue.push_back(Idle { conn, since: now });
        self.count += 1;
        self.metrics.idle.inc();
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let timeout = self.config.idle_timeout;
        let before = self.count;
        self.pods.retain(|_, queue| {
            queue.retain(|i| now.duration_since(i.since) < timeout && !i.conn.sender.is_closed());
            !queue.is_empty()
        });
        let after = self.pods.values().map(VecDeque::len).sum();
        self.forget(after, before - after);
        before - after
    }

    fn retain(&mut self, mut keep: impl FnMut(&SocketAddr) -> bool) -> usize {
        let before = self.count;
        self.pods.retain(|addr, _| keep(addr));
        let after = self.pods.values().map(VecDeque::len).sum();
        self.forget(after, before - after);
        before - after
    }

    /// Counts `closed` idle connections gone and the set now holding `left`.
    fn forget(&mut self, left: usize, closed: usize) {
        let gone = self.count - left;
        self.count = left;
        self.metrics.idle.dec_by(gone as i64);
        self.metrics.closed_idle.inc_by(closed as u64);
    }
}

impl Drop for Local {
    /// The thread ended, or its pool is no longer used: its idle connections close.
    fn drop(&mut self) {
        self.forget(0, self.count);
    }
}

#[cfg(test)]
pub(super) fn closed(s: &Arc<Settings>, addr: SocketAddr) -> usize {
    with(s.id, |l| {
        l.pods.get(&addr).map_or(0, |q| {
            q.iter().filter(|i| i.conn.sender.is_closed()).count()
        })
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn pod_addresses_hash_apart() {
        let hasher = BuildHasherDefault::<AddrHasher>::default();
        let mut seen = std::collections::HashSet::new();
        let mut low = std::collections::HashSet::new();
        for port in 19001..19101u16 {
            for ip in ["127.0.0.1", "10.0.3.7", "::1", "fd00::3:7"] {
                let addr = SocketAddr::new(ip.parse().unwrap_or_else(|e| panic!("{e}")), port);
                let h = hasher.hash_one(addr);
                assert!(seen.insert(h), "{addr} collides");
                low.insert(h & 0x3ff);
            }
        }
        // 400 addresses over 1,024 buckets: spread, not piled on a few.
        assert!(low.len() > 300, "{} distinct buckets", low.len());
        let mut map: HashMap<SocketAddr, u16, BuildHasherDefault<AddrHasher>> = HashMap::default();
        for port in 1..=500u16 {
            map.insert(SocketAddr::from(([127, 0, 0, 1], port)), port);
        }
        assert!((1..=500u16).all(|p| map.get(&SocketAddr::from(([127, 0, 0, 1], p))) == Some(&p)));
    }
}
