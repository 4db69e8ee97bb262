//! Each thread's idle connections, per pool and per pod: taken newest first (the warmest,
//! and the oldest are left to age out), closed once past the idle timeout, found closed
//! by their backend, or of a pod no longer routed to.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
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
    pods: HashMap<SocketAddr, VecDeque<Idle>>,
    count: usize,
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
            pods: HashMap::new(),
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
