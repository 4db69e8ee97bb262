//! The keys tokens are checked against: a JSON Web Key Set (RFC 7517), as identity
//! providers publish it and as a Kubernetes Secret holds it. Pure: bytes in, keys out.
//!
//! Only asymmetric signing keys are taken, each bound to the algorithms its type allows,
//! so a token cannot pick its own: an RSA key verifies RS*/PS* only, a P-256 key ES256
//! only, an Ed25519 key EdDSA only. A symmetric (`oct`) key refuses the whole set: with
//! it, anyone holding the "public" set could sign tokens (the HS256 confusion).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use thiserror::Error;

/// Why a key set was refused (the last good one stays in use).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("not a JSON Web Key Set ({0})")]
    Json(String),
    #[error(
        "key {0}: a symmetric (oct) key; only public keys verify tokens here (HS* is refused)"
    )]
    Symmetric(String),
    #[error("key {key}: {why}")]
    BadKey { key: String, why: String },
    #[error("key {key}: its alg {alg} does not fit its key type")]
    AlgMismatch { key: String, alg: String },
    #[error("two keys share the kid {0:?}")]
    DuplicateKid(String),
    #[error("no signing key in the set (RSA, P-256, P-384 or Ed25519)")]
    Empty,
}

/// One verifying key and what it may verify.
pub(crate) struct Key {
    pub kid: Option<String>,
    pub algs: &'static [Algorithm],
    pub key: DecodingKey,
}

/// The keys in use; swapped whole when the file changes.
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const P256: &[Algorithm] = &[Algorithm::ES256];
const P384: &[Algorithm] = &[Algorithm::ES384];
const ED25519: &[Algorithm] = &[Algorithm::EdDSA];

impl KeySet {
    /// One JWKS document, as [`KeySet::parse_many`] reads several.
    #[cfg(test)]
    pub(crate) fn parse(json: &[u8]) -> Result<Self, JwksError> {
        Self::parse_many(&[json]).map_err(|(_, e)| e)
    }

    /// Several JWKS documents as one set (a directory of them); an error says which.
    /// Encryption keys (`use: enc`) are skipped; anything else that cannot verify a
    /// signature refuses the set, naming the key.
    pub(crate) fn parse_many(docs: &[impl AsRef<[u8]>]) -> Result<Self, (usize, JwksError)> {
        let mut keys: Vec<Key> = Vec::new();
        for (doc, json) in docs.iter().enumerate() {
            let set: JwkSet = serde_json::from_slice(json.as_ref())
                .map_err(|e| (doc, JwksError::Json(e.to_string())))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                    continue;
                }
                let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                let key = key_of(jwk, &name).map_err(|e| (doc, e))?;
                if let Some(kid) = &key.kid {
                    if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                        return Err((doc, JwksError::DuplicateKid(kid.clone())));
                    }
                }
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err((0, JwksError::Empty));
        }
        Ok(Self { keys })
    }

    /// How many keys verify.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token signed with `alg`: the one named `kid`, or without a kid the
    /// only key that fits `alg` (trying several would let one request cost several
    /// verifications).
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, KeyMiss> {
        let fits = |k: &&Key| k.algs.contains(&alg);
        match kid {
            Some(kid) => {
                let key = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid));
                key.filter(fits).ok_or(KeyMiss::Unknown)
            }
            None => {
                let mut fitting = self.keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(KeyMiss::Unknown),
                    (Some(_), Some(_)) => Err(KeyMiss::NoKid),
                }
            }
        }
    }
}

/// Why no key fits a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// No key with its kid, or none for its algorithm.
    Unknown,
    /// No kid, and several keys could verify it.
    NoKid,
}

