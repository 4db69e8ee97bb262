//! What a command line can get wrong once clap has parsed it: each error names the flag.

use std::path::PathBuf;

use thiserror::Error;
use wsrouter::{BackendsError, PrefixError, TemplateError};

use crate::control::overrides_file::OverridesFileError;
use crate::data::admission::forwarded::CidrError;
use crate::data::admission::policy::OriginError;
use crate::data::tls::config::TlsError;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--path-prefix")]
    Prefix(#[source] PrefixError),
    #[error("--backend")]
    Backends(#[source] BackendsError),
    #[error("--backend-template")]
    Template(#[source] TemplateError),
    #[error("--replicas must be at least 1")]
    ZeroReplicas,
    #[error("backend set {value:?}: {why}")]
    BackendSet { value: String, why: &'static str },
    #[error("--replicas {replicas} but only {addresses} --backend addresses")]
    ReplicasMismatch { replicas: u32, addresses: usize },
    #[error("TLS")]
    Tls(#[source] TlsError),
    #[error("--overrides-file")]
    OverridesFile(#[source] OverridesFileError),
    #[error("--max-header-bytes must be at least 8192 (the HTTP/1 minimum buffer)")]
    HeaderBytesTooSmall,
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--max-pending and --max-pending-per-ip must be at least 1")]
    NoPending,
    #[error("--max-pending-bytes must be at least {min} (one pending connection)")]
    PendingBytesTooSmall { min: usize },
    #[error("--max-client-hello must be between 1KiB and 64KiB")]
    ClientHelloOutOfRange,
    #[error(transparent)]
    Origins(OriginError),
    #[error("{0} must be more than 0 (leave it out to turn it off)")]
    ZeroDuration(&'static str),
    #[error("{0} must be more than 0")]
    ZeroSize(&'static str),
    #[error("{0} must be at least 1")]
    ZeroCount(&'static str),
    #[error("--connection-rate-per-ip must be a number of connections per second, 0 or more")]
    BadRate,
    #[error(transparent)]
    TrustedProxies(CidrError),
    #[error(
        "--admin-token must be at least 16 visible ASCII characters (e.g. `openssl rand -hex 32`)"
    )]
    AdminToken,
    #[error("--proxy-protocol on needs --trusted-proxies: the load balancer's addresses (everyone else is refused)")]
    ProxyProtocolUntrusted,
    #[error("{0} needs --auth jwt")]
    AuthFlagWithoutAuth(&'static str),
    #[error("--auth jwt needs {0}")]
    AuthNeeds(&'static str),
    #[error("{0} needs --auth forward:URL")]
    ForwardFlagWithoutForward(&'static str),
    #[error("{0}: {1:?} is not a header the authorization service may be sent or send")]
    AuthHeader(&'static str, String),
    #[error("--backend-client-cert and --backend-client-key go together")]
    BackendClientPair,
    #[error("--backend-ca, --backend-client-cert and --backend-server-name need --backend-tls")]
    BackendTlsFlagWithoutTls,
    #[error("--backend-tls needs --backend-ca (the CA bundle the pods' certificates chain to)")]
    BackendCaNeeded,
    #[error("--backend-tls")]
    BackendTls(#[source] crate::data::upstream::tls::BackendTlsError),
    #[error("--jwt-claims-header {0:?} is not a header name")]
    ClaimsHeader(String),
    #[error("--jwks-file")]
    Jwks(#[source] crate::control::watch::jwks::JwksFileError),
    #[error("--tls-ticket-keys {path}")]
    TicketKeys {
        path: PathBuf,
        #[source]
        source: crate::data::tls::tickets::TicketKeysError,
    },
    #[error("--tls-ticket-lifetime must be more than 0 and at most 7 days (RFC 8446)")]
    TicketLifetime,
    #[error("--tls-ticket-keys: reading {path}")]
    TicketKeysRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
