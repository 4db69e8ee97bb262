//! The decide step: the one table load of a connection, which picks its backend for
//! life (or says why none).

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderValue, COOKIE};
use wsrouter::split::cookie_hint;
use wsrouter::{Backend, Fingerprint, Hint, Hints, RouteSource, SetId, Split};

use crate::data::http::error::ProxyError;
use crate::data::shared::Shared;

/// Everything the relay needs to know about where it goes.
pub(super) struct Routed {
    pub(super) tenant: Box<str>,
    /// The backend set (version) it goes to, and the pod's ordinal in it.
    pub(super) set: SetId,
    pub(super) ordinal: u32,
    /// What its canary header and cookie asked, so a table swap is judged for this
    /// socket as it was routed.
    pub(super) hints: Hints,
    /// Where to connect: a pod's `IP:PORT` as the EndpointSlices give it, or a
    /// `HOST:PORT` from a list or template. Connecting parses an `IP:PORT` as it is;
    /// only a host name is resolved.
    pub(super) addr: Box<str>,
    /// `addr` as a socket address when it is one (every pod the EndpointSlices name, and
    /// `IP:PORT` list entries): a plain request's connection needs it, and a pod's is
    /// taken from the table as it is rather than parsed back from `addr`.
    pub(super) socket: Option<SocketAddr>,
    pub(super) source: RouteSource,
    pub(super) table_version: u64,
    pub(super) fingerprint: Fingerprint,
    /// Live sockets this tenant may hold here (`None`: no cap).
    pub(super) tenant_cap: Option<u32>,
    /// An HTTP/2 extended CONNECT stream (answered 200), not an HTTP/1.1 upgrade (101).
    pub(super) h2: bool,
    /// The host the request was for, as forwarded (`Host` and `X-Forwarded-Host`).
    pub(super) host: HeaderValue,
    /// When the token it was let in with expires, seconds since the Unix epoch
    /// (`--auth jwt`): a socket ends then.
    pub(super) expires: Option<u64>,
}

/// Where `tenant` goes by the table loaded now, and `headers`' canary header and cookie
/// when the split reads them. `h2`: the request is an HTTP/2 extended CONNECT; `host` is
/// the one it is for, as forwarded.
pub(super) fn decide(
    tenant: &str,
    headers: &HeaderMap,
    host: HeaderValue,
    h2: bool,
    shared: &Shared,
) -> Result<Routed, ProxyError> {
    let guard = shared.table.load();
    let Some(table) = guard.as_deref() else {
        return Err(ProxyError::NoTable);
    };
    let split = table.split();
    let hints = if split.reads_hints() {
        hints(headers, split)
    } else {
        Hints::default()
    };
    let route = table.route_for(tenant, hints);
    let ordinal = route.ordinal;
    // A pod that is not serving, terminating or not known yet: say so now rather
    // than after a connect timeout, and never guess another. The tenant stays on its
    // pod; its state lives there.
    let (addr, socket): (Box<str>, _) = match route.backend {
        Backend::Addr(a) => (a.clone(), a.parse().ok()),
        Backend::Pod(m) if m.accepts_new() => (m.addr.to_string().into(), Some(m.addr)),
        Backend::Pod(m) => {
            return Err(ProxyError::BackendNotServing {
                set: route.set,
                ordinal,
                terminating: m.terminating,
            })
        }
        Backend::Unknown => {
            return Err(ProxyError::BackendUnknown {
                set: route.set,
                ordinal,
            })
        }
    };
    Ok(Routed {
        tenant: tenant.into(),
        set: route.set,
        ordinal,
        hints,
        addr,
        socket,
        source: route.source,
        table_version: table.version(),
        fingerprint: table.fingerprint(),
        tenant_cap: shared.policy.tenant_cap(table, tenant),
        h2,
        host,
        expires: None,
    })
}

/// What a request's canary header and cookie ask for. A header sent twice asks for
/// nothing unless both say the same; of the cookies, the first of the name counts.
fn hints(headers: &HeaderMap, split: &Split) -> Hints {
    let mut said = headers
        .get_all(split.header())
        .iter()
        .map(|v| v.to_str().ok().and_then(Hint::parse));
    let header = match said.next() {
        Some(first) if said.all(|h| h == first) => first,
        _ => None,
    };
    let cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_hint(v, split.cookie()));
    Hints { header, cookie }
}
