//! TLS termination: PEM files into a rustls server config (TLS 1.2 and 1.3, ALPN
//! `http/1.1` only, since WebSocket upgrades here are HTTP/1.1), and dev certificates
//! made at run time with rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::data::tls::tickets::SharedTicketer;
use thiserror::Error;

/// The TLS config new handshakes use: the listener loads it per handshake, the
/// certificate watcher stores a reloaded one.
pub(crate) type TlsSlot = Arc<ArcSwap<ServerConfig>>;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading certificate file {path}")]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("reading private key file {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate and key do not make a usable TLS config")]
    Config(#[source] rustls::Error),
    #[error("generating a dev certificate")]
    Generate(#[source] rcgen::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a PEM certificate chain and private key and builds the server config.
pub fn load_server_config(
    cert: &Path,
    key: &Path,
    options: &TlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = read_pem(cert, key)?;
    server_config(chain, key, options)
}

/// Builds the config for a new certificate and key with everything else as `current`
/// has it (key exchange, versions, ALPN), for hot reloads.
pub(crate) fn reload_server_config(
    cert: &Path,
    key: &Path,
    current: &ServerConfig,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = read_pem(cert, key)?;
    let mut config = config_with(current.crypto_provider().clone(), chain, key)?;
    if let Some(c) = Arc::get_mut(&mut config) {
        c.alpn_protocols = current.alpn_protocols.clone();
        // The same ticketer: tickets issued before the new certificate still open.
        c.ticketer = current.ticketer.clone();
    }
    Ok(config)
}

type Pem = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn read_pem(cert: &Path, key: &Path) -> Result<Pem, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    Ok((chain, key_der))
}

/// Key-exchange groups the server may agree on, most preferred first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyExchange {
    /// Hybrid post-quantum X25519 + ML-KEM-768.
    #[value(name = "x25519mlkem768")]
    X25519Mlkem768,
    X25519,
    Secp256r1,
    Secp384r1,
}

impl KeyExchange {
    fn group(self) -> &'static dyn rustls::crypto::SupportedKxGroup {
        use rustls::crypto::aws_lc_rs::kx_group;
        match self {
            Self::X25519Mlkem768 => kx_group::X25519MLKEM768,
            Self::X25519 => kx_group::X25519,
            Self::Secp256r1 => kx_group::SECP256R1,
            Self::Secp384r1 => kx_group::SECP384R1,
        }
    }
}

/// TLS settings beside the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Empty: rustls' defaults (X25519, P-256, P-384 and the X25519MLKEM768 hybrid).
    pub key_exchange: Vec<KeyExchange>,
    /// Offer `h2` (first) beside `http/1.1` in ALPN: WebSockets over HTTP/2 (RFC 8441).
    pub http2: bool,
    /// Session tickets under keys every replica shares (`--tls-ticket-keys`); `None`:
    /// rustls' own resumption, this replica only.
    pub tickets: Option<Arc<SharedTicketer>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            key_exchange: Vec::new(),
            http2: true,
            tickets: None,
        }
    }
}

/// The ALPN protocols offered, most preferred first.
fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

/// Builds the server config from DER material.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    options: &TlsOptions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !options.key_exchange.is_empty() {
        provider.kx_groups = options.key_exchange.iter().map(|k| k.group()).collect();
    }
    let mut config = config_with(Arc::new(provider), chain, key)?;
    // Built here, not shared yet.
    if let Some(c) = Arc::get_mut(&mut config) {
        c.alpn_protocols = alpn(options.http2);
        if let Some(t) = &options.tickets {
            c.ticketer = t.clone();
        }
    }
    Ok(config)
}

