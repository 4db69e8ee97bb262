//! Owns: one request's story (head parsed, route decided, socket admitted, backend dialled,
//! client answered, relay started) over HTTP/1.1 and HTTP/2, and each error's one verdict.
//! May not touch: listeners or TLS setup (`edge` hands it a connection).

mod admit;
mod answer;
pub(crate) mod conn;
mod decide;
mod dial;
pub(crate) mod error;
pub(crate) mod h2;
mod live;
pub(crate) mod request;
pub(crate) mod upgrade;
mod verdict;
