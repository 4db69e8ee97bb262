//! Owns: identity at the door (`--auth jwt`): where a request's token is (`token`), the
//! keys it is checked against (`jwks`, swapped whole by the JWKS file's watcher), and
//! the check itself, bound to the request's tenant (`jwt`).
//! May not touch: the routing table, the pools, any backend: a request is answered here
//! before any of them is asked, so a stranger cannot spend a tenant's places.

mod cache;
pub(crate) mod forward;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub(crate) mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use thiserror::Error;

pub use forward::{ForwardDenied, ForwardSettings, ServiceUrl};
pub(crate) use jwks::JwksError;
pub use jwt::JwtRules;

use jwks::KeySet;
use jwt::Grant;

/// Why a request was not let in. Every message is safe to show: none holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Denied {
    #[error("no token (Authorization: Bearer, access_token, or the bearer subprotocol)")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm refused (RS*, PS*, ES256, ES384 or EdDSA, by its key)")]
    Algorithm,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("token names no kid and several keys could verify it")]
    NoKid,
    #[error("token signature invalid")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    Issuer,
    #[error("token audience not accepted")]
    Audience,
    #[error("token names no tenant")]
    NoTenantClaim,
    #[error("token does not open this tenant")]
    WrongTenant,
}

impl Denied {
    /// The `reason` label of `wsrouter_auth_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::NoKid => "no_kid",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::NoTenantClaim => "no_tenant_claim",
            Self::WrongTenant => "wrong_tenant",
        }
    }

    /// Every reason, for tests and for the metric's documentation.
    pub const ALL: [Denied; 12] = [
        Self::Missing,
        Self::Malformed,
        Self::Algorithm,
        Self::UnknownKey,
        Self::NoKid,
        Self::Signature,
        Self::Expired,
        Self::NotYetValid,
        Self::Issuer,
        Self::Audience,
        Self::NoTenantClaim,
        Self::WrongTenant,
    ];

    /// 401 for who the client is (no token, a bad one), 403 for a good token that does
    /// not open this tenant.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::NoTenantClaim | Self::WrongTenant => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3): no error code when no token came,
    /// `invalid_token` for a bad one, `insufficient_scope` for another tenant's.
    pub(crate) fn challenge(self) -> &'static str {
        match self {
            Self::Missing => r#"Bearer realm="wsrouter""#,
            Self::Malformed => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="malformed token""#
            }
            Self::Algorithm => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="algorithm refused""#
            }
            Self::UnknownKey | Self::NoKid => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="unknown key""#
            }
            Self::Signature => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="bad signature""#
            }
            Self::Expired => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="token expired""#
            }
            Self::NotYetValid => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="token not yet valid""#
            }
            Self::Issuer => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="issuer not accepted""#
            }
            Self::Audience => {
                r#"Bearer realm="wsrouter", error="invalid_token", error_description="audience not accepted""#
            }
            Self::NoTenantClaim | Self::WrongTenant => {
                r#"Bearer realm="wsrouter", error="insufficient_scope", error_description="token does not open this tenant""#
            }
        }
    }
}

/// `--auth jwt`'s settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub rules: JwtRules,
    /// The cookie a token may come in.
    pub cookie: String,
    /// Leave `access_token` in the query the pod is sent (`--forward-token`).
    pub forward_token: bool,
    /// The header the verified claims go to the pod in (base64url JSON), and that is
    /// removed from every client request (`--jwt-claims-header`).
    pub claims_header: Option<HeaderName>,
}

/// The door: the settings and the key set in use.
pub(crate) struct Auth {
    pub settings: JwtSettings,
    keys: ArcSwap<Keys>,
}

/// A key set and its generation: unique in the process (every router, every swap), so a
/// token verified under one set is never taken as verified under another.
struct Keys {
    set: KeySet,
    generation: u64,
}

impl Keys {
    fn new(set: KeySet) -> Self {
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
        Self { set, generation }
    }
}

/// A request let in: its token's grant (expiry, claims).
#[derive(Debug)]
pub(crate) struct Passed {
    pub grant: Arc<Grant>,
}

