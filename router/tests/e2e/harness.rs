//! Test harness: real echo backends and a real router on loopback port 0, TLS clients,
//! and bounded waits. Nothing here sleeps to wait for something to happen.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::{SinkExt, StreamExt};
use router::DevCert;
use router::Limits;
use router::RouterConfig;
use router::RouterHandle;
use router::RoutingConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsrouter::{Backends, Overrides, PathPrefix};

pub(crate) type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Every wait in these tests is bounded by this unless it says otherwise.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// The tests' limits: shorter timeouts, and the routing diagnostics on (most tests read
/// which table routed them).
pub(crate) fn limits() -> Limits {
    let mut limits = Limits {
        handshake_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        backend_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(3),
        max_connections: 1000,
        ..Limits::default()
    };
    limits.policy.route_headers = true;
    limits
}

pub(crate) struct Harness {
    pub router: RouterHandle,
    pub backends: Vec<backend::EchoHandle>,
    /// The echo backends of each set beside the stable one ([`Options::sets`]).
    pub sets: Vec<Vec<backend::EchoHandle>>,
    connector: TlsConnector,
}

pub(crate) struct Options {
    pub backends: usize,
    pub interval: Duration,
    pub limits: Limits,
    /// Addresses to use instead of echo backends, by ordinal.
    pub replace: Vec<(usize, String)>,
    pub overrides: Vec<(&'static str, &'static str)>,
    pub drain_grace: Duration,
    /// Serve ws:// instead of wss://.
    pub plaintext: bool,
    /// Replicas and overrides come from watches (as in a cluster), not from the start.
    pub watched: bool,
    /// Overrides come from a watched source: no table before its first read.
    pub await_overrides: bool,
    pub reroute: Option<router::RerouteConfig>,
    /// Serve TLS from these PEM files instead of the harness certificate.
    pub tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub tls_options: router::TlsOptions,
    /// Serve on dedicated I/O threads, as the binary does (0: on the test's runtime).
    pub io_threads: usize,
    /// Cluster mode: backend `i` listens on [`pod_ip`]`(i)` at one port shared by all
    /// (as pods do), and the router learns them from EndpointSlices only.
    pub pods: bool,
    /// Plain answers on the WebSocket listener before routing (as `dev`'s page).
    pub pages: Option<Arc<dyn router::Pages>>,
    /// The admin listener's bearer token.
    pub admin_token: Option<router::AdminToken>,
    /// `--auth jwt`, its keys loaded.
    pub auth: Option<router::AuthSetup>,
    /// `--auth forward:URL`.
    pub forward_auth: Option<router::ForwardSettings>,
    /// `--backend-tls`: the router's side (its echo backends' is `backend_tls_server`).
    pub backend_tls: Option<Arc<router::BackendTls>>,
    /// The echo backends serve TLS with this config.
    pub backend_tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Backend sets beside the stable one (`--backend-set`): a name and how many echo
    /// backends, which call themselves `backend-{name}-{i}`.
    pub sets: Vec<(&'static str, usize)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backends: 4,
            interval: Duration::from_secs(1),
            limits: limits(),
            replace: Vec::new(),
            overrides: Vec::new(),
            drain_grace: Duration::from_secs(5),
            plaintext: false,
            watched: false,
            await_overrides: false,
            reroute: None,
            tls_files: None,
            tls_options: Default::default(),
            io_threads: 0,
            pods: false,
            pages: None,
            admin_token: None,
            auth: None,
            forward_auth: None,
            backend_tls: None,
            backend_tls_server: None,
            sets: Vec::new(),
        }
    }
}

/// The loopback address pod `ordinal` listens on in cluster mode; `generation` tells a
/// restarted pod's new address from its old one.
pub(crate) fn pod_ip(ordinal: usize, generation: u8) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 1 + generation, 0, 1 + ordinal as u8).into()
}

