//! Tests of whole relays over in-memory pipes: bytes both ways, backpressure, the close
//! handshake and the router's own closes, resets, drains, timeouts and pings.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::ready;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::data::relay::frame::close_frame;
use crate::data::relay::frame::code;
use crate::data::relay::test_frames::{client_frame, close_code, server_frame};

const CFG: RelayConfig = RelayConfig {
    close_timeout: Duration::from_secs(5),
    idle_timeout: None,
    max_age: None,
    client_ping: None,
    backend_ping: None,
    budget: &bulk::BUDGET,
};

struct Ends {
    client: DuplexStream,
    backend: DuplexStream,
    relay: tokio::task::JoinHandle<RelayReport>,
    drain: CancellationToken,
}

fn start(client_pre: &[u8], backend_pre: &[u8]) -> Ends {
    let (client, relay_client) = duplex(64 * 1024);
    let (backend, relay_backend) = duplex(64 * 1024);
    let drain = CancellationToken::new();
    let d = drain.clone();
    let (cp, bp) = (
        Bytes::copy_from_slice(client_pre),
        Bytes::copy_from_slice(backend_pre),
    );
    let relay = tokio::spawn(async move {
        let stop = async move {
            d.cancelled().await;
            Stop::SHUTDOWN
        };
        run(relay_client, relay_backend, cp, bp, stop, CFG).await
    });
    Ends {
        client,
        backend,
        relay,
        drain,
    }
}

/// A sink that takes 256 bytes at a time makes the relay hold bytes back; they arrive
/// whole and in order, and once written out the held-back buffer is freed.
#[tokio::test]
async fn backpressure_keeps_order_and_frees_the_buffer_after() {
    let (mut client, relay_client) = duplex(64 * 1024);
    let (mut backend, relay_backend) = duplex(256);
    let stop = std::future::pending::<Stop>();
    let mut relay = run(
        relay_client,
        relay_backend,
        Bytes::new(),
        Bytes::new(),
        stop,
        CFG,
    );
    let mut sent = Vec::new();
    for i in 0..2_000u32 {
        let payload: Vec<u8> = (0..100u32).map(|j| (i * 31 + j) as u8).collect();
        sent.extend(client_frame(0x2, &payload));
    }
    let n = sent.len();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        (client, sent)
    });
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; n];
        backend.read_exact(&mut got).await.unwrap();
        (backend, got)
    });
    let (_backend, got) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = &mut relay => panic!("the relay ended early"),
            r = reader => r.unwrap(),
        }
    })
    .await
    .expect("all bytes relayed in time");
    let (_client, sent) = writer.await.unwrap();
    assert!(got == sent, "bytes differ");
    assert_eq!(relay.to_backend.bytes, n as u64);
    assert_eq!(relay.to_backend.buf.capacity(), 0, "buffer kept while idle");
    assert_eq!(relay.to_client.buf.capacity(), 0);
}

/// The client sends close 1000; the backend receives it unchanged.
async fn client_close_reaches_backend(e: &mut Ends) {
    let close = client_frame(8, &1000u16.to_be_bytes());
    e.client.write_all(&close).await.unwrap();
    let mut got = vec![0u8; close.len()];
    e.backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, close);
}

/// The backend drops: the client must see only that (nothing sent to it, then EOF), and
/// the relay, once the client goes too, reports what it ended with.
async fn backend_drop_adds_nothing(mut e: Ends) -> RelayReport {
    drop(e.backend);
    let to_client = read_all(&mut e.client).await;
    assert!(to_client.is_empty(), "the router sent {to_client:?}");
    drop(e.client);
    let r = e.relay.await.unwrap();
    assert_eq!(r.sent_to_client, None);
    r
}

async fn read_all(s: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("peer saw EOF in time")
        .expect("read");
    out
}

