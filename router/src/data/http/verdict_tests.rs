use std::collections::BTreeSet;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderName;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use wsrouter::{AmbiguousPath, NamespaceError, PathError, TenantFrom};

use crate::data::admission::budget::Spent;

use super::*;
use crate::data::admission::auth::{Denied, ForwardDenied};
use crate::data::http::error::HostError;

/// A 4xx that names what the client should change, logged at `debug`, and nothing else.
fn client(status: u16) -> Verdict {
    Verdict {
        status: StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}")),
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

/// A 5xx with a fixed line, logged as a warning, and nothing else.
fn failed(status: u16, line: &'static str) -> Verdict {
    Verdict {
        body: Body::Fixed(line),
        log: Log::Failed,
        ..client(status)
    }
}

fn refused(why: Refusal) -> Option<Counted> {
    Some(Counted::Refused(why))
}

fn unreachable(kind: io::ErrorKind) -> ProxyError {
    ProxyError::Backend(UpstreamError::Unreachable {
        ordinal: 1,
        addr: "a:1".into(),
        source: io::Error::from(kind),
    })
}

fn protocol(source: hyper::Error) -> ProxyError {
    ProxyError::Backend(UpstreamError::Protocol {
        ordinal: 1,
        addr: "a:1".into(),
        source,
    })
}

/// A backend socket whose reads fail with `.0` and whose writes all go through.
struct Failing(io::ErrorKind);

impl AsyncRead for Failing {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(self.0.into()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What hyper's client makes of a backend connection `io`.
async fn hyper_error<I>(io: I) -> hyper::Error
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    match sender.send_request(Request::new(Empty::new())).await {
        Ok(resp) => panic!("an answer: {resp:?}"),
        Err(e) => e,
    }
}

/// What hyper's client makes of a backend that reads the request, answers `answer` and
/// hangs up.
async fn hyper_error_answering(answer: &'static [u8]) -> hyper::Error {
    let (near, mut far) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let mut buf = [0; 4096];
        let _ = far.read(&mut buf).await;
        let _ = far.write_all(answer).await;
    });
    hyper_error(near).await
}

/// Each variant by name; no wildcard, so a new variant fails to compile here until it is
/// named, and the table test below fails until it has its row.
fn name_of(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::NotFound => "NotFound",
        ProxyError::BadNamespace(_) => "BadNamespace",
        ProxyError::AmbiguousPath(_) => "AmbiguousPath",
        ProxyError::BadHost(_) => "BadHost",
        ProxyError::BadKey => "BadKey",
        ProxyError::UnsupportedVersion => "UnsupportedVersion",
        ProxyError::AtCapacity(_) => "AtCapacity",
        ProxyError::RateLimited { .. } => "RateLimited",
        ProxyError::OverBudget {
            spent: Spent::Global,
            ..
        } => "OverBudget(Global)",
        ProxyError::OverBudget {
            spent: Spent::Pod, ..
        } => "OverBudget(Pod)",
        ProxyError::TenantFull => "TenantFull",
        ProxyError::OriginDenied => "OriginDenied",
        ProxyError::Unauthorized(_) => "Unauthorized",
        ProxyError::AuthService(ForwardDenied::Refused { .. }) => "AuthService(Refused)",
        ProxyError::AuthService(ForwardDenied::Unavailable) => "AuthService(Unavailable)",
        ProxyError::NoTenant(_) => "NoTenant",
        ProxyError::ShuttingDown => "ShuttingDown",
        ProxyError::TenantMoved => "TenantMoved",
        ProxyError::MethodNotAllowed(_) => "MethodNotAllowed",
        ProxyError::BodyTooLarge { .. } => "BodyTooLarge",
        ProxyError::BodyStalled { .. } => "BodyStalled",
        ProxyError::UnderscoreHeader(_) => "UnderscoreHeader",
        ProxyError::NoTable => "NoTable",
        ProxyError::BackendNotServing { .. } => "BackendNotServing",
        ProxyError::BackendUnknown { .. } => "BackendUnknown",
        ProxyError::Backend(UpstreamError::Unreachable { .. }) => "Backend(Unreachable)",
        ProxyError::Backend(UpstreamError::Timeout { .. }) => "Backend(Timeout)",
        ProxyError::Backend(UpstreamError::Protocol { .. }) => "Backend(Protocol)",
        ProxyError::Backend(UpstreamError::BadUpgrade { .. }) => "Backend(BadUpgrade)",
        ProxyError::Backend(UpstreamError::BadHandshake { .. }) => "Backend(BadHandshake)",
        ProxyError::Backend(UpstreamError::CircuitOpen { .. }) => "Backend(CircuitOpen)",
    }
}
const VARIANTS: usize = 31;

