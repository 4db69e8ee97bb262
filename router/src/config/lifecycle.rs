//! Lifecycle: how the router lets sockets go (the drain on SIGTERM, the reroute drain
//! when a tenant moves) and when an I/O thread counts as stalled.

use std::time::Duration;

use clap::Args;

use super::values::Span;
use super::ConfigError;
use crate::data::relay::drain::RerouteConfig;

/// The drains' and health's flags. Their defaults are [`LifecycleArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "Lifecycle")]
pub struct LifecycleArgs {
    /// On SIGTERM, how long live sockets may keep running before they get close 1001.
    #[arg(long, env = "WSROUTER_DRAIN_GRACE", default_value_t = LifecycleArgs::default().drain_grace)]
    pub drain_grace: Span,
    /// When a tenant's backend changes, close its live sockets on the old one with 1012 after this grace (default: never).
    #[arg(long, env = "WSROUTER_REROUTE_DRAIN", value_parser = humantime::parse_duration)]
    pub reroute_drain: Option<Duration>,
    /// Most reroute closes per second.
    #[arg(long, env = "WSROUTER_REROUTE_DRAIN_RATE", default_value_t = LifecycleArgs::default().reroute_drain_rate, value_parser = clap::value_parser!(u32).range(1..))]
    pub reroute_drain_rate: u32,
    /// An I/O thread whose event loop has not turned for this long is stalled: /healthz answers 503 (so Kubernetes restarts the pod) and wsrouter_worker_stalled names it.
    #[arg(long, env = "WSROUTER_STALL_THRESHOLD", default_value_t = LifecycleArgs::default().stall_threshold)]
    pub stall_threshold: Span,
}

impl Default for LifecycleArgs {
    /// The drains' and health's defaults: the one place they are written (`--help`
    /// shows these); no reroute drain.
    fn default() -> Self {
        Self {
            drain_grace: Span::secs(20),
            reroute_drain: None,
            reroute_drain_rate: 100,
            stall_threshold: Span::secs(10),
        }
    }
}

impl LifecycleArgs {
    pub(crate) fn drain_grace(&self) -> Duration {
        self.drain_grace.get()
    }

    /// Close moved tenants' sockets after `--reroute-drain`; `None`: never.
    pub(crate) fn reroute(&self) -> Option<RerouteConfig> {
        self.reroute_drain.map(|grace| RerouteConfig {
            grace,
            per_second: self.reroute_drain_rate,
        })
    }

    /// A zero threshold would call every thread stalled.
    pub(crate) fn stall_threshold(&self) -> Result<Duration, ConfigError> {
        let t = self.stall_threshold.get();
        if t.is_zero() {
            return Err(ConfigError::ZeroDuration("--stall-threshold"));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shared::limits::Limits;

    #[test]
    fn the_defaults_are_the_data_paths() {
        let d = LifecycleArgs::default();
        assert_eq!(d.drain_grace(), Duration::from_secs(20));
        assert!(d.reroute().is_none());
        assert_eq!(
            d.stall_threshold().unwrap(),
            Limits::default().stall_threshold
        );
    }

    #[test]
    fn flags_become_the_drains() {
        let a = LifecycleArgs {
            drain_grace: Span(Duration::from_millis(500)),
            reroute_drain: Some(Duration::from_secs(30)),
            reroute_drain_rate: 7,
            stall_threshold: Span::secs(2),
        };
        assert_eq!(a.drain_grace(), Duration::from_millis(500));
        let r = a.reroute().unwrap();
        assert_eq!((r.grace, r.per_second), (Duration::from_secs(30), 7));
        assert_eq!(a.stall_threshold().unwrap(), Duration::from_secs(2));
        let zero = LifecycleArgs {
            stall_threshold: Span::secs(0),
            ..a
        };
        assert!(matches!(
            zero.stall_threshold(),
            Err(ConfigError::ZeroDuration("--stall-threshold"))
        ));
    }
}
