use super::v1::V1_PREFIX;
use super::v2::{TCP4, TCP6, UNSPEC, V2_FIXED, V2_SIGNATURE};
use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn client_at(source: &str, destination: &str) -> Proxied {
    Proxied::Client {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

fn v2_declaring(version_command: u8, family: u8, declared: usize, rest: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([version_command, family]);
    h.extend(u16::try_from(declared).unwrap().to_be_bytes());
    h.extend(rest);
    h
}

fn v2(version_command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
    v2_declaring(version_command, family, rest.len(), rest)
}

/// A v2 PROXY header for a TCP connection, `tlvs` after the addresses.
fn v2_tcp(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for ip in [source.ip(), destination.ip()] {
        match ip {
            IpAddr::V4(ip) => block.extend(ip.octets()),
            IpAddr::V6(ip) => block.extend(ip.octets()),
        }
    }
    block.extend(source.port().to_be_bytes());
    block.extend(destination.port().to_be_bytes());
    block.extend(tlvs);
    v2(0x21, if source.is_ipv6() { TCP6 } else { TCP4 }, &block)
}

fn v1_tcp(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let protocol = if source.is_ipv6() { "TCP6" } else { "TCP4" };
    let (s, d) = (source, destination);
    format!(
        "PROXY {protocol} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into()
}

/// Each parses to its own length whatever follows, and each strict prefix of it asks
/// for more.
fn assert_parses(header: &[u8], proxied: Proxied) {
    let bytes = [header, b"\x16\x03\x01\r\n\r\n"].concat();
    let name = header.escape_ascii();
    assert_eq!(parse(&bytes), Ok(Some((header.len(), proxied))), "{name}");
    for end in 0..header.len() {
        assert_eq!(parse(&header[..end]), Ok(None), "{name} cut at {end}");
    }
}

#[test]
fn valid_v1_lines() {
    let max = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let longest_tcp6 = format!("PROXY TCP6 {max} {max} 65535 65535\r\n");
    let longest = format!("PROXY UNKNOWN {max} {max} 65535 65535\r\n");
    assert_eq!(longest.len(), V1_MAX);
    let max = format!("[{max}]:65535");
    let cases = [
        (
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            client_at("192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            client_at("0.0.0.0:0", "255.255.255.255:65535"),
        ),
        (
            "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
            client_at("[2001:db8::1]:1", "[::1]:65535"),
        ),
        (
            "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
            client_at("[::ffff:192.0.2.1]:1", "[::1]:2"),
        ),
        (&longest_tcp6, client_at(&max, &max)),
        ("PROXY UNKNOWN\r\n", Proxied::Local),
        (&longest, Proxied::Local),
        ("PROXY UNKNOWN \u{ff}\r junk\r\n", Proxied::Local),
    ];
    for (line, proxied) in cases {
        assert_parses(line.as_bytes(), proxied);
    }
}

#[test]
fn valid_v2_headers() {
    let (a4, b4) = (
        "192.0.2.1:56324".parse().unwrap(),
        "198.51.100.2:443".parse().unwrap(),
    );
    let (a6, b6) = (
        "[2001:db8::1]:1".parse().unwrap(),
        "[::1]:65535".parse().unwrap(),
    );
    let ipv4 = Proxied::Client {
        source: a4,
        destination: b4,
    };
    let ipv6 = Proxied::Client {
        source: a6,
        destination: b6,
    };
    let tlvs = [0x04, 0x00, 0x03, 0, 0, 0, 0x02, 0x00, 0x01, b'x'];
    let cases = [
        (v2(0x20, UNSPEC, &[]), Proxied::Local),
        // LOCAL ignores the family and whatever block it declares.
        (v2(0x20, TCP4, &[1, 2, 3]), Proxied::Local),
        (v2(0x20, 0x31, &[0; 40]), Proxied::Local),
        (v2(0x21, UNSPEC, &[9; 20]), Proxied::Local),
        (v2_tcp(a4, b4, &[]), ipv4),
        (v2_tcp(a6, b6, &[]), ipv6),
        (v2_tcp(a4, b4, &tlvs), ipv4),
        // A TLV claiming to run past the header: never read.
        (v2_tcp(a6, b6, &[0x20, 0xff, 0xff]), ipv6),
        (v2_tcp(a4, b4, &[0; MAX_HEADER - V2_FIXED - 12]), ipv4),
    ];
    for (header, proxied) in cases {
        assert_parses(&header, proxied);
    }
}

/// What HAProxy's `send-proxy-v2` puts before an IPv4 TCP connection (no
/// `proxy-v2-options`, so no TLV), spelled out from the spec.
#[test]
fn haproxy_send_proxy_v2_ipv4() {
    #[rustfmt::skip]
    let bytes = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, // version 2, PROXY
        0x11, // AF_INET, STREAM
        0x00, 0x0C, // 12 address bytes follow
        192, 168, 0, 1, // source 192.168.0.1
        192, 168, 0, 11, // destination 192.168.0.11
        0xDC, 0x04, // source port 56324
        0x01, 0xBB, // destination port 443
    ];
    let expected = client_at("192.168.0.1:56324", "192.168.0.11:443");
    assert_eq!(parse(&bytes), Ok(Some((28, expected))));
}

#[test]
fn refused_v1_lines() {
    use ProxyHeaderError::*;
    let no_crlf = format!("PROXY UNKNOWN {}", "x".repeat(V1_MAX));
    let crlf_too_late = format!("PROXY UNKNOWN {}\r\n", "x".repeat(92));
    let cases = [
        ("\x16\x03\x01\x02\x00", Signature), // a TLS ClientHello
        ("GET / HTTP/1.1\r\n", Signature),
        ("G", Signature), // one byte decides
        ("PROXZ TCP4", Signature),
        ("PROXY\r\n", Signature),
        ("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", Family),
        ("PROXY UNKNOWNX\r\n", Family),
        ("PROXY TCP4 ::1 ::2 1 2\r\n", Family),
        ("PROXY TCP6 ::1 1.2.3.4 1 2\r\n", Family),
        (&no_crlf, TooLong),
        (&crlf_too_late, TooLong),
        ("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax),
        ("PROXY \r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1Syntax), // bare LF
        ("PROXY UNKNOWN\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1Syntax),
        ("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax),
        ("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", V1Syntax),
        ("PROXY TCP6 [::1] ::1 1 2\r\n", V1Syntax),
        ("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2\r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", V1Syntax),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\u{e9}\r\n", V1Syntax),
    ];
    for (line, error) in cases {
        assert_eq!(parse(line.as_bytes()), Err(error), "{line:?}");
    }
}

#[test]
fn refused_v2_headers() {
    use ProxyHeaderError::*;
    let v4 = [0; 12];
    let cases = [
        (b"\r\n\r\n\0\r\nQUIX\n".to_vec(), Signature),
        (b"\r\nGET".to_vec(), Signature),
        // Version and command decide on the 13th byte, the family on the 14th.
        (v2(0x11, TCP4, &v4)[..13].to_vec(), Version),
        (v2(0x31, TCP4, &v4), Version),
        (v2(0x22, TCP4, &v4)[..13].to_vec(), Command),
        (v2(0x2F, TCP4, &v4), Command),
        (v2(0x21, 0x31, &[0; 216])[..14].to_vec(), Family), // AF_UNIX stream
        (v2(0x21, 0x32, &[0; 216]), Family),                // AF_UNIX datagram
        (v2(0x21, 0x12, &v4), Family),                      // UDP over IPv4
        (v2(0x21, 0x22, &[0; 36]), Family),                 // UDP over IPv6
        (v2(0x21, 0x01, &v4), Family),
        (v2(0x21, 0x41, &v4), Family),
        (v2(0x21, TCP4, &[0; 11]), Length),
        (v2_declaring(0x21, TCP6, 12, &[]), Length),
        (
            v2_declaring(0x21, TCP4, MAX_HEADER - V2_FIXED + 1, &v4),
            TooLong,
        ),
        (v2_declaring(0x20, UNSPEC, 0xFFFF, &[]), TooLong),
    ];
    for (header, error) in cases {
        assert_eq!(parse(&header), Err(error), "{}", header.escape_ascii());
    }
}

#[test]
fn labels() {
    use ProxyHeaderError::*;
    let all = [
        Signature, Version, Command, Family, Length, TooLong, V1Syntax,
    ];
    let labels = all.map(|e| e.as_str()).join(" ");
    assert_eq!(
        labels,
        "signature version command family length too_long v1_syntax"
    );
    assert_eq!(ReadError::Closed.as_str(), "truncated");
    assert_eq!(
        ReadError::Io(std::io::ErrorKind::Other.into()).as_str(),
        "io"
    );
    assert_eq!(ReadError::from(Family).as_str(), "family");
}

async fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.set_nodelay(true).unwrap();
    (client, server)
}

fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().build().unwrap()
}

/// Runs the socket test `test` on a thread of its own, so that a reader spinning
/// inside one poll (where no timeout can fire) fails the test instead of hanging it.
fn bounded<T: Send + 'static, F: Future<Output = T>>(
    test: impl FnOnce() -> F + Send + 'static,
) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(runtime().block_on(test())));
    let spun = "the test spun, hung, or panicked (see above)";
    finished.recv_timeout(WAIT * 2).expect(spun)
}

/// A sender that stalls inside a v1 line leaves the reader waiting, not spinning: it
/// is polled again only when bytes arrive, and finishes once the line does.
#[test]
fn a_stalled_v1_line_waits_without_spinning() {
    bounded(stall_then_finish).unwrap();
}

async fn stall_then_finish() -> Result<(), ReadError> {
    let (mut client, mut server) = connected().await;
    client.write_all(b"PROXY TCP4 192.0.2.1 19").await.unwrap();
    let (proxied, len) = {
        let polls = Cell::new(0);
        let mut reading = std::pin::pin!(read_header(&mut server));
        let mut counted = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            reading.as_mut().poll(cx)
        });
        let stalled = timeout(Duration::from_millis(200), &mut counted).await;
        assert!(stalled.is_err(), "finished without its CRLF: {stalled:?}");
        // The first poll, and one per arrival of the partial line at most.
        assert!(
            polls.get() <= 3,
            "polled {} times while stalled",
            polls.get()
        );
        let rest = b"8.51.100.2 56324 443\r\n\x16\x03\x01";
        client.write_all(rest).await.unwrap();
        timeout(WAIT, counted).await.unwrap()?
    };
    assert_eq!(proxied, client_at("192.0.2.1:56324", "198.51.100.2:443"));
    assert_eq!(len, 45);
    let mut after = [0; 3];
    timeout(WAIT, server.read_exact(&mut after))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&after, b"\x16\x03\x01");
    Ok(())
}

