//! Which handler answers a request: health and stats, then (under the prefix, with the
//! tenant taken where `--tenant-from` says) the SignalR hub, the WebSocket echo, the
//! event stream, the JSON description and the body echo.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use wsrouter::PathError;

use crate::body::{json, plain, Body};
use crate::server::Shared;
use crate::signalr::{self, HubPath};
use crate::{plain as answer, sse, ws};

/// Where a request under the prefix goes: its tenant and the path after it.
pub(crate) struct Target {
    pub(crate) ns: String,
    /// The path after the tenant segment (tenant from the path), or after the prefix
    /// (tenant from a header or query parameter); no leading slash.
    pub(crate) rest: String,
}

impl Target {
    /// Whether the path after the tenant is `name` or ends in `/name`.
    fn ends_in(&self, name: &str) -> bool {
        self.rest == name
            || self
                .rest
                .strip_suffix(name)
                .is_some_and(|before| before.ends_with('/'))
    }
}

pub(crate) async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => return plain(StatusCode::OK, "ok\n"),
        "/stats" if matches!(*req.method(), Method::GET | Method::HEAD) => {
            return json(StatusCode::OK, &shared.stats.snapshot(shared.hub.open()));
        }
        _ => {}
    }
    let target = match target(&req, &shared) {
        Ok(t) => t,
        Err(e) => return refusal(e),
    };
    if target.ends_in("hub/negotiate") {
        return signalr::handle(req, target, HubPath::Negotiate, shared).await;
    }
    if target.ends_in("hub") {
        return signalr::handle(req, target, HubPath::Connection, shared).await;
    }
    if ws::wants_upgrade(&req) {
        return ws::counter_and_echo(req, target.ns, shared);
    }
    match *req.method() {
        Method::GET if target.ends_in("events") => sse::events(&req, target.ns, shared),
        Method::GET | Method::HEAD => answer::describe(&req, &target.ns, &shared),
        Method::POST | Method::PUT => answer::echo(req, &shared),
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// The tenant and the rest of the path, or why there is none.
fn target<B>(req: &Request<B>, shared: &Shared) -> Result<Target, PathError> {
    let config = &shared.config;
    let path = req.uri().path();
    let header: Vec<&[u8]> = match &config.tenant_from {
        wsrouter::TenantFrom::Header(name) => req
            .headers()
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect(),
        _ => Vec::new(),
    };
    let prefix = &config.path_prefix;
    let ns = prefix.tenant(&config.tenant_from, path, req.uri().query(), &header)?;
    let rest = match config.tenant_from {
        wsrouter::TenantFrom::Path => prefix
            .namespace(path)
            .ok()
            .and_then(|_| path.strip_prefix(prefix.as_str()))
            .and_then(|r| r.split_once('/'))
            .map_or("", |(_, after)| after),
        _ => prefix.under(path)?,
    };
    Ok(Target {
        ns: ns.to_owned(),
        rest: rest.to_owned(),
    })
}

/// 404 outside the prefix, 400 for a bad or missing tenant.
fn refusal(e: PathError) -> Response<Body> {
    match e {
        PathError::NotUnderPrefix => plain(StatusCode::NOT_FOUND, "not found\n"),
        PathError::Namespace(_) => plain(StatusCode::BAD_REQUEST, "bad namespace\n"),
        PathError::Ambiguous(_) => plain(StatusCode::BAD_REQUEST, "bad path\n"),
        e @ (PathError::Missing(_) | PathError::Repeated(_)) => {
            plain(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}
