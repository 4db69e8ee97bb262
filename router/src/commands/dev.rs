//! `wsrouter dev`: the real router, on loopback, in front of in-process echo backends,
//! with a certificate made at start. No cluster, no files to prepare.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use thiserror::Error;
use wsrouter::{Backends, ConfigMapData, PathPrefix, TableSource, TenantFrom};

use super::exit::{config_error, failure};
use crate::config::{ConfigError, DevArgs, RouterConfig};
use crate::control::overrides_file::read_configmap;
use crate::control::watch::{self, files::FileSource};
use crate::control::{RoutingConfig, SetConfig};
use crate::daemon::{self, RouterHandle, ServerError};
use crate::data::tls::config::{DevCert, TlsError};

/// The StatefulSet name the dev backends pretend to be, so override targets read as in a
/// cluster (`backend-2`).
const DEV_STATEFULSET: &str = crate::config::routing::DEFAULT_STATEFULSET;

/// The second backend set `dev` starts (`--canary-backends`), and its pods' StatefulSet.
const DEV_CANARY_SET: &str = "v2";
const DEV_CANARY: &str = "backend-v2";

#[derive(Debug, Error)]
pub enum DevError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("dev certificate")]
    Tls(#[from] TlsError),
    #[error("starting echo backend {ordinal}")]
    Backend {
        ordinal: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Watch(#[from] watch::files::FileWatchError),
}

pub struct DevHandle {
    pub router: RouterHandle,
    pub backends: Vec<backend::EchoHandle>,
    pub cert: DevCert,
    /// Where the dev CA certificate was written, for clients that want to verify.
    pub ca_file: Option<PathBuf>,
}

/// `wsrouter dev`: the router with in-process echo backends, until signalled.
pub(crate) async fn run(args: DevArgs, io_threads: usize) -> ExitCode {
    match start(args, io_threads).await {
        Ok(dev) => {
            println!("{}", dev.banner());
            // Backends live as long as the router; they drop after it drains.
            let backends = dev.backends;
            let r = super::serve::until_signals(dev.router).await;
            drop(backends);
            r
        }
        Err(DevError::Config(e)) => config_error(&e),
        Err(e) => failure("starting wsrouter dev", &e),
    }
}

pub async fn start(args: DevArgs, io_threads: usize) -> Result<DevHandle, DevError> {
    let mut limits = args.common.limits()?;
    // Dev is for seeing the routing work: every 101 says which table routed it.
    limits.policy.route_headers = true;
    let path_prefix = args.common.requests.path_prefix()?;
    // The backends read the tenant where the router does, so the `ns` they report (and
    // the path they answer on: `…/events`, `…/hub`) is the tenant the router routed on.
    let interval = args.interval.get();
    let from = &limits.policy.tenant_from;
    let mut backends = start_backends(
        DEV_STATEFULSET,
        args.backend_count,
        interval,
        &path_prefix,
        from,
    )
    .await?;
    let canaries =
        start_backends(DEV_CANARY, args.canary_count, interval, &path_prefix, from).await?;
    // Read the overrides (if any) before the listener binds: a bad file is a config error.
    let routing = routing(&backends, &canaries, args.overrides_file.as_deref())?;
    backends.extend(canaries);
    let cert = DevCert::generate(&["localhost", "127.0.0.1", "::1"])?;
    let tickets = args.common.tls.tickets()?;
    let mut tls = args.common.tls.tls_options();
    tls.tickets = tickets.as_ref().map(|t| t.ticketer.clone());
    let router = daemon::start(RouterConfig {
        pages: Some(std::sync::Arc::new(super::dev_page::DevPage)),
        io_threads,
        listen: args.listen,
        tls: Some(cert.server_config(&tls)?),
        admin_listen: Some(args.admin_listen),
        admin_token: args.common.admin.admin_token()?,
        auth: args.common.auth()?,
        forward_auth: args.common.forward_auth()?,
        backend_tls: args.common.upstream.backend_tls()?,
        path_prefix,
        drain_grace: args.common.lifecycle.drain_grace(),
        reroute: args.common.lifecycle.reroute(),
        limits,
        routing,
    })
    .await?;
    // Edit the file to reroute live: the same watcher `serve --overrides-file` uses.
    if let Some(p) = &args.overrides_file {
        watch::files::spawn(FileSource::Manifest(p.clone()), router.control())?;
    }
    if let Some(t) = tickets {
        watch::tickets::spawn(t, &router.control())?;
    }
    let ca_file = write_ca(&cert, router.local_addr().port());
    Ok(DevHandle {
        router,
        backends,
        cert,
        ca_file,
    })
}

/// `count` echo backends on loopback, named as the pods of StatefulSet `statefulset`.
async fn start_backends(
    statefulset: &str,
    count: u32,
    interval: Duration,
    path_prefix: &PathPrefix,
    tenant_from: &TenantFrom,
) -> Result<Vec<backend::EchoHandle>, DevError> {
    let mut backends = Vec::new();
    for ordinal in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| DevError::Backend { ordinal, source })?;
        let mut cfg = backend::EchoConfig::new(format!("{statefulset}-{ordinal}"))
            .with_interval(interval)
            .with_tenant_from(tenant_from.clone());
        cfg.path_prefix = path_prefix.clone();
        backends.push(
            backend::serve(listener, cfg)
                .map_err(|source| DevError::Backend { ordinal, source })?,
        );
    }
    Ok(backends)
}

