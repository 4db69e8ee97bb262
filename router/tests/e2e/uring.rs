//! `--io-uring`: HTTP/1.1 WebSockets relayed over each I/O thread's ring carry every
//! byte, whatever the size (a message over many TLS records and many pool buffers, more
//! than a socket may have waiting), pass on a dying backend as 1011, and drain with 1001.

use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::harness::*;

fn options(plaintext: bool) -> Options {
    let mut limits = limits();
    limits.io_uring = true;
    Options {
        io_threads: 2,
        interval: Duration::from_secs(3600),
        drain_grace: Duration::from_millis(100),
        plaintext,
        limits,
        ..Options::default()
    }
}

/// A client's socket over TLS or plain TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type AnyWs = WebSocketStream<Box<dyn Io>>;

async fn open(h: &Harness, plaintext: bool, ns: &str) -> Result<AnyWs> {
    let io: Box<dyn Io> = if plaintext {
        Box::new(tokio::net::TcpStream::connect(h.addr()).await?)
    } else {
        Box::new(h.tls().await?)
    };
    let url = format!("ws://localhost:{}/ws/{ns}", h.addr().port());
    Ok(
        within(WAIT, "connect", tokio_tungstenite::client_async(url, io))
            .await??
            .0,
    )
}

async fn relays_every_size_then_drains(plaintext: bool) -> Result<()> {
    let h = Harness::start(options(plaintext)).await?;
    let mut sockets = Vec::new();
    for i in 0..24u8 {
        let mut ws = open(&h, plaintext, &format!("ns-{i:02}")).await?;
        // Small, a record, many records and buffers, and more than WRITE_MAX (64 KiB).
        for len in [1, 64, 3000 + usize::from(i), 40_000, 300_000] {
            let payload: Vec<u8> = (0..len).map(|k| (k as u8).wrapping_mul(31) ^ i).collect();
            binary_echo(&mut ws, payload).await?;
        }
        sockets.push(ws);
    }
    // Every one of them went over the ring.
    let (_, m) = scrape_metrics(&h).await?;
    assert_eq!(m.get("wsrouter_io_uring_sockets_total"), Some(&24.0));
    for mut ws in sockets.drain(12..) {
        ws.close(None).await?;
        within(WAIT, "closed", async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await?;
    }
    h.router.shutdown();
    for mut ws in sockets {
        assert_eq!(next_close_code(&mut ws).await?, Some(1001));
    }
    within(WAIT, "drain", h.router.drained()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sockets_on_the_ring_relay_every_size_then_drain() -> Result<()> {
    relays_every_size_then_drains(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sockets_on_the_ring_relay_every_size_then_drain() -> Result<()> {
    relays_every_size_then_drains(true).await
}

/// A backend that dies closes its own sockets with 1011 and no others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_closes_only_its_sockets_on_the_ring() -> Result<()> {
    let h = Harness::start(options(false)).await?;
    let (mut victims, mut others) = (Vec::new(), Vec::new());
    for ordinal in 0..4 {
        for k in 0..3 {
            let mut ws = h.ws(&tenant_on(&h, ordinal, k)).await?;
            binary_echo(&mut ws, vec![7; 100]).await?;
            if ordinal == 1 {
                victims.push(ws)
            } else {
                others.push(ws)
            }
        }
    }
    within(WAIT, "backend kill", h.backends[1].kill()).await?;
    for mut ws in victims {
        assert_eq!(next_close_code(&mut ws).await?, Some(1011));
    }
    for ws in &mut others {
        binary_echo(ws, vec![9; 5000]).await?;
    }
    Ok(())
}

/// The kernel's state of the router's end of the connection from local port `client`
/// to the router's `port` (`/proc/net/tcp`: 01 is ESTABLISHED), if it still exists.
fn router_side_state(port: u16, client: u16) -> Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port_of = |a: &str| {
            a.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        (port_of(f.get(1)?) == Some(port) && port_of(f.get(2)?) == Some(client))
            .then(|| f.get(3).map(|s| (*s).to_owned()))
            .flatten()
    }))
}

/// A client that stops reading while its echoes pile up leaves sends on the ring that
/// can never finish. Once the relay has given up on the socket (its age limit came, and
/// the close timeout passed), those sends are cancelled within their grace and the socket
/// is closed: a peer that never reads does not hold a socket open for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_its_socket_on_the_ring() -> Result<()> {
    let mut opts = options(true);
    opts.limits.close_timeout = Duration::from_millis(500);
    // The socket's age limit ends its relay while the router runs on.
    opts.limits.timers.max_age = Some(Duration::from_secs(2));
    opts.limits.timers.max_age_jitter = Duration::ZERO;
    let h = Harness::start(opts).await?;
    let tcp = tokio::net::TcpStream::connect(h.addr()).await?;
    let client_port = tcp.local_addr()?.port();
    let url = format!(
        "ws://localhost:{}/ws/{}",
        h.addr().port(),
        tenant_on(&h, 0, 0)
    );
    let (ws, _) = within(WAIT, "connect", tokio_tungstenite::client_async(url, tcp)).await??;
    let (mut sink, _never_read) = ws.split();
    // Send until the echoes we do not read have filled every buffer on the way and a send
    // no longer completes (bounded: 400 × 64 KiB).
    let mut blocked = false;
    for _ in 0..400 {
        let send = sink.send(Message::binary(vec![5u8; 64 * 1024]));
        if tokio::time::timeout(Duration::from_millis(500), send)
            .await
            .is_err()
        {
            blocked = true;
            break;
        }
    }
    anyhow::ensure!(blocked, "the router kept taking messages nobody read");
    assert_eq!(
        router_side_state(h.addr().port(), client_port)?.as_deref(),
        Some("01"),
        "the router's end is open while the relay lives"
    );
    // At its age limit the relay owes the client a 1012 it cannot deliver, gives up
    // after the close timeout and drops the socket with sends still on the ring. Within
    // their grace (5 s) they are cancelled and the router's end is closed (FIN queued
    // behind the unsent bytes), not left established while the router runs on.
    within(Duration::from_secs(15), "the router's end closed", async {
        while router_side_state(h.addr().port(), client_port)?.as_deref() == Some("01") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(())
}
