//! The data path's limits and timeouts: what `config` validates from the command line
//! and every connection reads.

use std::time::Duration;

use crate::data::admission::policy::PolicyConfig;
use crate::data::admission::pools::AdmissionConfig;
use crate::data::relay::pings::Ping;
use crate::data::relay::pump::RelayConfig;
use crate::data::upstream::breaker::BreakerConfig;
use crate::data::upstream::pool::PoolConfig;

/// Limits and timeouts of the data path.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub backend_timeout: Duration,
    pub close_timeout: Duration,
    pub max_connections: usize,
    /// 0: no per-source cap.
    pub max_connections_per_ip: usize,
    pub max_pending: usize,
    pub max_pending_bytes: usize,
    pub max_pending_per_ip: usize,
    pub max_client_hello: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub breaker: BreakerConfig,
    /// The plain requests forwarded beside the sockets.
    pub http: HttpLimits,
    pub policy: PolicyConfig,
    pub timers: SocketTimers,
    /// An I/O thread whose event loop has not turned for this long is stalled:
    /// `/healthz` fails.
    pub stall_threshold: Duration,
    /// Every connection starts with a PROXY protocol header (from a trusted proxy).
    pub proxy_protocol: ProxyProtocol,
    /// Relayed HTTP/1.1 sockets run on each I/O thread's io_uring (`--io-uring`).
    pub io_uring: bool,
}

/// `--proxy-protocol`: whether connections begin with a PROXY protocol header (v1 or
/// v2) naming the client, as a load balancer that passes TCP through sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProxyProtocol {
    /// No header: the TCP peer is the client.
    #[default]
    Off,
    /// Required, and only from `--trusted-proxies` (anyone else is closed at once).
    On,
}

/// The HTTP forward path's limits (`--http-idle-timeout`, `--max-request-body`, the pool).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub timers: HttpTimers,
    /// Largest request body forwarded, in bytes.
    pub max_request_body: u64,
    /// Requests one HTTP/1.1 client connection carries; the last is answered with
    /// `Connection: close`. A pipelined flood ends there, and a busy client reconnects
    /// (to any replica) now and then rather than riding one connection for ever. Not
    /// lower: each reconnect is a TLS handshake for the client and the router, and at
    /// 1,000 the HTTP cell's clients spent 3–4% of its throughput reconnecting
    /// (`benches/RESULTS.md`, "a client connection carries 10,000 requests").
    pub max_requests_per_conn: u32,
    pub pool: PoolConfig,
}

/// When a forwarded exchange has stalled.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimers {
    /// Longest a body may go without data (or a response unread); `None`: no limit.
    pub idle: Option<Duration>,
    /// Whether `idle` also cuts a quiet `text/event-stream` response: only when the
    /// operator set the timeout, as an event stream may rightly say nothing for minutes.
    pub event_streams_idle: bool,
}

impl HttpTimers {
    /// Longest a client may leave an answer unread (its window shut): the idle timeout,
    /// or 60 s when that is off, as a reader that never reads must not hold a pod
    /// connection for ever.
    pub fn unread(&self) -> Duration {
        self.idle.unwrap_or(Duration::from_secs(60))
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            timers: HttpTimers {
                idle: Some(Duration::from_secs(60)),
                event_streams_idle: false,
            },
            max_request_body: 10 << 20,
            max_requests_per_conn: 10_000,
            pool: PoolConfig::default(),
        }
    }
}

/// How long a relayed socket may live, and how the router notices a dead peer.
#[derive(Debug, Clone, Default)]
pub struct SocketTimers {
    /// TCP keepalive on client and backend sockets: idle time before the first probe
    /// (then every 10 s, 3 probes); `None`: off.
    pub tcp_keepalive: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_age: Option<Duration>,
    /// Each socket's age limit is `max_age` plus up to this much, at random.
    pub max_age_jitter: Duration,
    pub client_ping: Option<Ping>,
    pub backend_ping: Option<Ping>,
}

impl SocketTimers {
    /// One socket's relay settings: its own jittered age limit.
    pub fn relay_config(&self, close_timeout: Duration) -> RelayConfig {
        // A uniform fraction of the window.
        let jitter = self.max_age_jitter.mul_f64(fastrand::f64());
        RelayConfig {
            close_timeout,
            idle_timeout: self.idle_timeout,
            max_age: self.max_age.map(|a| a + jitter),
            client_ping: self.client_ping,
            backend_ping: self.backend_ping,
            budget: &crate::data::relay::bulk::BUDGET,
        }
    }
}

impl Default for Limits {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            backend_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            max_connections: 9000,
            max_connections_per_ip: 0,
            max_pending: 1000,
            max_pending_bytes: 24 << 20,
            max_pending_per_ip: 64,
            max_client_hello: crate::data::tls::stream::DEFAULT_MAX_CLIENT_HELLO,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            breaker: BreakerConfig::default(),
            http: HttpLimits::default(),
            policy: PolicyConfig::default(),
            timers: SocketTimers {
                tcp_keepalive: Some(Duration::from_secs(60)),
                ..SocketTimers::default()
            },
            stall_threshold: Duration::from_secs(10),
            proxy_protocol: ProxyProtocol::Off,
            io_uring: false,
        }
    }
}

impl Limits {
    /// The pools these limits describe.
    pub fn admission(&self) -> AdmissionConfig {
        AdmissionConfig {
            max_pending: self.max_pending,
            max_pending_bytes: self.max_pending_bytes,
            max_pending_per_ip: self.max_pending_per_ip,
            max_live: self.max_connections,
            max_live_per_ip: self.max_connections_per_ip,
        }
    }
}
