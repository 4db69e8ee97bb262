//! External authorization (`--auth forward:URL`): for teams with their own auth service.
//! Before a request is routed, the router asks the service a plain HTTP question with the
//! request's method, its path under the service's URL, and the selected headers (never
//! the upgrade's); `2xx` lets it in (with the configured answer headers copied into what
//! the pod gets), `401`/`403` are the client's answer as the service gave them, and a
//! service that cannot answer (timeout, refused, `5xx`) meets `--auth-failure`.
//! Answers are remembered for `--auth-cache-ttl`, per I/O thread, under a digest of the
//! credential (the selected headers), the client's address, the host, the method, the
//! tenant and the path (not the query: Socket.IO's `t=` and SignalR's `_=` change on
//! every poll). Questions go over kept-alive connections, at most [`MAX_IN_FLIGHT`] at
//! a time per router: a flood of requests that miss the cache waits for its turn (and
//! meets `--auth-failure` after `--auth-timeout`) instead of opening a socket each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use thiserror::Error;

/// Where the service is: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    /// `HOST:PORT`, connected to as is (a Service name resolves in the cluster).
    pub authority: String,
    /// The path the request's own path is appended to, without a trailing `/`.
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ServiceUrlError {
    #[error("must start with http:// (the service is asked in plain HTTP, inside the cluster)")]
    Scheme,
    #[error("needs HOST:PORT")]
    Authority,
    #[error("is not a URL")]
    Invalid,
}

impl std::str::FromStr for ServiceUrl {
    type Err = ServiceUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|_| ServiceUrlError::Invalid)?;
        if uri.scheme_str() != Some("http") {
            return Err(ServiceUrlError::Scheme);
        }
        let authority = uri.authority().ok_or(ServiceUrlError::Authority)?;
        if authority.port_u16().is_none() || authority.host().is_empty() {
            return Err(ServiceUrlError::Authority);
        }
        Ok(Self {
            authority: authority.as_str().to_owned(),
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// `--auth forward:URL`'s settings.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    pub url: ServiceUrl,
    /// The request's headers the service is sent (`--auth-request-headers`).
    pub request_headers: Vec<HeaderName>,
    /// The service's answer headers copied into the pod's request
    /// (`--auth-response-headers`); removed from every client request first.
    pub response_headers: Vec<HeaderName>,
    /// How long an answer is remembered per credential; zero: never.
    pub cache_ttl: Duration,
    /// The longest the service may take, connect to answer.
    pub timeout: Duration,
    /// Let requests in when the service cannot answer (`--auth-failure allow`).
    pub fail_open: bool,
}

/// Why the service kept a request out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ForwardDenied {
    /// The service answered 401 or 403 (another 4xx or a 3xx counts as 403).
    #[error("not authorized ({status})")]
    Refused {
        status: StatusCode,
        challenge: Option<HeaderValue>,
    },
    /// The service did not answer in time, could not be reached, or failed (5xx), and
    /// `--auth-failure deny`.
    #[error("authorization service unavailable")]
    Unavailable,
}

/// The door, asking the service.
pub(crate) struct ForwardAuth {
    pub settings: ForwardSettings,
    /// Unique in the process, so one router's remembered answers and kept-alive
    /// connections are never another's.
    id: u64,
    /// Questions in flight, bounded.
    in_flight: tokio::sync::Semaphore,
    /// Requests let in because the service could not answer (`--auth-failure allow`).
    failed_open: prometheus_client::metrics::counter::Counter,
}

/// Questions one router may have in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// Idle kept-alive connections to the service, per router and I/O thread.
const MAX_IDLE: usize = 16;

/// What the service said, as remembered.
#[derive(Debug, Clone)]
enum Said {
    Allowed(HeaderMap),
    Denied(ForwardDenied),
}

/// Keyed by the router's id and a 128-bit digest of the question (two SipHash keys
/// drawn at random per thread: an attacker can neither forge a collision nor make an
/// entry bigger than the digest).
type Remembered = HashMap<(u64, u128), (Instant, Said)>;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Answers remembered per thread before the cache is emptied.
const CAPACITY: usize = 4096;
/// The most of the service's answer body read (and thrown away).
const MAX_ANSWER_BODY: usize = 64 * 1024;

