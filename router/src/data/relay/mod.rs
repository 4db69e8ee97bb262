//! Owns: the relay between two upgraded sockets: the pump, WebSocket frame boundaries,
//! pings, the close handshake, the shared read budget, and 1012 closes for moved tenants.
//! May not touch: how a request was routed or admitted; it is handed two peers and limits.

pub mod bulk;
pub mod frame;
pub mod pump;
pub mod reroute;
#[cfg(test)]
pub(crate) mod test_frames;
