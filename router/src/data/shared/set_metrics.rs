//! What each backend set (a version of the backend) was asked and how it answered, for
//! judging a canary from Prometheus (Flagger's or Argo Rollouts' analysis): requests by
//! kind and the status the client got, and the time to the pod's response head.
//!
//! The sets are fixed by the flags, so each set's common series are taken once here and
//! a request's count is an atomic add; only other statuses look their series up.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use wsrouter::SetId;

use crate::state::labels::{SetKindLabels, SetNames, SetRequestLabels};

/// What a set was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A WebSocket: an HTTP/1.1 upgrade (101) or an HTTP/2 extended CONNECT (200).
    WebSocket,
    /// A plain request forwarded beside the sockets.
    Http,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Http => "http",
        }
    }
}

type Seconds = Family<SetKindLabels, Histogram, fn() -> Histogram>;

/// 100 µs .. ~105 s: a long poll's answer may take as long as its server holds it.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// One set's series taken once: the usual answers, and both kinds' timings.
struct SetSeries {
    switched: Counter,
    ok_websocket: Counter,
    ok_http: Counter,
    websocket_seconds: Histogram,
    http_seconds: Histogram,
}

pub(crate) struct SetMetrics {
    names: SetNames,
    requests: Family<SetRequestLabels, Counter>,
    seconds: Seconds,
    sets: Vec<SetSeries>,
}

impl SetMetrics {
    pub(crate) fn new(names: SetNames) -> Self {
        let requests: Family<SetRequestLabels, Counter> = Family::default();
        let seconds: Seconds = Family::new_with_constructor(seconds);
        let sets = names
            .iter()
            .map(|&set| {
                let count = |kind: Kind, status| {
                    let kind = kind.as_str();
                    let labels = SetRequestLabels { set, kind, status };
                    requests.get_or_create(&labels).clone()
                };
                let time = |kind: Kind| {
                    let kind = kind.as_str();
                    seconds.get_or_create(&SetKindLabels { set, kind }).clone()
                };
                SetSeries {
                    switched: count(Kind::WebSocket, 101),
                    ok_websocket: count(Kind::WebSocket, 200),
                    ok_http: count(Kind::Http, 200),
                    websocket_seconds: time(Kind::WebSocket),
                    http_seconds: time(Kind::Http),
                }
            })
            .collect();
        Self {
            names,
            requests,
            seconds,
            sets,
        }
    }

    /// The label of set `id` (the stable set's for an id it does not know).
    pub(crate) fn name(&self, id: SetId) -> &'static str {
        self.names
            .get(usize::from(id))
            .or(self.names.first())
            .copied()
            .unwrap_or("")
    }

    /// Counts a request of `kind` routed to set `id`, answered `status`; `seconds`: from
    /// its head to its pod's response head, when a pod answered.
    pub(crate) fn answered(&self, id: SetId, kind: Kind, status: u16, seconds: Option<f64>) {
        let Some(s) = self.sets.get(usize::from(id)) else {
            return;
        };
        match (kind, status) {
            (Kind::WebSocket, 101) => s.switched.inc(),
            (Kind::WebSocket, 200) => s.ok_websocket.inc(),
            (Kind::Http, 200) => s.ok_http.inc(),
            _ => {
                let labels = SetRequestLabels {
                    set: self.name(id),
                    kind: kind.as_str(),
                    status,
                };
                self.requests.get_or_create(&labels).inc()
            }
        };
        if let Some(secs) = seconds {
            match kind {
                Kind::WebSocket => s.websocket_seconds.observe(secs),
                Kind::Http => s.http_seconds.observe(secs),
            }
        }
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "set_requests",
            "Requests routed to each backend set, by kind (websocket, http) and the status the client got: 101 or 200 for a socket, the pod's status, or the router's 502, 503 or 504 because of the pod (not serving, unreachable, timed out, circuit open); the router's own refusals of the client (rates, caps, budgets) are not counted: what a canary's success rate is judged on",
            self.requests.clone(),
        );
        r.register(
            "set_response_seconds",
            "Time from a routed request's head to its pod's response head (the 101 for a socket), by backend set and kind",
            self.seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::labels::set_names;

    #[test]
    fn each_set_counts_its_own_answers_and_an_unknown_id_counts_nowhere() {
        let m = SetMetrics::new(set_names(&["stable".into(), "v2".into()]));
        m.answered(1, Kind::WebSocket, 101, Some(0.002));
        m.answered(1, Kind::Http, 503, None);
        m.answered(0, Kind::Http, 200, Some(0.001));
        m.answered(7, Kind::Http, 200, Some(0.001));
        let mut r = Registry::with_prefix("wsrouter");
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap_or_default();
        for line in [
            "wsrouter_set_requests_total{set=\"v2\",kind=\"websocket\",status=\"101\"} 1",
            "wsrouter_set_requests_total{set=\"v2\",kind=\"http\",status=\"503\"} 1",
            "wsrouter_set_requests_total{set=\"stable\",kind=\"http\",status=\"200\"} 1",
            "wsrouter_set_requests_total{set=\"v2\",kind=\"http\",status=\"200\"} 0",
            "wsrouter_set_response_seconds_count{set=\"v2\",kind=\"websocket\"} 1",
            "wsrouter_set_response_seconds_count{set=\"v2\",kind=\"http\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(m.name(1), "v2");
        assert_eq!(m.name(9), "stable");
    }
}
