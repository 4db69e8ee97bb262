//! Routing (`serve`): how ordinals become backend addresses (a list or a template),
//! how many there are, and where the overrides come from; what the control plane must
//! watch follows from them. Pure: the pod's namespace and whether it runs in a cluster
//! are the caller's to find out, and the overrides file is read by the caller.

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::Args;
use wsrouter::backends::DEFAULT_TEMPLATE;
use wsrouter::{validate_namespace, BackendTemplate, Backends, Members, SetId, DEFAULT_STABLE_SET};

use super::ConfigError;
use crate::control::watch::{OverridesWatch, SetWatch, WatchConfig};
use crate::control::SetConfig;

/// The variable that holds the number of backend pods, wherever a command takes it
/// (`serve --replicas`, `route --replicas`): one name, one meaning.
pub(crate) const REPLICAS_ENV: &str = "WSROUTER_REPLICAS";

/// The backend StatefulSet's name unless told (`serve`, `route`, `plan`, and `dev`'s
/// pretend pods).
pub(crate) const DEFAULT_STATEFULSET: &str = "backend";

/// The ConfigMap watched through the API when running in a cluster and no other
/// overrides source is given.
pub const DEFAULT_CONFIGMAP: &str = "wsrouter-overrides";

/// `serve`'s routing flags. Their defaults are [`RoutingArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "Routing")]
pub struct RoutingArgs {
    /// A backend address HOST:PORT; repeat it, ordinal = position (WSROUTER_BACKEND takes a comma list).
    #[arg(
        long = "backend",
        env = "WSROUTER_BACKEND",
        value_delimiter = ',',
        conflicts_with = "backend_template"
    )]
    pub backends: Vec<String>,
    /// Backend address template with {statefulset}, {i}, {service}, {namespace}; used when no --backend is given.
    #[arg(long, env = "WSROUTER_BACKEND_TEMPLATE", default_value_t = RoutingArgs::default().backend_template)]
    pub backend_template: String,
    /// Number of backend pods; without it (and with a template) the StatefulSet's spec.replicas is watched.
    #[arg(long, env = REPLICAS_ENV)]
    pub replicas: Option<u32>,
    /// The backend StatefulSet's name: fills {statefulset} and names pods in override targets.
    #[arg(long, env = "WSROUTER_STATEFULSET", default_value_t = RoutingArgs::default().statefulset)]
    pub statefulset: String,
    /// The backends' headless Service: fills {service}.
    #[arg(long, env = "WSROUTER_SERVICE", default_value_t = RoutingArgs::default().service)]
    pub service: String,
    /// Kubernetes namespace of the backends: fills {namespace} [default: $POD_NAMESPACE, then the service account's]
    #[arg(long, env = "WSROUTER_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Overrides from a ConfigMap manifest file (data: namespace → "3" or "backend-3"), watched.
    #[arg(long, env = "WSROUTER_OVERRIDES_FILE", conflicts_with_all = ["overrides_dir", "configmap"])]
    pub overrides_file: Option<PathBuf>,
    /// Overrides from a ConfigMap mounted as a volume (one file per key), watched.
    #[arg(long, env = "WSROUTER_OVERRIDES_DIR", conflicts_with = "configmap")]
    pub overrides_dir: Option<PathBuf>,
    /// Overrides from this ConfigMap, watched through the Kubernetes API [default in a cluster: wsrouter-overrides]
    #[arg(long, env = "WSROUTER_CONFIGMAP")]
    pub configmap: Option<String>,
    /// The name of the backend set above (the stable version): what canary.set and set.<namespace> call it, and its metrics' set label.
    #[arg(long, env = "WSROUTER_STABLE_SET", default_value_t = RoutingArgs::default().stable_set)]
    pub stable_set: String,
    /// Another backend set (a version beside the stable one), NAME=HOST:PORT,HOST:PORT; repeat it (WSROUTER_BACKEND_SET takes a ';' list).
    #[arg(
        long = "backend-set",
        env = "WSROUTER_BACKEND_SET",
        value_delimiter = ';',
        value_name = "NAME=HOST:PORT,..."
    )]
    pub backend_sets: Vec<String>,
    /// Another backend set from a StatefulSet, NAME=STATEFULSET[/SERVICE]: its replicas watched, its pods from SERVICE's EndpointSlices (--service by default); repeat it.
    #[arg(
        long = "backend-set-statefulset",
        env = "WSROUTER_BACKEND_SET_STATEFULSET",
        value_delimiter = ',',
        value_name = "NAME=STATEFULSET[/SERVICE]"
    )]
    pub backend_set_statefulsets: Vec<String>,
}

