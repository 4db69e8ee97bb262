//! The soak: many WebSockets held for a long time while they churn, some streaming with
//! their latency sampled, some over HTTP/2, every close the client did not ask for written
//! down with its time, the backend it was on and its close code, so a script that kills
//! backends can check that only those backends' sockets closed, and how.
//!
//! Each slot is one WebSocket, kept open for the whole run: when it is churned (the
//! client closes it, `churn_per_second` slots at a time, oldest first) or closed by the
//! other side, it is opened again. Slot `i` is a streaming slot when `i % stream_every ==
//! 0` (a ping-pong at `stream_rate`, each echo timed from its scheduled send) and an
//! HTTP/2 slot when `i % h2_every == h2_every / 2`. Which backend a socket landed on is
//! read from the backend's first counter message (`{"server":"backend-2",…}`).
//!
//! Output, one line each, tab-separated:
//! - `samples`: every `sample_every`, the sockets open, counts since the start, the
//!   streaming echoes' p50/p99/max over the window, and (with `watch_pid`) the watched
//!   process's RSS, descriptors and CPU ticks read from /proc.
//! - `events`: every close the client did not make, every refused open, and the final
//!   echo check of each slot that failed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::conn::{self, Target, Ws};
use crate::{new_histogram, payload, LoadError};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub target: Target,
    /// More routers beside `target`, as the replicas behind one Service: slot `i` opens
    /// on router `i % n` first and, when a router refuses the connection (its listener
    /// closed as it drains), on the next one.
    pub also: Vec<Target>,
    /// Write an event for every socket opened: `dialed` (which router, by index) and
    /// `opened` (which backend), for a storm's timeline.
    pub log_opens: bool,
    /// Each HTTP/1.1 slot keeps its own TLS session cache (as each real client does), so
    /// a reconnect resumes with that slot's own ticket or not at all; without it every
    /// slot shares one small cache.
    pub session_per_socket: bool,
    /// WebSockets held at once.
    pub sockets: usize,
    /// Every this-many-th slot streams (0: none).
    pub stream_every: usize,
    /// Messages per second per streaming socket.
    pub stream_rate: f64,
    /// Every this-many-th slot is an HTTP/2 stream (0: none).
    pub h2_every: usize,
    /// HTTP/2 connections the HTTP/2 slots share.
    pub h2_connections: usize,
    /// Slots closed by the client and opened again, per second, oldest first.
    pub churn_per_second: f64,
    /// After a close the client did not make, or a failed open, a slot waits a random
    /// time below this before it opens again, as well-behaved clients do (all of a dead
    /// backend's clients reconnecting in the same instant is a storm of their own).
    pub reconnect_within: Duration,
    pub tenants: usize,
    pub tenant_prefix: String,
    pub size: usize,
    pub duration: Duration,
    pub sample_every: Duration,
    pub sources: Vec<IpAddr>,
    pub open_parallelism: usize,
    pub timeout: Duration,
    /// Sample this process's RSS, descriptors and CPU (Linux /proc).
    pub watch_pid: Option<u32>,
    pub samples: PathBuf,
    pub events: PathBuf,
}

#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    pub sockets: usize,
    pub seconds: f64,
    pub opened: u64,
    pub churned: u64,
    /// Closes the client did not make (a killed backend's sockets, or anything else).
    pub closed_by_peer: u64,
    /// Opens answered with an HTTP error (a killed backend's tenants while it is down).
    pub refused: u64,
    /// Opens that failed otherwise, and sockets that broke without a close frame.
    pub errors: u64,
    pub messages: u64,
    /// Slots open and echoing at the end.
    pub echoing_at_end: usize,
    /// Slots open at the end whose last echo failed.
    pub failed_at_end: usize,
    /// Slots between two sockets at the end (churned, or waiting to reconnect).
    pub reopening_at_end: usize,
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    open_h2: AtomicU64,
    opened: AtomicU64,
    churned: AtomicU64,
    closed_by_peer: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    messages: AtomicU64,
}

