//! A token checked and bound to the tenant: signature by a key of the set (the token's
//! own header never supplies a key or relaxes an algorithm), issuer, audience, `exp`
//! (required) and `nbf` with a small leeway, then the tenant claim. Pure but for the
//! clock `jsonwebtoken` reads.

use std::time::Duration;

use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::data::admission::auth::jwks::{KeyMiss, KeySet};
use crate::data::admission::auth::Denied;

/// What a token must say, besides its signature.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub issuer: String,
    pub audience: String,
    /// The claim that lists the tenants a token opens (a string or a list of strings;
    /// `*` opens every tenant).
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// A token that opens the tenant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Grant {
    /// Its `exp`, seconds since the Unix epoch: a socket opened with it ends then.
    pub expires: u64,
    /// Its verified claims, which the tenant binding reads.
    pub claims: Map<String, Value>,
    /// The claims as the pod gets them (`--jwt-claims-header`): encoded once, when the
    /// token is verified, not per request it opens.
    pub header: Option<HeaderValue>,
}

/// The part of a token's header chosen before any key: read here, not by the crate, so
/// that `alg: none` and unknown algorithms are named as refused rather than malformed.
#[derive(Deserialize)]
struct Head {
    alg: String,
    kid: Option<String>,
}

/// Checks `token` against `keys` and `rules`: who it is, not yet which tenant it opens
/// (see [`bind`]).
pub(crate) fn authenticate(token: &str, keys: &KeySet, rules: &JwtRules) -> Result<Grant, Denied> {
    let head = head(token)?;
    let alg = accepted_alg(&head.alg)?;
    let key = keys
        .find(head.kid.as_deref(), alg)
        .map_err(|miss| match miss {
            KeyMiss::Unknown => Denied::UnknownKey,
            KeyMiss::NoKid => Denied::NoKid,
        })?;
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = rules.leeway.as_secs();
    v.validate_nbf = true;
    v.set_issuer(&[&rules.issuer]);
    v.set_audience(&[&rules.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
        .map_err(|e| denied_by(e.kind()))?;
    let claims = data.claims;
    let expires = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(Denied::Malformed)?;
    Ok(Grant {
        expires,
        claims,
        header: None,
    })
}

fn head(token: &str) -> Result<Head, Denied> {
    let (encoded, _) = token.split_once('.').ok_or(Denied::Malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Denied::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| Denied::Malformed)
}

/// The asymmetric algorithms; `none` and HS* (a shared secret the router never holds)
/// are refused by name.
fn accepted_alg(alg: &str) -> Result<Algorithm, Denied> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(Denied::Algorithm),
    })
}

fn denied_by(kind: &jsonwebtoken::errors::ErrorKind) -> Denied {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => Denied::Signature,
        K::ExpiredSignature => Denied::Expired,
        K::ImmatureSignature => Denied::NotYetValid,
        K::InvalidIssuer => Denied::Issuer,
        K::InvalidAudience => Denied::Audience,
        K::InvalidAlgorithm | K::UnsupportedAlgorithm | K::MissingAlgorithm => Denied::Algorithm,
        K::MissingRequiredClaim(c) if c == "iss" => Denied::Issuer,
        K::MissingRequiredClaim(c) if c == "aud" => Denied::Audience,
        _ => Denied::Malformed,
    }
}

