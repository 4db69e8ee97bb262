//! Reroute drain (opt-in, `--reroute-drain GRACE`): when a table swap moves a tenant to
//! another backend, its live sockets on the old one are closed with 1012 (service restart)
//! after the grace period, so clients reconnect to the tenant's new home.
//!
//! Only tenants whose route changed are touched. Closes are spread with jitter over a
//! second grace period and rate-limited, so a big reroute does not become a reconnect
//! storm; a tenant that moves back before its turn keeps its sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::time::Instant;
use wsrouter::RoutingTable;

/// A random number. `fastrand` seeds each thread from the standard library's random
/// hasher keys, which come from the operating system, so replicas that swap their tables
/// at the same moment do not pick the same jitter (a seed from the clock or the table
/// would line them up).
fn random() -> u64 {
    fastrand::u64(..)
}

#[derive(Debug, Clone, Copy)]
pub struct RerouteConfig {
    /// How long a moved tenant's sockets keep running before their close is scheduled.
    pub grace: Duration,
    /// Most reroute closes per second, across the router.
    pub per_second: u32,
}

pub(crate) struct Reroute {
    config: RerouteConfig,
    table: Arc<ArcSwapOption<RoutingTable>>,
    changes: watch::Receiver<u64>,
    /// The earliest time the next close may happen.
    next_turn: Mutex<Instant>,
}

impl Reroute {
    pub(crate) fn new(
        config: RerouteConfig,
        table: Arc<ArcSwapOption<RoutingTable>>,
        changes: watch::Receiver<u64>,
    ) -> Self {
        Self {
            config,
            table,
            changes,
            next_turn: Mutex::new(Instant::now()),
        }
    }

    fn routes_elsewhere(&self, tenant: &str, ordinal: u32) -> bool {
        self.table
            .load()
            .as_deref()
            .is_some_and(|t| t.route(tenant).ordinal != ordinal)
    }

    /// Waits for this relay's turn to close, keeping closes at most `per_second` apart.
    async fn take_turn(&self) {
        let interval = Duration::from_secs(1) / self.config.per_second.max(1);
        let turn = {
            let mut next = self.next_turn.lock().unwrap_or_else(|p| p.into_inner());
            let turn = (*next).max(Instant::now());
            *next = turn + interval;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }

    /// Resolves when the socket of `tenant`, relayed to `ordinal`, should get 1012: its
    /// route has moved elsewhere, the grace period (plus jitter) has passed, its turn has
    /// come, and it still routes elsewhere. Never resolves otherwise.
    pub(crate) async fn moved(&self, tenant: &str, ordinal: u32) {
        let mut changes = self.changes.clone();
        loop {
            while !self.routes_elsewhere(tenant, ordinal) {
                if changes.changed().await.is_err() {
                    // The control loop is gone (the router is stopping); shutdown closes us.
                    return std::future::pending().await;
                }
            }
            let grace = self.config.grace;
            let spread = grace.as_millis().max(1) as u64;
            let jitter = Duration::from_millis(random() % spread);
            tokio::time::sleep(grace + jitter).await;
            self.take_turn().await;
            if self.routes_elsewhere(tenant, ordinal) {
                return;
            }
            // Moved back meanwhile: the socket is home again.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two replicas swapping together used to jitter alike: the draw depended only on
    /// the tenant and a near-constant salt. Now the same tenant, at the same moment,
    /// gets independent draws.
    #[test]
    fn jitter_is_drawn_fresh_for_every_socket() {
        let draws: std::collections::HashSet<u64> = (0..64).map(|_| random() % 10_000).collect();
        assert!(draws.len() > 48, "{} distinct of 64", draws.len());
    }
}
