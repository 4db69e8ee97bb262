//! Upstream: how long a backend has to answer an upgrade (connections refused or reset
//! are retried within it), and when its circuit breaker opens.

use std::time::Duration;

use clap::Args;

use super::values::Span;
use crate::data::upstream::breaker::BreakerConfig;

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
}

impl Default for UpstreamArgs {
    /// The backends' defaults: the one place they are written (`--help` shows these).
    fn default() -> Self {
        Self {
            backend_timeout: Span::secs(5),
            circuit_failures: 3,
            circuit_cooldown: Span::secs(5),
        }
    }
}

impl UpstreamArgs {
    pub(crate) fn backend_timeout(&self) -> Duration {
        self.backend_timeout.get()
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
        };
        assert_eq!(a.backend_timeout(), Duration::from_secs(2));
        let b = a.breaker();
        assert_eq!((b.failures, b.cooldown), (0, Duration::from_millis(250)));
    }
}
