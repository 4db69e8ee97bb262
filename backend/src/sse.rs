//! `GET {prefix}{ns}/events`: Server-Sent Events. `retry: 500`, then at connect and every
//! interval `id: N` + `data: {"server":…,"counter":N,"ns":…}`. A client reconnecting
//! with `Last-Event-ID: N` resumes at N+1; `?count=K` ends the stream after K events.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Interval, MissedTickBehavior};

use crate::body::{plain, Body, BoxError};
use crate::server::Shared;
use crate::stats::Stats;
use crate::ws::Tick;

pub(crate) fn events<B>(req: &Request<B>, ns: String, shared: Arc<Shared>) -> Response<Body> {
    let count = match wsrouter::query_param(req.uri().query().unwrap_or(""), "count") {
        Ok(None) => None,
        Ok(Some(k)) => match k.parse::<u64>() {
            Ok(k) => Some(k),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "count: not a number\n"),
        },
        Err(_) => return plain(StatusCode::BAD_REQUEST, "count: given twice\n"),
    };
    // A Last-Event-ID that is not ours (not a number) starts over, as a fresh client.
    let next = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |last| last.saturating_add(1));
    Stats::bump(&shared.stats.sse_streams);
    let mut ticker = tokio::time::interval(shared.config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Events {
        shared,
        ns,
        ticker,
        counter: next,
        remaining: count,
        started: false,
    };
    let body = StreamBody::new(stream::unfold(state, Events::next)).boxed_unsync();
    event_stream(body)
}

/// A `text/event-stream` response around `body`, not to be cached or buffered.
pub(crate) fn event_stream(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

struct Events {
    shared: Arc<Shared>,
    ns: String,
    ticker: Interval,
    counter: u64,
    remaining: Option<u64>,
    started: bool,
}

type Item = Result<Frame<Bytes>, BoxError>;

impl Events {
    async fn next(mut self) -> Option<(Item, Self)> {
        if !self.started {
            self.started = true;
            return Some((Ok(Frame::data(Bytes::from_static(b"retry: 500\n\n"))), self));
        }
        if self.remaining == Some(0) {
            return None;
        }
        tokio::select! {
            _ = self.shared.stopping() => return None,
            _ = self.ticker.tick() => {}
        }
        let tick = Tick {
            server: &self.shared.config.server_name,
            counter: self.counter,
            ns: &self.ns,
        };
        let data = serde_json::to_string(&tick).ok()?;
        let event = format!("id: {}\ndata: {data}\n\n", self.counter);
        self.counter = self.counter.saturating_add(1);
        self.remaining = self.remaining.map(|r| r - 1);
        Some((Ok(Frame::data(Bytes::from(event))), self))
    }
}
