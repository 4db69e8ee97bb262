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
use crate::data::upstream::error::UpstreamError;

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
    #[error(
        "this path only serves WebSocket upgrades (GET with Upgrade: websocket over HTTP/1.1)"
    )]
    UpgradeRequired,
    #[error("header {0:?} has '_' in its name; send it with '-' (--underscore-headers refuse)")]
    UnderscoreHeader(HeaderName),
    #[error("no routing table loaded yet")]
    NoTable,
    #[error("backend {ordinal} is {}", if *.terminating { "terminating" } else { "not serving" })]
    BackendNotServing { ordinal: u32, terminating: bool },
    #[error("backend {ordinal} has no known address yet")]
    BackendUnknown { ordinal: u32 },
    /// The backend was asked and did not upgrade, or its breaker kept it from being asked.
    #[error(transparent)]
    Backend(#[from] UpstreamError),
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
            Self::Backend(UpstreamError::Unreachable { .. })
            | Self::Backend(UpstreamError::Protocol { .. })
            | Self::Backend(UpstreamError::BadUpgrade { .. })
            | Self::Backend(UpstreamError::BadHandshake { .. }) => StatusCode::BAD_GATEWAY,
            Self::Backend(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
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
            | Self::Backend(UpstreamError::CircuitOpen { .. })
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
            Self::Backend(UpstreamError::CircuitOpen { retry_after, .. }) => Some(*retry_after),
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
            Self::Backend(UpstreamError::Unreachable { .. }) => "backend unavailable\n".to_owned(),
            Self::Backend(UpstreamError::Timeout { .. }) => {
                "backend did not answer in time\n".to_owned()
            }
            Self::Backend(UpstreamError::Protocol { .. })
            | Self::Backend(UpstreamError::BadUpgrade { .. })
            | Self::Backend(UpstreamError::BadHandshake { .. }) => "backend error\n".to_owned(),
            Self::NoTable => "not ready: no routing table yet\n".to_owned(),
            Self::BackendNotServing { .. }
            | Self::BackendUnknown { .. }
            | Self::Backend(UpstreamError::CircuitOpen { .. }) => {
                "backend not ready; retry shortly\n".to_owned()
            }
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

/// The backend did not answer as a live pod does: counted by its circuit breaker.
pub(super) fn counts_against_backend(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Unreachable { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Protocol { .. }
    )
}

/// A connection refused, reset or aborted before the backend said anything: what a
/// restarting pod does, and safe to try again (the client has heard nothing yet).
pub(super) fn retryable(e: &UpstreamError) -> bool {
    let reset = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        )
    };
    match e {
        UpstreamError::Unreachable { source, .. } => reset(source),
        UpstreamError::Protocol { source, .. } => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_or_reset_connection_is_retried_and_nothing_else() {
        let unreachable = |kind| UpstreamError::Unreachable {
            ordinal: 0,
            addr: "a:1".into(),
            source: io::Error::from(kind),
        };
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            assert!(retryable(&unreachable(kind)), "{kind:?}");
            assert!(counts_against_backend(&unreachable(kind)));
        }
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::HostUnreachable] {
            assert!(!retryable(&unreachable(kind)), "{kind:?}");
        }
        let circuit = UpstreamError::CircuitOpen {
            ordinal: 0,
            retry_after: 1,
        };
        assert!(!retryable(&circuit));
        assert!(!counts_against_backend(&circuit));
    }

    #[test]
    fn statuses_are_pinned() {
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases = [
            (ProxyError::NotFound, 404),
            (ProxyError::BadNamespace(NamespaceError::Empty), 400),
            (ProxyError::UpgradeRequired, 426),
            (
                ProxyError::Backend(UpstreamError::Unreachable {
                    ordinal: 1,
                    addr: "a:1".into(),
                    source: io(),
                }),
                502,
            ),
            (
                ProxyError::Backend(UpstreamError::Timeout {
                    ordinal: 1,
                    addr: "a:1".into(),
                }),
                504,
            ),
            (
                ProxyError::Backend(UpstreamError::BadUpgrade {
                    ordinal: 1,
                    addr: "a:1".into(),
                }),
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
                ProxyError::Backend(UpstreamError::CircuitOpen {
                    ordinal: 2,
                    retry_after: 4,
                }),
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