/// Echo backends `backend-0..n` on [`pod_ip`]`(i, 0)`, all on one port (which it returns).
pub(crate) async fn pod_backends(
    n: usize,
    interval: Duration,
) -> Result<(Vec<backend::EchoHandle>, u16)> {
    // A port free on the first address is almost always free on the others; if not,
    // try another.
    for _ in 0..20 {
        let first = TcpListener::bind((pod_ip(0, 0), 0)).await?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for i in 1..n {
            match TcpListener::bind((pod_ip(i, 0), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => break,
            }
        }
        if listeners.len() < n {
            continue;
        }
        let mut backends = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let cfg = backend::EchoConfig::new(format!("backend-{i}")).with_interval(interval);
            backends.push(backend::serve(l, cfg)?);
        }
        return Ok((backends, port));
    }
    anyhow::bail!("no port free on every pod address")
}

/// Pod `i` (re)started on `ip` at `port`.
pub(crate) async fn start_pod(
    i: usize,
    ip: std::net::IpAddr,
    port: u16,
    interval: Duration,
) -> Result<backend::EchoHandle> {
    let l = TcpListener::bind((ip, port)).await?;
    let cfg = backend::EchoConfig::new(format!("backend-{i}")).with_interval(interval);
    Ok(backend::serve(l, cfg)?)
}

impl Harness {
    /// Waits (bounded) until the pending pool holds at least `n` connections.
    pub(crate) async fn pending_at_least(&self, n: usize) -> Result<()> {
        let admission = self.router.admission();
        let what = format!("{n} connections pending");
        within(
            WAIT,
            &what,
            self.router
                .changes()
                .until(|| admission.pending_count() >= n),
        )
        .await
    }

    pub(crate) async fn start(opts: Options) -> Result<Self> {
        let cert = DevCert::generate(&["localhost", "127.0.0.1"])?;
        Self::start_with_cert(opts, &cert).await
    }

    pub(crate) async fn start_with_cert(opts: Options, cert: &DevCert) -> Result<Self> {
        if opts.pods {
            let (backends, _) = pod_backends(opts.backends, opts.interval).await?;
            // Other sets' pods, like the stable set's, come from the slices (the test
            // starts them).
            let sets = opts
                .sets
                .iter()
                .map(|(name, _)| router::SetConfig {
                    name: (*name).to_owned(),
                    backends: Backends::Pods(Default::default()),
                    replicas: None,
                })
                .collect();
            let pods = Backends::Pods(Default::default());
            let router = start_router_with_sets(&opts, cert, pods, None, sets).await?;
            return Ok(Self::with_router(router, backends, cert));
        }
        let mut backends = Vec::new();
        for i in 0..opts.backends {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let mut cfg =
                backend::EchoConfig::new(format!("backend-{i}")).with_interval(opts.interval);
            cfg.tls = opts.backend_tls_server.clone();
            backends.push(backend::serve(l, cfg)?);
        }
        let mut addrs: Vec<String> = backends
            .iter()
            .map(|b| b.local_addr().to_string())
            .collect();
        for (i, a) in &opts.replace {
            addrs[*i] = a.clone();
        }
        let b = Backends::static_list(addrs)?;
        let replicas = b.fixed_replicas().context("replicas")?;
        let mut set_backends = Vec::new();
        let mut sets = Vec::new();
        for (name, n) in &opts.sets {
            let mut echoes = Vec::new();
            for i in 0..*n {
                let l = TcpListener::bind("127.0.0.1:0").await?;
                let cfg = backend::EchoConfig::new(format!("backend-{name}-{i}"))
                    .with_interval(opts.interval);
                echoes.push(backend::serve(l, cfg)?);
            }
            let addrs = echoes.iter().map(|b| b.local_addr().to_string()).collect();
            let backends = Backends::static_list(addrs)?;
            sets.push(router::SetConfig {
                name: (*name).to_owned(),
                replicas: backends.fixed_replicas().map(|n| n.get()),
                backends,
            });
            set_backends.push(echoes);
        }
        let router = start_router_with_sets(&opts, cert, b, Some(replicas), sets).await?;
        let mut h = Self::with_router(router, backends, cert);
        h.sets = set_backends;
        Ok(h)
    }