thread_local! {
    static ANSWERS: RefCell<Remembered> = RefCell::new(HashMap::new());
    static DIGEST: (std::collections::hash_map::RandomState, std::collections::hash_map::RandomState) =
        Default::default();
    /// Kept-alive connections to each router's service, by router id.
    static IDLE: RefCell<HashMap<u64, Vec<Sender>>> = RefCell::new(HashMap::new());
}

/// What a question is about, as the cache keys it.
pub(crate) struct Question<'r> {
    pub method: &'r Method,
    pub uri: &'r Uri,
    pub headers: &'r HeaderMap,
    pub tenant: &'r str,
    /// The client, as the trusted proxies say (the peer without them).
    pub client: IpAddr,
}

impl ForwardAuth {
    /// The door for `settings`; `failed_open` counts the requests it lets in because
    /// the service could not answer.
    pub(crate) fn new(
        settings: ForwardSettings,
        failed_open: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Self {
            settings,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            failed_open,
        }
    }

    /// Asks the service about a request (or recalls its answer): the headers to add to
    /// the pod's request, or why not.
    pub(crate) async fn check(&self, q: &Question<'_>) -> Result<HeaderMap, ForwardDenied> {
        let key = self.cache_key(q);
        let said = match self.recall(key) {
            Some(said) => said,
            None => {
                let said = self.ask(q).await;
                self.remember(key, &said);
                said
            }
        };
        match said {
            Said::Allowed(add) => Ok(add),
            Said::Denied(ForwardDenied::Unavailable) if self.settings.fail_open => {
                self.failed_open.inc();
                Ok(HeaderMap::new())
            }
            Said::Denied(why) => Err(why),
        }
    }

    /// What an answer is remembered under: a digest of the method, the path (not the
    /// query), the tenant, the client, the host and every header the service is sent.
    fn cache_key(&self, q: &Question<'_>) -> u128 {
        let host = q.headers.get(header::HOST).map(HeaderValue::as_bytes);
        let sent: Vec<(&str, &[u8])> = self
            .settings
            .request_headers
            .iter()
            .flat_map(|n| {
                q.headers
                    .get_all(n)
                    .iter()
                    .map(|v| (n.as_str(), v.as_bytes()))
            })
            .collect();
        let what = (
            q.method.as_str(),
            q.uri.path(),
            q.tenant,
            q.client,
            host,
            sent,
        );
        DIGEST.with(|(a, b)| (u128::from(a.hash_one(&what)) << 64) | u128::from(b.hash_one(&what)))
    }

    fn recall(&self, key: u128) -> Option<Said> {
        if self.settings.cache_ttl.is_zero() {
            return None;
        }
        ANSWERS.with(|a| {
            let a = a.borrow();
            let (until, said) = a.get(&(self.id, key))?;
            (Instant::now() < *until).then(|| said.clone())
        })
    }

    /// Remembers an answer; an unavailable service is not remembered (the next request
    /// asks again).
    fn remember(&self, key: u128, said: &Said) {
        if self.settings.cache_ttl.is_zero()
            || matches!(said, Said::Denied(ForwardDenied::Unavailable))
        {
            return;
        }
        let until = Instant::now() + self.settings.cache_ttl;
        ANSWERS.with(|a| {
            let mut a = a.borrow_mut();
            if a.len() >= CAPACITY {
                a.clear();
            }
            a.insert((self.id, key), (until, said.clone()));
        });
    }

    async fn ask(&self, q: &Question<'_>) -> Said {
        let question = match self.question(q) {
            Some(q) => q,
            None => return Said::Denied(ForwardDenied::Unavailable),
        };
        let s = &self.settings;
        let asked = async {
            // Waiting for a turn counts against the timeout too.
            let _turn = self.in_flight.acquire().await?;
            self.send(question).await
        };
        let answer = tokio::time::timeout(s.timeout, asked).await;
        match answer {
            Ok(Ok((status, answer_headers))) => self.judge(status, &answer_headers),
            Ok(Err(e)) => {
                tracing::warn!(service = %s.url, error = %e, "authorization service failed");
                Said::Denied(ForwardDenied::Unavailable)
            }
            Err(_) => {
                tracing::warn!(service = %s.url, timeout = ?s.timeout, "authorization service timed out");
                Said::Denied(ForwardDenied::Unavailable)
            }
        }
    }