/// Every error and its whole verdict: what the client gets, what is counted and logged,
/// and what the dial and the breaker make of it.
#[tokio::test]
async fn every_error_has_one_verdict() {
    use io::ErrorKind as K;
    let incomplete = hyper_error_answering(b"").await;
    assert!(incomplete.is_incomplete_message(), "{incomplete:?}");
    let unparsable = hyper_error_answering(b"garbage\r\n\r\n").await;
    assert!(unparsable.is_parse(), "{unparsable:?}");
    let reset = hyper_error(Failing(K::ConnectionReset)).await;
    let timed_out = hyper_error(Failing(K::TimedOut)).await;
    let path = PathError::Missing(TenantFrom::Path);
    let not_serving = |terminating| ProxyError::BackendNotServing {
        set: 0,
        ordinal: 2,
        terminating,
    };
    let cases: Vec<(ProxyError, Verdict)> = vec![
        (ProxyError::NotFound, client(404)),
        (ProxyError::BadNamespace(NamespaceError::Empty), client(400)),
        (
            ProxyError::AmbiguousPath(AmbiguousPath::DotSegment),
            client(400),
        ),
        (ProxyError::BadHost(HostError::Repeated), client(400)),
        (ProxyError::BadKey, client(400)),
        (
            ProxyError::Unauthorized(Denied::Expired),
            Verdict {
                counted: Some(Counted::Auth("expired")),
                challenge: Some(Denied::Expired.challenge()),
                ..client(401)
            },
        ),
        (
            ProxyError::AuthService(ForwardDenied::Refused {
                status: StatusCode::UNAUTHORIZED,
                challenge: None,
            }),
            Verdict {
                counted: Some(Counted::Auth("service_refused")),
                ..client(401)
            },
        ),
        (
            ProxyError::AuthService(ForwardDenied::Unavailable),
            Verdict {
                counted: Some(Counted::Auth("service_unavailable")),
                retry_after: Some(1),
                ..failed(503, "authorization unavailable; retry\n")
            },
        ),
        (
            ProxyError::Unauthorized(Denied::WrongTenant),
            Verdict {
                counted: Some(Counted::Auth("wrong_tenant")),
                challenge: Some(Denied::WrongTenant.challenge()),
                ..client(403)
            },
        ),
        (
            ProxyError::UnderscoreHeader(HeaderName::from_static("x_a")),
            client(400),
        ),
        (ProxyError::NoTenant(path), client(400)),
        (
            ProxyError::MethodNotAllowed(http::Method::TRACE),
            client(405),
        ),
        (ProxyError::BodyTooLarge { limit: 1 }, client(413)),
        (
            ProxyError::BodyStalled {
                idle: std::time::Duration::from_secs(60),
            },
            client(408),
        ),
        (
            ProxyError::UnsupportedVersion,
            Verdict {
                advertise_upgrade: true,
                ..client(426)
            },
        ),
        (
            ProxyError::OriginDenied,
            Verdict {
                counted: refused(Refusal::Origin),
                ..client(403)
            },
        ),
        (
            ProxyError::RateLimited { retry_after: 3 },
            Verdict {
                retry_after: Some(3),
                counted: refused(Refusal::RatePerIp),
                ..client(429)
            },
        ),
        (
            ProxyError::OverBudget {
                spent: Spent::Global,
                retry_after: 17,
            },
            Verdict {
                retry_after: Some(17),
                counted: refused(Refusal::UpgradeBudget),
                log: Log::Refused,
                ..failed(503, "busy: too many new connections; retry later\n")
            },
        ),
        (
            ProxyError::OverBudget {
                spent: Spent::Pod,
                retry_after: 2,
            },
            Verdict {
                retry_after: Some(2),
                counted: refused(Refusal::PodUpgradeBudget),
                log: Log::Refused,
                ..failed(503, "busy: too many new connections; retry later\n")
            },
        ),
        (
            ProxyError::TenantFull,
            Verdict {
                retry_after: Some(5),
                counted: refused(Refusal::TenantCap),
                ..client(429)
            },
        ),
        (
            ProxyError::AtCapacity(Refusal::LiveFull),
            Verdict {
                retry_after: Some(1),
                counted: refused(Refusal::LiveFull),
                log: Log::Refused,
                ..failed(503, "at capacity; retry shortly\n")
            },
        ),
        (
            ProxyError::AtCapacity(Refusal::Origin),
            Verdict {
                retry_after: Some(1),
                counted: refused(Refusal::Origin),
                ..client(403)
            },
        ),
        (
            ProxyError::AtCapacity(Refusal::PendingPerIp),
            Verdict {
                retry_after: Some(1),
                counted: refused(Refusal::PendingPerIp),
                ..client(429)
            },
        ),
        (
            ProxyError::AtCapacity(Refusal::LivePerIp),
            Verdict {
                retry_after: Some(1),
                counted: refused(Refusal::LivePerIp),
                ..client(429)
            },
        ),
        (
            ProxyError::AtCapacity(Refusal::TenantCap),
            Verdict {
                retry_after: Some(1),
                counted: refused(Refusal::TenantCap),
                ..client(429)
            },
        ),
        (
            ProxyError::AtCapacity(Refusal::RatePerIp),
            Verdict {
                retry_after: Some(1),
                counted: refused(Refusal::RatePerIp),
                ..client(429)
            },
        ),
        (
            ProxyError::ShuttingDown,
            Verdict {
                retry_after: Some(1),
                log: Log::Refused,
                ..failed(503, "shutting down; retry\n")
            },
        ),
        (
            ProxyError::TenantMoved,
            Verdict {
                retry_after: Some(1),
                log: Log::Refused,
                ..failed(503, "tenant moved; retry\n")
            },
        ),
        (
            ProxyError::NoTable,
            Verdict {
                retry_after: Some(1),
                ..failed(503, "not ready: no routing table yet\n")
            },
        ),
        (
            not_serving(true),
            Verdict {
                retry_after: Some(5),
                ..failed(503, NOT_READY)
            },
        ),
        (
            not_serving(false),
            Verdict {
                retry_after: Some(5),
                ..failed(503, NOT_READY)
            },
        ),
        (
            ProxyError::BackendUnknown { set: 0, ordinal: 2 },
            Verdict {
                retry_after: Some(2),
                ..failed(503, NOT_READY)
            },
        ),
        (
            unreachable(K::ConnectionRefused),
            Verdict {
                retry: true,
                counts_against_backend: true,
                ..failed(502, "backend unavailable\n")
            },
        ),
        (
            unreachable(K::ConnectionReset),
            Verdict {
                retry: true,
                counts_against_backend: true,
                ..failed(502, "backend unavailable\n")
            },
        ),
        (
            unreachable(K::ConnectionAborted),
            Verdict {
                retry: true,
                counts_against_backend: true,
                ..failed(502, "backend unavailable\n")
            },
        ),
        (
            unreachable(K::TimedOut),
            Verdict {
                counts_against_backend: true,
                ..failed(502, "backend unavailable\n")
            },
        ),
        (
            unreachable(K::HostUnreachable),
            Verdict {
                counts_against_backend: true,
                ..failed(502, "backend unavailable\n")
            },
        ),
        (
            ProxyError::Backend(UpstreamError::Timeout {
                ordinal: 1,
                addr: "a:1".into(),
            }),
            Verdict {
                counts_against_backend: true,
                ..failed(504, "backend did not answer in time\n")
            },
        ),
        (
            protocol(incomplete),
            Verdict {
                retry: true,
                counts_against_backend: true,
                ..failed(502, BACKEND_ERROR)
            },
        ),
        (
            protocol(reset),
            Verdict {
                retry: true,
                counts_against_backend: true,
                ..failed(502, BACKEND_ERROR)
            },
        ),
        (
            protocol(timed_out),
            Verdict {
                counts_against_backend: true,
                ..failed(502, BACKEND_ERROR)
            },
        ),
        (
            protocol(unparsable),
            Verdict {
                counts_against_backend: true,
                ..failed(502, BACKEND_ERROR)
            },
        ),
        (
            ProxyError::Backend(UpstreamError::BadUpgrade {
                ordinal: 1,
                addr: "a:1".into(),
            }),
            failed(502, BACKEND_ERROR),
        ),
        (
            ProxyError::Backend(UpstreamError::BadHandshake {
                ordinal: 1,
                addr: "a:1".into(),
                why: BadHandshake::Accept,
            }),
            Verdict {
                counted: Some(Counted::BadHandshake(BadHandshake::Accept)),
                ..failed(502, BACKEND_ERROR)
            },
        ),
        (
            ProxyError::Backend(UpstreamError::CircuitOpen {
                ordinal: 2,
                retry_after: 4,
            }),
            Verdict {
                retry_after: Some(4),
                ..failed(503, NOT_READY)
            },
        ),
    ];
    let mut named = BTreeSet::new();
    for (e, want) in &cases {
        named.insert(name_of(e));
        assert_eq!(e.classify(), *want, "{e:?}");
        // The dial hears the same.
        if let ProxyError::Backend(b) = e {
            assert_eq!((JUDGE.retry)(b), want.retry, "{e:?}");
            assert_eq!(
                (JUDGE.counts_against_backend)(b),
                want.counts_against_backend,
                "{e:?}"
            );
        }
        // One line, and no backend address in it.
        let body = want.body.text(e);
        assert!(
            body.ends_with('\n') && body.matches('\n').count() == 1,
            "{body:?}"
        );
        assert!(!body.contains("a:1"), "backend address leaked: {body}");
    }
    assert_eq!(named.len(), VARIANTS, "a variant has no row: {named:?}");
}

