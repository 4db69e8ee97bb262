//! Plain HTTP under the prefix: `GET`/`HEAD` answer what the request reached (the JSON
//! description); `POST`/`PUT` stream the request body back as it arrives.

use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{json, Body};
use crate::server::Shared;
use crate::stats::Stats;

/// The JSON answer; fields serialize in this order.
#[derive(serde::Serialize)]
struct Description<'a> {
    server: &'a str,
    ns: &'a str,
    method: &'a str,
    path: &'a str,
}

/// 200 `{"server":…,"ns":…,"method":…,"path":"/ws/ns/rest?q"}`; hyper leaves the body
/// out for `HEAD` and keeps its length.
pub(crate) fn describe<B>(req: &Request<B>, ns: &str, shared: &Shared) -> Response<Body> {
    Stats::bump(&shared.stats.json_answers);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    json(
        StatusCode::OK,
        &Description {
            server: &shared.config.server_name,
            ns,
            method: req.method().as_str(),
            path,
        },
    )
}

/// 200 with the request body as the response body, chunk by chunk as it arrives (never
/// buffered whole: uploads and the benchmark send more than fits in memory), under the
/// request's content type.
pub(crate) fn echo(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    Stats::bump(&shared.stats.echoes);
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = req.into_body().map_err(Into::into).boxed_unsync();
    let mut resp = Response::new(body);
    if let Some(ct) = content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}
