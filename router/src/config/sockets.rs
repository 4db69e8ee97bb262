//! Sockets: how long a relayed socket may live and how a dead peer is noticed (TCP
//! keepalive, idle and age limits, pings), and how long a close may take.

use std::time::Duration;

use clap::Args;

use super::values::Span;
use super::ConfigError;
use crate::data::relay::pings::Ping;
use crate::data::shared::limits::SocketTimers;

/// The relayed sockets' flags. Their defaults are [`SocketArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "Sockets")]
pub struct SocketArgs {
    /// Once one side of a socket has closed, how long the other side has to finish.
    #[arg(long, env = "WSROUTER_CLOSE_TIMEOUT", default_value_t = SocketArgs::default().close_timeout)]
    pub close_timeout: Span,
    /// TCP keepalive on client and backend sockets: idle time before the first probe (then every 10s, 3 probes); 0s: off.
    #[arg(long, env = "WSROUTER_TCP_KEEPALIVE", default_value_t = SocketArgs::default().tcp_keepalive)]
    pub tcp_keepalive: Span,
    /// Close (1001 both ways) a socket that carried no data frame either way for this long; pings do not count. Default: never.
    #[arg(long, env = "WSROUTER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close (1012, at a frame boundary) a socket this old, so clients rebalance. Default: never.
    #[arg(long, env = "WSROUTER_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    pub max_connection_age: Option<Duration>,
    /// Each socket's age limit gets up to this much more, at random, so a fleet does not reconnect at once [default: a tenth of --max-connection-age]
    #[arg(long, env = "WSROUTER_MAX_CONNECTION_AGE_JITTER", value_parser = humantime::parse_duration)]
    pub max_connection_age_jitter: Option<Duration>,
    /// Ping each client this often (at a frame boundary; its pong is not passed on). Default: off.
    #[arg(long, env = "WSROUTER_PING_INTERVAL", value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Ping each backend socket this often, likewise. Default: off.
    #[arg(long, env = "WSROUTER_BACKEND_PING_INTERVAL", value_parser = humantime::parse_duration)]
    pub backend_ping_interval: Option<Duration>,
    /// A peer that does not answer a ping within this is gone: the other side gets 1001.
    #[arg(long, env = "WSROUTER_PING_TIMEOUT", default_value_t = SocketArgs::default().ping_timeout)]
    pub ping_timeout: Span,
    /// Relay HTTP/1.1 WebSockets over io_uring instead of epoll, one ring per I/O thread (Linux only; experimental: see the README's performance section).
    #[arg(long, env = "WSROUTER_IO_URING")]
    pub io_uring: bool,
}

impl Default for SocketArgs {
    /// The relayed sockets' defaults: the one place they are written (`--help` shows
    /// these); the limits and pings are off.
    fn default() -> Self {
        Self {
            close_timeout: Span::secs(5),
            tcp_keepalive: Span::secs(60),
            idle_timeout: None,
            max_connection_age: None,
            max_connection_age_jitter: None,
            ping_interval: None,
            backend_ping_interval: None,
            ping_timeout: Span::secs(10),
            io_uring: false,
        }
    }
}

impl SocketArgs {
    pub(crate) fn close_timeout(&self) -> Duration {
        self.close_timeout.get()
    }

    /// The timers, checked: a zero duration that would mean "at once" is refused (the
    /// flag is left out to turn a limit off), but `--tcp-keepalive 0s`, which is "off".
    pub(crate) fn timers(&self) -> Result<SocketTimers, ConfigError> {
        let nonzero = |d: Option<Duration>, flag: &'static str| match d {
            Some(d) if d.is_zero() => Err(ConfigError::ZeroDuration(flag)),
            d => Ok(d),
        };
        let ping_timeout = self.ping_timeout.get();
        let ping = |interval: Option<Duration>, flag| {
            Ok::<_, ConfigError>(nonzero(interval, flag)?.map(|interval| Ping {
                interval,
                timeout: ping_timeout,
            }))
        };
        if ping_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("--ping-timeout"));
        }
        let max_age = nonzero(self.max_connection_age, "--max-connection-age")?;
        let keepalive = self.tcp_keepalive.get();
        Ok(SocketTimers {
            tcp_keepalive: (!keepalive.is_zero()).then_some(keepalive),
            idle_timeout: nonzero(self.idle_timeout, "--idle-timeout")?,
            max_age,
            max_age_jitter: self
                .max_connection_age_jitter
                .or(max_age.map(|a| a / 10))
                .unwrap_or_default(),
            client_ping: ping(self.ping_interval, "--ping-interval")?,
            backend_ping: ping(self.backend_ping_interval, "--backend-ping-interval")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shared::limits::Limits;

    #[test]
    fn the_defaults_are_the_data_paths() {
        let d = SocketArgs::default();
        let l = Limits::default();
        assert_eq!(
            format!("{:?}", d.timers().unwrap()),
            format!("{:?}", l.timers)
        );
        assert_eq!(d.close_timeout(), l.close_timeout);
    }

    #[test]
    fn flags_become_the_timers() {
        let secs = |s| Some(Duration::from_secs(s));
        let a = SocketArgs {
            close_timeout: Span::secs(2),
            tcp_keepalive: Span::secs(0),
            idle_timeout: secs(300),
            max_connection_age: secs(3600),
            max_connection_age_jitter: None,
            ping_interval: secs(30),
            backend_ping_interval: secs(40),
            ping_timeout: Span::secs(7),
            io_uring: false,
        };
        assert_eq!(a.close_timeout(), Duration::from_secs(2));
        let t = a.timers().unwrap();
        assert_eq!(t.tcp_keepalive, None, "0s turns keepalive off");
        assert_eq!((t.idle_timeout, t.max_age), (secs(300), secs(3600)));
        assert_eq!(t.max_age_jitter, Duration::from_secs(360), "a tenth");
        let ping = |p: Option<Ping>| p.map(|p| (p.interval, p.timeout));
        assert_eq!(
            ping(t.client_ping),
            Some((Duration::from_secs(30), Duration::from_secs(7)))
        );
        assert_eq!(
            ping(t.backend_ping),
            Some((Duration::from_secs(40), Duration::from_secs(7)))
        );
        let t = SocketArgs {
            max_connection_age_jitter: secs(5),
            ..a
        }
        .timers()
        .unwrap();
        assert_eq!(t.max_age_jitter, Duration::from_secs(5));
    }

    #[test]
    fn a_zero_that_would_mean_at_once_is_refused() {
        let zero = Some(Duration::ZERO);
        let flag = |a: SocketArgs| match a.timers() {
            Err(ConfigError::ZeroDuration(flag)) => flag,
            other => panic!("{other:?}"),
        };
        let d = SocketArgs::default;
        assert_eq!(
            flag(SocketArgs {
                ping_timeout: Span::secs(0),
                ..d()
            }),
            "--ping-timeout"
        );
        for (a, want) in [
            (
                SocketArgs {
                    idle_timeout: zero,
                    ..d()
                },
                "--idle-timeout",
            ),
            (
                SocketArgs {
                    max_connection_age: zero,
                    ..d()
                },
                "--max-connection-age",
            ),
            (
                SocketArgs {
                    ping_interval: zero,
                    ..d()
                },
                "--ping-interval",
            ),
            (
                SocketArgs {
                    backend_ping_interval: zero,
                    ..d()
                },
                "--backend-ping-interval",
            ),
        ] {
            assert_eq!(flag(a), want);
        }
    }
}
