//! The data path's limits and timeouts: what `config` validates from the command line
//! and every connection reads.

use std::time::Duration;

use super::admission::AdmissionConfig;
use super::breaker::BreakerConfig;
use super::policy::PolicyConfig;

/// Limits and timeouts of the data path.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub backend_timeout: Duration,
    pub close_timeout: Duration,
    pub max_connections: usize,
    /// 0: no per-source cap.
    pub max_connections_per_ip: usize,
    pub max_pending: usize,
    pub max_pending_bytes: usize,
    pub max_pending_per_ip: usize,
    pub max_client_hello: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub breaker: BreakerConfig,
    pub policy: PolicyConfig,
}

impl Default for Limits {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            backend_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            max_connections: 9000,
            max_connections_per_ip: 0,
            max_pending: 1000,
            max_pending_bytes: 24 << 20,
            max_pending_per_ip: 64,
            max_client_hello: super::tls_stream::DEFAULT_MAX_CLIENT_HELLO,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            breaker: BreakerConfig::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl Limits {
    /// The pools these limits describe.
    pub fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            max_pending: self.max_pending,
            max_pending_bytes: self.max_pending_bytes,
            max_pending_per_ip: self.max_pending_per_ip,
            max_live: self.max_connections,
            max_live_per_ip: self.max_connections_per_ip,
        }
    }
}
