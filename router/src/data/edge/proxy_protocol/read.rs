//! Taking a PROXY header off the socket, exactly, and no byte of what follows it.

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{parse, Proxied, ProxyHeaderError, MAX_HEADER};

/// Why [`read_header`] got no header.
#[derive(Debug, Error)]
pub(crate) enum ReadError {
    #[error("reading the PROXY header")]
    Io(#[source] std::io::Error),
    #[error("connection closed inside the PROXY header")]
    Closed,
    #[error(transparent)]
    Header(#[from] ProxyHeaderError),
}

impl ReadError {
    /// Metric label: "io", "truncated", or the header's own label.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Closed => "truncated",
            Self::Header(e) => e.as_str(),
        }
    }
}

/// Takes the PROXY header off `tcp`, returning what it says and its length, and leaves
/// every byte after it (the ClientHello) unread.
///
/// A generic `AsyncRead` cannot stop at the end of a v1 line it has not seen yet, hence
/// the socket: `peek` to see what has arrived, then `read_exact` only what is header. A
/// peek that ends inside the header has shown only header bytes (a v1 line ends at its
/// first CRLF, a v2 header at its declared length), so they are consumed before waiting
/// again: every turn of the loop consumes bytes or awaits new ones, never spins on the
/// same ones. `parse` bounds the total (V1_MAX, MAX_HEADER). No timeout here: the caller
/// drops the future at its handshake deadline.
pub(crate) async fn read_header(tcp: &mut TcpStream) -> Result<(Proxied, usize), ReadError> {
    let mut buf = vec![0; MAX_HEADER];
    // Header bytes already taken off the socket; they are `buf[..consumed]`.
    let mut consumed = 0;
    loop {
        // `parse` returns TooLong before either kind of header fills `buf`, so there is
        // room to peek into.
        let peeked = tcp
            .peek(&mut buf[consumed..])
            .await
            .map_err(ReadError::Io)?;
        if peeked == 0 {
            return Err(ReadError::Closed);
        }
        let seen = consumed + peeked;
        let parsed = parse(&buf[..seen])?;
        // Up to the header's end if it is here, else all that was peeked. `parse` found no
        // header in `buf[..consumed]`, so the end lies past `consumed`.
        let end = parsed.map_or(seen, |(len, _)| len);
        tcp.read_exact(&mut buf[consumed..end])
            .await
            .map_err(ReadError::Io)?;
        consumed = end;
        if let Some((len, proxied)) = parsed {
            return Ok((proxied, len));
        }
    }
}
