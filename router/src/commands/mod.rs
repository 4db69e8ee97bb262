//! What the `wsrouter` binary runs, one module per subcommand family, apart from the
//! daemon they start or query.
//!
//! - [`serve`]: `wsrouter serve`: the daemon, its watchers, the drain on signals.
//! - [`dev`]: `wsrouter dev`: the router with in-process echo backends, and its page
//!   (`dev_page`).
//! - [`plan`]: `wsrouter route` and `wsrouter plan`: the routing contract and what an
//!   edit would move.
//! - [`cert`]: `wsrouter cert`: a development certificate on disk.
//! - [`exit`]: exit statuses and how errors are reported.

pub(crate) mod cert;
pub(crate) mod dev;
mod dev_page;
pub(crate) mod exit;
pub(crate) mod plan;
pub(crate) mod plan_sets;
pub(crate) mod serve;

use std::process::ExitCode;

use crate::config::Command;

/// One subcommand, start to exit status. `io_threads`: the data path's event loops.
pub async fn run(command: Command, io_threads: usize) -> ExitCode {
    match command {
        Command::Serve(args) => serve::run(*args, io_threads).await,
        Command::Dev(args) => dev::run(*args, io_threads).await,
        Command::Route(args) => plan::run_route(&args),
        Command::Plan(args) => plan::run_plan(&args).await,
        Command::Cert(args) => cert::run(&args),
    }
}
