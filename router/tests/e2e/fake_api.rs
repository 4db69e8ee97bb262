//! An in-process fake Kubernetes API server speaking the real list/watch wire protocol:
//! JSON lists carrying `metadata.resourceVersion`, watches as chunked streams of one JSON
//! event per line (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR), replay of events newer
//! than the requested version, `410 Gone` for versions it has forgotten, field and label
//! selectors, and an outage that drops every connection and refuses new ones.
//!
//! The router's kube client is pointed at it by URL; nothing else differs from a cluster.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The resources the router watches, by their URL plural.
const KINDS: &[(&str, &str, &str)] = &[
    ("configmaps", "v1", "ConfigMap"),
    ("statefulsets", "apps/v1", "StatefulSet"),
    ("endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
}

struct Watch {
    plural: String,
    namespace: String,
    selector: Selector,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change: (rv, plural, namespace, event type, object).
    history: Vec<(u64, String, String, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest_rv: u64,
    watches: Vec<Watch>,
    requests: Vec<Recorded>,
    /// The server is "gone": nothing is accepted, answered or delivered. Checked under
    /// the same lock that registers watches, so no request slips through an outage.
    down: bool,
    /// Connections are accepted and every request is answered `503`, as a load balancer
    /// in front of an API server that is restarting answers.
    unavailable: bool,
}

#[derive(Debug, Clone, Default)]
struct Selector {
    field_name: Option<String>,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Self {
        let mut s = Self::default();
        if let Some(f) = query.get("fieldSelector") {
            s.field_name = f.strip_prefix("metadata.name=").map(str::to_owned);
        }
        if let Some(l) = query.get("labelSelector") {
            s.labels = l
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
        s
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(n) = &self.field_name {
            if meta["name"].as_str() != Some(n) {
                return false;
            }
        }
        self.labels
            .iter()
            .all(|(k, v)| meta["labels"][k].as_str() == Some(v))
    }
}

pub(crate) struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    conns: Arc<Mutex<JoinSet<()>>>,
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeApi {
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let api = Self {
            addr,
            state: Arc::new(Mutex::new(State {
                rv: 100,
                ..State::default()
            })),
            conns: Arc::new(Mutex::new(JoinSet::new())),
            acceptor: Mutex::new(None),
        };
        api.serve(listener);
        Ok(api)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client for this server, as the router would build from a kubeconfig.
    pub(crate) fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::new(format!("http://{}", self.addr).parse()?);
        Ok(router::api_client(config)?)
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let conns = self.conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Checked and spawned under the connections' lock: `stop` either finds
                // this connection to cut, or this finds the outage. None outlives it.
                let mut conns = conns.lock().unwrap();
                if state.lock().unwrap().down {
                    continue;
                }
                let state = state.clone();
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(req, &state)) }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        *self.acceptor.lock().unwrap() = Some(task);
    }

    /// The API server goes away: every connection (watches included) is cut and new
    /// ones are refused.
    pub(crate) fn stop(&self) {
        self.cut(|st| st.down = true);
        if let Some(t) = self.acceptor.lock().unwrap().take() {
            t.abort();
        }
    }

    /// The API server restarts behind its load balancer: every connection (watches
    /// included) is cut, and every request is answered `503` until [`Self::available`].
    pub(crate) fn unavailable(&self) {
        self.cut(|st| st.unavailable = true);
    }

    /// It answers again (the connections cut stay cut).
    pub(crate) fn available(&self) {
        self.state.lock().unwrap().unavailable = false;
    }

    /// Marks an outage (`mark`), forgets every watch and cuts every connection. The
    /// acceptor checks `down` under the connections' lock, so a connection it takes as
    /// `stop` begins is either cut here or never served.
    fn cut(&self, mark: impl FnOnce(&mut State)) {
        {
            let mut st = self.state.lock().unwrap();
            mark(&mut st);
            st.watches.clear();
        }
        self.conns.lock().unwrap().abort_all();
    }

    /// It comes back on the same address.
    pub(crate) async fn restart(&self) -> Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.state.lock().unwrap().down = false;
        self.serve(listener);
        Ok(())
    }

    /// Creates or replaces an object (ADDED or MODIFIED to matching watches).
    pub(crate) fn apply(&self, plural: &str, namespace: &str, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["namespace"] = json!(namespace);
        let (_, api_version, kind) = KINDS
            .iter()
            .find(|k| k.0 == plural)
            .copied()
            .unwrap_or(("", "v1", ""));
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let key = (plural.to_owned(), namespace.to_owned(), name);
        let ty = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, obj.clone());
        st.history
            .push((rv, plural.to_owned(), namespace.to_owned(), ty, obj.clone()));
        broadcast(&mut st, plural, namespace, ty, &obj);
    }

    pub(crate) fn delete(&self, plural: &str, namespace: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        let key = (plural.to_owned(), namespace.to_owned(), name.to_owned());
        if let Some(mut obj) = st.objects.remove(&key) {
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.history.push((
                rv,
                plural.to_owned(),
                namespace.to_owned(),
                "DELETED",
                obj.clone(),
            ));
            broadcast(&mut st, plural, namespace, "DELETED", &obj);
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch.
    pub(crate) fn bookmark(&self) {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv.to_string();
        st.watches.retain(|w| {
            let (_, api_version, kind) = KINDS.iter().find(|k| k.0 == w.plural).copied().unwrap_or(("", "v1", ""));
            let ev = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}}});
            w.tx.send(line(&ev)).is_ok()
        });
    }

    /// History is compacted: every open watch gets an ERROR event with a 410 Status and
    /// ends, and resuming from any version seen so far gets 410 too, forcing a relist.
    pub(crate) fn expire(&self) {
        let mut st = self.state.lock().unwrap();
        st.oldest_rv = st.rv + 1;
        st.history.clear();
        for w in st.watches.drain(..) {
            let _ = w.tx.send(line(&gone()));
        }
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn broadcast(st: &mut State, plural: &str, namespace: &str, ty: &str, obj: &Value) {
    let ev = line(&json!({"type": ty, "object": obj}));
    st.watches.retain(|w| {
        if w.plural != plural || w.namespace != namespace || !w.selector.matches(obj) {
            return !w.tx.is_closed();
        }
        w.tx.send(ev.clone()).is_ok()
    });
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

fn handle(req: Request<Incoming>, state: &Mutex<State>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let query: BTreeMap<String, String> = url_pairs(&raw_query);
    let mut st = state.lock().unwrap();
    if st.down || st.unavailable {
        // Unavailable, or a connection whose task was mid-poll as the outage cut it.
        return status(503, "ServiceUnavailable", "the API server is unavailable");
    }
    st.requests.push(Recorded {
        method: req.method().to_string(),
        path: path.clone(),
        query: raw_query,
    });
    // /api/v1/namespaces/{ns}/{plural} or /apis/{group}/{version}/namespaces/{ns}/{plural}
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, plural) = match segs.as_slice() {
        ["api", "v1", "namespaces", ns, plural] => (*ns, *plural),
        ["apis", _, _, "namespaces", ns, plural] => (*ns, *plural),
        _ => return status(404, "NotFound", "no such path"),
    };
    let Some(&(_, api_version, kind)) = KINDS.iter().find(|k| k.0 == plural) else {
        return status(404, "NotFound", "unknown resource");
    };
    if req.method() != http::Method::GET {
        return status(405, "MethodNotAllowed", "read only");
    }
    let selector = Selector::parse(&query);
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, n, _), o)| p == plural && n == ns && selector.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({"apiVersion": api_version, "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        return json_response(StatusCode::OK, &list);
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    if from != 0 && from < st.oldest_rv {
        let _ = tx.send(line(&gone()));
    } else {
        for (rv, p, n, ty, obj) in &st.history {
            if *rv > from && p == plural && n == ns && selector.matches(obj) {
                let _ = tx.send(line(&json!({"type": ty, "object": obj})));
            }
        }
        st.watches.push(Watch {
            plural: plural.to_owned(),
            namespace: ns.to_owned(),
            selector,
            tx,
        });
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

/// Decodes `a=b&c=d` with percent-escapes.
fn url_pairs(q: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(v) => {
                            out.push(v);
                            i += 3;
                        }
                        None => {
                            out.push(b'%');
                            i += 1;
                        }
                    }
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// Objects as the router's Role will see them.
pub(crate) fn configmap(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({"metadata": {"name": name}, "data": data})
}

pub(crate) fn statefulset(name: &str, replicas: u32) -> Value {
    json!({"metadata": {"name": name}, "spec": {"replicas": replicas, "serviceName": name,
        "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": []}}}})
}

/// One pod endpoint as a slice lists it.
#[derive(Debug, Clone)]
pub(crate) struct PodEndpoint {
    pub ordinal: usize,
    pub uid: String,
    pub ip: std::net::IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl PodEndpoint {
    pub(crate) fn serving(ordinal: usize, uid: &str, ip: std::net::IpAddr) -> Self {
        Self {
            ordinal,
            uid: uid.to_owned(),
            ip,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// One EndpointSlice of `service` listing pods `backend-{i}` with their conditions, as
/// the EndpointSlice controller writes them (targetRef with name and UID, hostname).
pub(crate) fn pod_slice(name: &str, service: &str, port: u16, pods: &[PodEndpoint]) -> Value {
    pod_slice_of(name, service, "backend", port, pods)
}

/// [`pod_slice`] for the pods of StatefulSet `statefulset`.
pub(crate) fn pod_slice_of(
    name: &str,
    service: &str,
    statefulset: &str,
    port: u16,
    pods: &[PodEndpoint],
) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            let pod = format!("{statefulset}-{}", p.ordinal);
            json!({"addresses": [p.ip.to_string()],
                "conditions": {"ready": p.ready, "serving": p.serving, "terminating": p.terminating},
                "hostname": pod,
                "targetRef": {"kind": "Pod", "name": pod, "uid": p.uid}})
        })
        .collect();
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "ws", "port": port, "protocol": "TCP"}]})
}

/// One EndpointSlice of `service` listing pods `{statefulset}-{i}` with their readiness.
pub(crate) fn endpoint_slice(
    name: &str,
    service: &str,
    statefulset: &str,
    pods: &[(u32, bool)],
) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(i, ready)| {
            json!({"addresses": [format!("10.0.0.{i}")], "conditions": {"ready": ready},
                "hostname": format!("{statefulset}-{i}"),
                "targetRef": {"kind": "Pod", "name": format!("{statefulset}-{i}")}})
        })
        .collect();
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "ws", "port": 9000, "protocol": "TCP"}]})
}
