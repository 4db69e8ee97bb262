//! Accept loops' error handling, shared by every listener: the data path's and the
//! admin's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accept errors (out of descriptors, mostly) back off exponentially instead of
/// spinning, and are logged at most once per interval with a count of the rest.
pub(crate) struct AcceptErrors {
    what: &'static str,
    backoff: Duration,
    last_log: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(5);

    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            backoff: Self::FIRST,
            last_log: None,
            unlogged: 0,
        }
    }

    /// The listener's next connection, errors backed off and logged on the way; `None`
    /// once `stop` is cancelled.
    pub(crate) async fn next(
        &mut self,
        listener: &TcpListener,
        stop: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                r = listener.accept() => match r {
                    Ok(c) => {
                        self.accepted();
                        return Some(c);
                    }
                    Err(e) => {
                        self.failed(e).await;
                    }
                },
            }
        }
    }

    fn accepted(&mut self) {
        self.backoff = Self::FIRST;
    }

    /// Logs (at most once per interval) and waits out the backoff. Returns whether it
    /// logged.
    async fn failed(&mut self, e: std::io::Error) -> bool {
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        let log = self.last_log.is_none_or(|t| now - t >= Self::LOG_EVERY);
        if log {
            tracing::warn!(listener = self.what, error = %e, errors = self.unlogged, backoff = ?self.backoff, "accept failed; backing off");
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Self::MAX);
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors for a minute: the waits grow to a second each, and the log
    /// gets one line per five seconds, not one per retry.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_and_log_at_a_bounded_rate() {
        let mut errors = AcceptErrors::new("test");
        let start = tokio::time::Instant::now();
        let (mut tries, mut logged) = (0, 0);
        while start.elapsed() < Duration::from_secs(60) {
            let emfile = std::io::Error::from_raw_os_error(24);
            logged += u32::from(errors.failed(emfile).await);
            tries += 1;
        }
        assert!(tries < 75, "{tries} retries in a minute");
        assert!(
            (12..=13).contains(&logged),
            "{logged} log lines in a minute"
        );
        assert_eq!(errors.backoff, AcceptErrors::MAX);
        errors.accepted();
        assert_eq!(errors.backoff, AcceptErrors::FIRST);
    }
}
