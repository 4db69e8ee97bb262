//! Identity at the door (`--auth jwt`): a token opens its own tenant and no other, every
//! refusal is answered before a pod is asked, a socket ends with 1008 when its token
//! expires, and a rotated key set is taken live without dropping a socket.
//!
//! The tokens here are signed with the `jsonwebtoken` crate and keys made at run time;
//! `tests/frameworks/jwt.sh` runs the same door against tokens minted by PyJWT, an independent
//! implementation, with RSA, P-256 and Ed25519 keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::harness::*;

/// A P-256 key made now: its public half as a JWK, and a way to sign with it.
struct Signer {
    kid: String,
    jwk: Value,
    key: EncodingKey,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    fn new(kid: &str) -> Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let raw = pair.public_key_raw();
        let (x, y) = raw[1..].split_at(32);
        Ok(Self {
            kid: kid.to_owned(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(x), "y": b64(y)}),
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
        })
    }

    fn token(&self, tenant: Value, ttl: i64) -> Result<String> {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        let exp = now() as i64 + ttl;
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": exp, "tenant": tenant});
        Ok(jsonwebtoken::encode(&h, &claims, &self.key)?)
    }
}

const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "wsrouter";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh key directory holding a JWKS (`jwks.json`) of one new key, and that key.
fn keyed(name: &str) -> Result<(PathBuf, Signer)> {
    let dir = key_dir(name)?;
    let signer = Signer::new("k1")?;
    write_jwks(&dir.join("jwks.json"), &[&signer])?;
    Ok((dir, signer))
}