/// What every slot shares: the counters, the window's latencies, the event log.
struct Shared {
    cfg: SoakConfig,
    tls_h1: Option<tokio_rustls::TlsConnector>,
    /// Per slot, with `session_per_socket`.
    tls_own: Vec<tokio_rustls::TlsConnector>,
    tls_h2: Option<tokio_rustls::TlsConnector>,
    h2_pool: Vec<tokio::sync::Mutex<Option<conn::H2>>>,
    churn: Vec<Notify>,
    counters: Counters,
    window: Mutex<Histogram<u64>>,
    events: Mutex<BufWriter<File>>,
    until: Instant,
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Shared {
    fn event(&self, slot: usize, proto: &str, backend: &str, what: &str, detail: &str) {
        let detail = detail.replace(['\t', '\n'], " ");
        if let Ok(mut w) = self.events.lock() {
            let _ = writeln!(
                w,
                "{}\t{slot}\t{proto}\t{backend}\t{what}\t{detail}",
                epoch_ms()
            );
        }
    }

    fn is_h2(&self, slot: usize) -> bool {
        self.cfg.h2_every > 0 && slot % self.cfg.h2_every == self.cfg.h2_every / 2
    }

    fn is_streaming(&self, slot: usize) -> bool {
        self.cfg.stream_every > 0 && slot.is_multiple_of(self.cfg.stream_every)
    }

    /// Router `i` of the target and the others.
    fn router(&self, i: usize) -> &Target {
        match i {
            0 => &self.cfg.target,
            i => &self.cfg.also[i - 1],
        }
    }

    async fn open(&self, slot: usize) -> Result<Ws, String> {
        let ns = format!(
            "{}{}",
            self.cfg.tenant_prefix,
            slot % self.cfg.tenants.max(1)
        );
        if !self.is_h2(slot) {
            let source = (!self.cfg.sources.is_empty())
                .then(|| self.cfg.sources[slot % self.cfg.sources.len()]);
            let routers = 1 + self.cfg.also.len();
            let mut last = String::new();
            for k in 0..routers {
                let i = (slot + k) % routers;
                let tls = self.tls_own.get(slot).or(self.tls_h1.as_ref());
                match conn::open(self.router(i), tls, source, &ns, self.cfg.timeout).await {
                    Ok(ws) => {
                        if self.cfg.log_opens {
                            self.event(slot, "h1", "-", "dialed", &i.to_string());
                        }
                        return Ok(ws);
                    }
                    // Refused at connect: that router is gone; the next one may not be.
                    Err(e) if e.starts_with("connect:") => last = e,
                    Err(e) => return Err(e),
                }
            }
            return Err(last);
        }
        let tls = self.tls_h2.as_ref().ok_or("HTTP/2 needs TLS")?;
        // The HTTP/2 slots in turn over the connections, so each carries its share.
        let i = (slot / self.cfg.h2_every.max(1)) % self.h2_pool.len().max(1);
        let mut h2 = {
            let mut held = self.h2_pool[i].lock().await;
            // A connection the server ended (or that broke) is replaced, once per slot's
            // open; its streams were already reopened or are being reopened.
            let usable = held.as_ref().is_some_and(|h| !h.is_closed());
            if !usable {
                let source = (!self.cfg.sources.is_empty())
                    .then(|| self.cfg.sources[i % self.cfg.sources.len()]);
                *held = Some(conn::open_h2(&self.cfg.target, tls, source, self.cfg.timeout).await?);
            }
            held.clone().ok_or("no HTTP/2 connection")?
        };
        conn::open_stream(&self.cfg.target, &mut h2, &ns, false, self.cfg.timeout).await
    }
}

/// How a socket's life ended.
enum End {
    /// The client closed it to churn.
    Churned,
    /// The other side closed it (a close frame, with its code if any).
    ClosedByPeer(Option<u16>, String),
    /// It broke: a read error, a timeout, a wrong echo, EOF without a close frame.
    Broke(String),
    /// The run is over and the socket echoed its last message (`false`: it did not).
    RunOver(bool),
}

/// The next text or binary message; a close frame or a break ends the socket.
async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Result<Message, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Close(f))) => {
                return Err(End::ClosedByPeer(
                    f.as_ref().map(|f| u16::from(f.code)),
                    f.map(|f| f.reason.to_string()).unwrap_or_default(),
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(End::Broke(e.to_string())),
            None => return Err(End::Broke("EOF without a close frame".into())),
        }
    }
}

