//! How many connections each I/O thread runs, and which thread a new one should go to.
//!
//! Each I/O thread accepts on its own `SO_REUSEPORT` listener, so the kernel's hash of
//! the client's address and port decides where a connection lands, blind to load: of 52
//! benchmark connections one start put 18 on one thread and 34 on the other, and the
//! busier thread's requests waited twice as long (benches/RESULTS.md). The accepting
//! thread asks [`ThreadLoad::place`] and hands the connection over when another thread
//! is clearly less loaded. A shared listening socket was tried instead and spread worse
//! (whichever thread wakes first takes a burst).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Live connections per I/O thread (accepted and not yet closed, handshakes included).
#[derive(Debug)]
pub(crate) struct ThreadLoad {
    conns: Box<[AtomicUsize]>,
}

/// A thread may run this many more connections than the least loaded before it hands a
/// new one over: a hand-over costs two `epoll_ctl` calls and a cross-thread wake, so a
/// difference of one is left alone.
const SLACK: usize = 1;

impl ThreadLoad {
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            conns: (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Where a connection accepted on thread `here` should run, counted there from now
    /// on: `here` unless another thread runs more than [`SLACK`] fewer connections, then
    /// the least loaded (the lowest index on a tie). The seat it returns uncounts it when
    /// dropped, with the connection's task.
    pub(crate) fn place(self: &Arc<Self>, here: usize) -> Seat {
        let load = |i: usize| {
            self.conns
                .get(i)
                .map_or(usize::MAX, |c| c.load(Ordering::Relaxed))
        };
        let mine = load(here);
        let (least, fewest) = (0..self.conns.len())
            .map(|i| (i, load(i)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((here, mine));
        let thread = if mine > fewest + SLACK { least } else { here };
        self.seat(thread)
    }

    /// Counts one connection on `thread` until the seat drops.
    pub(crate) fn seat(self: &Arc<Self>, thread: usize) -> Seat {
        if let Some(c) = self.conns.get(thread) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Seat {
            load: self.clone(),
            thread,
        }
    }

    /// Live connections by thread, for `/metrics`.
    pub(crate) fn counts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.conns
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.load(Ordering::Relaxed)))
    }
}

/// One connection counted on one thread; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct Seat {
    load: Arc<ThreadLoad>,
    thread: usize,
}

impl Seat {
    /// The thread the connection runs on.
    pub(crate) fn thread(&self) -> usize {
        self.thread
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(c) = self.load.conns.get(self.thread) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(l: &ThreadLoad) -> Vec<usize> {
        l.counts().map(|(_, n)| n).collect()
    }

    #[test]
    fn a_connection_stays_where_it_landed_within_the_slack() {
        let l = Arc::new(ThreadLoad::new(2));
        let a = l.place(0);
        assert_eq!(a.thread(), 0);
        let b = l.place(0);
        // 1 against 0: within the slack, stays.
        assert_eq!(b.thread(), 0);
        assert_eq!(counts(&l), [2, 0]);
        // 2 against 0: goes to the idle thread.
        let c = l.place(0);
        assert_eq!(c.thread(), 1);
        assert_eq!(counts(&l), [2, 1]);
        drop((a, b));
        assert_eq!(counts(&l), [0, 1]);
        drop(c);
        assert_eq!(counts(&l), [0, 0]);
    }

    /// The worst the kernel's hash can do: every connection lands on one thread. The
    /// threads end within the slack of each other, whatever the count.
    #[test]
    fn connections_that_all_land_on_one_thread_spread_over_all() {
        for threads in 1..=4 {
            for n in 0..200 {
                let l = Arc::new(ThreadLoad::new(threads));
                let seats: Vec<Seat> = (0..n).map(|_| l.place(0)).collect();
                let c = counts(&l);
                let (min, max) = (c.iter().min(), c.iter().max());
                let spread = max.zip(min).map_or(0, |(a, b)| a - b);
                assert!(spread <= SLACK + 1, "{threads} threads, {n} conns: {c:?}");
                assert_eq!(c.iter().sum::<usize>(), n);
                drop(seats);
                assert!(counts(&l).iter().all(|&n| n == 0));
            }
        }
    }

    /// A skewed arrival, alternating with closes: the spread holds as connections come
    /// and go.
    #[test]
    fn the_spread_holds_as_connections_close() {
        let l = Arc::new(ThreadLoad::new(2));
        let mut seats: Vec<Seat> = Vec::new();
        for round in 0..1000usize {
            // Three of four land on thread 1, as a skewed hash would.
            let here = usize::from(round % 4 != 0);
            seats.push(l.place(here));
            if round % 3 == 2 {
                // The oldest closes.
                seats.remove(0);
            }
            let c = counts(&l);
            assert!(c[0].abs_diff(c[1]) <= SLACK + 1, "round {round}: {c:?}");
        }
    }

    #[test]
    fn an_unknown_thread_is_counted_nowhere_and_panics_nowhere() {
        let l = Arc::new(ThreadLoad::new(1));
        let s = l.place(5);
        assert_eq!(s.thread(), 0);
        let t = l.seat(7);
        assert_eq!(counts(&l), [1]);
        drop((s, t));
        assert_eq!(counts(&l), [0]);
    }
}
