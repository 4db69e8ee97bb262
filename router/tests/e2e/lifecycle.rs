//! How long sockets live: router pings and dead clients, the idle timeout, the maximum
//! age (at frame boundaries, spread by jitter). Real sockets; short timers; every wait is
//! on an event and bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use router::Ping;
use router::SocketTimers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// What a recording backend saw on one socket.
#[derive(Debug)]
pub(crate) enum Seen {
    Message(Message),
    Closed(Option<u16>),
}

/// A backend that answers upgrades and reports every message it reads (pongs included)
/// and how each socket ended. `hold` makes it wait for a go before it reads anything.
pub(crate) struct Recorder {
    pub addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    go: Option<tokio::sync::watch::Sender<bool>>,
}

impl Recorder {
    pub(crate) async fn start(hold: bool) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, seen) = mpsc::unbounded_channel();
        let (go_tx, go_rx) = tokio::sync::watch::channel(!hold);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tx, mut go) = (tx.clone(), go_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let _ = go.wait_for(|g| *g).await;
                    let end = loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(c))) => {
                                break c.map(|c| u16::from(c.code));
                            }
                            Some(Ok(m)) => {
                                let _ = tx.send(Seen::Message(m));
                            }
                            _ => break None,
                        }
                    };
                    let _ = tx.send(Seen::Closed(end));
                });
            }
        });
        Ok(Self {
            addr,
            seen,
            go: Some(go_tx),
        })
    }

    pub(crate) fn go(&mut self) {
        if let Some(g) = self.go.take() {
            let _ = g.send(true);
        }
    }

    /// The next thing seen, skipping nothing.
    pub(crate) async fn next(&mut self) -> Result<Seen> {
        within(WAIT, "the backend to see something", self.seen.recv())
            .await?
            .context("recorder gone")
    }

    /// The close code of the next socket to end, after any messages before it.
    pub(crate) async fn next_close(&mut self) -> Result<(Option<u16>, Vec<Message>)> {
        let mut messages = Vec::new();
        loop {
            match self.next().await? {
                Seen::Closed(code) => return Ok((code, messages)),
                Seen::Message(m) => messages.push(m),
            }
        }
    }
}

fn timers(t: SocketTimers) -> Options {
    let mut limits = limits();
    limits.timers = t;
    limits.close_timeout = Duration::from_secs(2);
    // Many sockets from one address at once here.
    limits.max_pending_per_ip = 1000;
    Options {
        limits,
        plaintext: true,
        ..Options::default()
    }
}

