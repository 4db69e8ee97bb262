//! Three routers, one fake API server, one day in the life: after every step all three
//! hold the same routing fingerprint, tenants land on the same pod through any of them,
//! and no live socket is dropped but those of a pod that died.
//!
//! The bound: every step converges within `STEP` (10 s; measured figures are printed,
//! milliseconds here). After the API outage that only router C saw, C catches up within
//! 4 × `WATCH_RETRY_MAX` + 2 s (10 s): its next try comes within 2 × `WATCH_RETRY_MAX`
//! (jitter included), and the relist after the `410` for its compacted history within as
//! long again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use router::DevCert;
use router::RejectReason;
use router::RouterHandle;
use router::WATCH_RETRY_MAX;
use router::{OverridesWatch, WatchConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsrouter::{Backends, Fingerprint, RoutingTable};

use crate::fake_api::{configmap, pod_slice, statefulset, FakeApi, PodEndpoint};
use crate::harness::*;

const NS: &str = "prod";
const CM: &str = "wsrouter-overrides";
const TENANTS: usize = 500;
/// Every step converges within this.
const STEP: Duration = Duration::from_secs(10);
/// The outage router C alone sees.
const OUTAGE: Duration = Duration::from_secs(30);

type PlainWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A TCP relay in front of the API server that can be cut: one router's own network
/// path, so an outage can be seen by it alone.
struct Partition {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Partition {
    async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (c, j) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    // Unreachable: the connection is reset at once.
                    let _ = down.set_zero_linger();
                    continue;
                }
                j.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
            }
        });
        Ok(Self { addr, cut, conns })
    }

    fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::new(format!("http://{}", self.addr).parse()?);
        Ok(router::api_client(config)?)
    }

    /// Every connection through it is cut, and new ones are refused.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

struct Fleet {
    api: FakeApi,
    /// Router C's own path to the API server.
    partition: Partition,
    routers: Vec<RouterHandle>,
    port: u16,
    /// Pod processes by ordinal (a restarted pod replaces its entry).
    pods: Vec<Option<backend::EchoHandle>>,
    /// What the slices say, by ordinal.
    endpoints: BTreeMap<usize, PodEndpoint>,
}

impl Fleet {
    async fn start() -> Result<Self> {
        let api = FakeApi::start().await?;
        let partition = Partition::start(api.addr()).await?;
        let (pods, port) = pod_backends(6, Duration::from_secs(3600)).await?;
        let endpoints = (0..4)
            .map(|i| {
                (
                    i,
                    PodEndpoint::serving(i, &format!("uid-{i}-a"), pod_ip(i, 0)),
                )
            })
            .collect();
        let mut fleet = Self {
            api,
            partition,
            routers: Vec::new(),
            port,
            pods: pods.into_iter().map(Some).collect(),
            endpoints,
        };
        fleet
            .api
            .apply("configmaps", NS, configmap(CM, &[("tenant-7", "0")]));
        fleet
            .api
            .apply("statefulsets", NS, statefulset("backend", 4));
        fleet.publish_slices();
        let cert = DevCert::generate(&["localhost"])?;
        let opts = Options {
            plaintext: true,
            watched: true,
            ..Options::default()
        };
        let watch = WatchConfig {
            overrides: OverridesWatch::ConfigMap(CM.into()),
            statefulset: Some("backend".into()),
            endpoint_slices: Some(("backend".into(), port)),
            namespace: NS.into(),
            tls_files: None,
            tls_tickets: None,
            sets: Vec::new(),
        };
        for client in [
            fleet.api.client()?,
            fleet.api.client()?,
            fleet.partition.client()?,
        ] {
            let r = start_router(&opts, &cert, Backends::Pods(Default::default()), None).await?;
            router::start_watch(&watch, &r.control(), Some(client)).await?;
            fleet.routers.push(r);
        }
        Ok(fleet)
    }

    fn publish_slices(&self) {
        let eps: Vec<PodEndpoint> = self.endpoints.values().cloned().collect();
        self.api.apply(
            "endpointslices",
            NS,
            pod_slice("backend-1", "backend", self.port, &eps),
        );
    }

