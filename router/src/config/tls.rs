//! TLS: what the handshake offers (key-exchange groups, ALPN) for `serve` and `dev`,
//! and where `serve` finds its certificate. Reading the files is the caller's step
//! ([`crate::data::tls::config::load_server_config`]); here they are only named.

use std::path::PathBuf;

use clap::Args;

use super::values::Span;
use super::ConfigError;
use crate::data::tls::config::{KeyExchange, TlsOptions};
use crate::data::tls::tickets::{SharedTicketer, TicketKeys, Tickets};

/// What the TLS handshake offers. No defaults but empty and off, and the tickets'
/// lifetime ([`TlsArgs::default`]).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// TLS key-exchange groups to accept, most preferred first; repeat it or give a comma list [default: rustls' own: x25519, secp256r1, secp384r1, x25519mlkem768]
    #[arg(
        long = "tls-key-exchange",
        env = "WSROUTER_TLS_KEY_EXCHANGE",
        value_enum,
        value_delimiter = ','
    )]
    pub tls_key_exchange: Vec<KeyExchange>,
    /// Do not offer HTTP/2 in ALPN: every client speaks HTTP/1.1 (WebSockets over HTTP/2 are RFC 8441 extended CONNECT streams).
    #[arg(long, env = "WSROUTER_NO_HTTP2")]
    pub no_http2: bool,
    /// Session-ticket keys every replica shares, so a client resumes on any of them: one or more keys of 80 random bytes each, concatenated, newest first (NGINX's ssl_session_ticket_key format); watched. Missing: this replica's own key until the file appears.
    #[arg(long, env = "WSROUTER_TLS_TICKET_KEYS")]
    pub tls_ticket_keys: Option<PathBuf>,
    /// How long a session ticket may be used to resume (with --tls-ticket-keys).
    #[arg(long, env = "WSROUTER_TLS_TICKET_LIFETIME", default_value_t = TlsArgs::default().tls_ticket_lifetime)]
    pub tls_ticket_lifetime: Span,
}

impl Default for TlsArgs {
    fn default() -> Self {
        Self {
            tls_key_exchange: Vec::new(),
            no_http2: false,
            tls_ticket_keys: None,
            // rustls' own ticketer's: long enough to span a rollout, short enough that
            // a leaked key opens little.
            tls_ticket_lifetime: Span::secs(6 * 3600),
        }
    }
}

impl TlsArgs {
    /// The handshake's options, without the ticket keys ([`TlsArgs::tickets`] reads them).
    pub fn tls_options(&self) -> TlsOptions {
        TlsOptions {
            http2: !self.no_http2,
            key_exchange: self.tls_key_exchange.clone(),
            tickets: None,
        }
    }

    /// The shared ticket keys (`--tls-ticket-keys`): a bad file stops the router here; a
    /// missing one (an optional Secret not made yet) starts it with a key of its own,
    /// and the watcher swaps the file's in when it appears.
    pub fn tickets(&self) -> Result<Option<Tickets>, ConfigError> {
        let Some(path) = &self.tls_ticket_keys else {
            return Ok(None);
        };
        let bad = |source| ConfigError::TicketKeys {
            path: path.clone(),
            source,
        };
        let lifetime = self.tls_ticket_lifetime.get();
        // RFC 8446 caps a ticket's lifetime at 7 days; a zero one would never resume.
        if lifetime.is_zero() || lifetime > std::time::Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::TicketLifetime);
        }
        let (keys, loaded) = match std::fs::read(path) {
            Ok(bytes) => (TicketKeys::parse(&bytes).map_err(bad)?, Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "--tls-ticket-keys: no such file yet; tickets open on this replica only until it appears");
                (TicketKeys::random().map_err(bad)?, None)
            }
            Err(e) => {
                return Err(ConfigError::TicketKeysRead {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        Ok(Some(Tickets {
            path: path.clone(),
            ticketer: SharedTicketer::new(keys, lifetime),
            loaded,
        }))
    }
}

/// `serve`'s certificate and key, or `--plaintext`; clap holds them to "both or
/// plaintext".
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "TLS")]
pub struct TlsFiles {
    /// PEM certificate chain for TLS.
    #[arg(long, env = "WSROUTER_TLS_CERT", required_unless_present = "plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "WSROUTER_TLS_KEY", required_unless_present = "plaintext")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain ws:// instead of TLS (behind a TLS-terminating load balancer, or for tests).
    #[arg(long, env = "WSROUTER_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plaintext: bool,
}

impl TlsFiles {
    /// The certificate and key to serve (and watch); `None`: plaintext.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        match (self.plaintext, &self.tls_cert, &self.tls_key) {
            (false, Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            // clap makes cert and key required unless --plaintext.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_data_paths() {
        assert_eq!(TlsArgs::default().tls_options(), TlsOptions::default());
    }

    #[test]
    fn flags_become_the_handshakes_options() {
        let o = TlsArgs {
            tls_key_exchange: vec![KeyExchange::X25519Mlkem768, KeyExchange::X25519],
            no_http2: true,
            ..TlsArgs::default()
        }
        .tls_options();
        assert!(!o.http2);
        assert_eq!(
            o.key_exchange,
            [KeyExchange::X25519Mlkem768, KeyExchange::X25519]
        );
    }

    #[test]
    fn the_files_are_both_or_none() {
        let both = TlsFiles {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            plaintext: false,
        };
        assert_eq!(both.files(), Some(("c.pem".into(), "k.pem".into())));
        assert_eq!(TlsFiles::default().files(), None);
        let plain = TlsFiles {
            plaintext: true,
            ..both
        };
        assert_eq!(plain.files(), None);
    }
}
