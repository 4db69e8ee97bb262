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

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS record on the wire: header, 2^14 bytes of plaintext, 256 of expansion.
pub const MAX_RECORD: usize = 5 + (1 << 14) + 256;
/// The default for `--max-client-hello`: room for post-quantum key shares (X25519MLKEM768
/// adds 1,216 bytes) and long SNI/ALPN lists, a quarter of what TLS allows.
pub const DEFAULT_MAX_CLIENT_HELLO: usize = 16 << 10;
/// TLS alert `illegal_parameter`, what OpenSSL sends for an excessive message size.
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
/// rustls joins a handshake message split over records in place, up to 64 KiB, so the
/// scratch buffer holds that plus a record.
const SCRATCH_SIZE: usize = (64 << 10) + MAX_RECORD;
/// Plaintext encrypted per `poll_write` at most; larger writes are taken in parts.
const MAX_WRITE: usize = 64 << 10;
/// Ciphertext bytes added per record: header, content type and AEAD tag.
const RECORD_OVERHEAD: usize = 5 + 1 + 16;
// A whole write, sealed, fits in the scratch buffer.
const _: () = assert!(sealed_len(MAX_WRITE) <= SCRATCH_SIZE);

/// The most ciphertext `n` bytes of plaintext become: every record's overhead added.
const fn sealed_len(n: usize) -> usize {
    n + (n / (1 << 14) + 1) * RECORD_OVERHEAD
}

thread_local! {
    /// Borrowed only for one socket read and the processing after it, or for one write's
    /// encryption and send, never across a wait; nothing polled meanwhile reaches
    /// another `TlsStream`.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// What to do once rustls can take application data.
enum Then<'a> {
    Nothing,
    /// Encrypt `data` into `into` and say how many bytes it took in `sealed`; if it does
    /// not fit (or `into` is empty), into `out` instead, with `sealed` left at 0.
    Encrypt {
        data: &'a [u8],
        into: &'a mut [u8],
        sealed: &'a mut usize,
    },
    CloseNotify,
}

/// Told how many bytes a connection in its TLS handshake holds, so a budget shared by
/// all such connections can be kept.
pub trait Meter {
    fn held(&mut self, bytes: usize);
}

impl Meter for () {
    fn held(&mut self, _: usize) {}
}

/// What one handshake may cost.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// The largest ClientHello accepted; a larger one gets a fatal alert as soon as its
    /// header says so, before its bytes are held.
    pub max_client_hello: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_client_hello: DEFAULT_MAX_CLIENT_HELLO,
        }
    }
}

/// A server-side TLS stream over a byte stream (TCP in the router). Made by [`accept`].
pub struct TlsStream<S = TcpStream> {
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
}