impl Default for RoutingArgs {
    /// The routing defaults: the one place they are written (`--help` shows these); the
    /// others depend on where the router runs and are resolved by [`RoutingArgs::plan`].
    fn default() -> Self {
        Self {
            backends: Vec::new(),
            backend_template: DEFAULT_TEMPLATE.to_owned(),
            replicas: None,
            statefulset: DEFAULT_STATEFULSET.to_owned(),
            service: "backend".to_owned(),
            pod_namespace: None,
            overrides_file: None,
            overrides_dir: None,
            configmap: None,
            stable_set: DEFAULT_STABLE_SET.to_owned(),
            backend_sets: Vec::new(),
            backend_set_statefulsets: Vec::new(),
        }
    }
}

/// What the routing flags decide before any file is read.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) backends: Backends,
    /// Fixed by the flags; `None`: the StatefulSet's is watched.
    pub(crate) replicas: Option<NonZeroU32>,
    /// What the control plane watches; its `tls_files` are the TLS plane's to fill.
    pub(crate) watch: WatchConfig,
    /// The backend sets beside the stable one, in flag order (`--backend-set` first).
    pub(crate) sets: Vec<SetConfig>,
}

impl RoutingArgs {
    /// The backends, the replica count and what to watch, for a router in `namespace`
    /// (`--pod-namespace` or the pod's, resolved by the caller), `in_cluster` or not.
    pub(crate) fn resolve(
        &self,
        namespace: String,
        in_cluster: bool,
    ) -> Result<Resolved, ConfigError> {
        let templated = self.backends.is_empty();
        let (backends, replicas) = self.backends_and_replicas(&namespace)?;
        let mut watch = WatchConfig {
            overrides: self.overrides_watch(in_cluster),
            statefulset: replicas.is_none().then(|| self.statefulset.clone()),
            endpoint_slices: None,
            namespace,
            tls_files: None,
            tls_tickets: None,
            sets: Vec::new(),
        };
        // Cluster mode: with the API at hand, the pods come from the Service's
        // EndpointSlices (address, serving, terminating) and no connection resolves a
        // name; the template gives only the port. Without it, the template's names are
        // resolved per connection.
        let backends = match backends {
            Backends::Template(t) if templated && (watch.needs_kube() || in_cluster) => {
                watch.endpoint_slices = Some((self.service.clone(), t.port()));
                Backends::Pods(Members::default())
            }
            other => other,
        };
        let sets = self.sets(&backends, &mut watch)?;
        Ok(Resolved {
            backends,
            replicas,
            watch,
            sets,
        })
    }

    /// The sets beside the stable one: static lists (`--backend-set`), then StatefulSets
    /// (`--backend-set-statefulset`), whose pods come as the stable set's do (from the
    /// EndpointSlices when it is `pods`, else named by the template) and whose replicas
    /// are watched.
    fn sets(
        &self,
        stable: &Backends,
        watch: &mut WatchConfig,
    ) -> Result<Vec<SetConfig>, ConfigError> {
        validate_namespace(&self.stable_set)
            .map_err(|_| bad_set(&self.stable_set, "--stable-set is not a DNS-1123 label"))?;
        let mut sets: Vec<SetConfig> = Vec::new();
        let lists = self.backend_sets.iter().map(|v| (v, true));
        let statefulsets = self.backend_set_statefulsets.iter().map(|v| (v, false));
        for (flag_value, is_list) in lists.chain(statefulsets) {
            let (name, rest) = flag_value
                .split_once('=')
                .ok_or_else(|| bad_set(flag_value, "no NAME= before it"))?;
            let name = name.trim();
            validate_namespace(name)
                .map_err(|_| bad_set(flag_value, "NAME is not a DNS-1123 label"))?;
            if name == self.stable_set || sets.iter().any(|s| s.name == name) {
                return Err(bad_set(
                    flag_value,
                    "another set (or --stable-set) has this name",
                ));
            }
            // Ids 1.. in this order; the table holds at most SetId::MAX sets.
            let id = SetId::try_from(sets.len() + 1)
                .ok()
                .filter(|&id| id < SetId::MAX)
                .ok_or_else(|| bad_set(flag_value, "too many sets"))?;
            let set = if is_list {
                let addrs: Vec<String> = rest.split(',').map(|a| a.trim().to_owned()).collect();
                let backends = Backends::static_list(addrs)
                    .map_err(|_| bad_set(flag_value, "not a list of HOST:PORT"))?;
                let replicas = backends.fixed_replicas().map(NonZeroU32::get);
                SetConfig {
                    name: name.to_owned(),
                    backends,
                    replicas,
                }
            } else {
                self.statefulset_set(id, name, rest, stable, watch)?
            };
            sets.push(set);
        }
        Ok(sets)
    }

