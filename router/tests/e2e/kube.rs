//! The Kubernetes watches against a fake API server that speaks the real wire protocol:
//! initial list, modify, delete, bookmarks, relist after 410, an API server outage, bad
//! data rejected with the last good table kept, replica changes, pod readiness.

use std::time::Duration;

use anyhow::Result;
use router::RejectReason;
use router::{OverridesWatch, WatchConfig};

use anyhow::Context;
use futures_util::StreamExt;
use wsrouter::Backend;

use crate::fake_api::{configmap, pod_slice, statefulset, FakeApi, PodEndpoint};
use crate::harness::*;

const NS: &str = "prod";
const CM: &str = "wsrouter-overrides";

fn watch_config() -> WatchConfig {
    WatchConfig {
        overrides: OverridesWatch::ConfigMap(CM.into()),
        statefulset: Some("backend".into()),
        // The pods are a static list here; cluster mode has its own tests below.
        endpoint_slices: None,
        namespace: NS.into(),
        tls_files: None,
        tls_tickets: None,
        sets: Vec::new(),
    }
}

async fn router_with(api: &FakeApi) -> Result<Harness> {
    let h = Harness::start(Options {
        backends: 8,
        watched: true,
        interval: Duration::from_millis(50),
        ..Options::default()
    })
    .await?;
    router::start_watch(&watch_config(), &h.router.control(), Some(api.client()?)).await?;
    Ok(h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_and_statefulset_follow_the_api() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "0")]));
    api.apply("statefulsets", NS, statefulset("backend", 4));
    let h = router_with(&api).await?;

    // Initial list: the ConfigMap's override and the StatefulSet's replicas.
    let t = h.wait_table("first table", |_| true).await?;
    assert_eq!((t.version(), t.replicas().get()), (1, 4));
    assert_eq!(t.route("ns-01").ordinal, 0);
    assert!(
        t.source()
            .to_string()
            .starts_with("configmap:prod/wsrouter-overrides@"),
        "{}",
        t.source()
    );
    assert_eq!(h.admin_get("/readyz").await?.status, 200);
    assert_eq!(served_by(&h, "ns-01").await?, "backend-0");

    // Modify.
    api.apply(
        "configmaps",
        NS,
        configmap(CM, &[("ns-01", "3"), ("ns-02", "backend-1")]),
    );
    let t = h
        .wait_table("modified overrides", |t| t.route("ns-01").ordinal == 3)
        .await?;
    assert_eq!(t.route("ns-02").ordinal, 1);
    assert_eq!(served_by(&h, "ns-01").await?, "backend-3");

    // A bookmark changes nothing, and the watch goes on after it.
    api.bookmark();
    api.apply(
        "configmaps",
        NS,
        configmap(CM, &[("ns-01", "2"), ("ns-02", "backend-1")]),
    );
    h.wait_table("update after a bookmark", |t| t.route("ns-01").ordinal == 2)
        .await?;

    // Scale the StatefulSet: the table follows; an override beyond it waits inactive.
    api.apply(
        "configmaps",
        NS,
        configmap(CM, &[("ns-01", "2"), ("acme-prod", "backend-5")]),
    );
    let t = h
        .wait_table("inactive override", |t| {
            t.route("acme-prod").inactive_override == Some(5)
        })
        .await?;
    assert_eq!(t.route("acme-prod").ordinal, 3, "falls back to its hash");
    api.apply("statefulsets", NS, statefulset("backend", 6));
    let t = h
        .wait_table("scaled to 6", |t| t.replicas().get() == 6)
        .await?;
    assert_eq!(t.route("acme-prod").ordinal, 5);
    assert_eq!(served_by(&h, "acme-prod").await?, "backend-5");

    // Malformed data: rejected whole, the last good table keeps serving.
    let before = h.router.current_table().map(|t| t.version());
    api.apply(
        "configmaps",
        NS,
        configmap(CM, &[("ns-01", "1"), ("Not_A_Namespace", "1")]),
    );
    h.wait_rejected(RejectReason::InvalidOverrides, 1).await?;
    assert_eq!(h.router.current_table().map(|t| t.version()), before);
    assert_eq!(
        h.router
            .control()
            .stats
            .rejected(RejectReason::InvalidOverrides),
        1
    );
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "backend-9")]));
    h.wait_table("out-of-range pod name kept inactive", |t| {
        t.route("ns-01").inactive_override == Some(9)
    })
    .await?;
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "pod-1")]));
    h.wait_rejected(RejectReason::InvalidOverrides, 2).await?;
    assert_eq!(
        h.router
            .control()
            .stats
            .rejected(RejectReason::InvalidOverrides),
        2
    );
    assert_eq!(
        h.router
            .current_table()
            .map(|t| t.route("ns-01").inactive_override),
        Some(Some(9))
    );

    // Delete: no overrides.
    api.delete("configmaps", NS, CM);
    let t = h
        .wait_table("deleted configmap", |t| t.overrides().is_empty())
        .await?;
    assert_eq!(
        t.route("ns-01").ordinal,
        wsrouter::ordinal_for("ns-01", t.replicas())
    );

    // Everything the router asked of the API was a read of these three, in its namespace.
    let allowed = [
        "/api/v1/namespaces/prod/configmaps",
        "/apis/apps/v1/namespaces/prod/statefulsets",
        "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices",
    ];
    for r in api.requests() {
        assert_eq!(r.method, "GET", "{r:?}");
        assert!(allowed.contains(&r.path.as_str()), "{r:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_410_and_survives_an_outage() -> Result<()> {
    let (api, h) = following_the_api().await?;
    let restarts = h.router.control().stats.watch_restarts.get();

    // 410 Gone: the watches end with an ERROR event and cannot resume; a relist brings
    // the change made in between.
    api.expire();
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "1")]));
    h.wait_table("relisted after 410", |t| t.route("ns-01").ordinal == 1)
        .await?;
    assert!(
        h.router.control().stats.watch_restarts.get() > restarts,
        "no relist happened"
    );

    // The API server goes away. Routing keeps the last good table meanwhile.
    api.stop();
    let errors = h.router.control().stats.watch_errors.get();
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "2")]));
    assert_eq!(served_by(&h, "ns-01").await?, "backend-1");
    assert_eq!(
        h.admin_get("/readyz").await?.status,
        200,
        "still ready on the last good table"
    );
    // The watchers notice (errors counted) and retry with backoff until it is back.
    let control = h.router.control();
    let mut processed = control.processed();
    within(
        WAIT,
        "watch errors during the outage",
        processed.wait_for(|_| control.stats.watch_errors.get() > errors),
    )
    .await??;
    api.restart().await?;
    on_pod_2(&h, "caught up after the outage").await
}

