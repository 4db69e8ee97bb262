//! `wsrouter serve`'s flags, and the one step that reads the world for them: the pod's
//! environment, the overrides file and the certificate. Everything else is the planes'
//! pure conversions.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::Args;
use wsrouter::{ConfigMapData, TableSource};

use super::admin::ServeAdminArgs;
use super::common::CommonArgs;
use super::routing::RoutingArgs;
use super::tls::TlsFiles;
use super::{ConfigError, RouterConfig};
use crate::control::overrides_file;
use crate::control::watch::{OverridesWatch, WatchConfig};
use crate::control::RoutingConfig;
use crate::data::tls::config as tls;

/// Where the service account's namespace is mounted in every pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The WebSocket listener's port, for `serve` and `dev` alike.
pub(crate) const WSS_PORT: u16 = 8443;

/// `serve`'s WebSocket listener unless told: every interface (a pod's only one).
const SERVE_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), WSS_PORT);

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServeArgs {
    /// Address of the WebSocket listener.
    #[arg(long, env = "WSROUTER_LISTEN", default_value_t = SERVE_LISTEN, help_heading = "Edge")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls_files: TlsFiles,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub admin: ServeAdminArgs,
}

impl Default for ServeArgs {
    /// Every group's defaults; clap asks for the certificate or `--plaintext` besides.
    fn default() -> Self {
        Self {
            listen: SERVE_LISTEN,
            tls_files: TlsFiles::default(),
            routing: RoutingArgs::default(),
            common: CommonArgs::default(),
            admin: ServeAdminArgs::default(),
        }
    }
}

impl ServeArgs {
    /// Validates the flags and reads the files they name: the router's config, and what
    /// its control plane watches.
    pub fn into_config(self) -> Result<(RouterConfig, WatchConfig), ConfigError> {
        let limits = self.common.limits()?;
        let path_prefix = self.common.requests.path_prefix()?;
        let namespace = self
            .routing
            .pod_namespace
            .clone()
            .unwrap_or_else(pod_namespace);
        // kubelet sets this in every pod; its absence means "not in a cluster".
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let mut resolved = self.routing.resolve(namespace, in_cluster)?;
        let (initial, source, await_overrides) =
            initial_overrides(&resolved.watch.overrides, &self.routing.statefulset)?;
        resolved.watch.tls_files = self.tls_files.files();
        let mut options = self.common.tls.tls_options();
        if resolved.watch.tls_files.is_some() {
            resolved.watch.tls_tickets = self.common.tls.tickets()?;
            options.tickets = resolved
                .watch
                .tls_tickets
                .as_ref()
                .map(|t| t.ticketer.clone());
        }
        let tls = match &resolved.watch.tls_files {
            Some((cert, key)) => {
                Some(tls::load_server_config(cert, key, &options).map_err(ConfigError::Tls)?)
            }
            None => None,
        };
        let pod_ip = std::env::var("POD_IP").ok();
        let config = RouterConfig {
            io_threads: 0,
            pages: None,
            listen: self.listen,
            tls,
            admin_listen: Some(self.admin.admin_listen(pod_ip.as_deref())),
            admin_token: self.common.admin.admin_token()?,
            auth: self.common.auth()?,
            forward_auth: self.common.forward_auth()?,
            backend_tls: self.common.upstream.backend_tls()?,
            path_prefix,
            drain_grace: self.common.lifecycle.drain_grace(),
            reroute: self.common.lifecycle.reroute(),
            limits,
            routing: RoutingConfig {
                backends: resolved.backends,
                statefulset: self.routing.statefulset,
                replicas: resolved.replicas,
                overrides: initial.overrides,
                limits: initial.limits,
                source,
                await_overrides,
                stable_set: self.routing.stable_set,
                sets: resolved.sets,
                split: initial.split,
            },
        };
        Ok((config, resolved.watch))
    }
}

/// The overrides (and per-tenant settings) known at start, where they came from, and
/// whether to wait for a first read of a watched source before routing anything.
fn initial_overrides(
    watch: &OverridesWatch,
    statefulset: &str,
) -> Result<(ConfigMapData, TableSource, bool), ConfigError> {
    Ok(match watch {
        // A local file is read now: a bad one is a configuration error.
        OverridesWatch::File(path) => (
            overrides_file::read_configmap(path, statefulset)
                .map_err(ConfigError::OverridesFile)?,
            TableSource::File {
                path: path.display().to_string(),
            },
            false,
        ),
        OverridesWatch::Dir(_) | OverridesWatch::ConfigMap(_) => {
            (Default::default(), TableSource::Flags, true)
        }
        OverridesWatch::None => (Default::default(), TableSource::Flags, false),
    })
}

/// The pod's namespace: `$POD_NAMESPACE`, then the service account's, then `default`.
fn pod_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "default".to_owned())
}
