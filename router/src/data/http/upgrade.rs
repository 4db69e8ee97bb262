//! One client request's story, over either HTTP version: parse the head, decide the
//! backend, admit the socket, dial the backend, answer the client, hand both upgraded
//! sockets to the relay. Each step is a module of its own; this one reads them in order.

use std::sync::Arc;

use http::header;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::data::admission::auth::forward::Question;
use crate::data::admission::auth::{Denied, Passed};
use crate::data::admission::forwarded::Client;
use crate::data::http::answer::{self, Refused};
use crate::data::http::body::ProxyBody;
use crate::data::http::dial;
use crate::data::http::forward::{self, ClientBodyIn};
use crate::data::http::live::PendingRelay;
use crate::data::http::{admit, decide, request};
use crate::data::relay::peer::{OntoUring, Peer};
use crate::data::shared::metrics::StatusLabel;
use crate::data::shared::set_metrics;
use crate::data::shared::Shared;
use crate::data::upstream::dial::BackendAnswer;
use crate::data::upstream::headers::unname;
use wsrouter::SetId;

use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::error::ProxyError;
use crate::data::http::request::{Inspected, Kind};

/// What a request comes to: the answer, and for a WebSocket the relay, waiting for the
/// client's side of the upgrade (an HTTP/1.1 socket, or an HTTP/2 stream).
pub(crate) struct Answer {
    pub resp: Response<ProxyBody>,
    /// Boxed: a plain request's answer, the usual one, is moved through every step of
    /// its way out, and would carry a socket's relay (some 400 bytes) each time.
    pub relay: Option<Box<PendingRelay>>,
}

/// An HTTP/1.1 request on a hyper connection: answered, and on a 101 the socket hyper
/// hands over goes to the relay.
pub(crate) async fn handle<I>(
    mut req: Box<Request<Incoming>>,
    ctx: Arc<ConnCtx>,
) -> Response<ProxyBody>
where
    I: AsyncRead + AsyncWrite + Peer + OntoUring + Unpin + Send + 'static,
{
    // An upgrade-shaped request's socket is hyper's to hand over, whatever the answer:
    // claimed before the request (and its body) moves on.
    let on_upgrade = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut *req));
    let Answer { resp, relay } = answer(req, &ctx).await;
    match (relay, on_upgrade) {
        // Two stages: this task waits for the client's upgrade; the relay then runs as
        // its own task holding only what a live socket needs, so the upgrade's state is
        // freed.
        (Some(pending), Some(on_client_upgrade)) => {
            ctx.shared
                .lifecycle
                .tasks
                .spawn((*pending).await_client::<I>(on_client_upgrade));
        }
        // A refusal closes the connection: its socket is closed cleanly. A forwarded
        // answer keeps the connection (hyper upgrades only on a 101).
        (_, Some(unused)) if !matches!(resp.body(), ProxyBody::Forwarded(_)) => {
            close_unused_upgrade(unused, &ctx)
        }
        _ => {}
    }
    resp
}

