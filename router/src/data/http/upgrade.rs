//! One client request's story, over either HTTP version: parse the head, decide the
//! backend, admit the socket, dial the backend, answer the client, hand both upgraded
//! sockets to the relay. Each step is a module of its own; this one reads them in order.

use std::sync::Arc;

use http::header;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::data::http::answer::{self, ProxyBody};
use crate::data::http::dial;
use crate::data::http::live::PendingRelay;
use crate::data::http::{admit, decide, request};
use crate::data::relay::peer::Peer;
use crate::data::shared::metrics::StatusLabel;
use crate::data::upstream::dial::BackendAnswer;

use crate::data::http::conn::ConnCtx;
use crate::data::http::error::ProxyError;
use crate::data::http::request::Inspected;

/// What a request comes to: the answer, and for a WebSocket the relay, waiting for the
/// client's side of the upgrade (an HTTP/1.1 socket, or an HTTP/2 stream).
pub(crate) struct Answer {
    pub resp: Response<ProxyBody>,
    pub relay: Option<PendingRelay>,
}

/// An HTTP/1.1 request on a hyper connection: answered, and on a 101 the socket hyper
/// hands over goes to the relay.
pub(crate) async fn handle<I>(mut req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Response<ProxyBody>
where
    I: AsyncRead + AsyncWrite + Peer + Unpin + Send + 'static,
{
    let Answer { resp, relay } = answer(&req, &ctx).await;
    match relay {
        // Two stages: this task waits for the client's upgrade; the relay then runs as
        // its own task holding only what a live socket needs, so the upgrade's state is
        // freed.
        Some(pending) => {
            let on_client_upgrade = hyper::upgrade::on(&mut req);
            ctx.shared
                .lifecycle
                .tasks
                .spawn(pending.await_client::<I>(on_client_upgrade));
        }
        None if req.headers().contains_key(header::UPGRADE) => close_unused_upgrade(&mut req, &ctx),
        None => {}
    }
    resp
}

/// Any request, either HTTP version: a page (dev only), a refusal, or a WebSocket
/// whose backend has upgraded (101 or 200 ready to send, the relay to start).
pub(crate) async fn answer<B>(req: &Request<B>, ctx: &ConnCtx) -> Answer {
    // The head is parsed: this connection leaves the pending pool.
    if let Ok(mut pending) = ctx.pending.lock() {
        pending.take();
    }
    if let Some(page) = ctx
        .shared
        .pages
        .as_ref()
        .and_then(|p| p.answer(req.method(), req.uri(), &ctx.shared))
    {
        return Answer {
            resp: page.map(Either::Left),
            relay: None,
        };
    }
    let (resp, relay) = match story(req, ctx).await {
        Ok(answer) => answer,
        Err(e) => (answer::refused(e, req, ctx), None),
    };
    ctx.shared
        .metrics
        .upgrade_responses
        .get_or_create(&StatusLabel {
            status: resp.status().as_u16(),
            protocol: crate::state::labels::protocol(req.version()),
        })
        .inc();
    if relay.is_some() {
        ctx.shared
            .metrics
            .upgrade_seconds
            .observe(ctx.accepted.elapsed().as_secs_f64());
    }
    Answer { resp, relay }
}

/// hyper hands the socket of an upgrade-shaped request to its upgrade future even when
/// the answer is not 101; claim it and close it cleanly (TLS close_notify, then FIN)
/// instead of letting it drop.
fn close_unused_upgrade(req: &mut Request<Incoming>, ctx: &ConnCtx) {
    let pending = hyper::upgrade::on(req);
    ctx.shared.lifecycle.tasks.spawn(async move {
        if let Ok(Ok(upgraded)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), pending).await
        {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut TokioIo::new(upgraded)).await;
        }
    });
}

/// The request's way through, step by step: its answer (101, 200 on HTTP/2, or the
/// backend's own refusal) and, on an upgrade, the relay waiting for the client's side.
async fn story<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
) -> Result<(Response<ProxyBody>, Option<PendingRelay>), ProxyError> {
    let shared = &ctx.shared;
    let Inspected { host, tenant, key } = request::parse(req, shared)?;
    let h2 = req.version() == http::Version::HTTP_2;
    let routed = decide::decide(tenant, host, h2, shared)?;
    let admitted = admit::admit(req, ctx, &routed)?;
    let backend = dial::dial(req, ctx, &routed, &key, &admitted.client).await?;
    let (head, io, pre) = match backend {
        BackendAnswer::Refused(resp) => return Ok((answer::backend_refusal(&routed, resp), None)),
        BackendAnswer::Upgraded { head, io, pre } => (head, io, pre),
    };
    let resp = answer::upgraded(head.headers, &routed, shared.policy.route_headers);
    let relay = PendingRelay::new(routed, admitted, io, pre, ctx);
    Ok((resp, Some(relay)))
}
