//! Owns: the relay between two upgraded sockets: the pump, WebSocket frame boundaries,
//! pings, the close handshake, the shared read budget, and 1012 closes for moved tenants.
//! May not touch: how a request was routed or admitted; it is handed two peers and limits.

pub mod bulk;
mod close;
mod direction;
pub mod frame;
mod peer;
mod pings;
pub mod pump;
pub mod reroute;
mod signal;
mod timers;

#[cfg(test)]
pub(crate) mod test_frames;
