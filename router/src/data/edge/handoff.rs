//! Connections accepted by one I/O thread and run by another, less loaded one.
//!
//! The kernel spreads connections over the threads' `SO_REUSEPORT` listeners by a hash,
//! blind to load ([`ThreadLoad`] says why that matters). A thread that accepts while
//! clearly busier than another passes the socket, already admitted to the pending pool,
//! to that thread's event loop, which runs it from then on: one cross-thread wake per
//! connection handed over, none per request or message.
//!
//! [`ThreadLoad`]: crate::state::thread_load::ThreadLoad

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::data::admission::pools::PendingSlot;
use crate::state::thread_load::Seat;

/// An accepted connection on its way to another thread: the socket out of the accepting
/// thread's event loop, its pending place and its seat on the thread that will run it.
pub(crate) struct Arrival {
    pub tcp: std::net::TcpStream,
    pub peer: SocketAddr,
    pub slot: PendingSlot,
    pub seat: Seat,
}

/// Every I/O thread's inbox, by thread. The accept loops hold it; when they have all
/// stopped, each inbox's reader sees its end.
pub(crate) struct Handoffs {
    inboxes: Box<[mpsc::UnboundedSender<Arrival>]>,
}

impl Handoffs {
    /// An inbox per thread, and the reader's end of each, by thread. Unbounded is
    /// bounded enough: each arrival holds a place in the pending pool, which is.
    pub(crate) fn new(threads: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Arrival>>) {
        let (inboxes, readers): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let inboxes = inboxes.into_boxed_slice();
        (Arc::new(Self { inboxes }), readers)
    }

    /// Hands `tcp` to the thread its seat names. Fails only if the socket cannot leave
    /// this thread's event loop or that thread's loop is gone (its reader ends only once
    /// every accept loop has stopped): the connection is then closed, its pending place
    /// and its seat freed, and the client may connect again.
    pub(crate) fn send(&self, tcp: TcpStream, peer: SocketAddr, slot: PendingSlot, seat: Seat) {
        let Some(inbox) = self.inboxes.get(seat.thread()) else {
            return;
        };
        // Out of this event loop's registration; the receiving loop registers it anew.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(client.addr = %peer, error = %e, "connection closed: it could not change I/O threads");
                return;
            }
        };
        let arrival = Arrival {
            tcp,
            peer,
            slot,
            seat,
        };
        if inbox.send(arrival).is_err() {
            tracing::warn!(client.addr = %peer, "connection closed: the I/O thread it was handed to has stopped");
        }
    }
}
