//! `wsload`: drives WebSocket connections through wsrouter (or HAProxy, NGINX, or a
//! backend directly) and measures what the side-by-side comparison needs.
//!
//! - [`Mode::PingPong`]: one message at a time per connection; latency into an HDR
//!   histogram. With a rate, each message is timed from its *scheduled* send time, so a
//!   stall counts against every message it delayed (no coordinated omission).
//! - [`Mode::Throughput`]: a window of messages in flight per connection; messages/s, MB/s.
//! - [`Mode::HoldIdle`]: open many connections (spread over source addresses so ephemeral
//!   ports do not run out), hold them idle, optionally pass one burst each and hold again,
//!   then check every one still echoes. Phase lines on stderr let a script sample RSS.
//!
//! With `h2_connections` > 0 every WebSocket is an extended CONNECT stream (RFC 8441),
//! spread round-robin over that many HTTP/2 connections (TLS, ALPN `h2`), in any mode.
//!
//! - [`flood::flood`]: hostile handshakes (partial or complete ClientHellos that stall),
//!   held and reopened for a fixed time, for the memory-under-attack benchmark.
//!
//! - [`soak::soak`]: thousands of WebSockets held for up to hours while they churn, some
//!   streaming, some over HTTP/2; every close the client did not make is written down.
//!
//! Loopback only, and every phase is bounded in time.

mod conn;
pub mod flood;
pub mod soak;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use conn::Target;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("target {0} is not a loopback address; wsload only loads this machine")]
    NotLoopback(SocketAddr),
    #[error("source address {0} is not a loopback address")]
    SourceNotLoopback(IpAddr),
    #[error("bad URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("WebSockets over HTTP/2 need a wss:// target (no h2c)")]
    H2NeedsTls,
    #[error("cannot write {0}: {1}")]
    Output(std::path::PathBuf, std::io::Error),
    #[error("no connection could be opened; first error: {0}")]
    NoConnections(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    PingPong { rate: Option<f64> },
    Throughput { window: usize },
    HoldIdle { burst: Option<usize> },
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub connections: usize,
    /// Connection i uses namespace `{tenant_prefix}{i % tenants}`.
    pub tenants: usize,
    pub tenant_prefix: String,
    pub mode: Mode,
    /// Message size in bytes (binary messages).
    pub size: usize,
    /// How long to measure (ping-pong, throughput) or to hold (hold-idle, per phase).
    pub duration: Duration,
    /// Local addresses to connect from, round-robin; empty: the OS chooses.
    pub sources: Vec<IpAddr>,
    /// Connections opened at once.
    pub open_parallelism: usize,
    /// Bound on every single wait: connect, an echo.
    pub timeout: Duration,
    /// 0: one TCP+TLS connection and HTTP/1.1 upgrade per WebSocket. N: every WebSocket
    /// is a stream on one of N HTTP/2 connections.
    pub h2_connections: usize,
    /// Over HTTP/2: send a `Sec-WebSocket-Key` too (not part of RFC 8441), for proxies
    /// that forward the stream to an HTTP/1.1 backend without making one up.
    pub h2_client_key: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub samples: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub connect_failures: usize,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub megabytes_per_second: f64,
    pub latency: Option<Latency>,
    /// hold-idle: connections that still echoed at the end.
    pub still_echoing: Option<usize>,
    /// Connections per second over the opening phase (TLS handshake through first echo).
    pub connects_per_second: f64,
    /// TCP (and TLS) connections the WebSockets used: one each over HTTP/1.1, the
    /// HTTP/2 connections otherwise.
    pub tcp_connections: usize,
}

/// The payload of message `seq` on connection `conn`: its size, its identity in the
/// first bytes, so an echo can be checked.
fn payload(conn: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(16)];
    p[..8].copy_from_slice(&(conn as u64).to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(16) {
        *b = (i as u64 ^ seq) as u8;
    }
    p.truncate(size.max(16));
    p
}

/// The next binary message (echoes); text (the backend's counters) is skipped.
async fn next_echo<S>(ws: &mut WebSocketStream<S>, timeout: Duration) -> Result<Vec<u8>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed".to_owned()),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| "echo timed out".to_owned())?
}

