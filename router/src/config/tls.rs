//! TLS: what the handshake offers (key-exchange groups, ALPN) for `serve` and `dev`,
//! and where `serve` finds its certificate. Reading the files is the caller's step
//! ([`crate::data::tls::config::load_server_config`]); here they are only named.

use std::path::PathBuf;

use clap::Args;

use crate::data::tls::config::{KeyExchange, TlsOptions};

/// What the TLS handshake offers. No defaults but empty and off.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
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
}

impl TlsArgs {
    pub fn tls_options(&self) -> TlsOptions {
        TlsOptions {
            http2: !self.no_http2,
            key_exchange: self.tls_key_exchange.clone(),
        }
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
