//! The shared session-ticket keys (`--tls-ticket-keys`), watched like the certificate: a
//! file that parses is swapped into the ticketer whole (the next ticket is sealed with its
//! first key, and any of its keys opens one); a bad or missing one is logged with why,
//! and the last good keys keep working.

use super::files::{watch_dirs, FileWatchError, Reloaded};
use crate::config::Tickets;
use crate::control::ControlHandle;
use crate::data::tls::tickets::TicketKeys;
use crate::logging::DisplayChain;

/// Watches the keys' file (through its directory: a Secret volume swaps `..data`) until
/// the router drains.
pub(crate) fn spawn(
    tickets: Tickets,
    control: &ControlHandle,
) -> Result<tokio::task::JoinHandle<()>, FileWatchError> {
    let Tickets { path, ticketer } = tickets;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    tracing::info!(path = %path.display(), "watching the TLS session-ticket keys");
    // The bytes last loaded: events that change nothing do not count as reloads.
    let mut loaded = std::fs::read(&path).ok();
    let stats = control.stats.clone();
    watch_dirs(&[dir], control.stopping(), move |_| {
        let current = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Gone for a moment (kubelet's swap) or for good: the keys in force stay.
                if loaded.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "TLS ticket keys unreadable; keeping the last good ones");
                }
                return Reloaded::Done;
            }
        };
        if loaded.as_ref() == Some(&current) {
            return Reloaded::Done;
        }
        match TicketKeys::parse(&current) {
            Ok(keys) => {
                let n = keys.len();
                ticketer.swap(keys);
                loaded = Some(current);
                stats.ticket_key_reloads.inc();
                stats.changes.note();
                tracing::info!(path = %path.display(), keys = n, "TLS ticket keys reloaded; new tickets use the first");
            }
            Err(e) => {
                stats.ticket_key_reload_failures.inc();
                tracing::warn!(path = %path.display(), error = %DisplayChain(&e), "new TLS ticket keys unusable; keeping the last good ones");
            }
        }
        Reloaded::Done
    })
}
