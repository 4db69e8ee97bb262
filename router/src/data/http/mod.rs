//! Owns: one request's story (head parsed, route decided, then a WebSocket admitted, its
//! backend dialled, the client answered, the relay started; or a plain request forwarded
//! over the keep-alive pool) over HTTP/1.1 and HTTP/2, and each error's one verdict.
//! May not touch: listeners or TLS setup (`edge` hands it a connection).

mod admit;
mod answer;
pub(crate) mod body;
pub(crate) mod conn;
mod decide;
mod dial;
pub(crate) mod error;
mod forward;
pub(crate) mod h1;
pub(crate) mod h2;
mod h2_body;
mod h2_stream;
mod in_flight;
mod live;
pub(crate) mod request;
pub(crate) mod upgrade;
mod verdict;
mod write_stall;
