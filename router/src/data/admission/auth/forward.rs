//! External authorization (`--auth forward:URL`): for teams with their own auth service.
//! Before a request is routed, the router asks the service a plain HTTP question with the
//! request's method, its path under the service's URL, and the selected headers (never
//! the upgrade's); `2xx` lets it in (with the configured answer headers copied into what
//! the pod gets), `401`/`403` are the client's answer as the service gave them, and a
//! service that cannot answer (timeout, refused, `5xx`) meets `--auth-failure`.
//! Answers are remembered per credential for `--auth-cache-ttl`, per I/O thread.

use std::cell::RefCell;
use std::collections::HashMap;
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
    /// Unique in the process, so one router's remembered answers are never another's.
    id: u64,
}

/// What the service said, as remembered.
#[derive(Debug, Clone)]
enum Said {
    Allowed(HeaderMap),
    Denied(ForwardDenied),
}

type Remembered = HashMap<(u64, String), (Instant, Said)>;

/// Answers remembered per thread before the cache is emptied.
const CAPACITY: usize = 4096;
/// The most of the service's answer body read (and thrown away).
const MAX_ANSWER_BODY: usize = 64 * 1024;

thread_local! {
    static ANSWERS: RefCell<Remembered> = RefCell::new(HashMap::new());
}

impl ForwardAuth {
    pub(crate) fn new(settings: ForwardSettings) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Self {
            settings,
            id: IDS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Asks the service about a request for `tenant` (or recalls its answer): the
    /// headers to add to the pod's request, or why not.
    pub(crate) async fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        tenant: &str,
        client: IpAddr,
    ) -> Result<HeaderMap, ForwardDenied> {
        let key = self.cache_key(method, uri, headers, tenant);
        let said = match self.recall(&key) {
            Some(said) => said,
            None => {
                let said = self.ask(method, uri, headers, client).await;
                self.remember(key, &said);
                said
            }
        };
        match said {
            Said::Allowed(add) => Ok(add),
            Said::Denied(ForwardDenied::Unavailable) if self.settings.fail_open => {
                Ok(HeaderMap::new())
            }
            Said::Denied(why) => Err(why),
        }
    }

    /// The credential an answer is remembered under: the method, the path and query,
    /// the tenant, and every header the service is sent.
    fn cache_key(&self, method: &Method, uri: &Uri, headers: &HeaderMap, tenant: &str) -> String {
        let mut key = format!(
            "{method} {} {tenant}",
            uri.path_and_query().map_or("/", |p| p.as_str())
        );
        for name in &self.settings.request_headers {
            for v in headers.get_all(name) {
                key.push('\0');
                key.push_str(name.as_str());
                key.push(':');
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        key
    }

    fn recall(&self, key: &str) -> Option<Said> {
        if self.settings.cache_ttl.is_zero() {
            return None;
        }
        ANSWERS.with(|a| {
            let a = a.borrow();
            let (until, said) = a.get(&(self.id, key.to_owned()))?;
            (Instant::now() < *until).then(|| said.clone())
        })
    }

    /// Remembers an answer; an unavailable service is not remembered (the next request
    /// asks again).
    fn remember(&self, key: String, said: &Said) {
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

    async fn ask(&self, method: &Method, uri: &Uri, headers: &HeaderMap, client: IpAddr) -> Said {
        let question = match self.question(method, uri, headers, client) {
            Some(q) => q,
            None => return Said::Denied(ForwardDenied::Unavailable),
        };
        let s = &self.settings;
        let answer = tokio::time::timeout(s.timeout, send(&s.url.authority, question)).await;
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

    /// The question: the request's method, its path and query under the service's
    /// path, the selected headers, and where it came from in `X-Forwarded-*`.
    fn question(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Option<Request<Empty<Bytes>>> {
        let s = &self.settings;
        let original = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{original}", s.url.path))
            .header(header::HOST, &s.url.authority)
            .header("x-forwarded-method", method.as_str())
            .header("x-forwarded-uri", original)
            .header("x-forwarded-for", client.to_string());
        if let Some(host) = headers.get(header::HOST) {
            req = req.header("x-forwarded-host", host);
        }
        for name in &s.request_headers {
            for v in headers.get_all(name) {
                req = req.header(name, v);
            }
        }
        req.body(Empty::new()).ok()
    }
}

/// One question on a new connection to `authority`: the answer's status and headers (its
/// body read up to a bound and dropped).
async fn send(
    authority: &str,
    question: Request<Empty<Bytes>>,
) -> Result<(StatusCode, HeaderMap), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(question).await?;
    let (parts, mut body) = resp.into_parts();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        read += frame?.data_ref().map_or(0, Bytes::len);
        if read > MAX_ANSWER_BODY {
            break;
        }
    }
    Ok((parts.status, parts.headers))
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
        ForwardAuth::new(ForwardSettings {
            url: "http://127.0.0.1:1/check"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            request_headers: vec![header::AUTHORIZATION],
            response_headers: vec![HeaderName::from_static("x-user")],
            cache_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            fail_open,
        })
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
    fn the_cache_key_holds_the_credential_and_the_tenant() {
        let d = door(false);
        let uri: Uri = "/ws/acme?x=1".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("ignored"));
        let a = d.cache_key(&Method::GET, &uri, &h, "acme");
        h.insert(header::USER_AGENT, HeaderValue::from_static("other"));
        assert_eq!(d.cache_key(&Method::GET, &uri, &h, "acme"), a);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_ne!(d.cache_key(&Method::GET, &uri, &h, "acme"), a);
        assert_ne!(
            d.cache_key(&Method::POST, &uri, &h, "acme"),
            d.cache_key(&Method::GET, &uri, &h, "acme")
        );
    }
}
