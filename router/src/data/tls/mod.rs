//! Owns: certificates and keys into rustls configs (and the slot a reload swaps), and the
//! unbuffered TLS stream a client connection speaks: its bounded handshake, reads and writes.
//! May not touch: sockets' admission, routing, HTTP or frames; it knows bytes, not requests.

pub(crate) mod config;
pub(crate) mod flush;
pub(crate) mod outbox;
pub(crate) mod stream;
#[cfg(test)]
pub(crate) mod test_io;
pub(crate) mod tickets;