/// Whether the tenant claim opens `tenant`: equal to it or `*`, or a list holding one
/// of those.
pub(crate) fn bind(claims: &Map<String, Value>, claim: &str, tenant: &str) -> Result<(), Denied> {
    let opens = |v: &Value| v.as_str().is_some_and(|s| s == tenant || s == "*");
    match claims.get(claim) {
        None => Err(Denied::NoTenantClaim),
        Some(Value::Array(list)) if list.iter().any(opens) => Ok(()),
        Some(v) if opens(v) => Ok(()),
        Some(_) => Err(Denied::WrongTenant),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn verify(token: &str, tenant: &str, keys: &KeySet, rules: &JwtRules) -> Result<Grant, Denied> {
        let grant = authenticate(token, keys, rules)?;
        bind(&grant.claims, &rules.tenant_claim, tenant)?;
        Ok(grant)
    }

    /// A key pair made now, its public half as a JWK, and a way to sign with it.
    struct Signer {
        alg: Algorithm,
        kid: &'static str,
        jwk: Value,
        key: EncodingKey,
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn signer(alg: Algorithm, kid: &'static str) -> Signer {
        let (which, ec) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, true),
            _ => (&rcgen::PKCS_ED25519, false),
        };
        let pair = rcgen::KeyPair::generate_for(which).unwrap_or_else(|e| panic!("{e}"));
        let raw = pair.public_key_raw();
        let (jwk, key) = if ec {
            // Uncompressed point: 0x04, X, Y.
            let (x, y) = raw[1..].split_at(32);
            let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(x), "y": b64(y)});
            (jwk, EncodingKey::from_ec_der(&pair.serialize_der()))
        } else {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(raw)});
            (jwk, EncodingKey::from_ed_der(&pair.serialize_der()))
        };
        Signer { alg, kid, jwk, key }
    }

    impl Signer {
        fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(self.alg);
            h.kid = Some(self.kid.to_owned());
            jsonwebtoken::encode(&h, claims, &self.key).unwrap_or_else(|e| panic!("{e}"))
        }
    }

    fn keys(signers: &[&Signer]) -> KeySet {
        let set = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
        KeySet::parse(set.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rules() -> JwtRules {
        JwtRules {
            issuer: "https://id.example".into(),
            audience: "wsrouter".into(),
            tenant_claim: "tenant".into(),
            leeway: Duration::from_secs(5),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn good() -> Value {
        json!({"iss": "https://id.example", "aud": "wsrouter", "exp": now() + 600, "tenant": "acme"})
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        if let Value::Object(m) = &mut v {
            if value.is_null() {
                m.remove(key);
            } else {
                m.insert(key.to_owned(), value);
            }
        }
        v
    }

    /// Each way a token can be wrong, signed for real, and the reason it is refused for.
    #[test]
    fn tokens_are_checked_and_bound_to_the_tenant() {
        let es = signer(Algorithm::ES256, "es");
        let ed = signer(Algorithm::EdDSA, "ed");
        let stranger = signer(Algorithm::ES256, "es");
        let set = keys(&[&es, &ed]);
        let check = |token: &str| verify(token, "acme", &set, &rules());
        let grant = check(&es.sign(&good())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(grant.claims.get("tenant"), Some(&json!("acme")));
        assert!(grant.expires > now());
        assert!(check(&ed.sign(&good())).is_ok());
        let cases = [
            (with(good(), "exp", json!(now() - 60)), Denied::Expired),
            (with(good(), "exp", Value::Null), Denied::Malformed),
            (with(good(), "nbf", json!(now() + 60)), Denied::NotYetValid),
            (
                with(good(), "iss", json!("https://evil.example")),
                Denied::Issuer,
            ),
            (with(good(), "iss", Value::Null), Denied::Issuer),
            (with(good(), "aud", json!("someone-else")), Denied::Audience),
            (with(good(), "tenant", json!("globex")), Denied::WrongTenant),
            (with(good(), "tenant", Value::Null), Denied::NoTenantClaim),
        ];
        for (claims, why) in cases {
            assert_eq!(check(&es.sign(&claims)).err(), Some(why), "{claims}");
        }
        // Within the leeway, an expired token still passes.
        assert!(check(&es.sign(&with(good(), "exp", json!(now() - 2)))).is_ok());
        // The right kid, the wrong key: the signature fails.
        assert_eq!(
            check(&stranger.sign(&good())).err(),
            Some(Denied::Signature)
        );
        // A kid the set does not hold.
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("nobody".into());
        let t = jsonwebtoken::encode(&h, &good(), &es.key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&t).err(), Some(Denied::UnknownKey));
        // An EdDSA key's kid, claimed by an ES256 token: refused before any math.
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("ed".into());
        let t = jsonwebtoken::encode(&h, &good(), &es.key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&t).err(), Some(Denied::UnknownKey));
        // HS256 signed with the public key as the secret (the classic confusion).
        let secret = EncodingKey::from_secret(es.jwk.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("es".into());
        let t = jsonwebtoken::encode(&h, &good(), &secret).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&t).err(), Some(Denied::Algorithm));
        // alg none, unsigned.
        let body = b64(good().to_string().as_bytes());
        let t = format!("{}.{body}.", b64(br#"{"alg":"none","kid":"es"}"#));
        assert_eq!(check(&t).err(), Some(Denied::Algorithm));
        // A signature altered (one character in its middle), or cut short.
        let t = es.sign(&good());
        let at = t.len() - 10;
        let flipped = if &t[at..=at] == "A" { "B" } else { "A" };
        let altered = format!("{}{flipped}{}", &t[..at], &t[at + 1..]);
        assert_eq!(check(&altered).err(), Some(Denied::Signature));
        assert!(check(&t[..t.len() - 4]).is_err());
        assert_eq!(check("a.b").err(), Some(Denied::Malformed));
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn the_tenant_claim_binds_a_string_a_list_or_a_wildcard() {
        use serde_json::json;
        let c = claims(json!({"tenant": "acme"}));
        assert_eq!(bind(&c, "tenant", "acme"), Ok(()));
        assert_eq!(bind(&c, "tenant", "globex"), Err(Denied::WrongTenant));
        assert_eq!(bind(&c, "tenants", "acme"), Err(Denied::NoTenantClaim));
        let c = claims(json!({"tenant": ["globex", "acme"]}));
        assert_eq!(bind(&c, "tenant", "acme"), Ok(()));
        assert_eq!(bind(&c, "tenant", "initech"), Err(Denied::WrongTenant));
        let c = claims(json!({"tenant": "*"}));
        assert_eq!(bind(&c, "tenant", "anyone"), Ok(()));
        let c = claims(json!({"tenant": ["acme", "*"]}));
        assert_eq!(bind(&c, "tenant", "anyone"), Ok(()));
        // Neither numbers nor objects nor prefixes open anything.
        for v in [
            json!(7),
            json!({"acme": true}),
            json!("acm"),
            json!([["acme"]]),
        ] {
            let c = claims(json!({ "tenant": v }));
            assert_eq!(bind(&c, "tenant", "acme"), Err(Denied::WrongTenant), "{v}");
        }
    }

    #[test]
    fn none_and_shared_secret_algorithms_are_refused_by_name() {
        for alg in ["none", "None", "HS256", "HS384", "HS512", "", "RS1"] {
            assert_eq!(accepted_alg(alg), Err(Denied::Algorithm), "{alg}");
        }
        assert_eq!(accepted_alg("ES256"), Ok(Algorithm::ES256));
    }

    #[test]
    fn a_token_that_is_not_three_base64_parts_is_malformed() {
        for t in ["", "abc", "!!!.x.y", "e30", "bm90IGpzb24.x.y"] {
            assert!(matches!(head(t), Err(Denied::Malformed)), "{t}");
        }
        // {"alg":"none"}: read, then refused by name.
        let h = head("eyJhbGciOiJub25lIn0.e30.").unwrap_or_else(|_| panic!("head"));
        assert_eq!(accepted_alg(&h.alg), Err(Denied::Algorithm));
    }
}
