//! The three transports carrying a hub connection, and the HTTP POST half that brings
//! the client's messages for the two that only go server to client.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::protocol::{self, Who};
use super::registry::{Attached, Conn, Transport};
use crate::body::{full, plain, Body, BoxError};
use crate::server::Shared;
use crate::stats::Stats;
use crate::ws::{self, Ws};

/// The most one POST may carry, and the most of an unfinished record kept.
const MAX_SEND: usize = 1024 * 1024;

/// Claims the connection for `t`: the first transport wins; a WebSocket or event stream
/// while one is attached is a conflict, as is mixing transports.
fn claim(conn: &Conn, t: Transport) -> bool {
    let mut st = conn.state();
    match st.transport {
        None => {
            st.transport = Some(t);
            true
        }
        Some(Transport::LongPolling) => t == Transport::LongPolling,
        Some(_) => false,
    }
}

fn conflict() -> Response<Body> {
    plain(
        StatusCode::CONFLICT,
        "the connection has a transport already\n",
    )
}

/// Hands the client's bytes to the hub protocol and queues what it answers.
fn deliver(conn: &Conn, data: &[u8], shared: &Shared) {
    let now = Instant::now();
    let mut st = conn.state();
    if st.is_closed() {
        return;
    }
    st.last_seen = now;
    st.inbox.extend_from_slice(data);
    let who = Who {
        server: &shared.config.server_name,
        ns: &conn.ns,
    };
    let state = &mut *st;
    let reply = protocol::receive(&mut state.inbox, &mut state.handshaken, &who);
    st.outbox.push_str(&reply.out);
    if let Some(error) = reply.close {
        st.close(error.as_deref(), now);
    } else if st.inbox.len() > MAX_SEND {
        st.close(Some("Message too big."), now);
    }
    drop(st);
    for _ in 0..reply.invocations {
        Stats::bump(&shared.stats.hub_invocations);
    }
    conn.wake();
}

/// What is queued for the client, and whether the connection has ended.
fn take(conn: &Conn) -> (String, bool) {
    let mut st = conn.state();
    (std::mem::take(&mut st.outbox), st.is_closed())
}

pub(super) fn websocket(
    mut req: Request<Incoming>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
) -> Response<Body> {
    if !claim(&conn, Transport::WebSockets) {
        return conflict();
    }
    let (resp, on_upgrade) = match ws::accept(&mut req) {
        Ok(ok) => ok,
        Err(refused) => return refused.response(),
    };
    // Attached now, so the reaper does not take it for idle while the upgrade completes.
    let attached = conn.attach(true);
    let task_shared = shared.clone();
    shared.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut socket = ws::server_socket(upgraded).await;
                run_websocket(&mut socket, &conn, &task_shared).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
        drop(attached);
    });
    resp
}

async fn run_websocket(socket: &mut Ws, conn: &Conn, shared: &Shared) {
    let mut changes = conn.subscribe();
    loop {
        let (out, closed) = take(conn);
        if !out.is_empty() && socket.send(Message::text(out)).await.is_err() {
            return;
        }
        if closed {
            return ws::close_with(socket, CloseCode::Normal, "").await;
        }
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return,
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(t))) => deliver(conn, t.as_bytes(), shared),
                Some(Ok(Message::Binary(b))) => deliver(conn, &b, shared),
                Some(Ok(_)) => {}
                Some(Err(e)) => return ws::fail(socket, &e).await,
                None => return,
            },
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// `GET` with `Accept: text/event-stream`: every batch of messages is one event; the
/// stream ends when the connection does, and the connection when the stream does.
pub(super) fn event_stream(conn: Arc<Conn>) -> Response<Body> {
    if !claim(&conn, Transport::ServerSentEvents) {
        return conflict();
    }
    let state = Events {
        _attached: conn.attach(true),
        changes: conn.subscribe(),
        conn,
        started: false,
    };
    let body = StreamBody::new(stream::unfold(state, Events::next)).boxed_unsync();
    crate::sse::event_stream(body)
}

struct Events {
    conn: Arc<Conn>,
    changes: watch::Receiver<()>,
    /// Held for as long as the stream lives; its drop ends the connection.
    _attached: Attached,
    started: bool,
}

type Item = Result<Frame<Bytes>, BoxError>;

impl Events {
    async fn next(mut self) -> Option<(Item, Self)> {
        if !self.started {
            // A comment first, so the client sees the stream open before any message.
            self.started = true;
            return Some((Ok(Frame::data(Bytes::from_static(b":\n\n"))), self));
        }
        loop {
            let (out, closed) = take(&self.conn);
            if !out.is_empty() {
                let mut event = String::with_capacity(out.len() + 16);
                for line in out.split('\n') {
                    event.push_str("data: ");
                    event.push_str(line);
                    event.push('\n');
                }
                event.push('\n');
                return Some((Ok(Frame::data(Bytes::from(event))), self));
            }
            if closed || self.changes.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// A long poll: the first answers at once (200, empty: the connection is set up); later
/// ones answer with what is queued, waiting for it at most `poll_timeout` (then 200,
/// empty: poll again); 204 once the connection has ended or a newer poll took over.
pub(super) async fn poll(conn: Arc<Conn>, shared: &Shared) -> Response<Body> {
    if !claim(&conn, Transport::LongPolling) {
        return conflict();
    }
    let me = {
        let mut st = conn.state();
        st.polls += 1;
        st.last_seen = Instant::now();
        st.polls
    };
    conn.wake();
    if me == 1 {
        return plain(StatusCode::OK, "");
    }
    let _attached = conn.attach(false);
    let mut changes = conn.subscribe();
    let deadline = tokio::time::sleep(shared.hub.config().poll_timeout);
    tokio::pin!(deadline);
    loop {
        {
            let mut st = conn.state();
            if !st.outbox.is_empty() {
                let out = std::mem::take(&mut st.outbox);
                return plain(StatusCode::OK, out);
            }
            if st.is_closed() || st.polls != me {
                return plain(StatusCode::NO_CONTENT, "");
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return plain(StatusCode::NO_CONTENT, "");
            },
            _ = &mut deadline => return plain(StatusCode::OK, ""),
        }
    }
}

/// `POST …/hub?id=`: the client's messages (whole body, at most 1 MiB), for the event
/// stream and long polling transports.
pub(super) async fn send(
    req: Request<Incoming>,
    conn: Arc<Conn>,
    shared: &Shared,
) -> Response<Body> {
    match Limited::new(req.into_body(), MAX_SEND).collect().await {
        Ok(body) => {
            deliver(&conn, &body.to_bytes(), shared);
            let mut ok = Response::new(full(Bytes::new()));
            *ok.status_mut() = StatusCode::OK;
            ok
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            plain(StatusCode::PAYLOAD_TOO_LARGE, "message too big\n")
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "body not read\n"),
    }
}
