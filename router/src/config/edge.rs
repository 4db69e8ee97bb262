//! The edge's limits: what a connection may cost before it is admitted (the TLS
//! handshake, the request head, the pending and live pools, per-source caps) and
//! whether it starts with a PROXY protocol header.

use clap::Args;

use super::values::{Size, Span};
use super::ConfigError;
use crate::data::admission::pools::{PENDING_BASE_BYTES, REQUEST_HEAD_BYTES};
use crate::data::shared::limits::{Limits, ProxyProtocol};

/// The edge's flags. Their defaults are [`EdgeArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(next_help_heading = "Edge")]
pub struct EdgeArgs {
    /// Time allowed for a client's TLS handshake.
    #[arg(long, env = "WSROUTER_HANDSHAKE_TIMEOUT", default_value_t = EdgeArgs::default().handshake_timeout)]
    pub handshake_timeout: Span,
    /// Time allowed for a client to send a request head (an upgrade, or a plain request).
    #[arg(long, env = "WSROUTER_REQUEST_TIMEOUT", default_value_t = EdgeArgs::default().request_timeout)]
    pub request_timeout: Span,
    /// Most live connections (request parsed, upgrading or relaying); beyond it new requests get 503.
    #[arg(long, env = "WSROUTER_MAX_CONNECTIONS", default_value_t = EdgeArgs::default().max_connections)]
    pub max_connections: usize,
    /// Most live connections from one source address (IPv6: its /64); 0: no cap (clients often share NATs).
    #[arg(long, env = "WSROUTER_MAX_CONNECTIONS_PER_IP", default_value_t = EdgeArgs::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Most connections still in TLS or reading their request head; when full, the oldest of the address holding the most is dropped.
    #[arg(long, env = "WSROUTER_MAX_PENDING", default_value_t = EdgeArgs::default().max_pending)]
    pub max_pending: usize,
    /// Most bytes those pending connections may hold together (e.g. 24MiB); past it, connections are dropped as for a full pool.
    #[arg(long, env = "WSROUTER_MAX_PENDING_BYTES", default_value_t = EdgeArgs::default().max_pending_bytes)]
    pub max_pending_bytes: Size,
    /// Most pending connections from one source address (IPv6: its /64); more are closed at once.
    #[arg(long, env = "WSROUTER_MAX_PENDING_PER_IP", default_value_t = EdgeArgs::default().max_pending_per_ip)]
    pub max_pending_per_ip: usize,
    /// Largest TLS ClientHello accepted (e.g. 16KiB, 1KiB–64KiB); larger ones get a fatal alert.
    #[arg(long, env = "WSROUTER_MAX_CLIENT_HELLO", default_value_t = EdgeArgs::default().max_client_hello)]
    pub max_client_hello: Size,
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    #[arg(long, env = "WSROUTER_MAX_HEADER_BYTES", default_value_t = EdgeArgs::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// Most header fields in a request; more gets 431.
    #[arg(long, env = "WSROUTER_MAX_HEADERS", default_value_t = EdgeArgs::default().max_headers)]
    pub max_headers: usize,
    /// Connections begin with a PROXY protocol header (v1 or v2) naming the client, as a TCP load balancer sends it (AWS NLB, HAProxy send-proxy-v2); `on` requires it, and only from --trusted-proxies.
    #[arg(long, env = "WSROUTER_PROXY_PROTOCOL", value_enum, default_value_t = EdgeArgs::default().proxy_protocol)]
    pub proxy_protocol: ProxyProtocol,
}

impl Default for EdgeArgs {
    /// The edge's defaults: the one place they are written (`--help` shows these).
    fn default() -> Self {
        Self {
            handshake_timeout: Span::secs(10),
            request_timeout: Span::secs(10),
            max_connections: 9000,
            max_connections_per_ip: 0,
            max_pending: 1000,
            max_pending_bytes: Size::mib(24),
            max_pending_per_ip: 64,
            max_client_hello: Size::kib(16),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            proxy_protocol: ProxyProtocol::Off,
        }
    }
}

impl EdgeArgs {
    /// The edge's part of [`Limits`], checked; the other planes' fields at their
    /// defaults, for [`super::CommonArgs::limits`] to fill.
    pub(crate) fn limits(&self) -> Result<Limits, ConfigError> {
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
        if self.max_pending_bytes.get() < min {
            return Err(ConfigError::PendingBytesTooSmall { min });
        }
        if !(1 << 10..=64 << 10).contains(&self.max_client_hello.get()) {
            return Err(ConfigError::ClientHelloOutOfRange);
        }
        Ok(Limits {
            handshake_timeout: self.handshake_timeout.get(),
            request_timeout: self.request_timeout.get(),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_pending: self.max_pending,
            max_pending_bytes: self.max_pending_bytes.get(),
            max_pending_per_ip: self.max_pending_per_ip,
            max_client_hello: self.max_client_hello.get(),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            proxy_protocol: self.proxy_protocol,
            ..Limits::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_defaults_are_the_data_paths() {
        let l = EdgeArgs::default().limits().unwrap();
        assert_eq!(format!("{l:?}"), format!("{:?}", Limits::default()));
    }

    #[test]
    fn flags_become_the_edges_limits() {
        let args = EdgeArgs {
            handshake_timeout: Span::secs(3),
            request_timeout: Span(Duration::from_millis(1500)),
            max_connections: 10,
            max_connections_per_ip: 2,
            max_pending: 5,
            max_pending_bytes: Size::mib(1),
            max_pending_per_ip: 1,
            max_client_hello: Size::kib(4),
            max_header_bytes: 8192,
            max_headers: 8,
            proxy_protocol: ProxyProtocol::On,
        };
        let l = args.limits().unwrap();
        assert_eq!(l.handshake_timeout, Duration::from_secs(3));
        assert_eq!(l.request_timeout, Duration::from_millis(1500));
        let a = l.admission();
        assert_eq!(
            (
                a.max_live,
                a.max_live_per_ip,
                a.max_pending,
                a.max_pending_per_ip
            ),
            (10, 2, 5, 1)
        );
        assert_eq!(a.max_pending_bytes, 1 << 20);
        assert_eq!((l.max_client_hello, l.max_header_bytes), (4096, 8192));
        assert_eq!(l.max_headers, 8);
        assert_eq!(l.proxy_protocol, ProxyProtocol::On);
    }

    #[test]
    fn limits_that_could_not_work_are_refused() {
        let bad = |f: fn(&mut EdgeArgs)| {
            let mut a = EdgeArgs::default();
            f(&mut a);
            a.limits().unwrap_err().to_string()
        };
        assert!(bad(|a| a.max_header_bytes = 8191).contains("--max-header-bytes"));
        assert!(bad(|a| a.max_connections = 0).contains("--max-connections"));
        assert!(bad(|a| a.max_pending = 0).contains("--max-pending"));
        assert!(bad(|a| a.max_pending_per_ip = 0).contains("--max-pending-per-ip"));
        assert!(bad(|a| a.max_pending_bytes = Size::kib(1)).contains("--max-pending-bytes"));
        assert!(bad(|a| a.max_client_hello = Size(1023)).contains("--max-client-hello"));
        assert!(bad(|a| a.max_client_hello = Size::kib(65)).contains("--max-client-hello"));
        let mut edge = EdgeArgs {
            max_client_hello: Size::kib(64),
            ..EdgeArgs::default()
        };
        assert!(edge.limits().is_ok());
        edge.max_client_hello = Size::kib(1);
        assert!(edge.limits().is_ok());
    }
}
