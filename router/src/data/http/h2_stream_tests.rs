//! An HTTP/2 stream read by the relay: every frame already received in one read, and the
//! stream's end or failure after them, never instead of them.

use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream};
use http::{Request, Response};
use tokio::io::{AsyncReadExt, DuplexStream};

use super::H2Stream;

/// A client stream with its request sent, and the server's end of it as an `H2Stream`
/// (both connections driven by tasks of their own).
async fn stream() -> (h2::SendStream<Bytes>, H2Stream) {
    let (c, s) = tokio::io::duplex(256 << 10);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake::<DuplexStream>(s)
            .await
            .unwrap_or_else(|e| panic!("server handshake: {e}"));
        let (req, mut respond) = match conn.accept().await {
            Some(Ok(r)) => r,
            other => panic!("no request: {other:?}"),
        };
        let send = respond
            .send_response(Response::new(()), false)
            .unwrap_or_else(|e| panic!("answer: {e}"));
        // The connection keeps being driven (frames in, WINDOW_UPDATEs out).
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        (send, req.into_body())
    });
    let (client, conn) = h2::client::handshake(c)
        .await
        .unwrap_or_else(|e| panic!("client handshake: {e}"));
    tokio::spawn(conn);
    let mut client = client
        .ready()
        .await
        .unwrap_or_else(|e| panic!("client ready: {e}"));
    let req = Request::post("https://router.test/ws/t")
        .body(())
        .unwrap_or_else(|e| panic!("{e}"));
    let (_answer, send) = client
        .send_request(req, false)
        .unwrap_or_else(|e| panic!("request: {e}"));
    let (server_send, recv) = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap_or_else(|_| panic!("the server never saw the request"))
        .unwrap_or_else(|e| panic!("server task: {e}"));
    (send, H2Stream::new(server_send, recv))
}

/// Waits (bounded) until the server's stream holds `n` bytes received and not read.
async fn until_received(recv: &mut RecvStream, n: usize) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while recv.flow_control().used_capacity() < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{n} bytes never arrived");
}

/// One read, bounded: a read the test expects never waits for ever.
async fn read(stream: &mut H2Stream, buf: &mut [u8]) -> std::io::Result<usize> {
    tokio::time::timeout(Duration::from_secs(10), stream.read(buf))
        .await
        .unwrap_or_else(|_| panic!("the read never completed"))
}

fn send_frames(send: &mut h2::SendStream<Bytes>, frames: &[&'static [u8]], end: bool) {
    for (i, f) in frames.iter().enumerate() {
        let last = end && i + 1 == frames.len();
        send.send_data(Bytes::from_static(f), last)
            .unwrap_or_else(|e| panic!("send: {e}"));
    }
}

#[tokio::test]
async fn one_read_takes_every_frame_already_received() {
    let (mut send, mut stream) = stream().await;
    send_frames(&mut send, &[b"first ", b"second ", b"third"], false);
    until_received(&mut stream.recv, 18).await;
    let mut buf = [0u8; 64];
    let n = read(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&buf[..n], b"first second third", "three frames, one read");
}

#[tokio::test]
async fn a_read_stops_at_the_readers_buffer_and_keeps_the_rest() {
    let (mut send, mut stream) = stream().await;
    send_frames(&mut send, &[b"abcdef", b"ghij"], false);
    until_received(&mut stream.recv, 10).await;
    let mut buf = [0u8; 4];
    let mut got = Vec::new();
    while got.len() < 10 {
        let n = read(&mut stream, &mut buf)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "no end yet");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"abcdefghij");
}

#[tokio::test]
async fn the_end_of_the_stream_comes_after_the_frames_before_it() {
    let (mut send, mut stream) = stream().await;
    send_frames(&mut send, &[b"last ", b"words"], true);
    until_received(&mut stream.recv, 10).await;
    let mut buf = [0u8; 64];
    let n = read(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&buf[..n], b"last words");
    let n = read(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 0, "then the end, as an end of input");
}

#[tokio::test]
async fn a_reset_after_frames_fails_the_read_after_them() {
    let (mut send, mut stream) = stream().await;
    send_frames(&mut send, &[b"partial ", b"message"], false);
    until_received(&mut stream.recv, 15).await;
    send.send_reset(Reason::PROTOCOL_ERROR);
    // The reset is seen once the server's connection has read it: until then a read
    // returns the frames, after it the frames and then the error.
    let mut buf = [0u8; 64];
    let n = read(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&buf[..n], b"partial message", "the frames first");
    let e = read(&mut stream, &mut buf).await.err();
    assert_eq!(
        e.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionReset),
        "then the failure"
    );
}

#[tokio::test]
async fn a_cancel_after_frames_is_an_end_after_them() {
    let (mut send, mut stream) = stream().await;
    send_frames(&mut send, &[b"bye"], false);
    until_received(&mut stream.recv, 3).await;
    send.send_reset(Reason::CANCEL);
    let mut buf = [0u8; 64];
    let n = read(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&buf[..n], b"bye");
    let n = read(&mut stream, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("a cancel is an end, not an error: {e}"));
    assert_eq!(n, 0);
}

#[tokio::test]
async fn an_empty_frame_that_ends_the_stream_is_an_end_and_nothing_kept() {
    let (mut send, mut stream) = stream().await;
    send_frames(&mut send, &[b"done"], false);
    send.send_data(Bytes::new(), true)
        .unwrap_or_else(|e| panic!("send: {e}"));
    until_received(&mut stream.recv, 4).await;
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    loop {
        let n = read(&mut stream, &mut buf)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"done");
    // An empty frame kept would still hold the buffer it was cut from.
    assert_eq!(
        stream.unread.as_ptr(),
        Bytes::new().as_ptr(),
        "nothing kept"
    );
}