/// Any request, either HTTP version: a page (dev only), a refusal, a WebSocket whose
/// backend has upgraded (101 or 200 ready to send, the relay to start), or a plain
/// request's forwarded answer.
pub(crate) async fn answer<B: ClientBodyIn>(req: Box<Request<B>>, ctx: &Arc<ConnCtx>) -> Answer {
    // The head is parsed: this connection leaves the pending pool.
    ctx.request_started();
    if let Some(page) = ctx
        .shared
        .pages
        .as_ref()
        .and_then(|p| p.answer(req.method(), req.uri(), &ctx.shared))
    {
        ctx.request_done();
        return Answer {
            resp: page.map(ProxyBody::Full),
            relay: None,
        };
    }
    let (version, uri) = (req.version(), req.uri().clone());
    let started = std::time::Instant::now();
    let mut routed_to = None;
    let (resp, relay) = match story(req, &uri, ctx, &mut routed_to).await {
        // Counted by the forward step, in `http_requests`.
        Ok(Told {
            resp,
            forwarded: true,
            ..
        }) => return answered(resp, ctx),
        Ok(Told { resp, relay, .. }) => (resp, relay),
        Err(e) => {
            // Counted for its backend set only when the refusal is about its pod.
            routed_to = e.set().or(routed_to).filter(|_| e.about_the_pod());
            (answer::refused(e, &uri, ctx, Refused::Upgrade), None)
        }
    };
    if relay.is_some() || closes(&resp) {
        ctx.last_answer();
    }
    // Nothing of this request is left in flight once its small answer is written.
    ctx.request_done();
    ctx.shared
        .metrics
        .upgrade_responses
        .get_or_create(&StatusLabel {
            status: resp.status().as_u16(),
            protocol: crate::state::labels::protocol(version),
        })
        .inc();
    if relay.is_some() {
        ctx.shared
            .metrics
            .upgrade_seconds
            .observe(ctx.accepted.elapsed().as_secs_f64());
    }
    if let Some(set) = routed_to {
        let took = relay.as_ref().map(|_| started.elapsed().as_secs_f64());
        let status = resp.status().as_u16();
        let sets = &ctx.shared.metrics.sets;
        sets.answered(set, set_metrics::Kind::WebSocket, status, took);
    }
    Answer { resp, relay }
}

/// A forwarded request's answer. Its request stays in flight while a forwarded body
/// streams (its end says when it is done); any other answer is small and written at once.
fn answered(resp: Response<ProxyBody>, ctx: &ConnCtx) -> Answer {
    if closes(&resp) {
        ctx.last_answer();
    }
    if !matches!(resp.body(), ProxyBody::Forwarded(_)) {
        ctx.request_done();
    }
    Answer { resp, relay: None }
}

/// Whether an answer closes its HTTP/1.1 connection (`Connection: close`: the router's
/// refusals, and a connection's last forwarded answer).
fn closes(resp: &Response<ProxyBody>) -> bool {
    resp.headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// What the story came to: a plain request's answer (`forwarded`), or a WebSocket's
/// (with its relay on an upgrade).
struct Told {
    resp: Response<ProxyBody>,
    relay: Option<Box<PendingRelay>>,
    forwarded: bool,
}

/// What the door said of a request let in.
struct Door {
    /// Its token (`--auth jwt`).
    passed: Option<Passed>,
    /// The authorization service's headers for the pod (`--auth forward:URL`).
    added: Option<http::HeaderMap>,
}

/// The door: the request's token checked for its tenant (`--auth jwt`), or the
/// authorization service asked (`--auth forward:URL`); with neither, everyone is in.
async fn at_the_door<B>(req: &Request<B>, tenant: &str, ctx: &ConnCtx) -> Result<Door, ProxyError> {
    let shared = &ctx.shared;
    let passed = match &shared.auth {
        Some(auth) => Some(
            auth.check(req.headers(), req.uri().query(), tenant)
                .map_err(ProxyError::Unauthorized)?,
        ),
        None => None,
    };
    let added = match &shared.forward_auth {
        Some(f) => {
            // The client as the trusted proxies say, as every per-client rule keys on it.
            let trusted = &shared.policy.trusted_proxies;
            let client = Client::resolve_from(&ctx.direct, req.headers(), trusted).addr;
            let question = Question {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                tenant,
                client,
            };
            Some(f.check(&question).await.map_err(ProxyError::AuthService)?)
        }
        None => None,
    };
    Ok(Door { passed, added })
}

/// What a request let in at the door carries on to its pod: no claims header but the
/// router's, the token out of its query and offered subprotocols (`--auth jwt`), and
/// the authorization service's headers in place of any the client sent
/// (`--auth forward:URL`).
fn let_in<B>(req: &mut Request<B>, door: Door, shared: &Shared) {
    if let Some(f) = &shared.forward_auth {
        let headers = req.headers_mut();
        for name in &f.settings.response_headers {
            headers.remove(name);
            unname(headers, name);
        }
        for (name, value) in door.added.iter().flatten() {
            headers.append(name, value.clone());
        }
    }
    let Some(auth) = &shared.auth else { return };
    auth.strip_claims(req.headers_mut());
    if let Some(name) = &auth.settings.claims_header {
        unname(req.headers_mut(), name);
    }
    let Some(passed) = door.passed else { return };
    let uri = req.uri().clone();
    if let Some(uri) = auth.prepare(&passed, req.headers_mut(), &uri) {
        *req.uri_mut() = uri;
    }
}

/// hyper hands the socket of an upgrade-shaped request to its upgrade future even when
/// the answer is not 101; claim it and close it cleanly (TLS close_notify, then FIN)
/// instead of letting it drop.
fn close_unused_upgrade(pending: hyper::upgrade::OnUpgrade, ctx: &ConnCtx) {
    ctx.shared.lifecycle.tasks.spawn(async move {
        if let Ok(Ok(upgraded)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), pending).await
        {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut TokioIo::new(upgraded)).await;
        }
    });
}

