//! The wsrouter daemon and its operator commands. The folders are the architecture:
//! each plane depends only on the ones listed after it (`router/tests/layout.rs` fails
//! on an import that goes the other way, or on any cycle).
//!
//! - [`commands`]: `serve`, `dev`, `route`, `plan`, `cert`: what the binary runs.
//! - [`daemon`]: the composition root: builds the shared state, starts the control
//!   loop, the data path's listeners and the admin listener, and drains them.
//! - [`config`]: the command line, validated into each plane's own settings.
//! - [`admin`]: the admin listener, the metrics registry, the typed JSON views.
//! - [`control`]: the control loop that owns the routing table, and the watchers
//!   (files, Kubernetes, certificates) that feed it.
//! - [`data`]: the data path: accept, TLS, the upgrade, the relay.
//! - [`state`]: what the planes share and none owns alone: lifecycle, live tenants,
//!   pod readiness, metric labels. Depends on nothing in this crate.
//! - [`logging`]: tracing setup and error chains. Depends on nothing in this crate.

// No function over 60 lines outside tests (`clippy.toml` sets the count): a step that
// long is two steps. `router/tests/layout.rs` holds files to 700 lines.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod admin;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod data;
pub mod logging;
pub mod state;

pub use daemon::{start, RouterHandle};
