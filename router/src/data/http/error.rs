//! Why a request got no upgrade: one variant per answer.

use std::io;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use thiserror::Error;
use wsrouter::{AmbiguousPath, NamespaceError, PathError};

use crate::data::admission::pools::Refusal;
use crate::data::http::answer::ProxyBody;

/// Why a request got no upgrade. One variant per answer; [`ProxyError::status`] maps them.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadNamespace(#[source] NamespaceError),
    #[error("{0}")]
    AmbiguousPath(#[source] AmbiguousPath),
    #[error("{0}")]
    BadHost(#[source] HostError),
    #[error("Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 §4.1)")]
    BadKey,
    #[error("only WebSocket version 13 is supported")]
    UnsupportedVersion,
    #[error("at capacity ({})", .0.as_str())]
    AtCapacity(Refusal),
    #[error("too many new connections from this address; retry after {retry_after}s")]
    RateLimited { retry_after: u32 },
    #[error("this tenant has as many sockets as it may hold here; retry later")]
    TenantFull,
    #[error("origin not allowed")]
    OriginDenied,
    #[error("{0}")]
    NoTenant(#[source] PathError),
    #[error("shutting down")]
    ShuttingDown,
    #[error("backend {ordinal} ({addr}) answered 101 with a bad handshake: {why}")]
    BackendBadHandshake {
        ordinal: u32,
        addr: Box<str>,
        why: BadHandshake,
    },
    #[error(
        "this path only serves WebSocket upgrades (GET with Upgrade: websocket over HTTP/1.1)"
    )]
    UpgradeRequired,
    #[error("backend {ordinal} ({addr}) unreachable")]
    BackendUnreachable {
        ordinal: u32,
        addr: Box<str>,
        #[source]
        source: io::Error,
    },
    #[error("backend {ordinal} ({addr}) did not answer the upgrade in time")]
    BackendTimeout { ordinal: u32, addr: Box<str> },
    #[error("backend {ordinal} ({addr}) failed during the upgrade")]
    BackendProtocol {
        ordinal: u32,
        addr: Box<str>,
        #[source]
        source: hyper::Error,
    },
    #[error("backend {ordinal} ({addr}) answered 101 without a WebSocket upgrade")]
    BackendBadUpgrade { ordinal: u32, addr: Box<str> },
    #[error("header {0:?} has '_' in its name; send it with '-' (--underscore-headers refuse)")]
    UnderscoreHeader(HeaderName),
    #[error("no routing table loaded yet")]
    NoTable,
    #[error("backend {ordinal} is {}", if *.terminating { "terminating" } else { "not serving" })]
    BackendNotServing { ordinal: u32, terminating: bool },
    #[error("backend {ordinal} has no known address yet")]
    BackendUnknown { ordinal: u32 },
    #[error("backend {ordinal} keeps failing: its circuit is open")]
    BackendCircuitOpen { ordinal: u32, retry_after: u32 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadNamespace(_)
            | Self::AmbiguousPath(_)
            | Self::BadHost(_)
            | Self::BadKey
            | Self::UnderscoreHeader(_)
            | Self::NoTenant(_) => StatusCode::BAD_REQUEST,
            Self::OriginDenied => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::TenantFull => StatusCode::TOO_MANY_REQUESTS,
            Self::UpgradeRequired | Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::BackendUnreachable { .. }
            | Self::BackendProtocol { .. }
            | Self::BackendBadUpgrade { .. }
            | Self::BackendBadHandshake { .. } => StatusCode::BAD_GATEWAY,
            Self::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::AtCapacity(
                Refusal::LivePerIp
                | Refusal::PendingPerIp
                | Refusal::TenantCap
                | Refusal::RatePerIp,
            ) => StatusCode::TOO_MANY_REQUESTS,
            Self::AtCapacity(Refusal::Origin) => StatusCode::FORBIDDEN,
            Self::NoTable
            | Self::BackendNotServing { .. }
            | Self::BackendUnknown { .. }
            | Self::BackendCircuitOpen { .. }
            | Self::AtCapacity(Refusal::LiveFull)
            | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Refused by a cap or rule on who may connect: counted by reason.
    pub(super) fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::AtCapacity(r) => Some(*r),
            Self::RateLimited { .. } => Some(Refusal::RatePerIp),
            Self::TenantFull => Some(Refusal::TenantCap),
            Self::OriginDenied => Some(Refusal::Origin),
            _ => None,
        }
    }

    /// The backend did not answer as a live pod does: counted by its circuit breaker.
    pub(super) fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Self::BackendUnreachable { .. }
                | Self::BackendTimeout { .. }
                | Self::BackendProtocol { .. }
        )
    }

    /// A connection refused, reset or aborted before the backend said anything: what a
    /// restarting pod does, and safe to try again (the client has heard nothing yet).
    pub(super) fn is_retryable(&self) -> bool {
        let reset = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            )
        };
        match self {
            Self::BackendUnreachable { source, .. } => reset(source),
            Self::BackendProtocol { source, .. } => {
                let mut cause = std::error::Error::source(source);
                while let Some(c) = cause {
                    if c.downcast_ref::<io::Error>().is_some_and(reset) {
                        return true;
                    }
                    cause = c.source();
                }
                source.is_incomplete_message()
            }
            _ => false,
        }
    }

    /// Refused for what the client sent (or how much), not for the state of the router
    /// or a backend: a 4xx.
    pub(super) fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// Seconds a client should wait before retrying, for answers that will change soon.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::NoTable | Self::AtCapacity(_) | Self::ShuttingDown => Some(1),
            Self::RateLimited { retry_after } => Some(*retry_after),
            // Sockets of a busy tenant end at their own pace; a few seconds is polite.
            Self::TenantFull => Some(5),
            // The EndpointSlices name a pod within a second or two of its start.
            Self::BackendUnknown { .. } => Some(2),
            // A pod restart takes seconds; sooner would only be refused again.
            Self::BackendNotServing { .. } => Some(5),
            Self::BackendCircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The one-line body a client gets. Backend errors do not reveal backend addresses.
    fn client_reason(&self) -> String {
        // A 4xx names what the client should change: its message says just that.
        if self.is_client_error() {
            return format!("{self}\n");
        }
        match self {
            Self::AtCapacity(_) => "at capacity; retry shortly\n".to_owned(),
            Self::ShuttingDown => "shutting down; retry\n".to_owned(),
            Self::BackendUnreachable { .. } => "backend unavailable\n".to_owned(),
            Self::BackendTimeout { .. } => "backend did not answer in time\n".to_owned(),
            Self::BackendProtocol { .. }
            | Self::BackendBadUpgrade { .. }
            | Self::BackendBadHandshake { .. } => "backend error\n".to_owned(),
            Self::NoTable => "not ready: no routing table yet\n".to_owned(),
            Self::BackendNotServing { .. }
            | Self::BackendUnknown { .. }
            | Self::BackendCircuitOpen { .. } => "backend not ready; retry shortly\n".to_owned(),
            // The 4xx variants, answered above.
            Self::NotFound
            | Self::BadNamespace(_)
            | Self::AmbiguousPath(_)
            | Self::BadHost(_)
            | Self::BadKey
            | Self::UpgradeRequired
            | Self::UnsupportedVersion
            | Self::RateLimited { .. }
            | Self::TenantFull
            | Self::OriginDenied
            | Self::UnderscoreHeader(_)
            | Self::NoTenant(_) => format!("{self}\n"),
        }
    }

    /// Every answer but a 101 closes the connection: a client gets one request per
    /// connection, so an idle keep-alive connection cannot hold a slot.
    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(Either::Left(Full::new(Bytes::from(self.client_reason()))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if matches!(self, Self::UpgradeRequired | Self::UnsupportedVersion) {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Why a request's Host is refused (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HostError {
    #[error("missing Host header (RFC 9112 §3.2)")]
    Missing,
    #[error("more than one Host header (RFC 9112 §3.2)")]
    Repeated,
    #[error("Host header is not a valid host[:port]")]
    Invalid,
}

/// What was wrong with a backend's 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadHandshake {
    #[error("no Upgrade: websocket")]
    Upgrade,
    #[error("no Connection: upgrade")]
    Connection,
    #[error("Sec-WebSocket-Accept missing or not the one for the key sent")]
    Accept,
    #[error("a subprotocol the client did not offer")]
    Protocol,
    #[error("an extension the client did not offer")]
    Extension,
}

impl BadHandshake {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::Connection => "connection",
            Self::Accept => "accept",
            Self::Protocol => "protocol",
            Self::Extension => "extension",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_or_reset_connection_is_retried_and_nothing_else() {
        let unreachable = |kind| ProxyError::BackendUnreachable {
            ordinal: 0,
            addr: "a:1".into(),
            source: io::Error::from(kind),
        };
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            assert!(unreachable(kind).is_retryable(), "{kind:?}");
            assert!(unreachable(kind).is_backend_failure());
        }
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::HostUnreachable] {
            assert!(!unreachable(kind).is_retryable(), "{kind:?}");
        }
        assert!(!ProxyError::NoTable.is_retryable());
        assert!(!ProxyError::NoTable.is_backend_failure());
    }

    #[test]
    fn statuses_are_pinned() {
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (ProxyError::NotFound, 404),
            (ProxyError::BadNamespace(NamespaceError::Empty), 400),
            (ProxyError::UpgradeRequired, 426),
            (
                ProxyError::BackendUnreachable {
                    ordinal: 1,
                    addr: "a:1".into(),
                    source: io(),
                },
                502,
            ),
            (
                ProxyError::BackendTimeout {
                    ordinal: 1,
                    addr: "a:1".into(),
                },
                504,
            ),
            (
                ProxyError::BackendBadUpgrade {
                    ordinal: 1,
                    addr: "a:1".into(),
                },
                502,
            ),
            (ProxyError::NoTable, 503),
            (
                ProxyError::BackendNotServing {
                    ordinal: 2,
                    terminating: true,
                },
                503,
            ),
            (ProxyError::BackendUnknown { ordinal: 2 }, 503),
            (
                ProxyError::BackendCircuitOpen {
                    ordinal: 2,
                    retry_after: 4,
                },
                503,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            let body = e.client_reason();
            assert!(
                body.ends_with('\n') && body.matches('\n').count() == 1,
                "{body:?}"
            );
            assert!(!body.contains("a:1"), "backend address leaked: {body}");
        }
    }
}
