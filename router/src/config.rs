//! The command line (every flag also read from a `WSROUTER_*` variable) and the validated
//! [`RouterConfig`] it becomes. Everything is checked here, before any socket is bound.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;
use wsrouter::backends::DEFAULT_TEMPLATE;
use wsrouter::{
    BackendTemplate, Backends, BackendsError, Overrides, PathPrefix, PrefixError, TableSource,
    TemplateError,
};
use wsrouter::{Members, TenantFrom, TenantLimits};

pub use crate::admin::AdminToken;
use crate::control::overrides_file::{self, OverridesFileError};
use crate::control::watch::{OverridesWatch, WatchConfig};
use crate::control::RoutingConfig;
use crate::data::admission::forwarded::{CidrError, TrustedProxies, Underscores};
use crate::data::admission::policy::{OriginError, Origins, PolicyConfig};
use crate::data::admission::pools::{PENDING_BASE_BYTES, REQUEST_HEAD_BYTES};
use crate::data::relay::pump::Ping;
use crate::data::relay::reroute::RerouteConfig;
use crate::data::shared::limits::{Limits, ProxyProtocol, SocketTimers};
use crate::data::tls::config::{self as tls, TlsError};
use crate::data::upstream::breaker::BreakerConfig;
pub use crate::logging::LogFormat;

/// Where the service account's namespace is mounted in every pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

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
    Serve(Box<ServeArgs>),
    /// Run the router with local echo backends and a self-signed certificate: no cluster, no setup.
    Dev(Box<DevArgs>),
    /// Write a dev CA and a server certificate signed by it (ca.crt, tls.crt, tls.key).
    Cert(CertArgs),
    /// Where a namespace routes, by the routing contract alone (no router needed).
    Route(RouteArgs),
    /// What an overrides edit or a scale would move, before it is applied.
    Plan(PlanArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RouteArgs {
    /// The tenant namespace.
    pub namespace: String,
    /// Number of backend pods.
    #[arg(long, env = "WSROUTER_REPLICAS")]
    pub replicas: u32,
    /// A ConfigMap manifest of overrides to apply.
    #[arg(long, env = "WSROUTER_OVERRIDES_FILE")]
    pub overrides: Option<PathBuf>,
    /// The StatefulSet's name, for pod names in targets and output.
    #[arg(long, env = "WSROUTER_STATEFULSET", default_value = "backend")]
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
    #[arg(long, env = "WSROUTER_REPLICAS")]
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
    #[arg(long, env = "WSROUTER_STATEFULSET", default_value = "backend")]
    pub statefulset: String,
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

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the WebSocket listener.
    #[arg(long, env = "WSROUTER_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "WSROUTER_TLS_CERT", required_unless_present = "plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "WSROUTER_TLS_KEY", required_unless_present = "plaintext")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain ws:// instead of TLS (behind a TLS-terminating load balancer, or for tests).
    #[arg(long, env = "WSROUTER_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plaintext: bool,
    /// A backend address HOST:PORT; repeat it, ordinal = position (WSROUTER_BACKEND takes a comma list).
    #[arg(
        long = "backend",
        env = "WSROUTER_BACKEND",
        value_delimiter = ',',
        conflicts_with = "backend_template"
    )]
    pub backends: Vec<String>,
    /// Backend address template with {statefulset}, {i}, {service}, {namespace}; used when no --backend is given.
    #[arg(long, env = "WSROUTER_BACKEND_TEMPLATE", default_value = DEFAULT_TEMPLATE)]
    pub backend_template: String,
    /// Number of backend pods; without it (and with a template) the StatefulSet's spec.replicas is watched.
    #[arg(long, env = "WSROUTER_REPLICAS")]
    pub replicas: Option<u32>,
    /// The backend StatefulSet's name: fills {statefulset} and names pods in override targets.
    #[arg(long, env = "WSROUTER_STATEFULSET", default_value = "backend")]
    pub statefulset: String,
    /// The backends' headless Service: fills {service}.
    #[arg(long, env = "WSROUTER_SERVICE", default_value = "backend")]
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
    /// Address of the admin listener (plain HTTP: /healthz, /readyz, /metrics, /route/{ns}, /table) [default: $POD_IP:9090 in a pod (the downward API sets it), else 127.0.0.1:9090]
    #[arg(long, env = "WSROUTER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Where the admin listener binds unless told: the pod's own address (what probes and
