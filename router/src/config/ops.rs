//! The operator commands' flags: `route`, `plan` (no router needed, or only its admin
//! endpoint) and `cert`.

use std::path::PathBuf;

use clap::Args;

use super::routing::{DEFAULT_STATEFULSET, REPLICAS_ENV};

#[derive(Args, Debug, Clone)]
pub struct RouteArgs {
    /// The tenant namespace.
    pub namespace: String,
    /// Number of backend pods.
    #[arg(long, env = REPLICAS_ENV)]
    pub replicas: u32,
    /// A ConfigMap manifest of overrides to apply.
    #[arg(long, env = "WSROUTER_OVERRIDES_FILE")]
    pub overrides: Option<PathBuf>,
    /// The StatefulSet's name, for pod names in targets and output.
    #[arg(long, env = "WSROUTER_STATEFULSET", default_value = DEFAULT_STATEFULSET)]
    pub statefulset: String,
    /// Print JSON instead of one line.
    #[arg(long, env = "WSROUTER_JSON")]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// The new overrides: a ConfigMap manifest, validated as the watchers would.
    #[arg(long, env = "WSROUTER_PLAN_OVERRIDES")]
    pub overrides: PathBuf,
    /// The new replica count [default: unchanged].
    // Not WSROUTER_REPLICAS: that is the number of pods there are (`serve`, `route`),
    // and a shell or pod that sets it must not turn a plan into a scale.
    #[arg(long, env = "WSROUTER_PLAN_REPLICAS")]
    pub replicas: Option<u32>,
    /// A running router's admin address (http://HOST:PORT): its table and live sockets are "now".
    #[arg(long, env = "WSROUTER_ADMIN_URL", conflicts_with_all = ["current", "current_replicas"])]
    pub admin: Option<String>,
    /// The router's --admin-token, if it asks for one.
    #[arg(
        long,
        env = "WSROUTER_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "admin"
    )]
    pub admin_token: Option<String>,
    /// Offline: the overrides manifest in force now [default: none].
    #[arg(long, env = "WSROUTER_PLAN_CURRENT")]
    pub current: Option<PathBuf>,
    /// Offline: the replica count now.
    #[arg(long, env = "WSROUTER_PLAN_CURRENT_REPLICAS")]
    pub current_replicas: Option<u32>,
    /// The StatefulSet's name, for pod names in targets.
    #[arg(long, env = "WSROUTER_STATEFULSET", default_value = DEFAULT_STATEFULSET)]
    pub statefulset: String,
    /// The stable backend set's name, as the router's --stable-set (offline; a router's own comes from its /table).
    #[arg(long, env = "WSROUTER_STABLE_SET", default_value = wsrouter::DEFAULT_STABLE_SET)]
    pub stable_set: String,
}

#[derive(Args, Debug, Clone)]
pub struct CertArgs {
    /// A DNS name or IP address the certificate is for; repeat it.
    #[arg(
        long = "host",
        env = "WSROUTER_CERT_HOST",
        value_delimiter = ',',
        required = true
    )]
    pub hosts: Vec<String>,
    /// Directory to write into (created if missing).
    #[arg(long, env = "WSROUTER_CERT_OUT", default_value = "cert/out")]
    pub out: PathBuf,
}