/// The socket's first text message is the backend's first counter: its `server` field.
async fn backend_name<S>(ws: &mut WebSocketStream<S>, timeout: Duration) -> Result<String, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(timeout, async {
        loop {
            if let Message::Text(t) = next_data(ws).await? {
                return Ok(t);
            }
        }
    })
    .await
    .map_err(|_| End::Broke("no counter from the backend".into()))??;
    let v: serde_json::Value =
        serde_json::from_str(&first).map_err(|e| End::Broke(format!("counter: {e}")))?;
    Ok(v["server"].as_str().unwrap_or("?").to_owned())
}

/// The next binary message (counters are skipped); a close or a break ends the socket.
async fn next_binary<S>(ws: &mut WebSocketStream<S>) -> Result<Vec<u8>, End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if let Message::Binary(b) = next_data(ws).await? {
            return Ok(b.to_vec());
        }
    }
}

async fn echo<S>(ws: &mut WebSocketStream<S>, p: Vec<u8>, timeout: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::binary(p.clone()))
        .await
        .map_err(|e| End::Broke(format!("send: {e}")))?;
    match tokio::time::timeout(timeout, next_binary(ws)).await {
        Ok(Ok(b)) if b == p => Ok(()),
        Ok(Ok(_)) => Err(End::Broke("echo differs".into())),
        Ok(Err(end)) => Err(end),
        Err(_) => Err(End::Broke("echo timed out".into())),
    }
}

/// One socket's life, from its first counter to its end.
async fn live<S>(mut ws: WebSocketStream<S>, slot: usize, sh: &Shared, backend: &mut String) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match backend_name(&mut ws, sh.cfg.timeout).await {
        Ok(b) => *backend = b,
        Err(end) => return end,
    }
    if sh.cfg.log_opens {
        sh.event(slot, "-", backend, "opened", "");
    }
    let churn = &sh.churn[slot];
    let until = tokio::time::Instant::from_std(sh.until);
    let end = if sh.is_streaming(slot) {
        let interval = Duration::from_secs_f64(1.0 / sh.cfg.stream_rate.max(0.001));
        let start = tokio::time::Instant::now();
        let mut seq = 0u64;
        loop {
            let due = start + interval * seq as u32;
            tokio::select! {
                _ = churn.notified() => break End::Churned,
                _ = tokio::time::sleep_until(until) => break End::RunOver(true),
                _ = tokio::time::sleep_until(due) => {}
            }
            if let Err(end) = echo(&mut ws, payload(slot, seq, sh.cfg.size), sh.cfg.timeout).await {
                break end;
            }
            let us = due.elapsed().as_micros().max(1) as u64;
            if let Ok(mut h) = sh.window.lock() {
                let _ = h.record(us.min(60_000_000));
            }
            sh.counters.messages.fetch_add(1, Ordering::Relaxed);
            seq += 1;
        }
    } else {
        tokio::select! {
            _ = churn.notified() => End::Churned,
            _ = tokio::time::sleep_until(until) => End::RunOver(true),
            end = next_binary(&mut ws) => match end {
                Err(end) => end,
                Ok(_) => End::Broke("an unasked-for message".into()),
            },
        }
    };
    match end {
        End::Churned => {
            let _ = ws.close(None).await;
            End::Churned
        }
        End::RunOver(_) => {
            let ok = echo(&mut ws, payload(slot, u64::MAX, 16), sh.cfg.timeout)
                .await
                .is_ok();
            let _ = ws.close(None).await;
            End::RunOver(ok)
        }
        other => other,
    }
}

async fn live_any(ws: Ws, slot: usize, sh: &Shared, backend: &mut String) -> End {
    match ws {
        Ws::Plain(ws) => live(*ws, slot, sh, backend).await,
        Ws::Tls(ws) => live(*ws, slot, sh, backend).await,
        Ws::H2(ws) => live(*ws, slot, sh, backend).await,
    }
}

/// How a slot stood when the run was over.
#[derive(Clone, Copy, PartialEq)]
enum AtEnd {
    Echoed,
    EchoFailed,
    Reopening,
}

