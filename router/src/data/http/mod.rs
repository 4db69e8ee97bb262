//! Owns: one request's story: the head parsed, the route decided, the socket admitted,
//! the backend dialled, the client answered, the relay started; over HTTP/1.1 and HTTP/2.
//! May not touch: listeners or TLS setup (`edge` hands it a connection).

mod admit;
mod answer;
mod conn;
mod decide;
mod dial;
mod error;
pub mod h2;
mod live;
mod request;
pub mod upgrade;
mod verdict;
