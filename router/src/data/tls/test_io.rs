//! For tests of held flushes: loopback sockets, a waker that counts, and a runtime whose
//! park hook ends the thread's turn as an I/O thread's does.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Count {
    /// Wakes so far.
    pub(crate) fn woken(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A waker that counts its wakes, and its count.
pub(crate) fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count(AtomicUsize::new(0)));
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
