//! The data path: from a client's TCP connection to a relayed WebSocket or a forwarded
//! plain request. It loads the routing table and never stores it; nothing here takes a
//! lock per frame. One folder per concern, each may use only the folders listed before it (`router/tests/layout.rs`):
//!
//! - [`socket`]: socket options (`TCP_DEFER_ACCEPT`, keepalive).
//! - [`tls`]: certificates into rustls configs; the unbuffered TLS stream.
//! - [`relay`]: the relay between upgraded sockets: pump, frames, pings, close, budget.
//! - [`upstream`]: the way to a backend: connect, retries, breaker, its 101.
//! - [`admission`]: who gets in: pools, policy, who is asking.
//! - [`shared`]: what every connection reads: settings, metrics, the `Shared` handle.
//! - [`http`]: one request's story, over HTTP/1.1 and HTTP/2.
//! - [`edge`]: listeners, accept loops, PROXY protocol, the hand-over to `http`.
//!
//! `docs/ARCHITECTURE.md` draws a request's path through them.

pub(crate) mod admission;
pub(crate) mod edge;
pub(crate) mod http;
pub(crate) mod relay;
pub(crate) mod shared;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod upstream;
