//! `wsload`: load a WebSocket proxy on this machine. See the library docs for the modes.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use wsload::{LoadConfig, Mode, Target};

#[derive(Parser, Debug)]
#[command(
    name = "wsload",
    version,
    about = "Load a WebSocket proxy on loopback: ping-pong latency, throughput, idle connections"
)]
struct Args {
    /// ws://IP:PORT/PREFIX/ or wss://IP:PORT/PREFIX/ (loopback only); connection i uses PREFIX{tenant-prefix}{i % tenants}.
    #[arg(long, default_value = "wss://127.0.0.1:8443/ws/")]
    url: String,
    /// soak: another router beside --url (repeat it), as replicas behind one Service: a socket whose router refuses its connection opens on the next.
    #[arg(long)]
    also_url: Vec<String>,
    /// soak: write a `dialed` (router index) and an `opened` (backend) event for every socket opened.
    #[arg(long)]
    log_opens: bool,
    /// soak: each socket keeps its own TLS session cache, as each real client does (a reconnect resumes with its own ticket, if the router opens it).
    #[arg(long)]
    session_per_socket: bool,
    /// TLS server name and Host header.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, value_enum, default_value_t = ModeArg::PingPong)]
    mode: ModeArg,
    /// Concurrent connections (at most 50,000).
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Distinct tenant namespaces the connections are spread over.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    #[arg(long, default_value = "load-")]
    tenant_prefix: String,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measurement time, or idle time per phase for hold-idle (at most 10m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// ping-pong: messages per second per connection, each timed from its scheduled send time.
    #[arg(long)]
    rate: Option<f64>,
    /// throughput: messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// hold-idle: after the first idle phase each connection carries one message of this many bytes, then idles again.
    #[arg(long)]
    burst: Option<usize>,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, … (0: let the OS choose).
    #[arg(long, default_value_t = 0)]
    sources: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Bound on each connect and each echo.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Open every WebSocket as an HTTP/2 extended CONNECT stream (RFC 8441), spread over
    /// this many HTTP/2 connections (wss:// only). 0: one HTTP/1.1 upgrade per connection.
    #[arg(long, default_value_t = 0)]
    h2_connections: usize,
    /// With --h2-connections: also send a Sec-WebSocket-Key in each extended CONNECT.
    /// RFC 8441 has none; a proxy that passes the stream to an HTTP/1.1 backend must make
    /// one up. Envoy 1.40 does not (envoy#8547), so its backends refuse without this.
    #[arg(long)]
    h2_client_key: bool,
    /// Begin every connection with a PROXY protocol v2 header (its own addresses), as a
    /// load balancer with send-proxy-v2 does: for a router run with --proxy-protocol on.
    #[arg(long)]
    proxy_v2: bool,
    /// Appended to every socket's path after `?`: `access_token=TOKEN` for a router run
    /// with --auth jwt.
    #[arg(long)]
    query: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// soak: every this-many-th socket streams (ping-pong at --rate, default 10/s); 0: none.
    #[arg(long, default_value_t = 18)]
    stream_every: usize,
    /// soak: every this-many-th socket is an HTTP/2 stream on one of --h2-connections; 0: none.
    #[arg(long, default_value_t = 4)]
    h2_every: usize,
    /// soak: sockets closed by the client and opened again per second, oldest first.
    #[arg(long, default_value_t = 50.0)]
    churn: f64,
    /// soak: after a close it did not make (or a failed open), a socket reopens after a
    /// random wait below this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    reconnect_within: Duration,
    /// soak: time between samples.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// soak: also sample this process's RSS, descriptors and CPU from /proc.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// soak: where the samples go (TSV).
    #[arg(long, default_value = "soak-samples.tsv")]
    samples: std::path::PathBuf,
    /// soak: where closes the client did not make, and refused opens, go (TSV).
    #[arg(long, default_value = "soak-events.tsv")]
    events: std::path::PathBuf,
    /// flood: what each connection sends before it stalls.
    #[arg(long, value_enum, default_value_t = HelloArg::Partial)]
    hello: HelloArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HelloArg {
    /// 62 KB of a ClientHello claiming 65,520 bytes.
    Partial,
    /// 15,000 bytes of a ClientHello claiming 16,000.
    PartialWithinLimit,
    /// A whole ClientHello, then nothing.
    Complete,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    PingPong,
    Throughput,
    HoldIdle,
    /// Hostile: stalled TLS handshakes held (and reopened when dropped) for --duration.
    Flood,
    /// Hold -c sockets for --duration (up to 2h) while they churn; see the soak options.
    Soak,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.connections == 0 || a.connections > 50_000 {
        bail!("--connections must be 1..=50000");
    }
    let soaking = matches!(a.mode, ModeArg::Soak);
    if a.duration > Duration::from_secs(if soaking { 7200 } else { 600 }) {
        bail!("--duration is at most 10m (2h for a soak)");
    }
    let sources: Vec<IpAddr> = (0..a.sources.min(250))
        .map(|i| IpAddr::from([127, 0, 0, 2u8.saturating_add(i)]))
        .collect();
    if let ModeArg::Flood = a.mode {
        let cfg = wsload::flood::FloodConfig {
            target: Target {
                proxy_v2: a.proxy_v2,
                query: a.query.clone(),
                ..Target::parse(&a.url, &a.server_name)?
            },
            connections: a.connections,
            hello: match a.hello {
                HelloArg::Partial => wsload::flood::Hello::Partial,
                HelloArg::PartialWithinLimit => wsload::flood::Hello::PartialWithinLimit,
                HelloArg::Complete => wsload::flood::Hello::Complete,
            },
            duration: a.duration,
            sources,
            open_parallelism: a.parallel,
            timeout: a.timeout,
        };
        let limit = a.duration + a.timeout * 2 + Duration::from_secs(30);
        let report = tokio::time::timeout(limit, wsload::flood::flood(cfg))
            .await
            .context("the flood overran its time bound")??;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if soaking {
        let cfg = wsload::soak::SoakConfig {
            target: Target {
                proxy_v2: a.proxy_v2,
                query: a.query.clone(),
                ..Target::parse(&a.url, &a.server_name)?
            },
            also: a
                .also_url
                .iter()
                .map(|u| {
                    Ok(Target {
                        proxy_v2: a.proxy_v2,
                        query: a.query.clone(),
                        ..Target::parse(u, &a.server_name)?
                    })
                })
                .collect::<Result<_, wsload::LoadError>>()?,
            log_opens: a.log_opens,
            session_per_socket: a.session_per_socket,
            sockets: a.connections,
            stream_every: a.stream_every,
            stream_rate: a.rate.unwrap_or(10.0),
            h2_every: a.h2_every,
            h2_connections: a.h2_connections.max(1),
            churn_per_second: a.churn,
            reconnect_within: a.reconnect_within,
            tenants: a.tenants,
            tenant_prefix: a.tenant_prefix,
            size: a.size.max(16),
            duration: a.duration,
            sample_every: a.sample_every,
            sources,
            open_parallelism: a.parallel,
            timeout: a.timeout,
            watch_pid: a.watch_pid,
            samples: a.samples,
            events: a.events,
        };
        let limit = a.duration + a.timeout * 4 + Duration::from_secs(120);
        let report = tokio::time::timeout(limit, wsload::soak::soak(cfg))
            .await
            .context("the soak overran its time bound")??;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let mode = match a.mode {
        ModeArg::PingPong => Mode::PingPong { rate: a.rate },
        ModeArg::Throughput => Mode::Throughput { window: a.window },
        ModeArg::HoldIdle => Mode::HoldIdle { burst: a.burst },
        ModeArg::Flood | ModeArg::Soak => unreachable!("handled above"),
    };
    let cfg = LoadConfig {
        target: Target {
            proxy_v2: a.proxy_v2,
            query: a.query.clone(),
            ..Target::parse(&a.url, &a.server_name)?
        },
        connections: a.connections,
        tenants: a.tenants,
        tenant_prefix: a.tenant_prefix,
        mode,
        size: a.size.max(16),
        duration: a.duration,
        sources,
        open_parallelism: a.parallel,
        timeout: a.timeout,
        h2_connections: a.h2_connections,
        h2_client_key: a.h2_client_key,
    };
    // Everything is bounded: the run, plus opening and draining, cannot outlast this.
    let limit = a.duration * 3 + a.timeout * 4 + Duration::from_secs(60);
    let report = tokio::time::timeout(limit, wsload::run(cfg))
        .await
        .context("the run overran its time bound")??;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "connections {} over {} TCP (failed {}), {:.0} connects/s; messages {} in {:.2}s = {:.0} msg/s, {:.1} MB/s; errors {}",
            report.connections, report.tcp_connections, report.connect_failures, report.connects_per_second, report.messages, report.seconds,
            report.messages_per_second, report.megabytes_per_second, report.errors
        );
        if let Some(l) = &report.latency {
            println!(
                "latency µs: p50 {} p99 {} p99.9 {} max {} ({} samples)",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
            );
        }
        if let Some(n) = report.still_echoing {
            println!("still echoing after holding: {n}/{}", report.connections);
        }
    }
    Ok(())
}
