//! The data path: from a client's TCP connection to a relayed WebSocket. It loads the
//! routing table and never stores it; nothing here takes a lock per frame.
//!
//! - [`listen`]: bind, the accept loops on their I/O threads (each with its heartbeat),
//!   the PROXY protocol header, TLS, and HTTP/1.1 up to the upgrade (or, for a client
//!   that chose `h2` by ALPN, the hand-over to [`h2`]).
//! - [`h2`]: WebSockets over HTTP/2 (RFC 8441 extended CONNECT), served with the h2 crate
//!   directly; a connection is pending while no stream of it is live.
//! - [`accept`]: accept errors backed off and logged at a bounded rate (every listener).
//! - [`admission`]: the pending and live pools: caps, byte budget, per-source limits,
//!   an HTTP/2 connection's live streams.
//! - [`breaker`]: a circuit breaker per backend address: a pod that keeps failing gets a
//!   cool-down, then one probe.
//! - [`tls_config`]: certificates and keys (PEM files or made for dev) into rustls configs.
//! - [`tls_stream`]: the TLS stream a connection speaks: bounded handshake, bounded reads.
//! - [`upgrade`]: one request: route it, upgrade the backend, answer, start the relay.
//! - [`relay`]: the byte relay between the upgraded sockets, aware of frame boundaries.
//! - [`bulk`]: the shared budget that lets relays read 64 KiB at a time.
//! - [`frame`]: WebSocket frame boundaries from headers alone; close frames.
//! - [`reroute`]: opt-in 1012 closes for sockets whose tenant moved.
//! - [`policy`]: who may open a socket: Origin allowlist, rate per source, cap per tenant.
//! - [`forwarded`]: who is asking (trusted proxies' hops) and the forwarding headers the
//!   backend gets.
//! - [`proxy_protocol`]: the PROXY protocol header a load balancer puts before TLS.
//! - [`metrics`]: the data path's own counters, registered by the admin listener.
//! - [`shared`]: what every connection reads (table, limits, pools, metrics, TLS slot).
//! - [`limits`]: the data path's settings, built by `config`.

pub mod accept;
pub mod admission;
pub mod breaker;
pub mod bulk;
pub mod forwarded;
pub mod frame;
pub mod h2;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod relay;
pub mod reroute;
pub mod shared;
pub(crate) mod sys;
pub mod tls_config;
pub mod tls_stream;
pub mod upgrade;
