//! Owns: socket options the standard crates do not expose (`TCP_DEFER_ACCEPT`) and TCP
//! keepalive with its three timings, for client and backend sockets alike.
//! May not touch: anything above a raw socket.

use std::time::Duration;

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
pub(crate) fn set_keepalive(tcp: &tokio::net::TcpStream, idle: Duration) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&ka)
}
