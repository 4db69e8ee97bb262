//! The command line (every flag also read from a `WSROUTER_*` variable) and the validated
//! [`RouterConfig`] it becomes. Everything is checked here, before any socket is bound.
//!
//! One group of flags per plane, each in its own file with its defaults written once
//! (its `Default`, which `--help` shows) and a pure conversion to the settings that
//! plane's code takes: [`edge`] (the pools, caps and timeouts before a request is
//! admitted, PROXY protocol), [`tls`], [`requests`] (tenant naming and the request
//! rules), [`upstream`] (backend timeout, circuit breaker), [`http`] (the forwarded
//! requests' body limits and keep-alive pool), [`sockets`] (the relay's
//! timers), [`lifecycle`] (drains, stall threshold), [`admin`], and `serve`'s
//! [`routing`]. [`common`] groups the ones `serve` and `dev` share; [`serve`] is the
//! one step that reads files and the pod's environment.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod common;
pub(crate) mod dev;
pub(crate) mod edge;
mod error;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod ops;
pub(crate) mod requests;
pub(crate) mod routing;
pub(crate) mod serve;
pub(crate) mod sockets;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod values;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wsrouter::PathPrefix;

pub use self::admin::{default_admin_listen, AdminToken};
pub(crate) use self::dev::DevArgs;
pub(crate) use self::error::ConfigError;
pub(crate) use self::ops::{CertArgs, PlanArgs, RouteArgs};
pub use self::routing::DEFAULT_CONFIGMAP;
pub(crate) use self::serve::ServeArgs;
use crate::control::RoutingConfig;
use crate::data::relay::drain::RerouteConfig;
use crate::data::shared::limits::Limits;
pub(crate) use crate::logging::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "wsrouter",
    version,
    about = "Hash-routing WebSocket reverse proxy for Kubernetes StatefulSets"
)]
pub struct Cli {
    /// Log format: human-readable lines or one JSON object per event. Levels come from RUST_LOG.
    #[arg(long, global = true, env = "WSROUTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Threads serving connections, each with its own event loop and listener (SO_REUSEPORT) [default: the CPUs this process may use]
    #[arg(long, global = true, env = "WSROUTER_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the router (what the Deployment runs).
    // Every flag's help on its own line, in every heading's section alike (clap would
    // choose per section).
    #[command(next_line_help = true)]
    Serve(Box<ServeArgs>),
    /// Run the router with local echo backends and a self-signed certificate: no cluster, no setup.
    #[command(next_line_help = true)]
    Dev(Box<DevArgs>),
    /// Write a dev CA and a server certificate signed by it (ca.crt, tls.crt, tls.key).
    Cert(CertArgs),
    /// Where a namespace routes, by the routing contract alone (no router needed).
    Route(RouteArgs),
    /// What an overrides edit or a scale would move, before it is applied.
    Plan(PlanArgs),
}

/// Everything the router needs to run, validated.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub listen: SocketAddr,
    /// `None` serves plaintext ws://.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub admin_listen: Option<SocketAddr>,
    pub path_prefix: PathPrefix,
    pub drain_grace: Duration,
    pub limits: Limits,
    pub routing: RoutingConfig,
    /// Close moved tenants' sockets with 1012 (`--reroute-drain`); `None`: never.
    pub reroute: Option<RerouteConfig>,
    /// Threads serving connections, each with its own event loop and its own
    /// SO_REUSEPORT listener (`--workers`). 0: serve on the caller's runtime.
    pub io_threads: usize,
    /// Plain pages on the WebSocket listener (`wsrouter dev`); `None` for `serve`.
    pub pages: Option<Arc<dyn crate::data::shared::Pages>>,
    /// The bearer token the admin listener asks for, but on `/healthz`, `/readyz` and
    /// `/metrics` (`--admin-token`); `None`: no token asked.
    pub admin_token: Option<AdminToken>,
    /// Identity at the door (`--auth jwt`); `None` lets everyone in.
    pub auth: Option<AuthSetup>,
    /// An authorization service asked first (`--auth forward:URL`).
    pub forward_auth: Option<crate::data::admission::auth::ForwardSettings>,
    /// TLS to the pods (`--backend-tls`), its CA and client certificate read.
    pub backend_tls: Option<Arc<crate::data::upstream::tls::BackendTls>>,
}

/// `--auth jwt`, its keys read: the door, and the key file its watcher follows.
#[derive(Clone)]
pub struct AuthSetup {
    pub(crate) auth: Arc<crate::data::admission::auth::Auth>,
    pub jwks: std::path::PathBuf,
}

impl std::fmt::Debug for AuthSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSetup")
            .field("settings", &self.auth.settings)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl AuthSetup {
    /// The door for `settings`, its keys read from `jwks` now (a bad file is an error
    /// of the start, named).
    pub fn load(
        settings: crate::data::admission::auth::JwtSettings,
        jwks: std::path::PathBuf,
    ) -> Result<Self, ConfigError> {
        let keys = crate::control::watch::jwks::read_keys(&jwks).map_err(ConfigError::Jwks)?;
        let auth = Arc::new(crate::data::admission::auth::Auth::new(settings, keys));
        Ok(Self { auth, jwks })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod defaults_tests;