/// What the reader makes of `bytes` sent and then, if `close`, the end of stream.
async fn read_from(bytes: &[u8], close: bool) -> Result<(Proxied, usize), ReadError> {
    let (mut client, mut server) = connected().await;
    client.write_all(bytes).await.unwrap();
    if close {
        client.shutdown().await.unwrap();
    }
    timeout(WAIT, read_header(&mut server)).await.unwrap()
}

#[test]
fn reader_errors() {
    bounded(reader_errors_on_sockets);
}

async fn reader_errors_on_sockets() {
    let closed = read_from(b"PROXY TCP4 1.2.3.4", true).await.unwrap_err();
    assert!(matches!(closed, ReadError::Closed), "{closed:?}");
    let tls = read_from(b"\x16\x03\x01\x02\x00", false).await.unwrap_err();
    assert_eq!(tls.as_str(), "signature");
    let endless_line = [&b"PROXY "[..], &[b'x'; 500]].concat();
    let endless = read_from(&endless_line, false).await.unwrap_err();
    assert_eq!(endless.as_str(), "too_long");
    let huge = read_from(&v2_declaring(0x21, TCP4, 5000, &[0; 100]), false).await;
    assert_eq!(huge.unwrap_err().as_str(), "too_long");
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn arb_tcp() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 = any::<([u8; 4], [u8; 4])>().prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d)));
    let v6 = any::<([u8; 16], [u8; 16])>().prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d)));
    (prop_oneof![v4, v6], any::<(u16, u16)>())
        .prop_map(|((s, d), (sp, dp))| (SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
}

/// TLVs as a sender would put them: type, big-endian length, value.
fn arb_tlvs() -> impl Strategy<Value = Vec<u8>> {
    let tlv = (any::<u8>(), vec(any::<u8>(), 0..40));
    let big = (
        any::<u8>(),
        vec(any::<u8>(), 0..MAX_HEADER - V2_FIXED - 36 - 3),
    );
    prop_oneof![4 => vec(tlv, 0..8), 1 => big.prop_map(|t| vec![t])].prop_map(|tlvs| {
        let mut bytes = Vec::new();
        for (kind, value) in tlvs {
            bytes.push(kind);
            bytes.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
            bytes.extend(value);
        }
        bytes
    })
}

/// Any valid header, with what it says.
fn arb_header() -> impl Strategy<Value = (Vec<u8>, Proxied)> {
    let said = |(source, destination): (SocketAddr, SocketAddr)| Proxied::Client {
        source,
        destination,
    };
    let v1 = arb_tcp().prop_map(move |(s, d)| (v1_tcp(s, d), said((s, d))));
    // UNKNOWN's tail is anything but LF, up to the longest line.
    let unknown = vec(any::<u8>(), 0..=V1_MAX - 16).prop_map(|tail| {
        let mut line = b"PROXY UNKNOWN".to_vec();
        if !tail.is_empty() {
            line.push(b' ');
            line.extend(tail.iter().map(|&b| if b == b'\n' { b'.' } else { b }));
        }
        line.extend(b"\r\n");
        (line, Proxied::Local)
    });
    let proxy =
        (arb_tcp(), arb_tlvs()).prop_map(move |((s, d), tlvs)| (v2_tcp(s, d, &tlvs), said((s, d))));
    let local = (any::<u8>(), vec(any::<u8>(), 0..300))
        .prop_map(|(family, block)| (v2(0x20, family, &block), Proxied::Local));
    let unspec = vec(any::<u8>(), 0..300).prop_map(|b| (v2(0x21, UNSPEC, &b), Proxied::Local));
    prop_oneof![v1, unknown, proxy, local, unspec]
}

/// Bytes that get past the first checks often enough to reach the deeper ones.
fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    let tail = vec(any::<u8>(), 0..300);
    prop_oneof![
        tail.clone(),
        (0..5usize, tail.clone()).prop_map(|(p, t)| {
            let start: [&[u8]; 5] = [
                V1_PREFIX,
                b"PROXY TCP4 ",
                b"PROXY TCP6 ",
                b"PROXY UNKNOWN",
                V2_SIGNATURE,
            ];
            [start[p], &t].concat()
        }),
        "PROXY [ -~]{0,120}(\r\n)?".prop_map(String::into_bytes),
    ]
}

