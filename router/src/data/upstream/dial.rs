//! Reaching a backend: one try (TCP, then the HTTP/1.1 upgrade exchange), tried again
//! while a restarting pod refuses it, all within the backend timeout, and under the
//! backend's circuit breaker, which hears how it went.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::data::upstream::breaker::{Breakers, Permit, Transition};
use crate::data::upstream::error::{Target, UpstreamError};
use crate::data::upstream::tls::{BackendIo, BackendTls};

/// What a backend made of the upgrade.
pub(crate) enum BackendAnswer {
    /// A 101: its head (not yet checked against the client's offer), its socket, and
    /// the bytes it sent after the head.
    Upgraded {
        head: http::response::Parts,
        io: BackendIo,
        pre: Bytes,
    },
    /// Its own refusal (e.g. 403 or 404), body still to come.
    Refused(Response<Incoming>),
}

/// What the error verdict says of a backend's failures. The verdict belongs to the
/// client's answer, above this layer (`http::verdict`), so it is handed down.
#[derive(Clone, Copy)]
pub(crate) struct Judge {
    /// Worth another try: nothing has been said to the client yet.
    pub retry: fn(&UpstreamError) -> bool,
    /// The backend did not answer as a live pod does: counted by its breaker.
    pub counts_against_backend: fn(&UpstreamError) -> bool,
}

/// How one upgrade reaches its backend.
pub(crate) struct Dial<'a> {
    pub target: Target<'a>,
    /// When the backend must have answered, retries included.
    pub deadline: tokio::time::Instant,
    /// TCP keepalive on the backend socket.
    pub keepalive: Option<Duration>,
    /// The tasks the drain waits for; the one driving the backend connection joins them.
    pub tasks: &'a TaskTracker,
    /// Counted on each try after the first.
    pub retries: &'a Counter,
    pub judge: Judge,
    /// TLS to the pod (`--backend-tls`).
    pub tls: Option<&'a BackendTls>,
}

/// The first pause before retrying a refused or reset backend connection, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// May an upgrade or request to `target` go ahead? Refused while its breaker is open.
pub(crate) fn admit<'a>(
    breakers: &'a Breakers,
    target: Target<'a>,
) -> Result<Permit<'a>, UpstreamError> {
    breakers
        .admit(target.addr)
        .map_err(|r| target.circuit_open(r.retry_after_secs))
}

impl Dial<'_> {
    /// The upgrade, each try with a request from `request`, until the backend answers
    /// or the deadline passes.
    pub(crate) async fn upgrade(
        &self,
        request: impl Fn() -> Request<Empty<Bytes>>,
    ) -> Result<BackendAnswer, UpstreamError> {
        tokio::time::timeout_at(self.deadline, self.retrying(|| self.attempt(request())))
            .await
            .unwrap_or_else(|_| Err(self.target.timeout()))
    }

    /// Tries `attempt` until it succeeds or fails for good, retrying a connection refused
    /// or reset (a pod restarting) after a jittered pause while the deadline allows one
    /// more try. The caller bounds it by the deadline.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let mut pause = RETRY_FIRST;
        loop {
            match attempt().await {
                Err(e) if (self.judge.retry)(&e) => {
                    // Half to all of `pause`, so a burst of clients does not retry in step.
                    let wait = pause.mul_f64(0.5 + jitter() / 2.0);
                    // The next try needs time of its own: one the deadline cut short would
                    // turn this refusal (502) into a timeout (504) on a loaded machine.
                    if tokio::time::Instant::now() + wait + RETRY_FIRST >= self.deadline {
                        return Err(e);
                    }
                    tracing::debug!(backend.ordinal = self.target.ordinal, error = %crate::logging::DisplayChain(&e), ?wait, "backend connection failed; retrying");
                    self.retries.inc();
                    tokio::time::sleep(wait).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                r => return r,
            }
        }
    }

    /// One try: connect, send the upgrade, and on a 101 take the upgraded socket.
    async fn attempt(&self, req: Request<Empty<Bytes>>) -> Result<BackendAnswer, UpstreamError> {
        let target = self.target;
        // An `IP:PORT` (every pod address) is parsed, not looked up: no DNS in cluster mode.
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| target.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        if let Some(idle) = self.keepalive {
            let _ = crate::data::socket::set_keepalive(&tcp, idle);
        }
        let io = match self.tls {
            Some(tls) => tls
                .connect(tcp, target.addr, Some(target.ordinal))
                .await
                .map_err(|e| target.unreachable(e))?,
            None => BackendIo::Plain(tcp),
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| target.protocol(e))?;
        // Drives the backend connection until it is upgraded (or, for a refusal, until the
        // body has been passed on). Tracked like every task of a connection, so the drain
        // waits for it too.
        self.tasks.spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|e| target.protocol(e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(BackendAnswer::Refused(resp));
        }
        let upgraded = hyper::upgrade::on(&mut resp)
            .await
            .map_err(|e| target.protocol(e))?;
        let parts = upgraded
            .downcast::<TokioIo<BackendIo>>()
            .map_err(|_| target.bad_upgrade())?;
        let (head, _) = resp.into_parts();
        Ok(BackendAnswer::Upgraded {
            head,
            io: parts.io.into_inner(),
            pre: parts.read_buf,
        })
    }

    /// Tells the breaker how the exchange went: an answer (a 101, the backend's own
    /// refusal, any response to a plain request) shows it alive; a failure the verdict counts against it, failing;
    /// anything else says nothing (the permit goes undecided).
    pub(crate) fn settle<T>(
        &self,
        permit: Permit<'_>,
        result: &Result<T, UpstreamError>,
        cooldown: Duration,
    ) -> Transition {
        let transition = match result {
            Ok(_) => permit.succeeded(),
            Err(e) if (self.judge.counts_against_backend)(e) => permit.failed(),
            Err(_) => Transition::None,
        };
        let Target { ordinal, addr, .. } = self.target;
        match transition {
            Transition::Opened => {
                tracing::warn!(backend.ordinal = ordinal, backend.addr = %addr, cooldown = ?cooldown, "backend keeps failing: circuit open, its tenants get 503 until a probe succeeds")
            }
            Transition::Closed => {
                tracing::info!(backend.ordinal = ordinal, backend.addr = %addr, "backend answers again: circuit closed")
            }
            Transition::None => {}
        }
        transition
    }
}

/// A number in `[0, 1)`, different on every call: jitter needs no more.
fn jitter() -> f64 {
    fastrand::f64()
}
