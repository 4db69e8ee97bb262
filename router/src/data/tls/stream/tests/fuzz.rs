//! Property tests: a real rustls client's bytes, split anywhere, mutated or cut,
//! fed to the server stream over an in-memory pipe. Invariants: no panic, no
//! hang, nothing held beyond its bound, plaintext exactly as sent, and every
//! failure an error.

use super::*;
use proptest::prelude::*;
use rustls::ServerConfig;
use std::io::{Read, Write};
use tokio::io::{duplex, DuplexStream};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(200, |n| (n / 8).max(16))
}

struct Fixture {
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let cert = DevCert::generate(&["localhost"]).unwrap();
        Fixture {
            server: cert.server_config(&TlsOptions::default()).unwrap(),
            client: cert.client_config(),
        }
    })
}

/// Writes `bytes` in pieces whose sizes cycle through `splits`.
async fn send_split(io: &mut DuplexStream, bytes: &[u8], splits: &[usize]) {
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = splits
            .get(i % splits.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = (at + n).min(bytes.len());
        if io.write_all(&bytes[at..end]).await.is_err() {
            return;
        }
        at = end;
        i += 1;
    }
}

/// What the server side saw: its handshake result, the plaintext, how it ended,
/// and the most it ever held.
struct ServerSide {
    handshake: io::Result<()>,
    plaintext: Vec<u8>,
    end: io::Result<()>,
    max_held: usize,
}

async fn serve(io: DuplexStream) -> ServerSide {
    let limits = HandshakeLimits::default();
    let mut stream = match accept(fixture().server.clone(), io, limits, &mut ()).await {
        Ok(s) => s,
        Err(e) => {
            return ServerSide {
                handshake: Err(e),
                plaintext: Vec::new(),
                end: Ok(()),
                max_held: 0,
            }
        }
    };
    let mut plaintext = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut max_held = 0;
    let end = loop {
        let held = stream.partial.len() + stream.plain.len() + stream.out.len();
        max_held = max_held.max(held);
        match stream.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => plaintext.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    ServerSide {
        handshake: Ok(()),
        plaintext,
        end,
        max_held,
    }
}

/// The client's whole conversation: handshake (reading the server's flights),
/// then `app` and close_notify, all written in `splits`-sized pieces, each
/// byte after the handshake passed through `mangle`.
async fn client(mut io: DuplexStream, app: &[u8], splits: &[usize], mangle: impl Fn(&mut Vec<u8>)) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(fixture().client.clone(), name).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while conn.is_handshaking() {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        send_split(&mut io, &out, splits).await;
        if !conn.is_handshaking() {
            break;
        }
        let n = match io.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        if conn.read_tls(&mut &buf[..n]).is_err() || conn.process_new_packets().is_err() {
            return;
        }
    }
    // The client's last handshake flight (its Finished) goes out whole.
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    send_split(&mut io, &out, splits).await;
    conn.writer().write_all(app).unwrap();
    conn.send_close_notify();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    mangle(&mut out);
    send_split(&mut io, &out, splits).await;
    let _ = io.shutdown().await;
    // Take whatever the server says (tickets, an alert) until it hangs up.
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let _ = conn.read_tls(&mut &buf[..n]);
        let _ = conn.process_new_packets();
        let _ = conn.reader().read(&mut buf);
    }
}

fn run(
    app: Vec<u8>,
    splits: Vec<usize>,
    mangle: impl Fn(&mut Vec<u8>) + Send + 'static,
) -> ServerSide {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (c, s) = duplex(1 << 16);
        let server = tokio::spawn(serve(s));
        let client = tokio::spawn(async move { client(c, &app, &splits, mangle).await });
        let (server, client) = tokio::time::timeout(WAIT, async { tokio::join!(server, client) })
            .await
            .expect("no hang");
        client.unwrap();
        server.unwrap()
    })
}

