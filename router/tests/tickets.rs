//! Two `wsrouter serve` processes sharing a `--tls-ticket-keys` file: a client that
//! reconnects to the other one resumes its TLS session (no full handshake), and a key
//! rotation (the new key written first, the old one kept after it, then the old one
//! dropped) loses no resumption.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use router::DevCert;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow!("timed out waiting for {what}"))
}

/// A router process, its addresses, and its JSON log lines.
struct Router {
    _child: Child,
    addr: String,
    admin: String,
}

async fn start(dir: &Path, backend: &str) -> Result<Router> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsrouter"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--backend", backend])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .arg("--tls-ticket-keys")
        .arg(dir.join("ticket.keys"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, mut logs) = mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let listening = within("listening", async {
        while let Some(v) = logs.recv().await {
            if v["message"] == "listening" {
                return Ok(v);
            }
        }
        bail!("the router exited before listening")
    })
    .await??;
    let field = |k: &str| {
        listening[k]
            .as_str()
            .map(str::to_owned)
            .context("address in the log")
    };
    Ok(Router {
        addr: field("listen.addr")?,
        admin: field("admin.addr")?,
        _child: child,
    })
}

/// A WebSocket upgrade over TLS and its first frame: the server's session tickets come
/// in with it. How the handshake went.
async fn connect(client: &Arc<rustls::ClientConfig>, r: &Router) -> Result<HandshakeKind> {
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let tcp = TcpStream::connect(&r.addr).await?;
    let mut tls = within(
        "TLS handshake",
        connector.connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??;
    let kind = tls.get_ref().1.handshake_kind().context("handshake kind")?;
    tls.write_all(b"GET /ws/acme HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    within("101 and a frame", async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
            let n = tls.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await??;
    anyhow::ensure!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    Ok(kind)
}

/// A counter's value from a router's /metrics.
async fn metric(r: &Router, name: &str) -> Result<f64> {
    let mut tcp = TcpStream::connect(&r.admin).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Waits (bounded) until `r` has reloaded its keys `n` times.
async fn reloaded(r: &Router, n: f64) -> Result<()> {
    within("the keys reloaded", async {
        while metric(r, "wsrouter_tls_ticket_key_reloads_total").await? < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await?
}

/// Replaces the keys' file at once (a rename, as kubelet swaps a Secret's files).
fn write_keys(dir: &Path, keys: &[&[u8; 80]]) -> Result<()> {
    let tmp = dir.join(".ticket.keys.tmp");
    std::fs::write(
        &tmp,
        keys.iter()
            .flat_map(|k| k.iter().copied())
            .collect::<Vec<u8>>(),
    )?;
    std::fs::rename(&tmp, dir.join("ticket.keys"))?;
    Ok(())
}

fn key(fill: u8) -> [u8; 80] {
    let mut k = [0u8; 80];
    for (i, b) in k.iter_mut().enumerate() {
        *b = fill.wrapping_mul(31).wrapping_add(i as u8);
    }
    k
}

/// What both routers of a test share: an echo backend (kept running while held), a
/// certificate, and the directory holding it and the ticket keys.
struct Setup {
    _backend: backend::EchoHandle,
    backend: String,
    cert: DevCert,
    dir: PathBuf,
}

async fn setup(name: &str) -> Result<Setup> {
    let echo = backend::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        backend::EchoConfig::new("backend-0").with_interval(Duration::from_millis(50)),
    )?;
    let cert = DevCert::generate(&["localhost"])?;
    let dir = std::env::temp_dir().join(format!("wsrouter-tickets-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &cert.key_pem)?;
    Ok(Setup {
        backend: echo.local_addr().to_string(),
        _backend: echo,
        cert,
        dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_the_other_replica_and_across_a_key_rotation() -> Result<()> {
    let Setup {
        _backend,
        backend,
        cert,
        dir,
    } = setup("rotation").await?;
    let (old, new) = (key(1), key(2));
    write_keys(&dir, &[&old])?;
    let (a, b) = (start(&dir, &backend).await?, start(&dir, &backend).await?);
    // One client (one session cache), as a browser or an SDK keeps.
    let client = cert.client_config();

    assert_eq!(connect(&client, &a).await?, HandshakeKind::Full);
    // Its ticket from A opens on B.
    assert_eq!(connect(&client, &b).await?, HandshakeKind::Resumed);
    assert_eq!(
        metric(&b, "wsrouter_tls_handshakes_total{kind=\"resumed\"}").await?,
        1.0
    );

    // Rotation, step 1: the new key first, the old one kept. The client's ticket (sealed
    // by B with the old key) still opens, on either.
    write_keys(&dir, &[&new, &old])?;
    reloaded(&a, 1.0).await?;
    reloaded(&b, 1.0).await?;
    assert_eq!(connect(&client, &a).await?, HandshakeKind::Resumed);
    // Step 2: the old key dropped. The ticket A just issued is under the new key.
    write_keys(&dir, &[&new])?;
    reloaded(&a, 2.0).await?;
    reloaded(&b, 2.0).await?;
    assert_eq!(connect(&client, &b).await?, HandshakeKind::Resumed);

    // A file that is not keys is refused; the last good keys keep working.
    std::fs::write(dir.join("ticket.keys"), b"not 80 bytes")?;
    within("the bad file refused", async {
        while metric(&a, "wsrouter_tls_ticket_key_reload_failures_total").await? < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    assert_eq!(connect(&client, &a).await?, HandshakeKind::Resumed);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_file_each_replica_resumes_only_its_own() -> Result<()> {
    let Setup {
        _backend,
        backend,
        cert,
        dir,
    } = setup("own").await?;
    // The file is named but not there (an optional Secret not made yet): each replica
    // seals with a key of its own.
    let (a, b) = (start(&dir, &backend).await?, start(&dir, &backend).await?);
    let client = cert.client_config();
    assert_eq!(connect(&client, &a).await?, HandshakeKind::Full);
    assert_eq!(connect(&client, &b).await?, HandshakeKind::Full);
    assert_eq!(connect(&client, &b).await?, HandshakeKind::Resumed);
    // The file appears: both take it, and from then on either opens the other's.
    write_keys(&dir, &[&key(5)])?;
    reloaded(&a, 1.0).await?;
    reloaded(&b, 1.0).await?;
    assert_eq!(connect(&client, &a).await?, HandshakeKind::Full);
    assert_eq!(connect(&client, &b).await?, HandshakeKind::Resumed);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