#[tokio::test]
async fn bytes_flow_both_ways_and_pre_read_bytes_go_first() {
    let mut e = start(&client_frame(1, b"early"), &server_frame(1, b"first"));
    let later = server_frame(2, b"later");
    e.backend.write_all(&later).await.unwrap();
    let mut got = vec![0u8; 7 + later.len()];
    e.client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..7], &server_frame(1, b"first")[..]);
    assert_eq!(&got[7..], &later[..]);
    let mut early = vec![0u8; 11];
    e.backend.read_exact(&mut early).await.unwrap();
    assert_eq!(early, client_frame(1, b"early"));
    // A clean close handshake: client close passes, backend's reply passes, EOFs.
    let close = client_frame(8, &1000u16.to_be_bytes());
    e.client.write_all(&close).await.unwrap();
    let reply = server_frame(8, &1000u16.to_be_bytes());
    e.backend.write_all(&reply).await.unwrap();
    e.backend.shutdown().await.unwrap();
    // The backend's FIN reaches the client after the reply; the client hangs up in
    // turn, and only then does the backend see EOF: the relay stays transparent.
    let to_client = read_all(&mut e.client).await;
    assert_eq!(to_client, reply, "no extra close was injected");
    e.client.shutdown().await.unwrap();
    let to_backend = read_all(&mut e.backend).await;
    assert_eq!(to_backend, close);
    let r = e.relay.await.unwrap();
    assert_eq!(r.reason, CloseReason::ClientClosed);
    assert_eq!(
        (r.client_close_code, r.backend_close_code),
        (Some(1000), Some(1000))
    );
    assert_eq!((r.sent_to_client, r.sent_to_backend), (None, None));
    assert_eq!(r.bytes_from_client, 11 + close.len() as u64);
    assert_eq!(
        r.bytes_from_backend,
        7 + later.len() as u64 + reply.len() as u64
    );
}

/// The backend hangs up without a close frame: the client gets its data, then the
/// router's close 1011 (the upstream failed), then EOF, so it can tell a failed
/// backend from a network that dropped it (1006).
#[tokio::test]
async fn backend_gone_is_a_1011_to_the_client() {
    let mut e = start(b"", b"");
    e.backend
        .write_all(&server_frame(1, b"tick"))
        .await
        .unwrap();
    drop(e.backend);
    let got = read_all(&mut e.client).await;
    let mut want = server_frame(1, b"tick");
    want.extend(close_frame(1011, "backend went away", None));
    assert_eq!(got, want);
    drop(e.client);
    let r = e.relay.await.unwrap();
    assert_eq!(r.reason, CloseReason::BackendGone);
    assert_eq!((r.sent_to_client, r.sent_to_backend), (Some(1011), None));
}

/// A socket whose end reads as a reset (ECONNRESET), as a killed peer's may.
struct ResetAtEnd(DuplexStream);