/// The most the server may hold between reads (a reader taking 4 KiB at a
/// time): the start of a record, a record's plaintext not taken yet, and what it
/// has queued to send (session tickets).
const HELD_BOUND: usize = 3 * MAX_RECORD;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Split anywhere, the bytes arrive whole and in order, and close_notify is
    /// a clean EOF.
    #[test]
    fn any_split_delivers_the_bytes_exactly(
        app in proptest::collection::vec(any::<u8>(), 0..40_000),
        splits in proptest::collection::vec(1usize..20_000, 1..8),
    ) {
        let sent = app.clone();
        let side = run(app, splits, |_| {});
        prop_assert!(side.handshake.is_ok(), "{:?}", side.handshake);
        prop_assert!(side.end.is_ok(), "{:?}", side.end);
        prop_assert!(side.plaintext == sent, "plaintext differs");
        prop_assert!(side.max_held <= HELD_BOUND, "held {}", side.max_held);
    }

    /// One byte changed after the handshake: an error (the record fails its
    /// MAC, or its header is wrong), or nothing at all where TLS ignores the byte
    /// (a TLS 1.3 record's legacy version), never wrong plaintext, a panic or a
    /// hang.
    #[test]
    fn a_changed_byte_is_an_error_not_bad_data(
        app in proptest::collection::vec(any::<u8>(), 1..20_000),
        splits in proptest::collection::vec(1usize..5_000, 1..6),
        at in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let sent = app.clone();
        let side = run(app, splits, move |out| {
            let i = at.index(out.len());
            out[i] ^= flip;
        });
        // The bad record may arrive with the client's Finished, and then fails
        // the handshake itself. Without an error, every byte must be right.
        prop_assert!(
            side.handshake.is_err() || side.end.is_err() || side.plaintext == sent,
            "a changed byte changed the plaintext unnoticed"
        );
        prop_assert!(sent.starts_with(&side.plaintext), "plaintext differs");
        prop_assert!(side.max_held <= HELD_BOUND, "held {}", side.max_held);
    }

    /// Cut anywhere after the handshake: what arrived is a prefix of what was
    /// sent, and the end is an error unless close_notify made it.
    #[test]
    fn a_cut_stream_is_a_prefix_then_an_error(
        app in proptest::collection::vec(any::<u8>(), 1..20_000),
        splits in proptest::collection::vec(1usize..5_000, 1..6),
        keep in any::<proptest::sample::Index>(),
    ) {
        let sent = app.clone();
        let side = run(app, splits, move |out| {
            let n = keep.index(out.len());
            out.truncate(n);
        });
        prop_assert!(side.handshake.is_ok());
        prop_assert!(sent.starts_with(&side.plaintext), "plaintext differs");
        if side.end.is_ok() {
            prop_assert!(side.plaintext == sent, "a clean end before all the data");
        }
    }

    /// Anything at all in place of a ClientHello, split anywhere, then EOF: the
    /// handshake fails with an error, holding no more than its limit.
    #[test]
    fn garbage_handshakes_fail_cleanly(
        prefix in proptest::sample::select(vec![
            vec![],
            vec![22u8, 3, 1],
            vec![22u8, 3, 3, 0x40, 0x00, 1],
            vec![22u8, 3, 1, 0x00, 0x05, 1, 0xff, 0xff, 0xff],
            vec![23u8, 3, 3, 0xff, 0xff],
        ]),
        body in proptest::collection::vec(any::<u8>(), 0..40_000),
        splits in proptest::collection::vec(1usize..9_000, 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = rt.block_on(async move {
            let (mut c, s) = duplex(1 << 16);
            let limits = HandshakeLimits::default();
            let server = tokio::spawn(async move {
                let mut meter = MaxMeter(0);
                let r = accept(fixture().server.clone(), s, limits, &mut meter).await;
                (r.map(|_| ()), meter.0)
            });
            let mut wire = prefix;
            wire.extend_from_slice(&body);
            send_split(&mut c, &wire, &splits).await;
            let _ = c.shutdown().await;
            let mut sink = vec![0u8; 4096];
            let drain = async { while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {} };
            tokio::time::timeout(WAIT, async { tokio::join!(server, drain).0 })
                .await
                .expect("no hang")
                .unwrap()
        });
        let (r, max) = result;
        prop_assert!(r.is_err(), "garbage completed a handshake");
        let limit = HandshakeLimits::default().max_client_hello + MAX_RECORD;
        prop_assert!(max <= limit, "held {max} > {limit}");
    }
}

/// The largest amount a handshake reported holding.
struct MaxMeter(usize);

impl Meter for MaxMeter {
    fn held(&mut self, bytes: usize) {
        self.0 = self.0.max(bytes);
    }
}
