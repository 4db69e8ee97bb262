//! `wsrouter dev`'s flags: its own listeners on loopback and echo backends, and every
//! plane's shared flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::admin::default_admin_listen;
use super::common::CommonArgs;
use super::serve::WSS_PORT;
use super::values::Span;

/// `dev`'s flags. Their defaults are [`DevArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct DevArgs {
    /// How many in-process echo backends to start.
    #[arg(long = "backends", env = "WSROUTER_DEV_BACKENDS", default_value_t = DevArgs::default().backend_count, value_parser = clap::value_parser!(u32).range(1..=256), help_heading = "Dev")]
    pub backend_count: u32,
    /// How many echo backends to start as a second backend set, `v2` (`backend-v2-{i}`), for trying a canary: `canary.set: v2` in the overrides file (0: none).
    #[arg(long = "canary-backends", env = "WSROUTER_DEV_CANARY_BACKENDS", default_value_t = DevArgs::default().canary_count, value_parser = clap::value_parser!(u32).range(0..=256), help_heading = "Dev")]
    pub canary_count: u32,
    /// Time between the echo backends' counter messages.
    #[arg(long, env = "WSROUTER_DEV_INTERVAL", default_value_t = DevArgs::default().interval, help_heading = "Dev")]
    pub interval: Span,
    /// A ConfigMap manifest of overrides (namespace → "2" or "backend-2"), watched: edit it to reroute live.
    #[arg(long, env = "WSROUTER_OVERRIDES_FILE", help_heading = "Dev")]
    pub overrides_file: Option<PathBuf>,
    /// Address of the WebSocket (wss://) listener.
    #[arg(long, env = "WSROUTER_DEV_LISTEN", default_value_t = DevArgs::default().listen, help_heading = "Edge")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address of the admin listener.
    #[arg(
        long,
        env = "WSROUTER_DEV_ADMIN_LISTEN",
        default_value_t = DevArgs::default().admin_listen,
        help_heading = "Admin"
    )]
    pub admin_listen: SocketAddr,
}

impl Default for DevArgs {
    /// `dev`'s defaults: the one place they are written (`--help` shows these);
    /// everything on loopback.
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), WSS_PORT),
            admin_listen: default_admin_listen(None),
            backend_count: 4,
            canary_count: 2,
            interval: Span::secs(1),
            overrides_file: None,
            common: CommonArgs::default(),
        }
    }
}