fn config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A throwaway CA and a server certificate it signed, made in memory.
pub struct DevCert {
    /// The CA certificate (PEM), for clients to trust.
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    /// The server certificate (PEM) followed by nothing else; the CA is not sent.
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// The server's private key (PEM, PKCS#8).
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl DevCert {
    /// An ECDSA P-256 CA and a server certificate for `hosts` (DNS names or IP addresses).
    pub fn generate(hosts: &[&str]) -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wsrouter dev CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Generate)?;

        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(TlsError::Generate)?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("localhost"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(TlsError::Generate)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`: the names a
    /// Kubernetes TLS Secret uses, so the directory can be mounted or turned into one.
    pub fn write_to(&self, dir: &Path) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let write = |name: &str, body: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .and_then(|mut f| f.write_all(body.as_bytes()))
                .map_err(|source| TlsError::Write { path, source })
        };
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write("ca.crt", &self.ca_pem, 0o644)?;
        write("tls.crt", &self.cert_pem, 0o644)?;
        write("tls.key", &self.key_pem, 0o600)
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// The server config presenting this certificate.
    pub fn server_config(&self, options: &TlsOptions) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(vec![self.cert_der.clone()], self.key_der(), options)
    }

    /// A client config that trusts only this CA; for tests and tools.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        // The CA was made a moment ago by rcgen; a failure here is a bug, not input.
        let config = client_config(std::slice::from_ref(&self.ca_der), rustls::DEFAULT_VERSIONS)
            .expect("a freshly generated CA makes a client config");
        Arc::new(config)
    }
}

/// A client config trusting only `cas`, for `versions`, offering ALPN `http/1.1`: what
/// tests and tools use to talk to the router.
pub fn client_config(
    cas: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(TlsError::Config)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_round_trip() {
        let dev = DevCert::generate(&["localhost", "127.0.0.1"]).unwrap();
        let dir = std::env::temp_dir().join(format!("wsrouter-tls-test-{}", std::process::id()));
        dev.write_to(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let config = load_server_config(&cert, &key, &TlsOptions::default()).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let h1 = TlsOptions {
            http2: false,
            ..TlsOptions::default()
        };
        let config = load_server_config(&cert, &key, &h1).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        // Wrong files give errors that name the file.
        let err =
            load_server_config(&dir.join("missing.crt"), &key, &TlsOptions::default()).unwrap_err();
        assert!(matches!(err, TlsError::ReadCert { .. }), "{err:?}");
        let err = load_server_config(&key, &key, &TlsOptions::default()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        let err = load_server_config(&cert, &cert, &TlsOptions::default()).unwrap_err();
        assert!(matches!(err, TlsError::ReadKey { .. }), "{err:?}");
        // A key that does not match the certificate is refused up front.
        let other = DevCert::generate(&["localhost"]).unwrap();
        std::fs::write(&key, &other.key_pem).unwrap();
        let err = load_server_config(&cert, &key, &TlsOptions::default()).unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_exchange_pinned_or_default() {
        let dev = DevCert::generate(&["localhost"]).unwrap();
        let names = |o: &TlsOptions| -> Vec<rustls::NamedGroup> {
            let c = dev.server_config(o).unwrap();
            c.crypto_provider()
                .kx_groups
                .iter()
                .map(|g| g.name())
                .collect()
        };
        let default = names(&TlsOptions::default());
        let provider: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(default, provider);
        assert!(default.contains(&rustls::NamedGroup::X25519MLKEM768));
        assert!(default.contains(&rustls::NamedGroup::X25519));
        let pinned = TlsOptions {
            key_exchange: vec![KeyExchange::X25519],
            http2: false,
            tickets: None,
        };
        assert_eq!(names(&pinned), vec![rustls::NamedGroup::X25519]);
        // A hot reload keeps what the running config has.
        let dir = std::env::temp_dir().join(format!("wsrouter-kx-test-{}", std::process::id()));
        dev.write_to(&dir).unwrap();
        let running = dev.server_config(&pinned).unwrap();
        let reloaded =
            reload_server_config(&dir.join("tls.crt"), &dir.join("tls.key"), &running).unwrap();
        let groups: Vec<_> = reloaded
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(groups, vec![rustls::NamedGroup::X25519]);
        assert_eq!(reloaded.alpn_protocols, running.alpn_protocols);
        std::fs::remove_dir_all(&dir).unwrap();
        let two = TlsOptions {
            key_exchange: vec![KeyExchange::Secp256r1, KeyExchange::Secp384r1],
            ..TlsOptions::default()
        };
        assert_eq!(
            names(&two),
            vec![rustls::NamedGroup::secp256r1, rustls::NamedGroup::secp384r1]
        );
    }
}
