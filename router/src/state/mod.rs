//! What the planes share and none owns alone. A leaf: nothing here uses another part of
//! this crate, so the data path, the control plane and the admin listener can all hold
//! these without depending on each other.
//!
//! - [`heartbeat`]: each I/O thread's last turn of its event loop, for liveness.
//! - [`lifecycle`]: readiness, the drain signals, the tracked tasks, change notifications.
//! - [`tenants`]: which tenants have live sockets here (the relay writes, the control
//!   loop and the admin views read).
//! - [`thread_load`]: live connections per I/O thread, and where a new one should run.
//! - [`labels`]: bounded metric label sets, so each component labels its own series.

pub(crate) mod heartbeat;
pub(crate) mod labels;
pub(crate) mod lifecycle;
pub(crate) mod tenants;
pub(crate) mod thread_load;