/// The request's way through, step by step: parsed, routed, then relayed as a WebSocket
/// or forwarded as a plain request. A WebSocket's backend set is left in `routed_to`
/// once it is routed, for its answer's count.
async fn story<B: ClientBodyIn>(
    mut req: Box<Request<B>>,
    uri: &http::Uri,
    ctx: &Arc<ConnCtx>,
    routed_to: &mut Option<SetId>,
) -> Result<Told, ProxyError> {
    let shared = &ctx.shared;
    let Inspected { host, tenant, kind } = request::parse(&req, shared)?;
    let h2 = req.version() == http::Version::HTTP_2;
    // At the door: before the table, the tenant's places, a breaker or a pod is asked.
    let door = at_the_door(&req, tenant, ctx).await?;
    match kind {
        Kind::Plain => {
            // Refused or not, counted among the plain requests from here.
            let routed = decide::decide(tenant, req.headers(), host, false, shared);
            let_in(&mut req, door, shared);
            let resp = forward::forward(req, uri, routed, ctx).await;
            Ok(Told {
                resp,
                relay: None,
                forwarded: true,
            })
        }
        Kind::WebSocket { key } => {
            let expires = door.passed.as_ref().map(|p| p.grant.expires);
            // The leeway lets a token through for the issuer's clock, not a socket past
            // its end: one already over it would be closed as soon as it opened.
            if expires.is_some_and(|exp| exp <= jsonwebtoken::get_current_timestamp()) {
                return Err(ProxyError::Unauthorized(Denied::Expired));
            }
            // The socket keeps its host for its life: not as a slice of the read buffer.
            let host = request::detached(&host);
            let mut routed = decide::decide(tenant, req.headers(), host, h2, shared)?;
            *routed_to = Some(routed.set);
            routed.expires = expires;
            let_in(&mut req, door, shared);
            // Boxed, as a socket is set up once: inline, its dial (3 KB) would be a
            // floor under the size of every plain request's future, which is now sized
            // by the forward step alone.
            let (resp, relay) = Box::pin(websocket(&req, &key, routed, ctx)).await?;
            Ok(Told {
                resp,
                relay,
                forwarded: false,
            })
        }
    }
}

/// A WebSocket's way on: admitted, its backend dialled, the client answered, and on
/// an upgrade the relay waiting for the client's side.
async fn websocket<B>(
    req: &Request<B>,
    key: &http::HeaderValue,
    routed: Routed,
    ctx: &ConnCtx,
) -> Result<(Response<ProxyBody>, Option<Box<PendingRelay>>), ProxyError> {
    let shared = &ctx.shared;
    let admitted = admit::admit(req, ctx, &routed)?;
    let backend = dial::dial(req, ctx, &routed, key, &admitted.client).await?;
    let (head, io, pre) = match backend {
        BackendAnswer::Refused(resp) => return Ok((answer::backend_refusal(&routed, resp), None)),
        BackendAnswer::Upgraded { head, io, pre } => (head, io, pre),
    };
    let resp = answer::upgraded(head.headers, &routed, shared.policy.route_headers);
    let relay = PendingRelay::new(routed, admitted, io, pre, ctx);
    Ok((resp, Some(Box::new(relay))))
}