fn key_of(jwk: &Jwk, name: &str) -> Result<Key, JwksError> {
    let bad = |why: String| JwksError::BadKey {
        key: name.to_owned(),
        why,
    };
    let algs = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => P256,
            EllipticCurve::P384 => P384,
            ref c => return Err(bad(format!("curve {c:?} is not supported (P-256, P-384)"))),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => ED25519,
            ref c => return Err(bad(format!("curve {c:?} is not supported (Ed25519)"))),
        },
        AlgorithmParameters::OctetKey(_) => return Err(JwksError::Symmetric(name.to_owned())),
        _ => return Err(bad("unsupported key type".to_owned())),
    };
    // A key that names its algorithm verifies that one only.
    let algs = match jwk.common.key_algorithm {
        None => algs,
        Some(named) => {
            let named = format!("{named:?}");
            let one = algs.iter().find(|a| format!("{a:?}") == named);
            match one {
                Some(a) => std::slice::from_ref(a),
                None => {
                    return Err(JwksError::AlgMismatch {
                        key: name.to_owned(),
                        alg: named,
                    })
                }
            }
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 public key (x, y) and an Ed25519 one, as JWKs.
    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn ec(kid: &str) -> String {
        format!(r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{EC_X}","y":"{EC_Y}"}}"#)
    }
    fn ed(kid: &str) -> String {
        format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{ED_X}"}}"#)
    }
    fn set(keys: &[String]) -> Vec<u8> {
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
    }

    #[test]
    fn each_key_verifies_only_its_own_algorithms() {
        let s = KeySet::parse(&set(&[ec("a"), ed("b")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.len(), 2);
        assert!(s.find(Some("a"), Algorithm::ES256).is_ok());
        // A kid names a key; a token cannot use it with another algorithm.
        assert_eq!(
            s.find(Some("a"), Algorithm::EdDSA).err(),
            Some(KeyMiss::Unknown)
        );
        assert_eq!(
            s.find(Some("a"), Algorithm::HS256).err(),
            Some(KeyMiss::Unknown)
        );
        assert_eq!(
            s.find(Some("zz"), Algorithm::ES256).err(),
            Some(KeyMiss::Unknown)
        );
        // Without a kid: the only key that fits.
        assert!(s.find(None, Algorithm::EdDSA).is_ok());
        assert_eq!(s.find(None, Algorithm::RS256).err(), Some(KeyMiss::Unknown));
    }

    #[test]
    fn without_a_kid_several_fitting_keys_are_refused() {
        let s = KeySet::parse(&set(&[ec("a"), ec("b")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.find(None, Algorithm::ES256).err(), Some(KeyMiss::NoKid));
        assert!(s.find(Some("b"), Algorithm::ES256).is_ok());
    }

    #[test]
    fn bad_sets_are_refused_with_the_key_named() {
        let oct = r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#.to_owned();
        assert_eq!(
            KeySet::parse(&set(&[ec("a"), oct])).err(),
            Some(JwksError::Symmetric("h".into()))
        );
        assert_eq!(
            KeySet::parse(&set(&[ec("a"), ec("a")])).err(),
            Some(JwksError::DuplicateKid("a".into()))
        );
        assert_eq!(KeySet::parse(&set(&[])).err(), Some(JwksError::Empty));
        assert!(matches!(
            KeySet::parse(b"{\"keys\": 3}"),
            Err(JwksError::Json(_))
        ));
        assert!(matches!(
            KeySet::parse(b"not json"),
            Err(JwksError::Json(_))
        ));
        let named_wrong = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"w","alg":"RS256","x":"{EC_X}","y":"{EC_Y}"}}"#
        );
        assert!(matches!(
            KeySet::parse(&set(&[named_wrong])),
            Err(JwksError::AlgMismatch { .. })
        ));
        let p521 = r#"{"kty":"EC","crv":"P-521","kid":"p","x":"AA","y":"AA"}"#.to_owned();
        assert!(matches!(
            KeySet::parse(&set(&[p521])),
            Err(JwksError::BadKey { .. })
        ));
    }

    #[test]
    fn encryption_keys_are_skipped_and_a_named_alg_narrows_a_key() {
        let enc = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"e","use":"enc","x":"{EC_X}","y":"{EC_Y}"}}"#
        );
        let named = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"n","alg":"ES256","x":"{EC_X}","y":"{EC_Y}"}}"#
        );
        let s = KeySet::parse(&set(&[enc, named])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.len(), 1);
        assert!(s.find(Some("n"), Algorithm::ES256).is_ok());
        assert_eq!(
            s.find(Some("e"), Algorithm::ES256).err(),
            Some(KeyMiss::Unknown)
        );
    }
}
