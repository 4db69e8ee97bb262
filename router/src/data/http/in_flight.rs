//! What a forwarded request holds while it is in flight: the answer's body keeps it
//! until the answer has been sent (see `forward::client_response`).

use std::sync::Arc;

use crate::data::admission::pools::{LiveSlot, StreamGuard};
use crate::data::http::conn::ConnCtx;
use crate::state::tenants::LiveGuard;

/// What a forwarded request holds from its admission until its answer has been sent:
/// its places, its count among the requests in flight, and once its answer streams, its
/// HTTP/1.1 connection's wait for it. The answer's body holds it (no box: one type). Not
/// the client it was admitted as: that may hold slices of the connection's read buffer
/// (forwarding headers from a trusted proxy), which an event stream would keep for hours.
pub(crate) struct InFlight {
    _live: LiveSlot,
    _tenant: LiveGuard,
    _stream: Option<StreamGuard>,
    /// The gauge is reached through the connection: a handle of its own would be one
    /// more count, shared by every thread, written twice per request.
    ctx: Arc<ConnCtx>,
    /// Its answer is being sent: once that is done or abandoned, the connection may wait
    /// for its next request as a pending one.
    answering: bool,
}

impl InFlight {
    pub(super) fn new(
        live: LiveSlot,
        tenant: LiveGuard,
        stream: Option<StreamGuard>,
        ctx: &Arc<ConnCtx>,
    ) -> Self {
        ctx.shared.metrics.http.active.inc();
        Self {
            _live: live,
            _tenant: tenant,
            _stream: stream,
            ctx: ctx.clone(),
            answering: false,
        }
    }

    /// Its answer is on its way.
    pub(super) fn answering(mut self) -> Self {
        self.answering = true;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ctx.shared.metrics.http.active.dec();
        if self.answering {
            self.ctx.request_done();
        }
    }
}