#[test]
fn a_refused_or_reset_connection_is_retried_and_nothing_else() {
    for kind in [
        io::ErrorKind::ConnectionRefused,
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::ConnectionAborted,
    ] {
        assert!(unreachable(kind).classify().retry, "{kind:?}");
        assert!(unreachable(kind).classify().counts_against_backend);
    }
    for kind in [io::ErrorKind::TimedOut, io::ErrorKind::HostUnreachable] {
        assert!(!unreachable(kind).classify().retry, "{kind:?}");
    }
    assert!(!ProxyError::NoTable.classify().retry);
    assert!(!ProxyError::NoTable.classify().counts_against_backend);
}

#[test]
fn statuses_are_pinned() {
    let cases = [
        (ProxyError::NotFound, 404),
        (ProxyError::BadNamespace(NamespaceError::Empty), 400),
        (ProxyError::MethodNotAllowed(http::Method::CONNECT), 405),
        (ProxyError::BodyTooLarge { limit: 10 }, 413),
        (unreachable(io::ErrorKind::ConnectionRefused), 502),
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
                set: 0,
                ordinal: 2,
                terminating: true,
            },
            503,
        ),
        (ProxyError::BackendUnknown { set: 0, ordinal: 2 }, 503),
        (
            ProxyError::Backend(UpstreamError::CircuitOpen {
                ordinal: 2,
                retry_after: 4,
            }),
            503,
        ),
    ];
    for (e, status) in cases {
        let verdict = e.classify();
        assert_eq!(verdict.status.as_u16(), status, "{e}");
        let body = verdict.body.text(&e);
        assert!(
            body.ends_with('\n') && body.matches('\n').count() == 1,
            "{body:?}"
        );
        assert!(!body.contains("a:1"), "backend address leaked: {body}");
    }
}