    fn judge(&self, status: StatusCode, answer: &HeaderMap) -> Said {
        if status.is_success() {
            let mut add = HeaderMap::new();
            for name in &self.settings.response_headers {
                for v in answer.get_all(name) {
                    add.append(name.clone(), v.clone());
                }
            }
            return Said::Allowed(add);
        }
        if status.is_server_error() {
            tracing::warn!(service = %self.settings.url, %status, "authorization service failed");
            return Said::Denied(ForwardDenied::Unavailable);
        }
        let status = match status {
            StatusCode::UNAUTHORIZED => status,
            _ => StatusCode::FORBIDDEN,
        };
        let challenge = answer.get(header::WWW_AUTHENTICATE).cloned();
        Said::Denied(ForwardDenied::Refused { status, challenge })
    }

    /// The question: the request's method (`GET` for an HTTP/2 WebSocket's extended
    /// CONNECT, as its HTTP/1.1 upgrade would say), its path and query under the
    /// service's path, the selected headers (an HTTP/2 client's split cookies joined
    /// into one), and where it came from in `X-Forwarded-*`.
    fn question(&self, q: &Question<'_>) -> Option<Request<Empty<Bytes>>> {
        let s = &self.settings;
        let method = if q.method == Method::CONNECT {
            &Method::GET
        } else {
            q.method
        };
        let original = q.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{original}", s.url.path))
            .header(header::HOST, &s.url.authority)
            .header("x-forwarded-method", method.as_str())
            .header("x-forwarded-uri", original)
            .header("x-forwarded-for", q.client.to_string());
        if let Some(host) = q.headers.get(header::HOST) {
            req = req.header("x-forwarded-host", host);
        } else if let Some(authority) = q.uri.authority() {
            req = req.header("x-forwarded-host", authority.as_str());
        }
        for name in &s.request_headers {
            if name == header::COOKIE {
                let crumbs: Vec<&[u8]> = q
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                if !crumbs.is_empty() {
                    req = req.header(name, crumbs.join(&b"; "[..]));
                }
                continue;
            }
            for v in q.headers.get_all(name) {
                req = req.header(name, v);
            }
        }
        req.body(Empty::new()).ok()
    }

    /// One question over a kept-alive connection to the service (a new one when none
    /// is idle): the answer's status and headers (its body read up to a bound and
    /// dropped). The connection goes back for the next question once the answer is read.
    async fn send(
        &self,
        question: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap), Box<dyn std::error::Error + Send + Sync>> {
        // A kept-alive connection the service has closed meanwhile fails at once; the
        // question (it changes nothing) goes again on a new one.
        let resp = match self.idle() {
            Some(mut idle) => match idle.send_request(question.clone()).await {
                Ok(resp) => Some((idle, resp)),
                Err(_) => None,
            },
            None => None,
        };
        let (sender, resp) = match resp {
            Some(kept) => kept,
            None => {
                let mut fresh = self.connect().await?;
                let resp = fresh.send_request(question).await?;
                (fresh, resp)
            }
        };
        let (parts, mut body) = resp.into_parts();
        let mut read = 0;
        let mut whole = true;
        while let Some(frame) = body.frame().await {
            read += frame?.data_ref().map_or(0, Bytes::len);
            if read > MAX_ANSWER_BODY {
                whole = false;
                break;
            }
        }
        if whole {
            self.keep(sender);
        }
        Ok((parts.status, parts.headers))
    }

