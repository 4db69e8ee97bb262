//! Owns: socket options the standard crates do not expose (`TCP_DEFER_ACCEPT`), TCP
//! keepalive with its three timings, and a raw non-blocking send (`send_now`), for client
//! and backend sockets alike.
//! May not touch: anything above a raw socket.

use std::time::Duration;

// The ring, its buffer pool and the kernel's view of our memory need unsafe; each block
// says why it holds.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) mod uring;
#[cfg(not(target_os = "linux"))]
#[path = "uring_off.rs"]
pub(crate) mod uring;

/// `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept()` only once data has
/// arrived (or after about `wait`), so a client that connects and says nothing costs no
/// descriptor, no task and no pending slot meanwhile. Linux only; a no-op elsewhere.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_defer_accept(
    socket: &impl std::os::fd::AsRawFd,
    wait: Duration,
) -> std::io::Result<()> {
    let secs = libc::c_int::try_from(wait.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is a live socket owned by the caller for the whole call, and
    // the option value is a c_int on the stack whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_defer_accept(_: &impl std::os::fd::AsRawFd, _: Duration) -> std::io::Result<()> {
    Ok(())
}

/// TCP keepalive on a connected socket: the first probe after `idle` without traffic,
/// then every 10 s; after 3 unanswered the kernel reports the peer gone and the relay's
/// next read fails. This is how a peer that vanished without a FIN (a phone leaving
/// Wi-Fi) is found when nothing else is sent.
///
/// Each socket's `idle` gets a random share of a tenth more (in whole seconds, the
/// kernel's unit): sockets opened in the same second (a reconnect wave) would otherwise
/// be probed in the same instant, every idle period, and a burst of thousands of probes
/// can overflow a host's packet backlog and get live connections reset.
pub(crate) fn set_keepalive(tcp: &tokio::net::TcpStream, idle: Duration) -> std::io::Result<()> {
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive(idle))
}

/// Sends as much of `buf` as the socket `fd` takes now, without waiting: the count
/// (short of `buf.len()` only when the socket pushed back), or its error. For what an
/// I/O thread sends for its streams as its turn ends (`tls::outbox`), outside any task
/// and so outside tokio's readiness: a socket that pushes back here is written again by
/// its task, which then waits on it as for any write.
///
/// The caller keeps `fd` open for the call: `outbox` removes a parcel, sending it,
/// before the socket it names is closed, all on the thread that owns both.
#[allow(unsafe_code)]
pub(crate) fn send_now(fd: std::os::fd::RawFd, buf: &[u8]) -> std::io::Result<usize> {
    #[cfg(target_os = "linux")]
    const FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    const FLAGS: libc::c_int = libc::MSG_DONTWAIT;
    let mut sent = 0;
    while sent < buf.len() {
        let rest = &buf[sent..];
        // SAFETY: `fd` is a socket open for the whole call (see above), and the pointer
        // and length describe `rest`, a live slice the kernel only reads.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), FLAGS) };
        match usize::try_from(n) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => break,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(sent)
}

fn keepalive(idle: Duration) -> socket2::TcpKeepalive {
    let spread = idle.as_secs() / 10;
    let idle = idle + Duration::from_secs(fastrand::u64(..=spread));
    socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_idle_is_spread_over_a_tenth_more() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            set_keepalive(&tcp, Duration::from_secs(60)).unwrap();
            let idle = socket2::SockRef::from(&tcp).tcp_keepalive_time().unwrap();
            assert!((60..=66).contains(&idle.as_secs()), "{idle:?}");
            seen.insert(idle.as_secs());
        }
        // Spread, not one value for all (odds of fewer than 3 of 7 values in 64 draws:
        // negligible).
        assert!(seen.len() >= 3, "{seen:?}");
    }
}
