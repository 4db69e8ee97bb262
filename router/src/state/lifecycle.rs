//! The router's lifecycle: readiness, the drain signals, and the tasks that hold it open.
//!
//! hyper stops tracking a connection once it is upgraded, so every connection task and
//! every relay is spawned on one [`TaskTracker`]; "tracker empty" means drained.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Wakes whoever waits for the router's state to change: readiness, the listener, the
/// pools, a relay's end, a certificate reload, pod readiness. Tests and tools wait on it
/// (with a bound) instead of polling.
///
/// Noting a change is on the data path (every pool change, every relay's end), so with
/// nobody waiting it costs one atomic load, not the notifier's lock.
#[derive(Clone, Debug, Default)]
pub struct Changes(Arc<ChangesInner>);

#[derive(Debug, Default)]
struct ChangesInner {
    notify: Notify,
    waiters: std::sync::atomic::AtomicUsize,
}

/// Counts a waiter for as long as it waits, however its wait ends.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Changes {
    pub fn note(&self) {
        if self.0.waiters.load(Ordering::SeqCst) > 0 {
            self.0.notify.notify_waiters();
        }
    }

    /// Returns once `cond` holds, checking it again after every change.
    pub async fn until(&self, mut cond: impl FnMut() -> bool) {
        self.0.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.0.waiters);
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a change between the two is not missed.
            notified.as_mut().enable();
            if cond() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    /// SIGTERM: stop accepting, fail readiness.
    pub stop_accepting: CancellationToken,
    /// The grace period is over: every live socket gets close 1001.
    pub close_tunnels: CancellationToken,
    /// Every connection and relay task.
    pub tasks: TaskTracker,
    pub changes: Changes,
    readiness: Arc<Readiness>,
}

#[derive(Default)]
struct Readiness {
    table_loaded: AtomicBool,
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// A lifecycle whose changes wake `changes`' waiters.
    pub(crate) fn with_changes(changes: Changes) -> Self {
        Self {
            changes,
            ..Self::default()
        }
    }

    pub(crate) fn set_table_loaded(&self) {
        self.readiness.table_loaded.store(true, Ordering::Release);
        self.changes.note();
    }

    pub(crate) fn set_listening(&self) {
        self.readiness.listening.store(true, Ordering::Release);
        self.changes.note();
    }

    /// Every listener has closed (the drain began).
    pub(crate) fn set_listener_closed(&self) {
        self.readiness.listening.store(false, Ordering::Release);
        self.changes.note();
    }

    pub(crate) fn is_listening(&self) -> bool {
        self.readiness.listening.load(Ordering::Acquire)
    }

    pub(crate) fn set_draining(&self) {
        self.readiness.draining.store(true, Ordering::Release);
        self.changes.note();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.readiness.draining.load(Ordering::Acquire)
    }

    /// Ready for traffic: a table is loaded, the listener is bound, and not draining.
    pub(crate) fn is_ready(&self) -> bool {
        let r = &self.readiness;
        r.table_loaded.load(Ordering::Acquire)
            && r.listening.load(Ordering::Acquire)
            && !self.is_draining()
    }
}
