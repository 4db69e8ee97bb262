//! A backend pod leaving the table with live sockets on it (a StatefulSet scaled 4 → 3),
//! as its clients see it: when each socket closes and when it is open again on the pod
//! its tenant routes to now, per second.
//!
//! - `pod_stops`: what happened before the drain scheduler: the pod's sockets stayed
//!   until the pod itself stopped, and its shutdown closed them all at once (1001).
//! - `spread`: the router closes them itself (1012), each at its own moment within
//!   `--drain-grace` of the swap, while the pod is still up.
//!
//! `cargo bench -p router --bench pod_leaves` (SOCKETS, GRACE in seconds, OUT as env).
//! In one process on loopback: four echo backends, the router (plain ws://, TLS is not
//! what is measured), and `wsload`'s soak clients, which reopen a closed socket after a
//! random wait below 1 s (a client's first, jittered retry). Writes
//! `OUT/pod_leaves-<variant>.tsv` (second since the swap, closes, reopens per backend)
//! and prints the peaks.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use router::{Input, Limits, RouterConfig, RoutingConfig};
use wsrouter::{Backends, PathPrefix};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    PodStops,
    Spread,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::PodStops => "pod_stops",
            Self::Spread => "spread",
        }
    }
}

async fn run(variant: Variant, sockets: usize, grace: Duration, out: &Path) -> Result<()> {
    let mut backends = Vec::new();
    for i in 0..4 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let cfg = backend::EchoConfig::new(format!("backend-{i}"))
            .with_interval(Duration::from_secs(3600));
        backends.push(backend::serve(l, cfg)?);
    }
    let list = Backends::static_list(
        backends
            .iter()
            .map(|b| b.local_addr().to_string())
            .collect(),
    )?;
    let limits = Limits {
        max_connections: sockets + 1000,
        max_pending_per_ip: 1000,
        ..Limits::default()
    };
    let router = router::start(RouterConfig {
        io_threads: 0,
        pages: None,
        listen: "127.0.0.1:0".parse()?,
        tls: None,
        admin_listen: None,
        admin_token: None,
        auth: None,
        forward_auth: None,
        backend_tls: None,
        path_prefix: PathPrefix::default(),
        drain_grace: grace,
        reroute: None,
        limits,
        routing: RoutingConfig::fixed(list, NonZeroU32::new(4).context("4")?),
    })
    .await?;
    let url = format!("ws://{}/ws/", router.local_addr());
    let events = out.join(format!("pod_leaves-{}-events.tsv", variant.name()));
    let settle = Duration::from_secs(20);
    let cfg = wsload::soak::SoakConfig {
        target: wsload::Target::parse(&url, "localhost")?,
        also: Vec::new(),
        log_opens: true,
        session_per_socket: false,
        sockets,
        stream_every: 0,
        stream_rate: 1.0,
        h2_every: 0,
        h2_connections: 1,
        churn_per_second: 0.0,
        reconnect_within: Duration::from_secs(1),
        tenants: sockets,
        tenant_prefix: "leave-".into(),
        size: 16,
        duration: settle + grace + Duration::from_secs(10),
        sample_every: Duration::from_secs(1),
        sources: Vec::new(),
        open_parallelism: 128,
        timeout: Duration::from_secs(10),
        watch_pid: None,
        samples: out.join(format!("pod_leaves-{}-samples.tsv", variant.name())),
        events: events.clone(),
    };
    let clients = tokio::spawn(wsload::soak::soak(cfg));
    // Every socket open before the swap.
    let open = || {
        router
            .live()
            .snapshot()
            .iter()
            .map(|(_, n)| *n as usize)
            .sum::<usize>()
    };
    let deadline = tokio::time::Instant::now() + settle;
    while open() < sockets {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "only {} of {sockets} sockets opened within {settle:?}",
                open()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swapped = epoch_ms();
    router.control().send(Input::Replicas(3));
    if variant == Variant::PodStops {
        backends[3].shutdown().await;
    }
    let report = tokio::time::timeout(Duration::from_secs(120), clients)
        .await
        .context("the clients overran")???;
    router.shutdown();
    summarize(
        variant,
        &events,
        swapped,
        sockets,
        report.closed_by_peer,
        out,
    )
}

/// Per second since the swap: closes, and reopens per backend; the peaks.
fn summarize(
    variant: Variant,
    events: &Path,
    swapped: u128,
    sockets: usize,
    closed: u64,
    out: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(events)?;
    let mut closes: BTreeMap<i64, u64> = BTreeMap::new();
    let mut reopens: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    let mut last_reopen = 0i64;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some(t), Some(backend), Some(event)) = (f.first(), f.get(3), f.get(4)) else {
            continue;
        };
        let Ok(t) = t.parse::<u128>() else { continue };
        if t < swapped {
            continue;
        }
        let ms = (t - swapped) as i64;
        if event.starts_with("closed_") {
            *closes.entry(ms / 1000).or_default() += 1;
        } else if *event == "opened" {
            *reopens
                .entry(ms / 1000)
                .or_default()
                .entry((*backend).to_owned())
                .or_default() += 1;
            last_reopen = last_reopen.max(ms);
        }
    }
    let mut tsv = String::from("second\tcloses\tbackend-0\tbackend-1\tbackend-2\tbackend-3\n");
    let seconds = closes
        .keys()
        .chain(reopens.keys())
        .copied()
        .max()
        .unwrap_or(0);
    let mut peak = 0;
    for s in 0..=seconds {
        let r = reopens.get(&s);
        let of = |b: &str| r.and_then(|m| m.get(b)).copied().unwrap_or(0);
        peak = peak.max(
            (0..3)
                .map(|i| of(&format!("backend-{i}")))
                .max()
                .unwrap_or(0),
        );
        tsv.push_str(&format!(
            "{s}\t{}\t{}\t{}\t{}\t{}\n",
            closes.get(&s).copied().unwrap_or(0),
            of("backend-0"),
            of("backend-1"),
            of("backend-2"),
            of("backend-3")
        ));
    }
    let path: PathBuf = out.join(format!("pod_leaves-{}.tsv", variant.name()));
    std::fs::write(&path, tsv)?;
    let peak_closes = closes.values().copied().max().unwrap_or(0);
    println!(
        "{:<10} {sockets} sockets, {closed} closed by the router or pod; closes peak {peak_closes}/s over {} s; reopens peak {peak}/s at one pod; last reopen {:.1} s after the swap ({})",
        variant.name(),
        closes.len(),
        last_reopen as f64 / 1000.0,
        path.display()
    );
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; this program takes no arguments.
    let sockets: usize = env_or("SOCKETS", 2000);
    let grace = Duration::from_secs(env_or("GRACE", 20));
    // `cargo bench` runs this in the package's directory: the default is the workspace's
    // target directory, beside the other benchmarks' output.
    let out = std::env::var("OUT").map_or_else(
        |_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pod_leaves")),
        PathBuf::from,
    );
    std::fs::create_dir_all(&out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        for v in [Variant::PodStops, Variant::Spread] {
            run(v, sockets, grace, &out).await?;
        }
        Ok(())
    })
}
