//! The wait for a pod's answer: as long as the idle time from the request's body's last
//! frame, on a paused clock. The body is read as hyper's client reads it, by a task of
//! its own, and fed by the "client" below, one frame at a time.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use super::quiet_for;
use crate::data::http::body::{BodyOutcome, ClientBody};

const IDLE: Duration = Duration::from_secs(10);

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// A request body that started now, its sender of frames (its end when dropped), and
/// its reader, which reads a frame every `pace` once `delay` has passed (the pod's
/// connection being made, a pod that reads slowly).
fn body_read_by_a_task(delay: Duration, pace: Duration) -> (mpsc::Sender<Bytes>, Arc<BodyOutcome>) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let frames: Frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok(Frame::data(b)), rx))
    }));
    let (mut body, outcome) =
        ClientBody::new(StreamBody::new(frames), 1 << 20, Some(IDLE), Instant::now());
    tokio::spawn(async move {
        sleep(delay).await;
        while let Some(Ok(_)) = body.frame().await {
            sleep(pace).await;
        }
    });
    (tx, outcome)
}

/// How long after `started` the wait for the answer gave up.
async fn quiet_after(started: Instant, outcome: &BodyOutcome) -> Duration {
    quiet_for(Some(IDLE), outcome).await;
    started.elapsed()
}

async fn send(tx: &mpsc::Sender<Bytes>, frame: &'static [u8]) {
    tx.send(Bytes::from_static(frame))
        .await
        .unwrap_or_else(|_| panic!("the body's reader is gone"));
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_body_came_with_it_waits_the_idle_time() {
    let started = Instant::now();
    let (tx, outcome) = body_read_by_a_task(Duration::ZERO, Duration::ZERO);
    send(&tx, b"all of it").await;
    drop(tx);
    assert_eq!(quiet_after(started, &outcome).await, IDLE);
}

#[tokio::test(start_paused = true)]
async fn the_wait_counts_from_when_the_body_went_not_from_the_request() {
    let started = Instant::now();
    // The body is all there at once, but goes to the pod only 3 s in (its connection
    // took that long): the pod has the idle time from then.
    let (tx, outcome) = body_read_by_a_task(Duration::from_secs(3), Duration::ZERO);
    send(&tx, b"all of it").await;
    drop(tx);
    assert_eq!(
        quiet_after(started, &outcome).await,
        Duration::from_secs(3) + IDLE
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_still_coming_moves_the_wait_on() {
    let started = Instant::now();
    let (tx, outcome) = body_read_by_a_task(Duration::ZERO, Duration::ZERO);
    // A frame 6 s in, then the client goes quiet with the body unfinished.
    tokio::spawn(async move {
        sleep(Duration::from_secs(6)).await;
        send(&tx, b"more").await;
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
    let (tx, outcome) = body_read_by_a_task(Duration::ZERO, Duration::ZERO);
    // Frames 2 s and 11 s in (the body waits between them), then its end at once.
    tokio::spawn(async move {
        for at in [2, 9] {
            sleep(Duration::from_secs(at)).await;
            send(&tx, b"chunk").await;
        }
    });
    assert_eq!(
        quiet_after(started, &outcome).await,
        Duration::from_secs(11) + IDLE
    );
    assert!(outcome.ended());
}

#[tokio::test(start_paused = true)]
async fn an_upload_its_pod_reads_slowly_is_never_taken_for_a_quiet_one() {
    let started = Instant::now();
    // The pod takes a frame every 4 s and one is always ready (the sender waits on
    // the full channel), so the body never waits: 8 frames, 32 s, longer than the
    // idle time three times over.
    let (tx, outcome) = body_read_by_a_task(Duration::ZERO, Duration::from_secs(4));
    tokio::spawn(async move {
        for _ in 0..8 {
            send(&tx, b"chunk").await;
        }
    });
    let quiet = quiet_after(started, &outcome).await;
    assert!(
        outcome.ended(),
        "cut after {quiet:?}, the body still coming"
    );
    // The body ended 28 s in (its last frame read then, its end seen 4 s later).
    assert!(quiet >= Duration::from_secs(28) + IDLE, "{quiet:?}");
}
