//! The Kubernetes watches against a fake API server that speaks the real wire protocol:
//! initial list, modify, delete, bookmarks, relist after 410, an API server outage, bad
//! data rejected with the last good table kept, replica changes, pod readiness.

use std::time::Duration;

use anyhow::Result;
use router::control::watch::{OverridesWatch, WatchConfig};
use router::control::RejectReason;

use crate::fake_api::{configmap, endpoint_slice, statefulset, FakeApi};
use crate::harness::*;

const NS: &str = "prod";
const CM: &str = "wsrouter-overrides";

fn watch_config() -> WatchConfig {
    WatchConfig {
        overrides: OverridesWatch::ConfigMap(CM.into()),
        statefulset: Some("backend".into()),
        endpoint_slices: Some("backend".into()),
        namespace: NS.into(),
        tls_files: None,
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
    router::control::watch::start(&watch_config(), &h.router.control(), Some(api.client()?))
        .await?;
    Ok(h)
}

async fn served_by(h: &Harness, ns: &str) -> Result<String> {
    let mut ws = h.ws(ns).await?;
    Ok(next_counter(&mut ws).await?.server)
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
    let api = FakeApi::start().await?;
    api.apply("configmaps", NS, configmap(CM, &[("ns-01", "0")]));
    api.apply("statefulsets", NS, statefulset("backend", 4));
    let h = router_with(&api).await?;
    h.wait_table("first table", |t| t.route("ns-01").ordinal == 0)
        .await?;
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
    h.wait_table("caught up after the outage", |t| {
        t.route("ns-01").ordinal == 2
    })
    .await?;
    assert_eq!(served_by(&h, "ns-01").await?, "backend-2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_known_not_ready_get_503_at_once() -> Result<()> {
    let api = FakeApi::start().await?;
    api.apply("configmaps", NS, configmap(CM, &[]));
    api.apply("statefulsets", NS, statefulset("backend", 4));
    let all_ready: Vec<(u32, bool)> = (0..4).map(|i| (i, true)).collect();
    api.apply(
        "endpointslices",
        NS,
        endpoint_slice("backend-abc", "backend", "backend", &all_ready),
    );
    let h = router_with(&api).await?;
    h.wait_table("first table", |_| true).await?;
    let on2 = tenant_on(&h, 2, 0);
    assert_eq!(served_by(&h, &on2).await?, "backend-2");

    let mut two_down = all_ready.clone();
    two_down[2].1 = false;
    api.apply(
        "endpointslices",
        NS,
        endpoint_slice("backend-abc", "backend", "backend", &two_down),
    );
    // Once the router knows, it answers 503 without asking the backend.
    let readiness = h.router.control().pod_readiness();
    within(
        WAIT,
        "the router to learn the pod is not ready",
        h.router.changes().until(|| readiness.load().contains(2)),
    )
    .await?;
    let req = upgrade_request(&format!("/ws/{on2}"));
    let resp = h.raw(&req).await?;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.head.contains("retry-after: 5"), "{}", resp.head);
    assert!(resp.body.contains("not ready"), "{}", resp.body);
    // Other pods are untouched.
    assert_eq!(served_by(&h, &tenant_on(&h, 1, 0)).await?, "backend-1");

    api.apply(
        "endpointslices",
        NS,
        endpoint_slice("backend-abc", "backend", "backend", &all_ready),
    );
    within(
        WAIT,
        "pod ready again",
        h.router.changes().until(|| !readiness.load().contains(2)),
    )
    .await?;
    assert_eq!(served_by(&h, &on2).await?, "backend-2");
    Ok(())
}