impl AsyncRead for ResetAtEnd {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
        if buf.filled().len() == before {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ResetAtEnd {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Peer for ResetAtEnd {
    fn reset(&mut self) {}
}

/// A backend reset is a 1011 too, then FIN: the client's connection is not reset.
#[tokio::test]
async fn backend_reset_is_a_1011_to_the_client() {
    let (mut client, relay_client) = duplex(64 * 1024);
    let (backend, relay_backend) = duplex(64 * 1024);
    let relay = tokio::spawn(run(
        relay_client,
        ResetAtEnd(relay_backend),
        Bytes::new(),
        Bytes::new(),
        std::future::pending(),
        CFG,
    ));
    drop(backend);
    let got = read_all(&mut client).await;
    assert_eq!(got, close_frame(1011, "backend went away", None));
    drop(client);
    let r = relay.await.unwrap();
    assert_eq!(r.reason, CloseReason::BackendError);
    assert_eq!(r.sent_to_client, Some(1011));
}

/// Once the client's close has passed, a backend that hangs up gets the client only
/// a FIN: the peers were already closing, and the router adds nothing.
#[tokio::test]
async fn backend_gone_after_a_client_close_adds_nothing() {
    let mut e = start(b"", b"");
    client_close_reaches_backend(&mut e).await;
    backend_drop_adds_nothing(e).await;
}

/// Autobahn 7.3.6 against a strict server: the client's close frame is too long for
/// a control frame, the server resets. The client began the close: the router adds
/// no 1011, the reset is passed on as it came.
#[tokio::test]
async fn a_bad_client_close_then_a_backend_reset_adds_nothing() {
    let mut e = start(b"", b"");
    let mut bad_close = vec![0x88, 0xFE, 0x00, 0x7E, 1, 2, 3, 4];
    bad_close.extend(std::iter::repeat_n(0x55, 126));
    e.client.write_all(&bad_close).await.unwrap();
    let mut got = vec![0u8; bad_close.len()];
    e.backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, bad_close, "passed on as it came");
    let r = backend_drop_adds_nothing(e).await;
    assert_eq!(r.reason, CloseReason::ClientClosed);
}

/// A client frame the router cannot follow (a reserved opcode an extension might
/// define), then the backend drops: that is the backend answering it, and the
/// client sees the drop, not a 1011.
#[tokio::test]
async fn a_backend_drop_after_an_unfollowable_client_frame_adds_nothing() {
    let mut e = start(b"", b"");
    let odd = client_frame(0x3, b"x");
    e.client.write_all(&odd).await.unwrap();
    let mut got = vec![0u8; odd.len()];
    e.backend.read_exact(&mut got).await.unwrap();
    backend_drop_adds_nothing(e).await;
}

#[tokio::test]
async fn backend_gone_mid_frame_gets_the_client_only_fin() {
    let mut e = start(b"", b"");
    let f = server_frame(2, b"0123456789");
    e.backend.write_all(&f[..6]).await.unwrap();
    drop(e.backend);
    let got = read_all(&mut e.client).await;
    assert_eq!(got, &f[..6], "no close frame inside a frame");
    drop(e.client);
    assert_eq!(e.relay.await.unwrap().sent_to_client, None);
}

#[tokio::test]
async fn client_gone_is_passed_on_as_eof() {
    let mut e = start(b"", b"");
    drop(e.client);
    let got = read_all(&mut e.backend).await;
    assert!(got.is_empty(), "the router sent the backend {got:?}");
    drop(e.backend);
    let r = e.relay.await.unwrap();
    assert_eq!(
        (r.reason, r.sent_to_backend),
        (CloseReason::ClientGone, None)
    );
}

/// The stop signal is polled once to register, and again only when it wakes the
/// relay: not on every read and write (it takes a lock every relay shares).
#[tokio::test]
async fn the_stop_signal_is_polled_only_when_it_wakes() {
    use std::sync::atomic::AtomicUsize;
    let polls = Arc::new(AtomicUsize::new(0));
    let drain = tokio_util::sync::CancellationToken::new();
    let stop = {
        let (polls, drain) = (polls.clone(), drain.clone());
        let mut wait = Box::pin(drain.cancelled_owned());
        std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            wait.as_mut().poll(cx).map(|()| Stop::SHUTDOWN)
        })
    };
    let (mut client, relay_client) = duplex(64 * 1024);
    let (mut backend, relay_backend) = duplex(64 * 1024);
    let relay = tokio::spawn(run(
        relay_client,
        relay_backend,
        Bytes::new(),
        Bytes::new(),
        stop,
        CFG,
    ));
    for i in 0..100u8 {
        let f = client_frame(2, &[i; 10]);
        client.write_all(&f).await.unwrap();
        let mut got = vec![0u8; f.len()];
        backend.read_exact(&mut got).await.unwrap();
        let f = server_frame(2, &[i; 10]);
        backend.write_all(&f).await.unwrap();
        let mut got = vec![0u8; f.len()];
        client.read_exact(&mut got).await.unwrap();
    }
    assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");
    drain.cancel();
    let mut to_client = Vec::new();
    let mut buf = [0u8; 64];
    while close_code(&to_client).is_none() {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "no close frame came");
        to_client.extend_from_slice(&buf[..n]);
    }
    assert_eq!(close_code(&to_client), Some(1001));
    assert_eq!(polls.load(Ordering::Relaxed), 2, "and once when it woke");
    drop((client, backend));
    relay.await.unwrap();
}

/// A close frame passed, then both peers go silent: the close timeout starts at the
/// close frame and ends the relay.
#[tokio::test(start_paused = true)]
async fn a_close_handshake_that_never_finishes_is_bounded() {
    let mut e = start(b"", b"");
    client_close_reaches_backend(&mut e).await;
    let r = tokio::time::timeout(CFG.close_timeout * 2, &mut e.relay)
        .await
        .expect("the relay ended within the close timeout")
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.reason, CloseReason::ClientClosed);
    assert_eq!((r.sent_to_client, r.sent_to_backend), (None, None));
}