    /// A harness around a router started elsewhere (e.g. one of a fleet).
    pub(crate) fn with_router(
        router: RouterHandle,
        backends: Vec<backend::EchoHandle>,
        cert: &DevCert,
    ) -> Self {
        Self {
            router,
            backends,
            sets: Vec::new(),
            connector: TlsConnector::from(cert.client_config()),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.router.local_addr()
    }

    /// A TLS connection to the router, handshake done.
    pub(crate) async fn tls(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr()).await?;
        let name = ServerName::try_from("localhost")?;
        Ok(self.connector.connect(name, tcp).await?)
    }

    /// A WebSocket client on `path` through the router.
    pub(crate) async fn ws_path(
        &self,
        path: &str,
    ) -> Result<(
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    )> {
        let tls = self.tls().await?;
        let url = format!("wss://localhost:{}{path}", self.addr().port());
        Ok(tokio_tungstenite::client_async(url, tls).await?)
    }

    pub(crate) async fn ws(&self, ns: &str) -> Result<Ws> {
        Ok(within(
            WAIT,
            "websocket connect",
            self.ws_path(&format!("/ws/{ns}")),
        )
        .await??
        .0)
    }

    /// Sends raw bytes over TLS and reads the whole answer (the router closes after it).
    pub(crate) async fn raw(&self, request: &[u8]) -> Result<RawResponse> {
        RawResponse::parse(&self.raw_bytes(request).await?)
    }

    /// Sends raw bytes over TLS and reads everything until the router closes: every
    /// answer, for pipelined requests.
    pub(crate) async fn raw_bytes(&self, request: &[u8]) -> Result<Vec<u8>> {
        let mut tls = self.tls().await?;
        tls.write_all(request).await?;
        let mut out = Vec::new();
        match within(WAIT, "raw response", tls.read_to_end(&mut out)).await? {
            Ok(_) => {}
            // hyper drops the socket without close_notify after answering a request it
            // could not parse (400, 431), and resets it when it closes with pipelined
            // requests unread; the answers themselves are complete.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) && !out.is_empty() =>
            {
                eprintln!(
                    "no close_notify after {:?}",
                    String::from_utf8_lossy(&out).lines().next()
                );
            }
            Err(e) => return Err(e.into()),
        }
        Ok(out)
    }