/// An API server answering `503` (a load balancer in front of one that restarts) is a
/// failure like any other: each try is counted and retried on the router's own bounded
/// backoff, and the change made meanwhile arrives once it answers again. kube's client
/// would otherwise retry a `503` by itself, silently, for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_answering_503_is_counted_and_outlived() -> Result<()> {
    let (api, h) = following_the_api().await?;

    api.unavailable();
    let control = h.router.control();
    let errors = control.stats.watch_errors.get();
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "2")]));
    // Four failures between the two watches (the ConfigMap's and the StatefulSet's):
    // each try was seen, and tried again.
    let mut processed = control.processed();
    within(
        WAIT,
        "the 503s counted as watch errors",
        processed.wait_for(|_| control.stats.watch_errors.get() >= errors + 4),
    )
    .await??;
    assert_eq!(served_by(&h, "ns-01").await?, "backend-0");

    api.available();
    on_pod_2(&h, "caught up once the API answers").await
}

/// The API with `ns-01` overridden to pod 0 of 4, and a router following it, past its
/// first table.
async fn following_the_api() -> Result<(FakeApi, Harness)> {
    let api = FakeApi::start().await?;
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "0")]));
    api.apply("statefulsets", NS, statefulset("backend", 4));
    let h = router_with(&api).await?;
    h.wait_table("first table", |t| t.route("ns-01").ordinal == 0)
        .await?;
    Ok((api, h))
}

/// Waits until the table sends `ns-01` to pod 2, then checks pod 2 serves it.
async fn on_pod_2(h: &Harness, what: &str) -> Result<()> {
    h.wait_table(what, |t| t.route("ns-01").ordinal == 2)
        .await?;
    assert_eq!(served_by(h, "ns-01").await?, "backend-2");
    Ok(())
}

/// A router in cluster mode: backends on their own loopback addresses at one port, known
/// only from EndpointSlices.
async fn pod_router(api: &FakeApi) -> Result<(Harness, u16)> {
    let h = Harness::start(Options {
        backends: 4,
        watched: true,
        pods: true,
        interval: Duration::from_millis(50),
        ..Options::default()
    })
    .await?;
    let port = h.backends[0].local_addr().port();
    let watch = WatchConfig {
        endpoint_slices: Some(("backend".into(), port)),
        ..watch_config()
    };
    router::start_watch(&watch, &h.router.control(), Some(api.client()?)).await?;
    Ok((h, port))
}