/// A slot: open, live, note how it ended, open again, until the run is over.
async fn slot(sh: Arc<Shared>, slot: usize, mut permit: Option<OwnedSemaphorePermit>) -> AtEnd {
    let proto = if sh.is_h2(slot) { "h2" } else { "h1" };
    let c = &sh.counters;
    loop {
        if Instant::now() >= sh.until {
            return AtEnd::Reopening;
        }
        let opened = sh.open(slot).await;
        drop(permit.take());
        let ws = match opened {
            Ok(ws) => ws,
            Err(e) => {
                // An HTTP answer is a refusal (the tenant's backend is down); anything
                // else is an error. Either way, try again shortly.
                let refused = e.contains("HTTP error") || e.contains("answered");
                if refused {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                sh.event(
                    slot,
                    proto,
                    "-",
                    if refused { "refused" } else { "open_failed" },
                    &e,
                );
                // A Retry-After is honoured, plus a random share of a second, so the
                // refused do not all come back in the same instant.
                let wait = match conn::retry_after(&e) {
                    Some(after) => after + backoff(Duration::from_secs(1)),
                    None => backoff(sh.cfg.reconnect_within),
                };
                // Never past the run's end: the report must not wait on a long Retry-After.
                let until = tokio::time::Instant::from_std(sh.until);
                tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(until)).await;
                continue;
            }
        };
        c.opened.fetch_add(1, Ordering::Relaxed);
        c.open.fetch_add(1, Ordering::Relaxed);
        if proto == "h2" {
            c.open_h2.fetch_add(1, Ordering::Relaxed);
        }
        let mut backend = String::from("?");
        let end = live_any(ws, slot, &sh, &mut backend).await;
        c.open.fetch_sub(1, Ordering::Relaxed);
        if proto == "h2" {
            c.open_h2.fetch_sub(1, Ordering::Relaxed);
        }
        match end {
            End::Churned => {
                c.churned.fetch_add(1, Ordering::Relaxed);
            }
            End::ClosedByPeer(code, reason) => {
                c.closed_by_peer.fetch_add(1, Ordering::Relaxed);
                let code = code.map_or("none".to_owned(), |c| c.to_string());
                sh.event(slot, proto, &backend, &format!("closed_{code}"), &reason);
                tokio::time::sleep(backoff(sh.cfg.reconnect_within)).await;
            }
            End::Broke(why) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                sh.event(slot, proto, &backend, "broke", &why);
                tokio::time::sleep(backoff(sh.cfg.reconnect_within)).await;
            }
            End::RunOver(true) => return AtEnd::Echoed,
            End::RunOver(false) => {
                sh.event(slot, proto, &backend, "final_echo_failed", "");
                return AtEnd::EchoFailed;
            }
        }
    }
}

/// A random time below `within`.
fn backoff(within: Duration) -> Duration {
    within.mul_f64(fastrand::f64())
}

/// RSS (KB), open descriptors and CPU ticks (user + system) of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(u64, usize, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, fds, cpu))
}

const SAMPLE_HEADER: &str = "t_ms\topen\topen_h2\topened\tchurned\tclosed_by_peer\trefused\terrors\tmessages\tp50_us\tp99_us\tmax_us\trss_kb\tfds\tcpu_ticks";

async fn sampler(sh: Arc<Shared>, mut out: BufWriter<File>) {
    let mut tick = tokio::time::interval(sh.cfg.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let h = sh
            .window
            .lock()
            .map(|mut h| std::mem::replace(&mut *h, new_histogram()))
            .unwrap_or_else(|_| new_histogram());
        let c = &sh.counters;
        let (p50, p99, max) = if h.is_empty() {
            (0, 0, 0)
        } else {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        };
        let (rss, fds, cpu) = sh.cfg.watch_pid.and_then(proc_sample).unwrap_or((0, 0, 0));
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{p50}\t{p99}\t{max}\t{rss}\t{fds}\t{cpu}",
            epoch_ms(),
            c.open.load(Ordering::Relaxed),
            c.open_h2.load(Ordering::Relaxed),
            c.opened.load(Ordering::Relaxed),
            c.churned.load(Ordering::Relaxed),
            c.closed_by_peer.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
            c.messages.load(Ordering::Relaxed),
        );
        let _ = out.flush();
        if let Ok(mut e) = sh.events.lock() {
            let _ = e.flush();
        }
        if Instant::now() >= sh.until {
            return;
        }
    }
}

