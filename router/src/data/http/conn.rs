//! What every request on one client connection shares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::data::admission::pools::{ConnStreams, PendingSlot};
use crate::data::shared::Shared;

/// Per client connection.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub accepted: Instant,
    /// The pending-pool place of an HTTP/1.1 connection, given back once the request
    /// head is parsed. An HTTP/2 connection keeps its own (see `h2::serve`).
    pub pending: std::sync::Mutex<Option<PendingSlot>>,
    /// An HTTP/2 connection's live streams: each WebSocket relayed on it counts.
    pub streams: Option<Arc<ConnStreams>>,
}

impl ConnCtx {
    /// An HTTP/1.1 connection's context, its pending slot held until the first request
    /// head is parsed.
    pub(crate) fn http1(
        shared: &Arc<Shared>,
        peer: SocketAddr,
        accepted: Instant,
        slot: PendingSlot,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: shared.clone(),
            peer,
            accepted,
            pending: std::sync::Mutex::new(Some(slot)),
            streams: None,
        })
    }

    /// An HTTP/2 connection's context: its streams counted in `streams`.
    pub(crate) fn http2(
        shared: &Arc<Shared>,
        peer: SocketAddr,
        accepted: Instant,
        streams: Arc<ConnStreams>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: shared.clone(),
            peer,
            accepted,
            pending: std::sync::Mutex::new(None),
            streams: Some(streams),
        })
    }
}
