//! The admit step: who the request is from, and the places it takes before a backend
//! is asked (the rate per source, the live pool, its tenant's cap, its HTTP/2
//! connection's streams, and for an upgrade the router's and its pod's budgets).

use std::time::Instant;

use http::Request;

use crate::data::admission::forwarded::Client;
use crate::data::admission::pools::{ConnStreams, LiveSlot, StreamGuard};
use crate::data::http::conn::ConnCtx;
use crate::data::http::decide::Routed;
use crate::data::http::error::ProxyError;
use crate::state::tenants::LiveGuard;

/// A request let in: each place it holds is given back as it drops.
pub(super) struct Admitted {
    /// Who the request is from (the peer, or whom trusted proxies vouched for).
    pub(super) client: Client,
    /// Its place in the live pool, backend socket included.
    pub(super) live: LiveSlot,
    /// Counted against its tenant from before the backend is asked.
    pub(super) tenant_slot: LiveGuard,
    /// Counted among its HTTP/2 connection's live streams.
    pub(super) stream: Option<StreamGuard>,
}

/// Admits a routed WebSocket, or says which rule or cap refused it: the rate of new
/// sockets per source first, then the places a live socket holds.
pub(super) fn admit<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    routed: &Routed,
) -> Result<Admitted, ProxyError> {
    let shared = &ctx.shared;
    let client = client_of(req, ctx);
    shared
        .rate
        .take(client.addr, Instant::now())
        .map_err(|wait| ProxyError::RateLimited {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u32,
        })?;
    let admitted = places(client, ctx, routed)?;
    // Last, so only an upgrade every other rule let in spends the budget.
    spend_budget(ctx, routed)?;
    Ok(admitted)
}

/// Takes the upgrade out of the router's and its pod's budgets, when they are on.
fn spend_budget(ctx: &ConnCtx, routed: &Routed) -> Result<(), ProxyError> {
    let budget = &ctx.shared.budget;
    if !budget.is_on() {
        return Ok(());
    }
    let table = ctx.shared.table.load();
    let Some(table) = table.as_deref() else {
        return Ok(());
    };
    budget
        .take(
            table,
            routed.set,
            routed.ordinal,
            tokio::time::Instant::now(),
        )
        .map_err(|o| ProxyError::OverBudget {
            spent: o.spent,
            retry_after: o.retry_after,
        })
}

/// Admits a routed plain request: the same places as a socket while it is in flight
/// (the live pool, its source's share, its tenant's cap), but not the rate of new
/// sockets, which a long-polling client (a request every few seconds, for hours)
/// would spend for nothing: the request rides a connection already admitted.
pub(super) fn admit_request<B>(
    req: &Request<B>,
    ctx: &ConnCtx,
    routed: &Routed,
) -> Result<Admitted, ProxyError> {
    places(client_of(req, ctx), ctx, routed)
}

/// Who the request is from, as far as the router believes its trusted proxies: every
/// per-client decision from here keys on it.
fn client_of<B>(req: &Request<B>, ctx: &ConnCtx) -> Client {
    Client::resolve_from(
        &ctx.direct,
        req.headers(),
        &ctx.shared.policy.trusted_proxies,
    )
}

/// The places an admitted request holds until it ends.
fn places(client: Client, ctx: &ConnCtx, routed: &Routed) -> Result<Admitted, ProxyError> {
    let shared = &ctx.shared;
    // From here the request counts against the live pool, backend socket included,
    // and against its tenant's cap.
    let live = shared
        .admission
        .admit_live(client.addr)
        .map_err(ProxyError::AtCapacity)?;
    let tenant_slot = shared
        .live
        .try_register(&routed.tenant, routed.tenant_cap)
        .ok_or(ProxyError::TenantFull)?;
    // An HTTP/2 connection with a stream under way is no longer pending.
    let stream = ctx.streams.as_ref().map(ConnStreams::guard);
    Ok(Admitted {
        client,
        live,
        tenant_slot,
        stream,
    })
}
