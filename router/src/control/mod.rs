//! The control plane: the one owner of the routing table. Watchers turn what they see
//! into [`Input`]s; the control loop validates them, builds the next table off the hot
//! path and publishes it with one store. It never touches a connection.
//!
//! - [`publisher`]: the control loop, its handle, and the routing settings.
//! - [`stats`]: the control plane's counters, and why an update was rejected.
//! - [`overrides_file`]: overrides from a ConfigMap manifest on disk.
//! - [`watch`]: the watchers: files, mounted ConfigMaps, the Kubernetes API, certificates.

pub(crate) mod overrides_file;
pub(crate) mod publisher;
pub(crate) mod stats;
pub(crate) mod watch;

pub(crate) use publisher::{
    Control, ControlHandle, ControlParts, Input, RoutingConfig, SetConfig, Slots,
};
pub(crate) use stats::ControlStats;
