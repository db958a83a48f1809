//! TLS client settings for the tunnel: which roots we trust.
//!
//! Roots: the system store (rustls-native-certs), plus the compiled-in webpki-roots when the
//! system store is empty or unreadable (common on appliances), plus the PEM bundle of
//! `proxy.ca_bundle` / `NC_CA_BUNDLE` when set. Built once at start-up, so a bad bundle stops the
//! agent with a clear message instead of failing every reconnect.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS settings could not be built. We (our configuration) caused all of these.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("proxy.ca_bundle (NC_CA_BUNDLE) {path}: {message}")]
    Bundle { path: String, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client configuration (ring provider, TLS 1.2/1.3, ALPN http/1.1 for the upgrade).
pub fn client_config(ca_bundle: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::info!(
            errors = native.errors.len(),
            "system certificate store is empty or unreadable; using the compiled-in web roots"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_bundle {
        let n = add_bundle(&mut roots, path)?;
        tracing::info!(path = %path.display(), certificates = n, "added CA bundle");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Adds every certificate of a PEM file; at least one must be valid.
fn add_bundle(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsSetupError> {
    let err = |message: String| TlsSetupError::Bundle {
        path: path.display().to_string(),
        message,
    };
    let data = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&data) {
        certs.push(item.map_err(|e| err(format!("invalid PEM: {e}")))?);
    }
    if certs.is_empty() {
        return Err(err("contains no PEM certificate".into()));
    }
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(err(format!(
            "none of its {ignored} certificates could be used"
        )));
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_without_bundle() {
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn bad_bundle_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("nc-agent-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(Some(&empty))
            .expect_err("no certificate")
            .to_string();
        assert!(
            e.contains("NC_CA_BUNDLE") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = dir.join("missing.pem");
        let e = client_config(Some(&missing))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
