//! RBAC conformance: every request the router makes in its in-cluster modes is granted
//! by the Role in k8s/base/rbac.yaml, and the Role grants nothing the router does not use.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use router::{OverridesWatch, WatchConfig};
use serde_json::Value;

use crate::fake_api::{configmap, endpoint_slice, statefulset, FakeApi, Recorded};
use crate::harness::*;

/// (apiGroup, resource, resourceName or "*", verb)
type Grant = (String, String, String, String);

fn role_grants() -> Result<BTreeSet<Grant>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/rbac.yaml");
    let text = std::fs::read_to_string(path)?;
    let mut grants = BTreeSet::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde_json::to_value(
            <serde_norway::Value as serde::Deserialize>::deserialize(doc)?,
        )?;
        if v["kind"] != "Role" {
            continue;
        }
        for rule in v["rules"].as_array().context("rules")? {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            };
            let names = match list("resourceNames") {
                n if n.is_empty() => vec!["*".to_owned()],
                n => n,
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for n in &names {
                        for verb in list("verbs") {
                            grants.insert((g.clone(), r.clone(), n.clone(), verb));
                        }
                    }
                }
            }
        }
    }
    Ok(grants)
}

/// What a request needs, as RBAC sees it: list/watch name an object only through a
/// `metadata.name` field selector.
fn needed(r: &Recorded) -> Result<(Grant, String)> {
    let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let (group, ns, resource, name_in_path) = match segs.as_slice() {
        ["api", "v1", "namespaces", ns, res] => ("", *ns, *res, None),
        ["api", "v1", "namespaces", ns, res, name] => ("", *ns, *res, Some(*name)),
        ["apis", g, _, "namespaces", ns, res] => (*g, *ns, *res, None),
        ["apis", g, _, "namespaces", ns, res, name] => (*g, *ns, *res, Some(*name)),
        _ => anyhow::bail!("not a namespaced resource request: {r:?}"),
    };
    let query: Vec<(String, String)> = r
        .query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect();
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let verb = match (r.method.as_str(), name_in_path, get("watch").as_deref()) {
        ("GET", None, Some("true" | "1")) => "watch",
        ("GET", None, _) => "list",
        ("GET", Some(_), _) => "get",
        (m, _, _) => anyhow::bail!("the router should only read, not {m}: {r:?}"),
    };
    let name = name_in_path
        .map(str::to_owned)
        .or_else(|| {
            get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=").map(str::to_owned))
        })
        .unwrap_or_else(|| "*".to_owned());
    Ok((
        (group.to_owned(), resource.to_owned(), name, verb.to_owned()),
        ns.to_owned(),
    ))
}

fn granted(grants: &BTreeSet<Grant>, need: &Grant) -> Option<Grant> {
    let (g, r, n, v) = need;
    [n.clone(), "*".to_owned()]
        .into_iter()
        .map(|name| (g.clone(), r.clone(), name, v.clone()))
        .find(|candidate| grants.contains(candidate))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grants_exactly_what_the_router_calls() -> Result<()> {
    let api = FakeApi::start().await?;
    let ns = "team-a";
    api.apply(
        "configmaps",
        ns,
        configmap("wsrouter-overrides", &[("ns-01", "1")]),
    );
    api.apply("statefulsets", ns, statefulset("backend", 4));
    api.apply(
        "endpointslices",
        ns,
        endpoint_slice("backend-x", "backend", "backend", &[(0, true)]),
    );

    // Both in-cluster modes: replicas watched (the manifests' mode), and fixed replicas
    // with the ConfigMap through the API. Each lists, watches, and relists after a 410.
    for watched in [true, false] {
        let h = Harness::start(Options {
            backends: 4,
            watched,
            await_overrides: true,
            interval: Duration::from_secs(1),
            ..Options::default()
        })
        .await?;
        let watch = WatchConfig {
            overrides: OverridesWatch::ConfigMap(router::DEFAULT_CONFIGMAP.into()),
            statefulset: watched.then(|| "backend".into()),
            endpoint_slices: Some(("backend".into(), 9000)),
            namespace: ns.into(),
            tls_files: None,
            tls_tickets: None,
            sets: Vec::new(),
        };
        router::start_watch(&watch, &h.router.control(), Some(api.client()?)).await?;
        h.wait_table("first table", |t| t.route("ns-01").ordinal == 1)
            .await?;
        let restarts = h.router.control().stats.watch_restarts.get();
        api.expire();
        api.apply(
            "configmaps",
            ns,
            configmap("wsrouter-overrides", &[("ns-01", "2")]),
        );
        h.wait_table("relisted", |t| t.route("ns-01").ordinal == 2)
            .await?;
        assert!(h.router.control().stats.watch_restarts.get() > restarts);
        api.apply(
            "configmaps",
            ns,
            configmap("wsrouter-overrides", &[("ns-01", "1")]),
        );
        h.wait_table("reset", |t| t.route("ns-01").ordinal == 1)
            .await?;
        h.router.close_now();
        within(WAIT, "drain", h.router.drained()).await?;
    }

    let grants = role_grants()?;
    let mut used = BTreeSet::new();
    let requests = api.requests();
    assert!(requests.len() >= 12, "{requests:?}");
    for r in &requests {
        let (need, req_ns) = needed(r)?;
        assert_eq!(req_ns, ns, "a request outside the pod's namespace: {r:?}");
        let grant = granted(&grants, &need)
            .with_context(|| format!("not granted by k8s/base/rbac.yaml: {need:?} for {r:?}"))?;
        used.insert(grant);
    }
    let unused: Vec<_> = grants.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "k8s/base/rbac.yaml grants what the router never uses: {unused:?}"
    );
    Ok(())
}
