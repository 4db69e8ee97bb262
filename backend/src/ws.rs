//! The WebSocket side: the upgrade handshake (shared with the SignalR hub), and the
//! counter-and-echo loop on `{prefix}{namespace}`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::body::{empty, plain, Body};
use crate::server::Shared;
use crate::stats::Stats;

pub(crate) type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Whether the request asks for a WebSocket (`Upgrade: websocket`), valid or not.
pub(crate) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// An upgrade request that is not a valid WebSocket handshake.
pub(crate) struct NotWebSocket;

impl NotWebSocket {
    pub(crate) fn response(self) -> Response<Body> {
        plain(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n")
    }
}

/// Checks the upgrade request and answers it: the 101 to return and the future that
/// gives the upgraded socket.
pub(crate) fn accept<B>(req: &mut Request<B>) -> Result<(Response<Body>, OnUpgrade), NotWebSocket> {
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, wants_upgrade(req), version_ok) else {
        return Err(NotWebSocket);
    };
    // Agree to the first subprotocol offered, so clients that insist on one can connect.
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());

    let on_upgrade = hyper::upgrade::on(req);
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok((resp, on_upgrade))
}

/// The server end of an upgraded socket.
pub(crate) async fn server_socket(upgraded: hyper::upgrade::Upgraded) -> Ws {
    // A 16 KiB read buffer, not tungstenite's 128 KiB: it zero-fills the spare room before
    // every read, which at 128 KiB costs more than the echo itself.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

/// Upgrades `{prefix}{ns}` to the counter-and-echo WebSocket.
pub(crate) fn counter_and_echo<B>(
    mut req: Request<B>,
    ns: String,
    shared: Arc<Shared>,
) -> Response<Body> {
    let (resp, on_upgrade) = match accept(&mut req) {
        Ok(ok) => ok,
        Err(refused) => return refused.response(),
    };
    Stats::bump(&shared.stats.websockets);
    let conn_shared = shared.clone();
    shared.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => stream_and_echo(server_socket(upgraded).await, ns, conn_shared).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    resp
}

/// One counter message; fields serialize in this order.
#[derive(serde::Serialize)]
pub(crate) struct Tick<'a> {
    pub(crate) server: &'a str,
    pub(crate) counter: u64,
    pub(crate) ns: &'a str,
}

async fn stream_and_echo(mut ws: Ws, ns: String, shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = shared.config.counters;
    let mut counter: u64 = 0;
    loop {
        tokio::select! {
            biased;
            _ = shared.kill.cancelled() => return,
            _ = shared.graceful.cancelled() => {
                return close_with(&mut ws, CloseCode::Away, "backend shutting down").await;
            }
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings and queues the close reply itself; keep polling
                // until the stream ends so that reply is flushed.
                Some(Ok(_)) => {}
                Some(Err(e)) => return fail(&mut ws, &e).await,
                None => return,
            },
            _ = ticker.tick(), if counters => {
                let tick = Tick { server: &shared.config.server_name, counter, ns: &ns };
                let Ok(line) = serde_json::to_string(&tick) else { return };
                counter += 1;
                if ws.send(Message::text(line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Fails the connection after a read error with a close frame that says why (RFC 6455
/// §7.1.7), not a bare FIN: a peer learns its mistake, and a proxy in front has no
/// reason to report this backend as gone.
pub(crate) async fn fail(ws: &mut Ws, e: &WsError) {
    if let Some((code, reason)) = failure_close(e) {
        tracing::debug!(error = %e, "failing the WebSocket connection");
        close_with(ws, code, reason).await;
    }
}

/// The close code for a read error that fails the connection, or None when the
/// connection is already gone (nothing could carry a close frame).
fn failure_close(e: &WsError) -> Option<(CloseCode, &'static str)> {
    match e {
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8 in a text message")),
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        _ => None,
    }
}

/// Send a close frame and wait (bounded) for the peer's reply, so the closing handshake
/// completes before the socket is dropped.
pub(crate) async fn close_with(ws: &mut Ws, code: CloseCode, reason: &'static str) {
    let close = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.close(Some(close)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}