/// A WebSocket upgrade over plain TCP that is never read from again: a client that
/// stopped answering while its TCP connection stays open.
async fn silent_client(addr: SocketAddr, tenant: &str) -> Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(&upgrade_request(&format!("/ws/{tenant}")))
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(tcp.read(&mut b).await? == 1, "closed before the 101");
        head.push(b[0]);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_find_a_silent_client_and_never_reach_the_backend() -> Result<()> {
    let ping = Ping {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(400),
    };
    let mut backend = Recorder::start(false).await?;
    let mut opts = timers(SocketTimers {
        client_ping: Some(ping),
        ..SocketTimers::default()
    });
    opts.backends = 1;
    opts.replace = vec![(0, backend.addr.to_string())];
    let h = Harness::start(opts).await?;

    // A live client answers every ping (tungstenite does so as it reads) and keeps its
    // socket for many intervals; the backend never sees those pongs.
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
    let mut pings = 0;
    while pings < 6 {
        match within(WAIT, "a ping", ws.next())
            .await?
            .context("closed")??
        {
            Message::Ping(p) => {
                assert_eq!(p.len(), 8);
                pings += 1;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    ws.send(Message::text("hello")).await?;
    match backend.next().await? {
        Seen::Message(m) => assert_eq!(m, Message::text("hello"), "nothing before the text"),
        other => anyhow::bail!("{other:?}"),
    }
    ws.close(None).await?;
    let (_, between) = backend.next_close().await?;
    assert!(
        between.iter().all(|m| !matches!(m, Message::Pong(_))),
        "the backend saw a pong: {between:?}"
    );

    // A client that stops reading (its TCP still open) is gone after interval + timeout:
    // the backend hears 1001 and the slot is freed.
    let started = Instant::now();
    let silent = silent_client(h.addr(), "ns-02").await?;
    let (code, _) = backend.next_close().await?;
    assert_eq!(code, Some(1001));
    let took = started.elapsed();
    assert!(took >= ping.interval + ping.timeout, "{took:?}");
    within(
        WAIT,
        "the slot to be freed",
        h.router
            .changes()
            .until(|| h.router.admission().live_count() == 0),
    )
    .await?;
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(
        m["wsrouter_connections_closed_total{ordinal=\"0\",reason=\"ping_timeout\",protocol=\"h1\",set=\"stable\"}"],
        1.0
    );
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_process_is_found_by_pings() -> Result<()> {
    let h = Harness::start(timers(SocketTimers {
        client_ping: Some(Ping {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
        }),
        ..SocketTimers::default()
    }))
    .await?;
    // A real client process holding the socket, then frozen with SIGSTOP: its kernel
    // keeps the connection up (keepalive probes would be answered), but nothing reads.
    let port = h.addr().port();
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /ws/ns-03 HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n' >&3; read -r line <&3; echo \"$line\"; kill -STOP $$; cat <&3 >/dev/null"
    );
    let mut child = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    within(WAIT, "the client's 101", async {
        while !line.ends_with(b"\n") && out.read(&mut b).await? == 1 {
            line.push(b[0]);
        }
        anyhow::Ok(())
    })
    .await??;
    assert!(
        line.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&line)
    );
    within(
        WAIT,
        "one live relay",
        h.router
            .changes()
            .until(|| h.router.admission().live_count() == 1),
    )
    .await?;
    let freed = within(
        WAIT,
        "the frozen client's slot to be freed",
        h.router
            .changes()
            .until(|| h.router.admission().live_count() == 0),
    )
    .await;
    if freed.is_err() {
        eprintln!("{}", h.admin_get("/metrics").await?.body);
    }
    freed?;
    let m = samples(&h.admin_get("/metrics").await?.body);
    let closed: f64 = m
        .iter()
        .filter(|(k, _)| k.contains("reason=\"ping_timeout\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(closed, 1.0);
    let _ = child.kill().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_streaming_data_is_never_idle_closed() -> Result<()> {
    let h = Harness::start(Options {
        interval: Duration::from_millis(40),
        ..timers(SocketTimers {
            idle_timeout: Some(Duration::from_millis(400)),
            ..SocketTimers::default()
        })
    })
    .await?;
    // The echo backends stream a counter every 40 ms: data, so never idle, over many
    // idle periods.
    let url = |t: &str| format!("ws://127.0.0.1:{}/ws/{t}", h.addr().port());
    let (mut busy, _) = within(
        WAIT,
        "connect",
        tokio_tungstenite::connect_async(url("busy")),
    )
    .await??;
    let mut counters = 0;
    let started = Instant::now();
    while counters < 40 {
        match within(WAIT, "a counter", busy.next())
            .await?
            .context("closed")??
        {
            Message::Text(_) => counters += 1,
            Message::Close(c) => anyhow::bail!("a busy socket was closed: {c:?}"),
            _ => {}
        }
    }
    assert!(
        started.elapsed() > Duration::from_millis(1200),
        "more than three idle periods"
    );
    drop(busy);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_socket_gets_1001_both_ways_after_the_idle_timeout() -> Result<()> {
    let mut backend = Recorder::start(false).await?;
    let mut opts = timers(SocketTimers {
        idle_timeout: Some(Duration::from_millis(300)),
        ..SocketTimers::default()
    });
    opts.backends = 1;
    opts.replace = vec![(0, backend.addr.to_string())];
    let h = Harness::start(opts).await?;
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
    ws.send(Message::text("one")).await?;
    let started = Instant::now();
    let close = within(WAIT, "the idle close", ws.next())
        .await?
        .context("ended")??;
    let Message::Close(Some(c)) = close else {
        anyhow::bail!("{close:?}")
    };
    assert_eq!(c.code, CloseCode::Away);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (code, messages) = backend.next_close().await?;
    assert_eq!((code, messages), (Some(1001), vec![Message::text("one")]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_closes_with_1012_spread_over_the_jitter_and_never_mid_frame() -> Result<()> {
    let (age, jitter) = (Duration::from_millis(300), Duration::from_millis(1200));
    let mut backend = Recorder::start(true).await?;
    let mut opts = timers(SocketTimers {
        max_age: Some(age),
        max_age_jitter: jitter,
        ..SocketTimers::default()
    });
    opts.backends = 1;
    opts.replace = vec![(0, backend.addr.to_string())];
    let h = Harness::start(opts).await?;
    backend.go();

    // 100 sockets: each gets 1012, at times spread over the jitter window.
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let url = url.clone();
        set.spawn(async move {
            let (mut ws, _) =
                within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
            let m = within(WAIT, "the age close", ws.next())
                .await?
                .context("ended")??;
            let Message::Close(Some(c)) = m else {
                anyhow::bail!("{m:?}")
            };
            anyhow::ensure!(c.code == CloseCode::Restart, "{c:?}");
            anyhow::Ok(start.elapsed())
        });
    }
    let mut times = Vec::new();
    while let Some(t) = set.join_next().await {
        times.push(t??);
    }
    times.sort();
    let (first, last) = (times[0], times[99]);
    assert!(first >= age, "{first:?}");
    assert!(last <= age + jitter + Duration::from_secs(2), "{last:?}");
    assert!(
        last - first >= jitter / 2,
        "100 closes spread over the window, not in one wave: {first:?}..{last:?}"
    );

    // A 1 MiB frame half sent when the age comes: the backend gets all of it, then 1012.
    let mut backend = Recorder::start(true).await?;
    let mut opts = timers(SocketTimers {
        max_age: Some(Duration::from_millis(200)),
        ..SocketTimers::default()
    });
    opts.backends = 1;
    opts.replace = vec![(0, backend.addr.to_string())];
    let h = Harness::start(opts).await?;
    let mut tcp = TcpStream::connect(h.addr()).await?;
    tcp.write_all(&upgrade_request("/ws/ns-01")).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(tcp.read(&mut b).await? == 1, "closed");
        head.push(b[0]);
    }
    let payload = vec![0x5au8; 1 << 20];
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // mask key 0: the payload as is
    frame.extend_from_slice(&payload);
    let half = frame.len() / 2;
    tcp.write_all(&frame[..half]).await?;
    // The router's 1012 toward this client says the age has come, mid-frame.
    let mut close = [0u8; 2];
    within(WAIT, "the client's 1012", tcp.read_exact(&mut close)).await??;
    assert_eq!(close[0], 0x88);
    tcp.write_all(&frame[half..]).await?;
    backend.go();
    let (code, messages) = backend.next_close().await?;
    assert_eq!(code, Some(1012));
    assert_eq!(messages, vec![Message::binary(payload)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_pings_find_a_silent_backend_and_never_reach_the_client() -> Result<()> {
    let ping = Ping {
        interval: Duration::from_millis(150),
        timeout: Duration::from_millis(300),
    };
    let mut backend = Recorder::start(false).await?;
    let mut opts = timers(SocketTimers {
        backend_ping: Some(ping),
        ..SocketTimers::default()
    });
    opts.backends = 1;
    opts.replace = vec![(0, backend.addr.to_string())];
    let h = Harness::start(opts).await?;
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
    // The backend answers (tungstenite replies as it reads) three pings...
    let mut pings = 0;
    while pings < 3 {
        if let Seen::Message(Message::Ping(_)) = backend.next().await? {
            pings += 1;
        }
    }
    // ...and the client saw none of the pongs: the first thing it reads is the close.
    ws.close(None).await?;
    let next = within(WAIT, "the close", ws.next()).await?;
    // (The recorder drops its end without finishing the close handshake.)
    assert!(
        !matches!(next, Some(Ok(Message::Pong(_)) | Ok(Message::Ping(_)))),
        "the client saw {next:?}"
    );

    // A backend that stops reading after its 101: the client hears 1001.
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    tokio::spawn(async move {
        let Ok((mut s, _)) = silent.accept().await else {
            return;
        };
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                return;
            }
            req.push(b[0]);
        }
        let text = String::from_utf8_lossy(&req).to_string();
        let key = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or(l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .unwrap_or_default()
            .trim()
            .to_owned();
        let _ = s.write_all(good_101(&key, &text).as_bytes()).await;
        // Holds the socket, reads nothing.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let mut opts = timers(SocketTimers {
        backend_ping: Some(ping),
        ..SocketTimers::default()
    });
    opts.backends = 1;
    opts.replace = vec![(0, silent_addr.to_string())];
    let h = Harness::start(opts).await?;
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
    let m = within(WAIT, "the close", ws.next())
        .await?
        .context("ended")??;
    let Message::Close(Some(c)) = m else {
        anyhow::bail!("{m:?}")
    };
    assert_eq!(c.code, CloseCode::Away);
    Ok(())
}
