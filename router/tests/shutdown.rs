//! SIGTERM against the real binary: readiness fails, live sockets keep streaming for the
//! grace period, then each gets close 1001, and the process exits 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use router::DevCert;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow!("timed out waiting for {what}"))
}

/// The next JSON log event whose message is `msg`.
async fn event(logs: &mut mpsc::UnboundedReceiver<Value>, msg: &str) -> Result<Value> {
    within(msg, async {
        while let Some(v) = logs.recv().await {
            if v["message"] == msg {
                return Ok(v);
            }
        }
        bail!("log ended before {msg:?}")
    })
    .await?
}

async fn readyz(admin: &str) -> Result<u16> {
    let mut tcp = TcpStream::connect(admin).await?;
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await?;
    out.split_whitespace()
        .nth(1)
        .context("status")?
        .parse()
        .map_err(Into::into)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_with_1001_and_exits_zero() -> Result<()> {
    let grace = Duration::from_secs(1);
    let backend = backend::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        backend::EchoConfig::new("backend-0").with_interval(Duration::from_millis(50)),
    )?;
    let cert = DevCert::generate(&["localhost"])?;
    let dir = std::env::temp_dir().join(format!("wsrouter-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &cert.key_pem)?;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsrouter"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .args([
            "--backend",
            &backend.local_addr().to_string(),
            "--drain-grace",
            "1s",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, mut logs) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    let _ = tx.send(v);
                }
                Err(_) => eprintln!("non-JSON log line: {line}"),
            }
        }
    });

    let listening = event(&mut logs, "listening").await?;
    let addr = listening["listen.addr"]
        .as_str()
        .context("listen.addr")?
        .to_owned();
    let admin = listening["admin.addr"]
        .as_str()
        .context("admin.addr")?
        .to_owned();
    assert_eq!(readyz(&admin).await?, 200);

    let connector = tokio_rustls::TlsConnector::from(cert.client_config());
    let mut clients = Vec::new();
    for ns in ["ns-01", "ns-02", "acme-prod"] {
        let tcp = TcpStream::connect(&addr).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let port = addr.rsplit(':').next().unwrap_or_default();
        let (mut ws, _) = within(
            "upgrade",
            tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws/{ns}"), tls),
        )
        .await??;
        within("first message", ws.next())
            .await?
            .context("stream ended")??;
        clients.push(ws);
    }

    let sent = Instant::now();
    // SIGTERM, as kubelet sends it (kill(1): no unsafe code needed for a signal).
    let pid = child.id().context("pid")?.to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    assert!(killed.success());

    // Readiness fails while the admin listener stays up.
    within("readyz 503", async {
        loop {
            if readyz(&admin).await.ok() == Some(503) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await?;

    let clients_done = clients.into_iter().map(|mut ws| async move {
        let mut during_grace = 0;
        loop {
            match within("close frame", ws.next()).await? {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok::<_, anyhow::Error>((u16::from(frame.code), during_grace))
                }
                Some(Ok(_)) => during_grace += 1,
                other => bail!("stream ended without a close frame: {other:?}"),
            }
        }
    });
    for r in futures_util::future::join_all(clients_done).await {
        let (code, during_grace) = r?;
        assert_eq!(code, 1001);
        assert!(
            during_grace > 0,
            "the socket stopped streaming before the grace period ended"
        );
    }
    assert!(
        sent.elapsed() >= grace,
        "closed after {:?}, before the grace period",
        sent.elapsed()
    );

    let status = within("exit", child.wait()).await??;
    assert_eq!(status.code(), Some(0));

    // One JSON line per connection, naming why it ended.
    let mut closed = Vec::new();
    while let Ok(v) = logs.try_recv() {
        if v["message"] == "connection closed" {
            closed.push(v);
        }
    }
    assert_eq!(closed.len(), 3, "{closed:?}");
    for v in &closed {
        assert_eq!(v["close.reason"], "shutdown");
        assert_eq!(v["close.sent_to_client"], 1001);
        assert_eq!(v["backend.ordinal"], 0);
        assert!(
            v["tenant"].is_string() && v["bytes.from_backend"].as_u64() > Some(0),
            "{v}"
        );
        assert!(v["duration_ms"].as_u64() >= Some(1000), "{v}");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
