//! Which tenants have live sockets on this router, and how many: what a table swap
//! reports as "moved", and what the admin API will show per tenant.
//!
//! Touched once when a relay starts and once when it ends, never per frame. Sharded by
//! the tenant's hash so concurrent opens and closes rarely meet on one lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

#[derive(Default)]
pub struct LiveTenants {
    shards: [Mutex<HashMap<Box<str>, u32>>; SHARDS],
}

impl LiveTenants {
    fn shard(&self, tenant: &str) -> MutexGuard<'_, HashMap<Box<str>, u32>> {
        let i = (wsrouter::tenant_key(tenant) % SHARDS as u64) as usize;
        // A panic while holding this lock cannot leave the counts inconsistent (each
        // update is one insert or remove), so a poisoned lock is still usable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one live socket of `tenant` until the guard drops.
    pub fn register(self: &Arc<Self>, tenant: &str) -> LiveGuard {
        *self.shard(tenant).entry(tenant.into()).or_insert(0) += 1;
        LiveGuard {
            registry: self.clone(),
            tenant: tenant.into(),
        }
    }

    /// Like [`register`](Self::register), unless `tenant` already holds `cap` sockets
    /// (checked and counted under one lock, so concurrent opens cannot overshoot).
    pub fn try_register(self: &Arc<Self>, tenant: &str, cap: Option<u32>) -> Option<LiveGuard> {
        {
            let mut shard = self.shard(tenant);
            match shard.get_mut(tenant) {
                Some(n) if cap.is_some_and(|c| *n >= c) => return None,
                // A tenant already counted keeps its key: no copy of the name made.
                Some(n) => *n += 1,
                None if cap == Some(0) => return None,
                None => {
                    shard.insert(tenant.into(), 1);
                }
            }
        }
        Some(LiveGuard {
            registry: self.clone(),
            tenant: tenant.into(),
        })
    }

    pub fn count(&self, tenant: &str) -> u32 {
        self.shard(tenant).get(tenant).copied().unwrap_or(0)
    }

    /// Every tenant with live sockets, and how many.
    pub fn snapshot(&self) -> Vec<(Box<str>, u32)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(s.iter().map(|(k, &v)| (k.clone(), v)));
        }
        out
    }
}

pub struct LiveGuard {
    registry: Arc<LiveTenants>,
    tenant: Box<str>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut shard = self.registry.shard(&self.tenant);
        if let Some(n) = shard.get_mut(&*self.tenant) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&*self.tenant);
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
}
