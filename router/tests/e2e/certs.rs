//! Certificate rotation under live sockets: a Secret volume's `..data` swap brings a new
//! certificate to new handshakes, no live socket is dropped, and a broken pair is refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use router::DevCert;
use router::WatchConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::harness::*;

/// The certificate the router presents to a new handshake.
async fn presented(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    Ok(conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate")?
        .clone()
        .into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_new_handshakes_and_spares_live_sockets() -> Result<()> {
    let old = DevCert::generate(&["localhost"])?;
    let new = DevCert::generate(&["localhost"])?;
    let dir = std::env::temp_dir().join(format!("wsrouter-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    kubelet_publish(
        &dir,
        1,
        &[("tls.crt", &old.cert_pem), ("tls.key", &old.key_pem)],
    )?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let h = Harness::start(Options {
        interval: Duration::from_millis(40),
        tls_files: Some((cert.clone(), key.clone())),
        ..Options::default()
    })
    .await?;
    let watch = WatchConfig {
        tls_files: Some((cert, key)),
        ..WatchConfig::default()
    };
    router::start_watch(&watch, &h.router.control(), None).await?;

    // A client that trusts both CAs, so it can see which certificate it was given.
    let client = Arc::new(router::client_config(
        &[old.ca_der.clone(), new.ca_der.clone()],
        rustls::DEFAULT_VERSIONS,
    )?);
    assert_eq!(presented(h.addr(), client.clone()).await?, old.cert_der);

    // Live sockets, on the old certificate, streaming.
    let mut live = Vec::new();
    for i in 0..5 {
        let tcp = TcpStream::connect(h.addr()).await?;
        let tls = tokio_rustls::TlsConnector::from(client.clone())
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let url = format!("wss://localhost:{}/ws/tenant-{i}", h.addr().port());
        let (mut ws, _) =
            within(WAIT, "upgrade", tokio_tungstenite::client_async(url, tls)).await??;
        next_counter(&mut ws).await?;
        live.push(ws);
    }

    kubelet_publish(
        &dir,
        2,
        &[("tls.crt", &new.cert_pem), ("tls.key", &new.key_pem)],
    )?;
    let stats = h.router.control().stats;
    within(
        WAIT,
        "the certificate reload",
        h.router.changes().until(|| stats.tls_reloads.get() >= 1),
    )
    .await?;
    assert_eq!(
        presented(h.addr(), client.clone()).await?,
        new.cert_der,
        "a new handshake after the reload gets the new certificate"
    );
    assert_eq!(stats.tls_reloads.get(), 1);

    // Every live socket kept streaming through the rotation, in order.
    for ws in &mut live {
        let a = next_counter(ws).await?.counter;
        assert_eq!(next_counter(ws).await?.counter, a + 1);
    }

    // A mismatched pair (new certificate, old key) is refused; the new one stays.
    kubelet_publish(
        &dir,
        3,
        &[("tls.crt", &new.cert_pem), ("tls.key", &old.key_pem)],
    )?;
    within(WAIT, "the refusal", async {
        // Each probe is a real handshake, which also lets the watcher run.
        while stats.tls_reload_failures.get() == 0 {
            presented(h.addr(), client.clone()).await?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    assert_eq!(presented(h.addr(), client.clone()).await?, new.cert_der);
    for ws in &mut live {
        next_counter(ws).await?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