    async fn connect(&self) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
        let tcp = tokio::net::TcpStream::connect(&self.settings.url.authority).await?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// An idle connection to this router's service on this thread, still open.
    fn idle(&self) -> Option<Sender> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&self.id)?;
            while let Some(s) = list.pop() {
                if s.is_ready() {
                    return Some(s);
                }
            }
            None
        })
    }

    fn keep(&self, sender: Sender) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.id).or_default();
            if list.len() < MAX_IDLE && !sender.is_closed() {
                list.push(sender);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_url_is_plain_http_with_a_port() {
        let u: ServiceUrl = "http://authz.auth:8080/check/"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.authority, "authz.auth:8080");
        assert_eq!(u.path, "/check");
        assert_eq!(u.to_string(), "http://authz.auth:8080/check");
        let root: ServiceUrl = "http://10.0.0.1:80"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(root.path, "");
        assert_eq!(
            "https://a:1/".parse::<ServiceUrl>(),
            Err(ServiceUrlError::Scheme)
        );
        assert_eq!(
            "http://a/".parse::<ServiceUrl>(),
            Err(ServiceUrlError::Authority)
        );
        assert_eq!(
            "not a url".parse::<ServiceUrl>(),
            Err(ServiceUrlError::Invalid)
        );
    }

    fn door(fail_open: bool) -> ForwardAuth {
        let counter = prometheus_client::metrics::counter::Counter::default();
        ForwardAuth::new(
            ForwardSettings {
                url: "http://127.0.0.1:1/check"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
                request_headers: vec![header::AUTHORIZATION],
                response_headers: vec![HeaderName::from_static("x-user")],
                cache_ttl: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                fail_open,
            },
            counter,
        )
    }

    #[test]
    fn answers_are_judged_by_status() {
        let d = door(false);
        let mut answer = HeaderMap::new();
        answer.insert("x-user", HeaderValue::from_static("alice"));
        answer.insert("x-other", HeaderValue::from_static("no"));
        answer.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        match d.judge(StatusCode::NO_CONTENT, &answer) {
            Said::Allowed(add) => {
                assert_eq!(add.get("x-user"), Some(&HeaderValue::from_static("alice")));
                assert!(add.get("x-other").is_none());
            }
            other => panic!("{other:?}"),
        }
        for (got, want) in [(401, 401), (403, 403), (404, 403), (302, 403)] {
            let status = StatusCode::from_u16(got).unwrap_or_else(|e| panic!("{e}"));
            match d.judge(status, &answer) {
                Said::Denied(ForwardDenied::Refused { status, challenge }) => {
                    assert_eq!(status.as_u16(), want);
                    assert!(challenge.is_some());
                }
                other => panic!("{got}: {other:?}"),
            }
        }
        assert!(matches!(
            d.judge(StatusCode::BAD_GATEWAY, &answer),
            Said::Denied(ForwardDenied::Unavailable)
        ));
    }

    #[test]
    fn the_cache_key_holds_the_credential_the_client_and_the_path() {
        let d = door(false);
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_else(|e| panic!("{e}"));
        let (polled, again) = (uri("/ws/acme/poll?t=1"), uri("/ws/acme/poll?t=2"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("ignored"));
        let here: IpAddr = [10, 0, 0, 1].into();
        let key = |method: &Method, uri: &Uri, h: &HeaderMap, tenant: &str, client: IpAddr| {
            d.cache_key(&Question {
                method,
                uri,
                headers: h,
                tenant,
                client,
            })
        };
        let a = key(&Method::GET, &polled, &h, "acme", here);
        // A poll's changing query and a header not sent to the service: the same answer.
        assert_eq!(key(&Method::GET, &again, &h, "acme", here), a);
        h.insert(header::USER_AGENT, HeaderValue::from_static("other"));
        assert_eq!(key(&Method::GET, &polled, &h, "acme", here), a);
        // Another client, method, tenant, path, host or credential: another answer.
        assert_ne!(
            key(&Method::GET, &polled, &h, "acme", [10, 0, 0, 2].into()),
            a
        );
        assert_ne!(key(&Method::POST, &polled, &h, "acme", here), a);
        assert_ne!(key(&Method::GET, &polled, &h, "globex", here), a);
        assert_ne!(
            key(&Method::GET, &uri("/ws/acme/other"), &h, "acme", here),
            a
        );
        let mut other_host = h.clone();
        other_host.insert(header::HOST, HeaderValue::from_static("b.example"));
        assert_ne!(key(&Method::GET, &polled, &other_host, "acme", here), a);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_ne!(key(&Method::GET, &polled, &h, "acme", here), a);
    }
}