/// Runs the soak and reports its totals; the detail is in the two files.
pub async fn soak(cfg: SoakConfig) -> Result<SoakReport, LoadError> {
    cfg.target.check_loopback()?;
    for t in &cfg.also {
        t.check_loopback()?;
    }
    if let Some(ip) = cfg.sources.iter().find(|ip| !ip.is_loopback()) {
        return Err(LoadError::SourceNotLoopback(*ip));
    }
    if cfg.h2_every > 0 && !cfg.target.tls {
        return Err(LoadError::H2NeedsTls);
    }
    let file = |p: &PathBuf| {
        File::create(p)
            .map(BufWriter::new)
            .map_err(|e| LoadError::Output(p.clone(), e))
    };
    let mut samples = file(&cfg.samples)?;
    let mut events = file(&cfg.events)?;
    let _ = writeln!(samples, "{SAMPLE_HEADER}");
    let _ = writeln!(events, "t_ms\tslot\tproto\tbackend\tevent\tdetail");
    let started = Instant::now();
    let sh = Arc::new(Shared {
        tls_h1: cfg.target.tls_connector(b"http/1.1"),
        tls_own: if cfg.session_per_socket {
            (0..cfg.sockets)
                .filter_map(|_| cfg.target.own_session_connector(b"http/1.1"))
                .collect()
        } else {
            Vec::new()
        },
        tls_h2: cfg.target.tls_connector(b"h2"),
        h2_pool: (0..cfg.h2_connections.max(1))
            .map(|_| tokio::sync::Mutex::new(None))
            .collect(),
        churn: (0..cfg.sockets).map(|_| Notify::new()).collect(),
        counters: Counters::default(),
        window: Mutex::new(new_histogram()),
        events: Mutex::new(events),
        until: started + cfg.duration,
        cfg,
    });

    let sampling = tokio::spawn(sampler(sh.clone(), samples));
    // Open the slots a bounded number at a time: a slot holds its permit until its first
    // open attempt is over. Then every slot runs until the end.
    let gate = Arc::new(tokio::sync::Semaphore::new(sh.cfg.open_parallelism.max(1)));
    let mut tasks = Vec::with_capacity(sh.cfg.sockets);
    for i in 0..sh.cfg.sockets {
        let permit = gate.clone().acquire_owned().await.ok();
        tasks.push(tokio::spawn(slot(sh.clone(), i, permit)));
    }

    // Churn: the slots in turn (so, the oldest sockets first) at the configured rate.
    let churning = {
        let sh = sh.clone();
        tokio::spawn(async move {
            if sh.cfg.churn_per_second <= 0.0 || sh.cfg.sockets == 0 {
                return;
            }
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / sh.cfg.churn_per_second));
            let mut next = 0usize;
            while Instant::now() < sh.until {
                tick.tick().await;
                sh.churn[next % sh.cfg.sockets].notify_one();
                next += 1;
            }
        })
    };

    let mut ends = Vec::with_capacity(tasks.len());
    for t in tasks {
        ends.push(t.await.unwrap_or(AtEnd::EchoFailed));
    }
    let count = |e| ends.iter().filter(|&&x| x == e).count();
    churning.abort();
    let _ = sampling.await;
    if let Ok(mut e) = sh.events.lock() {
        let _ = e.flush();
    }
    let c = &sh.counters;
    Ok(SoakReport {
        sockets: sh.cfg.sockets,
        seconds: started.elapsed().as_secs_f64(),
        opened: c.opened.load(Ordering::Relaxed),
        churned: c.churned.load(Ordering::Relaxed),
        closed_by_peer: c.closed_by_peer.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        messages: c.messages.load(Ordering::Relaxed),
        echoing_at_end: count(AtEnd::Echoed),
        failed_at_end: count(AtEnd::EchoFailed),
        reopening_at_end: count(AtEnd::Reopening),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_sample_reads_this_process() {
        let (rss, fds, _cpu) = proc_sample(std::process::id()).expect("our own /proc");
        assert!(rss > 0);
        assert!(fds > 0);
    }
}