impl Auth {
    pub(crate) fn new(settings: JwtSettings, keys: KeySet) -> Self {
        Self {
            settings,
            keys: ArcSwap::from_pointee(Keys::new(keys)),
        }
    }

    /// Puts a new key set in use (the JWKS file changed and parsed).
    pub(crate) fn swap_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(Keys::new(keys)));
    }

    /// Checks the request's token for `tenant`.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        tenant: &str,
    ) -> Result<Passed, Denied> {
        let (token, _) =
            token::find(headers, query, &self.settings.cookie)?.ok_or(Denied::Missing)?;
        let keys = self.keys.load();
        let rules = &self.settings.rules;
        let grant = match cache::get(keys.generation, &token) {
            Some(grant) => {
                // Verified before; its expiry is checked again, as the crate would.
                let now = jsonwebtoken::get_current_timestamp();
                if now > grant.expires.saturating_add(rules.leeway.as_secs()) {
                    return Err(Denied::Expired);
                }
                grant
            }
            None => {
                let mut grant = jwt::authenticate(&token, &keys.set, rules)?;
                if self.settings.claims_header.is_some() {
                    grant.header = Some(claims_header(&grant.claims));
                }
                let grant = Arc::new(grant);
                cache::put(keys.generation, &token, grant.clone());
                grant
            }
        };
        jwt::bind(&grant.claims, &rules.tenant_claim, tenant)?;
        Ok(Passed { grant })
    }

    /// What the pod is sent, from a request let in: the token's subprotocol entry out of
    /// the offered ones, its query parameter out (unless `--forward-token`), and the
    /// claims header set (any the client sent was removed by [`Auth::strip_claims`]).
    /// Returns the new path and query when they changed.
    pub(crate) fn prepare(
        &self,
        passed: &Passed,
        headers: &mut HeaderMap,
        uri: &http::Uri,
    ) -> Option<http::Uri> {
        if let Some(rest) = token::protocols_without_token(headers) {
            headers.remove(http::header::SEC_WEBSOCKET_PROTOCOL);
            if let Some(v) = rest {
                headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        if let (Some(name), Some(v)) = (&self.settings.claims_header, &passed.grant.header) {
            headers.insert(name.clone(), v.clone());
        }
        if self.settings.forward_token {
            return None;
        }
        without_token(uri)
    }

    /// Removes the claims header from a client's request, whatever happens next: only
    /// the router sets it.
    pub(crate) fn strip_claims(&self, headers: &mut HeaderMap) {
        if let Some(name) = &self.settings.claims_header {
            headers.remove(name);
        }
    }
}

/// Verified claims as the claims header carries them: base64url JSON, no padding
/// (always a valid header value).
fn claims_header(claims: &serde_json::Map<String, serde_json::Value>) -> HeaderValue {
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `uri` without the `access_token` parameter, if it had one.
fn without_token(uri: &http::Uri) -> Option<http::Uri> {
    let query = uri.query()?;
    let rest = token::query_without_token(query);
    if rest.as_deref() == Some(query) {
        return None;
    }
    let path = uri.path();
    let pq = match rest {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_label_a_status_and_a_challenge() {
        let mut labels: Vec<&str> = Denied::ALL.iter().map(|d| d.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Denied::ALL.len());
        for d in Denied::ALL {
            assert!(d.challenge().starts_with(r#"Bearer realm="wsrouter""#));
            assert!(HeaderValue::from_str(d.challenge()).is_ok(), "{d:?}");
            let forbidden = matches!(d, Denied::WrongTenant | Denied::NoTenantClaim);
            assert_eq!(d.status() == StatusCode::FORBIDDEN, forbidden, "{d:?}");
        }
    }

    #[test]
    fn the_token_leaves_the_uri() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap_or_else(|e| panic!("{e}"));
        let out = |s: &str| without_token(&uri(s)).map(|u| u.to_string());
        assert_eq!(out("/ws/acme"), None);
        assert_eq!(out("/ws/acme?x=1"), None);
        assert_eq!(
            out("/ws/acme?access_token=t.t.t").as_deref(),
            Some("/ws/acme")
        );
        assert_eq!(
            out("/hub?id=3&access_token=t.t.t&x").as_deref(),
            Some("/hub?id=3&x")
        );
    }
}
