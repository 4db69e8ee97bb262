//! Identity at the door: `--auth jwt` and what a token must say.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use http::header::HeaderName;

use super::values::Span;
use super::ConfigError;
use crate::data::admission::auth::{JwtRules, JwtSettings};

/// Who may open a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum AuthMode {
    // Anyone (the pods check identity themselves). Plain comments, not doc comments:
    // clap would list described values on lines of their own in `--help`.
    #[default]
    None,
    // A JSON Web Token signed by a key of --jwks-file, whose --tenant-claim opens the tenant.
    Jwt,
}

/// The door's flags. Their defaults are [`AuthArgs::default`]'s.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Who may open a tenant: `none`, or `jwt` (a token checked and bound to the tenant before anything else is asked).
    #[arg(long, env = "WSROUTER_AUTH", value_enum, default_value_t = AuthMode::None)]
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
        }
    }
}

impl AuthArgs {
    /// `--auth jwt`'s settings and key file, `None` for `--auth none`. Flags that only
    /// mean something with `jwt` are refused without it, so a typo does not leave the
    /// door open unnoticed.
    pub(crate) fn jwt(&self) -> Result<Option<(JwtSettings, PathBuf)>, ConfigError> {
        if self.auth == AuthMode::None {
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
        Ok(Some((settings, jwks)))
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
