//! The `wsrouter` binary: parse, validate (exit 64 on bad config), run, drain on signals.

use std::process::ExitCode;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::Parser;
use router::config::{Cli, Command};
use router::RouterHandle;
use tokio::signal::unix::{signal, SignalKind};

// jemalloc rather than glibc's malloc: glibc kept what a burst of 16 KiB messages freed,
// so 9,000 idle sockets cost more after traffic than before; jemalloc's size classes stay
// flat (benches/RESULTS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start. By default it keeps freed pages for 10 s and
/// gives them back only when the process allocates again, so after a flood of hostile
/// handshakes an idle router would sit on the flood's memory. A background thread returns
/// dirty pages after 1 s, whether or not anything else happens, and nothing lingers as
/// "muzzy" (benches/RESULTS.md, the hostile-load run). `_RJEM_MALLOC_CONF` in the
/// environment still overrides these.
#[allow(unsafe_code)]
// SAFETY: jemalloc reads this NUL-terminated string once at initialisation; it is a
// plain immutable static with the symbol name tikv-jemalloc-sys' prefixed build looks up.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// EX_USAGE from sysexits.h: the configuration is wrong, restarting will not help.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_command_line(e),
    };
    router::logging::init(cli.log_format);
    // Connections run on their own I/O threads (server::io_thread); this runtime only
    // carries the control plane, the watchers and the admin listener.
    let io_threads = cli.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wsrouter-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsrouter: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.command, io_threads))
}

/// One subcommand, start to exit status.
async fn run(command: Command, io_threads: usize) -> ExitCode {
    match command {
        Command::Serve(args) => serve(*args, io_threads).await,
        Command::Dev(args) => dev(*args, io_threads).await,
        Command::Route(args) => route(&args),
        Command::Plan(args) => plan(&args).await,
        Command::Cert(args) => cert(&args),
    }
}

/// `wsrouter serve`: validate, reach the API server if needed, bind, watch, serve until
/// signalled.
async fn serve(args: router::config::ServeArgs, io_threads: usize) -> ExitCode {
    let (mut config, watch) = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    config.io_threads = io_threads;
    let kube = match router::watch::kube_client(&watch).await {
        Ok(k) => k,
        Err(e) => return config_error(&e),
    };
    let handle = match router::start(config).await.context("starting the router") {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = router::watch::start(&watch, &handle, kube).await {
        return config_error(&e);
    }
    serve_until_signals(handle).await
}

/// `wsrouter dev`: the router with in-process echo backends, until signalled.
async fn dev(args: router::config::DevArgs, io_threads: usize) -> ExitCode {
    match router::dev::start(args, io_threads).await {
        Ok(dev) => {
            println!("{}", dev.banner());
            // Backends live as long as the router; they drop after it drains.
            let backends = dev.backends;
            let r = serve_until_signals(dev.router).await;
            drop(backends);
            r
        }
        Err(router::dev::DevError::Config(e)) => config_error(&e),
        Err(e) => {
            tracing::error!("{:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

/// `wsrouter route`: the routing contract for one namespace, as a line or JSON.
fn route(args: &router::config::RouteArgs) -> ExitCode {
    let v = match router::ops::route(
        &args.namespace,
        args.replicas,
        args.overrides.as_deref(),
        &args.statefulset,
    ) {
        Ok(v) => v,
        Err(e) => return usage_error(&e),
    };
    if args.json {
        match serde_json::to_string(&v) {
            Ok(json) => println!("{json}"),
            Err(e) => return usage_error(&e),
        }
    } else {
        println!(
            "{} → {} (ordinal {}, {}; XXH3-64 {}, {} replicas)",
            v.namespace, v.pod, v.ordinal, v.source, v.xxh3_64, v.replicas
        );
    }
    ExitCode::SUCCESS
}

/// `wsrouter plan`: what an overrides edit or a scale would move.
async fn plan(args: &router::config::PlanArgs) -> ExitCode {
    let current = match &args.admin {
        Some(url) => router::ops::Current::from_admin(url, &args.statefulset).await,
        None => router::ops::Current::offline(
            args.current.as_deref(),
            args.current_replicas,
            &args.statefulset,
        ),
    };
    let plan = current.and_then(|cur| {
        let new = router::overrides_file::read_overrides(&args.overrides, &args.statefulset)?;
        router::ops::plan(&cur, new, args.replicas, &args.statefulset)
    });
    match plan {
        Ok(p) => {
            print!("{p}");
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(&e),
    }
}

/// `wsrouter cert`: a dev CA and a server certificate, written as a TLS Secret's files.
fn cert(args: &router::config::CertArgs) -> ExitCode {
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    match router::tls::DevCert::generate(&hosts).and_then(|c| c.write_to(&args.out)) {
        Ok(()) => {
            println!(
                "wrote {0}/ca.crt, {0}/tls.crt, {0}/tls.key for {1}",
                args.out.display(),
                hosts.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{}", router::logging::DisplayChain(&e));
            ExitCode::FAILURE
        }
    }
}

/// clap's verdict on the command line: help and version as asked (exit 0); anything
/// else is a configuration error, one line naming the flag and what is wrong, exit 64.
fn bad_command_line(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_CONFIG)
        }
        _ => {
            // clap's message runs to the first blank line (a list of missing flags
            // spans several); the usage and tips after it are left out.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = message.join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("wsrouter: invalid configuration: {line}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// A rejected plan or route input: the reasons on stderr, one per line, exit 1.
fn usage_error(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("wsrouter: {}", router::logging::DisplayChain(e));
    ExitCode::FAILURE
}

fn config_error(e: &dyn std::error::Error) -> ExitCode {
    tracing::error!(
        "invalid configuration: {}",
        router::logging::DisplayChain(e)
    );
    ExitCode::from(EXIT_CONFIG)
}

/// SIGTERM or SIGINT begins the drain; a second one skips the rest of the grace period.
async fn serve_until_signals(handle: RouterHandle) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    handle.shutdown();
    let mut wait = std::pin::pin!(handle.drained());
    tokio::select! {
        _ = &mut wait => {}
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            tracing::info!("second signal: closing live sockets now");
            handle.close_now();
            wait.await;
        }
    }
    ExitCode::SUCCESS
}