/// scrapers reach, and the NetworkPolicy guards), never every interface of a host; off
/// a pod, loopback.
pub fn default_admin_listen(pod_ip: Option<&str>) -> SocketAddr {
    let ip = pod_ip
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, 9090)
}

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Address of the WebSocket (wss://) listener.
    #[arg(long, env = "WSROUTER_DEV_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Address of the admin listener.
    #[arg(
        long,
        env = "WSROUTER_DEV_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
    /// How many in-process echo backends to start.
    #[arg(long = "backends", env = "WSROUTER_DEV_BACKENDS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub backend_count: u32,
    /// Time between the echo backends' counter messages.
    #[arg(long, env = "WSROUTER_DEV_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// A ConfigMap manifest of overrides (namespace → "2" or "backend-2"), watched: edit it to reroute live.
    #[arg(long, env = "WSROUTER_OVERRIDES_FILE")]
    pub overrides_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Limits and timings shared by `serve` and `dev`.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Path prefix of WebSocket requests; the namespace is the next segment.
    #[arg(long, env = "WSROUTER_PATH_PREFIX", default_value = "/ws/")]
    pub path_prefix: String,
    /// On SIGTERM, how long live sockets may keep running before they get close 1001.
    #[arg(long, env = "WSROUTER_DRAIN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// Time allowed for a client's TLS handshake.
    #[arg(long, env = "WSROUTER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Time allowed for a client to send its upgrade request headers.
    #[arg(long, env = "WSROUTER_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Time allowed for a backend to accept the connection and answer the upgrade (then 504).
    #[arg(long, env = "WSROUTER_BACKEND_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub backend_timeout: Duration,
    /// Once one side of a socket has closed, how long the other side has to finish.
    #[arg(long, env = "WSROUTER_CLOSE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,
    /// Most live connections (request parsed, upgrading or relaying); beyond it new requests get 503.
    #[arg(long, env = "WSROUTER_MAX_CONNECTIONS", default_value_t = 9000)]
    pub max_connections: usize,
    /// Most live connections from one source address (IPv6: its /64); 0: no cap (clients often share NATs).
    #[arg(long, env = "WSROUTER_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// Most connections still in TLS or reading their request head; when full, the oldest of the address holding the most is dropped.
    #[arg(long, env = "WSROUTER_MAX_PENDING", default_value_t = 1000)]
    pub max_pending: usize,
    /// Most bytes those pending connections may hold together (e.g. 24MiB); past it, connections are dropped as for a full pool.
    #[arg(long, env = "WSROUTER_MAX_PENDING_BYTES", default_value = "24MiB", value_parser = parse_size)]
    pub max_pending_bytes: usize,
    /// Most pending connections from one source address (IPv6: its /64); more are closed at once.
    #[arg(long, env = "WSROUTER_MAX_PENDING_PER_IP", default_value_t = 64)]
    pub max_pending_per_ip: usize,
    /// Largest TLS ClientHello accepted (e.g. 16KiB, 1KiB–64KiB); larger ones get a fatal alert.
    #[arg(long, env = "WSROUTER_MAX_CLIENT_HELLO", default_value = "16KiB", value_parser = parse_size)]
    pub max_client_hello: usize,
    /// Largest upgrade request head (request line + headers) in bytes; larger gets 431.
    #[arg(long, env = "WSROUTER_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Most header fields in an upgrade request; more gets 431.
    #[arg(long, env = "WSROUTER_MAX_HEADERS", default_value_t = 64)]
    pub max_headers: usize,
    /// When a tenant's backend changes, close its live sockets on the old one with 1012 after this grace (default: never).
    #[arg(long, env = "WSROUTER_REROUTE_DRAIN", value_parser = humantime::parse_duration)]
    pub reroute_drain: Option<Duration>,
    /// TLS key-exchange groups to accept, most preferred first; repeat it or give a comma list [default: rustls' own: x25519, secp256r1, secp384r1, x25519mlkem768]
    #[arg(
        long = "tls-key-exchange",
        env = "WSROUTER_TLS_KEY_EXCHANGE",
        value_enum,
        value_delimiter = ','
    )]
    pub tls_key_exchange: Vec<tls::KeyExchange>,
    /// TCP keepalive on client and backend sockets: idle time before the first probe (then every 10s, 3 probes); 0s: off.
    #[arg(long, env = "WSROUTER_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: Duration,
    /// Close (1001 both ways) a socket that carried no data frame either way for this long; pings do not count. Default: never.
    #[arg(long, env = "WSROUTER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close (1012, at a frame boundary) a socket this old, so clients rebalance. Default: never.
    #[arg(long, env = "WSROUTER_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// Each socket's age limit gets up to this much more, at random, so a fleet does not reconnect at once [default: a tenth of --max-connection-age]
    #[arg(long, env = "WSROUTER_MAX_CONNECTION_AGE_JITTER", value_parser = humantime::parse_duration)]
    pub max_connection_age_jitter: Option<Duration>,
    /// Ping each client this often (at a frame boundary; its pong is not passed on). Default: off.
    #[arg(long, env = "WSROUTER_PING_INTERVAL", value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Ping each backend socket this often, likewise. Default: off.
    #[arg(long, env = "WSROUTER_BACKEND_PING_INTERVAL", value_parser = humantime::parse_duration)]
    pub backend_ping_interval: Option<Duration>,
    /// A peer that does not answer a ping within this is gone: the other side gets 1001.
    #[arg(long, env = "WSROUTER_PING_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,
    /// Do not offer HTTP/2 in ALPN: every client speaks HTTP/1.1 (WebSockets over HTTP/2 are RFC 8441 extended CONNECT streams).
    #[arg(long, env = "WSROUTER_NO_HTTP2")]
    pub no_http2: bool,
    /// Where a request names its tenant: `path` (/ws/{tenant}/…), `header:NAME`, or `query:NAME` (e.g. /ws/hub?tenant=acme).
    #[arg(long, env = "WSROUTER_TENANT_FROM", default_value = "path")]
    pub tenant_from: TenantFrom,
    /// Origins that may open sockets (comma list): scheme://host[:port], scheme://*.domain[:port], or null; others get 403. Default: any.
    #[arg(long, env = "WSROUTER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// With --allowed-origins, also refuse requests that send no Origin (browsers always send one; other clients often do not).
    #[arg(long, env = "WSROUTER_REQUIRE_ORIGIN")]
    pub require_origin: bool,
    /// Most live sockets one tenant may hold on this router (its ConfigMap entry `max-connections.<tenant>` overrides it); beyond: 429. 0: no cap.
    #[arg(long, env = "WSROUTER_MAX_CONNECTIONS_PER_TENANT", default_value_t = 0)]
    pub max_connections_per_tenant: u32,
    /// New connections per second one source address (IPv6: its /64) may open; beyond: 429. 0: no limit.
    #[arg(long, env = "WSROUTER_CONNECTION_RATE_PER_IP", default_value_t = 0.0)]
    pub connection_rate_per_ip: f64,
    /// How many new connections one source address may open at once before that rate applies.
    #[arg(long, env = "WSROUTER_CONNECTION_BURST_PER_IP", default_value_t = 20)]
    pub connection_burst_per_ip: u32,
    /// Consecutive failed upgrades to one backend (refused or reset after retries, or no answer in --backend-timeout) that open its circuit breaker; 0: never.
    #[arg(long, env = "WSROUTER_CIRCUIT_FAILURES", default_value_t = 3)]
    pub circuit_failures: u32,
    /// How long an open circuit answers 503 at once before one probe connection is let through.
    #[arg(long, env = "WSROUTER_CIRCUIT_COOLDOWN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub circuit_cooldown: Duration,
    /// Most reroute closes per second.
    #[arg(long, env = "WSROUTER_REROUTE_DRAIN_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub reroute_drain_rate: u32,
    /// An I/O thread whose event loop has not turned for this long is stalled: /healthz answers 503 (so Kubernetes restarts the pod) and wsrouter_worker_stalled names it.
    #[arg(long, env = "WSROUTER_STALL_THRESHOLD", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stall_threshold: Duration,
    /// Proxies whose forwarding is believed (comma list of addresses or blocks, e.g. 10.0.0.0/8): their PROXY protocol headers, and the X-Forwarded-For hops they appended. Everyone else's forwarding headers are dropped. Default: none.
    #[arg(long, env = "WSROUTER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Request headers whose names hold '_' (which many frameworks read as '-'): drop them before the backend, or refuse the request with 400.
    #[arg(long, env = "WSROUTER_UNDERSCORE_HEADERS", value_enum, default_value_t = Underscores::Drop)]
    pub underscore_headers: Underscores,
    /// Connections begin with a PROXY protocol header (v1 or v2) naming the client, as a TCP load balancer sends it (AWS NLB, HAProxy send-proxy-v2); `on` requires it, and only from --trusted-proxies.
    #[arg(long, env = "WSROUTER_PROXY_PROTOCOL", value_enum, default_value_t = ProxyProtocol::Off)]
    pub proxy_protocol: ProxyProtocol,
    /// A bearer token the admin listener asks for on everything but /healthz, /readyz and /metrics (/route, /table list tenants and pod addresses): `Authorization: Bearer TOKEN`. Set it from a Secret (WSROUTER_ADMIN_TOKEN). Default: none asked.
    #[arg(long, env = "WSROUTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Send clients X-Wsrouter-Table and X-Wsrouter-Fingerprint (which table routed them): diagnostics for operators, off by default (`dev` turns it on).
    #[arg(long, env = "WSROUTER_ROUTE_HEADERS")]
    pub route_headers: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--path-prefix")]
    Prefix(#[source] PrefixError),
    #[error("--backend")]
    Backends(#[source] BackendsError),
    #[error("--backend-template")]
    Template(#[source] TemplateError),
    #[error("--replicas must be at least 1")]
    ZeroReplicas,
    #[error("--replicas {replicas} but only {addresses} --backend addresses")]
    ReplicasMismatch { replicas: u32, addresses: usize },
    #[error("TLS")]
    Tls(#[source] TlsError),
    #[error("--overrides-file")]
    OverridesFile(#[source] OverridesFileError),
    #[error("--max-header-bytes must be at least 8192 (the HTTP/1 minimum buffer)")]
    HeaderBytesTooSmall,
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--max-pending and --max-pending-per-ip must be at least 1")]
    NoPending,
    #[error("--max-pending-bytes must be at least {min} (one pending connection)")]
    PendingBytesTooSmall { min: usize },
    #[error("--max-client-hello must be between 1KiB and 64KiB")]
    ClientHelloOutOfRange,
    #[error(transparent)]
    Origins(OriginError),
    #[error("{0} must be more than 0 (leave it out to turn it off)")]
    ZeroDuration(&'static str),
    #[error("--connection-rate-per-ip must be a number of connections per second, 0 or more")]
    BadRate,
    #[error(transparent)]
    TrustedProxies(CidrError),
    #[error(
        "--admin-token must be at least 16 visible ASCII characters (e.g. `openssl rand -hex 32`)"
    )]
    AdminToken,
    #[error("--proxy-protocol on needs --trusted-proxies: the load balancer's addresses (everyone else is refused)")]
    ProxyProtocolUntrusted,
}

/// A size in bytes: `16384`, `16KiB`, `24MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16384, 16KiB, 24MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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
}

impl CommonArgs {
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::HeaderBytesTooSmall);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.max_pending == 0 || self.max_pending_per_ip == 0 {
            return Err(ConfigError::NoPending);
        }
        let min = PENDING_BASE_BYTES + REQUEST_HEAD_BYTES;
        if self.max_pending_bytes < min {
            return Err(ConfigError::PendingBytesTooSmall { min });
        }
        if !(1 << 10..=64 << 10).contains(&self.max_client_hello) {
            return Err(ConfigError::ClientHelloOutOfRange);
        }
        if self.stall_threshold.is_zero() {
            return Err(ConfigError::ZeroDuration("--stall-threshold"));
        }
        if self.proxy_protocol == ProxyProtocol::On && self.trusted_proxies.is_empty() {
            return Err(ConfigError::ProxyProtocolUntrusted);
        }
        Ok(Limits {
            handshake_timeout: self.handshake_timeout,
            request_timeout: self.request_timeout,
            backend_timeout: self.backend_timeout,
            close_timeout: self.close_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_pending: self.max_pending,
            max_pending_bytes: self.max_pending_bytes,
            max_pending_per_ip: self.max_pending_per_ip,
            max_client_hello: self.max_client_hello,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            breaker: BreakerConfig {
                failures: self.circuit_failures,
                cooldown: self.circuit_cooldown,
            },
            policy: self.policy()?,
            timers: self.timers()?,
            stall_threshold: self.stall_threshold,
            proxy_protocol: self.proxy_protocol,
        })
    }

    fn timers(&self) -> Result<SocketTimers, ConfigError> {
        let nonzero = |d: Option<Duration>, flag: &'static str| match d {
            Some(d) if d.is_zero() => Err(ConfigError::ZeroDuration(flag)),
            d => Ok(d),
        };
        let ping = |interval: Option<Duration>, flag| {
            Ok::<_, ConfigError>(nonzero(interval, flag)?.map(|interval| Ping {
                interval,
                timeout: self.ping_timeout,
            }))
        };
        if self.ping_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("--ping-timeout"));
        }
        let max_age = nonzero(self.max_connection_age, "--max-connection-age")?;
        Ok(SocketTimers {
            tcp_keepalive: (!self.tcp_keepalive.is_zero()).then_some(self.tcp_keepalive),
            idle_timeout: nonzero(self.idle_timeout, "--idle-timeout")?,
            max_age,
            max_age_jitter: self
                .max_connection_age_jitter
                .or(max_age.map(|a| a / 10))
                .unwrap_or_default(),
            client_ping: ping(self.ping_interval, "--ping-interval")?,
            backend_ping: ping(self.backend_ping_interval, "--backend-ping-interval")?,
        })
    }

    /// The admin token, trimmed (a Secret file's trailing newline is not part of it).
    pub fn admin_token(&self) -> Result<Option<AdminToken>, ConfigError> {
        match self.admin_token.as_deref().map(str::trim) {
            None => Ok(None),
            Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(ConfigError::AdminToken)
            }
            Some(t) => Ok(Some(AdminToken(Arc::from(t.as_bytes())))),
        }
    }

    fn policy(&self) -> Result<PolicyConfig, ConfigError> {
        if !(self.connection_rate_per_ip >= 0.0 && self.connection_rate_per_ip.is_finite()) {
            return Err(ConfigError::BadRate);
        }
        Ok(PolicyConfig {
            tenant_from: self.tenant_from.clone(),
            origins: Origins::parse(&self.allowed_origins, !self.require_origin)
                .map_err(ConfigError::Origins)?,
            max_per_tenant: self.max_connections_per_tenant,
            rate_per_ip: self.connection_rate_per_ip,
            burst_per_ip: self.connection_burst_per_ip,
            trusted_proxies: TrustedProxies::parse(&self.trusted_proxies)
                .map_err(ConfigError::TrustedProxies)?,
            underscores: self.underscore_headers,
            route_headers: self.route_headers,
        })
    }

    pub fn tls_options(&self) -> tls::TlsOptions {
        tls::TlsOptions {
            http2: !self.no_http2,
            key_exchange: self.tls_key_exchange.clone(),
        }
    }

    pub fn reroute(&self) -> Option<RerouteConfig> {
        self.reroute_drain.map(|grace| RerouteConfig {
            grace,
            per_second: self.reroute_drain_rate,
        })
    }

    pub fn path_prefix(&self) -> Result<PathPrefix, ConfigError> {
        PathPrefix::new(&self.path_prefix).map_err(ConfigError::Prefix)
    }
}

