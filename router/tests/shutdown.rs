//! SIGTERM against the real binary: readiness fails, live sockets keep streaming until
//! each one's own moment within the grace period, spread evenly over it (not all at its
//! end), when each gets close 1001, and the process exits 0.

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
async fn sigterm_drains_then_closes_with_1001_spread_over_the_grace_and_exits_zero() -> Result<()> {
    let grace = Duration::from_secs(4);
    let sockets = 40;
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
            "4s",
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
    for n in 0..sockets {
        let ns = format!("ns-{n:02}");
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

    // Each client notes when its close came, as a client would see the wave (or not).
    let clients_done = clients.into_iter().map(|mut ws| async move {
        loop {
            match within("close frame", ws.next()).await? {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok::<_, anyhow::Error>((u16::from(frame.code), sent.elapsed()))
                }
                Some(Ok(_)) => {}
                other => bail!("stream ended without a close frame: {other:?}"),
            }
        }
    });
    let mut quarters = [0usize; 4];
    for r in futures_util::future::join_all(clients_done).await {
        let (code, at) = r?;
        assert_eq!(code, 1001);
        // Within the grace (and the moment it takes the listener to close after the
        // signal).
        assert!(
            at < grace + Duration::from_millis(1500),
            "closed {at:?} after SIGTERM"
        );
        let q = (at.as_millis() * 4 / grace.as_millis()).min(3) as usize;
        quarters[q] += 1;
    }
    // Spread, not a wave: 40 closes drawn evenly over the grace leave no quarter of it
    // empty (odds 4 × 0.75^40, 1 in 25,000) and crowd none (a wave puts all 40 in one).
    assert!(
        quarters.iter().all(|&q| (1..=25).contains(&q)),
        "closes per quarter of the grace: {quarters:?}"
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
    assert_eq!(closed.len(), sockets, "{closed:?}");
    for v in &closed {
        assert_eq!(v["close.reason"], "shutdown");
        assert_eq!(v["close.sent_to_client"], 1001);
        assert_eq!(v["backend.ordinal"], 0);
        assert!(
            v["tenant"].is_string() && v["bytes.from_backend"].as_u64() > Some(0),
            "{v}"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