    /// Waits until every router in `which` shows the same fingerprint and its table
    /// satisfies `pred`; returns the table and how long it took.
    async fn converge(
        &self,
        what: &str,
        which: &[usize],
        limit: Duration,
        pred: impl Fn(&RoutingTable) -> bool,
    ) -> Result<(Arc<RoutingTable>, Duration)> {
        let start = Instant::now();
        let mut changes: Vec<_> = which
            .iter()
            .map(|&i| self.routers[i].control().changes())
            .collect();
        let agreed = || -> Option<Arc<RoutingTable>> {
            let tables: Vec<_> = which
                .iter()
                .map(|&i| self.routers[i].current_table())
                .collect::<Option<_>>()?;
            let first = tables[0].fingerprint();
            (tables.iter().all(|t| t.fingerprint() == first && pred(t))).then(|| tables[0].clone())
        };
        let table = within(limit, what, async {
            loop {
                if let Some(t) = agreed() {
                    return Ok::<_, anyhow::Error>(t);
                }
                let any = futures_util::future::select_all(
                    changes.iter_mut().map(|c| Box::pin(c.changed())),
                );
                any.await.0.map_err(|_| anyhow!("a control loop is gone"))?;
            }
        })
        .await??;
        let took = start.elapsed();
        eprintln!(
            "fleet: {what}: converged in {took:?} on {}",
            table.fingerprint()
        );
        Ok((table, took))
    }

    fn fingerprint(&self, i: usize) -> Option<Fingerprint> {
        self.routers[i].current_table().map(|t| t.fingerprint())
    }
}

/// One tenant's socket through one router, and the pod it reached.
struct Socket {
    tenant: String,
    router: usize,
    pod: String,
    ws: PlainWs,
}

async fn connect(router: &RouterHandle, tenant: &str) -> Result<(PlainWs, String)> {
    let url = format!("ws://127.0.0.1:{}/ws/{tenant}", router.local_addr().port());
    let (mut ws, _) = within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
    let first = within(WAIT, "the first counter", ws.next())
        .await?
        .context("closed before a counter")??;
    let pod = as_counter(&first).context("not a counter")?.server;
    Ok((ws, pod))
}

/// Where `tenant` lands through each router, checked against every router's table.
async fn land_everywhere(fleet: &Fleet, which: &[usize], tenant: &str) -> Result<String> {
    let mut pods = Vec::new();
    for &i in which {
        let (mut ws, pod) = connect(&fleet.routers[i], tenant).await?;
        let _ = ws.close(None).await;
        let table = fleet.routers[i].current_table().context("table")?;
        ensure!(
            pod == format!("backend-{}", table.route(tenant).ordinal),
            "{tenant} through router {i} reached {pod}, its table says {}",
            table.route(tenant).ordinal
        );
        pods.push(pod);
    }
    ensure!(pods.windows(2).all(|w| w[0] == w[1]), "{tenant}: {pods:?}");
    Ok(pods.remove(0))
}

/// A sample of tenants whose pod takes new connections, each reaching the same pod
/// through every router in `which`.
async fn sample_lands_alike(fleet: &Fleet, which: &[usize], table: &RoutingTable) -> Result<()> {
    let mut checked = 0;
    for t in (0..200).map(|i| format!("tenant-{i}")) {
        let ok = matches!(table.route(&t).backend, wsrouter::Backend::Pod(m) if m.accepts_new());
        if ok {
            land_everywhere(fleet, which, &t).await?;
            checked += 1;
        }
        if checked == 24 {
            return Ok(());
        }
    }
    Err(anyhow!("too few tenants on serving pods"))
}

fn all_pods(t: &RoutingTable) -> bool {
    t.backends()
        .iter()
        .all(|b| matches!(b, wsrouter::Backend::Pod(_)))
}

fn pod_at(t: &RoutingTable, ordinal: usize) -> Option<&wsrouter::Member> {
    match t.backends().get(ordinal) {
        Some(wsrouter::Backend::Pod(m)) => Some(m),
        _ => None,
    }
}

