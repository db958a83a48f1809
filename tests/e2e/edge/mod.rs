//! The agent's edge transport against the real relay: a real forward proxy (tinyproxy) with and
//! without Basic auth, NO_PROXY, the relay's in-process TLS with a private CA (bundle, bundle
//! only), mTLS with the relay's `client_ca`, and token rotation with traffic flowing.

mod mtls;
mod proxy;
mod tinyproxy;
mod tls;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nowconnect_agent::config::Layer;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_relay::RelayHandle;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A certificate authority made for one test.
pub struct Ca {
    /// `cert.der()` is the DER a stand-in system store takes (`RootSource::Fixed`).
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.self_signed(&key).expect("ca cert");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names`, usable by a server and a client.
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
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A fresh directory for one test's files.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nc-e2e-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

/// Relay YAML (dev bypass) with one listener per connector; `tls` adds `tunnel.tls` lines.
pub fn relay_yaml_tls(connectors: &[&str], tls: Option<(&Path, &Path, Option<&Path>)>) -> String {
    let y = relay_yaml(0, connectors);
    match tls {
        None => y,
        Some((cert, key, client_ca)) => {
            let mut t = format!(
                "tunnel:\n  tls:\n    cert_file: '{}'\n    key_file: '{}'\n",
                cert.display(),
                key.display()
            );
            if let Some(ca) = client_ca {
                t.push_str(&format!("    client_ca: '{}'\n", ca.display()));
            }
            y.replacen("tunnel:\n", &t, 1)
        }
    }
}

/// Agent YAML for `url` (ws:// or wss://) with an echo connector; `extra` is appended.
pub fn agent_yaml_url(url: &str, echo: SocketAddr, extra: &str) -> String {
    let y = agent_yaml(
        ([127, 0, 0, 1], 9).into(),
        "premise-01",
        "v2",
        &[("echo", echo)],
    );
    format!(
        "{}limits: {{reconnect_initial_ms: 50, reconnect_max_ms: 300, handshake_timeout_ms: 5000}}\n{extra}",
        y.replace("url: ws://127.0.0.1:9/tunnel", &format!("url: {url}"))
    )
}

/// Loads agent config from YAML plus an environment given as pairs (never the process env).
pub fn agent_config(yaml: &str, env: &[(&str, &str)], dir: &Path) -> AgentConfig {
    let path = write(dir, "premise.yaml", yaml);
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AgentConfig::load(Layer::default(), Some(&path), &env).expect("agent config")
}

pub async fn start(cfg: AgentConfig) -> AgentHandle {
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's last error contains every one of `parts`; returns the line.
pub async fn wait_error(agent: &AgentHandle, parts: &[&str]) -> String {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let last = agent.last_error();
        if let Some(e) = &last {
            if parts.iter().all(|p| e.contains(p)) {
                assert!(!e.contains('\n'), "one line: {e}");
                return e.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no error containing {parts:?}; last error: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client connection through the relay's listener `name` to the echo target: `data` must
/// come back byte-exact.
pub async fn echo_through(relay: &RelayHandle, name: &str, data: &[u8]) {
    let mut s = TcpStream::connect(listener(relay, name))
        .await
        .expect("connect to the relay listener");
    s.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, data);
}
