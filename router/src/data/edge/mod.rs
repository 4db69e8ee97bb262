//! Owns: the listeners and their accept loops on the I/O threads (heartbeats, accept
//! errors), the PROXY protocol header, and each connection's way from TCP to TLS to HTTP.
//! May not touch: what a request means; it hands each connection to `http` and forgets it.

pub(crate) mod accept;
pub(crate) mod handoff;
pub(crate) mod listen;
pub(crate) mod proxy_protocol;