/// `TENANTS` tenants through each router, all open at once; each reached the pod its
/// router's table names, and the same pod through every router.
async fn connect_all(fleet: &Fleet) -> Result<Vec<Socket>> {
    let mut set = JoinSet::new();
    let mut sockets = Vec::new();
    for (r, router) in fleet.routers.iter().enumerate() {
        let addr = router.local_addr();
        for i in 0..TENANTS {
            let tenant = format!("t-{i}");
            set.spawn(async move {
                let url = format!("ws://{addr}/ws/{tenant}");
                let (mut ws, _) =
                    within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
                let first = within(WAIT, "the first counter", ws.next())
                    .await?
                    .context("closed before a counter")??;
                let pod = as_counter(&first).context("not a counter")?.server;
                anyhow::Ok(Socket {
                    tenant,
                    router: r,
                    pod,
                    ws,
                })
            });
            // A bounded number in flight: the routers' pending pools stay small.
            if set.len() >= 64 {
                sockets.push(set.join_next().await.context("a task")???);
            }
        }
    }
    while let Some(s) = set.join_next().await {
        sockets.push(s??);
    }
    let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &sockets {
        let table = fleet.routers[s.router].current_table().context("table")?;
        ensure!(
            s.pod == format!("backend-{}", table.route(&s.tenant).ordinal),
            "{} via router {} reached {}",
            s.tenant,
            s.router,
            s.pod
        );
        by_tenant.entry(&s.tenant).or_default().push(&s.pod);
    }
    ensure!(by_tenant.len() == TENANTS);
    for (t, pods) in by_tenant {
        ensure!(
            pods.len() == 3 && pods.windows(2).all(|w| w[0] == w[1]),
            "{t}: {pods:?}"
        );
    }
    Ok(sockets)
}

