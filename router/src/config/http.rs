//! HTTP: the plain requests forwarded beside the sockets (SignalR negotiate, Socket.IO
//! polling, Server-Sent Events): how long a body may stall, how large an upload may be,
//! and the keep-alive pool of connections to each pod.

use std::time::Duration;

use clap::Args;

use super::values::{Size, Span};
use super::ConfigError;
use crate::data::shared::limits::{HttpLimits, HttpTimers};
use crate::data::upstream::pool::PoolConfig;

/// The HTTP forward path's flags. Their defaults are [`HttpArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Longest a forwarded body may go without data either way, and a client may leave a response unread; 0s: off. Unset: 60s, but a text/event-stream response may stay quiet for ever [default: 60s]
    #[arg(long, env = "WSROUTER_HTTP_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Option<Duration>,
    /// Largest request body forwarded (Content-Length over it: 413 before the backend is asked; a longer stream is cut with 413).
    #[arg(long, env = "WSROUTER_MAX_REQUEST_BODY", default_value_t = HttpArgs::default().max_request_body)]
    pub max_request_body: Size,
    /// Requests one HTTP/1.1 client connection carries; the last is answered with Connection: close.
    #[arg(long, env = "WSROUTER_MAX_REQUESTS_PER_CONNECTION", default_value_t = HttpArgs::default().max_requests_per_connection)]
    pub max_requests_per_connection: u32,
    /// Idle keep-alive connections kept to each pod, per I/O thread; 0: a connection per request.
    #[arg(long, env = "WSROUTER_BACKEND_POOL_IDLE", default_value_t = HttpArgs::default().backend_pool_idle)]
    pub backend_pool_idle: usize,
    /// An idle pooled connection unused this long is closed.
    #[arg(long, env = "WSROUTER_BACKEND_POOL_IDLE_TIMEOUT", default_value_t = HttpArgs::default().backend_pool_idle_timeout)]
    pub backend_pool_idle_timeout: Span,
    /// Requests one pooled connection carries before it is closed.
    #[arg(long, env = "WSROUTER_BACKEND_POOL_MAX_REQUESTS", default_value_t = HttpArgs::default().backend_pool_max_requests)]
    pub backend_pool_max_requests: u32,
}

/// The idle timeout when `--http-idle-timeout` is not given.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

impl Default for HttpArgs {
    /// The HTTP path's defaults: the one place they are written (`--help` shows these).
    fn default() -> Self {
        let pool = PoolConfig::default();
        Self {
            http_idle_timeout: None,
            max_request_body: Size::mib(10),
            max_requests_per_connection: HttpLimits::default().max_requests_per_conn,
            backend_pool_idle: pool.max_idle_per_pod,
            backend_pool_idle_timeout: Span(pool.idle_timeout),
            backend_pool_max_requests: pool.max_requests_per_conn,
        }
    }
}

impl HttpArgs {
    /// The HTTP path's limits. `tcp_keepalive` is the sockets' (`--tcp-keepalive`), for
    /// pooled connections too.
    pub(crate) fn limits(
        &self,
        tcp_keepalive: Option<Duration>,
    ) -> Result<HttpLimits, ConfigError> {
        if self.max_request_body.get() == 0 {
            return Err(ConfigError::ZeroSize("--max-request-body"));
        }
        if self.max_requests_per_connection == 0 {
            return Err(ConfigError::ZeroCount("--max-requests-per-connection"));
        }
        if self.backend_pool_max_requests == 0 {
            return Err(ConfigError::ZeroCount("--backend-pool-max-requests"));
        }
        if self.backend_pool_idle_timeout.get().is_zero() {
            return Err(ConfigError::ZeroDuration("--backend-pool-idle-timeout"));
        }
        let timers = match self.http_idle_timeout {
            None => HttpTimers {
                idle: Some(DEFAULT_IDLE),
                event_streams_idle: false,
            },
            Some(d) if d.is_zero() => HttpTimers {
                idle: None,
                event_streams_idle: false,
            },
            Some(d) => HttpTimers {
                idle: Some(d),
                event_streams_idle: true,
            },
        };
        Ok(HttpLimits {
            timers,
            max_request_body: self.max_request_body.get() as u64,
            max_requests_per_conn: self.max_requests_per_connection,
            pool: PoolConfig {
                max_idle_per_pod: self.backend_pool_idle,
                idle_timeout: self.backend_pool_idle_timeout.get(),
                max_requests_per_conn: self.backend_pool_max_requests,
                tcp_keepalive,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shared::limits::Limits;

    fn limits(a: &HttpArgs) -> HttpLimits {
        a.limits(Some(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_defaults_are_the_data_paths() {
        assert_eq!(
            format!("{:?}", limits(&HttpArgs::default())),
            format!("{:?}", Limits::default().http)
        );
    }

    #[test]
    fn the_idle_timeout_spares_event_streams_only_when_unset() {
        let unset = limits(&HttpArgs::default()).timers;
        assert_eq!(
            (unset.idle, unset.event_streams_idle),
            (Some(DEFAULT_IDLE), false)
        );
        let set = limits(&HttpArgs {
            http_idle_timeout: Some(Duration::from_secs(5)),
            ..HttpArgs::default()
        })
        .timers;
        assert_eq!(
            (set.idle, set.event_streams_idle),
            (Some(Duration::from_secs(5)), true)
        );
        let off = limits(&HttpArgs {
            http_idle_timeout: Some(Duration::ZERO),
            ..HttpArgs::default()
        })
        .timers;
        assert_eq!(off.idle, None);
    }

    #[test]
    fn zeros_that_would_refuse_everything_are_refused() {
        let bad = |f: fn(&mut HttpArgs)| {
            let mut a = HttpArgs::default();
            f(&mut a);
            a.limits(None).map(|_| ()).unwrap_err().to_string()
        };
        assert!(bad(|a| a.max_request_body = Size(0)).contains("--max-request-body"));
        // 0 would answer every first request with `Connection: close`, as 1 does: asked
        // for as 1, so the value says what it does.
        assert!(
            bad(|a| a.max_requests_per_connection = 0).contains("--max-requests-per-connection")
        );
        assert!(bad(|a| a.backend_pool_max_requests = 0).contains("--backend-pool-max-requests"));
        assert!(bad(|a| a.backend_pool_idle_timeout = Span::secs(0))
            .contains("--backend-pool-idle-timeout"));
    }
}
