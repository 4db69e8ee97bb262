//! What the relay needs of each side besides reading and writing: passing a reset on as
//! it came, and counting what a TLS side has taken but not yet sent.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::data::socket::uring::UringTcp;
use crate::data::tls::stream::TlsStream;

/// What the relay needs of each side besides reading and writing.
pub(crate) trait Peer {
    /// Ends the connection abruptly (a TCP reset), to pass on a peer's reset as it was.
    fn reset(&mut self);

    /// Bytes written to this side that it has taken but not yet sent (encrypted records
    /// its socket has not accepted): the relay counts them as held.
    fn queued(&self) -> usize {
        0
    }

    /// Whether a flush is held for the I/O thread's turn to end: waiting by design, not
    /// a peer that stopped reading.
    fn flush_held(&self) -> bool {
        false
    }

    /// Takes back what the I/O thread holds for this side's socket (`tls::outbox`),
    /// to go with its next write: as it changes task (an upgrade's relay takes it over),
    /// so that a socket pushing back wakes the task that now runs it.
    fn reclaim_held(&mut self) {}

    /// This side ending without a close frame means its peer left: the other side is
    /// told with close 1001 (going away) rather than a reset or a FIN. An HTTP/2 stream
    /// the client resets or ends is that: the connection under it lives on.
    const RESET_IS_GOING_AWAY: bool = false;
}

impl Peer for tokio::net::TcpStream {
    fn reset(&mut self) {
        // Linger 0: closing the socket (when the relay drops it) sends RST, not FIN.
        #[allow(deprecated)]
        let _ = self.set_linger(Some(Duration::ZERO));
    }
}

impl Peer for crate::data::socket::uring::UringTcp {
    fn reset(&mut self) {
        crate::data::socket::uring::UringTcp::reset(self);
    }
}

impl<S: Peer + AsyncRead + AsyncWrite + Unpin> Peer for TlsStream<S> {
    fn reset(&mut self) {
        self.get_mut().reset();
    }

    fn flush_held(&self) -> bool {
        TlsStream::flush_held(self)
    }

    fn reclaim_held(&mut self) {
        TlsStream::reclaim_held(self);
    }

    fn queued(&self) -> usize {
        self.unsent()
    }
}

impl Peer for tokio::io::DuplexStream {
    fn reset(&mut self) {}
}

/// A client's socket that can move onto its I/O thread's ring (`--io-uring`) once
/// upgraded: a plain TCP one, or TLS over it.
pub(crate) trait OntoUring: Sized {
    type Uring: AsyncRead + AsyncWrite + Peer + Unpin + Send + 'static;

    /// Moved onto this thread's ring (only where `uring::here()`).
    fn onto_uring(self) -> io::Result<Self::Uring>;
}

impl OntoUring for tokio::net::TcpStream {
    type Uring = UringTcp;

    fn onto_uring(self) -> io::Result<UringTcp> {
        UringTcp::adopt(self)
    }
}

impl OntoUring for TlsStream<tokio::net::TcpStream> {
    type Uring = TlsStream<UringTcp>;

    fn onto_uring(self) -> io::Result<TlsStream<UringTcp>> {
        self.carried(UringTcp::adopt)
    }
}
