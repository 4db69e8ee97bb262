//! Identity at the door: `--auth jwt` and what a token must say.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use http::header::HeaderName;

use super::values::Span;
use super::ConfigError;
use crate::data::admission::auth::{ForwardSettings, JwtRules, JwtSettings, ServiceUrl};

/// Who may open a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Anyone (the pods check identity themselves).
    #[default]
    None,
    /// A JSON Web Token signed by a key of --jwks-file, whose --tenant-claim opens the tenant.
    Jwt,
    /// Whatever the authorization service at the URL says.
    Forward(ServiceUrl),
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "jwt" => Ok(Self::Jwt),
            _ => match s.strip_prefix("forward:") {
                Some(url) => url
                    .parse()
                    .map(Self::Forward)
                    .map_err(|e| format!("forward:{url}: {e}")),
                None => Err("none, jwt, or forward:http://HOST:PORT/PATH".to_owned()),
            },
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Jwt => f.write_str("jwt"),
            Self::Forward(url) => write!(f, "forward:{url}"),
        }
    }
}

/// What the router does when the authorization service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum AuthFailure {
    #[default]
    Deny,
    Allow,
}

/// Headers that belong to one hop or to the upgrade: never sent to or taken from the
/// authorization service.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "host",
    "content-length",
];

/// The door's flags. Their defaults are [`AuthArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Who may open a tenant: `none`; `jwt` (a token checked and bound to the tenant before anything else is asked); or `forward:http://HOST:PORT/PATH` (an authorization service asked first).
    #[arg(long, env = "WSROUTER_AUTH", default_value_t = AuthMode::None)]
    pub auth: AuthMode,
    /// The JSON Web Key Set tokens are checked against (RSA, P-256, P-384, Ed25519 keys): a file, or a directory mounted from a Secret (each file a key set); watched, a bad update keeps the last good keys.
    #[arg(long, env = "WSROUTER_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` a token must carry (required with --auth jwt).
    #[arg(long, env = "WSROUTER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` a token must carry (required with --auth jwt).
    #[arg(long, env = "WSROUTER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim that lists the tenants a token opens: a string or a list of strings, `*` for every tenant.
    #[arg(long, env = "WSROUTER_TENANT_CLAIM", default_value_t = AuthArgs::default().tenant_claim)]
    pub tenant_claim: String,
    /// Clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "WSROUTER_JWT_LEEWAY", default_value_t = AuthArgs::default().jwt_leeway)]
    pub jwt_leeway: Span,
    /// The cookie a token may come in.
    #[arg(long, env = "WSROUTER_JWT_COOKIE", default_value_t = AuthArgs::default().jwt_cookie)]
    pub jwt_cookie: String,
    /// Leave the `access_token` query parameter in what the pod is sent (by default it is removed).
    #[arg(long, env = "WSROUTER_FORWARD_TOKEN")]
    pub forward_token: bool,
    /// Send the pod a token's verified claims in this header (base64url JSON); the header is removed from every client request.
    #[arg(long, env = "WSROUTER_JWT_CLAIMS_HEADER")]
    pub jwt_claims_header: Option<String>,
    /// With --auth forward: the request headers the service is sent (besides X-Forwarded-Method, -Uri, -Host, -For).
    #[arg(
        long,
        env = "WSROUTER_AUTH_REQUEST_HEADERS",
        value_delimiter = ',',
        default_value = "authorization,cookie"
    )]
    pub auth_request_headers: Vec<String>,
    /// With --auth forward: the service's answer headers copied into the pod's request (and removed from every client request).
    #[arg(long, env = "WSROUTER_AUTH_RESPONSE_HEADERS", value_delimiter = ',')]
    pub auth_response_headers: Vec<String>,
    /// With --auth forward: how long an answer is remembered per credential, tenant and path; 0s: never.
    #[arg(long, env = "WSROUTER_AUTH_CACHE_TTL", default_value_t = AuthArgs::default().auth_cache_ttl)]
    pub auth_cache_ttl: Span,
    /// With --auth forward: the longest the service may take to answer.
    #[arg(long, env = "WSROUTER_AUTH_TIMEOUT", default_value_t = AuthArgs::default().auth_timeout)]
    pub auth_timeout: Span,
    /// With --auth forward: when the service cannot answer (timeout, refused, 5xx), `deny` (503) or `allow`.
    #[arg(long, env = "WSROUTER_AUTH_FAILURE", value_enum, default_value_t = AuthFailure::Deny)]
    pub auth_failure: AuthFailure,
}

impl Default for AuthArgs {
    fn default() -> Self {
        Self {
            auth: AuthMode::None,
            jwks_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            tenant_claim: "tenant".to_owned(),
            jwt_leeway: Span(Duration::from_secs(30)),
            jwt_cookie: "access_token".to_owned(),
            forward_token: false,
            jwt_claims_header: None,
            auth_request_headers: vec!["authorization".to_owned(), "cookie".to_owned()],
            auth_response_headers: Vec::new(),
            auth_cache_ttl: Span(Duration::from_secs(10)),
            auth_timeout: Span(Duration::from_secs(2)),
            auth_failure: AuthFailure::Deny,
        }
    }
}