    /// Sends raw bytes over TLS and reads the answer's head only (a 101 keeps the
    /// connection open).
    pub(crate) async fn raw_head(&self, request: &[u8]) -> Result<String> {
        let mut tls = self.tls().await?;
        tls.write_all(request).await?;
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        within(WAIT, "a response head", async {
            while !out.ends_with(b"\r\n\r\n") {
                anyhow::ensure!(tls.read(&mut b).await? == 1, "closed before a head");
                out.push(b[0]);
            }
            Ok(())
        })
        .await??;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Waits (bounded) until the current table satisfies `pred`.
    pub(crate) async fn wait_table(
        &self,
        what: &str,
        pred: impl Fn(&wsrouter::RoutingTable) -> bool,
    ) -> Result<Arc<wsrouter::RoutingTable>> {
        let mut changes = self.router.control().changes();
        within(WAIT, what, async {
            loop {
                if let Some(t) = self.router.current_table().filter(|t| pred(t)) {
                    return Ok(t);
                }
                changes
                    .changed()
                    .await
                    .map_err(|_| anyhow!("control loop gone"))?;
            }
        })
        .await?
    }

    /// Waits (bounded) until the control loop has rejected `n` updates for `reason`,
    /// re-checking each time it finishes with an input.
    pub(crate) async fn wait_rejected(&self, reason: router::RejectReason, n: u64) -> Result<()> {
        let control = self.router.control();
        let mut processed = control.processed();
        within(
            WAIT,
            "a rejected update",
            processed.wait_for(|_| control.stats.rejected(reason) >= n),
        )
        .await??;
        Ok(())
    }

    /// The ordinal the router's current table gives a tenant.
    pub(crate) fn ordinal(&self, ns: &str) -> u32 {
        self.router
            .current_table()
            .map_or(u32::MAX, |t| t.route(ns).ordinal)
    }

    pub(crate) async fn admin_get(&self, path: &str) -> Result<RawResponse> {
        let admin = self.router.admin_addr().context("admin")?;
        http_get(admin, path).await
    }
}

/// A router on loopback port 0 as `opts` describe, over `backends`; `replicas` fixed
/// unless the options say they are watched.
pub(crate) async fn start_router(
    opts: &Options,
    cert: &DevCert,
    backends: Backends,
    replicas: Option<std::num::NonZeroU32>,
) -> Result<RouterHandle> {
    start_router_with_sets(opts, cert, backends, replicas, Vec::new()).await
}

/// [`start_router`] with backend sets beside the stable one.
pub(crate) async fn start_router_with_sets(
    opts: &Options,
    cert: &DevCert,
    backends: Backends,
    replicas: Option<std::num::NonZeroU32>,
    sets: Vec<router::SetConfig>,
) -> Result<RouterHandle> {
    let overrides = Overrides::parse(opts.overrides.iter().copied(), "backend")?;
    let fixed = replicas.unwrap_or(std::num::NonZeroU32::MIN);
    Ok(router::start(RouterConfig {
        io_threads: opts.io_threads,
        pages: opts.pages.clone(),
        listen: "127.0.0.1:0".parse()?,
        tls: match (&opts.tls_files, opts.plaintext) {
            (_, true) => None,
            (Some((c, k)), false) => Some(router::load_server_config(c, k, &opts.tls_options)?),
            (None, false) => Some(cert.server_config(&opts.tls_options)?),
        },
        admin_listen: Some("127.0.0.1:0".parse()?),
        admin_token: opts.admin_token.clone(),
        auth: opts.auth.clone(),
        forward_auth: opts.forward_auth.clone(),
        backend_tls: opts.backend_tls.clone(),
        path_prefix: PathPrefix::default(),
        drain_grace: opts.drain_grace,
        reroute: opts.reroute,
        limits: opts.limits.clone(),
        routing: RoutingConfig {
            overrides,
            replicas: replicas.filter(|_| !opts.watched),
            await_overrides: opts.watched || opts.await_overrides,
            sets,
            ..RoutingConfig::fixed(backends, fixed)
        },
    })
    .await?)
}

/// `wsrouter dev` on loopback port 0, with an overrides file and more flags, as a user
/// would start it.
pub(crate) async fn start_dev(
    overrides_file: &std::path::Path,
    extra: &[&str],
) -> Result<router::DevHandle> {
    use clap::Parser;
    let mut argv = vec![
        "wsrouter",
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--overrides-file",
    ];
    argv.push(overrides_file.to_str().context("path")?);
    argv.extend_from_slice(extra);
    let router::Command::Dev(args) = router::Cli::try_parse_from(argv)?.command else {
        anyhow::bail!("not dev")
    };
    Ok(router::start_dev(*args, 0).await?)
}

/// Publishes `data` into a ConfigMap volume the way kubelet's atomic writer does: a new
/// timestamped directory, a `..data_tmp` symlink renamed over `..data`, then the per-key
/// symlinks for new keys, then the old keys' symlinks and directory removed.
pub(crate) fn kubelet_publish(
    dir: &std::path::Path,
    generation: u32,
    data: &[(&str, &str)],
) -> Result<()> {
    let ts = format!("..2025_01_01_00_00_{generation:02}.{generation}");
    std::fs::create_dir(dir.join(&ts))?;
    for (k, v) in data {
        std::fs::write(dir.join(&ts).join(k), v)?;
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp"))?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    for (k, _) in data {
        if std::fs::symlink_metadata(dir.join(k)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{k}"), dir.join(k))?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !data.iter().any(|(k, _)| *k == name) {
            std::fs::remove_file(dir.join(&name))?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

/// A plain HTTP/1.1 GET, for the admin listener.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Result<RawResponse> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    within(WAIT, "admin response", tcp.read_to_end(&mut out)).await??;
    RawResponse::parse(&out)
}

/// Sends raw bytes over plain TCP and reads the answer's head only.
pub(crate) async fn plain_head(addr: SocketAddr, request: &[u8]) -> Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    within(WAIT, "a response head", async {
        while !out.ends_with(b"\r\n\r\n") {
            anyhow::ensure!(tcp.read(&mut b).await? == 1, "closed before a head");
            out.push(b[0]);
        }
        Ok(())
    })
    .await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends raw bytes over plain TCP and reads the whole answer (the router closes after it).
pub(crate) async fn plain_raw(addr: SocketAddr, request: &[u8]) -> Result<RawResponse> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut out = Vec::new();
    within(WAIT, "raw response", tcp.read_to_end(&mut out)).await??;
    RawResponse::parse(&out)
}

#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    fn parse(bytes: &[u8]) -> Result<Self> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .context("no status")?
            .parse()?;
        Ok(Self {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        })
    }
}

