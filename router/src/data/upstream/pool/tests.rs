//! The pool against a real HTTP/1.1 backend on loopback: reuse, bounds, the idle
//! timeout, retain, backends that close, and request bodies streamed through.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HOST;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::test_backend::{within, Backend};
use super::*;
use crate::data::tls::test_io::{counting, Count};

fn pool(config: PoolConfig) -> (Pool, PoolMetrics) {
    let metrics = PoolMetrics::default();
    (Pool::new(config, metrics.clone(), None), metrics)
}

fn request(path: &str, body: ReqBody) -> Request<ReqBody> {
    Request::post(path)
        .header(HOST, "backend")
        .body(body)
        .expect("a request")
}

fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

async fn checkout(pool: &Pool, addr: SocketAddr) -> Pooled {
    within(pool.checkout(addr)).await.expect("a connection")
}

/// One request: which of the backend's connections answered, and whether it was reused.
async fn get(pool: &Pool, addr: SocketAddr) -> (String, bool) {
    let pooled = checkout(pool, addr).await;
    let reused = pooled.is_reused();
    let response = within(pooled.send(request("/", empty())))
        .await
        .expect("a response");
    let body = within(response.into_body().collect())
        .await
        .expect("the body")
        .to_bytes();
    (String::from_utf8_lossy(&body).into_owned(), reused)
}

/// Moves the clock on by `by` without waiting: the sockets keep real time meanwhile.
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn an_idle_connection_is_reused() {
    let backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), false));
    assert_eq!(m.idle.get(), 1);
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), true));
    assert_eq!((m.opened.get(), m.reused.get(), m.idle.get()), (1, 1, 1));
}

#[tokio::test]
async fn a_second_checkout_while_the_first_is_out_dials_another() {
    let backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    let first = checkout(&pool, backend.addr).await;
    let second = checkout(&pool, backend.addr).await;
    assert!(!first.is_reused() && !second.is_reused());
    assert_eq!((m.opened.get(), m.idle.get()), (2, 0));
    drop((first, second));
    assert_eq!(m.idle.get(), 2);
}

#[tokio::test]
async fn a_guard_dropped_unused_gives_its_connection_back() {
    let backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    drop(checkout(&pool, backend.addr).await);
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), true));
    assert_eq!(m.opened.get(), 1);
}

#[tokio::test]
async fn idle_connections_per_pod_are_bounded() {
    let mut backend = Backend::start().await;
    let config = PoolConfig {
        max_idle_per_pod: 2,
        ..PoolConfig::default()
    };
    let (pool, m) = pool(config);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(checkout(&pool, backend.addr).await);
    }
    backend.wait_live(3).await;
    drop(out);
    assert_eq!((m.opened.get(), m.idle.get()), (3, 2));
    // The third, given back past the bound, is closed.
    backend.wait_live(2).await;
}

#[tokio::test]
async fn an_idle_connection_past_the_idle_timeout_is_closed_at_checkout() {
    let mut backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), false));
    skip(Duration::from_secs(89)).await;
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), true));
    skip(Duration::from_secs(90)).await;
    assert_eq!(get(&pool, backend.addr).await, ("2".into(), false));
    assert_eq!((m.closed_idle.get(), m.idle.get()), (1, 1));
    backend.wait_live(1).await;
}

#[tokio::test]
async fn a_sweep_closes_idle_connections_past_the_timeout() {
    let (mut old, mut new) = (Backend::start().await, Backend::start().await);
    let (pool, m) = pool(PoolConfig::default());
    get(&pool, old.addr).await;
    skip(Duration::from_secs(60)).await;
    get(&pool, new.addr).await;
    skip(Duration::from_secs(31)).await;
    assert_eq!(pool.sweep(), 1);
    assert_eq!((m.closed_idle.get(), m.idle.get()), (1, 1));
    old.wait_live(0).await;
    new.wait_live(1).await;
    assert_eq!(get(&pool, new.addr).await, ("1".into(), true));
}

#[tokio::test]
async fn a_connection_carries_at_most_max_requests() {
    let backend = Backend::start().await;
    let config = PoolConfig {
        max_requests_per_conn: 2,
        ..PoolConfig::default()
    };
    let (pool, m) = pool(config);
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), false));
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), true));
    assert_eq!(m.idle.get(), 0);
    assert_eq!(get(&pool, backend.addr).await, ("2".into(), false));
    assert_eq!(m.opened.get(), 2);
}

#[tokio::test]
async fn retain_closes_the_idle_connections_of_pods_left_out() {
    let (mut gone, mut kept) = (Backend::start().await, Backend::start().await);
    let (pool, m) = pool(PoolConfig::default());
    get(&pool, gone.addr).await;
    get(&pool, kept.addr).await;
    assert_eq!(pool.retain(|addr| *addr == kept.addr), 1);
    assert_eq!((m.closed_idle.get(), m.idle.get()), (1, 1));
    gone.wait_live(0).await;
    kept.wait_live(1).await;
    assert_eq!(get(&pool, kept.addr).await, ("1".into(), true));
}

