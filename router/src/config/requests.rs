//! Requests: where a request names its tenant, and the rules it must pass before any
//! backend is touched (origins, per-tenant and per-source caps, whose forwarding
//! headers are believed, underscores in header names, the routing diagnostics).

use clap::Args;
use wsrouter::{PathPrefix, TenantFrom};

use super::values::Span;
use super::ConfigError;
use crate::data::admission::budget::BudgetConfig;
use crate::data::admission::forwarded::{TrustedProxies, Underscores};
use crate::data::admission::policy::{Origins, PolicyConfig};

/// `--tenant-from`'s default as typed: [`TenantFrom`]'s `Display` is prose, not this.
const TENANT_FROM_PATH: &str = "path";

/// The request rules' flags. Their defaults are [`RequestArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(next_help_heading = "Requests")]
pub struct RequestArgs {
    /// Path prefix of routed requests (WebSockets and plain HTTP); the namespace is the next segment.
    #[arg(long, env = "WSROUTER_PATH_PREFIX", default_value_t = RequestArgs::default().path_prefix)]
    pub path_prefix: String,
    /// Where a request names its tenant: `path` (/ws/{tenant}/…), `header:NAME`, or `query:NAME` (e.g. /ws/hub?tenant=acme).
    #[arg(long, env = "WSROUTER_TENANT_FROM", default_value = TENANT_FROM_PATH)]
    pub tenant_from: TenantFrom,
    /// Origins that may open sockets (comma list): scheme://host[:port], scheme://*.domain[:port], or null; others get 403. Default: any.
    #[arg(long, env = "WSROUTER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// With --allowed-origins, also refuse requests that send no Origin (browsers always send one; other clients often do not).
    #[arg(long, env = "WSROUTER_REQUIRE_ORIGIN")]
    pub require_origin: bool,
    /// Most live sockets and plain requests in flight one tenant may hold on this router (its ConfigMap entry `max-connections.<tenant>` overrides it); beyond: 429. 0: no cap.
    #[arg(long, env = "WSROUTER_MAX_CONNECTIONS_PER_TENANT", default_value_t = RequestArgs::default().max_connections_per_tenant)]
    pub max_connections_per_tenant: u32,
    /// New WebSockets per second one source address (IPv6: its /64) may open (plain requests ride admitted connections and are not charged); beyond: 429. 0: no limit.
    #[arg(long, env = "WSROUTER_CONNECTION_RATE_PER_IP", default_value_t = RequestArgs::default().connection_rate_per_ip)]
    pub connection_rate_per_ip: f64,
    /// How many new connections one source address may open at once before that rate applies.
    #[arg(long, env = "WSROUTER_CONNECTION_BURST_PER_IP", default_value_t = RequestArgs::default().connection_burst_per_ip)]
    pub connection_burst_per_ip: u32,
    /// Proxies whose forwarding is believed (comma list of addresses or blocks, e.g. 10.0.0.0/8): their PROXY protocol headers, and the X-Forwarded-For hops they appended. Everyone else's forwarding headers are dropped. Default: none.
    #[arg(long, env = "WSROUTER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Request headers whose names hold '_' (which many frameworks read as '-'): drop them before the backend, or refuse the request with 400.
    #[arg(long, env = "WSROUTER_UNDERSCORE_HEADERS", value_enum, default_value_t = RequestArgs::default().underscore_headers)]
    pub underscore_headers: Underscores,
    /// New WebSockets per second this router lets through to all pods together (token bucket, a second's worth); beyond: 503 with a random Retry-After, before any pod is asked. 0: no limit.
    #[arg(long, env = "WSROUTER_MAX_UPGRADES_PER_SECOND", default_value_t = RequestArgs::default().max_upgrades_per_second)]
    pub max_upgrades_per_second: u32,
    /// New WebSockets per second this router lets through to any one pod; beyond: 503 with a random Retry-After. 0: no limit.
    #[arg(long, env = "WSROUTER_MAX_UPGRADES_PER_POD_PER_SECOND", default_value_t = RequestArgs::default().max_upgrades_per_pod_per_second)]
    pub max_upgrades_per_pod_per_second: u32,
    /// A pod that joined the table (new, or restarted) this recently gets a ramp of its per-pod budget, from a tenth to all of it.
    #[arg(long, env = "WSROUTER_WARMUP", default_value_t = RequestArgs::default().warmup)]
    pub warmup: Span,
    /// Send clients X-Wsrouter-Table and X-Wsrouter-Fingerprint (which table routed them): diagnostics for operators, off by default (`dev` turns it on).
    #[arg(long, env = "WSROUTER_ROUTE_HEADERS")]
    pub route_headers: bool,
}

