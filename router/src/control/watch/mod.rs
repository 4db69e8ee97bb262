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
    /// The backend sets beside the stable one that come from StatefulSets.
    pub sets: Vec<SetWatch>,
}

/// A backend set's StatefulSet, watched like the stable one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetWatch {
    pub set: wsrouter::SetId,
    /// Its `spec.replicas` is watched; its pods are `{statefulset}-{i}`.
    pub statefulset: String,
    /// Its pods from this Service's EndpointSlices, at this port (`None`: the template
    /// names them).
    pub endpoint_slices: Option<(String, u16)>,
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
            || !self.sets.is_empty()
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

/// The API client `config` needs, if any: kubeconfig, else in-cluster. Made before the
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
    let inferred = ::kube::Config::infer()
        .await
        .map_err(::kube::Error::InferConfig);
    inferred
        .and_then(api_client)
        .map(Some)
        .map_err(|source| WatchError::NoKube { why, source })
}

/// The API client the watches use, for `config`. kube's own retry of `429`, `503` and
/// `504` is turned off: it retries a request up to 15 times, from 5 ms doubling, with
/// jitter (minutes in all, longer if `Retry-After` asks), hidden from the watches, so
/// a `503` from a load balancer in front of a restarting API server kept the last
/// table that long, with no error counted or logged. Every failure reaches the watches
/// instead, which count and log it and try again within
/// [`WATCH_RETRY_MAX`](kube::WATCH_RETRY_MAX) and its jitter.
pub fn api_client(mut config: ::kube::Config) -> Result<::kube::Client, ::kube::Error> {
    config.default_retry = false;
    ::kube::Client::try_from(config)
}

/// Starts every watcher `config` asks for, feeding `control`; they stop when the router
/// begins to drain. `client` is the API client to use (build it with [`api_client`]);
/// `None` infers one (kubeconfig, else in-cluster) if anything needs it.
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
    tasks.extend(start_sets(config, control, &client));
    Ok(tasks)
}

/// The StatefulSet and EndpointSlices watches of every backend set (the stable one's as
/// its flags ask), each feeding its set's replicas and pods to the control loop.
fn start_sets(
    config: &WatchConfig,
    control: &ControlHandle,
    client: &::kube::Client,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let stable = SetWatch {
        set: wsrouter::STABLE,
        statefulset: control.statefulset().to_owned(),
        endpoint_slices: config.endpoint_slices.clone(),
    };
    let ns = &config.namespace;
    let replicas_watched = config.statefulset.is_some();
    for (set, watch_replicas) in
        std::iter::once((&stable, replicas_watched)).chain(config.sets.iter().map(|s| (s, true)))
    {
        let at = kube::SetAt {
            client: client.clone(),
            namespace: ns.clone(),
            set: set.set,
            statefulset: set.statefulset.clone(),
        };
        if watch_replicas {
            tracing::info!(statefulset = %set.statefulset, namespace = %ns, set = set.set, "watching StatefulSet replicas");
            tasks.push(tokio::spawn(kube::watch_statefulset(
                at.clone(),
                control.clone(),
            )));
        }
        if let Some((svc, port)) = &set.endpoint_slices {
            tracing::info!(service = %svc, statefulset = %set.statefulset, namespace = %ns, "backend pods from the Service's EndpointSlices");
            tasks.push(tokio::spawn(kube::watch_endpoint_slices(
                at,
                svc.clone(),
                *port,
                control.clone(),
            )));
        }
    }
    tasks
}
