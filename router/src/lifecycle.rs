//! The router's lifecycle: readiness, the drain signals, and the tasks that hold it open.
//!
//! hyper stops tracking a connection once it is upgraded, so every connection task and
//! every relay is spawned on one [`TaskTracker`]; "tracker empty" means drained.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Lifecycle {
    /// SIGTERM: stop accepting, fail readiness.
    pub stop_accepting: CancellationToken,
    /// The grace period is over: every live socket gets close 1001.
    pub close_tunnels: CancellationToken,
    /// Every connection and relay task.
    pub tasks: TaskTracker,
    readiness: Arc<Readiness>,
}

#[derive(Default)]
struct Readiness {
    table_loaded: AtomicBool,
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn set_table_loaded(&self) {
        self.readiness.table_loaded.store(true, Ordering::Release);
    }

    pub fn set_listening(&self) {
        self.readiness.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.readiness.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.readiness.draining.load(Ordering::Acquire)
    }

    /// Ready for traffic: a table is loaded, the listener is bound, and not draining.
    pub fn is_ready(&self) -> bool {
        let r = &self.readiness;
        r.table_loaded.load(Ordering::Acquire)
            && r.listening.load(Ordering::Acquire)
            && !self.is_draining()
    }
}
