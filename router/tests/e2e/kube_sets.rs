//! Backend sets in a cluster (issue 29): each set's StatefulSet and its pods are watched
//! through the fake API server; scaling the canary changes only its pods, and a canary
//! StatefulSet deleted sends its tenants back to the stable set.

use std::time::Duration;

use anyhow::{ensure, Result};
use router::{OverridesWatch, SetWatch, WatchConfig};
use tokio::net::TcpListener;
use wsrouter::Backend;

use crate::fake_api::{configmap, pod_slice, pod_slice_of, statefulset, FakeApi, PodEndpoint};
use crate::harness::*;

const NS: &str = "prod";
const CM: &str = "wsrouter-overrides";

/// Canary pod `i`'s address: its own loopback range, apart from the stable pods'.
fn canary_ip(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 101, 0, 1 + i as u8).into()
}

fn canary_pods(n: usize) -> Vec<PodEndpoint> {
    (0..n)
        .map(|i| PodEndpoint::serving(i, &format!("v2-uid-{i}"), canary_ip(i)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_set_follows_its_own_statefulset_and_pods() -> Result<()> {
    let api = FakeApi::start().await?;
    let split = [("canary.set", "v2"), ("canary.weight", "50")];
    api.apply("configmaps", NS, configmap(CM, &split));
    api.apply("statefulsets", NS, statefulset("backend", 4));
    api.apply("statefulsets", NS, statefulset("backend-v2", 2));
    let h = Harness::start(Options {
        backends: 4,
        watched: true,
        pods: true,
        sets: vec![("v2", 0)],
        interval: Duration::from_millis(50),
        ..Options::default()
    })
    .await?;
    let port = h.backends[0].local_addr().port();
    // The canary's pods, on the stable pods' port (as pods are); three, to scale to.
    let mut canaries = Vec::new();
    for i in 0..3 {
        let l = TcpListener::bind((canary_ip(i), port)).await?;
        let cfg = backend::EchoConfig::new(format!("backend-v2-{i}"))
            .with_interval(Duration::from_millis(50));
        canaries.push(backend::serve(l, cfg)?);
    }
    let stable_pods: Vec<PodEndpoint> = (0..4)
        .map(|i| PodEndpoint::serving(i, &format!("uid-{i}"), pod_ip(i, 0)))
        .collect();
    // One headless Service selects both StatefulSets: each set takes its own pods.
    api.apply(
        "endpointslices",
        NS,
        pod_slice("backend-a", "backend", port, &stable_pods),
    );
    api.apply(
        "endpointslices",
        NS,
        pod_slice_of("backend-b", "backend", "backend-v2", port, &canary_pods(2)),
    );
    let watch = WatchConfig {
        overrides: OverridesWatch::ConfigMap(CM.into()),
        statefulset: Some("backend".into()),
        endpoint_slices: Some(("backend".into(), port)),
        namespace: NS.into(),
        sets: vec![SetWatch {
            set: 1,
            statefulset: "backend-v2".into(),
            endpoint_slices: Some(("backend".into(), port)),
        }],
        ..WatchConfig::default()
    };
    router::start_watch(&watch, &h.router.control(), Some(api.client()?)).await?;
    let pods_known = |t: &wsrouter::RoutingTable, set: u8, n: usize| {
        let s = t.set(set);
        s.replicas() as usize == n
            && s.backends()
                .iter()
                .filter(|b| matches!(b, Backend::Pod(_)))
                .count()
                == n
    };
    let t = h
        .wait_table("both sets' pods", |t| {
            t.sets().len() == 2 && pods_known(t, 0, 4) && pods_known(t, 1, 2)
        })
        .await?;
    // Each tenant reaches the pod its set and ordinal name.
    let tenants: Vec<String> = (0..40).map(|i| format!("tenant-{i}")).collect();
    for ns in &tenants {
        let r = t.route(ns);
        let want = match r.set {
            0 => format!("backend-{}", r.ordinal),
            _ => format!("backend-v2-{}", r.ordinal),
        };
        ensure!(served_by(&h, ns).await? == want, "{ns}");
    }
    ensure!(tenants.iter().any(|ns| t.route(ns).set == 1));

    // Scaling the canary changes only its pods.
    api.apply("statefulsets", NS, statefulset("backend-v2", 3));
    api.apply(
        "endpointslices",
        NS,
        pod_slice_of("backend-b", "backend", "backend-v2", port, &canary_pods(3)),
    );
    let scaled = h
        .wait_table("the canary at 3", |t| pods_known(t, 1, 3))
        .await?;
    ensure!(scaled.set(0) == t.set(0), "the stable set is as it was");
    ensure!(scaled.fingerprint().membership != t.fingerprint().membership);
    for ns in tenants.iter().filter(|ns| scaled.route(ns).set == 1) {
        let want = format!("backend-v2-{}", scaled.route(ns).ordinal);
        ensure!(served_by(&h, ns).await? == want, "{ns}");
    }

    // The canary's StatefulSet deleted: its tenants are back on the stable set.
    api.delete("statefulsets", NS, "backend-v2");
    let gone = h
        .wait_table("the canary gone", |t| t.set(1).replicas() == 0)
        .await?;
    ensure!(gone.set(0) == t.set(0));
    for ns in &tenants {
        let r = gone.route(ns);
        ensure!(r.set == 0 && r.unavailable_set == (t.route(ns).set == 1).then_some(1));
        ensure!(served_by(&h, ns).await? == format!("backend-{}", r.ordinal));
    }
    Ok(())
}
