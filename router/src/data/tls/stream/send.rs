//! The writer's half: what rustls produces (handshake messages, alerts, sealed records)
//! is made into ciphertext, in the thread's scratch when it fits or queued in `out`, and
//! sent; the queue is freed once the socket has taken it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::unbuffered::{EncodeError, EncodeTlsData, EncryptError, WriteTraffic};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{TlsStream, SCRATCH_SIZE};

/// Plaintext encrypted per `poll_write` at most; larger writes are taken in parts.
pub(super) const MAX_WRITE: usize = 64 << 10;
/// Ciphertext bytes added per record: header, content type and AEAD tag.
const RECORD_OVERHEAD: usize = 5 + 1 + 16;
// A whole write, sealed, fits in the scratch buffer.
const _: () = assert!(sealed_len(MAX_WRITE) <= SCRATCH_SIZE);

/// The most ciphertext `n` bytes of plaintext become: every record's overhead added.
pub(super) const fn sealed_len(n: usize) -> usize {
    n + (n / (1 << 14) + 1) * RECORD_OVERHEAD
}

pub(super) type ServerData = rustls::server::ServerConnectionData;

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes queued ciphertext to the socket, what the thread holds for the stream
    /// first; frees the queue once it is empty.
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_back()?;
        self.out_pos += send_some(&mut self.tcp, cx, &self.out[self.out_pos..])?;
        if self.out_pos < self.out.len() {
            // The socket is full: what is queued waits for it, not for a turn's end.
            self.handover.pushed_back();
            return Poll::Pending;
        }
        self.out = Vec::new();
        self.out_pos = 0;
        self.held.sent();
        self.handover.sent();
        Poll::Ready(Ok(()))
    }

    /// [`Self::poll_send`], but what the thread holds for the stream whole waits for
    /// its turn's end when nothing was queued since: a read goes on without it.
    pub(super) fn poll_send_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self
            .handover
            .waiting_with_nothing_since(self.out.len() - self.out_pos)
        {
            return Poll::Ready(Ok(()));
        }
        self.poll_send(cx)
    }
}

/// Writes as much of `buf` to `tcp` as it takes now; the count, which is short of
/// `buf.len()` only when `tcp` has registered to wake the task once it takes more.
pub(super) fn send_some<S: AsyncWrite + Unpin>(
    tcp: &mut S,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        match Pin::new(&mut *tcp).poll_write(cx, &buf[sent..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => sent += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(sent)
}

/// Why writing into a slice stopped: it was too small, or something else.
enum Short {
    Need(usize),
    Failed(io::Error),
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(s) => Short::Need(s.required_size),
            other => Short::Failed(io::Error::other(other)),
        }
    }
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(s) => Short::Need(s.required_size),
            other => Short::Failed(io::Error::other(other)),
        }
    }
}

/// Appends what `produce` writes to `out`: it gets `room` bytes first, then as many as
/// rustls says it needs.
fn append(
    out: &mut Vec<u8>,
    mut room: usize,
    mut produce: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    loop {
        let start = out.len();
        out.resize(start + room, 0);
        match produce(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Short::Need(n)) => {
                out.truncate(start);
                room = n;
            }
            Err(Short::Failed(e)) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

/// Handshake and alert messages rustls has ready, as ciphertext at the end of `out`.
pub(super) fn encode(e: &mut EncodeTlsData<'_, ServerData>, out: &mut Vec<u8>) -> io::Result<()> {
    append(out, 512, |buf| Ok(e.encode(buf)?))
}

fn encrypt(w: &mut WriteTraffic<'_, ServerData>, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    // Enough for every record's overhead, so one try nearly always does (a key update
    // riding along is the exception, and rustls then says how much it needs).
    let room = sealed_len(data.len()) + 64;
    append(out, room, |buf| Ok(w.encrypt(data, buf)?))
}

/// Encrypts `data` into `into` when it fits, which is nearly always (a key update riding
/// along is the exception): what was sealed there is sent from there, and nothing is
/// allocated. Otherwise it is appended to `out` and 0 is returned.
pub(super) fn seal(
    w: &mut WriteTraffic<'_, ServerData>,
    data: &[u8],
    into: &mut [u8],
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    match w.encrypt(data, into) {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(_)) => encrypt(w, data, out).map(|()| 0),
        Err(e) => Err(io::Error::other(e)),
    }
}

pub(super) fn close_notify(
    w: &mut WriteTraffic<'_, ServerData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    append(out, 64, |buf| Ok(w.queue_close_notify(buf)?))
}
