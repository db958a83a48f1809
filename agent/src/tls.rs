//! TLS client settings for the tunnel (and for an `https://` proxy): which roots we trust, the
//! optional client certificate, and a certificate verifier that names the presented issuer when
//! it is not trusted.
//!
//! Roots: the system store (rustls-native-certs), or the compiled-in webpki-roots when the
//! system store is empty or unreadable (common on appliances); plus the PEM bundle of
//! `proxy.ca_bundle` / `NC_CA_BUNDLE`. With `proxy.ca_bundle_only` only the bundle is trusted
//! (private PKI). Built once at start-up, so a bad file stops the agent with a clear message
//! instead of failing every reconnect. Trust decisions are rustls/webpki's; this module only
//! chooses the roots and words the errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore};

use crate::x509;

/// Where the "system" roots come from. Tests stand in a store of their own.
#[derive(Clone, Default)]
pub enum RootSource {
    /// The operating system's store via rustls-native-certs (webpki-roots if it is empty).
    #[default]
    Native,
    /// These certificates play the system store (webpki-roots if the list is empty).
    Fixed(Vec<CertificateDer<'static>>),
}

impl fmt::Debug for RootSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSource::Native => f.write_str("Native"),
            RootSource::Fixed(v) => write!(f, "Fixed({} certificates)", v.len()),
        }
    }
}

/// A client certificate chain and its key, as PEM files (mTLS to the relay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// What to trust and what to present.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Extra roots (PEM, one or many certificates).
    pub ca_bundle: Option<PathBuf>,
    /// Trust only `ca_bundle` (validation guarantees it is set).
    pub ca_bundle_only: bool,
    pub client_cert: Option<ClientCert>,
    pub system_roots: RootSource,
}

/// Why the TLS settings could not be built. We (our configuration) caused all of these.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("proxy.ca_bundle (NC_CA_BUNDLE) {path}: {message}")]
    Bundle { path: String, message: String },
    #[error(
        "proxy.ca_bundle_only (NC_CA_BUNDLE_ONLY) is set but no proxy.ca_bundle (NC_CA_BUNDLE) is"
    )]
    BundleOnlyWithoutBundle,
    #[error("tunnel.auth.client_cert_file (NC_CLIENT_CERT) {path}: {message}")]
    ClientCert { path: String, message: String },
    #[error("tunnel.auth.client_key_file (NC_CLIENT_KEY) {path}: {message}")]
    ClientKey { path: String, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client configurations: one for the relay (with the client certificate, if any) and one
/// for an `https://` proxy (same roots, no client certificate: it is the relay's credential).
#[derive(Debug, Clone)]
pub struct ClientConfigs {
    pub relay: Arc<ClientConfig>,
    pub proxy: Arc<ClientConfig>,
}

/// The relay's certificate chain ends in a CA we do not trust; `issuer` names it.
#[derive(Debug, thiserror::Error)]
#[error("certificate not trusted: issued by `{issuer}`")]
pub struct Untrusted {
    pub issuer: String,
}

/// Builds both client configurations (ring provider, AES-128-GCM first, TLS 1.2/1.3, ALPN http/1.1).
pub fn client_configs(s: &TlsSettings) -> Result<ClientConfigs, TlsSetupError> {
    let roots = Arc::new(roots(s)?);
    let provider = Arc::new(provider());
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = Arc::new(NamingVerifier { inner });
    let builder = || -> Result<_, rustls::Error> {
        Ok(ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone()))
    };
    let mut relay = match &s.client_cert {
        None => builder()?.with_no_client_auth(),
        Some(cc) => {
            let (chain, key) = load_client_cert(cc)?;
            builder()?
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError::ClientKey {
                    path: cc.key_file.display().to_string(),
                    message: format!("does not fit the certificate: {e}"),
                })?
        }
    };
    relay.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut proxy = builder()?.with_no_client_auth();
    proxy.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ClientConfigs {
        relay: Arc::new(relay),
        proxy: Arc::new(proxy),
    })
}

/// ring's provider with AES-128-GCM offered first (every suite still offered). The relay follows
/// the client's order, and every tunnel byte is sealed once and opened once: AES-128 runs 10
/// rounds to AES-256's 14 (~15% less CPU per byte here). TLS 1.3 makes AES-128-GCM mandatory
/// (RFC 8446 9.1), and the X25519/P-256 key exchange gives 128-bit security either way.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    p
}

/// The trusted roots for these settings.
pub fn roots(s: &TlsSettings) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    if s.ca_bundle_only {
        if s.ca_bundle.is_none() {
            return Err(TlsSetupError::BundleOnlyWithoutBundle);
        }
    } else {
        let (system, errors) = match &s.system_roots {
            RootSource::Native => {
                let r = rustls_native_certs::load_native_certs();
                (r.certs, r.errors.len())
            }
            RootSource::Fixed(v) => (v.clone(), 0),
        };
        let (added, _ignored) = roots.add_parsable_certificates(system);
        if added == 0 {
            tracing::info!(
                errors,
                "system certificate store is empty or unreadable; using the compiled-in web roots"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    if let Some(path) = &s.ca_bundle {
        let n = add_bundle(&mut roots, path)?;
        tracing::info!(path = %path.display(), certificates = n, only = s.ca_bundle_only, "added CA bundle");
    }
    Ok(roots)
}

/// Adds every certificate of a PEM file; at least one must be valid.
fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsSetupError> {
    let err = |message: String| TlsSetupError::Bundle {
        path: path.display().to_string(),
        message,
    };
    let certs = read_pem_certs(path).map_err(err)?;
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(err(format!(
            "none of its {ignored} certificates could be used"
        )));
    }
    Ok(added)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&data) {
        certs.push(item.map_err(|e| format!("invalid PEM: {e}"))?);
    }
    if certs.is_empty() {
        return Err("contains no PEM certificate".into());
    }
    Ok(certs)
}

