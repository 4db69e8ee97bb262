use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// A current-thread runtime with tokio's clock paused (it jumps to the next timer when
/// every task waits), so the grain is tested without waiting on the real clock.
fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One poll, as a task that is then woken by nothing would make it.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn set() -> usize {
    with_table(|t| t.set).unwrap_or(0)
}

#[test]
fn a_deadline_fires_at_its_instant_or_within_a_grain_never_before() {
    paused().block_on(async {
        tokio::spawn(run_on_this_thread());
        let start = Instant::now();
        for ms in [1u64, 90, 150, 1_000, 60_000] {
            let at = start + Duration::from_millis(ms);
            Deadline::until(at).await;
            let now = Instant::now();
            assert!(now >= at, "{ms} ms: fired early");
            assert!(now <= at.max(start) + GRAIN * 2, "{ms} ms: fired late");
        }
        // Each freed its slot as it fired.
        assert_eq!(set(), 0);
    });
}

#[test]
fn many_deadlines_all_fire_and_leave_the_table_empty() {
    paused().block_on(async {
        tokio::spawn(run_on_this_thread());
        let start = Instant::now();
        let waits: Vec<_> = (0..500u64)
            .map(|i| {
                let at = start + Duration::from_millis(7 * i);
                tokio::spawn(async move {
                    Deadline::until(at).await;
                    Instant::now() >= at
                })
            })
            .collect();
        for w in waits {
            assert!(w.await.unwrap_or(false), "a deadline fired early");
        }
        assert_eq!(set(), 0);
    });
}

#[test]
fn a_dropped_deadline_frees_its_slot_and_a_reset_one_moves() {
    paused().block_on(async {
        tokio::spawn(run_on_this_thread());
        let start = Instant::now();
        let mut d = Deadline::until(start + Duration::from_secs(60));
        // Set by its first poll.
        assert!(poll_once(&mut d).is_pending());
        assert_eq!(set(), 1);
        drop(d);
        assert_eq!(set(), 0);
        let mut d = Deadline::until(start + Duration::from_secs(60));
        assert!(poll_once(&mut d).is_pending());
        d.reset(start + Duration::from_millis(300));
        d.await;
        let now = Instant::now();
        assert!(now >= start + Duration::from_millis(300));
        assert!(now <= start + Duration::from_millis(300) + GRAIN * 2);
        assert_eq!(set(), 0);
    });
}

#[test]
fn without_a_table_a_deadline_is_a_tokio_sleep() {
    paused().block_on(async {
        let at = Instant::now() + Duration::from_millis(250);
        let mut d = Deadline::until(at);
        assert!(poll_once(&mut d).is_pending());
        assert!(matches!(d.place, Place::Sleep(_)));
        d.await;
        assert!(Instant::now() >= at);
    });
}

#[test]
fn hyper_gets_the_same_deadlines() {
    use hyper::rt::Timer;
    paused().block_on(async {
        tokio::spawn(run_on_this_thread());
        let timer = CoarseTimer;
        let start = std::time::Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut sleep).is_pending());
        assert_eq!(set(), 1);
        // Reset in place: still the one slot.
        timer.reset(&mut sleep, start + Duration::from_millis(200));
        assert_eq!(set(), 1);
        sleep.await;
        assert_eq!(set(), 0);
    });
}
