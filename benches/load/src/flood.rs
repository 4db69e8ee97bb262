//! Hostile handshakes, for the memory benchmark: many connections that start a TLS
//! handshake and stall, each reopened as soon as the server drops it, for a fixed time.
//! Loopback only; every connection and the whole run are bounded.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::connect_tcp;
use crate::{LoadError, Target};

/// What each connection sends before it stalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// 62 KB of a ClientHello whose header claims 65,520 bytes (the attack).
    Partial,
    /// 15,000 bytes of a ClientHello claiming 16,000: within wsrouter's default limit,
    /// so the most a stalled handshake can make it hold.
    PartialWithinLimit,
    /// A whole, real ClientHello (rustls, X25519), then nothing: the server has done its
    /// key exchange and waits for the client's Finished.
    Complete,
}

#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub target: Target,
    pub connections: usize,
    pub hello: Hello,
    /// How long to hold the flood.
    pub duration: Duration,
    pub sources: Vec<IpAddr>,
    pub open_parallelism: usize,
    pub timeout: Duration,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FloodReport {
    /// Connections opened, reopens included.
    pub opened: u64,
    /// Connections the server closed (alert, FIN or reset) while the flood held them.
    pub dropped_by_server: u64,
    /// Connects that failed.
    pub connect_failures: u64,
    pub seconds: f64,
}

/// The bytes of a ClientHello header claiming `declared` bytes, cut to `send`.
pub fn client_hello_claiming(declared: usize, send: usize) -> Vec<u8> {
    let mut body = vec![
        1u8,
        (declared >> 16) as u8,
        (declared >> 8) as u8,
        declared as u8,
    ];
    body.extend(std::iter::repeat_n(0x42u8, declared));
    let mut wire = Vec::new();
    for chunk in body.chunks(16 << 10) {
        wire.extend_from_slice(&[22, 3, 1]);
        wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    wire.truncate(send);
    wire
}

/// A real ClientHello, as rustls sends it first.
fn complete_hello(target: &Target) -> Result<Vec<u8>, LoadError> {
    let config = target.client_config(b"http/1.1");
    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|_| {
        LoadError::BadUrl {
            url: target.host.clone(),
            why: "not a TLS server name",
        }
    })?;
    let mut conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| LoadError::NoConnections(e.to_string()))?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)
            .map_err(|e| LoadError::NoConnections(e.to_string()))?;
    }
    Ok(out)
}

/// Holds `connections` stalled handshakes for `duration`, reopening each one the server
/// drops. Prints `phase=holding` on stderr once all are open, `phase=done` at the end.
pub async fn flood(cfg: FloodConfig) -> Result<FloodReport, LoadError> {
    cfg.target.check_loopback()?;
    for s in &cfg.sources {
        if !s.is_loopback() {
            return Err(LoadError::SourceNotLoopback(*s));
        }
    }
    let bytes: Arc<[u8]> = match cfg.hello {
        Hello::Partial => client_hello_claiming(65_516, 62_000).into(),
        Hello::PartialWithinLimit => client_hello_claiming(16_000, 15_000).into(),
        Hello::Complete => complete_hello(&cfg.target)?.into(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let gate = Arc::new(tokio::sync::Semaphore::new(cfg.open_parallelism.max(1)));
    let mut tasks = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let source = (!cfg.sources.is_empty()).then(|| cfg.sources[i % cfg.sources.len()]);
        let (target, bytes, stop) = (cfg.target.clone(), bytes.clone(), stop.clone());
        let (opened, dropped, failed, gate) = (
            opened.clone(),
            dropped.clone(),
            failed.clone(),
            gate.clone(),
        );
        let timeout = cfg.timeout;
        tasks.push(tokio::spawn(async move {
            // Bounded: the deadline, and at most 10,000 reopens per connection.
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return;
                }
                let tcp = {
                    let _permit = gate.acquire().await;
                    tokio::time::timeout(timeout, connect_tcp(target.addr, source)).await
                };
                let Ok(Ok(mut tcp)) = tcp else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.write_all(&bytes).await;
                // Hold until the server drops it or the flood ends.
                let mut sink = [0u8; 1024];
                let held = tokio::time::timeout_at(deadline.into(), async {
                    loop {
                        match tcp.read(&mut sink).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                if held.is_ok() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // All opened at least once (or the time is up): tell the sampler.
    let all_open = async {
        while opened.load(Ordering::Relaxed) < cfg.connections as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), all_open).await;
    eprintln!(
        "phase=holding opened={} t={:.1}s",
        opened.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    for t in tasks {
        let _ = t.await;
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!("phase=done");
    Ok(FloodReport {
        opened: opened.load(Ordering::Relaxed),
        dropped_by_server: dropped.load(Ordering::Relaxed),
        connect_failures: failed.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    })
}
