//! The shared session-ticket keys (`--tls-ticket-keys`), watched like the certificate: a
//! file that parses is swapped into the ticketer whole (the next ticket is sealed with its
//! first key, and any of its keys opens one); a bad or missing one is logged with why,
//! and the last good keys keep working.

use super::files::{watch_dirs, FileWatchError, Reloaded};
use crate::control::ControlHandle;
use crate::data::tls::tickets::TicketKeys;
use crate::data::tls::tickets::Tickets;
use crate::logging::DisplayChain;

/// Watches the keys' file (through its directory: a Secret volume swaps `..data`) until
/// the router drains.
pub(crate) fn spawn(
    tickets: Tickets,
    control: &ControlHandle,
) -> Result<tokio::task::JoinHandle<()>, FileWatchError> {
    let Tickets {
        path,
        ticketer,
        loaded,
    } = tickets;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    tracing::info!(path = %path.display(), "watching the TLS session-ticket keys");
    let mut keys = Keys {
        path,
        ticketer,
        loaded,
        stats: control.stats.clone(),
    };
    // The file may have appeared or changed since the keys were read at start (before
    // the watch began, so no event says so).
    keys.check();
    watch_dirs(&[dir], control.stopping(), move |_| {
        keys.check();
        Reloaded::Done
    })
}

/// The watched file and what was last swapped in from it.
struct Keys {
    path: std::path::PathBuf,
    ticketer: std::sync::Arc<crate::data::tls::tickets::SharedTicketer>,
    /// The bytes in force; `None`: the replica's own key.
    loaded: Option<Vec<u8>>,
    stats: std::sync::Arc<crate::control::ControlStats>,
}

impl Keys {
    /// Reads the file and swaps its keys in if they are new and good.
    fn check(&mut self) {
        let path = &self.path;
        let current = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Gone for a moment (kubelet's swap) or for good: the keys in force stay.
                if self.loaded.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "TLS ticket keys unreadable; keeping the last good ones");
                }
                return;
            }
        };
        if self.loaded.as_ref() == Some(&current) {
            return;
        }
        match TicketKeys::parse(&current) {
            Ok(keys) => {
                let n = keys.len();
                self.ticketer.swap(keys);
                self.loaded = Some(current);
                self.stats.ticket_key_reloads.inc();
                self.stats.changes.note();
                tracing::info!(path = %path.display(), keys = n, "TLS ticket keys reloaded; new tickets use the first");
            }
            Err(e) => {
                self.stats.ticket_key_reload_failures.inc();
                tracing::warn!(path = %path.display(), error = %DisplayChain(&e), "new TLS ticket keys unusable; keeping the last good ones");
            }
        }
    }
}
