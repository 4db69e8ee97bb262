//! A future polled only after it has woken: for the router's own signals (a drain, a
//! reroute, an eviction) that a task waits on beside its sockets. Polled in a `select!`
//! or beside a relay's I/O, they would be polled every time the task runs, and it runs
//! for every read and write; each poll of a drain token or a `Notify` takes its lock,
//! and the drain's are shared by every relay and connection, bouncing between the I/O
//! threads. Gated, they are polled once to register, then only when one of them fired,
//! and the task's other wake-ups cost two atomic operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::data::relay::close::Stop;

/// A relay's stop signal.
pub(super) type StopSignal = Gated<Pin<Box<dyn Future<Output = Stop> + Send>>>;

/// `inner`, polled only when it woke (and on the first poll).
pub(crate) struct Gated<F> {
    inner: F,
    gate: Arc<Gate>,
    /// `gate` as a waker, made once: what `inner` registers wherever it waits.
    waker: Waker,
}

/// Set by the inner future's waker: it has something to say, and the task is woken to
/// poll it.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Gated<F> {
    pub(crate) fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// Polls `inner` if it woke since the last poll; else `Pending` at the cost of two
    /// atomic operations.
    pub(crate) fn poll_gated(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read, so a wake between the two is not lost;
        // cheap when the task's waker is the same as last time (it is, for a task).
        self.gate.task.register(cx.waker());
        if !self.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll(&mut Context::from_waker(&self.waker))
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().poll_gated(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// Counts its polls; ready once `notified` is.
    struct Counted<'a> {
        polls: &'a Cell<u32>,
        notified: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    }

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            self.notified.as_mut().poll(cx)
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_only_when_it_woke() {
        let notify = Notify::new();
        let polls = Cell::new(0);
        let mut gated = Gated::new(Counted {
            polls: &polls,
            notified: Box::pin(notify.notified()),
        });
        // The first poll arms it; wake-ups of the task for other reasons do not poll it.
        for _ in 0..10 {
            let once = std::future::poll_fn(|cx| Poll::Ready(gated.poll_gated(cx)));
            assert!(once.await.is_pending());
        }
        assert_eq!(polls.get(), 1);
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), &mut gated)
            .await
            .expect("the gated future ends once its signal fires");
        assert_eq!(polls.get(), 2);
    }
}
