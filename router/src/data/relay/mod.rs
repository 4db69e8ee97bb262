//! Owns: the relay between two upgraded sockets: the pump, WebSocket frame boundaries,
//! pings, the close handshake, the shared read budget, and the drain scheduler that
//! spreads the router's own closes (shutdown, a pod leaving the table, a reroute); and the
//! gate that polls the router's own signals only when they fire (`signal`, used by
//! an HTTP/1.1 connection's task too).
//! May not touch: admission, HTTP or dialling; it is handed two peers and limits (only
//! `drain` reads the table, to see whose pod left or whose tenant moved).

pub(crate) mod bulk;
pub(crate) mod close;
mod direction;
pub(crate) mod drain;
pub(crate) mod frame;
pub(crate) mod peer;
pub(crate) mod pings;
pub(crate) mod pump;
pub(crate) mod signal;
mod timers;

#[cfg(test)]
pub(crate) mod test_frames;