/// Waits until router `i`'s control loop has counted `n` rejections of `reason`.
async fn rejected(router: &RouterHandle, reason: RejectReason, n: u64) -> Result<()> {
    let control = router.control();
    let mut processed = control.processed();
    within(
        STEP,
        "a rejected update",
        processed.wait_for(|_| control.stats.rejected(reason) >= n),
    )
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routers_agree_through_a_day_in_the_life() -> Result<()> {
    let mut f = Fleet::start().await?;
    let all = [0, 1, 2];
    let (a_b, c) = ([0, 1], 2);

    // Morning: the first tables, and 500 tenants through each router.
    let (t, _) = f
        .converge("first tables", &all, STEP, |t| {
            t.replicas().get() == 4 && all_pods(t)
        })
        .await?;
    ensure!(t.route("tenant-7").ordinal == 0);
    let mut sockets = connect_all(&f).await?;
    sample_lands_alike(&f, &all, &t).await?;

    // A ConfigMap edit: one tenant moved, one override beyond the replicas (inactive).
    f.api.apply(
        "configmaps",
        NS,
        configmap(
            CM,
            &[
                ("tenant-7", "0"),
                ("tenant-8", "backend-3"),
                ("tenant-9", "5"),
            ],
        ),
    );
    let (t, _) = f
        .converge("a ConfigMap edit", &all, STEP, |t| t.overrides().len() == 3)
        .await?;
    ensure!(t.route("tenant-8").ordinal == 3 && t.route("tenant-9").inactive_override == Some(5));
    sample_lands_alike(&f, &all, &t).await?;

    // A bad edit: every router rejects it whole and keeps the same table.
    let before = t.fingerprint();
    f.api.apply(
        "configmaps",
        NS,
        configmap(CM, &[("Bad_Key", "1"), ("tenant-8", "1")]),
    );
    for r in &f.routers {
        rejected(r, RejectReason::InvalidOverrides, 1).await?;
    }
    f.converge("a bad edit kept out", &all, STEP, |t| {
        t.fingerprint() == before
    })
    .await?;

    // Scale 4 → 6: two pods start, the StatefulSet grows, the inactive override wakes.
    for i in 4..6 {
        f.endpoints.insert(
            i,
            PodEndpoint::serving(i, &format!("uid-{i}-a"), pod_ip(i, 0)),
        );
    }
    f.publish_slices();
    f.api.apply("statefulsets", NS, statefulset("backend", 6));
    let (t, _) = f
        .converge("scale 4 → 6", &all, STEP, |t| {
            t.replicas().get() == 6 && all_pods(t)
        })
        .await?;
    ensure!(t.route("tenant-9").ordinal == 5);
    sample_lands_alike(&f, &all, &t).await?;

    // Router C loses the API server (its own network path); A and B carry on.
    let errors_before = f.routers[c].control().stats.watch_errors.get();
    f.partition.cut();
    let outage = Instant::now();
    let control_c = f.routers[c].control();
    let mut processed = control_c.processed();
    within(
        STEP,
        "router C to see the outage",
        processed.wait_for(|_| control_c.stats.watch_errors.get() > errors_before),
    )
    .await??;

    // Scale 6 → 5: pod 5 leaves the slices, the StatefulSet shrinks.
    f.endpoints.remove(&5);
    f.publish_slices();
    f.api.apply("statefulsets", NS, statefulset("backend", 5));
    let (t, _) = f
        .converge("scale 6 → 5 (C cut off)", &a_b, STEP, |t| {
            t.replicas().get() == 5
        })
        .await?;
    ensure!(
        f.fingerprint(c) != Some(t.fingerprint()),
        "router C cannot have seen the scale-down"
    );

    // Pod 2 restarts with a new address and UID; its own sockets end with it.
    if let Some(old) = f.pods[2].take() {
        old.kill().await;
    }
    f.pods[2] = Some(start_pod(2, pod_ip(2, 1), f.port, Duration::from_secs(3600)).await?);
    f.endpoints
        .insert(2, PodEndpoint::serving(2, "uid-2-b", pod_ip(2, 1)));
    f.publish_slices();
    let new_addr = SocketAddr::new(pod_ip(2, 1), f.port);
    let (t, _) = f
        .converge("pod 2 restarted at a new address", &a_b, STEP, |t| {
            pod_at(t, 2).is_some_and(|m| m.addr == new_addr)
        })
        .await?;
    sample_lands_alike(&f, &a_b, &t).await?;

    // Pod 1 stops serving, then terminates: 503 without a connect attempt; its live
    // sockets are left alone.
    f.endpoints.entry(1).and_modify(|e| {
        e.ready = false;
        e.serving = false;
    });
    f.publish_slices();
    let (t, _) = f
        .converge("pod 1 not serving", &a_b, STEP, |t| {
            pod_at(t, 1).is_some_and(|m| !m.serving)
        })
        .await?;
    let on1 = (0..)
        .map(|i| format!("tenant-{i}"))
        .find(|n| t.route(n).ordinal == 1)
        .context("a tenant on pod 1")?;
    for &r in &a_b {
        let addr = f.routers[r].local_addr();
        let resp = plain_raw(addr, &upgrade_request(&format!("/ws/{on1}"))).await?;
        ensure!(
            resp.status == 503 && resp.head.contains("retry-after: 5"),
            "{resp:?}"
        );
    }
    f.endpoints.entry(1).and_modify(|e| {
        e.serving = true;
        e.terminating = true;
    });
    f.publish_slices();
    f.converge("pod 1 terminating", &a_b, STEP, |t| {
        pod_at(t, 1).is_some_and(|m| m.terminating)
    })
    .await?;

    // The API server compacts its history: every watch gets 410 and relists.
    let restarts: Vec<u64> = f
        .routers
        .iter()
        .map(|r| r.control().stats.watch_restarts.get())
        .collect();
    let settled = f.fingerprint(0);
    f.api.expire();
    for &r in &a_b {
        let control = f.routers[r].control();
        let mut processed = control.processed();
        within(
            STEP,
            "a relist after 410",
            processed.wait_for(|_| control.stats.watch_restarts.get() > restarts[r]),
        )
        .await??;
    }
    f.converge("after a 410 relist", &a_b, STEP, |t| {
        Some(t.fingerprint()) == settled
    })
    .await?;

    // The outage ends (it lasted OUTAGE from router C's point of view): C catches up.
    tokio::time::sleep_until((outage + OUTAGE).into()).await;
    f.partition.heal();
    let heal = WATCH_RETRY_MAX * 4 + Duration::from_secs(2);
    let (t, took) = f
        .converge("router C after the outage", &all, heal, |t| {
            Some(t.fingerprint()) == settled
        })
        .await?;
    eprintln!("fleet: router C caught up {took:?} after a {OUTAGE:?} outage (bound {heal:?})");
    sample_lands_alike(&f, &all, &t).await?;

    // Evening: every socket is intact but those of pod 2, which died under them.
    let mut intact = 0;
    for s in &mut sockets {
        if s.pod == "backend-2" {
            let end = within(WAIT, "pod 2's socket to end", s.ws.next()).await?;
            ensure!(
                !matches!(end, Some(Ok(Message::Text(_)))),
                "{} via {} still talks: {end:?}",
                s.tenant,
                s.router
            );
            continue;
        }
        let hello = format!("still here {} {}", s.tenant, s.router);
        s.ws.send(Message::text(hello.clone())).await?;
        let echo = within(WAIT, "an echo", s.ws.next())
            .await?
            .context("closed")??;
        ensure!(echo == Message::text(hello), "{}: {echo:?}", s.tenant);
        intact += 1;
    }
    eprintln!(
        "fleet: {intact} of {} sockets intact at the end",
        sockets.len()
    );
    ensure!(
        intact > TENANTS * 3 / 2,
        "most sockets are on pods that lived"
    );
    Ok(())
}
