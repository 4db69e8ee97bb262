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

mod admin;
mod commands;
mod config;
mod control;
mod daemon;
mod data;
mod logging;
mod state;

// The public surface, and all of it: what the binary (`main.rs`), the integration tests,
// the benchmarks and the fuzz targets use. Everything else is `pub(crate)` at most, and
// the `unreachable_pub` and `dead_code` lints keep it so: an item nobody outside its
// module needs cannot hide behind a `pub`.

// The binary: its command line, logging, one subcommand to its exit status.
pub use commands::dev::{start as start_dev, DevHandle};
pub use commands::exit::bad_command_line;
pub use commands::plan::{plan, plan_configmap, Current};
pub use commands::plan_sets::{SetChange, SplitPlan};
pub use commands::run;
pub use config::{
    default_admin_listen, AdminToken, AuthSetup, Cli, Command, RouterConfig, DEFAULT_CONFIGMAP,
};
pub use logging::init as init_logging;

// A router in-process, and what its handle and admin listener answer with.
pub use admin::views::{ErrorView, RouteView, TableView};
pub use admin::{ADMIN_HEADER_TIMEOUT, MAX_ADMIN_CONNECTIONS};
pub use daemon::{start, RouterHandle};

// The control plane's settings and inputs.
pub use control::overrides_file::read_overrides;
pub use control::publisher::{Input, RoutingConfig, SetConfig};
pub use control::stats::RejectReason;
pub use control::watch::kube::WATCH_RETRY_MAX;
pub use control::watch::{api_client, start as start_watch, OverridesWatch, SetWatch, WatchConfig};

// The data plane's settings, and what a test plugs into it.
pub use data::admission::auth::{
    Denied, ForwardDenied, ForwardSettings, JwtRules, JwtSettings, ServiceUrl,
};
pub use data::admission::budget::BudgetConfig;
pub use data::admission::forwarded::{TrustedProxies, Underscores};
pub use data::admission::policy::{Origins, PolicyConfig, RateLimiter};
pub use data::admission::pools::PENDING_BASE_BYTES;
pub use data::relay::drain::RerouteConfig;
pub use data::relay::pings::Ping;
pub use data::shared::limits::{HttpLimits, HttpTimers, Limits, ProxyProtocol, SocketTimers};
pub use data::shared::{Pages, Shared};
pub use data::tls::config::{client_config, load_server_config, DevCert, KeyExchange, TlsOptions};
pub use data::tls::stream::MAX_RECORD;
pub use data::tls::tickets::{SharedTicketer, TicketKeys, TicketKeysError, Tickets};
pub use data::upstream::breaker::BreakerConfig;
pub use data::upstream::pool::PoolConfig;
pub use data::upstream::tls::{BackendTls, BackendTlsError};

/// The pure parsers and scanners the fuzz targets (`fuzz/`) drive with arbitrary bytes:
/// public for them alone.
pub mod fuzzing {
    pub use crate::data::admission::forwarded::{underscore_header, Client};
    pub use crate::data::edge::proxy_protocol::{
        parse as parse_proxy_header, Proxied, MAX_HEADER, V1_MAX,
    };
    pub use crate::data::http::error::ProxyError;
    pub use crate::data::http::request::{inspect, Inspected, Kind};
    pub use crate::data::relay::frame::FrameCursor;
    pub use crate::data::relay::pings::{find_pong, match_pong, PongMatch, PongScan};
}
