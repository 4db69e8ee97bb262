//! Accepting a TLS connection: the handshake, driven to its end, and its bounds (the
//! ClientHello's declared size, and what a handshake message may make the connection
//! hold).

use std::io;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Meter, TlsStream, MAX_RECORD, SCRATCH};

/// The default for `--max-client-hello`: room for post-quantum key shares (X25519MLKEM768
/// adds 1,216 bytes) and long SNI/ALPN lists, a quarter of what TLS allows.
pub(crate) const DEFAULT_MAX_CLIENT_HELLO: usize = 16 << 10;
/// TLS alert `illegal_parameter`, what OpenSSL sends for an excessive message size.
const ALERT_ILLEGAL_PARAMETER: u8 = 47;

/// What one handshake may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandshakeLimits {
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

/// Completes a TLS handshake on `tcp` with `config`. Bytes the client sent after its
/// Finished (the HTTP request, usually) are kept for the first read. `meter` hears how
/// many bytes the handshake holds as that changes.
pub(crate) async fn accept<S>(
    config: Arc<ServerConfig>,
    tcp: S,
    limits: HandshakeLimits,
    meter: &mut impl Meter,
) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream::new(tcp, conn);
    std::future::poll_fn(|cx| stream.poll_handshake(cx, limits, meter)).await?;
    meter.held(0);
    Ok(stream)
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
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
            let received = SCRATCH.with_borrow_mut(|s| self.poll_receive_handshake(cx, s, limits));
            if let Err(e) = ready!(received) {
                self.stash(e);
                continue;
            }
            meter.held(self.partial.capacity());
        }
    }

    /// Reads and processes what the client sent during the handshake. A handshake
    /// message may not make the connection hold more than the ClientHello limit plus one
    /// record.
    fn poll_receive_handshake(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        limits: HandshakeLimits,
    ) -> Poll<io::Result<()>> {
        let cap = (limits.max_client_hello + MAX_RECORD).min(scratch.len());
        let used = ready!(self.poll_fill(cx, scratch, cap))?;
        self.check_client_hello(&scratch[..used], limits)?;
        Poll::Ready(self.process(&mut scratch[..used], None))
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
}
