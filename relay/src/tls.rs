//! In-process TLS for `/tunnel` (rustls, ring provider), from PEM files.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Builds the acceptor. Errors name the config key and file; they are the operator's to fix.
/// `mesh_roots`: `/mesh` shares this server, so a client certificate of the mesh CA is asked
/// for (optional: agents have none; the `/mesh` handler requires it).
pub(crate) fn acceptor(
    cfg: &TlsConfig,
    mesh_roots: Option<Arc<RootCertStore>>,
) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "tunnel.tls.cert_file: cannot read {}: {e}",
                cfg.cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tunnel.tls.cert_file: no certificate in {}",
            cfg.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| {
        format!(
            "tunnel.tls.key_file: cannot read a private key from {}: {e}",
            cfg.key_file.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tunnel.tls: {e}"))?;
    let builder = match (&cfg.client_ca, mesh_roots) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("ha.mesh.tls.ca_bundle: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (Some(_), Some(_)) => {
            return Err(
                "tunnel.tls.client_ca: with agent client certificates, /mesh needs a \
                 listener of its own (set ha.mesh.listen)"
                    .to_owned(),
            )
        }
        (Some(path), None) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!("tunnel.tls.client_ca: cannot read {}: {e}", path.display())
                })?;
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| format!("tunnel.tls.client_ca: {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tunnel.tls.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tunnel.tls: certificate and key do not match: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A server's TLS as it is now: a reload swaps in an acceptor with the new certificate and key;
/// handshakes after the swap use it, connections already up keep theirs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LiveAcceptor(Arc<arc_swap::ArcSwap<TlsAcceptor>>);

impl std::fmt::Debug for LiveAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveAcceptor")
    }
}

impl LiveAcceptor {
    pub fn new(acceptor: TlsAcceptor) -> LiveAcceptor {
        LiveAcceptor(Arc::new(arc_swap::ArcSwap::from_pointee(acceptor)))
    }

    /// The acceptor for the next handshake.
    pub fn current(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.0.load())
    }

    pub fn replace(&self, acceptor: TlsAcceptor) {
        self.0.store(Arc::new(acceptor));
    }
}

/// The tunnel server's TLS and what rebuilding it needs.
#[derive(Debug, Clone)]
pub(crate) struct TunnelTls {
    pub live: LiveAcceptor,
    /// The mesh CA when `/mesh` shares the tunnel server (asked of clients, see [`acceptor`]).
    pub mesh_roots: Option<Arc<RootCertStore>>,
}
