//! A private CA and a relay certificate for `localhost` / `127.0.0.1`, made at run time.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM files written by [`write`].
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA the agent trusts (`proxy.ca_bundle`).
    pub ca: PathBuf,
    /// The relay's certificate (`tunnel.tls.cert_file`).
    pub cert: PathBuf,
    /// Its private key (`tunnel.tls.key_file`).
    pub key: PathBuf,
    /// The CA certificate (DER), for clients in this process.
    pub ca_der: Vec<u8>,
}

/// Generates the CA and the server certificate (ECDSA P-256) into `dir`.
pub fn write(dir: &Path) -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate().context("CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca.distinguished_name
        .push(DnType::CommonName, "nowconnect-bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).context("CA certificate")?;

    let key = KeyPair::generate().context("server key")?;
    // rcgen turns "127.0.0.1" into an IP SAN and "localhost" into a DNS SAN.
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .context("server params")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .context("server certificate")?;

    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("relay.pem"),
        key: dir.join("relay.key"),
        ca_der: ca_cert.der().to_vec(),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).context("writing ca.pem")?;
    std::fs::write(&pki.cert, cert.pem()).context("writing relay.pem")?;
    std::fs::write(&pki.key, key.serialize_pem()).context("writing relay.key")?;
    Ok(pki)
}
