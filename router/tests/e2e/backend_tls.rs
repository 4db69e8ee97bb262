//! TLS to the pods (`--backend-tls`): echo backends serving TLS with certificates made
//! at run time; sockets and plain requests reach them verified, a pod that asks for a
//! client certificate (mTLS) gets the router's, and a pod the CA does not vouch for
//! gets nothing (502).

use std::sync::Arc;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use router::{BackendTls, DevCert};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::harness::*;

/// A CA and one client certificate (`clientAuth`) it signed, as PEM: the router's
/// identity for pods that ask for one.
struct ClientIdentity {
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn client_identity() -> Result<ClientIdentity> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["wsrouter".to_owned()])?;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &Issuer::from_params(&ca, &ca_key))?;
    Ok(ClientIdentity {
        ca_der: ca_cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The pods' TLS: `pods`' certificate, and with `clients` a demand for a client
/// certificate signed by that CA.
fn pod_tls(pods: &DevCert, clients: Option<&ClientIdentity>) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(c.ca_der.clone())?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(pods.key_der().secret_der().to_vec().into());
    let mut config = builder.with_single_cert(vec![pods.cert_der.clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A router over four echo pods serving `server`, speaking TLS to them with `client`.
async fn over_tls_pods(server: Arc<rustls::ServerConfig>, client: BackendTls) -> Result<Harness> {
    Harness::start(Options {
        backend_tls: Some(Arc::new(client)),
        backend_tls_server: Some(server),
        interval: std::time::Duration::from_secs(3600),
        ..Options::default()
    })
    .await
}

/// Plain `GET` of `path` through the router: its status.
async fn plain_status(h: &Harness, path: &str) -> Result<u16> {
    let r = h
        .raw(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    Ok(r.status)
}

/// Verified TLS to every pod (named by its address, which its certificate holds):
/// sockets echo and plain requests are answered.
#[tokio::test]
async fn sockets_and_requests_reach_pods_over_verified_tls() -> Result<()> {
    let pods = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let client = BackendTls::from_pem(pods.ca_pem.as_bytes(), "ca.crt", None, None)?;
    let h = over_tls_pods(pod_tls(&pods, None)?, client).await?;
    for ns in ["acme", "globex", "initech", "umbrella"] {
        let mut ws = h.ws(ns).await?;
        echo_text(&mut ws, &format!("hello {ns}")).await?;
        assert_eq!(plain_status(&h, &format!("/ws/{ns}/stats")).await? / 100, 2);
    }
    Ok(())
}

/// A pod that asks for a client certificate gets the router's; without one, or with a
/// CA that does not vouch for the pod, nothing reaches it: 502, as for any backend that
/// does not answer as a pod does.
#[tokio::test]
async fn mutual_tls_and_an_unknown_ca() -> Result<()> {
    let pods = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let me = client_identity()?;
    let with_cert = BackendTls::from_pem(
        pods.ca_pem.as_bytes(),
        "ca.crt",
        Some((me.cert_pem.as_bytes(), me.key_pem.as_bytes(), "client.crt")),
        None,
    )?;
    let h = over_tls_pods(pod_tls(&pods, Some(&me))?, with_cert).await?;
    let mut ws = h.ws("acme").await?;
    echo_text(&mut ws, "mutual").await?;
    assert_eq!(plain_status(&h, "/ws/acme/stats").await? / 100, 2);

    let without = BackendTls::from_pem(pods.ca_pem.as_bytes(), "ca.crt", None, None)?;
    let h = over_tls_pods(pod_tls(&pods, Some(&me))?, without).await?;
    let head = h.raw_head(&upgrade_request("/ws/acme")).await?;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");

    let other_ca = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let wrong = BackendTls::from_pem(other_ca.ca_pem.as_bytes(), "ca.crt", None, None)?;
    let h = over_tls_pods(pod_tls(&pods, None)?, wrong).await?;
    let head = h.raw_head(&upgrade_request("/ws/acme")).await?;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(plain_status(&h, "/ws/acme/stats").await?, 502);
    Ok(())
}

/// `--backend-server-name`: every pod is asked for one name, which its certificate
/// must hold (a pod's certificate for `localhost` only, reached by address).
#[tokio::test]
async fn one_server_name_for_every_pod() -> Result<()> {
    let pods = DevCert::generate(&["localhost"])?;
    let by_name = BackendTls::from_pem(pods.ca_pem.as_bytes(), "ca.crt", None, Some("localhost"))?;
    let h = over_tls_pods(pod_tls(&pods, None)?, by_name).await?;
    let mut ws = h.ws("acme").await?;
    echo_text(&mut ws, "named").await?;
    // By address alone, the same certificate does not do.
    let by_address = BackendTls::from_pem(pods.ca_pem.as_bytes(), "ca.crt", None, None)?;
    let h = over_tls_pods(pod_tls(&pods, None)?, by_address).await?;
    let head = h.raw_head(&upgrade_request("/ws/acme")).await?;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    Ok(())
}

/// A pod that takes the connection and never finishes the TLS handshake holds the
/// upgrade no longer than `--backend-timeout`: 504, as for a pod that never answers.
#[tokio::test]
async fn a_pod_stuck_in_its_handshake_is_a_timeout() -> Result<()> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?;
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let pods = DevCert::generate(&["localhost", "127.0.0.1"])?;
    let client = BackendTls::from_pem(pods.ca_pem.as_bytes(), "ca.crt", None, None)?;
    let mut limits = limits();
    limits.backend_timeout = std::time::Duration::from_millis(500);
    let h = Harness::start(Options {
        backend_tls: Some(Arc::new(client)),
        replace: (0..4).map(|i| (i, addr.to_string())).collect(),
        limits,
        ..Options::default()
    })
    .await?;
    let started = std::time::Instant::now();
    let head = h.raw_head(&upgrade_request("/ws/acme")).await?;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    eprintln!("504 after {:?}", started.elapsed());
    Ok(())
}