impl Default for RequestArgs {
    /// The request rules' defaults: nothing refused. The one place they are written
    /// (`--help` shows these), but `--tenant-from`'s ([`TENANT_FROM_PATH`]).
    fn default() -> Self {
        Self {
            path_prefix: PathPrefix::default().as_str().to_owned(),
            tenant_from: TenantFrom::Path,
            allowed_origins: Vec::new(),
            require_origin: false,
            max_connections_per_tenant: 0,
            connection_rate_per_ip: 0.0,
            connection_burst_per_ip: 20,
            trusted_proxies: Vec::new(),
            underscore_headers: Underscores::Drop,
            route_headers: false,
            max_upgrades_per_second: 0,
            max_upgrades_per_pod_per_second: 0,
            warmup: Span::secs(30),
        }
    }
}

impl RequestArgs {
    pub(crate) fn path_prefix(&self) -> Result<PathPrefix, ConfigError> {
        PathPrefix::new(&self.path_prefix).map_err(ConfigError::Prefix)
    }

    pub(crate) fn policy(&self) -> Result<PolicyConfig, ConfigError> {
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
            budget: BudgetConfig {
                per_second: Some(self.max_upgrades_per_second).filter(|r| *r > 0),
                per_pod_per_second: Some(self.max_upgrades_per_pod_per_second).filter(|r| *r > 0),
                warmup: self.warmup.get(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_data_paths() {
        let d = RequestArgs::default();
        assert_eq!(
            format!("{:?}", d.policy().unwrap()),
            format!("{:?}", PolicyConfig::default())
        );
        assert_eq!(d.path_prefix().unwrap(), PathPrefix::default());
        assert_eq!(TENANT_FROM_PATH.parse(), Ok(d.tenant_from));
    }

    #[test]
    fn flags_become_the_policy() {
        let p = RequestArgs {
            path_prefix: "/sockets/".into(),
            tenant_from: TenantFrom::Query("tenant".into()),
            allowed_origins: vec!["https://*.example.com".into()],
            require_origin: true,
            max_connections_per_tenant: 7,
            connection_rate_per_ip: 2.5,
            connection_burst_per_ip: 3,
            trusted_proxies: vec!["10.0.0.0/8".into()],
            underscore_headers: Underscores::Refuse,
            route_headers: true,
            max_upgrades_per_second: 500,
            max_upgrades_per_pod_per_second: 0,
            warmup: Span::secs(10),
        };
        assert_eq!(p.path_prefix().unwrap().as_str(), "/sockets/");
        let c = p.policy().unwrap();
        assert_eq!(c.tenant_from, TenantFrom::Query("tenant".into()));
        let mut origin = http::HeaderMap::new();
        origin.insert(
            http::header::ORIGIN,
            http::HeaderValue::from_static("https://app.example.com"),
        );
        assert!(c.origins.allows(&origin));
        assert!(
            !c.origins.allows(&http::HeaderMap::new()),
            "--require-origin"
        );
        assert_eq!((c.max_per_tenant, c.burst_per_ip), (7, 3));
        assert!((c.rate_per_ip - 2.5).abs() < f64::EPSILON);
        assert!(c.trusted_proxies.contains([10, 1, 2, 3].into()));
        assert_eq!(c.underscores, Underscores::Refuse);
        assert!(c.route_headers);
        assert_eq!(
            c.budget,
            BudgetConfig {
                per_second: Some(500),
                per_pod_per_second: None,
                warmup: std::time::Duration::from_secs(10),
            }
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = |f: fn(&mut RequestArgs)| {
            let mut a = RequestArgs::default();
            f(&mut a);
            (a.path_prefix().err(), a.policy().err())
        };
        assert!(matches!(
            bad(|a| a.path_prefix = "ws".into()),
            (Some(ConfigError::Prefix(_)), None)
        ));
        for rate in [-1.0, f64::NAN, f64::INFINITY] {
            let a = RequestArgs {
                connection_rate_per_ip: rate,
                ..RequestArgs::default()
            };
            assert!(matches!(a.policy(), Err(ConfigError::BadRate)), "{rate}");
        }
        assert!(matches!(
            bad(|a| a.allowed_origins = vec!["nope".into()]),
            (None, Some(ConfigError::Origins(_)))
        ));
        assert!(matches!(
            bad(|a| a.trusted_proxies = vec!["10.0.0.1/8".into()]),
            (None, Some(ConfigError::TrustedProxies(_)))
        ));
    }
}