/// The echo backends as a static list, the canaries as set `v2` beside them, with the
/// overrides file's entries (and split) if one is given.
fn routing(
    backends: &[backend::EchoHandle],
    canaries: &[backend::EchoHandle],
    overrides_file: Option<&Path>,
) -> Result<RoutingConfig, ConfigError> {
    let list = |b: &[backend::EchoHandle]| {
        let addrs = b.iter().map(|b| b.local_addr().to_string()).collect();
        Backends::static_list(addrs).map_err(ConfigError::Backends)
    };
    let stable = list(backends)?;
    let replicas = stable.fixed_replicas().ok_or(ConfigError::ZeroReplicas)?;
    let (data, source) = match overrides_file {
        Some(p) => (
            read_configmap(p, DEV_STATEFULSET).map_err(ConfigError::OverridesFile)?,
            TableSource::File {
                path: p.display().to_string(),
            },
        ),
        None => (ConfigMapData::default(), TableSource::Flags),
    };
    let sets = match canaries {
        [] => Vec::new(),
        _ => vec![SetConfig {
            name: DEV_CANARY_SET.to_owned(),
            replicas: Some(canaries.len() as u32),
            backends: list(canaries)?,
        }],
    };
    Ok(RoutingConfig {
        statefulset: DEV_STATEFULSET.to_owned(),
        overrides: data.overrides,
        limits: data.limits,
        split: data.split,
        sets,
        source,
        ..RoutingConfig::fixed(stable, replicas)
    })
}

/// The CA is public material; writing it lets curl or a browser verify if wanted.
fn write_ca(cert: &DevCert, port: u16) -> Option<PathBuf> {
    let path = std::env::temp_dir().join(format!("wsrouter-dev-ca-{port}.pem"));
    std::fs::write(&path, &cert.ca_pem).ok().map(|()| path)
}

impl DevHandle {
    /// What to print so a newcomer can try it.
    pub fn banner(&self) -> String {
        let addr = self.router.local_addr();
        let Some(table) = self.router.current_table() else {
            return format!("wsrouter dev: wss://{addr}/ws/{{namespace}} (no routing table yet)\n");
        };
        let mut out = format!(
            "wsrouter dev: wss://{addr}/ws/{{namespace}} → {} echo backends\n",
            self.backends.len()
        );
        for (s, set) in table.sets().iter().enumerate() {
            let pod = |i: u32| match s {
                0 => format!("{DEV_STATEFULSET}-{i}"),
                _ => format!("{DEV_CANARY}-{i}"),
            };
            out.push_str(&format!("  set {}:\n", set.name()));
            for (i, a) in (0..).zip(set.backends()) {
                let a = a.address().unwrap_or_default();
                out.push_str(&format!("    {}  {a}\n", pod(i)));
            }
        }
        for ns in ["ns-01", "acme-prod"] {
            let r = table.route(ns);
            let set = table.set(r.set).name();
            out.push_str(&format!("  {ns} routes to set {set}, pod {}\n", r.ordinal));
        }
        if table.sets().len() > 1 {
            out.push_str(
                "  (a canary: canary.set: v2 and canary.weight: \"50\" in the overrides file)\n",
            );
        }
        out.push_str(&format!(
            "\npage: https://localhost:{}/ (the dev CA below, or accept the warning)\n",
            addr.port()
        ));
        out.push_str(&format!("\ntry:\n  websocat -k wss://{addr}/ws/ns-01\n"));
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!(
                "  (or verify: SSL_CERT_FILE={} websocat wss://localhost:{}/ws/ns-01)\n",
                ca.display(),
                addr.port()
            ));
        }
        if let Some(admin) = self.router.admin_addr() {
            out.push_str(&format!("admin: http://{admin}/readyz\n"));
        }
        out.push_str("Ctrl-C to stop.\n");
        out
    }
}
