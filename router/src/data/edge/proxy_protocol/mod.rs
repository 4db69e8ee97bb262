//! PROXY protocol headers (HAProxy's doc/proxy-protocol.txt, v1 text and v2 binary) on the
//! listener: a load balancer in front of the router prepends one header to each TCP
//! connection naming the real client, and the TLS handshake starts on the very next byte.
//!
//! [`parse`] is pure and incremental ("not all here yet" until the header is whole), so it
//! is tested on every split of the bytes; [`read_header`] only moves bytes, taking exactly
//! the header off the socket and leaving the ClientHello to the TLS layer.
//!
//! Here: what a header says, why one is refused, and [`parse`], which tells the two
//! versions apart by their first byte; `v1` and `v2` parse each, and `read` takes a
//! header off the socket.

mod read;
mod v1;
mod v2;

use std::net::SocketAddr;

use thiserror::Error;

pub(crate) use read::{read_header, ReadError};

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// v2 LOCAL (a health check by the proxy itself), v2 PROXY with family UNSPEC, or v1
    /// `PROXY UNKNOWN`: serve the connection as from its direct peer.
    Local,
    /// The client's address (source) and the address it connected to (destination).
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// The largest v2 header we accept: the 16-byte fixed part plus the address block and
/// TLVs. The spec allows 16 + 65535; real senders put at most a few hundred bytes there
/// (addresses, ALPN, SNI, TLS details), and the bound caps what a peer can make us hold.
pub const MAX_HEADER: usize = 4096;
/// The longest v1 line the spec allows, CRLF included: `PROXY UNKNOWN` followed by two
/// full-length IPv6 addresses and two 5-digit ports.
pub const V1_MAX: usize = 107;

/// Why a header was refused. The connection is dropped: the spec says any header that
/// does not match exactly must abort it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol signature")]
    Signature,
    #[error("PROXY v2 header of a version other than 2")]
    Version,
    #[error("PROXY v2 command neither LOCAL nor PROXY")]
    Command,
    #[error("PROXY header for an address family or transport other than TCP over IP")]
    Family,
    #[error("PROXY v2 header too short for its address family")]
    Length,
    #[error("PROXY header longer than accepted")]
    TooLong,
    #[error("malformed PROXY v1 line")]
    V1Syntax,
}

impl ProxyHeaderError {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Version => "version",
            Self::Command => "command",
            Self::Family => "family",
            Self::Length => "length",
            Self::TooLong => "too_long",
            Self::V1Syntax => "v1_syntax",
        }
    }
}

/// Parses a header at the start of `buf`: Ok(None) = not all here yet (read more);
/// Ok(Some((len, proxied))) = the header is the first `len` bytes.
///
/// Errors are reported as soon as the bytes decide them (the spec asks to abort early so
/// the sender notices), so a client that speaks TLS straight away fails on its first byte.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Proxied)>, ProxyHeaderError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => v1::parse(buf),
        Some(b'\r') => v2::parse(buf),
        Some(_) => Err(ProxyHeaderError::Signature),
    }
}

/// Whether `buf` agrees with `signature` as far as both go: a mismatch is final, a short
/// match means "read more".
fn agrees(buf: &[u8], signature: &[u8]) -> bool {
    buf.iter().zip(signature).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests;