/// A counter message from the echo backend.
#[derive(Debug, serde::Deserialize, PartialEq)]
pub(crate) struct Counter {
    pub server: String,
    pub counter: u64,
    pub ns: String,
}

pub(crate) fn as_counter(m: &Message) -> Option<Counter> {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
        _ => None,
    }
}

/// The next counter message, skipping anything else.
/// The code of the close frame the router sends next, skipping other messages; `None`
/// if the socket ends without one. Bounded by `WAIT`.
pub(crate) async fn next_close_code<S>(ws: &mut WebSocketStream<S>) -> Result<Option<u16>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(WAIT, "a close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
}

/// Sends `payload` as one binary message and waits for the echo backend's copy of it
/// (other messages, such as its counters, pass by).
pub(crate) async fn binary_echo<S>(ws: &mut WebSocketStream<S>, payload: Vec<u8>) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::binary(payload.clone())).await?;
    let back = within(WAIT, "echo", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(_)) => continue,
                other => return Err(anyhow::anyhow!("no echo: {other:?}")),
            }
        }
    })
    .await??;
    anyhow::ensure!(
        back[..] == payload[..],
        "echo of {} bytes differs",
        payload.len()
    );
    Ok(())
}

/// The server (echo backend) a new socket for `ns` reaches.
pub(crate) async fn served_by(h: &Harness, ns: &str) -> Result<String> {
    let mut ws = h.ws(ns).await?;
    Ok(next_counter(&mut ws).await?.server)
}

pub(crate) async fn next_counter(ws: &mut Ws) -> Result<Counter> {
    within(WAIT, "a counter", async {
        loop {
            match ws.next().await {
                Some(Ok(m)) => {
                    if let Some(c) = as_counter(&m) {
                        return Ok(c);
                    }
                }
                Some(Err(e)) => return Err(anyhow!("stream error: {e}")),
                None => return Err(anyhow!("stream ended")),
            }
        }
    })
    .await?
}

/// Sends `text` and waits (bounded) for the echo backend to send it back, skipping
/// anything else (counters).
pub(crate) async fn echo_text(ws: &mut Ws, text: &str) -> Result<()> {
    use futures_util::SinkExt;
    ws.send(Message::text(text)).await?;
    within(WAIT, "an echo", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
                Some(Ok(_)) => continue,
                other => anyhow::bail!("no echo: {other:?}"),
            }
        }
    })
    .await?
}

/// A backend address that refuses every connection: a socket bound to the port for the
/// test's length but never listening, so the kernel answers each SYN with a reset (a
/// port bound and then freed could be taken by someone else meanwhile).
pub(crate) struct Refusing {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl Refusing {
    pub(crate) async fn start() -> Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let addr = socket.local_addr()?;
        Ok(Self {
            addr,
            _socket: socket,
        })
    }
}

/// A backend that accepts connections and never answers; holds them until dropped.
pub(crate) struct BlackHole {
    pub addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub(crate) async fn start() -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        Ok(Self { addr, _task: task })
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// The first namespace `tenant-N` that routes to `ordinal`.
pub(crate) fn tenant_on(h: &Harness, ordinal: u32, skip: usize) -> String {
    (0..10_000)
        .map(|i| format!("tenant-{i}"))
        .filter(|ns| h.ordinal(ns) == ordinal)
        .nth(skip)
        .unwrap_or_default()
}

/// A TCP connection to `addr` from the loopback address `src` (127.0.0.0/8 has many), as
/// a client behind another address would make it.
pub(crate) async fn connect_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    socket.connect(addr).await
}

