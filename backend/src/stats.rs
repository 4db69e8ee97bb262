//! Counters `GET /stats` reports as JSON. `unknown_connection` is how the framework
//! tests prove that every request of a SignalR session reached the same pod: a request
//! that lands on a pod which never negotiated its token counts there.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Non-upgrade requests answered with the JSON description.
    pub(crate) json_answers: AtomicU64,
    /// POST/PUT bodies echoed.
    pub(crate) echoes: AtomicU64,
    /// `/events` streams started.
    pub(crate) sse_streams: AtomicU64,
    /// WebSocket connections on the echo path.
    pub(crate) websockets: AtomicU64,
    /// SignalR negotiations answered.
    pub(crate) hub_negotiations: AtomicU64,
    /// SignalR invocations answered.
    pub(crate) hub_invocations: AtomicU64,
    /// Requests naming a connection token this server does not know.
    pub(crate) unknown_connection: AtomicU64,
    /// Requests naming a connection this server closed recently (not a routing fault).
    pub(crate) closed_connection: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, hub_open: usize) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "unknown_connection": get(&self.unknown_connection),
            "closed_connection": get(&self.closed_connection),
            "json_answers": get(&self.json_answers),
            "echoes": get(&self.echoes),
            "sse_streams": get(&self.sse_streams),
            "websockets": get(&self.websockets),
            "hub_negotiations": get(&self.hub_negotiations),
            "hub_invocations": get(&self.hub_invocations),
            "hub_open": hub_open,
        })
    }
}
