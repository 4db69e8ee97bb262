//! The flags `serve` and `dev` share, one group per plane, and the data path's
//! [`Limits`] assembled from them.

use clap::Args;

use super::admin::AdminArgs;
use super::auth::AuthArgs;
use super::edge::EdgeArgs;
use super::http::HttpArgs;
use super::lifecycle::LifecycleArgs;
use super::requests::RequestArgs;
use super::sockets::SocketArgs;
use super::tls::TlsArgs;
use super::upstream::UpstreamArgs;
use super::ConfigError;
use crate::data::shared::limits::{Limits, ProxyProtocol};

/// Limits and timings shared by `serve` and `dev`, by plane; `--help` shows each group
/// under its own heading.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CommonArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub requests: RequestArgs,
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub sockets: SocketArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl CommonArgs {
    /// The authorization service (`--auth forward:URL`), `None` otherwise.
    pub fn forward_auth(
        &self,
    ) -> Result<Option<crate::data::admission::auth::ForwardSettings>, ConfigError> {
        self.auth.forward()
    }

    /// The door (`--auth jwt`), its keys read; `None` otherwise.
    pub fn auth(&self) -> Result<Option<super::AuthSetup>, ConfigError> {
        match self.auth.jwt()? {
            Some((settings, jwks)) => super::AuthSetup::load(settings, jwks).map(Some),
            None => Ok(None),
        }
    }

    /// The data path's limits: the edge's, with the other planes' parts. Checked in the
    /// order they always were (the edge, the stall threshold, the PROXY protocol's
    /// trust, the request rules, the socket timers), so that of several bad flags the
    /// same one is reported first.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let edge = self.edge.limits()?;
        let stall_threshold = self.lifecycle.stall_threshold()?;
        // A header anyone may send would let anyone claim any address.
        if edge.proxy_protocol == ProxyProtocol::On && self.requests.trusted_proxies.is_empty() {
            return Err(ConfigError::ProxyProtocolUntrusted);
        }
        let policy = self.requests.policy()?;
        let timers = self.sockets.timers()?;
        Ok(Limits {
            backend_timeout: self.upstream.backend_timeout(),
            close_timeout: self.sockets.close_timeout(),
            breaker: self.upstream.breaker(),
            http: self.http.limits(timers.tcp_keepalive)?,
            policy,
            timers,
            stall_threshold,
            io_uring: self.sockets.io_uring,
            ..edge
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::values::Span;

    #[test]
    fn the_defaults_are_the_data_paths() {
        let l = CommonArgs::default().limits().unwrap();
        assert_eq!(format!("{l:?}"), format!("{:?}", Limits::default()));
    }

    #[test]
    fn each_plane_fills_its_part() {
        let mut a = CommonArgs::default();
        a.edge.max_connections = 10;
        a.upstream.backend_timeout = Span::secs(2);
        a.upstream.circuit_failures = 9;
        a.sockets.close_timeout = Span::secs(1);
        a.sockets.idle_timeout = Some(Duration::from_secs(30));
        a.requests.connection_burst_per_ip = 4;
        a.lifecycle.stall_threshold = Span::secs(3);
        let l = a.limits().unwrap();
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.backend_timeout, Duration::from_secs(2));
        assert_eq!(l.breaker.failures, 9);
        assert_eq!(l.close_timeout, Duration::from_secs(1));
        assert_eq!(l.timers.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(l.policy.burst_per_ip, 4);
        assert_eq!(l.stall_threshold, Duration::from_secs(3));
    }

    #[test]
    fn the_proxy_protocol_needs_trusted_proxies() {
        let mut a = CommonArgs::default();
        a.edge.proxy_protocol = ProxyProtocol::On;
        assert!(matches!(
            a.limits(),
            Err(ConfigError::ProxyProtocolUntrusted)
        ));
        a.requests.trusted_proxies = vec!["10.0.0.0/8".into()];
        assert_eq!(a.limits().unwrap().proxy_protocol, ProxyProtocol::On);
    }
}
