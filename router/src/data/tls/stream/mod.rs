//! The server side of a TLS connection that holds no buffers while idle.
//!
//! tokio-rustls wraps rustls' buffered connection, whose receive buffer never shrinks
//! below 4 KiB once used: with 9,000 idle sockets that was 36 MB, about 40% of the
//! router's memory. This stream drives rustls' unbuffered API instead. Ciphertext is read
//! into one scratch buffer per worker thread and processed there, and each write is
//! sealed in that buffer and sent from it; a connection keeps bytes only while they are
//! in flight (the start of a record not fully received, plaintext its reader has not
//! taken, ciphertext the socket has not accepted) and frees them as soon as they are
//! drained. This is what OpenSSL's `SSL_MODE_RELEASE_BUFFERS` does for HAProxy and NGINX.
//!
//! Here: the stream's state, the scratch buffer, and how a failure is reported. Beside it:
//! `handshake` (accepting, with its bounds), `receive` (bounded reads into the
//! scratch and rustls run over them), `send` (sealing and sending ciphertext), `meter`
//! (what a handshake holds, told to a budget) and `async_io` (the `AsyncRead`/`AsyncWrite`
//! glue the rest of the router sees).

mod async_io;
mod handshake;
mod meter;
mod receive;
mod send;

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub(crate) use handshake::{accept, HandshakeLimits, DEFAULT_MAX_CLIENT_HELLO};

use super::flush::{Handover, Held};
pub(crate) use meter::Meter;

/// The largest TLS record on the wire: header, 2^14 bytes of plaintext, 256 of expansion.
pub const MAX_RECORD: usize = 5 + (1 << 14) + 256;
/// rustls joins a handshake message split over records in place, up to 64 KiB, so the
/// scratch buffer holds that plus a record.
const SCRATCH_SIZE: usize = (64 << 10) + MAX_RECORD;

thread_local! {
    /// Borrowed only for one socket read and the processing after it, or for one write's
    /// encryption and send, never across a wait; nothing polled meanwhile reaches
    /// another `TlsStream`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// A server-side TLS stream over a byte stream (TCP in the router). Made by [`accept`].
pub(crate) struct TlsStream<S = TcpStream> {
    /// Sealed bytes handed to the I/O thread at a held flush, to go as its turn ends
    /// (`tls::flush`); they go before `out`'s. Only on a TCP socket
    /// ([`TlsStream::hand_over_held_flushes`]); elsewhere a held flush parks its task.
    /// Declared before `tcp`: dropped first, it sends what still waits while the socket
    /// is open.
    handover: Handover,
    tcp: S,
    conn: UnbufferedServerConnection,
    /// Received ciphertext not yet processed: the start of a record still arriving.
    partial: Vec<u8>,
    /// Decrypted bytes the reader has not taken yet, from `plain_pos`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext the socket has not taken yet, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify or closed its side of TCP.
    read_eof: bool,
    close_sent: bool,
    /// A TLS error, reported once the alert rustls queued for it has been sent.
    failed: Option<io::Error>,
    /// The ClientHello's declared length has been checked.
    hello_checked: bool,
    /// A flush waiting for its I/O thread's turn to end (`tls::flush`).
    held: Held,
}

impl<S> TlsStream<S> {
    /// A stream about to start its handshake: nothing received, nothing held.
    fn new(tcp: S, conn: UnbufferedServerConnection) -> Self {
        Self {
            handover: Handover::default(),
            tcp,
            conn,
            partial: Vec::new(),
            plain: Vec::new(),
            plain_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            read_eof: false,
            close_sent: false,
            failed: None,
            hello_checked: false,
            held: Held::default(),
        }
    }

    /// Takes back what the thread holds for the stream (`tls::outbox`): its bytes go
    /// before what was queued since; its socket's error is the stream's.
    fn take_back(&mut self) -> io::Result<()> {
        self.handover.take_back(&mut self.out, &mut self.out_pos)
    }

    /// The same TLS session over another handle on its socket (moved onto an I/O
    /// thread's ring, `socket::uring`): every byte in flight stays where it is.
    pub(crate) fn carried<T>(
        mut self,
        f: impl FnOnce(S) -> io::Result<T>,
    ) -> io::Result<TlsStream<T>> {
        // What the thread holds for the stream comes back first: the new handle sends it.
        self.take_back()?;
        let Self {
            handover,
            tcp,
            conn,
            partial,
            plain,
            plain_pos,
            out,
            out_pos,
            read_eof,
            close_sent,
            failed,
            hello_checked,
            held,
        } = self;
        // Nothing is with the thread now, and the new handle may not hand over.
        drop(handover);
        Ok(TlsStream {
            handover: Handover::default(),
            tcp: f(tcp)?,
            conn,
            partial,
            plain,
            plain_pos,
            out,
            out_pos,
            read_eof,
            close_sent,
            failed,
            hello_checked,
            held,
        })
    }
}

impl TlsStream<TcpStream> {
    /// Lets a held flush hand its bytes to the I/O thread, which sends them itself as
    /// its turn ends (`tls::outbox`), rather than park the task to send them then.
    pub(crate) fn hand_over_held_flushes(&mut self) {
        self.handover = Handover::to(self.tcp.as_raw_fd());
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// The application protocol the handshake agreed on (ALPN), if any.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether the handshake resumed a session (a ticket opened) rather than a full one.
    pub(crate) fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The stream the TLS runs over; writing to it directly would corrupt the TLS.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.tcp
    }

    /// Takes back what the I/O thread holds for the stream (`tls::outbox`): it goes with
    /// the stream's next write or read, from the task that then runs it. Its socket's
    /// error, if it failed, is the next call's.
    pub(crate) fn reclaim_held(&mut self) {
        if let Err(e) = self.take_back() {
            self.stash(e);
        }
    }

    /// Whether a flush is held for its I/O thread's turn to end (`tls::flush`): not a
    /// socket that stopped taking bytes.
    pub(crate) fn flush_held(&self) -> bool {
        self.held.is_held()
    }

    /// Ciphertext encrypted from what was written but not yet taken by the socket.
    pub(crate) fn unsent(&self) -> usize {
        self.out.len() - self.out_pos + self.handover.len()
    }

    /// Keeps `e` to report once what is queued (the alert, usually) has gone out.
    fn stash(&mut self, e: io::Error) {
        self.failed.get_or_insert(e);
    }

    /// After a failure: flushes what is queued (best effort), then gives the error.
    fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed.is_none() {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = ready!(self.poll_send(cx)) {
            tracing::trace!(error = %e, "TLS alert not delivered");
        }
        let _ = ready!(Pin::new(&mut self.tcp).poll_flush(cx));
        match self.failed.take() {
            Some(e) => {
                // After a TLS error every later call fails the same way; after a
                // hang-up, reads see EOF.
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                }
                self.read_eof = true;
                Poll::Ready(Err(e))
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests;
