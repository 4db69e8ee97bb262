//! Owns: the way to a backend: connecting with retries, the circuit breaker per address,
//! the backend's half of the upgrade (its 101), kept-alive HTTP connections (`pool`),
//! and TLS to the pods (`tls`).
//! May not touch: the client's connection, admission or the answer the client gets.

pub(crate) mod breaker;
pub(crate) mod dial;
pub(crate) mod error;
pub(crate) mod handshake;
pub(crate) mod headers;
pub(crate) mod pool;
pub(crate) mod tls;
