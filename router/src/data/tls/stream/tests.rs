//! The stream against a real rustls client on loopback: bytes round trip whole, both
//! ways, in any read size; nothing is held while idle; errors are errors.

use super::send::{sealed_len, MAX_WRITE};
use super::*;
use crate::data::tls::config::{DevCert, TlsOptions};
use crate::data::tls::test_io::read_n;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// A real handshake on loopback: (server stream, client stream).
async fn pair(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
    let cert = DevCert::generate(&["localhost"]).unwrap();
    let server = cert.server_config(&TlsOptions::default()).unwrap();
    let client =
        crate::data::tls::config::client_config(std::slice::from_ref(&cert.ca_der), versions)
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    };
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(server, tcp, HandshakeLimits::default(), &mut ())
            .await
            .unwrap()
    };
    tokio::time::timeout(WAIT, async { tokio::join!(accept, connect) })
        .await
        .expect("handshake in time")
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn idle_holds_nothing(s: &TlsStream) {
    assert_eq!(s.partial.capacity(), 0, "partial record kept");
    assert_eq!(s.plain.capacity(), 0, "plaintext kept");
    assert_eq!(s.out.capacity(), 0, "ciphertext kept");
}

/// A write the socket takes whole is encrypted in the thread's scratch and sent from
/// there: nothing is allocated for it. When the socket pushes back, only the
/// ciphertext it refused is kept (never more than one write's worth), and it follows
/// in order once the peer reads.
#[tokio::test]
async fn writes_hold_only_what_the_socket_refuses() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    let small = data(100, 3);
    server.write_all(&small).await.unwrap();
    idle_holds_nothing(&server);
    assert_eq!(read_n(&mut client, small.len()).await, small);

    // The client reads nothing until the socket buffers are full.
    let chunk = data(MAX_WRITE, 4);
    let mut written = 0usize;
    let blocked = std::future::poll_fn(|cx| loop {
        match Pin::new(&mut server).poll_write(cx, &chunk) {
            Poll::Ready(Ok(n)) => {
                assert_eq!(n, chunk.len());
                written += n;
                assert!(written < 64 << 20, "the socket never pushed back");
            }
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => return Poll::Ready(()),
        }
    });
    tokio::time::timeout(WAIT, blocked)
        .await
        .expect("pushback in time");
    let held = server.unsent();
    assert!(held > 0, "pushed back with nothing held");
    assert!(held <= sealed_len(MAX_WRITE), "held {held} bytes");

    let read_all = async {
        let mut got = vec![0u8; written];
        client.read_exact(&mut got).await.unwrap();
        got
    };
    let (flushed, got) =
        tokio::time::timeout(WAIT, async { tokio::join!(server.flush(), read_all) })
            .await
            .expect("drained in time");
    flushed.unwrap();
    assert!(
        got.chunks(chunk.len()).all(|c| c == chunk),
        "bytes out of order"
    );
    idle_holds_nothing(&server);
}

/// Both TLS versions; 1 byte to 200 KB each way, read through buffers from 7 bytes
/// (records split across reads) to 64 KiB; nothing is held once drained.
#[tokio::test]
async fn bytes_round_trip_whole_and_idle_holds_no_buffers() {
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let (mut server, mut client) = pair(versions).await;
        idle_holds_nothing(&server);
        for (n, read_size) in [
            (1, 64 << 10),
            (16 << 10, 7),
            ((16 << 10) + 1, 4096),
            (200_000, 64 << 10),
        ] {
            let up = data(n, 1);
            let down = data(n, 2);
            let work = async {
                let (w, r) = tokio::join!(client.write_all(&up), async {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; read_size];
                    while got.len() < n {
                        let k = server.read(&mut buf).await.unwrap();
                        assert!(k > 0, "early EOF");
                        got.extend_from_slice(&buf[..k]);
                    }
                    got
                });
                w.unwrap();
                client.flush().await.unwrap();
                assert!(r == up, "client → server bytes differ ({n})");
                let (w, r) = tokio::join!(
                    async {
                        server.write_all(&down).await?;
                        server.flush().await
                    },
                    async {
                        let mut got = vec![0u8; n];
                        client.read_exact(&mut got).await.map(|_| got)
                    }
                );
                w.unwrap();
                assert!(r.unwrap() == down, "server → client bytes differ ({n})");
            };
            tokio::time::timeout(WAIT, work).await.expect("in time");
            idle_holds_nothing(&server);
        }
    }
}

