//! The hub's connections by token: what each has queued for its client, whether its
//! handshake is done, which transport carries it, and when it was last used. A reaper
//! pings live connections, closes idle ones and forgets closed ones after a linger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::HubConfig;

/// At most this many connections are known at once; a negotiate beyond is refused (503).
const MAX_CONNECTIONS: usize = 10_000;

/// The record separator ending every hub protocol message.
pub(crate) const RS: char = '\u{1e}';

/// The transport a connection was first attached with; another is a conflict (409).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSockets,
    ServerSentEvents,
    LongPolling,
}

pub(crate) struct Registry {
    config: HubConfig,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

/// What a request's `id` names.
pub(crate) enum Lookup {
    Live(Arc<Conn>),
    /// Closed, not yet forgotten: not a request that reached the wrong server.
    Closed,
    Unknown,
}

impl Registry {
    pub(crate) fn new(config: HubConfig) -> Self {
        Self {
            config,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.config
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Conn>>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections not closed yet.
    pub(crate) fn open(&self) -> usize {
        self.map()
            .values()
            .filter(|c| !c.state().is_closed())
            .count()
    }

    /// A new connection for tenant `ns`, or None when the table is full.
    pub(crate) fn create(&self, ns: &str) -> Option<Arc<Conn>> {
        let mut map = self.map();
        if map.len() >= MAX_CONNECTIONS {
            return None;
        }
        let conn = Arc::new(Conn::new(ns));
        map.insert(conn.token.clone(), conn.clone());
        Some(conn)
    }

    pub(crate) fn lookup(&self, token: &str) -> Lookup {
        match self.map().get(token) {
            None => Lookup::Unknown,
            Some(c) if c.state().is_closed() => Lookup::Closed,
            Some(c) => Lookup::Live(c.clone()),
        }
    }

    /// One reaper pass at `now`: pings, idle closes, forgetting.
    pub(crate) fn sweep(&self, now: Instant) {
        let cfg = &self.config;
        self.map().retain(|_, conn| {
            let mut st = conn.state();
            if let Some(at) = st.closed_at {
                return now.duration_since(at) < cfg.linger;
            }
            if st.attached == 0 && now.duration_since(st.last_seen) >= cfg.idle_timeout {
                st.close(Some("idle"), now);
            } else if st.handshaken && now.duration_since(st.last_ping) >= cfg.ping_interval {
                st.last_ping = now;
                st.outbox.push_str(r#"{"type":6}"#);
                st.outbox.push(RS);
            } else {
                return true;
            }
            drop(st);
            conn.changed.send_replace(());
            true
        });
    }

    /// Server shutdown: every live connection gets a close message.
    pub(crate) fn close_all(&self) {
        let now = Instant::now();
        for conn in self.map().values() {
            conn.state().close(Some("Server is shutting down."), now);
            conn.changed.send_replace(());
        }
    }
}

/// One hub connection.
pub(crate) struct Conn {
    /// What other clients would know it by (negotiate's `connectionId`).
    pub(crate) id: String,
    /// The secret that names it in `?id=` (negotiate's `connectionToken`).
    pub(crate) token: String,
    /// The tenant it was negotiated for.
    pub(crate) ns: String,
    state: Mutex<ConnState>,
    /// Bumped on every change a transport waits for (outbox, close, superseded poll).
    changed: watch::Sender<()>,
}

pub(crate) struct ConnState {
    /// Messages for the client, each ending in the record separator.
    pub(crate) outbox: String,
    /// Bytes from the client after its last complete record.
    pub(crate) inbox: Vec<u8>,
    pub(crate) handshaken: bool,
    pub(crate) closed_at: Option<Instant>,
    pub(crate) last_seen: Instant,
    last_ping: Instant,
    /// Requests carrying it right now (a WebSocket, an event stream, a poll).
    attached: usize,
    pub(crate) transport: Option<Transport>,
    /// Polls started; the first answers at once, a newer one ends an older one (204).
    pub(crate) polls: u64,
}

impl ConnState {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// Closes; with `error`, the client is told with a close message (type 7).
    pub(crate) fn close(&mut self, error: Option<&str>, now: Instant) {
        if self.closed_at.is_some() {
            return;
        }
        if let Some(error) = error {
            let msg = serde_json::json!({"type": 7, "error": error, "allowReconnect": false});
            self.outbox.push_str(&msg.to_string());
            self.outbox.push(RS);
        }
        self.closed_at = Some(now);
    }
}

impl Conn {
    fn new(ns: &str) -> Self {
        let now = Instant::now();
        Self {
            id: random_id(),
            token: random_id(),
            ns: ns.to_owned(),
            state: Mutex::new(ConnState {
                outbox: String::new(),
                inbox: Vec::new(),
                handshaken: false,
                closed_at: None,
                last_seen: now,
                last_ping: now,
                attached: 0,
                transport: None,
                polls: 0,
            }),
            changed: watch::Sender::new(()),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every transport waiting on this connection.
    pub(crate) fn wake(&self) {
        self.changed.send_replace(());
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Marks a request as carrying the connection until the guard drops. With
    /// `close_on_drop` (WebSocket, event stream), the connection ends with it.
    pub(crate) fn attach(self: &Arc<Self>, close_on_drop: bool) -> Attached {
        let mut st = self.state();
        st.attached += 1;
        st.last_seen = Instant::now();
        drop(st);
        Attached {
            conn: self.clone(),
            close_on_drop,
        }
    }
}

pub(crate) struct Attached {
    conn: Arc<Conn>,
    close_on_drop: bool,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.conn.state();
        st.attached -= 1;
        st.last_seen = now;
        if self.close_on_drop {
            st.close(None, now);
        }
        drop(st);
        self.conn.wake();
    }
}

/// 128 random bits in hex. fastrand is not a cryptographic generator: fine for a test
/// hub whose tokens guard nothing.
fn random_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
