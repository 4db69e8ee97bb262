//! Liveness of the I/O threads. Each thread's event loop runs a small task that stamps
//! the thread's slot as the loop turns; a thread wedged in a loop that never yields (a
//! bug, or an attack on one) stops stamping, and the admin listener, on its own thread,
//! sees the stamp age. `/healthz` then fails, so Kubernetes restarts a pod that can no
//! longer serve, where a process that merely runs would look healthy for good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One stamp per I/O thread: milliseconds since `start` when its loop last turned.
#[derive(Debug)]
pub(crate) struct Heartbeats {
    start: Instant,
    beats: Box<[AtomicU64]>,
}

impl Heartbeats {
    /// Slots for `workers` threads, each stamped now (a thread that never starts is
    /// reported once the threshold has passed).
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            start: Instant::now(),
            beats: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Worker `i`'s loop turned now.
    pub(crate) fn beat(&self, i: usize) {
        if let Some(slot) = self.beats.get(i) {
            slot.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// How long since each worker's loop last turned, by worker.
    pub(crate) fn ages(&self) -> impl Iterator<Item = (usize, Duration)> + '_ {
        self.ages_at(Instant::now())
    }

    fn ages_at(&self, now: Instant) -> impl Iterator<Item = (usize, Duration)> + '_ {
        let now = now.saturating_duration_since(self.start);
        self.beats.iter().enumerate().map(move |(i, b)| {
            let at = Duration::from_millis(b.load(Ordering::Relaxed));
            (i, now.saturating_sub(at))
        })
    }

    /// How often a worker stamps for a stall to be seen within `threshold`: four times
    /// per threshold, at most once a second and at least every 10 ms.
    pub(crate) fn interval(threshold: Duration) -> Duration {
        (threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Stamps worker `i` every `interval` until `stop` resolves, and runs `upkeep` with
    /// each stamp. It runs on the worker's own event loop, so a stamp proves that loop
    /// turned, and `upkeep` runs on it.
    pub(crate) async fn run(
        &self,
        i: usize,
        interval: Duration,
        upkeep: fn(),
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        loop {
            self.beat(i);
            upkeep();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.as_mut() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_stamping_ages_and_the_others_do_not() {
        let h = Heartbeats::new(2);
        let t0 = h.start;
        h.beats[0].store(9_000, Ordering::Relaxed);
        h.beats[1].store(2_000, Ordering::Relaxed);
        let ages: Vec<_> = h.ages_at(t0 + Duration::from_secs(12)).collect();
        assert_eq!(
            ages,
            [(0, Duration::from_secs(3)), (1, Duration::from_secs(10))]
        );
        // A stamp later than the reading (another thread raced ahead) is age zero.
        assert_eq!(h.ages_at(t0).next(), Some((0, Duration::ZERO)));
        assert_eq!(Heartbeats::new(0).ages().count(), 1);
        assert_eq!(
            Heartbeats::interval(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            Heartbeats::interval(Duration::from_millis(400)),
            Duration::from_millis(100)
        );
    }
}
