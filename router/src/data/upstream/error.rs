//! Why a backend gave no usable upgrade, and which backend that was.

use std::io;

use thiserror::Error;

/// The backend an upgrade goes to: its ordinal (for logs and errors) and its address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The backend set of the pod (its metrics label).
    pub set: &'static str,
    pub ordinal: u32,
    /// A pod's `IP:PORT`, or a `HOST:PORT` from a list or template.
    pub addr: &'a str,
}

/// A backend that did not complete the upgrade, or was not asked. Errors name the
/// backend's address for the log; the client's answer does not repeat it.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("backend {ordinal} ({addr}) unreachable")]
    Unreachable {
        ordinal: u32,
        addr: Box<str>,
        #[source]
        source: io::Error,
    },
    #[error("backend {ordinal} ({addr}) did not answer in time")]
    Timeout { ordinal: u32, addr: Box<str> },
    #[error("backend {ordinal} ({addr}) failed during the exchange")]
    Protocol {
        ordinal: u32,
        addr: Box<str>,
        #[source]
        source: hyper::Error,
    },
    #[error("backend {ordinal} ({addr}) answered 101 without a WebSocket upgrade")]
    BadUpgrade { ordinal: u32, addr: Box<str> },
    #[error("backend {ordinal} ({addr}) answered 101 with a bad handshake: {why}")]
    BadHandshake {
        ordinal: u32,
        addr: Box<str>,
        why: BadHandshake,
    },
    #[error("backend {ordinal} keeps failing: its circuit is open")]
    CircuitOpen { ordinal: u32, retry_after: u32 },
}

/// What was wrong with a backend's 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadHandshake {
    #[error("no Upgrade: websocket")]
    Upgrade,
    #[error("no Connection: upgrade")]
    Connection,
    #[error("Sec-WebSocket-Accept missing or not the one for the key sent")]
    Accept,
    #[error("a subprotocol the client did not offer")]
    Protocol,
    #[error("an extension the client did not offer")]
    Extension,
}

impl BadHandshake {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::Connection => "connection",
            Self::Accept => "accept",
            Self::Protocol => "protocol",
            Self::Extension => "extension",
        }
    }
}

/// The errors of one target, each naming it.
impl Target<'_> {
    pub(crate) fn unreachable(self, source: io::Error) -> UpstreamError {
        UpstreamError::Unreachable {
            ordinal: self.ordinal,
            addr: self.addr.into(),
            source,
        }
    }

    pub(crate) fn timeout(self) -> UpstreamError {
        UpstreamError::Timeout {
            ordinal: self.ordinal,
            addr: self.addr.into(),
        }
    }

    pub(crate) fn protocol(self, source: hyper::Error) -> UpstreamError {
        UpstreamError::Protocol {
            ordinal: self.ordinal,
            addr: self.addr.into(),
            source,
        }
    }

    pub(crate) fn bad_upgrade(self) -> UpstreamError {
        UpstreamError::BadUpgrade {
            ordinal: self.ordinal,
            addr: self.addr.into(),
        }
    }

    pub(crate) fn bad_handshake(self, why: BadHandshake) -> UpstreamError {
        UpstreamError::BadHandshake {
            ordinal: self.ordinal,
            addr: self.addr.into(),
            why,
        }
    }

    pub(crate) fn circuit_open(self, retry_after: u32) -> UpstreamError {
        UpstreamError::CircuitOpen {
            ordinal: self.ordinal,
            retry_after,
        }
    }
}
