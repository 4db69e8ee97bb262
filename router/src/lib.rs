//! The wsrouter daemon.
//!
//! - [`config`]: the CLI and the validated [`config::RouterConfig`].
//! - [`tls`]: PEM files or dev certificates into a rustls server config.
//! - [`admission`]: the pending and live pools: caps, byte budget, per-source limits.
//! - [`shared`]: the state every connection reads (a leaf: depends on no part of the data path).
//! - [`accept`]: accept errors backed off and logged at a bounded rate, for every listener.
//! - [`server`]: bind, accept under a cap, TLS, HTTP/1.1 with upgrades, drain.
//! - [`proxy`]: one request: route, forward the upgrade, answer, start the relay.
//! - [`relay`]: the byte relay between upgraded sockets, frame-boundary aware.
//! - [`reroute`]: opt-in 1012 closes for sockets whose tenant moved.
//! - [`frame`]: WebSocket frame boundaries from headers alone; close frames.
//! - [`control`]: the one owner of routing state: validates updates, publishes tables.
//! - [`live`]: which tenants have live sockets here.
//! - [`lifecycle`]: readiness, drain signals and the tracked tasks.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/route/{namespace}`, `/table`.
//! - [`labels`]: metric label sets (a leaf).
//! - [`metrics`]: Prometheus metrics (bounded labels).
//! - [`pods`]: which backend pods are known not ready (503 instead of a connect timeout).
//! - [`overrides_file`]: overrides from a ConfigMap manifest on disk.
//! - [`dev`]: `wsrouter dev`, the router with local echo backends.
//! - [`watch`]: watchers feeding the control loop (files, mounted ConfigMaps, the Kubernetes API).
//! - [`ops`]: `wsrouter route` and `wsrouter plan`.
//! - [`logging`]: tracing setup.
//! - [`views`]: the JSON the admin listener serves and the commands read.

mod accept;
pub mod admin;
pub mod admission;
pub mod config;
pub mod control;
pub mod dev;
pub mod frame;
pub mod labels;
pub mod lifecycle;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod overrides_file;
pub mod pods;
pub mod proxy;
pub mod relay;
pub mod reroute;
pub mod server;
mod shared;
mod sys;
pub mod tls;
pub mod tls_io;
pub mod views;
pub mod watch;

pub use server::{start, RouterHandle};
