//! Which tenants have live sockets on this router, and how many: what a table swap
//! reports as "moved", and what the admin API will show per tenant.
//!
//! Touched once when a relay starts and once when it ends, never per frame, and once
//! each way per forwarded plain request. Sharded by the tenant's hash so concurrent
//! opens and closes rarely meet on one lock.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;

const SHARDS: usize = 16;

/// One tenant's count. The name is shared with its guards, so a request or socket of
/// a tenant already counted copies nothing, and one of a new tenant copies it once.
struct Entry {
    hash: u64,
    tenant: Arc<str>,
    count: u32,
}

/// Keyed by the tenant's hash, computed once per register and kept by the guard: a
/// plain request registers and drops one per request, so each is one hash, one lock
/// and one probe. The hash is keyed at random per process (not the routing hash, which
/// anyone can compute): tenant names are the clients' choice, and names picked to share
/// buckets would make every register scan them under the shard's lock.
#[derive(Default)]
pub struct LiveTenants {
    shards: [Mutex<HashTable<Entry>>; SHARDS],
    hasher: RandomState,
}

impl LiveTenants {
    fn hash(&self, tenant: &str) -> u64 {
        self.hasher.hash_one(tenant)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, HashTable<Entry>> {
        // Bits the table does not use for its buckets (the low ones) or its tags (the
        // top seven), so a shard's entries still spread over its buckets.
        let i = ((hash >> 32) % SHARDS as u64) as usize;
        // A panic while holding this lock cannot leave the counts inconsistent (each
        // update is one insert, change or remove), so a poisoned lock is still usable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one live socket of `tenant` until the guard drops.
    #[cfg(test)]
    pub fn register(self: &Arc<Self>, tenant: &str) -> Option<LiveGuard> {
        self.try_register(tenant, None)
    }

    /// Counts one live socket or request of `tenant` until the guard drops, unless
    /// `tenant` already holds `cap` (checked and counted under one lock, so concurrent
    /// opens cannot overshoot).
    pub fn try_register(self: &Arc<Self>, tenant: &str, cap: Option<u32>) -> Option<LiveGuard> {
        let hash = self.hash(tenant);
        let name = {
            let mut shard = self.shard(hash);
            match shard.find_mut(hash, |e| *e.tenant == *tenant) {
                Some(e) if cap.is_some_and(|c| e.count >= c) => return None,
                Some(e) => {
                    e.count += 1;
                    e.tenant.clone()
                }
                None if cap == Some(0) => return None,
                None => {
                    let name: Arc<str> = tenant.into();
                    let entry = Entry {
                        hash,
                        tenant: name.clone(),
                        count: 1,
                    };
                    shard.insert_unique(hash, entry, |e| e.hash);
                    name
                }
            }
        };
        Some(LiveGuard {
            registry: self.clone(),
            tenant: name,
            hash,
        })
    }

    pub fn count(&self, tenant: &str) -> u32 {
        let hash = self.hash(tenant);
        self.shard(hash)
            .find(hash, |e| *e.tenant == *tenant)
            .map_or(0, |e| e.count)
    }

    /// Every tenant with live sockets, and how many.
    pub fn snapshot(&self) -> Vec<(Box<str>, u32)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(s.iter().map(|e| (Box::from(&*e.tenant), e.count)));
        }
        out
    }
}

pub struct LiveGuard {
    registry: Arc<LiveTenants>,
    /// The entry's own name: an entry lives while any guard of its tenant does, so
    /// the guard finds it by pointer.
    tenant: Arc<str>,
    hash: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut shard = self.registry.shard(self.hash);
        if let Ok(mut entry) = shard.find_entry(self.hash, |e| Arc::ptr_eq(&e.tenant, &self.tenant))
        {
            let e = entry.get_mut();
            e.count -= 1;
            if e.count == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_guards() {
        let live = Arc::new(LiveTenants::default());
        let a1 = live.register("a");
        let a2 = live.register("a");
        let b = live.register("b");
        assert_eq!(
            (live.count("a"), live.count("b"), live.count("c")),
            (2, 1, 0)
        );
        drop(a1);
        assert_eq!(live.count("a"), 1);
        let mut snap = live.snapshot();
        snap.sort();
        assert_eq!(snap, vec![("a".into(), 1), ("b".into(), 1)]);
        drop((a2, b));
        assert!(live.snapshot().is_empty());
        let c1 = live.try_register("c", Some(2));
        let c2 = live.try_register("c", Some(2));
        assert!(c1.is_some() && c2.is_some());
        assert!(live.try_register("c", Some(2)).is_none());
        assert!(live.try_register("c", None).is_some());
        drop(c1);
        assert_eq!(live.count("c"), 1);
        assert!(live.try_register("c", Some(2)).is_some());
        // A cap of 0 admits none, counted or not.
        assert!(live.try_register("d", Some(0)).is_none());
        assert_eq!(live.count("d"), 0);
    }

    #[test]
    fn many_tenants_grow_and_empty_every_shard() {
        let live = Arc::new(LiveTenants::default());
        let names: Vec<String> = (0..2000).map(|i| format!("tenant-{i}")).collect();
        let first: Vec<_> = names.iter().map(|n| live.register(n)).collect();
        let second: Vec<_> = names.iter().map(|n| live.register(n)).collect();
        assert!(names.iter().all(|n| live.count(n) == 2));
        assert_eq!(live.snapshot().len(), names.len());
        drop(first);
        assert!(names.iter().all(|n| live.count(n) == 1));
        drop(second);
        assert!(live.snapshot().is_empty());
        assert!(live
            .shards
            .iter()
            .all(|s| s.lock().is_ok_and(|t| t.is_empty())));
    }
}
