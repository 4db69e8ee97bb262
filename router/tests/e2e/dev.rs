//! `wsrouter dev` as a newcomer runs it: wss with its own certificate, local backends,
//! and the overrides file honoured.

use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_routes_over_wss_with_overrides() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("wsrouter-dev-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("overrides.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata:\n  ns-01: backend-0\n",
    )?;
    let dev = start_dev(&file, &["--interval", "50ms"]).await?;
    let banner = dev.banner();
    let addr = dev.router.local_addr();
    assert!(
        banner.contains(&format!("websocat -k wss://{addr}/ws/ns-01")),
        "{banner}"
    );
    assert_eq!(dev.backends.len(), 4);

    let connector = tokio_rustls::TlsConnector::from(dev.cert.client_config());
    // ns-01 is overridden to backend-0; acme-prod follows the hash (3 of 4).
    for (ns, want) in [
        ("ns-01", "backend-0"),
        ("acme-prod", "backend-3"),
        ("ns-02", "backend-1"),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let url = format!("wss://localhost:{}/ws/{ns}", addr.port());
        let (mut ws, _) = within(
            WAIT,
            "dev upgrade",
            tokio_tungstenite::client_async(url, tls),
        )
        .await??;
        let first = next_counter(&mut ws).await?;
        assert_eq!((first.server.as_str(), first.ns.as_str()), (want, ns));
        let second = within(Duration::from_secs(5), "second counter", ws.next()).await?;
        assert!(second.is_some());
    }
    dev.router.close_now();
    within(WAIT, "dev drain", dev.router.drained()).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