/// A drain that begins once the peers are already closing adds no close frame of
/// its own.
#[tokio::test]
async fn drain_during_a_close_handshake_adds_nothing() {
    let mut e = start(b"", b"");
    let close = server_frame(8, &1000u16.to_be_bytes());
    e.backend.write_all(&close).await.unwrap();
    let mut got = vec![0u8; close.len()];
    e.client.read_exact(&mut got).await.unwrap();
    e.drain.cancel();
    let reply = client_frame(8, &1000u16.to_be_bytes());
    e.client.write_all(&reply).await.unwrap();
    e.client.shutdown().await.unwrap();
    let to_backend = read_all(&mut e.backend).await;
    assert_eq!(
        to_backend, reply,
        "only the client's own close reached the backend"
    );
    drop(e.backend);
    let to_client = read_all(&mut e.client).await;
    assert!(to_client.is_empty(), "{to_client:?}");
    let r = e.relay.await.unwrap();
    assert_eq!((r.sent_to_client, r.sent_to_backend), (None, None));
}

#[tokio::test]
async fn drain_finishes_the_frame_in_flight_then_closes_both_sides_with_1001() {
    let mut e = start(b"", b"");
    let f = server_frame(2, b"0123456789");
    e.backend.write_all(&f[..5]).await.unwrap();
    // Wait until the first half reached the client, so the drain starts mid-frame.
    let mut half = [0u8; 5];
    e.client.read_exact(&mut half).await.unwrap();
    e.drain.cancel();
    tokio::task::yield_now().await;
    e.backend.write_all(&f[5..]).await.unwrap();
    // The frame completes, then the close; then the router hangs up.
    let mut rest = read_all(&mut e.client).await;
    assert_eq!(&rest[..f.len() - 5], &f[5..]);
    let close = rest.split_off(f.len() - 5);
    assert_eq!(close_code(&close), Some(1001));
    let to_backend = read_all(&mut e.backend).await;
    assert_eq!(close_code(&to_backend), Some(1001));
    drop((e.client, e.backend));
    let r = e.relay.await.unwrap();
    assert_eq!(r.reason, CloseReason::Shutdown);
    assert_eq!(
        (r.sent_to_client, r.sent_to_backend),
        (Some(1001), Some(1001))
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_finishes_is_cut_off_after_close_timeout() {
    let e = start(b"", b"");
    // The client hangs up; the backend neither reads nor closes.
    drop(e.client);
    let r = tokio::time::timeout(CFG.close_timeout * 2, e.relay)
        .await
        .expect("relay ended")
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.reason, CloseReason::ClientGone);
    drop(e.backend);
}

// Pings: the router's own, at frame boundaries, and their pongs taken out.

/// A relay between two in-memory pipes, never asked to stop: the test's client end,
/// its backend end, and the relay's task.
fn relay_with(
    config: RelayConfig,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<RelayReport>,
) {
    let (client, relay_client) = duplex(64 * 1024);
    let (backend, relay_backend) = duplex(64 * 1024);
    let relay = tokio::spawn(run(
        relay_client,
        relay_backend,
        Bytes::new(),
        Bytes::new(),
        std::future::pending(),
        config,
    ));
    (client, backend, relay)
}

/// Pinging the client every 30 s, its pong due within 10 s.
fn pinging_the_client() -> RelayConfig {
    RelayConfig {
        client_ping: Some(Ping {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }),
        ..RelayConfig::closing_within(Duration::from_secs(5))
    }
}

/// The router's ping reaches the client at a frame boundary; the client's pong,
/// even split over two writes and followed by data, is taken out of the stream; a
/// pong the router did not ask for passes.
#[tokio::test(start_paused = true)]
async fn our_pong_is_consumed_however_it_is_split() {
    let (mut client, mut backend, relay) = relay_with(pinging_the_client());
    // A backend frame in flight when the interval passes: the ping comes after it.
    backend
        .write_all(&[0x81, 0x03, b'a', b'b', b'c'])
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    let mut got = [0u8; 5 + 10];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..5], &[0x81, 0x03, b'a', b'b', b'c']);
    assert_eq!(
        &got[5..7],
        &[0x89, 0x08],
        "an unmasked ping with an 8-byte token"
    );
    let token = &got[7..15];

    let stranger = client_frame(0xA, b"not ours");
    let mut stream = stranger.clone();
    stream.extend(client_frame(0xA, token));
    stream.extend(client_frame(0x1, b"after"));
    // Split inside our pong's header.
    let cut = stranger.len() + 3;
    client.write_all(&stream[..cut]).await.unwrap();
    tokio::task::yield_now().await;
    client.write_all(&stream[cut..]).await.unwrap();
    let mut want = stranger;
    want.extend(client_frame(0x1, b"after"));
    let mut seen = vec![0u8; want.len()];
    backend.read_exact(&mut seen).await.unwrap();
    assert_eq!(
        seen, want,
        "the stranger's pong and the data pass; ours does not"
    );

    // No pong for the next ping: after the timeout, both sides get 1001.
    tokio::time::advance(Duration::from_secs(31)).await;
    let mut ping = [0u8; 10];
    client.read_exact(&mut ping).await.unwrap();
    assert_eq!(ping[0], 0x89);
    tokio::time::advance(Duration::from_secs(11)).await;
    let mut close = [0u8; 2];
    backend.read_exact(&mut close).await.unwrap();
    assert_eq!(close[0], 0x88);
    drop((client, backend));
    let report = relay.await.unwrap();
    assert_eq!(report.reason, CloseReason::PingTimeout);
    assert_eq!(report.sent_to_backend, Some(code::GOING_AWAY));
}

