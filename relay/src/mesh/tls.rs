//! Mutual TLS between relays: the mesh CA, this relay's certificate (server and client), and
//! the rule that a peer's certificate names its `replica_id` (a DNS SAN).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::MeshTls;

/// What the mesh needs of `ha.mesh.tls`, built once at start.
#[derive(Clone)]
pub(crate) struct MeshCrypto {
    /// Dials peers: verifies them against the mesh CA, presents our certificate.
    pub connector: TlsConnector,
    /// Serves `ha.mesh.listen`: a client certificate of the mesh CA is required.
    pub acceptor: TlsAcceptor,
    /// Checks a `/mesh` caller's chain against the mesh CA whatever server it came through.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The mesh CA, for a shared server that asks for (optional) client certificates.
    pub roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for MeshCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshCrypto")
    }
}

fn certs(path: &std::path::Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    if v.is_empty() {
        return Err(format!("{key}: no certificate in {}", path.display()));
    }
    Ok(v)
}

impl MeshCrypto {
    /// Errors name the `ha.mesh.tls` key and file.
    pub fn load(cfg: &MeshTls) -> Result<MeshCrypto, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certs(&cfg.ca_bundle, "ha.mesh.tls.ca_bundle")? {
            roots
                .add(ca)
                .map_err(|e| format!("ha.mesh.tls.ca_bundle: {}: {e}", cfg.ca_bundle.display()))?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&cfg.cert_file, "ha.mesh.tls.cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| {
            format!(
                "ha.mesh.tls.key_file: cannot read a private key from {}: {e}",
                cfg.key_file.display()
            )
        })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("ha.mesh.tls.ca_bundle: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("ha.mesh.tls: {e}"))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("ha.mesh.tls: certificate and key do not match: {e}"))?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("ha.mesh.tls.ca_bundle: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("ha.mesh.tls: {e}"))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("ha.mesh.tls: certificate and key do not match: {e}"))?;
        Ok(MeshCrypto {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            verifier,
            roots,
        })
    }

    /// Whether `chain` (leaf first) is a valid client certificate of the mesh CA that names
    /// `replica_id` as a DNS SAN.
    pub fn check_peer(
        &self,
        chain: &[CertificateDer<'static>],
        replica_id: &str,
    ) -> Result<(), &'static str> {
        let (leaf, intermediates) = chain.split_first().ok_or("no client certificate")?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|_| "certificate not issued by the mesh CA")?;
        names(leaf, replica_id)
    }
}

/// The leaf names `replica_id` (DNS SAN; CN is not looked at).
pub(crate) fn names(leaf: &CertificateDer<'_>, replica_id: &str) -> Result<(), &'static str> {
    let name = ServerName::try_from(replica_id).map_err(|_| "replica_id is not a DNS name")?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|_| "certificate does not parse")?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| "certificate does not name the replica_id")
}