/// Builds a backend's answer from the request's key and head.
pub(crate) type Answer = fn(key: &str, head: &str) -> String;

/// What a [`FakeBackend`] does with an upgrade request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FakeAnswer {
    /// A 101 built by the function from the request's key (and the request head), then
    /// the connection is held open, reading and discarding.
    Upgrade(Answer),
    /// A correct 101, then TCP FIN without a close frame.
    UpgradeThenFin,
    /// A correct 101, then a TCP reset.
    UpgradeThenReset,
}

/// A backend that records the request heads it gets and answers as told: to see what
/// the router forwards, and how it treats a backend that misbehaves.
pub(crate) struct FakeBackend {
    pub addr: SocketAddr,
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The correct `Sec-WebSocket-Accept` for a key.
pub(crate) fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A correct 101 for `key`.
pub(crate) fn good_101(key: &str, _head: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(key)
    )
}

impl FakeBackend {
    pub(crate) async fn start(answer: FakeAnswer) -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let key = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("sec-websocket-key:")
                                .then(|| l[18..].trim().to_owned())
                        })
                        .unwrap_or_default();
                    if let Ok(mut h) = seen.lock() {
                        h.push(head.clone());
                    }
                    let reply = match answer {
                        FakeAnswer::Upgrade(f) => f(&key, &head),
                        _ => good_101(&key, &head),
                    };
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    match answer {
                        FakeAnswer::Upgrade(_) => {
                            let mut sink = [0u8; 1024];
                            while let Ok(n) = s.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        FakeAnswer::UpgradeThenFin => {
                            let _ = s.shutdown().await;
                            let mut sink = [0u8; 1024];
                            while let Ok(n) = s.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        FakeAnswer::UpgradeThenReset => {
                            #[allow(deprecated)]
                            let _ = s.set_linger(Some(Duration::ZERO));
                            drop(s);
                        }
                    }
                });
            }
        });
        Ok(Self { addr, heads, task })
    }

    pub(crate) fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `name{labels} value` lines of an exposition, keyed by `name{labels}`.
pub(crate) fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// The router's `/metrics`: the text, and its samples.
pub(crate) async fn scrape_metrics(
    h: &Harness,
) -> Result<(String, std::collections::BTreeMap<String, f64>)> {
    let r = h.admin_get("/metrics").await?;
    anyhow::ensure!(r.status == 200, "{r:?}");
    anyhow::ensure!(
        r.head
            .contains("content-type: application/openmetrics-text"),
        "{}",
        r.head
    );
    let s = samples(&r.body);
    Ok((r.body, s))
}

/// A complete WebSocket upgrade request for `path`, as raw bytes.
pub(crate) fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A pod on one address that resets every connection while `resetting` (its process is
/// starting, or failing), then serves as an echo backend on the same listener.
pub(crate) struct FlakyPod {
    pub addr: std::net::SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    resetting: Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyPod {
    /// Resets the first `resets` connections (all while `resets` is `None`), then serves.
    pub(crate) async fn start(resets: Option<usize>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let resetting = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (n, r) = (accepted.clone(), resetting.clone());
        // One echo server behind the gate: connections it lets through are handed to it
        // over a loopback hop, so the pod keeps one address throughout.
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = echo.local_addr()?;
        let echo = backend::serve(echo, backend::EchoConfig::new("backend-0"))?;
        tokio::spawn(async move {
            let _echo = echo;
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if resets.is_some_and(|k| seen > k) {
                    r.store(false, std::sync::atomic::Ordering::SeqCst);
                }
                if r.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = s.set_zero_linger();
                    drop(s);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(echo_addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            accepted,
            resetting,
        })
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn recover(&self) {
        self.resetting
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