/// A masked frame header claiming 2^64 - 14 bytes of payload: header and payload
/// added wrap to 0, which once kept the pong search in place for good.
const WRAPPING_HEADER: [u8; 14] = [
    0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF2, 1, 2, 3, 4,
];

/// The attack: while the router waits for a pong, a frame whose 64-bit
/// length has its top bit set. What came before it reaches the backend, then the
/// backend gets 1001 and the client 1002; the relay ends (it does not spin).
#[tokio::test(start_paused = true)]
async fn a_length_past_2_63_is_a_protocol_error_not_a_spin() {
    let (mut client, mut backend, relay) = relay_with(pinging_the_client());
    tokio::time::advance(Duration::from_secs(31)).await;
    let mut ping = [0u8; 10];
    client.read_exact(&mut ping).await.unwrap();
    assert_eq!(ping[..2], [0x89, 0x08]);
    // The router now looks for its pong in everything the client sends.
    let mut attack = client_frame(0x1, b"before");
    attack.extend_from_slice(&WRAPPING_HEADER);
    attack.extend_from_slice(b"whatever follows");
    client.write_all(&attack).await.unwrap();

    let before = client_frame(0x1, b"before");
    let mut seen = vec![0u8; before.len()];
    backend.read_exact(&mut seen).await.unwrap();
    assert_eq!(seen, before, "what came before the bad frame passes");
    let mut close = Vec::new();
    backend.read_to_end(&mut close).await.unwrap();
    assert_eq!(close[0], 0x88, "then a close frame, then FIN: {close:?}");
    assert_eq!(close_code(&close), Some(code::GOING_AWAY));
    let mut to_client = Vec::new();
    client.read_to_end(&mut to_client).await.unwrap();
    assert_eq!(close_code(&to_client), Some(code::PROTOCOL_ERROR));
    let report = relay.await.unwrap();
    assert_eq!(report.reason, CloseReason::ClientProtocolError);
    assert_eq!(report.sent_to_client, Some(code::PROTOCOL_ERROR));
    assert_eq!(report.sent_to_backend, Some(code::GOING_AWAY));
}

/// The same from the backend, with no ping in flight: the client hears 1011 (its
/// gateway's upstream failed) and the backend 1002.
#[tokio::test(start_paused = true)]
async fn a_backend_length_past_2_63_is_a_1011_to_the_client() {
    let (mut client, mut backend, relay) =
        relay_with(RelayConfig::closing_within(Duration::from_secs(5)));
    let mut bad = vec![0x81, 0x02, b'o', b'k', 0x82, 127, 0x80];
    bad.extend_from_slice(&[0; 7]);
    backend.write_all(&bad).await.unwrap();
    let mut to_client = Vec::new();
    client.read_to_end(&mut to_client).await.unwrap();
    assert_eq!(to_client[..4], [0x81, 0x02, b'o', b'k']);
    assert_eq!(close_code(&to_client[4..]), Some(code::BACKEND_GONE));
    let mut to_backend = Vec::new();
    backend.read_to_end(&mut to_backend).await.unwrap();
    assert_eq!(close_code(&to_backend), Some(code::PROTOCOL_ERROR));
    let report = relay.await.unwrap();
    assert_eq!(report.reason, CloseReason::BackendProtocolError);
}