/// The ConfigMap watched through the API when running in a cluster and no other
/// overrides source is given.
pub const DEFAULT_CONFIGMAP: &str = "wsrouter-overrides";

impl ServeArgs {
    /// Validates the flags and reads the files they name: the router's config, and what
    /// its control plane watches.
    pub fn into_config(self) -> Result<(RouterConfig, WatchConfig), ConfigError> {
        let limits = self.common.limits()?;
        let path_prefix = self.common.path_prefix()?;
        let namespace = self.pod_namespace.clone().unwrap_or_else(pod_namespace);
        // kubelet sets this in every pod; its absence means "not in a cluster".
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let templated = self.backends.is_empty();
        let (backends, replicas) = self.backends_and_replicas(&namespace)?;
        let overrides_watch = match (
            self.overrides_file.clone(),
            self.overrides_dir.clone(),
            self.configmap.clone(),
        ) {
            (Some(f), _, _) => OverridesWatch::File(f),
            (_, Some(d), _) => OverridesWatch::Dir(d),
            (_, _, Some(c)) => OverridesWatch::ConfigMap(c),
            _ if in_cluster => OverridesWatch::ConfigMap(DEFAULT_CONFIGMAP.to_owned()),
            _ => OverridesWatch::None,
        };
        let ((overrides, tenant_limits), source, await_overrides) =
            initial_overrides(&overrides_watch, &self.statefulset)?;
        let mut watch = WatchConfig {
            overrides: overrides_watch,
            statefulset: replicas.is_none().then(|| self.statefulset.clone()),
            endpoint_slices: None,
            namespace,
            tls_files: match (self.plaintext, &self.tls_cert, &self.tls_key) {
                (false, Some(c), Some(k)) => Some((c.clone(), k.clone())),
                _ => None,
            },
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
        let tls = match (self.plaintext, &self.tls_cert, &self.tls_key) {
            (false, Some(cert), Some(key)) => Some(
                tls::load_server_config(cert, key, &self.common.tls_options())
                    .map_err(ConfigError::Tls)?,
            ),
            // clap makes cert and key required unless --plaintext.
            _ => None,
        };
        let config =
            RouterConfig {
                io_threads: 0,
                pages: None,
                listen: self.listen,
                tls,
                admin_listen: Some(self.admin_listen.unwrap_or_else(|| {
                    default_admin_listen(std::env::var("POD_IP").ok().as_deref())
                })),
                admin_token: self.common.admin_token()?,
                path_prefix,
                drain_grace: self.common.drain_grace,
                reroute: self.common.reroute(),
                limits,
                routing: RoutingConfig {
                    backends,
                    statefulset: self.statefulset,
                    replicas,
                    overrides,
                    limits: tenant_limits,
                    source,
                    await_overrides,
                },
            };
        Ok((config, watch))
    }
}

impl ServeArgs {
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

/// The overrides (and per-tenant settings) known at start, where they came from, and
/// whether to wait for a first read of a watched source before routing anything.
fn initial_overrides(
    watch: &OverridesWatch,
    statefulset: &str,
) -> Result<((Overrides, TenantLimits), TableSource, bool), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_admin_listener_binds_the_pod_address_or_loopback() {
        assert_eq!(
            default_admin_listen(Some("10.1.2.3")),
            "10.1.2.3:9090".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(Some("fd00::7")),
            "[fd00::7]:9090".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(None),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            default_admin_listen(Some("nonsense")),
            "127.0.0.1:9090".parse().unwrap()
        );
    }

