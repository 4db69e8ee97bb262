//! `echo-backend`: the echo server as a process, for the StatefulSet.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "echo-backend",
    version,
    about = "Streams counters and echoes WebSocket messages and HTTP bodies (plus SSE and a SignalR test hub)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ECHO_LISTEN", default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
    /// Time between counter messages (e.g. 1s, 250ms).
    #[arg(long, env = "ECHO_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Path prefix of everything but /healthz and /stats.
    #[arg(long, env = "ECHO_PATH_PREFIX", default_value = "/ws/")]
    path_prefix: String,
    /// Where a request names its tenant (the `ns` this server reports), as the router's
    /// flag: `path` (the segment after the prefix), `header:NAME` or `query:NAME`.
    #[arg(long, env = "ECHO_TENANT_FROM", default_value = "path")]
    tenant_from: wsrouter::TenantFrom,
    /// Name in the `server` field; defaults to $POD_NAME, then the hostname.
    #[arg(long, env = "ECHO_SERVER_NAME")]
    server_name: Option<String>,
    /// `counter`: stream counters (the first at connect) and echo; `echo`: echo only, as
    /// conformance suites (Autobahn) expect.
    #[arg(long, env = "ECHO_MODE", value_enum, default_value_t = Mode::Counter)]
    mode: Mode,
    /// Serve TLS with this certificate chain (PEM), as pods behind `wsrouter --backend-tls`; with --tls-key.
    #[arg(long, env = "ECHO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "ECHO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Ask every client for a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "ECHO_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
}

/// The TLS config of --tls-cert, --tls-key and --tls-client-ca.
fn tls_config(args: &Args) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &args.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots.add(c.with_context(|| format!("reading {}", ca.display()))?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(std::sync::Arc::new(config)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Counter,
    Echo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let tls = tls_config(&args)?;
    let mut config = backend::EchoConfig::new(
        args.server_name
            .unwrap_or_else(backend::default_server_name),
    )
    .with_interval(args.interval)
    .with_tenant_from(args.tenant_from);
    config.counters = args.mode == Mode::Counter;
    config.tls = tls;

    config.path_prefix = wsrouter::PathPrefix::new(&args.path_prefix).context("--path-prefix")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let handle = backend::serve(listener, config.clone())?;
    tracing::info!(listen.addr = %handle.local_addr(), server = %config.server_name, "echo backend listening");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: closing sockets with 1001");
    handle.shutdown().await;
    Ok(())
}