impl AuthArgs {
    /// `--auth jwt`'s settings and key file, `None` for `--auth none`. Flags that only
    /// mean something with `jwt` are refused without it, so a typo does not leave the
    /// door open unnoticed.
    pub(crate) fn jwt(&self) -> Result<Option<(JwtSettings, PathBuf)>, ConfigError> {
        if self.auth != AuthMode::Jwt {
            let given = [
                ("--jwks-file", self.jwks_file.is_some()),
                ("--jwt-issuer", self.jwt_issuer.is_some()),
                ("--jwt-audience", self.jwt_audience.is_some()),
                ("--jwt-claims-header", self.jwt_claims_header.is_some()),
                ("--forward-token", self.forward_token),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(ConfigError::AuthFlagWithoutAuth(flag));
            }
            return Ok(None);
        }
        self.jwt_settings().map(Some)
    }

    /// `--auth forward:URL`'s settings, `None` otherwise.
    pub(crate) fn forward(&self) -> Result<Option<ForwardSettings>, ConfigError> {
        let AuthMode::Forward(url) = &self.auth else {
            if !self.auth_response_headers.is_empty() {
                return Err(ConfigError::ForwardFlagWithoutForward(
                    "--auth-response-headers",
                ));
            }
            return Ok(None);
        };
        let names = |list: &[String], flag| -> Result<Vec<HeaderName>, ConfigError> {
            list.iter()
                .filter(|h| !h.is_empty())
                .map(|h| {
                    let name = HeaderName::from_bytes(h.trim().as_bytes())
                        .map_err(|_| ConfigError::AuthHeader(flag, h.clone()))?;
                    // The upgrade's headers are never the service's business.
                    if HOP_BY_HOP.contains(&name.as_str()) {
                        return Err(ConfigError::AuthHeader(flag, h.clone()));
                    }
                    Ok(name)
                })
                .collect()
        };
        if self.auth_timeout.get().is_zero() {
            return Err(ConfigError::ZeroDuration("--auth-timeout"));
        }
        Ok(Some(ForwardSettings {
            url: url.clone(),
            request_headers: names(&self.auth_request_headers, "--auth-request-headers")?,
            response_headers: names(&self.auth_response_headers, "--auth-response-headers")?,
            cache_ttl: self.auth_cache_ttl.get(),
            timeout: self.auth_timeout.get(),
            fail_open: self.auth_failure == AuthFailure::Allow,
        }))
    }

    fn jwt_settings(&self) -> Result<(JwtSettings, PathBuf), ConfigError> {
        let need = |v: &Option<String>, flag| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or(ConfigError::AuthNeeds(flag))
        };
        let jwks = self
            .jwks_file
            .clone()
            .ok_or(ConfigError::AuthNeeds("--jwks-file"))?;
        let issuer = need(&self.jwt_issuer, "--jwt-issuer")?;
        let audience = need(&self.jwt_audience, "--jwt-audience")?;
        if self.tenant_claim.is_empty() {
            return Err(ConfigError::AuthNeeds("--tenant-claim"));
        }
        let claims_header = match &self.jwt_claims_header {
            None => None,
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ConfigError::ClaimsHeader(h.clone()))?,
            ),
        };
        let settings = JwtSettings {
            rules: JwtRules {
                issuer,
                audience,
                tenant_claim: self.tenant_claim.clone(),
                leeway: self.jwt_leeway.get(),
            },
            cookie: self.jwt_cookie.clone(),
            forward_token: self.forward_token,
            claims_header,
        };
        Ok((settings, jwks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> AuthArgs {
        AuthArgs {
            auth: AuthMode::Jwt,
            jwks_file: Some("/keys/jwks.json".into()),
            jwt_issuer: Some("https://id.example".into()),
            jwt_audience: Some("wsrouter".into()),
            ..AuthArgs::default()
        }
    }

    #[test]
    fn none_is_the_default_and_refuses_jwt_flags() {
        assert!(matches!(AuthArgs::default().jwt(), Ok(None)));
        let stray = AuthArgs {
            jwt_issuer: Some("x".into()),
            ..AuthArgs::default()
        };
        assert!(matches!(
            stray.jwt(),
            Err(ConfigError::AuthFlagWithoutAuth("--jwt-issuer"))
        ));
    }

    #[test]
    fn jwt_needs_keys_an_issuer_and_an_audience() {
        let ok = jwt().jwt().unwrap_or_else(|e| panic!("{e}"));
        let (s, path) = ok.unwrap_or_else(|| panic!("jwt"));
        assert_eq!(path, PathBuf::from("/keys/jwks.json"));
        assert_eq!(s.rules.tenant_claim, "tenant");
        assert_eq!(s.rules.leeway, Duration::from_secs(30));
        assert!(!s.forward_token);
        for (flag, args) in [
            (
                "--jwks-file",
                AuthArgs {
                    jwks_file: None,
                    ..jwt()
                },
            ),
            (
                "--jwt-issuer",
                AuthArgs {
                    jwt_issuer: None,
                    ..jwt()
                },
            ),
            (
                "--jwt-audience",
                AuthArgs {
                    jwt_audience: Some(String::new()),
                    ..jwt()
                },
            ),
            (
                "--tenant-claim",
                AuthArgs {
                    tenant_claim: String::new(),
                    ..jwt()
                },
            ),
        ] {
            assert!(
                matches!(args.jwt(), Err(ConfigError::AuthNeeds(f)) if f == flag),
                "{flag}"
            );
        }
        let bad = AuthArgs {
            jwt_claims_header: Some("bad header".into()),
            ..jwt()
        };
        assert!(matches!(bad.jwt(), Err(ConfigError::ClaimsHeader(_))));
    }
}