    #[test]
    fn edge_flags_are_checked_before_anything_binds() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "wsrouter",
                "serve",
                "--plaintext",
                "--backend",
                "127.0.0.1:1",
            ];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Serve(a) => a.common.limits().map(|_| a.common.admin_token()),
                _ => unreachable!(),
            }
        };
        assert!(matches!(
            parse(&["--proxy-protocol", "on"]),
            Err(ConfigError::ProxyProtocolUntrusted)
        ));
        assert!(parse(&["--proxy-protocol", "on", "--trusted-proxies", "10.0.0.0/8"]).is_ok());
        assert!(matches!(
            parse(&["--trusted-proxies", "10.0.0.1/8"]),
            Err(ConfigError::TrustedProxies(_))
        ));
        assert!(matches!(
            parse(&["--admin-token", "short"]),
            Ok(Err(ConfigError::AdminToken))
        ));
        let token = parse(&["--admin-token", "0123456789abcdef\n"])
            .unwrap()
            .unwrap();
        assert_eq!(
            format!("{token:?}"),
            "Some(AdminToken(16 bytes))",
            "never printed"
        );
    }
    use wsrouter::Backend;

    fn serve(args: &[&str]) -> Result<RouterConfig, String> {
        let mut argv = vec!["wsrouter", "serve"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(s) => (*s)
                .into_config()
                .map(|(c, _)| c)
                .map_err(|e| crate::logging::DisplayChain(&e).to_string()),
            _ => Err("not serve".to_owned()),
        }
    }

    #[test]
    fn limits_default_is_the_command_lines() {
        let c = serve(&["--plaintext", "--replicas", "1"]).unwrap();
        let d = Limits::default();
        assert_eq!(format!("{:?}", c.limits), format!("{d:?}"));
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn static_backends() {
        let c = serve(&[
            "--plaintext",
            "--backend",
            "127.0.0.1:9001",
            "--backend",
            "127.0.0.1:9002",
        ])
        .unwrap();
        assert_eq!(c.routing.replicas.map(NonZeroU32::get), Some(2));
        assert!(c.tls.is_none());
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.path_prefix.as_str(), "/ws/");
        assert_eq!(c.drain_grace, Duration::from_secs(20));
    }

    #[test]
    fn template_backends() {
        let c = serve(&["--plaintext", "--replicas", "3", "--pod-namespace", "prod"]).unwrap();
        let addrs = c.routing.backends.backends(c.routing.replicas.unwrap());
        assert_eq!(
            addrs[2].address().as_deref(),
            Some("backend-2.backend.prod.svc.cluster.local:9000")
        );
        let c = serve(&[
            "--plaintext",
            "--replicas",
            "2",
            "--backend-template",
            "{statefulset}-{i}.{service}:7000",
            "--statefulset",
            "echo",
            "--service",
            "echo-hl",
        ])
        .unwrap();
        assert_eq!(
            c.routing.backends.backends(c.routing.replicas.unwrap()),
            [
                Backend::Addr("echo-0.echo-hl:7000".into()),
                Backend::Addr("echo-1.echo-hl:7000".into())
            ]
        );
    }

    fn watch(args: &[&str]) -> WatchConfig {
        let mut argv = vec!["wsrouter", "serve", "--plaintext"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(s) => (*s).into_config().unwrap().1,
            _ => unreachable!(),
        }
    }

    #[test]
    fn what_gets_watched() {
        // A template without --replicas follows the StatefulSet, and takes its pods
        // from the EndpointSlices at the template's port.
        let w = watch(&["--pod-namespace", "prod"]);
        assert_eq!(
            (w.statefulset.as_deref(), w.endpoint_slices.clone()),
            (Some("backend"), Some(("backend".to_owned(), 9000)))
        );
        assert_eq!(w.namespace, "prod");
        assert!(w.needs_kube());
        // Fixed replicas and static backends outside a cluster: nothing to watch.
        let w = watch(&["--backend", "127.0.0.1:1"]);
        assert!(!w.needs_kube());
        assert_eq!(w.overrides, OverridesWatch::None);
        let w = watch(&["--replicas", "2", "--configmap", "routes"]);
        assert_eq!(w.overrides, OverridesWatch::ConfigMap("routes".into()));
        assert_eq!(w.statefulset, None);
        // With the API at hand, pods come from the slices, never from DNS.
        assert_eq!(w.endpoint_slices, Some(("backend".to_owned(), 9000)));
        let c = serve(&["--plaintext", "--replicas", "2", "--configmap", "routes"]).unwrap();
        assert!(matches!(c.routing.backends, Backends::Pods(_)));
        // Without it, the template's names are resolved per connection.
        let c = serve(&["--plaintext", "--replicas", "2"]).unwrap();
        assert!(matches!(c.routing.backends, Backends::Template(_)));
        let w = watch(&[
            "--replicas",
            "2",
            "--overrides-dir",
            "/etc/wsrouter/overrides",
        ]);
        assert_eq!(
            w.overrides,
            OverridesWatch::Dir("/etc/wsrouter/overrides".into())
        );
        assert!(
            serve(&["--plaintext", "--replicas", "2", "--overrides-dir", "/x"])
                .unwrap()
                .routing
                .await_overrides
        );
        assert!(serve(&[
            "--plaintext",
            "--replicas",
            "2",
            "--overrides-dir",
            "/x",
            "--configmap",
            "y"
        ])
        .is_err());
    }

    #[test]
    fn durations_and_limits() {
        let c = serve(&[
            "--plaintext",
            "--replicas",
            "1",
            "--drain-grace",
            "500ms",
            "--backend-timeout",
            "2s",
            "--max-connections",
            "10",
        ])
        .unwrap();
        assert_eq!(c.drain_grace, Duration::from_millis(500));
        assert_eq!(c.limits.backend_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_connections, 10);
    }

    #[test]
    fn bad_flags_are_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--replicas", "1"], "--tls-cert"),
            (&["--plaintext", "--replicas", "0"], "at least 1"),
            (&["--plaintext", "--backend", "nope"], "HOST:PORT"),
            (
                &["--plaintext", "--backend", "a:1", "--replicas", "2"],
                "--replicas 2 but only 1",
            ),
            (
                &[
                    "--plaintext",
                    "--replicas",
                    "1",
                    "--backend-template",
                    "x:1",
                ],
                "no {i}",
            ),
            (
                &["--plaintext", "--replicas", "1", "--path-prefix", "ws"],
                "--path-prefix",
            ),
            (
                &["--plaintext", "--replicas", "1", "--drain-grace", "soon"],
                "invalid value",
            ),
            (
                &[
                    "--plaintext",
                    "--replicas",
                    "1",
                    "--max-header-bytes",
                    "100",
                ],
                "8192",
            ),
            (
                &["--plaintext", "--replicas", "1", "--tls-cert", "x"],
                "cannot be used with",
            ),
            (
                &[
                    "--tls-cert",
                    "/nonexistent/c.pem",
                    "--tls-key",
                    "/nonexistent/k.pem",
                    "--replicas",
                    "1",
                ],
                "/nonexistent/c.pem",
            ),
        ];
        for (args, want) in cases {
            let err = serve(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    /// The README documents every flag and its variable, so it cannot fall behind.
    #[test]
    fn readme_documents_every_flag() {
        let readme = include_str!("../../README.md");
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                assert!(
                    readme.contains(&format!("`--{long}`")),
                    "README lacks {} --{long}",
                    sub.get_name()
                );
                if let Some(env) = arg.get_env() {
                    let env = env.to_string_lossy();
                    assert!(readme.contains(&format!("`{env}`")), "README lacks {env}");
                }
            }
        }
    }

    #[test]
    fn every_flag_has_an_env_var() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_long().is_some() && !matches!(arg.get_id().as_str(), "help" | "version")
                {
                    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                    assert!(
                        env.as_deref().is_some_and(|e| e.starts_with("WSROUTER_")),
                        "{} --{} has env {env:?}",
                        sub.get_name(),
                        arg.get_long().unwrap_or_default()
                    );
                }
            }
        }
    }
}