fn load_client_cert(
    cc: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let chain = read_pem_certs(&cc.cert_file).map_err(|message| TlsSetupError::ClientCert {
        path: cc.cert_file.display().to_string(),
        message,
    })?;
    // The key's error text never includes key material.
    let key = PrivateKeyDer::from_pem_file(&cc.key_file).map_err(|e| TlsSetupError::ClientKey {
        path: cc.key_file.display().to_string(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    Ok((chain, key))
}

/// webpki verification, with an unknown issuer reported by name.
#[derive(Debug)]
struct NamingVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    // The top of the presented chain is what a trusted root would have to sign.
                    let top = intermediates.last().unwrap_or(end_entity);
                    let issuer =
                        x509::issuer(top).unwrap_or_else(|| "(unreadable issuer name)".into());
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(Untrusted { issuer }),
                    )))
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nowconnect_testkit::pki::Ca;
    use nowconnect_testkit::temp::TempDir;

    #[test]
    fn offers_aes_128_gcm_first_and_keeps_every_suite() {
        let cfg = client_configs(&TlsSettings::default()).expect("configs");
        let offered: Vec<_> = cfg
            .relay
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            offered.first(),
            Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        let mut all: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = offered.clone();
        all.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, all);
    }

    #[test]
    fn builds_with_native_roots() {
        assert!(client_configs(&TlsSettings::default()).is_ok());
    }

    #[test]
    fn empty_system_store_falls_back_to_web_roots() {
        let s = TlsSettings {
            system_roots: RootSource::Fixed(vec![]),
            ..TlsSettings::default()
        };
        assert_eq!(
            roots(&s).expect("roots").len(),
            webpki_roots::TLS_SERVER_ROOTS.len()
        );
        // A non-empty system store is used as is, without the web roots.
        let a = Ca::new("Stand-in public root");
        let s = TlsSettings {
            system_roots: RootSource::Fixed(vec![a.der().clone()]),
            ..TlsSettings::default()
        };
        assert_eq!(roots(&s).expect("roots").len(), 1);
    }

    #[test]
    fn bundle_adds_every_certificate_and_bundle_only_drops_the_rest() {
        let (a, b, public) = (Ca::new("A"), Ca::new("B"), Ca::new("Public"));
        let dir = TempDir::new("agent-tls-unit");
        let path = dir.write("two.pem", &format!("{}{}", a.pem(), b.pem()));
        let system = RootSource::Fixed(vec![public.der().clone()]);
        let with = TlsSettings {
            ca_bundle: Some(path.clone()),
            system_roots: system.clone(),
            ..TlsSettings::default()
        };
        assert_eq!(roots(&with).expect("roots").len(), 3);
        let only = TlsSettings {
            ca_bundle_only: true,
            ..with
        };
        assert_eq!(roots(&only).expect("roots").len(), 2);
        let no_bundle = TlsSettings {
            ca_bundle_only: true,
            system_roots: system,
            ..TlsSettings::default()
        };
        assert!(matches!(
            roots(&no_bundle),
            Err(TlsSetupError::BundleOnlyWithoutBundle)
        ));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = TempDir::new("agent-tls-unit");
        let empty = dir.write("empty.pem", "not a certificate\n");
        let s = TlsSettings {
            ca_bundle: Some(empty.clone()),
            ..TlsSettings::default()
        };
        let e = client_configs(&s).expect_err("no certificate").to_string();
        assert!(
            e.contains("NC_CA_BUNDLE") && e.contains("no PEM certificate"),
            "{e}"
        );
        let s = TlsSettings {
            ca_bundle: Some(dir.join("missing.pem")),
            ..TlsSettings::default()
        };
        let e = client_configs(&s).expect_err("missing").to_string();
        assert!(e.contains("cannot read"), "{e}");

        let a = Ca::new("Client");
        let cert = a.write(dir.path(), "client.pem");
        let s = TlsSettings {
            client_cert: Some(ClientCert {
                cert_file: cert.clone(),
                key_file: empty,
            }),
            ..TlsSettings::default()
        };
        let e = client_configs(&s).expect_err("bad key").to_string();
        assert!(e.contains("client_key_file"), "{e}");
        let keyfile = dir.write("client.key", &a.key_pem());
        let s = TlsSettings {
            client_cert: Some(ClientCert {
                cert_file: cert,
                key_file: keyfile,
            }),
            ..TlsSettings::default()
        };
        assert!(client_configs(&s).is_ok());
    }
}
