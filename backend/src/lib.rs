//! The echo backend, behind the router in tests, `wsrouter dev` and a cluster (what runs
//! there is what the tests exercise). Under the path prefix, the tenant taken where
//! `tenant_from` says (as the router's `--tenant-from`):
//! - a WebSocket upgrade streams `{"server":…,"counter":N,"ns":…}` once per interval and
//!   echoes every text and binary message verbatim (`ws`);
//! - `GET`/`HEAD` answer `{"server":…,"ns":…,"method":…,"path":…}`; `POST`/`PUT` stream
//!   the body back as it arrives (`plain`);
//! - `GET …/events` is a Server-Sent Events counter with `Last-Event-ID` resume (`sse`);
//! - `…/hub` is a small SignalR hub for tests and demos, not a SignalR server (`signalr`).
//!
//! Besides: `/healthz`, and `GET /stats` (JSON counters, [`stats`]).

mod body;
mod config;
mod plain;
mod route;
mod server;
mod signalr;
mod sse;
mod stats;
mod ws;

pub use config::{default_server_name, EchoConfig, HubConfig};
pub use server::{serve, EchoHandle};