    /// A set from `STATEFULSET[/SERVICE]` (`rest` of `--backend-set-statefulset`), its
    /// watch added to `watch`.
    fn statefulset_set(
        &self,
        id: SetId,
        name: &str,
        rest: &str,
        stable: &Backends,
        watch: &mut WatchConfig,
    ) -> Result<SetConfig, ConfigError> {
        let (sts, service) = rest
            .split_once('/')
            .unwrap_or((rest, self.service.as_str()));
        validate_namespace(sts)
            .map_err(|_| bad_set(rest, "STATEFULSET is not a DNS-1123 label"))?;
        let template =
            BackendTemplate::parse(&self.backend_template, sts, service, &watch.namespace)
                .map_err(ConfigError::Template)?;
        let endpoint_slices =
            matches!(stable, Backends::Pods(_)).then(|| (service.to_owned(), template.port()));
        let backends = match endpoint_slices {
            Some(_) => Backends::Pods(Members::default()),
            None => Backends::Template(template),
        };
        watch.sets.push(SetWatch {
            set: id,
            statefulset: sts.to_owned(),
            endpoint_slices,
        });
        Ok(SetConfig {
            name: name.to_owned(),
            backends,
            replicas: None,
        })
    }

    /// Where the overrides come from: a flag's source, else the default ConfigMap in a
    /// cluster, else none.
    fn overrides_watch(&self, in_cluster: bool) -> OverridesWatch {
        match (&self.overrides_file, &self.overrides_dir, &self.configmap) {
            (Some(f), _, _) => OverridesWatch::File(f.clone()),
            (_, Some(d), _) => OverridesWatch::Dir(d.clone()),
            (_, _, Some(c)) => OverridesWatch::ConfigMap(c.clone()),
            _ if in_cluster => OverridesWatch::ConfigMap(DEFAULT_CONFIGMAP.to_owned()),
            _ => OverridesWatch::None,
        }
    }

    /// How ordinals become addresses (a static list or a template), and the replica
    /// count if the flags fix it (`None`: the StatefulSet's is watched).
    fn backends_and_replicas(
        &self,
        namespace: &str,
    ) -> Result<(Backends, Option<NonZeroU32>), ConfigError> {
        if self.backends.is_empty() {
            let template = BackendTemplate::parse(
                &self.backend_template,
                &self.statefulset,
                &self.service,
                namespace,
            )
            .map_err(ConfigError::Template)?;
            let replicas = match self.replicas {
                Some(r) => Some(NonZeroU32::new(r).ok_or(ConfigError::ZeroReplicas)?),
                None => None,
            };
            return Ok((Backends::Template(template), replicas));
        }
        let n = self.backends.len();
        let backends =
            Backends::static_list(self.backends.clone()).map_err(ConfigError::Backends)?;
        let fixed = backends.fixed_replicas().ok_or(ConfigError::ZeroReplicas)?;
        if let Some(r) = self.replicas.filter(|&r| r as usize != n) {
            return Err(ConfigError::ReplicasMismatch {
                replicas: r,
                addresses: n,
            });
        }
        Ok((backends, Some(fixed)))
    }
}

/// A bad backend set flag's error.
fn bad_set(value: &str, why: &'static str) -> ConfigError {
    ConfigError::BackendSet {
        value: value.to_owned(),
        why,
    }
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
