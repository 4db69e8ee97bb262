//! Tokens already verified, per I/O thread. A client sends the same token with every
//! request and every reconnect (a SignalR long poll, a Socket.IO poll, a browser that
//! comes back): checking its signature again costs 60–80 µs of CPU (P-256 or RSA 2048,
//! `benches/auth_cost.sh`), twice what the router spends on the whole plain request.
//!
//! Only good tokens are kept, each under the key set it was verified with: a key set
//! swapped in (a key rotated out) makes every entry a miss. A hit is checked for expiry
//! again; which tenant the token opens is always checked by the caller. One cache per
//! thread, so a lookup takes no lock; bounded, and emptied when full (an attacker cannot
//! fill it with tokens that do not verify).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::data::admission::auth::jwt::Grant;

/// Entries per thread before it is emptied.
const CAPACITY: usize = 1024;

/// Token → the key set generation it was verified under, and its grant.
type Verified = HashMap<Box<str>, (u64, Arc<Grant>)>;

thread_local! {
    static VERIFIED: RefCell<Verified> = RefCell::new(HashMap::new());
}

/// The grant of `token` if it was verified under key set `generation` on this thread.
pub(crate) fn get(generation: u64, token: &str) -> Option<Arc<Grant>> {
    VERIFIED.with(|v| {
        let v = v.borrow();
        let (verified_under, grant) = v.get(token)?;
        (*verified_under == generation).then(|| grant.clone())
    })
}

/// Keeps a token verified under key set `generation`.
pub(crate) fn put(generation: u64, token: &str, grant: Arc<Grant>) {
    VERIFIED.with(|v| {
        let mut v = v.borrow_mut();
        if v.len() >= CAPACITY {
            v.clear();
        }
        v.insert(token.into(), (generation, grant));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires: u64) -> Arc<Grant> {
        Arc::new(Grant {
            expires,
            claims: serde_json::Map::new(),
            header: None,
        })
    }

    #[test]
    fn a_token_is_found_under_its_key_set_only() {
        put(7, "a.b.c", grant(10));
        assert_eq!(get(7, "a.b.c").map(|g| g.expires), Some(10));
        assert!(get(8, "a.b.c").is_none());
        assert!(get(7, "a.b.d").is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        for i in 0..(CAPACITY * 3) {
            put(1, &format!("t{i}"), grant(1));
        }
        VERIFIED.with(|v| assert!(v.borrow().len() <= CAPACITY));
    }
}
