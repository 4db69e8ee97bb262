//! For tests of held flushes: loopback sockets, a waker that counts, and a runtime whose
//! park hook ends the thread's turn as an I/O thread's does.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A waker's count of wakes, and the task each wake is passed on to, if given one.
pub(crate) struct Count {
    wakes: AtomicUsize,
    task: Mutex<Option<Waker>>,
}

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(task) = self.task.lock().unwrap().as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Count {
    /// Wakes so far.
    pub(crate) fn woken(&self) -> usize {
        self.wakes.load(Ordering::Relaxed)
    }

    /// Passes each wake from now on to `task` too (the test's own, so what the counted
    /// waker waits on still moves the test on).
    pub(crate) fn pass_on_to(&self, task: &Waker) {
        *self.task.lock().unwrap() = Some(task.clone());
    }
}

/// A waker that counts its wakes, and its count.
pub(crate) fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count {
        wakes: AtomicUsize::new(0),
        task: Mutex::new(None),
    });
    (count.clone(), Waker::from(count))
}

/// A current-thread runtime that ends the thread's turn as it parks, as an I/O
/// thread's does.
pub(crate) fn turning_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(super::flush::end_of_turn)
        .build()
        .unwrap()
}

/// A connected loopback pair: (ours, the peer's).
pub(crate) async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (ours.unwrap(), theirs.unwrap().0)
}

/// Nothing has reached `peer` (the bytes never went to a socket, so this does not race
/// the network).
pub(crate) fn nothing_arrived(peer: &TcpStream) {
    let mut buf = [0u8; 64];
    match peer.try_read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("the peer got something early: {other:?}"),
    }
}

/// The next `n` bytes `peer` receives.
pub(crate) async fn read_n<R: AsyncRead + Unpin>(peer: &mut R, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(WAIT, peer.read_exact(&mut got))
        .await
        .expect("read in time")
        .unwrap();
    got
}