fn pods(n: usize) -> Vec<PodEndpoint> {
    (0..n)
        .map(|i| PodEndpoint::serving(i, &format!("uid-{i}"), pod_ip(i, 0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_come_from_endpoint_slices_with_their_conditions() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply("configmaps", NS, configmap(CM, &[]));
    api.apply("statefulsets", NS, statefulset("backend", 4));
    let (h, port) = pod_router(&api).await?;
    // Only pods 0..3 are named yet: ordinal 3's tenants wait, never guessed.
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-a", "backend", port, &pods(3)),
    );
    h.wait_table("pods 0-2 known", |t| {
        t.backends()
            .iter()
            .filter(|b| matches!(b, Backend::Pod(_)))
            .count()
            == 3
    })
    .await?;
    let on3 = tenant_on(&h, 3, 0);
    let resp = h.raw(&upgrade_request(&format!("/ws/{on3}"))).await?;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.head.contains("retry-after: 2"), "{}", resp.head);
    // Pods named in two slices are merged; each ordinal reaches its own pod.
    let mut second = pods(4);
    second.drain(..3);
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-b", "backend", port, &second),
    );
    h.wait_table("pod 3 known", |t| {
        matches!(t.backends()[3], Backend::Pod(_))
    })
    .await?;
    for i in 0..4 {
        assert_eq!(
            served_by(&h, &tenant_on(&h, i, 0)).await?,
            format!("backend-{i}")
        );
    }

    // Pod 2 stops serving: 503 at once, the tenant is not moved.
    let on2 = tenant_on(&h, 2, 0);
    let mut live = h.ws(&on2).await?;
    next_counter(&mut live).await?;
    let mut all = pods(4);
    all[2].ready = false;
    all[2].serving = false;
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-a", "backend", port, &all[..3]),
    );
    h.wait_table(
        "pod 2 not serving",
        |t| matches!(&t.backends()[2], Backend::Pod(m) if !m.serving),
    )
    .await?;
    let resp = h.raw(&upgrade_request(&format!("/ws/{on2}"))).await?;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.head.contains("retry-after: 5"), "{}", resp.head);
    assert!(resp.body.contains("not ready"), "{}", resp.body);
    assert_eq!(h.ordinal(&on2), 2);
    // Then terminating (serving again while it finishes): still no new sockets, and the
    // live one is left alone.
    all[2].serving = true;
    all[2].terminating = true;
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-a", "backend", port, &all[..3]),
    );
    h.wait_table(
        "pod 2 terminating",
        |t| matches!(&t.backends()[2], Backend::Pod(m) if m.terminating),
    )
    .await?;
    let resp = h.raw(&upgrade_request(&format!("/ws/{on2}"))).await?;
    assert_eq!(resp.status, 503, "{resp:?}");
    next_counter(&mut live).await?;
    let before = h.router.current_table().context("table")?.fingerprint();

    // Restarted with a new address and UID: the router follows, the membership digest
    // changes, and the tenant reaches the new pod.
    let restarted = start_pod(2, pod_ip(2, 1), port, Duration::from_millis(50)).await?;
    all[2] = PodEndpoint::serving(2, "uid-2-new", pod_ip(2, 1));
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-a", "backend", port, &all[..3]),
    );
    let t = h
        .wait_table(
            "pod 2 at its new address",
            |t| matches!(&t.backends()[2], Backend::Pod(m) if m.accepts_new()),
        )
        .await?;
    assert_eq!(t.fingerprint().config, before.config);
    assert_ne!(t.fingerprint().membership, before.membership);
    let mut ws = h.ws(&on2).await?;
    assert_eq!(next_counter(&mut ws).await?.server, "backend-2");
    drop(restarted);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_never_resolves_a_name() -> Result<()> {
    use clap::Parser;
    let api = FakeApi::start().await?;
    api.apply("configmaps", NS, configmap(CM, &[]));
    let (backends, port) = pod_backends(2, Duration::from_millis(50)).await?;
    // The template's host cannot resolve (.invalid, RFC 6761): only its port is used.
    let template = format!("{{statefulset}}-{{i}}.nowhere.invalid:{port}");
    let cli = router::Cli::try_parse_from([
        "wsrouter",
        "serve",
        "--plaintext",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--replicas",
        "2",
        "--configmap",
        CM,
        "--pod-namespace",
        NS,
        "--backend-template",
        &template,
        "--route-headers",
    ])?;
    let router::Command::Serve(args) = cli.command else {
        anyhow::bail!("not serve")
    };
    let (config, watch) = args.into_config()?;
    assert!(matches!(
        config.routing.backends,
        wsrouter::Backends::Pods(_)
    ));
    let router = router::start(config).await?;
    router::start_watch(&watch, &router.control(), Some(api.client()?)).await?;
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-a", "backend", port, &pods(2)),
    );
    let mut changes = router.control().changes();
    within(WAIT, "both pods known", async {
        while !router
            .current_table()
            .is_some_and(|t| t.backends().iter().all(|b| matches!(b, Backend::Pod(_))))
        {
            changes.changed().await?;
        }
        anyhow::Ok(())
    })
    .await??;
    let table = router.current_table().context("table")?;
    for ordinal in 0..2 {
        let ns = (0..)
            .map(|i| format!("t-{i}"))
            .find(|ns| table.route(ns).ordinal == ordinal)
            .context("a tenant")?;
        let url = format!("ws://127.0.0.1:{}/ws/{ns}", router.local_addr().port());
        let (mut ws, resp) =
            within(WAIT, "connect", tokio_tungstenite::connect_async(url)).await??;
        assert!(resp.headers().contains_key("x-wsrouter-fingerprint"));
        let counter = within(WAIT, "a counter", ws.next())
            .await?
            .context("closed")??;
        assert!(
            counter.to_text()?.contains(&format!("backend-{ordinal}")),
            "{counter:?}"
        );
    }
    router.shutdown();
    drop(backends);
    Ok(())
}