/// Completes a TLS handshake on `tcp` with `config`. Bytes the client sent after its
/// Finished (the HTTP request, usually) are kept for the first read. `meter` hears how
/// many bytes the handshake holds as that changes.
pub async fn accept<S>(
    config: Arc<ServerConfig>,
    tcp: S,
    limits: HandshakeLimits,
    meter: &mut impl Meter,
) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream {
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
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx, limits, meter)).await?;
    meter.held(0);
    Ok(stream)
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// The application protocol the handshake agreed on (ALPN), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The stream the TLS runs over.
    pub fn get_ref(&self) -> &S {
        &self.tcp
    }

    /// The stream the TLS runs over; writing to it directly would corrupt the TLS.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.tcp
    }

    /// Ciphertext encrypted from what was written but not yet taken by the socket.
    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn poll_handshake(
        &mut self,
        cx: &mut Context<'_>,
        limits: HandshakeLimits,
        meter: &mut impl Meter,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_failed(cx))?;
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                )));
            }
            let received =
                SCRATCH.with_borrow_mut(|s| self.poll_receive(cx, s, None, Some(limits)));
            if let Err(e) = ready!(received) {
                self.stash(e);
                continue;
            }
            meter.held(self.partial.capacity());
        }
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

    /// Refuses a ClientHello whose header declares more than the limit, before its
    /// bytes are held: a fatal `illegal_parameter` alert in the clear (nothing has been
    /// negotiated yet), then the error.
    fn check_client_hello(&mut self, input: &[u8], limits: HandshakeLimits) -> io::Result<()> {
        if self.hello_checked || input.len() < 9 {
            return Ok(());
        }
        self.hello_checked = true;
        // Record: type 22 (handshake), version, length; then message type 1, 24-bit length.
        if input[0] != 22 || input[5] != 1 {
            return Ok(());
        }
        let declared = u32::from_be_bytes([0, input[6], input[7], input[8]]) as usize;
        if declared <= limits.max_client_hello {
            return Ok(());
        }
        self.out
            .extend_from_slice(&[21, 3, 3, 0, 2, 2, ALERT_ILLEGAL_PARAMETER]);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "ClientHello of {declared} bytes is over --max-client-hello ({})",
                limits.max_client_hello
            ),
        ))
    }

    /// Writes queued ciphertext to the socket; frees the queue once it is empty.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out_pos += send_some(&mut self.tcp, cx, &self.out[self.out_pos..])?;
        if self.out_pos < self.out.len() {
            return Poll::Pending;
        }
        self.out = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext from the socket and processes every whole record; plaintext goes
    /// to `dst` as far as it fits, the rest into `plain`.
    ///
    /// During the handshake (`limits` given) a handshake message may not make the
    /// connection hold more than the ClientHello limit plus one record.
    fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        dst: Option<&mut ReadBuf<'_>>,
        limits: Option<HandshakeLimits>,
    ) -> Poll<io::Result<()>> {
        let saved = self.partial.len();
        let mut cap = limits.map_or(scratch.len(), |l| {
            (l.max_client_hello + MAX_RECORD).min(scratch.len())
        });
        // Read no more than the reader asked for plus a record, so what it has not
        // taken (kept in `plain`) is at most one record: a connection whose reader is
        // stalled holds that much, not a whole scratch buffer's worth.
        if let Some(dst) = &dst {
            cap = cap.min(saved + dst.remaining() + MAX_RECORD);
        }
        if saved >= cap {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS handshake message larger than the connection may hold",
            )));
        }
        let scratch = &mut scratch[..cap];
        scratch[..saved].copy_from_slice(&self.partial);
        let mut rb = ReadBuf::new(&mut scratch[saved..]);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.read_eof = true;
            // TCP closed without close_notify: a truncation, reported as tokio-rustls
            // does, so callers can tell a hang-up from a clean end.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed TCP without close_notify",
            )));
        }
        let used = saved + n;
        if let Some(limits) = limits {
            self.check_client_hello(&scratch[..used], limits)?;
        }
        let discard = self.pump(&mut scratch[..used], dst, Then::Nothing)?;
        let rest = &scratch[discard..used];
        self.partial = if rest.is_empty() {
            Vec::new()
        } else {
            rest.to_vec()
        };
        Poll::Ready(Ok(()))
    }

    /// Runs rustls over the `partial` record (no new input): to reach the state where it
    /// takes application data, then does `then`.
    fn pump_partial(&mut self, then: Then<'_>) -> io::Result<()> {
        let mut partial = std::mem::take(&mut self.partial);
        let result = self.pump(&mut partial, None, then);
        if let Ok(discard) = result {
            partial.drain(..discard);
        }
        if !partial.is_empty() {
            self.partial = partial;
        }
        result.map(|_| ())
    }

    /// Processes `incoming` until rustls needs more input or can take application data
    /// (then does `then`). Returns how many bytes of `incoming` are done with.
    fn pump(
        &mut self,
        incoming: &mut [u8],
        mut dst: Option<&mut ReadBuf<'_>>,
        then: Then<'_>,
    ) -> io::Result<usize> {
        let mut done = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[done..]);
            done += discard;
            let state = match state {
                Ok(s) => s,
                Err(e) => return Err(self.fail(e, &mut incoming[done..])),
            };
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    let mut failed = None;
                    // Input each record has done with, besides the status's own count:
                    // always 0 while rustls decrypts out of place (0.23), but the API
                    // says it must be added, and a rustls that decrypts in place will
                    // count the record's bytes here.
                    let mut records_discard = 0;
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => {
                                records_discard += record.discard;
                                deliver(
                                    &mut self.plain,
                                    self.plain_pos,
                                    dst.as_deref_mut(),
                                    record.payload,
                                )
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    // Bounded by the input, whatever the count says.
                    done = done.saturating_add(records_discard).min(incoming.len());
                    if let Some(e) = failed {
                        return Err(self.fail(e, &mut incoming[done..]));
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode(&mut e, &mut self.out)?,
                // The bytes are already queued in `out`, which is sent in order.
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::WriteTraffic(mut w) => {
                    match then {
                        Then::Nothing => {}
                        Then::Encrypt { data, into, sealed } => {
                            *sealed = seal(&mut w, data, into, &mut self.out)?;
                        }
                        Then::CloseNotify => close_notify(&mut w, &mut self.out)?,
                    }
                    return Ok(done);
                }
                ConnectionState::BlockedHandshake => {
                    return match then {
                        Then::Nothing => Ok(done),
                        _ => Err(io::ErrorKind::NotConnected.into()),
                    };
                }
                // Shown once; writing may go on until we close too.
                ConnectionState::PeerClosed => {
                    self.read_eof = true;
                    if matches!(then, Then::Nothing) {
                        return Ok(done);
                    }
                }
                ConnectionState::Closed => {
                    self.read_eof = true;
                    return match then {
                        Then::Nothing => Ok(done),
                        _ => Err(io::ErrorKind::BrokenPipe.into()),
                    };
                }
                ConnectionState::ReadEarlyData(_) => {
                    return Err(io::Error::other("TLS early data is not enabled"));
                }
                _ => return Err(io::Error::other("unexpected TLS connection state")),
            }
        }
    }

    /// A TLS error: rustls has queued an alert for the peer (after whatever else it had
    /// pending); queue all of it, to be sent before the error is reported. `rest` is the
    /// input rustls has not discarded (rustls may still point into it, so it gets
    /// exactly that, as after any call).
    fn fail(&mut self, e: rustls::Error, rest: &mut [u8]) -> io::Error {
        // rustls hands out one queued message per call. After an error in a message it
        // queued several (ServerHello, ..., the alert) and reports the error again once
        // they are out. After an error in the record layer it queued the alert alone, and
        // a second call would parse the same bad bytes again (and alert twice).
        let record_layer = matches!(
            e,
            rustls::Error::InvalidMessage(_)
                | rustls::Error::PeerSentOversizedRecord
                | rustls::Error::DecryptError
                | rustls::Error::PeerMisbehaved(
                    rustls::PeerMisbehaved::IllegalMiddleboxChangeCipherSpec
                )
        );
        for _ in 0..if record_layer { 1 } else { 16 } {
            match self.conn.process_tls_records(rest).state {
                Ok(ConnectionState::EncodeTlsData(mut pending)) => {
                    if encode(&mut pending, &mut self.out).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Writes as much of `buf` to `tcp` as it takes now; the count, which is short of
/// `buf.len()` only when `tcp` has registered to wake the task once it takes more.
fn send_some<S: AsyncWrite + Unpin>(
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

/// Hands a decrypted record to the reader, keeping what does not fit (in order).
fn deliver(plain: &mut Vec<u8>, plain_pos: usize, dst: Option<&mut ReadBuf<'_>>, payload: &[u8]) {
    let mut rest = payload;
    if let Some(dst) = dst {
        if plain_pos == plain.len() {
            let n = rest.len().min(dst.remaining());
            dst.put_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }
    plain.extend_from_slice(rest);
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

type ServerData = rustls::server::ServerConnectionData;

/// Handshake and alert messages rustls has ready, as ciphertext at the end of `out`.
fn encode(e: &mut EncodeTlsData<'_, ServerData>, out: &mut Vec<u8>) -> io::Result<()> {
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
fn seal(
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

fn close_notify(w: &mut WriteTraffic<'_, ServerData>, out: &mut Vec<u8>) -> io::Result<()> {
    append(out, 64, |buf| Ok(w.queue_close_notify(buf)?))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.poll_failed(cx))?;
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            // Replies rustls queued (tickets, key updates) go out as reading goes on; a
            // peer slow to take them does not stop us reading.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            let before = buf.filled().len();
            let received =
                SCRATCH.with_borrow_mut(|s| this.poll_receive(cx, s, Some(&mut *buf), None));
            if let Err(e) = ready!(received) {
                if buf.filled().len() > before {
                    // Hand over what was read; the error comes with the next read.
                    this.stash(e);
                    return Poll::Ready(Ok(()));
                }
                this.stash(e);
                continue;
            }
            if buf.filled().len() > before {
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_failed(cx))?;
        // Backpressure: queue nothing more until the socket has taken what is queued.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        // The ciphertext is made in the thread's scratch and written straight to the
        // socket: only what the socket does not take now is copied into `out` (sent at
        // the next write or flush), so a write that goes through allocates nothing.
        SCRATCH.with(|scratch| {
            // Never borrowed here in practice (no read is under way); if it were, `out`
            // serves as before.
            let mut guard = scratch.try_borrow_mut();
            let into: &mut [u8] = match &mut guard {
                Ok(scratch) => scratch,
                Err(_) => &mut [],
            };
            let mut sealed = 0;
            this.pump_partial(Then::Encrypt {
                data,
                into: &mut *into,
                sealed: &mut sealed,
            })?;
            let mut rest = &into[..sealed];
            // Anything rustls queued before this record (a handshake message) goes first.
            if this.out.is_empty() {
                rest = &rest[send_some(&mut this.tcp, cx, rest)?..];
            }
            this.out.extend_from_slice(rest);
            Ok::<_, io::Error>(())
        })?;
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            // Already closed or failed: there is nothing to say, only TCP to close.
            let _ = this.pump_partial(Then::CloseNotify);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tls::config::{DevCert, TlsOptions};
    use rustls::pki_types::ServerName;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    /// A real handshake on loopback: (server stream, client stream).
    async fn pair(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let cert = DevCert::generate(&["localhost"]).unwrap();
        let server = cert.server_config(&TlsOptions::default()).unwrap();
        let client =
            crate::data::tls::config::client_config(std::slice::from_ref(&cert.ca_der), versions)
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server, tcp, HandshakeLimits::default(), &mut ())
                .await
                .unwrap()
        };
        tokio::time::timeout(WAIT, async { tokio::join!(accept, connect) })
            .await
            .expect("handshake in time")
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn idle_holds_nothing(s: &TlsStream) {
        assert_eq!(s.partial.capacity(), 0, "partial record kept");
        assert_eq!(s.plain.capacity(), 0, "plaintext kept");
        assert_eq!(s.out.capacity(), 0, "ciphertext kept");
    }

    /// A write the socket takes whole is encrypted in the thread's scratch and sent from
    /// there: nothing is allocated for it. When the socket pushes back, only the
    /// ciphertext it refused is kept (never more than one write's worth), and it follows
    /// in order once the peer reads.
    #[tokio::test]
    async fn writes_hold_only_what_the_socket_refuses() {
        let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
        let small = data(100, 3);
        server.write_all(&small).await.unwrap();
        idle_holds_nothing(&server);
        let mut got = vec![0u8; small.len()];
        tokio::time::timeout(WAIT, client.read_exact(&mut got))
            .await
            .expect("read in time")
            .unwrap();
        assert_eq!(got, small);

        // The client reads nothing until the socket buffers are full.
        let chunk = data(MAX_WRITE, 4);
        let mut written = 0usize;
        let blocked = std::future::poll_fn(|cx| loop {
            match Pin::new(&mut server).poll_write(cx, &chunk) {
                Poll::Ready(Ok(n)) => {
                    assert_eq!(n, chunk.len());
                    written += n;
                    assert!(written < 64 << 20, "the socket never pushed back");
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => return Poll::Ready(()),
            }
        });
        tokio::time::timeout(WAIT, blocked)
            .await
            .expect("pushback in time");
        let held = server.unsent();
        assert!(held > 0, "pushed back with nothing held");
        assert!(held <= sealed_len(MAX_WRITE), "held {held} bytes");

        let read_all = async {
            let mut got = vec![0u8; written];
            client.read_exact(&mut got).await.unwrap();
            got
        };
        let (flushed, got) =
            tokio::time::timeout(WAIT, async { tokio::join!(server.flush(), read_all) })
                .await
                .expect("drained in time");
        flushed.unwrap();
        assert!(
            got.chunks(chunk.len()).all(|c| c == chunk),
            "bytes out of order"
        );
        idle_holds_nothing(&server);
    }

    /// Both TLS versions; 1 byte to 200 KB each way, read through buffers from 7 bytes
    /// (records split across reads) to 64 KiB; nothing is held once drained.
    #[tokio::test]
    async fn bytes_round_trip_whole_and_idle_holds_no_buffers() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let (mut server, mut client) = pair(versions).await;
            idle_holds_nothing(&server);
            for (n, read_size) in [
                (1, 64 << 10),
                (16 << 10, 7),
                ((16 << 10) + 1, 4096),
                (200_000, 64 << 10),
            ] {
                let up = data(n, 1);
                let down = data(n, 2);
                let work = async {
                    let (w, r) = tokio::join!(client.write_all(&up), async {
                        let mut got = Vec::new();
                        let mut buf = vec![0u8; read_size];
                        while got.len() < n {
                            let k = server.read(&mut buf).await.unwrap();
                            assert!(k > 0, "early EOF");
                            got.extend_from_slice(&buf[..k]);
                        }
                        got
                    });
                    w.unwrap();
                    client.flush().await.unwrap();
                    assert!(r == up, "client → server bytes differ ({n})");
                    let (w, r) = tokio::join!(
                        async {
                            server.write_all(&down).await?;
                            server.flush().await
                        },
                        async {
                            let mut got = vec![0u8; n];
                            client.read_exact(&mut got).await.map(|_| got)
                        }
                    );
                    w.unwrap();
                    assert!(r.unwrap() == down, "server → client bytes differ ({n})");
                };
                tokio::time::timeout(WAIT, work).await.expect("in time");
                idle_holds_nothing(&server);
            }
        }
    }

    /// A client key update mid-stream, then close_notify both ways: the server reads a
    /// clean EOF, and its shutdown reaches the client as close_notify.
    #[tokio::test]
    async fn key_update_then_clean_close_both_ways() {
        let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
        let work = async {
            client.write_all(b"before").await.unwrap();
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(b"after").await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 11];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"beforeafter");
            server.write_all(b"reply").await.unwrap();
            server.flush().await.unwrap();
            let mut reply = [0u8; 5];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"reply");
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0, "clean EOF");
            server.shutdown().await.unwrap();
            // tokio-rustls reports EOF without close_notify as an error: Ok is a clean close.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        tokio::time::timeout(WAIT, work).await.expect("in time");
    }

    /// TCP closed without close_notify reads as UnexpectedEof, then EOF; garbage after
    /// the handshake is an InvalidData error, not a panic or a hang.
    #[tokio::test]
    async fn truncation_and_garbage_are_errors() {
        let (mut server, client) = pair(&[&rustls::version::TLS13]).await;
        let (mut tcp, _) = client.into_inner();
        // FIN without close_notify (dropping the socket would send RST instead, since
        // the session tickets the server sent are unread).
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let err = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);

        let (mut server, client) = pair(&[&rustls::version::TLS13]).await;
        let (mut tcp, _) = client.into_inner();
        // An application-data record whose ciphertext is nonsense.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend([0xAB; 0x20]);
        tcp.write_all(&record).await.unwrap();
        let err = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// A client whose every TLS byte is a separate TCP write (the handshake included):
    /// records and handshake messages arrive split anywhere, and all still add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ciphertext_dribbled_one_byte_per_write() {
        use std::io::{Read, Write};
        let cert = DevCert::generate(&["localhost"]).unwrap();
        let server_config = cert.server_config(&TlsOptions::default()).unwrap();
        let client_config = Arc::new(
            crate::data::tls::config::client_config(
                std::slice::from_ref(&cert.ca_der),
                rustls::DEFAULT_VERSIONS,
            )
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let message: Vec<u8> = data(40_000, 9);
        let sent = message.clone();
        // A blocking rustls client on its own thread, writing ciphertext byte by byte.
        let client = std::thread::spawn(move || {
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(client_config, name).unwrap();
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            tcp.set_read_timeout(Some(WAIT)).unwrap();
            let dribble = |conn: &mut rustls::ClientConnection, tcp: &mut std::net::TcpStream| {
                let mut out = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut out).unwrap();
                }
                for b in out {
                    tcp.write_all(&[b]).unwrap();
                }
            };
            while conn.is_handshaking() {
                dribble(&mut conn, &mut tcp);
                if conn.is_handshaking() {
                    conn.read_tls(&mut tcp).unwrap();
                    conn.process_new_packets().unwrap();
                }
            }
            conn.writer().write_all(&sent).unwrap();
            dribble(&mut conn, &mut tcp);
            // Wait for the server's one-byte acknowledgement, then close cleanly.
            let mut ack = [0u8; 1];
            loop {
                conn.read_tls(&mut tcp).unwrap();
                conn.process_new_packets().unwrap();
                if conn.reader().read(&mut ack).is_ok() {
                    break;
                }
            }
            conn.send_close_notify();
            dribble(&mut conn, &mut tcp);
            ack[0]
        });
        let work = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut server = accept(server_config, tcp, HandshakeLimits::default(), &mut ())
                .await
                .unwrap();
            let mut got = vec![0u8; message.len()];
            server.read_exact(&mut got).await.unwrap();
            assert!(got == message, "bytes differ");
            server.write_all(b"k").await.unwrap();
            server.flush().await.unwrap();
            let mut rest = Vec::new();
            assert_eq!(
                server.read_to_end(&mut rest).await.unwrap(),
                0,
                "clean close"
            );
            idle_holds_nothing(&server);
        };
        tokio::time::timeout(WAIT, work).await.expect("in time");
        assert_eq!(client.join().unwrap(), b'k');
    }

    /// A client that is not speaking TLS at all fails the handshake cleanly.
    #[tokio::test]
    async fn not_tls_fails_the_handshake() {
        let cert = DevCert::generate(&["localhost"]).unwrap();
        let server = cert.server_config(&TlsOptions::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (stcp, _) = listener.accept().await.unwrap();
        let r = tokio::time::timeout(
            WAIT,
            accept(server, stcp, HandshakeLimits::default(), &mut ()),
        )
        .await
        .unwrap();
        assert!(r.is_err());
    }

    mod fuzz {
        //! Property tests: a real rustls client's bytes, split anywhere, mutated or cut,
        //! fed to the server stream over an in-memory pipe. Invariants: no panic, no
        //! hang, nothing held beyond its bound, plaintext exactly as sent, and every
        //! failure an error.
        use super::*;
        use proptest::prelude::*;
        use std::io::{Read, Write};
        use tokio::io::{duplex, DuplexStream};

        fn cases() -> u32 {
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .map_or(200, |n| (n / 8).max(16))
        }

        struct Fixture {
            server: Arc<ServerConfig>,
            client: Arc<rustls::ClientConfig>,
        }

        fn fixture() -> &'static Fixture {
            static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
            F.get_or_init(|| {
                let cert = DevCert::generate(&["localhost"]).unwrap();
                Fixture {
                    server: cert.server_config(&TlsOptions::default()).unwrap(),
                    client: cert.client_config(),
                }
            })
        }

        /// Writes `bytes` in pieces whose sizes cycle through `splits`.
        async fn send_split(io: &mut DuplexStream, bytes: &[u8], splits: &[usize]) {
            let mut at = 0;
            let mut i = 0;
            while at < bytes.len() {
                let n = splits
                    .get(i % splits.len().max(1))
                    .copied()
                    .unwrap_or(1)
                    .max(1);
                let end = (at + n).min(bytes.len());
                if io.write_all(&bytes[at..end]).await.is_err() {
                    return;
                }
                at = end;
                i += 1;
            }
        }

        /// What the server side saw: its handshake result, the plaintext, how it ended,
        /// and the most it ever held.
        struct ServerSide {
            handshake: io::Result<()>,
            plaintext: Vec<u8>,
            end: io::Result<()>,
            max_held: usize,
        }

        async fn serve(io: DuplexStream) -> ServerSide {
            let limits = HandshakeLimits::default();
            let mut stream = match accept(fixture().server.clone(), io, limits, &mut ()).await {
                Ok(s) => s,
                Err(e) => {
                    return ServerSide {
                        handshake: Err(e),
                        plaintext: Vec::new(),
                        end: Ok(()),
                        max_held: 0,
                    }
                }
            };
            let mut plaintext = Vec::new();
            let mut buf = vec![0u8; 4096];
            let mut max_held = 0;
            let end = loop {
                let held = stream.partial.len() + stream.plain.len() + stream.out.len();
                max_held = max_held.max(held);
                match stream.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => plaintext.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e),
                }
            };
            ServerSide {
                handshake: Ok(()),
                plaintext,
                end,
                max_held,
            }
        }

        /// The client's whole conversation: handshake (reading the server's flights),
        /// then `app` and close_notify, all written in `splits`-sized pieces, each
        /// byte after the handshake passed through `mangle`.
        async fn client(
            mut io: DuplexStream,
            app: &[u8],
            splits: &[usize],
            mangle: impl Fn(&mut Vec<u8>),
        ) {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(fixture().client.clone(), name).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while conn.is_handshaking() {
                let mut out = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut out).unwrap();
                }
                send_split(&mut io, &out, splits).await;
                if !conn.is_handshaking() {
                    break;
                }
                let n = match io.read(&mut buf).await {
                    Ok(n) if n > 0 => n,
                    _ => return,
                };
                if conn.read_tls(&mut &buf[..n]).is_err() || conn.process_new_packets().is_err() {
                    return;
                }
            }
            // The client's last handshake flight (its Finished) goes out whole.
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            send_split(&mut io, &out, splits).await;
            conn.writer().write_all(app).unwrap();
            conn.send_close_notify();
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            mangle(&mut out);
            send_split(&mut io, &out, splits).await;
            let _ = io.shutdown().await;
            // Take whatever the server says (tickets, an alert) until it hangs up.
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = conn.read_tls(&mut &buf[..n]);
                let _ = conn.process_new_packets();
                let _ = conn.reader().read(&mut buf);
            }
        }

        fn run(
            app: Vec<u8>,
            splits: Vec<usize>,
            mangle: impl Fn(&mut Vec<u8>) + Send + 'static,
        ) -> ServerSide {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (c, s) = duplex(1 << 16);
                let server = tokio::spawn(serve(s));
                let client = tokio::spawn(async move { client(c, &app, &splits, mangle).await });
                let (server, client) =
                    tokio::time::timeout(WAIT, async { tokio::join!(server, client) })
                        .await
                        .expect("no hang");
                client.unwrap();
                server.unwrap()
            })
        }

        /// The most the server may hold between reads (a reader taking 4 KiB at a
        /// time): the start of a record, a record's plaintext not taken yet, and what it
        /// has queued to send (session tickets).
        const HELD_BOUND: usize = 3 * MAX_RECORD;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            /// Split anywhere, the bytes arrive whole and in order, and close_notify is
            /// a clean EOF.
            #[test]
            fn any_split_delivers_the_bytes_exactly(
                app in proptest::collection::vec(any::<u8>(), 0..40_000),
                splits in proptest::collection::vec(1usize..20_000, 1..8),
            ) {
                let sent = app.clone();
                let side = run(app, splits, |_| {});
                prop_assert!(side.handshake.is_ok(), "{:?}", side.handshake);
                prop_assert!(side.end.is_ok(), "{:?}", side.end);
                prop_assert!(side.plaintext == sent, "plaintext differs");
                prop_assert!(side.max_held <= HELD_BOUND, "held {}", side.max_held);
            }

            /// One byte changed after the handshake: an error (the record fails its
            /// MAC, or its header is wrong), or nothing at all where TLS ignores the byte
            /// (a TLS 1.3 record's legacy version), never wrong plaintext, a panic or a
            /// hang.
            #[test]
            fn a_changed_byte_is_an_error_not_bad_data(
                app in proptest::collection::vec(any::<u8>(), 1..20_000),
                splits in proptest::collection::vec(1usize..5_000, 1..6),
                at in any::<proptest::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let sent = app.clone();
                let side = run(app, splits, move |out| {
                    let i = at.index(out.len());
                    out[i] ^= flip;
                });
                // The bad record may arrive with the client's Finished, and then fails
                // the handshake itself. Without an error, every byte must be right.
                prop_assert!(
                    side.handshake.is_err() || side.end.is_err() || side.plaintext == sent,
                    "a changed byte changed the plaintext unnoticed"
                );
                prop_assert!(sent.starts_with(&side.plaintext), "plaintext differs");
                prop_assert!(side.max_held <= HELD_BOUND, "held {}", side.max_held);
            }

            /// Cut anywhere after the handshake: what arrived is a prefix of what was
            /// sent, and the end is an error unless close_notify made it.
            #[test]
            fn a_cut_stream_is_a_prefix_then_an_error(
                app in proptest::collection::vec(any::<u8>(), 1..20_000),
                splits in proptest::collection::vec(1usize..5_000, 1..6),
                keep in any::<proptest::sample::Index>(),
            ) {
                let sent = app.clone();
                let side = run(app, splits, move |out| {
                    let n = keep.index(out.len());
                    out.truncate(n);
                });
                prop_assert!(side.handshake.is_ok());
                prop_assert!(sent.starts_with(&side.plaintext), "plaintext differs");
                if side.end.is_ok() {
                    prop_assert!(side.plaintext == sent, "a clean end before all the data");
                }
            }

            /// Anything at all in place of a ClientHello, split anywhere, then EOF: the
            /// handshake fails with an error, holding no more than its limit.
            #[test]
            fn garbage_handshakes_fail_cleanly(
                prefix in proptest::sample::select(vec![
                    vec![],
                    vec![22u8, 3, 1],
                    vec![22u8, 3, 3, 0x40, 0x00, 1],
                    vec![22u8, 3, 1, 0x00, 0x05, 1, 0xff, 0xff, 0xff],
                    vec![23u8, 3, 3, 0xff, 0xff],
                ]),
                body in proptest::collection::vec(any::<u8>(), 0..40_000),
                splits in proptest::collection::vec(1usize..9_000, 1..6),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let result = rt.block_on(async move {
                    let (mut c, s) = duplex(1 << 16);
                    let limits = HandshakeLimits::default();
                    let server = tokio::spawn(async move {
                        let mut meter = MaxMeter(0);
                        let r = accept(fixture().server.clone(), s, limits, &mut meter).await;
                        (r.map(|_| ()), meter.0)
                    });
                    let mut wire = prefix;
                    wire.extend_from_slice(&body);
                    send_split(&mut c, &wire, &splits).await;
                    let _ = c.shutdown().await;
                    let mut sink = vec![0u8; 4096];
                    let drain = async { while matches!(c.read(&mut sink).await, Ok(n) if n > 0) {} };
                    tokio::time::timeout(WAIT, async { tokio::join!(server, drain).0 })
                        .await
                        .expect("no hang")
                        .unwrap()
                });
                let (r, max) = result;
                prop_assert!(r.is_err(), "garbage completed a handshake");
                let limit = HandshakeLimits::default().max_client_hello + MAX_RECORD;
                prop_assert!(max <= limit, "held {max} > {limit}");
            }
        }

        /// The largest amount a handshake reported holding.
        struct MaxMeter(usize);

        impl Meter for MaxMeter {
            fn held(&mut self, bytes: usize) {
                self.0 = self.0.max(bytes);
            }
        }
    }
}
