//! Why a request got no upgrade: one variant per answer (what each comes to is
//! `verdict`'s).

use crate::data::admission::auth::{Denied, ForwardDenied};
use http::header::HeaderName;
use thiserror::Error;
use wsrouter::{AmbiguousPath, NamespaceError, PathError, SetId};

use crate::data::admission::budget::Spent;
use crate::data::admission::pools::Refusal;
use crate::data::upstream::error::UpstreamError;

/// Why a request got no upgrade or no answer from its backend. One variant per answer; [`ProxyError::classify`] says
/// what each comes to.
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
    #[error("too many new connections just now; retry after {retry_after}s")]
    OverBudget { spent: Spent, retry_after: u32 },
    #[error("this tenant has as many sockets as it may hold here; retry later")]
    TenantFull,
    #[error("origin not allowed")]
    OriginDenied,
    /// No token, a bad one, or one that does not open the tenant (`--auth jwt`).
    #[error("{0}")]
    Unauthorized(Denied),
    /// The authorization service kept the request out (`--auth forward:URL`).
    #[error("{0}")]
    AuthService(ForwardDenied),
    #[error("{0}")]
    NoTenant(#[source] PathError),
    #[error("shutting down")]
    ShuttingDown,
    #[error("this tenant has moved to another pod; retry")]
    TenantMoved,
    #[error("{0} is not forwarded")]
    MethodNotAllowed(http::Method),
    #[error("request body larger than {limit} bytes (--max-request-body)")]
    BodyTooLarge { limit: u64 },
    #[error("request body stalled: no data for {}s (--http-idle-timeout)", .idle.as_secs())]
    BodyStalled { idle: std::time::Duration },
    #[error("header {0:?} has '_' in its name; send it with '-' (--underscore-headers refuse)")]
    UnderscoreHeader(HeaderName),
    #[error("no routing table loaded yet")]
    NoTable,
    #[error("backend {ordinal} is {}", if *.terminating { "terminating" } else { "not serving" })]
    BackendNotServing {
        set: SetId,
        ordinal: u32,
        terminating: bool,
    },
    #[error("backend {ordinal} has no known address yet")]
    BackendUnknown { set: SetId, ordinal: u32 },
    /// The backend was asked and did not upgrade, or its breaker kept it from being asked.
    #[error(transparent)]
    Backend(#[from] UpstreamError),
}

impl ProxyError {
    /// Whether the answer is about the pod the request was routed to: it is not serving
    /// or not known yet, or it was asked and failed (unreachable, timed out, refused the
    /// upgrade, or its breaker is open). The router's own refusals of the client (rates,
    /// caps, budgets, limits, the door) are not: a backend set's success rate is judged
    /// on its pods, not on how busy the router is.
    pub(crate) fn about_the_pod(&self) -> bool {
        matches!(
            self,
            Self::BackendNotServing { .. } | Self::BackendUnknown { .. } | Self::Backend(_)
        )
    }

    /// The backend set of the pod a refusal is about, when the request was refused
    /// while routed (its pod not serving or not known).
    pub(crate) fn set(&self) -> Option<SetId> {
        match self {
            Self::BackendNotServing { set, .. } | Self::BackendUnknown { set, .. } => Some(*set),
            _ => None,
        }
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
