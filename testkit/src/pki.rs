//! A PKI made at run time with rcgen: certificate authorities, leaf certificates for DNS names
//! and IP addresses (usable by servers and clients), PEM files, and rustls acceptors and
//! connectors built on them. Keys are ECDSA P-256 (rcgen's default), fresh for every call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rcgen::DnType;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The crypto provider every config here uses (the one the relay and the agent use).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A leaf certificate (server and client use) with its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    /// The private key, for a rustls config.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `<stem>.pem` (certificate) and `<stem>.key` (key) into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        (
            crate::temp::write(dir, &format!("{stem}.pem"), &self.cert_pem),
            crate::temp::write(dir, &format!("{stem}.key"), &self.key_pem),
        )
    }
}

impl Ca {
    /// A CA whose subject is `CN=<cn>`.
    pub fn new(cn: &str) -> Ca {
        Ca::with_subject(&[(DnType::CommonName, cn)])
    }

    /// A CA with the subject `dn`, in order (e.g. `O=Corp, CN=Corp CA`).
    pub fn with_subject(dn: &[(DnType, &str)]) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        let cert = p.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA's private key as PEM (for tests of key-file handling).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Writes the CA certificate to `dir/name`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        crate::temp::write(dir, name, &self.pem())
    }

    /// A leaf for `names`: each a DNS name or an IP literal (which becomes an IP SAN). The
    /// first name is also the subject's CN.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der())
            .expect("CA certificate in a root store");
        roots
    }

    /// A TLS server config for a fresh leaf for `names`; with `client_ca`, client certificates
    /// from it are required.
    pub fn server_config(&self, names: &[&str], client_ca: Option<&Ca>) -> ServerConfig {
        let leaf = self.issue(names);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(v)
            }
        };
        builder
            .with_single_cert(vec![leaf.der.clone()], leaf.key())
            .expect("server config")
    }

    /// [`server_config`](Ca::server_config) as an acceptor.
    pub fn acceptor(&self, names: &[&str], client_ca: Option<&Ca>) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.server_config(names, client_ca)))
    }

    /// A TLS client config trusting only this CA, without a client certificate.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    /// A TLS client config trusting only this CA that presents `cert` (another CA's leaf, a
    /// leaf for another name: whatever the test means to send).
    pub fn client_config_with(&self, cert: &Leaf) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![cert.der.clone()], cert.key())
            .expect("client certificate and key")
    }

    /// [`client_config`](Ca::client_config) as a connector.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(Arc::new(self.client_config()))
    }
}

/// `name` as a rustls server name (DNS name or IP literal).
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("a valid server name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_trusting_the_ca_reaches_a_server_by_name_and_by_ip() {
        let ca = Ca::new("Test CA");
        let acceptor = ca.acceptor(&["localhost", "127.0.0.1"], None);
        for name in ["localhost", "127.0.0.1"] {
            let (c, s) = tokio::io::duplex(16 * 1024);
            let server = tokio::spawn({
                let acceptor = acceptor.clone();
                async move {
                    let mut tls = acceptor.accept(s).await.expect("server handshake");
                    tls.write_all(b"hi").await.expect("write");
                    tls.shutdown().await.expect("shutdown");
                }
            });
            let mut tls = ca
                .connector()
                .connect(server_name(name), c)
                .await
                .expect("client handshake");
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"hi");
            server.await.expect("server task");
        }
        // Another CA's client does not trust it.
        let (c, s) = tokio::io::duplex(16 * 1024);
        let server = tokio::spawn(async move { acceptor.accept(s).await.is_err() });
        let other = Ca::new("Other CA");
        assert!(other
            .connector()
            .connect(server_name("localhost"), c)
            .await
            .is_err());
        assert!(server.await.expect("server task"));
    }
}
