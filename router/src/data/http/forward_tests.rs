//! The wait for a pod's answer: as long as the idle time from the request's body's last
//! frame, on a paused clock. The body is read as hyper's client reads it, by a task of
//! its own, and fed by the "client" below, one frame at a time.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use super::quiet_for;
use crate::data::http::body::{BodyOutcome, ClientBody};

const IDLE: Duration = Duration::from_secs(10);

/// A request body that started now, read by a task, and the sender of its frames (its
/// end when dropped).
fn body_read_by_a_task() -> (mpsc::Sender<Bytes>, std::sync::Arc<BodyOutcome>) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let (mut body, outcome) = ClientBody::new(
        StreamBody::new(Box::pin(frames)),
        1 << 20,
        Some(IDLE),
        Instant::now(),
    );
    tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
    (tx, outcome)
}

/// How long after `started` the wait for the answer gave up.
async fn quiet_after(started: Instant, outcome: &BodyOutcome) -> Duration {
    quiet_for(Some(IDLE), outcome).await;
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_body_came_with_it_waits_the_idle_time() {
    let started = Instant::now();
    let (tx, outcome) = body_read_by_a_task();
    tx.send(Bytes::from_static(b"all of it"))
        .await
        .unwrap_or_else(|_| panic!("the body's reader is gone"));
    drop(tx);
    assert_eq!(quiet_after(started, &outcome).await, IDLE);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_coming_moves_the_wait_on() {
    let started = Instant::now();
    let (tx, outcome) = body_read_by_a_task();
    // A frame 6 s in, then the client goes quiet with the body unfinished.
    tokio::spawn(async move {
        sleep(Duration::from_secs(6)).await;
        let _ = tx.send(Bytes::from_static(b"more")).await;
        sleep(Duration::from_secs(3600)).await;
    });
    assert_eq!(
        quiet_after(started, &outcome).await,
        Duration::from_secs(6) + IDLE
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_gives_the_pod_the_idle_time_from_its_last_frame() {
    let started = Instant::now();
    let (tx, outcome) = body_read_by_a_task();
    // Frames 2 s and 11 s in (the body waits between them), then its end at once.
    tokio::spawn(async move {
        for at in [2, 9] {
            sleep(Duration::from_secs(at)).await;
            let _ = tx.send(Bytes::from_static(b"chunk")).await;
        }
    });
    assert_eq!(
        quiet_after(started, &outcome).await,
        Duration::from_secs(11) + IDLE
    );
    assert!(outcome.ended());
}