/// A client key update mid-stream, then close_notify both ways: the server reads a
/// clean EOF, and its shutdown reaches the client as close_notify.
#[tokio::test]
async fn key_update_then_clean_close_both_ways() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    let work = async {
        client.write_all(b"before").await.unwrap();
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"beforeafter");
        server.write_all(b"reply").await.unwrap();
        server.flush().await.unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0, "clean EOF");
        server.shutdown().await.unwrap();
        // tokio-rustls reports EOF without close_notify as an error: Ok is a clean close.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    };
    tokio::time::timeout(WAIT, work).await.expect("in time");
}

/// TCP closed without close_notify reads as UnexpectedEof, then EOF; garbage after
/// the handshake is an InvalidData error, not a panic or a hang.
#[tokio::test]
async fn truncation_and_garbage_are_errors() {
    let (mut server, client) = pair(&[&rustls::version::TLS13]).await;
    let (mut tcp, _) = client.into_inner();
    // FIN without close_notify (dropping the socket would send RST instead, since
    // the session tickets the server sent are unread).
    tcp.shutdown().await.unwrap();
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(WAIT, server.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);

    let (mut server, client) = pair(&[&rustls::version::TLS13]).await;
    let (mut tcp, _) = client.into_inner();
    // An application-data record whose ciphertext is nonsense.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend([0xAB; 0x20]);
    tcp.write_all(&record).await.unwrap();
    let err = tokio::time::timeout(WAIT, server.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

/// A client whose every TLS byte is a separate TCP write (the handshake included):
/// records and handshake messages arrive split anywhere, and all still add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_dribbled_one_byte_per_write() {
    use std::io::{Read, Write};
    let cert = DevCert::generate(&["localhost"]).unwrap();
    let server_config = cert.server_config(&TlsOptions::default()).unwrap();
    let client_config = Arc::new(
        crate::data::tls::config::client_config(
            std::slice::from_ref(&cert.ca_der),
            rustls::DEFAULT_VERSIONS,
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let message: Vec<u8> = data(40_000, 9);
    let sent = message.clone();
    // A blocking rustls client on its own thread, writing ciphertext byte by byte.
    let client = std::thread::spawn(move || {
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(client_config, name).unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let dribble = |conn: &mut rustls::ClientConnection, tcp: &mut std::net::TcpStream| {
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            for b in out {
                tcp.write_all(&[b]).unwrap();
            }
        };
        while conn.is_handshaking() {
            dribble(&mut conn, &mut tcp);
            if conn.is_handshaking() {
                conn.read_tls(&mut tcp).unwrap();
                conn.process_new_packets().unwrap();
            }
        }
        conn.writer().write_all(&sent).unwrap();
        dribble(&mut conn, &mut tcp);
        // Wait for the server's one-byte acknowledgement, then close cleanly.
        let mut ack = [0u8; 1];
        loop {
            conn.read_tls(&mut tcp).unwrap();
            conn.process_new_packets().unwrap();
            if conn.reader().read(&mut ack).is_ok() {
                break;
            }
        }
        conn.send_close_notify();
        dribble(&mut conn, &mut tcp);
        ack[0]
    });
    let work = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut server = accept(server_config, tcp, HandshakeLimits::default(), &mut ())
            .await
            .unwrap();
        let mut got = vec![0u8; message.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == message, "bytes differ");
        server.write_all(b"k").await.unwrap();
        server.flush().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(
            server.read_to_end(&mut rest).await.unwrap(),
            0,
            "clean close"
        );
        idle_holds_nothing(&server);
    };
    tokio::time::timeout(WAIT, work).await.expect("in time");
    assert_eq!(client.join().unwrap(), b'k');
}

/// A client that is not speaking TLS at all fails the handshake cleanly.
#[tokio::test]
async fn not_tls_fails_the_handshake() {
    let cert = DevCert::generate(&["localhost"]).unwrap();
    let server = cert.server_config(&TlsOptions::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (stcp, _) = listener.accept().await.unwrap();
    let r = tokio::time::timeout(
        WAIT,
        accept(server, stcp, HandshakeLimits::default(), &mut ()),
    )
    .await
    .unwrap();
    assert!(r.is_err());
}

mod fuzz;

/// On an I/O thread that holds flushes, writes are sealed and kept until the flush, a
/// flush after the turn's first waits for the thread's turn to end and then sends them
/// together, and nothing is kept after; a write past the bound sends at once.
#[test]
fn held_writes_go_out_together_at_the_end_of_the_turn() {
    crate::data::tls::test_io::turning_runtime().block_on(async {
        let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
        crate::data::tls::flush::hold_on_this_thread();
        let parts = [data(100, 1), data(200, 2), data(300, 3)];
        // Another stream's flush is the turn's first (it would send at once), so this
        // stream's waits for the turn's end.
        std::future::poll_fn(|cx| {
            assert!(!crate::data::tls::flush::Held::default().wait(cx));
            std::task::Poll::Ready(())
        })
        .await;
        for p in &parts {
            server.write_all(p).await.unwrap();
        }
        // Sealed, counted as written, not sent: three records of ciphertext kept.
        assert_eq!(
            server.unsent(),
            parts.iter().map(|p| p.len() + 22).sum::<usize>()
        );
        tokio::time::timeout(WAIT, server.flush())
            .await
            .expect("flush in time")
            .unwrap();
        assert_eq!(server.unsent(), 0);
        idle_holds_nothing(&server);
        assert_eq!(
            read_n(&mut client, parts.iter().map(Vec::len).sum()).await,
            parts.concat()
        );
        // Past the bound, a write is not held: it goes to the socket at once.
        let big = data(MAX_WRITE, 5);
        server.write_all(&big).await.unwrap();
        assert!(
            server.unsent() < sealed_len(MAX_WRITE),
            "sent, at least in part"
        );
        server.write_all(&parts[0]).await.unwrap();
        tokio::time::timeout(WAIT, server.flush())
            .await
            .expect("flush in time")
            .unwrap();
        let got = read_n(&mut client, big.len() + parts[0].len()).await;
        assert_eq!(got, [big, parts[0].clone()].concat());
    });
}

/// A stream on a TCP socket hands a held flush's records to the thread
/// (`tls::outbox`): the flush is done in one poll, the records stay counted until the
/// turn ends, and then the thread sends them without the task. A later flush in the
/// same turn joins what waits; a shutdown sends it before the close.
#[test]
fn a_handed_over_flush_is_done_at_once_and_sent_by_the_thread() {
    use crate::data::tls::flush;
    use std::future::Future;
    crate::data::tls::test_io::turning_runtime().block_on(async {
        let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
        server.hand_over_held_flushes();
        flush::hold_on_this_thread();
        let parts = [data(100, 1), data(200, 2)];
        // Another stream's flush is the turn's first.
        assert!(!flush::hand_over_now());
        let mut polls = 0;
        for p in &parts {
            server.write_all(p).await.unwrap();
            let mut flushing = std::pin::pin!(server.flush());
            std::future::poll_fn(|cx| {
                polls += 1;
                assert!(flushing.as_mut().poll(cx).is_ready(), "handed over");
                std::task::Poll::Ready(())
            })
            .await;
        }
        assert_eq!(polls, 2, "each flush done in one poll");
        // Both records wait with the thread, in one parcel, nothing kept by the stream.
        let sealed: usize = parts.iter().map(|p| p.len() + 22).sum();
        assert_eq!(server.unsent(), sealed);
        assert!(server.out.is_empty());
        let nothing = {
            let mut buf = [0u8; 8];
            client.get_ref().0.try_read(&mut buf)
        };
        assert!(
            matches!(&nothing, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "nothing sent within the turn: {nothing:?}"
        );
        assert_eq!(
            read_n(&mut client, parts.iter().map(Vec::len).sum()).await,
            parts.concat()
        );
        assert_eq!(server.unsent(), 0, "sent by the thread");
        // Handed over, then shut down in the same turn: the record, then close_notify.
        let _ = flush::hand_over_now();
        server.write_all(&parts[0]).await.unwrap();
        server.flush().await.unwrap();
        assert!(server.handover.handed_over(), "handed over");
        server.shutdown().await.unwrap();
        idle_holds_nothing(&server);
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
            .await
            .expect("read in time")
            .unwrap();
        assert_eq!(rest, parts[0]);
    });
}
