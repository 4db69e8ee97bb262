//! The control plane: the one owner of the routing table. Watchers turn what they see
//! into [`Input`]s; the control loop validates them, builds the next table off the hot
//! path and publishes it with one store. It never touches a connection.
//!
//! - [`publisher`]: the control loop, its handle, and the routing settings.
//! - [`stats`]: the control plane's counters, and why an update was rejected.
//! - [`overrides_file`]: overrides from a ConfigMap manifest on disk.
//! - [`watch`]: the watchers: files, mounted ConfigMaps, the Kubernetes API, certificates.

pub mod overrides_file;
pub mod publisher;
pub mod stats;
pub mod watch;

pub use publisher::{Applied, Control, ControlHandle, ControlParts, Input, RoutingConfig, Slots};
pub use stats::{ControlStats, RejectReason};
