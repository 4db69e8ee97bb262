//! Upstream: how long a backend has to answer an upgrade (connections refused or reset
//! are retried within it), and when its circuit breaker opens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::values::Span;
use super::ConfigError;
use crate::data::upstream::breaker::BreakerConfig;
use crate::data::upstream::tls::BackendTls;

/// The backends' flags. Their defaults are [`UpstreamArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "Upstream")]
pub struct UpstreamArgs {
    /// Time allowed for a backend to accept the connection and answer a WebSocket upgrade (a plain request: to accept it), then 504.
    #[arg(long, env = "WSROUTER_BACKEND_TIMEOUT", default_value_t = UpstreamArgs::default().backend_timeout)]
    pub backend_timeout: Span,
    /// Consecutive failures to reach one backend (an upgrade or a plain request refused or reset after retries, or no answer in --backend-timeout) that open its circuit breaker; 0: never.
    #[arg(long, env = "WSROUTER_CIRCUIT_FAILURES", default_value_t = UpstreamArgs::default().circuit_failures)]
    pub circuit_failures: u32,
    /// How long an open circuit answers 503 at once before one probe connection is let through.
    #[arg(long, env = "WSROUTER_CIRCUIT_COOLDOWN", default_value_t = UpstreamArgs::default().circuit_cooldown)]
    pub circuit_cooldown: Span,
    /// Speak TLS to the pods (sockets and plain requests alike), verifying each against --backend-ca.
    #[arg(long, env = "WSROUTER_BACKEND_TLS")]
    pub backend_tls: bool,
    /// The CA bundle (PEM) the pods' certificates chain to (required with --backend-tls).
    #[arg(long, env = "WSROUTER_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,
    /// The router's certificate (PEM) for pods that ask for one (mTLS); with --backend-client-key.
    #[arg(long, env = "WSROUTER_BACKEND_CLIENT_CERT")]
    pub backend_client_cert: Option<PathBuf>,
    /// The key of --backend-client-cert (PEM).
    #[arg(long, env = "WSROUTER_BACKEND_CLIENT_KEY")]
    pub backend_client_key: Option<PathBuf>,
    /// The name (SNI, and what the certificate must name) every pod is asked for; unset: each pod's own host (its DNS name, or its IP address).
    #[arg(long, env = "WSROUTER_BACKEND_SERVER_NAME")]
    pub backend_server_name: Option<String>,
}

impl Default for UpstreamArgs {
    /// The backends' defaults: the one place they are written (`--help` shows these).
    fn default() -> Self {
        Self {
            backend_timeout: Span::secs(5),
            circuit_failures: 3,
            circuit_cooldown: Span::secs(5),
            backend_tls: false,
            backend_ca: None,
            backend_client_cert: None,
            backend_client_key: None,
            backend_server_name: None,
        }
    }
}

impl UpstreamArgs {
    pub(crate) fn backend_timeout(&self) -> Duration {
        self.backend_timeout.get()
    }

    /// TLS to the pods, its files read; `None` without `--backend-tls` (whose other
    /// flags are then refused, so a typo does not leave the pods in plaintext unseen).
    pub(crate) fn backend_tls(&self) -> Result<Option<Arc<BackendTls>>, ConfigError> {
        let client = match (&self.backend_client_cert, &self.backend_client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err(ConfigError::BackendClientPair),
        };
        if !self.backend_tls {
            let stray =
                self.backend_ca.is_some() || client.is_some() || self.backend_server_name.is_some();
            return if stray {
                Err(ConfigError::BackendTlsFlagWithoutTls)
            } else {
                Ok(None)
            };
        }
        let ca = self
            .backend_ca
            .as_deref()
            .ok_or(ConfigError::BackendCaNeeded)?;
        BackendTls::load(ca, client, self.backend_server_name.as_deref())
            .map(|t| Some(Arc::new(t)))
            .map_err(ConfigError::BackendTls)
    }

    pub(crate) fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failures: self.circuit_failures,
            cooldown: self.circuit_cooldown.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shared::limits::Limits;

    #[test]
    fn the_defaults_are_the_data_paths() {
        let d = UpstreamArgs::default();
        assert_eq!(
            format!("{:?}", d.breaker()),
            format!("{:?}", BreakerConfig::default())
        );
        assert_eq!(d.backend_timeout(), Limits::default().backend_timeout);
    }

    #[test]
    fn flags_become_the_breaker() {
        let a = UpstreamArgs {
            backend_timeout: Span::secs(2),
            circuit_failures: 0,
            circuit_cooldown: Span(Duration::from_millis(250)),
            ..UpstreamArgs::default()
        };
        assert_eq!(a.backend_timeout(), Duration::from_secs(2));
        let b = a.breaker();
        assert_eq!((b.failures, b.cooldown), (0, Duration::from_millis(250)));
    }

    #[test]
    fn backend_tls_flags_need_backend_tls_and_a_ca() {
        assert!(matches!(UpstreamArgs::default().backend_tls(), Ok(None)));
        let stray = UpstreamArgs {
            backend_ca: Some("/ca.crt".into()),
            ..UpstreamArgs::default()
        };
        assert!(matches!(
            stray.backend_tls(),
            Err(ConfigError::BackendTlsFlagWithoutTls)
        ));
        let no_ca = UpstreamArgs {
            backend_tls: true,
            ..UpstreamArgs::default()
        };
        assert!(matches!(
            no_ca.backend_tls(),
            Err(ConfigError::BackendCaNeeded)
        ));
        let half = UpstreamArgs {
            backend_tls: true,
            backend_ca: Some("/ca.crt".into()),
            backend_client_cert: Some("/c.crt".into()),
            ..UpstreamArgs::default()
        };
        assert!(matches!(
            half.backend_tls(),
            Err(ConfigError::BackendClientPair)
        ));
        let missing = UpstreamArgs {
            backend_tls: true,
            backend_ca: Some("/nonexistent/ca.crt".into()),
            ..UpstreamArgs::default()
        };
        assert!(matches!(
            missing.backend_tls(),
            Err(ConfigError::BackendTls(_))
        ));
    }
}
