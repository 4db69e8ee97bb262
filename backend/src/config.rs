//! What an echo server says about itself, where it reads the tenant, and how often it
//! streams.

use std::time::Duration;

use wsrouter::{PathPrefix, TenantFrom};

/// What an echo server says about itself and how often it streams.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// The `server` field of every counter message (the pod name in a cluster).
    pub server_name: String,
    /// Time between counter messages (WebSocket and `/events`).
    pub interval: Duration,
    pub path_prefix: PathPrefix,
    /// Where a request names its tenant, as the router's `--tenant-from`: the `ns` this
    /// server reports is then the tenant the router routed on.
    pub tenant_from: TenantFrom,
    /// Stream counters (the first at connect) besides echoing; off: a pure echo server,
    /// as conformance suites expect.
    pub counters: bool,
    /// The SignalR test hub's timings.
    pub hub: HubConfig,
    /// Serve TLS with this config (`--tls-cert`), as pods do behind `--backend-tls`;
    /// `None`: plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Timings of the SignalR test hub (`{prefix}…/hub`).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Time between the hub's pings (type 6); the client's default server timeout is 30 s.
    pub ping_interval: Duration,
    /// How long a long poll waits for a message before it answers 200 with no content.
    /// Below the router's `--http-idle-timeout` (60 s), so a quiet poll is not cut.
    pub poll_timeout: Duration,
    /// A connection no request has been attached to for this long is forgotten.
    pub idle_timeout: Duration,
    /// How long a closed connection is still known (answers 204 to a poll, 404 to a
    /// send, not counted as unknown), so a client's DELETE after its close message is
    /// not mistaken for a request that reached the wrong pod.
    pub linger: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(30),
        }
    }
}

impl EchoConfig {
    pub fn new(server_name: impl Into<String>) -> Self {
        Self {
            server_name: server_name.into(),
            interval: Duration::from_secs(1),
            path_prefix: PathPrefix::default(),
            tenant_from: TenantFrom::Path,
            counters: true,
            hub: HubConfig::default(),
            tls: None,
        }
    }

    /// Echo only: no counter messages.
    pub fn echo_only(mut self) -> Self {
        self.counters = false;
        self
    }

    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn with_tenant_from(mut self, from: TenantFrom) -> Self {
        self.tenant_from = from;
        self
    }
}

/// The pod name from `POD_NAME` (downward API), falling back to the hostname.
pub fn default_server_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "echo-backend".to_owned())
}