/// One connection's share of a run.
#[derive(Default)]
struct ConnResult {
    messages: u64,
    bytes: u64,
    errors: u64,
    histogram: Option<Histogram<u64>>,
    echoing: bool,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

async fn ping_pong<S>(
    mut ws: WebSocketStream<S>,
    id: usize,
    cfg: &LoadConfig,
    rate: Option<f64>,
    until: Instant,
) -> ConnResult
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = ConnResult {
        histogram: Some(new_histogram()),
        ..ConnResult::default()
    };
    let interval = rate.map(|per_sec| Duration::from_secs_f64(1.0 / per_sec));
    // Connections start their schedules spread over one interval, so the offered load is
    // even rather than every connection sending in the same instant.
    let phase = interval.map_or(Duration::ZERO, |i| {
        i.mul_f64((id % cfg.connections.max(1)) as f64 / cfg.connections.max(1) as f64)
    });
    let start = tokio::time::Instant::now() + phase;
    let mut seq = 0u64;
    while Instant::now() < until {
        // With a rate, the message is due at its slot whether or not the last one was late.
        let due = match interval {
            Some(i) => {
                let due = start + i * seq as u32;
                tokio::time::sleep_until(due).await;
                due
            }
            None => tokio::time::Instant::now(),
        };
        let p = payload(id, seq, cfg.size);
        if ws.send(Message::binary(p.clone())).await.is_err() {
            r.errors += 1;
            break;
        }
        match next_echo(&mut ws, cfg.timeout).await {
            Ok(echo) if echo == p => {
                let us = due.elapsed().as_micros().max(1) as u64;
                if let Some(h) = r.histogram.as_mut() {
                    let _ = h.record(us.min(60_000_000));
                }
                r.messages += 1;
                r.bytes += p.len() as u64;
            }
            _ => {
                r.errors += 1;
                break;
            }
        }
        seq += 1;
    }
    let _ = ws.close(None).await;
    r
}

