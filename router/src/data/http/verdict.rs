//! What an error comes to, decided in one place: the status and body the client gets,
//! its `Retry-After`, the counter it adds to, how it is logged, and, for a backend's
//! errors, whether the backend is tried again and whether its breaker hears of it.

use std::io;

use http::StatusCode;

use crate::data::admission::auth::{Denied, ForwardDenied};
use crate::data::admission::budget::Spent;
use crate::data::admission::pools::Refusal;
use crate::data::http::error::ProxyError;
use crate::data::upstream::dial::Judge;
use crate::data::upstream::error::{BadHandshake, UpstreamError};

/// Everything a refusal or failure decides. A 101 has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub status: StatusCode,
    /// The one line the client reads.
    pub body: Body,
    /// Seconds the client should wait before retrying, for answers that will change soon.
    pub retry_after: Option<u32>,
    /// Names the upgrade the path serves (`Upgrade: websocket`,
    /// `Sec-WebSocket-Version: 13`), for a 426.
    pub advertise_upgrade: bool,
    /// The counter it adds to, beside `upgrade_responses` (which counts every status).
    pub counted: Option<Counted>,
    pub log: Log,
    /// The `WWW-Authenticate` challenge of a 401 or 403 at the door.
    pub challenge: Option<&'static str>,
    /// Worth another try at the backend: nothing was said to the client yet, and a
    /// restarting pod refuses or resets like this.
    pub retry: bool,
    /// The backend did not answer as a live pod does: counted by its circuit breaker.
    pub counts_against_backend: bool,
}

/// The body of an answer that is not a 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// The error's own message: a 4xx names what the client should change.
    Message,
    /// A fixed line that reveals nothing of the backends (their addresses least of all).
    Fixed(&'static str),
}

impl Body {
    /// The body's one line, for `e`.
    pub(crate) fn text(self, e: &ProxyError) -> String {
        match self {
            Self::Message => format!("{e}\n"),
            Self::Fixed(line) => line.to_owned(),
        }
    }
}

/// The counter an error adds to, by its reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// `connections_refused`: a cap or rule on who may connect.
    Refused(Refusal),
    /// `backend_handshake_failures`: a backend's 101 refused as a 502.
    BadHandshake(BadHandshake),
    /// `auth_refused`: turned away at the door, by its reason label.
    Auth(&'static str),
}

/// How an error is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    /// `debug`, "request refused": the client's doing, a cap, or the drain.
    Refused,
    /// `warn`, "upgrade failed": the router or a backend is not serving.
    Failed,
}

const NOT_READY: &str = "backend not ready; retry shortly\n";
const BACKEND_ERROR: &str = "backend error\n";

impl Verdict {
    /// Refused for what the client sent (or how much): a 4xx that says why.
    const fn client(status: StatusCode) -> Self {
        Self {
            status,
            body: Body::Message,
            retry_after: None,
            advertise_upgrade: false,
            counted: None,
            log: Log::Refused,
            challenge: None,
            retry: false,
            counts_against_backend: false,
        }
    }

    /// Not served, for the state of the router or a backend: a 5xx with a fixed line.
    const fn failed(status: StatusCode, body: &'static str) -> Self {
        Self {
            body: Body::Fixed(body),
            log: Log::Failed,
            ..Self::client(status)
        }
    }

    const fn retry_after(self, secs: u32) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }

    /// Turned away at the door: 401 or 403 with its challenge, counted by reason.
    fn denied(why: Denied) -> Self {
        Self {
            counted: Some(Counted::Auth(why.as_str())),
            challenge: Some(why.challenge()),
            ..Self::client(why.status())
        }
    }

    /// Kept out by the authorization service: its own 401 or 403 (its challenge is
    /// copied from the error itself), or 503 when it could not answer.
    fn service_denied(why: &ForwardDenied) -> Self {
        match why {
            ForwardDenied::Refused { status, .. } => Self {
                counted: Some(Counted::Auth("service_refused")),
                ..Self::client(*status)
            },
            ForwardDenied::Unavailable => Self {
                counted: Some(Counted::Auth("service_unavailable")),
                ..Self::failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "authorization unavailable; retry\n",
                )
            }
            .retry_after(1),
        }
    }

    /// Refused by a cap or rule: counted by reason, and logged at `debug`.
    const fn refused(self, why: Refusal) -> Self {
        Self {
            counted: Some(Counted::Refused(why)),
            log: Log::Refused,
            ..self
        }
    }
}

impl Verdict {
    /// A wave past the upgrade budget: come back at the random moment drawn for this one.
    fn over_budget(spent: Spent, retry_after: u32) -> Self {
        let busy = "busy: too many new connections; retry later\n";
        Verdict::failed(StatusCode::SERVICE_UNAVAILABLE, busy)
            .refused(match spent {
                Spent::Global => Refusal::UpgradeBudget,
                Spent::Pod => Refusal::PodUpgradeBudget,
            })
            .retry_after(retry_after)
    }
}