/// A fresh directory for a test's key files.
fn key_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wsrouter-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the key set of `signers` to `path` by renaming over it, as kubelet and
/// editors do.
fn write_jwks(path: &Path, signers: &[&Signer]) -> Result<()> {
    let set = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    write_file(path, set.to_string().as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn auth(jwks: PathBuf, claims_header: Option<&'static str>) -> Result<router::AuthSetup> {
    let settings = router::JwtSettings {
        rules: router::JwtRules {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            tenant_claim: "tenant".into(),
            leeway: Duration::from_secs(5),
        },
        cookie: "access_token".into(),
        forward_token: false,
        claims_header: claims_header.map(http::HeaderName::from_static),
    };
    Ok(router::AuthSetup::load(settings, jwks)?)
}

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Every way in and every way to be turned away, against one pod that counts its
/// connections: the refusals are answered (401 or 403, with a challenge that names the
/// reason, counted by reason) and the pod never hears of them.
#[tokio::test]
async fn a_token_opens_its_tenant_only_and_refusals_never_reach_a_pod() -> Result<()> {
    let dir = key_dir("door")?;
    let (good, stranger) = (Signer::new("k1")?, Signer::new("k1")?);
    write_jwks(&dir.join("jwks.json"), &[&good])?;
    let pod = FlakyPod::start(Some(0)).await?;
    let h = Harness::start(Options {
        replace: (0..4).map(|i| (i, pod.addr.to_string())).collect(),
        auth: Some(auth(dir.join("jwks.json"), None)?),
        ..Options::default()
    })
    .await?;
    let acme = good.token(json!("acme"), 600)?;
    let refused = [
        (upgrade("/ws/acme", ""), "401", "Bearer realm=\"wsrouter\""),
        (
            upgrade(
                &format!(
                    "/ws/acme?access_token={}",
                    good.token(json!("globex"), 600)?
                ),
                "",
            ),
            "403",
            "error=\"insufficient_scope\"",
        ),
        (
            upgrade(
                "/ws/acme",
                &format!(
                    "Authorization: Bearer {}\r\n",
                    good.token(json!("acme"), -60)?
                ),
            ),
            "401",
            "error_description=\"token expired\"",
        ),
        // Expired by 2 s, within the 5 s leeway: a plain request would pass, but a
        // socket past its token's end is not opened.
        (
            upgrade(
                "/ws/acme",
                &format!(
                    "Authorization: Bearer {}\r\n",
                    good.token(json!("acme"), -2)?
                ),
            ),
            "401",
            "error_description=\"token expired\"",
        ),
        (
            upgrade(
                "/ws/acme",
                &format!(
                    "Authorization: Bearer {}\r\n",
                    stranger.token(json!("acme"), 600)?
                ),
            ),
            "401",
            "error_description=\"bad signature\"",
        ),
        (
            upgrade("/ws/acme?access_token=not.a.token", ""),
            "401",
            "error_description=\"malformed token\"",
        ),
        // A plain request is checked the same way.
        (
            format!(
                "GET /ws/acme/negotiate?access_token={} HTTP/1.1\r\nHost: localhost\r\n\r\n",
                good.token(json!(["globex", "initech"]), 600)?
            )
            .into_bytes(),
            "403",
            "error=\"insufficient_scope\"",
        ),
    ];
    for (request, status, challenge) in &refused {
        let r = h.raw(request).await?;
        assert_eq!(r.status.to_string(), *status, "{}", r.head);
        let got = header(&r.head, "www-authenticate").unwrap_or_default();
        // The harness reads heads in lower case.
        assert!(got.contains(&challenge.to_lowercase()), "{got}");
        // No answer repeats the token.
        assert!(!r.head.contains(&acme) && !r.body.contains("eyJ"), "{r:?}");
    }
    assert_eq!(pod.accepted(), 0, "a refused request reached the pod");
    // The token in each of its places opens the socket; a list and a wildcard too.
    let subprotocol = format!(
        "Sec-WebSocket-Protocol: chat, base64url.bearer.authorization.k8s.io.{}\r\n",
        b64(acme.as_bytes())
    );
    let opened = [
        upgrade(&format!("/ws/acme?access_token={acme}"), ""),
        upgrade("/ws/acme", &format!("Authorization: Bearer {acme}\r\n")),
        upgrade("/ws/acme", &subprotocol),
        upgrade("/ws/acme", &format!("Cookie: access_token={acme}\r\n")),
        upgrade(
            &format!(
                "/ws/acme?access_token={}",
                good.token(json!(["globex", "acme"]), 600)?
            ),
            "",
        ),
        upgrade(
            &format!("/ws/acme?access_token={}", good.token(json!("*"), 600)?),
            "",
        ),
    ];
    for request in &opened {
        let head = h.raw_head(request).await?;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The token's subprotocol entry is never echoed back.
        assert!(!head.contains("bearer.authorization"), "{head}");
    }
    assert_eq!(pod.accepted(), opened.len());
    let (_, m) = scrape_metrics(&h).await?;
    for (reason, n) in [
        ("missing", 1.0),
        ("wrong_tenant", 2.0),
        ("expired", 2.0),
        ("signature", 1.0),
        ("malformed", 1.0),
        ("issuer", 0.0),
    ] {
        let key = format!("wsrouter_auth_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(m.get(&key).copied(), Some(n), "{key}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the pod is sent: the token out of the query and the offered subprotocols, the
/// verified claims in the router's own header (a client's copy of it thrown away).
#[tokio::test]
async fn the_pod_gets_the_claims_and_not_the_token() -> Result<()> {
    let (dir, signer) = keyed("claims")?;
    let backend = FakeBackend::start(FakeAnswer::Upgrade(good_101)).await?;
    let h = Harness::start(Options {
        replace: (0..4).map(|i| (i, backend.addr.to_string())).collect(),
        auth: Some(auth(dir.join("jwks.json"), Some("x-wsrouter-claims"))?),
        ..Options::default()
    })
    .await?;
    let token = signer.token(json!("acme"), 600)?;
    let protocols = format!(
        "Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.{}, chat\r\nX-Wsrouter-Claims: forged\r\nConnection: X-Wsrouter-Claims\r\n",
        b64(token.as_bytes())
    );
    let head = h
        .raw_head(&upgrade(
            &format!("/ws/acme?room=7&access_token={token}"),
            &protocols,
        ))
        .await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let heads = backend.heads();
    let sent = heads.first().map(String::as_str).unwrap_or_default();
    assert!(sent.starts_with("GET /ws/acme?room=7 HTTP/1.1"), "{sent}");
    assert!(
        !sent.contains(&token) && !sent.contains("bearer.authorization"),
        "{sent}"
    );
    assert_eq!(header(sent, "sec-websocket-protocol"), Some("chat"));
    let claims = header(sent, "x-wsrouter-claims").unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims)?)?;
    assert_eq!(claims["tenant"], json!("acme"));
    assert_eq!(claims["iss"], json!(ISSUER));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A socket whose token expires is closed with 1008 then, not before; its neighbour on
/// the same thread, with a longer token, carries on.
#[tokio::test]
async fn a_socket_ends_with_1008_when_its_token_expires() -> Result<()> {
    let (dir, signer) = keyed("expiry")?;
    let h = Harness::start(Options {
        auth: Some(auth(dir.join("jwks.json"), None)?),
        interval: Duration::from_secs(3600),
        ..Options::default()
    })
    .await?;
    let short = signer.token(json!("acme"), 3)?;
    let expires = now() + 3;
    let long = signer.token(json!("acme"), 600)?;
    let (mut dying, _) = h.ws_path(&format!("/ws/acme?access_token={short}")).await?;
    let (mut living, _) = h.ws_path(&format!("/ws/acme?access_token={long}")).await?;
    echo_text(&mut dying, "before").await?;
    assert_eq!(next_close_code(&mut dying).await?, Some(1008));
    // Not before its expiry (the clock is read in whole seconds).
    assert!(
        now() + 1 >= expires,
        "closed at {} for an expiry at {expires}",
        now()
    );
    echo_text(&mut living, "after").await?;
    // Counted once the relay has ended (after the close handshake).
    within(WAIT, "the close counted", async {
        loop {
            let (_, m) = scrape_metrics(&h).await?;
            let closed: f64 = m
                .iter()
                .filter(|(k, _)| k.starts_with("wsrouter_connections_closed_total"))
                .filter(|(k, _)| k.contains("reason=\"token_expired\""))
                .map(|(_, v)| v)
                .sum();
            if closed == 1.0 {
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Rotation under live sockets: a new key set renamed into place is taken at once, a
/// broken one is refused (the last good keys stay), a key rotated out opens nothing
/// more, and no socket drops.
#[tokio::test]
async fn a_rotated_key_set_is_taken_live_and_no_socket_drops() -> Result<()> {
    let dir = key_dir("rotation")?;
    let (old, new) = (Signer::new("old")?, Signer::new("new")?);
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[&old])?;
    let h = Harness::start(Options {
        auth: Some(auth(jwks.clone(), None)?),
        interval: Duration::from_secs(3600),
        ..Options::default()
    })
    .await?;
    let mut sockets = Vec::new();
    for i in 0..100 {
        let token = old.token(json!("*"), 600)?;
        let (ws, _) = h
            .ws_path(&format!("/ws/t-{i}?access_token={token}"))
            .await?;
        sockets.push(ws);
    }
    let with_new = upgrade(
        &format!("/ws/acme?access_token={}", new.token(json!("acme"), 600)?),
        "",
    );
    assert!(h.raw(&with_new).await?.status == 401);
    write_jwks(&jwks, &[&old, &new])?;
    let started = std::time::Instant::now();
    within(WAIT, "the new key taken", async {
        while !h.raw_head(&with_new).await?.starts_with("HTTP/1.1 101") {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await??;
    eprintln!(
        "new key accepted {:?} after the file changed",
        started.elapsed()
    );
    // A broken key set is refused, and the keys in use stay.
    write_file(&jwks, b"{\"keys\": [")?;
    within(WAIT, "the broken set refused", async {
        loop {
            let (_, m) = scrape_metrics(&h).await?;
            if m.get("wsrouter_jwks_reload_failures_total").copied() == Some(1.0) {
                return anyhow::Ok(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;
    assert!(h.raw_head(&with_new).await?.starts_with("HTTP/1.1 101"));
    // The old key rotated out: its tokens, verified (and remembered) before, are refused
    // from then on; the sockets they opened stay until their own expiry.
    let with_old = upgrade(
        &format!("/ws/acme?access_token={}", old.token(json!("acme"), 600)?),
        "",
    );
    assert!(h.raw_head(&with_old).await?.starts_with("HTTP/1.1 101"));
    write_jwks(&jwks, &[&new])?;
    within(WAIT, "the old key dropped", async {
        // Its head only: a 101 (before the swap) keeps the connection open.
        while !h.raw_head(&with_old).await?.starts_with("HTTP/1.1 401") {
            tokio::task::yield_now().await;
        }
        anyhow::Ok(())
    })
    .await??;
    for (i, ws) in sockets.iter_mut().enumerate() {
        echo_text(ws, &format!("still here {i}")).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
