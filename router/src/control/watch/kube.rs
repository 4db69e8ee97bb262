//! Watches through the Kubernetes API, with kube's watcher: the overrides ConfigMap,
//! the backend StatefulSet's `spec.replicas`, and the backend Service's EndpointSlices.
//!
//! The watcher relists after `410 Gone`, resumes from bookmarks, and retries a failing
//! API server with backoff; meanwhile the last good table keeps serving. A ConfigMap whose
//! data is bad is a rejected update (logged with its key, counted), never a dead watch.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::ExponentialBackoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wsrouter::{Members, SetId, SliceEndpoint, TableSource, STABLE};

use crate::control::{ControlHandle, Input};
use crate::logging::DisplayChain;

/// How a failing watch retries: 250 ms doubling to [`WATCH_RETRY_MAX`], each wait plus up
/// to as much again in jitter, reset after a minute without failures. kube's default
/// grows to 30 s (client-go's, to spare a struggling API server among thousands of
/// clients); a router is one of a handful, and its longest wait bounds how long it keeps
/// an old table once an outage ends: the next try comes within 2 × `WATCH_RETRY_MAX`,
/// and if the API server compacted its history meanwhile, the relist after the `410`
/// within as long again.
fn retry() -> ResetTimerBackoff<ExponentialBackoff> {
    let b = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(WATCH_RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(b.into(), Duration::from_secs(60))
}

/// The longest a failing watch waits before it tries again, jitter aside (which adds up
/// to as much again).
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// One watch's events, with errors counted and logged, until `stop`.
async fn for_each_event<K, S>(
    what: &str,
    stream: S,
    control: &ControlHandle,
    stop: &CancellationToken,
    mut on_event: impl FnMut(Event<K>),
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(ev)) => {
                if matches!(ev, Event::Init) {
                    control.send(Input::WatchRestarted);
                    tracing::debug!(watch = what, "listing");
                }
                on_event(ev);
            }
            Some(Err(e)) => {
                // The stream backs off and retries by itself; the table is untouched.
                control.send(Input::WatchFailed);
                tracing::warn!(watch = what, error = %DisplayChain(&e), "watch failed; retrying with backoff, the last good table keeps serving");
            }
            None => return,
        }
    }
}

/// Watches one ConfigMap by name; its `data` is the overrides.
pub(crate) async fn watch_configmap(
    client: Client,
    namespace: String,
    name: String,
    control: ControlHandle,
) {
    let stop = control.stopping();
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, config).backoff(retry());
    let send = |cm: Option<ConfigMap>| {
        let resource_version = cm
            .as_ref()
            .and_then(|c| c.resource_version())
            .unwrap_or_default();
        let data = cm.map(|c| {
            if c.binary_data.as_ref().is_some_and(|b| !b.is_empty()) {
                tracing::warn!(configmap = %name, "binaryData is ignored; overrides are read from data");
            }
            c.data.unwrap_or_default()
        });
        control.send(Input::Overrides {
            source: TableSource::ConfigMap {
                namespace: namespace.clone(),
                name: name.clone(),
                resource_version,
            },
            data,
        });
    };
    // During a (re)list, hold what arrives until InitDone: only a complete list may
    // replace what is applied.
    let mut listing: Option<Option<ConfigMap>> = None;
    for_each_event("configmap", stream, &control, &stop, |ev| match ev {
        Event::Init => listing = Some(None),
        Event::InitApply(cm) => listing = Some(Some(cm)),
        Event::InitDone => match listing.take().flatten() {
            Some(cm) => send(Some(cm)),
            None => {
                tracing::warn!(configmap = %name, namespace = %namespace, "ConfigMap not found: no overrides");
                send(None);
            }
        },
        Event::Apply(cm) => send(Some(cm)),
        Event::Delete(_) => {
            tracing::warn!(configmap = %name, namespace = %namespace, "ConfigMap deleted: no overrides");
            send(None);
        }
    })
    .await;
}

/// One backend set's StatefulSet: where it is, and which set it is.
#[derive(Clone)]
pub(crate) struct SetAt {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) set: SetId,
    pub(crate) statefulset: String,
}

impl SetAt {
    /// Its replica count, for the control loop.
    fn replicas(&self, n: u32) -> Input {
        if self.set == STABLE {
            Input::Replicas(n)
        } else {
            Input::SetReplicas {
                set: self.set,
                replicas: n,
            }
        }
    }

    /// Its pods, for the control loop.
    fn members(&self, members: Members) -> Input {
        if self.set == STABLE {
            Input::Members(members)
        } else {
            Input::SetMembers {
                set: self.set,
                members,
            }
        }
    }
}

