//! The control plane's eyes: watchers that turn what they see into
//! [`Input`](crate::control::Input)s for the control loop. They never touch the table.
//! Each takes the [`ControlHandle`]: where to send inputs, the slots it may fill (pod
//! readiness, the TLS config), and the signal to stop on.
//!
//! - [`files`]: an overrides manifest file, or a ConfigMap mounted as a directory.
//! - [`kube`]: the ConfigMap, the StatefulSet and the EndpointSlices, through the API.
//! - [`certs`]: the TLS certificate and key, reloaded on change.

pub(crate) mod certs;
pub(crate) mod files;
pub(crate) mod jwks;
pub(crate) mod kube;
pub(crate) mod tickets;

use std::path::PathBuf;

use thiserror::Error;
use tokio::task::JoinHandle;

use crate::control::ControlHandle;

/// What the control plane watches.
#[derive(Debug, Clone, Default)]
pub struct WatchConfig {
    pub overrides: OverridesWatch,
    /// Watch this StatefulSet's `spec.replicas`.
    pub statefulset: Option<String>,
    /// Take the backend pods (address, serving, terminating) from this Service's
    /// EndpointSlices, at this port.
    pub endpoint_slices: Option<(String, u16)>,
    /// The Kubernetes namespace of the watched objects.
    pub namespace: String,
    /// The TLS certificate and key files, reloaded when they change.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// The shared session-ticket keys, swapped into their ticketer when they change.
    pub tls_tickets: Option<crate::data::tls::tickets::Tickets>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OverridesWatch {
    #[default]
    None,
    File(PathBuf),
    Dir(PathBuf),
    ConfigMap(String),
}

impl WatchConfig {
    /// Whether anything is watched through the Kubernetes API.
    pub fn needs_kube(&self) -> bool {
        matches!(self.overrides, OverridesWatch::ConfigMap(_))
            || self.statefulset.is_some()
            || self.endpoint_slices.is_some()
    }
}

#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Files(#[from] files::FileWatchError),
    #[error("the Kubernetes API is needed (for {why}) but no configuration was found (in-cluster or kubeconfig)")]
    NoKube {
        why: &'static str,
        #[source]
        source: ::kube::Error,
    },
}

/// The API client `config` needs, if any: in-cluster, else kubeconfig. Made before the
/// router binds, so a missing cluster is a configuration error like any other.
pub(crate) async fn kube_client(
    config: &WatchConfig,
) -> Result<Option<::kube::Client>, WatchError> {
    if !config.needs_kube() {
        return Ok(None);
    }
    let why = if config.statefulset.is_some() {
        "the replica count: give --replicas to run without it"
    } else {
        "the overrides ConfigMap"
    };
    ::kube::Client::try_default()
        .await
        .map(Some)
        .map_err(|source| WatchError::NoKube { why, source })
}

/// Starts every watcher `config` asks for, feeding `control`; they stop when the router
/// begins to drain. `client` is the API client to use; `None` infers one (in-cluster,
/// else kubeconfig) if anything needs it.
pub async fn start(
    config: &WatchConfig,
    control: &ControlHandle,
    client: Option<::kube::Client>,
) -> Result<Vec<JoinHandle<()>>, WatchError> {
    let mut tasks = Vec::new();
    if let (Some((cert, key)), Some(slot)) = (&config.tls_files, control.tls_slot()) {
        tasks.push(certs::spawn(cert.clone(), key.clone(), slot, control)?);
    }
    if let Some(t) = &config.tls_tickets {
        tasks.push(tickets::spawn(t.clone(), control)?);
    }
    match &config.overrides {
        OverridesWatch::File(p) => tasks.push(files::spawn(
            files::FileSource::Manifest(p.clone()),
            control.clone(),
        )?),
        OverridesWatch::Dir(d) => tasks.push(files::spawn(
            files::FileSource::Directory(d.clone()),
            control.clone(),
        )?),
        OverridesWatch::ConfigMap(_) | OverridesWatch::None => {}
    }
    if !config.needs_kube() {
        return Ok(tasks);
    }
    let client = match client {
        Some(c) => c,
        None => match kube_client(config).await? {
            Some(c) => c,
            None => return Ok(tasks),
        },
    };
    let ns = config.namespace.clone();
    if let OverridesWatch::ConfigMap(name) = &config.overrides {
        tracing::info!(configmap = %name, namespace = %ns, "watching overrides ConfigMap");
        tasks.push(tokio::spawn(kube::watch_configmap(
            client.clone(),
            ns.clone(),
            name.clone(),
            control.clone(),
        )));
    }
    if let Some(sts) = &config.statefulset {
        tracing::info!(statefulset = %sts, namespace = %ns, "watching StatefulSet replicas");
        tasks.push(tokio::spawn(kube::watch_statefulset(
            client.clone(),
            ns.clone(),
            sts.clone(),
            control.clone(),
        )));
    }
    if let Some((svc, port)) = &config.endpoint_slices {
        tracing::info!(service = %svc, namespace = %ns, "backend pods from the Service's EndpointSlices");
        tasks.push(tokio::spawn(kube::watch_endpoint_slices(
            client,
            ns,
            svc.clone(),
            *port,
            control.clone(),
        )));
    }
    Ok(tasks)
}
