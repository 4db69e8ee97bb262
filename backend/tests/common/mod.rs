//! A raw HTTP/1.1 client for the backend's tests: what goes on the wire is what the test
//! says, and answers are read whole (to EOF, `Connection: close`) or piece by piece.
#![allow(dead_code)] // Each test file uses part of it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A parsed answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Header names in lower case, in order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

pub(crate) async fn start(config: backend::EchoConfig) -> Result<backend::EchoHandle> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(backend::serve(l, config)?)
}

/// `METHOD target` with `headers` (each `Name: value`) and `body`, on a connection of its
/// own that the server closes after answering; the answer read to EOF.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &[u8],
) -> Result<Answer> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await??;
    parse(&raw, method == "HEAD")
}

pub(crate) async fn get(addr: SocketAddr, target: &str) -> Result<Answer> {
    request(addr, "GET", target, &[], b"").await
}

/// Where the head ends (the index after its blank line), if it has arrived.
pub(crate) fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// One complete answer in `raw` (head, then a body by its length, chunked, or to EOF).
pub(crate) fn parse(raw: &[u8], head_only: bool) -> Result<Answer> {
    let end = head_end(raw).context("no complete head")?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if head_only {
        rest.to_vec()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The payload of a chunked body (complete, with its last chunk).
pub(crate) fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = std::str::from_utf8(&raw[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            bail!("a chunk cut short");
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Reads from `tcp` into `buf` until `done(buf)` (bounded by WAIT).
pub(crate) async fn read_until(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        while !done(buf) {
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "closed before the expected bytes: {}",
                    String::from_utf8_lossy(buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await?
}

/// Whether `needle` occurs in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
