//! The router's stop signal for one relay (a drain, a reroute): polled once to
//! register, then only when it has fired, since polling it takes a lock every relay
//! shares.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::data::relay::close::Stop;

/// The router's stop signal, polled only when it has woken the relay (and once at the
/// start, to register). Polling it takes the lock of the drain's `Notify`, which every
/// relay shares, and a relay is polled for every read and write: under load that was a
/// lock taken per message, bouncing between the I/O threads.
pub(super) struct StopSignal {
    future: Pin<Box<dyn Future<Output = Stop> + Send>>,
    wake: Arc<StopWake>,
    /// `wake` as a waker, made once.
    waker: Waker,
}

/// Set by the stop future's waker: the future has something to say, and the relay is
/// woken to poll it.
struct StopWake {
    fired: AtomicBool,
    relay: AtomicWaker,
}

impl Wake for StopWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.relay.wake();
    }
}

impl StopSignal {
    pub(super) fn new(future: Pin<Box<dyn Future<Output = Stop> + Send>>) -> Self {
        let wake = Arc::new(StopWake {
            fired: AtomicBool::new(true),
            relay: AtomicWaker::new(),
        });
        Self {
            future,
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        // Cheap when the relay's waker is the same as last time (it is, for a task).
        self.wake.relay.register(cx.waker());
        if !self.wake.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.future
            .as_mut()
            .poll(&mut Context::from_waker(&self.waker))
    }
}