#[tokio::test]
async fn a_connection_its_backend_closed_is_not_handed_out() {
    let mut backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    get(&pool, backend.addr).await;
    backend.drop_connections();
    backend.wait_live(0).await;
    // Until this side has read the backend's FIN, the connection looks ready.
    within(async {
        while pool.idle_closed(backend.addr) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(get(&pool, backend.addr).await, ("2".into(), false));
    assert_eq!((m.closed_idle.get(), m.idle.get()), (1, 1));
}

#[tokio::test]
async fn a_request_on_a_connection_closed_meanwhile_comes_back_unsent() {
    let mut backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    let pooled = checkout(&pool, backend.addr).await;
    // Accepted (with the backend's current kill switch) before the switch is pulled.
    backend.wait_live(1).await;
    backend.drop_connections();
    backend.wait_live(0).await;
    within(async {
        while !pooled.is_closed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let err = within(pooled.send(request("/again", empty())))
        .await
        .err()
        .expect("no answer");
    let unsent = err.unsent.expect("the request, to send again");
    assert_eq!(unsent.uri(), "/again");
    // The connection is not given back.
    assert_eq!(m.idle.get(), 0);
    assert_eq!(get(&pool, backend.addr).await, ("2".into(), false));
}

#[tokio::test]
async fn a_request_body_streams_through_a_pooled_connection() {
    let mut backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    get(&pool, backend.addr).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let req = request(
        "/",
        Chunks(rx).map_err(|never| match never {}).boxed_unsync(),
    );
    let (p, addr) = (pool.clone(), backend.addr);
    // Spawned: the checkout's and the exchange's futures are `Send`.
    let exchange = tokio::spawn(async move {
        let pooled = p.checkout(addr).await.expect("a connection");
        assert!(pooled.is_reused());
        let response = pooled.send(req).await.expect("a response");
        response.into_body().collect().await.expect("the body")
    });
    for chunk in ["one", "two", "three"] {
        tx.send(Bytes::from(chunk)).expect("the body is read");
        let seen = within(backend.chunks.recv()).await.expect("a chunk");
        assert_eq!(
            seen, chunk,
            "each chunk reaches the backend before the next is sent"
        );
    }
    drop(tx);
    let body = within(exchange).await.expect("the exchange").to_bytes();
    assert_eq!(body, "1");
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), true));
    assert_eq!(m.opened.get(), 1);
}

#[tokio::test]
async fn a_response_body_dropped_before_its_end_closes_its_connection() {
    let mut backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    let pooled = checkout(&pool, backend.addr).await;
    let response = within(pooled.send(request("/stream", empty())))
        .await
        .expect("a response");
    let mut body = response.into_body();
    let first = within(body.frame()).await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "first");
    drop(body);
    assert_eq!(m.idle.get(), 0);
    backend.wait_live(0).await;
    assert_eq!(get(&pool, backend.addr).await, ("2".into(), false));
}

#[tokio::test]
async fn each_thread_has_its_own_idle_connections() {
    let backend = Backend::start().await;
    let (pool, m) = pool(PoolConfig::default());
    get(&pool, backend.addr).await;
    let (p, addr) = (pool.clone(), backend.addr);
    // Another I/O thread: its own event loop, its own idle set (which ends with it).
    let other = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(get(&p, addr))
    });
    let seen = within(tokio::task::spawn_blocking(move || other.join()))
        .await
        .expect("joined")
        .expect("the thread's request");
    assert_eq!(seen, ("2".into(), false));
    assert_eq!(
        (m.opened.get(), m.idle.get(), m.closed_idle.get()),
        (2, 1, 1)
    );
    assert_eq!(get(&pool, backend.addr).await, ("1".into(), true));
}

#[tokio::test]
async fn a_backend_that_refuses_is_a_connect_error() {
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let (pool, m) = pool(PoolConfig::default());
    let err = within(pool.checkout(addr)).await.err().expect("refused");
    assert!(matches!(err, PoolError::Connect { .. }), "{err:?}");
    assert_eq!(m.opened.get(), 0);
}

/// A request body sent chunk by chunk, ending when its sender is dropped.
struct Chunks(mpsc::UnboundedReceiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// hyper 1.12's body channel woke its sender's task as each chunk was taken, even once
/// the sender was gone: a response read whole with its head then polled its pod
/// connection's task once more for nothing, and a POST's body its client's task. The
/// hyper the router builds with (`vendor/hyper`, see its `PATCHED.md`) wakes a sender
/// only while it is there. This drives hyper's side of a connection by hand, with a
/// waker that counts, as the connection's task would be driven. One thread: nothing
/// (the backend, the I/O driver) runs between the count's two reads.
#[tokio::test(flavor = "current_thread")]
async fn a_body_whose_sender_is_gone_wakes_no_one_as_it_is_taken() {
    let backend = Backend::start().await;
    let tcp = TcpStream::connect(backend.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, ReqBody>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    let mut conn = std::pin::pin!(conn);
    let (counting, waker) = counting();
    let mut answer = std::pin::pin!(sender.send_request(request("/", empty())));
    let mut response = None;
    drive_until(conn.as_mut(), &counting, &waker, |cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            response = Some(r.expect("a response"));
        }
        response.is_some()
    })
    .await;
    let mut body = response.expect("a response").into_body();
    // Until hyper's side is idle again: the body read whole, its sender dropped.
    drive_until(conn.as_mut(), &counting, &waker, |_| sender.is_ready()).await;
    let before = counting.woken();
    let mut no_waker = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut no_waker) else {
        panic!("the body, read whole");
    };
    assert_eq!(frame.into_data().expect("data"), "1");
    assert_eq!(counting.woken(), before, "no task woken by taking the body");
}

/// Drives hyper's side of a connection, its wakes counted (and passed on to this task),
/// until `done`.
async fn drive_until<C: Future>(
    mut conn: Pin<&mut C>,
    counting: &Count,
    waker: &std::task::Waker,
    mut done: impl FnMut(&mut Context<'_>) -> bool,
) {
    within(std::future::poll_fn(|cx| {
        counting.pass_on_to(cx.waker());
        let _ = conn.as_mut().poll(&mut Context::from_waker(waker));
        if done(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }))
    .await;
}
