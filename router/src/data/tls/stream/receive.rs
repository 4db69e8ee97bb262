//! The record reader: ciphertext read into the thread's scratch buffer, bounded by what
//! the connection may hold, and rustls run over it; plaintext goes to the reader, and
//! only the start of a record still arriving is kept.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::unbuffered::{ConnectionState, ReadTraffic, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::send::{close_notify, encode, seal, ServerData};
use super::{TlsStream, MAX_RECORD};

/// What to do once rustls can take application data.
pub(super) enum Then<'a> {
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

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Reads ciphertext from the socket into `scratch`, after the `partial` record, taking
    /// no more than `cap` bytes in all; how many bytes of `scratch` are input now.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        cap: usize,
    ) -> Poll<io::Result<usize>> {
        let saved = self.partial.len();
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
        Poll::Ready(Ok(saved + n))
    }

    /// Processes every whole record of `input`; plaintext goes to `dst` as far as it
    /// fits, the rest into `plain`. What is left (the start of a record) is kept.
    pub(super) fn process(
        &mut self,
        input: &mut [u8],
        dst: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<()> {
        let discard = self.pump(input, dst, Then::Nothing)?;
        let rest = &input[discard..];
        self.partial = if rest.is_empty() {
            Vec::new()
        } else {
            rest.to_vec()
        };
        Ok(())
    }

    /// Reads ciphertext from the socket and processes every whole record, for a reader
    /// whose buffer is `dst`.
    pub(super) fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Read no more than the reader asked for plus a record, so what it has not
        // taken (kept in `plain`) is at most one record: a connection whose reader is
        // stalled holds that much, not a whole scratch buffer's worth.
        let cap = scratch
            .len()
            .min(self.partial.len() + dst.remaining() + MAX_RECORD);
        let used = ready!(self.poll_fill(cx, scratch, cap))?;
        Poll::Ready(self.process(&mut scratch[..used], Some(dst)))
    }

    /// Runs rustls over the `partial` record (no new input): to reach the state where it
    /// takes application data, then does `then`.
    pub(super) fn pump_partial(&mut self, then: Then<'_>) -> io::Result<()> {
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
                    let (records_discard, failed) =
                        read_records(&mut r, &mut self.plain, self.plain_pos, dst.as_deref_mut());
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

/// Hands every record rustls decrypted to the reader (see [`deliver`]). Returns the input
/// the records have done with, besides the status's own count, and the error that
/// stopped them, if one did.
fn read_records(
    r: &mut ReadTraffic<'_, '_, ServerData>,
    plain: &mut Vec<u8>,
    plain_pos: usize,
    mut dst: Option<&mut ReadBuf<'_>>,
) -> (usize, Option<rustls::Error>) {
    // Always 0 while rustls decrypts out of place (0.23), but the API says it must be
    // added, and a rustls that decrypts in place will count the record's bytes here.
    let mut records_discard = 0;
    while let Some(record) = r.next_record() {
        match record {
            Ok(record) => {
                records_discard += record.discard;
                deliver(plain, plain_pos, dst.as_deref_mut(), record.payload);
            }
            Err(e) => return (records_discard, Some(e)),
        }
    }
    (records_discard, None)
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
