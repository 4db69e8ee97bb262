//! The dial step: the client's request as its backend gets it, forwarded under the
//! backend's circuit breaker within the backend timeout (`upstream::dial`) until the
//! drain's grace period ends, and the backend's 101 checked against what the client
//! offered (`upstream::handshake`).

use bytes::Bytes;
use http::header::HeaderValue;
use http::Request;
use http_body_util::Empty;

use crate::data::admission::forwarded::{underscore_header, Client};
use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::error::ProxyError;
use crate::data::http::verdict::JUDGE;
use crate::data::shared::Shared;
use crate::data::upstream::breaker::Permit;
use crate::data::upstream::dial::{self, BackendAnswer, Dial};
use crate::data::upstream::error::{Target, UpstreamError};
use crate::data::upstream::handshake::{self, Offered};
use crate::data::upstream::headers::strip_hop_by_hop;

/// Forwards the upgrade to the routed backend (retrying a pod that restarts), and checks
/// a 101 completes the handshake the client asked for. `key` is the one the backend
/// must answer.
pub(super) async fn dial<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    routed: &Routed,
    key: &HeaderValue,
    client: &Client,
) -> Result<BackendAnswer, ProxyError> {
    let shared = &ctx.shared;
    let target = Target {
        set: shared.metrics.sets.name(routed.set),
        ordinal: routed.ordinal,
        addr: &routed.addr,
    };
    let permit = dial::admit(&shared.breakers, target)?;
    let offered = Offered::from_request(req.headers());
    let how = reaching(target, shared, tokio::time::Instant::now());
    let tls = shared.tls_config.is_some();
    let result = tokio::select! {
        r = how.upgrade(|| backend_request(req, client, tls, &routed.host, key)) => r,
        // The drain's grace period ended while the backend had not answered: that says
        // nothing about the backend.
        _ = shared.lifecycle.close_tunnels.cancelled() => return Err(ProxyError::ShuttingDown),
    };
    settle_breaker(&how, permit, &result, shared);
    let answer = result?;
    if let BackendAnswer::Upgraded { head, .. } = &answer {
        handshake::check(&head.headers, key, &offered).map_err(|why| target.bad_handshake(why))?;
    }
    Ok(answer)
}

/// How a request reaches `target`: within the backend timeout from `now`, retrying as
/// the verdict says, counted and tracked as every connection's are. The forward step
/// reaches its pods the same way.
pub(super) fn reaching<'a>(
    target: Target<'a>,
    shared: &'a Shared,
    now: tokio::time::Instant,
) -> Dial<'a> {
    Dial {
        target,
        deadline: now + shared.limits.backend_timeout,
        keepalive: shared.limits.timers.tcp_keepalive,
        tasks: &shared.lifecycle.tasks,
        retries: &shared.metrics.backend_connect_retries,
        judge: JUDGE,
        tls: shared.backend_tls.as_deref(),
    }
}

/// Tells the target's breaker how it went, and counts what that changed.
pub(super) fn settle_breaker<T>(
    how: &Dial<'_>,
    permit: Permit<'_>,
    result: &Result<T, UpstreamError>,
    shared: &Shared,
) {
    let transition = how.settle(permit, result, shared.breakers.cooldown());
    shared
        .metrics
        .breaker(how.target.set, how.target.ordinal, transition);
}

/// The upgrade request as the backend gets it: the client's end-to-end headers (its
/// WebSocket headers, Origin, cookies, auth) less any whose name holds `_`, and the
/// router's own forwarding headers in place of the client's.
fn backend_request<B>(
    req: &Request<B>,
    client: &Client,
    tls: bool,
    host: &HeaderValue,
    key: &HeaderValue,
) -> Request<Empty<Bytes>> {
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers);
    // The upgrade request goes without a body, whatever length the client's named.
    headers.remove(http::header::CONTENT_LENGTH);
    while let Some(name) = underscore_header(&headers).cloned() {
        headers.remove(name);
    }
    handshake::upgrade_headers(&mut headers, host, key);
    client.set_headers(&mut headers, tls, host);
    handshake::request(req.uri(), headers)
}
