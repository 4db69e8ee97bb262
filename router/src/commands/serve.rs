//! `wsrouter serve`: validate, reach the API server if needed, start the daemon and its
//! watchers, and drain on signals.

use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

use super::exit::{config_error, failure};
use crate::config::ServeArgs;
use crate::control::watch;
use crate::daemon::{self, RouterHandle};

pub(crate) async fn run(args: ServeArgs, io_threads: usize) -> ExitCode {
    let (mut config, watch) = match args.into_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    config.io_threads = io_threads;
    let kube = match watch::kube_client(&watch).await {
        Ok(k) => k,
        Err(e) => return config_error(&e),
    };
    let handle = match daemon::start(config).await {
        Ok(h) => h,
        Err(e) => return failure("starting the router", &e),
    };
    if let Err(e) = watch::start(&watch, &handle.control(), kube).await {
        return config_error(&e);
    }
    until_signals(handle).await
}

/// SIGTERM or SIGINT begins the drain; a second one skips the rest of the grace period.
pub(crate) async fn until_signals(handle: RouterHandle) -> ExitCode {
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
