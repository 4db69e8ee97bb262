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

/// Runs `test` on a paused runtime whose thread keeps a table (its tick spawned and
/// polled once).
fn with_a_table<F: Future>(test: F) -> F::Output {
    paused().block_on(async {
        tokio::spawn(run_on_this_thread());
        tokio::task::yield_now().await;
        test.await
    })
}

/// One poll, as a task that is then woken by nothing would make it.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn set() -> usize {
    with_table(|t| t.set).unwrap_or(0)
}

/// The latest a deadline due at `at` may fire: a grain, and tokio's millisecond.
fn late_by(at: Instant) -> Instant {
    at + GRAIN + Duration::from_millis(2)
}

#[test]
fn a_deadline_fires_at_its_instant_or_within_a_grain_never_before() {
    with_a_table(async {
        let start = Instant::now();
        for ms in [1u64, 90, 150, 1_000, 60_000] {
            let at = start + Duration::from_millis(ms);
            Deadline::until(at).await;
            let now = Instant::now();
            assert!(now >= at, "{ms} ms: fired early");
            assert!(now <= late_by(at.max(start)), "{ms} ms: fired late");
        }
        // Each freed its slot as it fired.
        assert_eq!(set(), 0);
        // One already past when first polled is due at once, not at the next look.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let before = Instant::now();
        Deadline::until(start).await;
        assert_eq!(Instant::now(), before);
        assert_eq!(set(), 0);
    });
}

#[test]
fn many_deadlines_all_fire_and_leave_the_table_empty() {
    with_a_table(async {
        let start = Instant::now();
        let waits: Vec<_> = (0..500u64)
            .map(|i| {
                let at = start + Duration::from_millis(7 * i);
                tokio::spawn(async move {
                    Deadline::until(at).await;
                    let now = Instant::now();
                    now >= at && now <= late_by(at)
                })
            })
            .collect();
        for w in waits {
            assert!(w.await.unwrap_or(false), "a deadline fired early or late");
        }
        assert_eq!(set(), 0);
        // With none set, the tick waits without a timer.
        tokio::task::yield_now().await;
        assert_eq!(with_table(|t| t.tick.is_some()), Some(true));
    });
}

#[test]
fn a_dropped_deadline_frees_its_slot_and_a_reset_one_moves() {
    with_a_table(async {
        let start = Instant::now();
        let mut d = Deadline::until(start + Duration::from_secs(60));
        // Set by its first poll.
        assert!(poll_once(&mut d).is_pending());
        assert_eq!(set(), 1);
        drop(d);
        assert_eq!(set(), 0);
        // Earlier.
        let mut d = Deadline::until(start + Duration::from_secs(60));
        assert!(poll_once(&mut d).is_pending());
        let at = start + Duration::from_millis(300);
        d.reset(at);
        d.await;
        assert!(Instant::now() >= at && Instant::now() <= late_by(at));
        // Later: not at the old instant.
        let start = Instant::now();
        let mut d = Deadline::until(start + Duration::from_millis(100));
        assert!(poll_once(&mut d).is_pending());
        let at = start + Duration::from_millis(700);
        d.reset(at);
        (&mut d).await;
        assert!(Instant::now() >= at && Instant::now() <= late_by(at));
        // Reset to the instant it fired at: still fired (a stall timer resets to the
        // same deadline on every poll).
        d.reset(at);
        assert!(poll_once(&mut d).is_ready());
        // Again, to another instant.
        let at = Instant::now() + Duration::from_millis(400);
        d.reset(at);
        d.await;
        assert!(Instant::now() >= at && Instant::now() <= late_by(at));
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
fn the_table_ends_with_its_tick_and_its_deadlines_carry_on_as_sleeps() {
    // A deadline set on a runtime whose tick then ends (the runtime dropped) is woken,
    // and fires as a tokio sleep on the next runtime of the thread, which has no table.
    let mut d = Deadline::until(Instant::now() + Duration::from_millis(200));
    with_a_table(async {
        assert!(poll_once(&mut d).is_pending());
        assert_eq!(set(), 1);
    });
    assert!(with_table(|_| ()).is_none(), "the table outlived its tick");
    paused().block_on(async {
        d.await;
        // A new deadline is a sleep too, not a slot no tick looks at.
        let mut e = Deadline::until(Instant::now() + Duration::from_millis(50));
        assert!(poll_once(&mut e).is_pending());
        assert!(matches!(e.place, Place::Sleep(_)));
        e.await;
    });
}

#[test]
fn a_deadline_moved_to_another_thread_waits_there_as_a_sleep() {
    let rt = paused();
    let (d, first_set) = rt.block_on(async {
        tokio::spawn(run_on_this_thread());
        tokio::task::yield_now().await;
        let mut d = Deadline::until(Instant::now() + Duration::from_millis(300));
        assert!(poll_once(&mut d).is_pending());
        (d, set())
    });
    assert_eq!(first_set, 1);
    let elsewhere = std::thread::spawn(move || {
        paused().block_on(async move {
            let mut d = d;
            assert!(poll_once(&mut d).is_pending());
            let on_sleep = matches!(d.place, Place::Sleep(_));
            d.await;
            on_sleep
        })
    });
    assert!(
        elsewhere.join().unwrap_or(false),
        "it did not become a sleep"
    );
    // Its first slot, left on this thread, is freed as it fires here.
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(set(), 0);
    });
}

#[test]
fn hyper_gets_the_same_deadlines() {
    use hyper::rt::Timer;
    with_a_table(async {
        let timer = CoarseTimer;
        // hyper adds its timeouts to the timer's clock: tokio's, the deadlines' own.
        let start = timer.now();
        assert_eq!(Instant::from_std(start), Instant::now());
        let mut sleep = timer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut sleep).is_pending());
        assert_eq!(set(), 1);
        // Reset in place: still the one slot, and it moved.
        let at = start + Duration::from_millis(200);
        timer.reset(&mut sleep, at);
        assert_eq!(set(), 1);
        sleep.await;
        let now = Instant::now();
        assert!(now >= Instant::from_std(at) && now <= late_by(Instant::from_std(at)));
        assert_eq!(set(), 0);
    });
}
