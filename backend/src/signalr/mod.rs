//! A small SignalR hub, **for tests and demos only: not a SignalR server**. It speaks
//! just enough of ASP.NET Core SignalR's transport protocol (negotiate version 1;
//! WebSockets, Server-Sent Events and long polling) and JSON hub protocol for the
//! official clients to connect, call `Echo(x)` and `Whoami()`, and close. Its purpose is
//! to prove that a router keeps every request of one SignalR session on the same pod: a
//! request naming a connection token this server never issued gets 404 and counts
//! `unknown_connection` in `/stats`.
//!
//! Paths whose rest (after the tenant) ends in `hub`:
//! - `POST …/hub/negotiate?negotiateVersion=1`: a new connection's id and token and the
//!   three transports;
//! - `…/hub?id=TOKEN`: a WebSocket upgrade; `GET` with `Accept: text/event-stream` (the
//!   event stream); `GET` (a long poll: the first answers at once, later ones wait for
//!   messages, at most `poll_timeout`; 204 once closed); `POST` (messages from the
//!   client); `DELETE` (ends it);
//! - `…/hub` without `id`: a WebSocket upgrade only (the client's `skipNegotiation`).
//!
//! The hub pings (type 6) every `ping_interval`; connections are forgotten a `linger`
//! after they close, or closed after `idle_timeout` with nothing attached.

mod protocol;
mod registry;
mod transports;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

pub(crate) use registry::Registry;
use registry::{Conn, Lookup};

use crate::body::{json, plain, Body};
use crate::route::Target;
use crate::server::Shared;
use crate::stats::Stats;

/// Which hub path a request is for.
pub(crate) enum HubPath {
    Negotiate,
    Connection,
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    target: Target,
    path: HubPath,
    shared: Arc<Shared>,
) -> Response<Body> {
    let method = req.method().clone();
    match path {
        HubPath::Negotiate if method == Method::POST => negotiate(&req, &target, &shared),
        HubPath::Negotiate => plain(StatusCode::METHOD_NOT_ALLOWED, "negotiate is a POST\n"),
        HubPath::Connection => {
            let id = wsrouter::query_param(req.uri().query().unwrap_or(""), "id");
            match id {
                Err(_) => plain(StatusCode::BAD_REQUEST, "id given twice\n"),
                Ok(None) if crate::ws::wants_upgrade(&req) => match shared.hub.create(&target.ns) {
                    Some(conn) => transports::websocket(req, conn, shared),
                    None => plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n"),
                },
                Ok(None) => plain(StatusCode::BAD_REQUEST, "no id\n"),
                Ok(Some(token)) => match shared.hub.lookup(token) {
                    Lookup::Live(conn) => connection(req, conn, shared).await,
                    Lookup::Closed => {
                        Stats::bump(&shared.stats.closed_connection);
                        closed(&method, crate::ws::wants_upgrade(&req))
                    }
                    Lookup::Unknown => {
                        Stats::bump(&shared.stats.unknown_connection);
                        tracing::info!(%method, path = %req.uri(), "unknown SignalR connection");
                        plain(StatusCode::NOT_FOUND, "no such connection\n")
                    }
                },
            }
        }
    }
}

/// A request for a live connection, by transport.
async fn connection(
    req: Request<Incoming>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
) -> Response<Body> {
    let event_stream = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    match *req.method() {
        Method::GET if crate::ws::wants_upgrade(&req) => transports::websocket(req, conn, shared),
        Method::GET if event_stream => transports::event_stream(conn),
        Method::GET => transports::poll(conn, &shared).await,
        Method::POST => transports::send(req, conn, &shared).await,
        Method::DELETE => {
            conn.state().close(None, Instant::now());
            conn.wake();
            plain(StatusCode::ACCEPTED, "")
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// A request for a connection that closed recently: a poll or DELETE learns it ended
/// (204), anything else (a send, a stream, a WebSocket) that it is gone (404).
fn closed(method: &Method, upgrade: bool) -> Response<Body> {
    match *method {
        Method::GET | Method::DELETE if !upgrade => plain(StatusCode::NO_CONTENT, ""),
        _ => plain(StatusCode::NOT_FOUND, "connection closed\n"),
    }
}

/// `POST …/hub/negotiate`: version 1 (or 0 when asked for it) with every transport.
fn negotiate(req: &Request<Incoming>, target: &Target, shared: &Shared) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let version = match wsrouter::query_param(query, "negotiateVersion") {
        Ok(None) => 0,
        Ok(Some(v)) => v.parse::<u64>().map_or(0, |v| v.min(1)),
        Err(_) => return plain(StatusCode::BAD_REQUEST, "negotiateVersion given twice\n"),
    };
    let Some(conn) = shared.hub.create(&target.ns) else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    Stats::bump(&shared.stats.hub_negotiations);
    let transports = serde_json::json!([
        {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
        {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
        {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
    ]);
    let body = if version >= 1 {
        serde_json::json!({
            "negotiateVersion": 1,
            "connectionId": conn.id,
            "connectionToken": conn.token,
            "availableTransports": transports,
        })
    } else {
        // Version 0 has no token: the id is what requests name.
        serde_json::json!({
            "negotiateVersion": 0,
            "connectionId": conn.token,
            "availableTransports": transports,
        })
    };
    json(StatusCode::OK, &body)
}

/// The hub's housekeeping until the server stops: pings, idle closes, forgetting. A
/// graceful stop tells every connection with a close message.
pub(crate) async fn reap(shared: Arc<Shared>) {
    let cfg = shared.hub.config();
    let step = (cfg.ping_interval / 2)
        .min(Duration::from_millis(250))
        .max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(step);
    loop {
        tokio::select! {
            _ = shared.kill.cancelled() => return,
            _ = shared.graceful.cancelled() => return shared.hub.close_all(),
            _ = ticker.tick() => shared.hub.sweep(Instant::now()),
        }
    }
}
