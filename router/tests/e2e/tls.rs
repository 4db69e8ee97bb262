//! What the TLS listener offers, and the explicit plaintext mode.

use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use router::DevCert;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::harness::*;

fn client(
    cert: &DevCert,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>> {
    let mut config = router::client_config(std::slice::from_ref(&cert.ca_der), versions)?;
    // Offer h2 first: with --no-http2 the router must still settle on http/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A WebSocket upgrade over `tls` reaches a backend and gets its first counter.
async fn upgrade_and_count(
    h: &Harness,
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<()> {
    let url = format!("wss://localhost:{}/ws/ns-01", h.addr().port());
    let (mut ws, _) = within(WAIT, "upgrade", tokio_tungstenite::client_async(url, tls)).await??;
    next_counter(&mut ws).await?;
    Ok(())
}

/// TLS 1.2 and 1.3 both work; with `--no-http2`, ALPN settles on http/1.1 even when h2
/// is offered first, and by default on h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_with_alpn_http11() -> Result<()> {
    let cert = DevCert::generate(&["localhost"])?;
    let h = Harness::start_with_cert(
        Options {
            tls_options: router::TlsOptions {
                http2: false,
                ..Default::default()
            },
            ..Options::default()
        },
        &cert,
    )
    .await?;
    let both = Harness::start_with_cert(Options::default(), &cert).await?;
    let tcp = TcpStream::connect(both.addr()).await?;
    let tls = tokio_rustls::TlsConnector::from(client(&cert, rustls::DEFAULT_VERSIONS)?)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    for (versions, want) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        let connector = tokio_rustls::TlsConnector::from(client(&cert, versions)?);
        let tcp = TcpStream::connect(h.addr()).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.protocol_version(), Some(want));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        upgrade_and_count(&h, tls).await?;
    }
    Ok(())
}

/// `--tls-key-exchange x25519` holds even against a client that prefers the post-quantum
/// hybrid, which an unpinned router agrees to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_exchange_can_be_pinned() -> Result<()> {
    use router::{KeyExchange, TlsOptions};
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::NamedGroup;
    let cert = DevCert::generate(&["localhost"])?;
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.ca_der.clone())?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    for (key_exchange, want) in [
        (vec![KeyExchange::X25519], NamedGroup::X25519),
        (vec![], NamedGroup::X25519MLKEM768),
    ] {
        let opts = Options {
            tls_options: TlsOptions {
                key_exchange,
                ..TlsOptions::default()
            },
            ..Options::default()
        };
        let h = Harness::start_with_cert(opts, &cert).await?;
        let tcp = TcpStream::connect(h.addr()).await?;
        let tls = within(
            WAIT,
            "handshake",
            connector.connect(ServerName::try_from("localhost")?, tcp),
        )
        .await??;
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        assert_eq!(group, Some(want));
        upgrade_and_count(&h, tls).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_when_asked() -> Result<()> {
    let h = Harness::start(Options {
        plaintext: true,
        ..Options::default()
    })
    .await?;
    let tcp = TcpStream::connect(h.addr()).await?;
    let url = format!("ws://127.0.0.1:{}/ws/ns-01", h.addr().port());
    let (mut ws, resp) =
        within(WAIT, "upgrade", tokio_tungstenite::client_async(url, tcp)).await??;
    assert!(resp.headers().contains_key("x-wsrouter-table"));
    let first = within(WAIT, "counter", ws.next())
        .await?
        .context("ended")??;
    assert!(as_counter(&first).is_some(), "{first:?}");
    Ok(())
}
