//! The `wsrouter` binary: parse the command line (exit 64 on a bad one), set up logging
//! and the control runtime, and run the subcommand (`router::run`).

use std::process::ExitCode;

use clap::Parser;
use router::{bad_command_line, Cli};

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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_command_line(&e),
    };
    router::init_logging(cli.log_format);
    // Connections run on their own I/O threads (data::edge::listen); this runtime only
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
    runtime.block_on(router::run(cli.command, io_threads))
}
