//! The page `wsrouter dev` serves at `/` on its WebSocket listener: a few tenants'
//! sockets with their counters and echoes, beside each an EventSource (Server-Sent
//! Events through the router's HTTP path) naming the pod each event came from, the
//! routing fingerprint, and the table
//! (tenants per pod), read through `/dev/table` and `/dev/route/{ns}`, which answer
//! what the admin listener's `/table` and `/route` do. Self-contained: no CDN, no
//! network. Only `dev` serves it; `serve` answers 404 there.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;

use wsrouter::TenantFrom;

use crate::admin;
use crate::data::shared::{Pages, Shared};

const PAGE: &str = include_str!("dev_page.html");

#[derive(Debug)]
pub(super) struct DevPage;

impl Pages for DevPage {
    fn answer(&self, method: &Method, uri: &Uri, shared: &Shared) -> Option<Response<Full<Bytes>>> {
        if method != Method::GET {
            return None;
        }
        match uri.path() {
            "/" | "/index.html" => {
                let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                // The page talks to this origin only.
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                    ),
                );
                Some(r)
            }
            "/dev/table" => Some(admin::table_response(shared)),
            // How the page should name a tenant: the router's --tenant-from and prefix.
            "/dev/config" => {
                let from = match &shared.policy.tenant_from {
                    TenantFrom::Path => "path".to_owned(),
                    TenantFrom::Header(h) => format!("header:{h}"),
                    TenantFrom::Query(q) => format!("query:{q}"),
                };
                let body = serde_json::json!({
                    "prefix": shared.prefix.as_str(),
                    "tenant_from": from,
                });
                let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Some(r)
            }
            path => path
                .strip_prefix("/dev/route/")
                .map(|ns| admin::route_response(shared, ns)),
        }
        .map(|mut r| {
            if r.status() == StatusCode::OK {
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            r
        })
    }
}
