//! A TCP socket driven by its I/O thread's ring: `AsyncRead` and `AsyncWrite` over the
//! driver's state for it, so the relay and the TLS stream use it as they use tokio's.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{keep, Driver, Recv, Sock, DRIVER, WRITE_MAX};

/// A socket on this thread's ring. Made by [`UringTcp::adopt`]; usable only on the
/// thread that made it (its tasks never move: each I/O thread runs its own runtime).
pub(crate) struct UringTcp {
    driver: u32,
    slot: usize,
}

impl UringTcp {
    /// Takes `tcp` off tokio's epoll and onto this thread's ring (see [`super::here`]).
    pub(crate) fn adopt(tcp: tokio::net::TcpStream) -> io::Result<Self> {
        if !super::here() {
            return Err(io::Error::other("io_uring: no ring on this thread"));
        }
        let std = tcp.into_std()?;
        // io_uring waits on a blocking socket by polling it; a non-blocking one may be
        // answered EAGAIN instead of waited on.
        std.set_nonblocking(false)?;
        let fd = OwnedFd::from(std);
        DRIVER.with_borrow_mut(|d| match d {
            Some(d) => Ok(Self {
                driver: d.id,
                slot: d.insert(fd),
            }),
            None => Err(io::Error::other("io_uring: no ring on this thread")),
        })
    }

    /// Runs `f` on this socket's state on its driver.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Driver, usize) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let (driver, slot) = (self.driver, self.slot);
        DRIVER.with_borrow_mut(|d| match d {
            Some(d) if d.id == driver => f(d, slot),
            _ => Poll::Ready(Err(io::Error::other("io_uring socket used off its thread"))),
        })
    }

    /// Passes a peer's reset on: linger 0, so the close sends RST, and its sends are
    /// cancelled rather than finished.
    pub(crate) fn reset(&mut self) {
        let _ = self.with(|d, slot| {
            if let Some(s) = sock(d, slot) {
                let _ = socket2::SockRef::from(&s.fd).set_linger(Some(Duration::ZERO));
                s.reset = true;
            }
            Poll::Ready(Ok(()))
        });
    }
}

fn sock(d: &mut Driver, slot: usize) -> Option<&mut Sock> {
    d.socks.get_mut(slot).and_then(Option::as_mut)
}

fn os_err(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl AsyncRead for UringTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|d, slot| {
            // The socket's state and the pool are borrowed apart.
            let Some(s) = d.socks.get_mut(slot).and_then(Option::as_mut) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if s.kept_pos < s.kept.len() {
                let n = (s.kept.len() - s.kept_pos).min(buf.remaining());
                buf.put_slice(&s.kept[s.kept_pos..s.kept_pos + n]);
                s.kept_pos += n;
                if s.kept_pos == s.kept.len() {
                    s.kept = Vec::new();
                    s.kept_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some((bid, from, to)) = s.got.take() {
                let n = (to - from).min(buf.remaining());
                let data = d.bufs.get(bid, from, to);
                buf.put_slice(&data[..n]);
                if n < data.len() {
                    s.kept.extend_from_slice(&data[n..]);
                }
                d.give_back(bid);
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = s.read_err {
                return Poll::Ready(Err(os_err(e)));
            }
            if s.eof {
                return Poll::Ready(Ok(()));
            }
            keep(&mut s.reader, cx.waker());
            if s.recv == Recv::Idle {
                d.arm_recv(slot);
            }
            Poll::Pending
        })
    }
}

impl AsyncWrite for UringTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.with(|d, slot| {
            let spare = d.spare.pop();
            let Some(s) = sock(d, slot) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if let Some(e) = s.write_err {
                return Poll::Ready(Err(os_err(e)));
            }
            if s.unsent() >= WRITE_MAX {
                keep(&mut s.writer, cx.waker());
                if let Some(b) = spare {
                    d.spare.push(b);
                }
                return Poll::Pending;
            }
            let n = buf.len().min(WRITE_MAX - s.unsent());
            if s.sending.is_empty() {
                if let Some(b) = spare {
                    s.sending = b;
                }
                s.sending.extend_from_slice(&buf[..n]);
                d.send_next(slot);
            } else {
                s.queued.extend_from_slice(&buf[..n]);
                if let Some(b) = spare {
                    d.spare.push(b);
                }
            }
            Poll::Ready(Ok(n))
        })
    }

    /// Bytes written are the ring's to send, as they would be the kernel's after a
    /// `send`: nothing to wait for.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Waits for every byte written to be sent, then shuts the write side (FIN).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|d, slot| {
            let Some(s) = sock(d, slot) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            if let Some(e) = s.write_err {
                return Poll::Ready(Err(os_err(e)));
            }
            if s.unsent() > 0 {
                keep(&mut s.writer, cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(socket2::SockRef::from(&s.fd).shutdown(std::net::Shutdown::Write))
        })
    }
}

impl Drop for UringTcp {
    fn drop(&mut self) {
        let (driver, slot) = (self.driver, self.slot);
        // The thread's ring may be gone already if the thread is ending.
        let _ = DRIVER.try_with(|d| {
            let Ok(mut d) = d.try_borrow_mut() else {
                return;
            };
            let Some(d) = d.as_mut().filter(|d| d.id == driver) else {
                return;
            };
            let Some(s) = sock(d, slot) else { return };
            s.dropped = true;
            s.reader = None;
            s.writer = None;
            let (got, armed, reset, sending) =
                (s.got.take(), s.recv == Recv::Armed, s.reset, s.unsent() > 0);
            if let Some((bid, ..)) = got {
                d.give_back(bid);
            }
            // A receive waits until data comes, so it is cancelled; sends finish (as the
            // kernel sends what a closed socket had buffered), within a grace, unless
            // passing a reset.
            if reset && (armed || sending) {
                d.cancel(slot, true);
            } else {
                if armed {
                    d.cancel(slot, false);
                }
                if sending {
                    d.cancel_after_grace(slot);
                }
            }
            d.release_if_done(slot);
        });
    }
}