async fn throughput<S>(
    ws: WebSocketStream<S>,
    id: usize,
    cfg: &LoadConfig,
    window: usize,
    until: Instant,
) -> ConnResult
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = ConnResult::default();
    let (mut tx, mut rx) = ws.split();
    let mut sent = 0u64;
    let mut in_flight = 0usize;
    loop {
        let sending = Instant::now() < until;
        while sending && in_flight < window.max(1) {
            if tx
                .send(Message::binary(payload(id, sent, cfg.size)))
                .await
                .is_err()
            {
                r.errors += 1;
                return r;
            }
            sent += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let next = tokio::time::timeout(cfg.timeout, rx.next()).await;
        match next {
            Ok(Some(Ok(Message::Binary(b)))) => {
                in_flight -= 1;
                if sending {
                    r.messages += 1;
                    r.bytes += b.len() as u64;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => {
                r.errors += 1;
                return r;
            }
        }
    }
    let _ = tx.close().await;
    r
}

/// Runs the configured load and reports what it measured.
pub async fn run(cfg: LoadConfig) -> Result<Report, LoadError> {
    cfg.target.check_loopback()?;
    if let Some(ip) = cfg.sources.iter().find(|ip| !ip.is_loopback()) {
        return Err(LoadError::SourceNotLoopback(*ip));
    }
    let opening = Instant::now();
    let (tls, h2s) = if cfg.h2_connections > 0 {
        let tls = cfg
            .target
            .tls_connector(b"h2")
            .ok_or(LoadError::H2NeedsTls)?;
        (None, open_h2_connections(&cfg, &tls).await?)
    } else {
        (cfg.target.tls_connector(b"http/1.1"), Vec::new())
    };
    let cfg = Arc::new(cfg);
    let h2s = Arc::new(h2s);

    // Open every WebSocket (bounded parallelism), through to its first echo.
    let opened: Vec<Result<(usize, conn::Ws), String>> =
        futures_util::stream::iter(0..cfg.connections)
            .map(|i| {
                let (cfg, tls, h2s) = (cfg.clone(), tls.clone(), h2s.clone());
                async move {
                    let ns = format!("{}{}", cfg.tenant_prefix, i % cfg.tenants.max(1));
                    let mut ws = if h2s.is_empty() {
                        let source =
                            (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
                        conn::open(&cfg.target, tls.as_ref(), source, &ns, cfg.timeout).await?
                    } else {
                        let mut h2 = h2s[i % h2s.len()].clone();
                        let key = cfg.h2_client_key;
                        conn::open_stream(&cfg.target, &mut h2, &ns, key, cfg.timeout).await?
                    };
                    let p = payload(i, u64::MAX, 16);
                    ws.send_and_check(&p, cfg.timeout).await?;
                    Ok((i, ws))
                }
            })
            .buffer_unordered(cfg.open_parallelism.max(1))
            .collect()
            .await;
    let open_secs = opening.elapsed().as_secs_f64();
    let mut conns = Vec::new();
    let mut first_error = None;
    for o in opened {
        match o {
            Ok(c) => conns.push(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_failures = cfg.connections - conns.len();
    if conns.is_empty() {
        return Err(LoadError::NoConnections(first_error.unwrap_or_default()));
    }
    if let Some(e) = &first_error {
        eprintln!("wsload: {connect_failures} connections failed; first: {e}");
    }
    let connected = conns.len();
    let mut report = Report {
        connections: connected,
        connect_failures,
        connects_per_second: connected as f64 / open_secs.max(1e-9),
        tcp_connections: if h2s.is_empty() { connected } else { h2s.len() },
        ..Report::default()
    };
    // The streams hold their connections; the handles would keep idle ones open.
    drop(h2s);

    let started = Instant::now();
    let results: Vec<ConnResult> = match cfg.mode {
        Mode::PingPong { rate } => {
            let until = started + cfg.duration;
            join_all(conns, &cfg, move |ws, id, cfg| async move {
                ws.ping_pong(id, &cfg, rate, until).await
            })
            .await
        }
        Mode::Throughput { window } => {
            let until = started + cfg.duration;
            join_all(conns, &cfg, move |ws, id, cfg| async move {
                ws.throughput(id, &cfg, window, until).await
            })
            .await
        }
        Mode::HoldIdle { burst } => hold_idle(conns, &cfg, burst).await,
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut hist = new_histogram();
    let mut still = 0;
    for r in &results {
        report.messages += r.messages;
        report.bytes += r.bytes;
        report.errors += r.errors;
        if let Some(h) = &r.histogram {
            let _ = hist.add(h);
        }
        still += usize::from(r.echoing);
    }
    report.seconds = seconds;
    report.messages_per_second = report.messages as f64 / seconds.max(1e-9);
    report.megabytes_per_second = report.bytes as f64 / seconds.max(1e-9) / 1e6;
    if matches!(cfg.mode, Mode::PingPong { .. }) && !hist.is_empty() {
        report.latency = Some(Latency {
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            samples: hist.len(),
        });
    }
    if matches!(cfg.mode, Mode::HoldIdle { .. }) {
        report.still_echoing = Some(still);
    }
    Ok(report)
}

/// The HTTP/2 connections, opened with the configured parallelism and sources; all of
/// them must open (a benchmark with fewer would not be the one asked for).
async fn open_h2_connections(
    cfg: &LoadConfig,
    tls: &tokio_rustls::TlsConnector,
) -> Result<Vec<conn::H2>, LoadError> {
    let opened: Vec<Result<conn::H2, String>> = futures_util::stream::iter(0..cfg.h2_connections)
        .map(|i| {
            let source = (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
            conn::open_h2(&cfg.target, tls, source, cfg.timeout)
        })
        .buffer_unordered(cfg.open_parallelism.max(1))
        .collect()
        .await;
    opened
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(LoadError::NoConnections)
}

async fn join_all<F, Fut>(
    conns: Vec<(usize, conn::Ws)>,
    cfg: &Arc<LoadConfig>,
    f: F,
) -> Vec<ConnResult>
where
    F: Fn(conn::Ws, usize, Arc<LoadConfig>) -> Fut,
    Fut: std::future::Future<Output = ConnResult> + Send + 'static,
{
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(i, ws)| tokio::spawn(f(ws, i, cfg.clone())))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|_| ConnResult {
            errors: 1,
            ..ConnResult::default()
        }));
    }
    out
}

async fn hold_idle(
    mut conns: Vec<(usize, conn::Ws)>,
    cfg: &LoadConfig,
    burst: Option<usize>,
) -> Vec<ConnResult> {
    eprintln!("wsload: phase=idle connections={}", conns.len());
    tokio::time::sleep(cfg.duration).await;
    if let Some(size) = burst {
        // Every connection carries one burst; then idle again, so a proxy that keeps its
        // buffers after a burst shows it.
        let mut ok = 0;
        for (i, ws) in conns.iter_mut() {
            if ws
                .send_and_check(&payload(*i, 1, size), cfg.timeout)
                .await
                .is_ok()
            {
                ok += 1;
            }
        }
        eprintln!(
            "wsload: phase=after-burst connections={} burst_bytes={size} ok={ok}",
            conns.len()
        );
        tokio::time::sleep(cfg.duration).await;
    }
    let mut out = Vec::with_capacity(conns.len());
    for (i, ws) in conns.iter_mut() {
        let echoing = ws
            .send_and_check(&payload(*i, 2, 16), cfg.timeout)
            .await
            .is_ok();
        out.push(ConnResult {
            echoing,
            errors: u64::from(!echoing),
            ..ConnResult::default()
        });
    }
    eprintln!(
        "wsload: phase=checked still_echoing={}",
        out.iter().filter(|r| r.echoing).count()
    );
    out
}
