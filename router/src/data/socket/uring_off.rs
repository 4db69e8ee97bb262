//! Where io_uring does not exist: `--io-uring` fails at start, and no socket is ever
//! adopted, so [`UringTcp`] has no value.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) fn probe() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring is Linux only",
    ))
}

pub(crate) fn enable_on_this_thread() -> io::Result<i32> {
    probe().map(|()| 0)
}

pub(crate) fn here() -> bool {
    false
}

pub(crate) fn end_of_turn() {}

pub(crate) async fn reap_when_ready(_: i32) {}

/// Never made: no thread has a ring.
pub(crate) enum UringTcp {}

impl UringTcp {
    pub(crate) fn adopt(_: tokio::net::TcpStream) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring is Linux only",
        ))
    }

    pub(crate) fn reset(&mut self) {
        match *self {}
    }
}

impl AsyncRead for UringTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match *self {}
    }
}

impl AsyncWrite for UringTcp {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        match *self {}
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }
}
