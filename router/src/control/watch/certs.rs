//! Certificate hot reload: the router watches the directory of its mounted certificate
//! and key (a Secret volume swaps `..data` like a ConfigMap volume) and swaps its rustls
//! config. New handshakes get the new certificate; live sockets are untouched; a broken
//! or mismatched pair is logged and the last good one keeps serving.

use std::path::{Path, PathBuf};

use super::files::{watch_dirs, FileWatchError, Reloaded};
use crate::control::ControlHandle;
use crate::data::tls::config::{self as tls_config, TlsSlot};
use crate::logging::DisplayChain;

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Watches `cert` and `key` and stores every good new pair into `slot`, until the
/// router drains.
pub(crate) fn spawn(
    cert: PathBuf,
    key: PathBuf,
    slot: TlsSlot,
    control: &ControlHandle,
) -> Result<tokio::task::JoinHandle<()>, FileWatchError> {
    let mut dirs = vec![parent(&cert)];
    if parent(&key) != dirs[0] {
        dirs.push(parent(&key));
    }
    tracing::info!(cert = %cert.display(), key = %key.display(), "watching the TLS certificate");
    // The bytes last loaded: events that change nothing (kubelet touches, our own first
    // read) do not rebuild the config.
    let mut loaded: Option<(Vec<u8>, Vec<u8>)> =
        std::fs::read(&cert).ok().zip(std::fs::read(&key).ok());
    let stats = control.stats.clone();
    watch_dirs(&dirs, control.stopping(), move |_| {
        let current = std::fs::read(&cert).ok().zip(std::fs::read(&key).ok());
        if current.is_none() || current == loaded {
            return Reloaded::Done;
        }
        match tls_config::reload_server_config(&cert, &key, &slot.load()) {
            Ok(config) => {
                slot.store(config);
                loaded = current;
                stats.tls_reloads.inc();
                stats.changes.note();
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded; new handshakes use it");
            }
            Err(e) => {
                stats.tls_reload_failures.inc();
                tracing::warn!(error = %DisplayChain(&e), "new TLS certificate unusable; keeping the last good one");
            }
        }
        Reloaded::Done
    })
}