/// Sends `bytes` over loopback in chunks of `sizes` (then the rest), the reader
/// running between chunks; returns what it read and all the socket held after.
async fn send_in_chunks(bytes: Vec<u8>, sizes: Vec<usize>) -> (Proxied, usize, Vec<u8>) {
    let (mut client, mut server) = connected().await;
    let write = async {
        let mut left = &bytes[..];
        let mut sizes = sizes.iter().copied();
        while !left.is_empty() {
            let size = sizes.next().unwrap_or(left.len()).min(left.len());
            let (chunk, after) = left.split_at(size);
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
            left = after;
        }
        client.shutdown().await.unwrap();
    };
    let read = async {
        let (got, len) = read_header(&mut server).await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (got, len, rest)
    };
    tokio::join!(write, read).1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in arb_bytes()) {
        if let Ok(Some((len, proxied))) = parse(&bytes) {
            prop_assert!(len <= bytes.len());
            prop_assert_eq!(parse(&bytes[..len]), Ok(Some((len, proxied))));
            // What `read_header` relies on: no header is found in a part of one.
            for end in 0..len {
                prop_assert_eq!(parse(&bytes[..end]), Ok(None), "cut at {}", end);
            }
        }
    }

    #[test]
    fn valid_headers_parse_whole_and_not_before(
        (header, proxied) in arb_header(),
        trailing in vec(any::<u8>(), 0..64),
    ) {
        let bytes = [&header[..], &trailing].concat();
        prop_assert_eq!(parse(&bytes), Ok(Some((header.len(), proxied))));
        for end in 0..header.len() {
            prop_assert_eq!(parse(&bytes[..end]), Ok(None), "cut at {}", end);
        }
    }

    /// On a real socket, split anywhere: the reader returns the header and leaves
    /// every byte after it, in order.
    #[test]
    fn reader_takes_exactly_the_header(
        (header, proxied) in arb_header(),
        trailing in vec(any::<u8>(), 0..64),
        splits in vec(1..64usize, 0..10),
    ) {
        let bytes = [&header[..], &trailing].concat();
        let (got, len, rest) = bounded(move || send_in_chunks(bytes, splits));
        prop_assert_eq!(got, proxied);
        prop_assert_eq!(len, header.len());
        prop_assert_eq!(rest, trailing);
    }
}