/// Watches a StatefulSet's `spec.replicas`. The stable set's keeps the last table when
/// it is not there; another set's counts as no pods then (its tenants stay on the
/// stable set), as a canary deleted after its release is.
pub(crate) async fn watch_statefulset(at: SetAt, control: ControlHandle) {
    let stop = control.stopping();
    let (namespace, name) = (at.namespace.clone(), at.statefulset.clone());
    let api: Api<StatefulSet> = Api::namespaced(at.client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, config).backoff(retry());
    let replicas = |sts: &StatefulSet| {
        // The API server defaults an unset spec.replicas to 1.
        let n = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        u32::try_from(n).unwrap_or(0)
    };
    let mut seen_in_list = false;
    for_each_event("statefulset", stream, &control, &stop, |ev| match ev {
        Event::Init => seen_in_list = false,
        Event::InitApply(sts) | Event::Apply(sts) => {
            seen_in_list = true;
            control.send(at.replicas(replicas(&sts)));
        }
        Event::InitDone if !seen_in_list && at.set != STABLE => {
            tracing::warn!(statefulset = %name, namespace = %namespace, "StatefulSet not found; its set has no pods");
            control.send(at.replicas(0));
        }
        Event::InitDone if !seen_in_list => {
            tracing::warn!(statefulset = %name, namespace = %namespace, "StatefulSet not found; keeping the last table");
        }
        Event::InitDone => {}
        Event::Delete(_) if at.set != STABLE => {
            tracing::warn!(statefulset = %name, namespace = %namespace, "StatefulSet deleted; its set has no pods");
            control.send(at.replicas(0));
        }
        Event::Delete(_) => {
            tracing::warn!(statefulset = %name, namespace = %namespace, "StatefulSet deleted; keeping the last table");
        }
    })
    .await;
}

/// Watches the Service's EndpointSlices and sends the control loop the pod at each
/// ordinal (merged from every slice) whenever it changes. `port`: the backends' port.
pub(crate) async fn watch_endpoint_slices(
    at: SetAt,
    service: String,
    port: u16,
    control: ControlHandle,
) {
    let stop = control.stopping();
    let statefulset = at.statefulset.clone();
    let api: Api<EndpointSlice> = Api::namespaced(at.client.clone(), &at.namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let stream = watcher::watcher(api, config).backoff(retry());
    // Slice name → its endpoints; the list being read after a (re)list.
    let mut slices: BTreeMap<String, Vec<SliceEndpoint>> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Vec<SliceEndpoint>>> = None;
    let mut sent: Option<Members> = None;
    let mut publish = |slices: &BTreeMap<String, Vec<SliceEndpoint>>| {
        let members = Members::from_endpoints(&statefulset, port, slices.values().flatten());
        if sent.as_ref() != Some(&members) {
            tracing::info!(service = %service, statefulset = %statefulset, pods = members.len(), "backend pods changed");
            sent = Some(members.clone());
            control.send(at.members(members));
        }
    };
    for_each_event("endpointslices", stream, &control, &stop, |ev| match ev {
        Event::Init => listing = Some(BTreeMap::new()),
        Event::InitApply(s) => {
            if let Some(l) = listing.as_mut() {
                l.insert(s.name_any(), slice_endpoints(&s));
            }
        }
        Event::InitDone => {
            slices = listing.take().unwrap_or_default();
            publish(&slices);
        }
        Event::Apply(s) => {
            slices.insert(s.name_any(), slice_endpoints(&s));
            publish(&slices);
        }
        Event::Delete(s) => {
            slices.remove(&s.name_any());
            publish(&slices);
        }
    })
    .await;
}

/// A slice's pod endpoints, as routing reads them. FQDN slices and endpoints without a
/// pod name or a parseable address are left out.
fn slice_endpoints(slice: &EndpointSlice) -> Vec<SliceEndpoint> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    slice
        .endpoints
        .iter()
        .filter_map(|ep| {
            let target = ep.target_ref.as_ref();
            let pod = target
                .and_then(|r| r.name.as_deref())
                .or(ep.hostname.as_deref())?;
            let ip = ep.addresses.first()?.parse().ok()?;
            let conditions = ep.conditions.as_ref();
            Some(SliceEndpoint {
                pod: pod.to_owned(),
                uid: target.and_then(|r| r.uid.clone()).unwrap_or_default(),
                ip,
                ready: conditions.and_then(|c| c.ready),
                serving: conditions.and_then(|c| c.serving),
                terminating: conditions.and_then(|c| c.terminating),
            })
        })
        .collect()
}
