//! A future polled only after it has woken: for the signals a connection's task waits on
//! beside the connection itself (a drain, an eviction, a close). In a `select!` they
//! would be polled every time the task runs, and the task runs several times per
//! request, each time for the connection's I/O; each such poll of a drain token or a
//! `Notify` takes its lock, and the drain's tokens are shared by every I/O thread.
//! Gated, they are polled when one of them has something to say, and the task's other
//! wake-ups cost two atomic operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `inner`, polled only when it woke (and on the first poll).
pub(crate) struct Gated<F> {
    inner: F,
    gate: Arc<Gate>,
    /// The gate as a waker, made once: what `inner` registers wherever it waits.
    waker: Waker,
}

struct Gate {
    woken: AtomicBool,
    /// The task that polls the gated future.
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
        let waker = Waker::from(gate.clone());
        Self { inner, gate, waker }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake between the two is not lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// Counts its polls; ready once `notify` has fired.
    struct Counted<'a> {
        polls: &'a std::cell::Cell<u32>,
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
        let polls = std::cell::Cell::new(0);
        let mut gated = Gated::new(Counted {
            polls: &polls,
            notified: Box::pin(notify.notified()),
        });
        // The first poll arms it; wake-ups of the task for other reasons do not poll it.
        for _ in 0..10 {
            let once = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut gated).poll(cx)));
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