impl ProxyError {
    /// The one verdict on this error (see [`Verdict`]); every decision reads it.
    pub(crate) fn classify(&self) -> Verdict {
        use StatusCode as S;
        match self {
            Self::NotFound => Verdict::client(S::NOT_FOUND),
            Self::BadNamespace(_)
            | Self::AmbiguousPath(_)
            | Self::BadHost(_)
            | Self::BadKey
            | Self::UnderscoreHeader(_)
            | Self::NoTenant(_) => Verdict::client(S::BAD_REQUEST),
            Self::MethodNotAllowed(_) => Verdict::client(S::METHOD_NOT_ALLOWED),
            Self::BodyTooLarge { .. } => Verdict::client(S::PAYLOAD_TOO_LARGE),
            Self::BodyStalled { .. } => Verdict::client(S::REQUEST_TIMEOUT),
            Self::UnsupportedVersion => Verdict {
                advertise_upgrade: true,
                ..Verdict::client(S::UPGRADE_REQUIRED)
            },
            Self::OriginDenied => Verdict::client(S::FORBIDDEN).refused(Refusal::Origin),
            Self::Unauthorized(why) => Verdict::denied(*why),
            Self::AuthService(why) => Verdict::service_denied(why),
            Self::RateLimited { retry_after } => Verdict::client(S::TOO_MANY_REQUESTS)
                .refused(Refusal::RatePerIp)
                .retry_after(*retry_after),
            Self::OverBudget { spent, retry_after } => Verdict::over_budget(*spent, *retry_after),
            // Sockets of a busy tenant end at their own pace; a few seconds is polite.
            Self::TenantFull => Verdict::client(S::TOO_MANY_REQUESTS)
                .refused(Refusal::TenantCap)
                .retry_after(5),
            Self::AtCapacity(why @ Refusal::LiveFull) => {
                Verdict::failed(S::SERVICE_UNAVAILABLE, "at capacity; retry shortly\n")
                    .refused(*why)
                    .retry_after(1)
            }
            Self::AtCapacity(why @ Refusal::Origin) => {
                Verdict::client(S::FORBIDDEN).refused(*why).retry_after(1)
            }
            Self::AtCapacity(why) => Verdict::client(S::TOO_MANY_REQUESTS)
                .refused(*why)
                .retry_after(1),
            Self::ShuttingDown => Verdict {
                log: Log::Refused,
                ..Verdict::failed(S::SERVICE_UNAVAILABLE, "shutting down; retry\n")
            }
            .retry_after(1),
            // Its request may go again at once: it now routes to its new pod.
            Self::TenantMoved => Verdict {
                log: Log::Refused,
                ..Verdict::failed(S::SERVICE_UNAVAILABLE, "tenant moved; retry\n")
            }
            .retry_after(1),
            Self::NoTable => {
                Verdict::failed(S::SERVICE_UNAVAILABLE, "not ready: no routing table yet\n")
                    .retry_after(1)
            }
            // A pod restart takes seconds; sooner would only be refused again.
            Self::BackendNotServing { .. } => {
                Verdict::failed(S::SERVICE_UNAVAILABLE, NOT_READY).retry_after(5)
            }
            // The EndpointSlices name a pod within a second or two of its start.
            Self::BackendUnknown { .. } => {
                Verdict::failed(S::SERVICE_UNAVAILABLE, NOT_READY).retry_after(2)
            }
            Self::Backend(e) => classify_backend(e),
        }
    }
}

/// [`ProxyError::classify`] for a backend's errors: the only ones that retry or count
/// against a backend. `upstream` asks it through [`JUDGE`], as it cannot name this layer.
fn classify_backend(e: &UpstreamError) -> Verdict {
    use StatusCode as S;
    match e {
        UpstreamError::Unreachable { source, .. } => Verdict {
            retry: is_reset(source),
            counts_against_backend: true,
            ..Verdict::failed(S::BAD_GATEWAY, "backend unavailable\n")
        },
        UpstreamError::Timeout { .. } => Verdict {
            counts_against_backend: true,
            ..Verdict::failed(S::GATEWAY_TIMEOUT, "backend did not answer in time\n")
        },
        UpstreamError::Protocol { source, .. } => Verdict {
            retry: reset_before_answer(source),
            counts_against_backend: true,
            ..Verdict::failed(S::BAD_GATEWAY, BACKEND_ERROR)
        },
        UpstreamError::BadUpgrade { .. } => Verdict::failed(S::BAD_GATEWAY, BACKEND_ERROR),
        UpstreamError::BadHandshake { why, .. } => Verdict {
            counted: Some(Counted::BadHandshake(*why)),
            ..Verdict::failed(S::BAD_GATEWAY, BACKEND_ERROR)
        },
        UpstreamError::CircuitOpen { retry_after, .. } => {
            Verdict::failed(S::SERVICE_UNAVAILABLE, NOT_READY).retry_after(*retry_after)
        }
    }
}

/// What the dial asks of the verdict: whether to try again, and whether to tell the
/// breaker.
pub(super) const JUDGE: Judge = Judge {
    retry: |e| classify_backend(e).retry,
    counts_against_backend: |e| classify_backend(e).counts_against_backend,
};

/// A connection refused, reset or aborted: what a restarting pod does.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// The backend's connection reset (or closed) before it said anything.
fn reset_before_answer(e: &hyper::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>().is_some_and(is_reset) {
            return true;
        }
        cause = c.source();
    }
    e.is_incomplete_message()
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
