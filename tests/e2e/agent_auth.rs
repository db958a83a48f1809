//! The real agent against a relay that checks tokens (no dev bypass): an Ed25519 key made at run
//! time with the `openssl` command, the JWKS in a local file (`file://`), tokens signed here and
//! handed to the agent through `tunnel.auth.token_file`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use nowconnect_relay::RelayHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command is needed to make test keys");
    assert!(out.status.success(), "openssl {args:?} failed");
    out.stdout
}

/// An Ed25519 key (PEM file) and its JWKS.
struct Idp {
    dir: PathBuf,
    key: PathBuf,
}

impl Idp {
    fn new(name: &str) -> Idp {
        let dir = std::env::temp_dir().join(format!("nc-e2e-auth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let key = dir.join("key.pem");
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().expect("utf-8"),
        ]);
        // SubjectPublicKeyInfo DER of an Ed25519 key: a 12-byte prefix, then the 32-byte key.
        let spki = openssl(&[
            "pkey",
            "-in",
            key.to_str().expect("utf-8"),
            "-pubout",
            "-outform",
            "DER",
        ]);
        assert_eq!(spki.len(), 44);
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": "e2e", "x": b64(&spki[12..]),
        }]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("write jwks");
        Idp { dir, key }
    }

    fn jwks_url(&self) -> String {
        format!("file://{}", self.dir.join("jwks.json").display())
    }

    /// A signed token for `agent_id`, written to a file the agent reads.
    fn token_file(&self, name: &str, agent_id: &str) -> PathBuf {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({"alg": "EdDSA", "kid": "e2e", "typ": "JWT"});
        let claims = serde_json::json!({
            "aud": "nowconnect", "sub": agent_id, "agent_id": agent_id,
            "iat": now, "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let input_file = self.dir.join(format!("{name}.in"));
        std::fs::write(&input_file, &input).expect("write");
        let sig = openssl(&[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            self.key.to_str().expect("utf-8"),
            "-in",
            input_file.to_str().expect("utf-8"),
        ]);
        assert_eq!(sig.len(), 64);
        let path = self.dir.join(format!("{name}.jwt"));
        std::fs::write(&path, format!("{input}.{}\n", b64(&sig))).expect("write token");
        path
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn jwt_relay(idp: &Idp, connectors: &[&str]) -> RelayHandle {
    let yaml = relay_yaml(0, connectors).replace(
        "security:\n  dev_bypass: true\n",
        &format!("security:\n  jwks_url: {}\n", idp.jwks_url()),
    );
    start_relay(&yaml).await
}

fn agent_with_token(
    relay: &RelayHandle,
    agent_id: &str,
    token: &Path,
    targets: &[(&str, std::net::SocketAddr)],
) -> String {
    agent_yaml(relay.tunnel_addr(), agent_id, "v2", targets).replacen(
        "tunnel:\n",
        &format!("tunnel:\n  auth:\n    token_file: {}\n", token.display()),
        1,
    )
}

fn failures(relay: &RelayHandle, reason: &str) -> u64 {
    let prefix = format!("nowconnect_agent_auth_failures_total{{reason=\"{reason}\"}}");
    relay
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_valid_token_gets_ready_and_carries_traffic() {
    let idp = Idp::new("valid");
    let (echo, _t) = echo_server().await;
    let relay = jwt_relay(&idp, &["echo"]).await;
    let token = idp.token_file("valid", "premise-01");
    let agent = start_agent(&agent_with_token(
        &relay,
        "premise-01",
        &token,
        &[("echo", echo)],
    ))
    .await;
    wait_health(agent.health_addr(), "READY\n").await;
    let mut s = TcpStream::connect(listener(&relay, "echo"))
        .await
        .expect("connect");
    s.write_all(b"through an authenticated tunnel")
        .await
        .expect("write");
    let mut buf = [0u8; 31];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"through an authenticated tunnel");
    assert!(relay
        .metrics_text()
        .contains("nowconnect_agent_auth_successes_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_bad_tokens_never_get_ready() {
    let idp = Idp::new("bad");
    let (echo, _t) = echo_server().await;
    let relay = jwt_relay(&idp, &["echo"]).await;

    // A token for another agent_id: the upgrade succeeds, the HELLO is refused.
    let other = idp.token_file("other", "premise-02");
    let a = start_agent(&agent_with_token(
        &relay,
        "premise-01",
        &other,
        &[("echo", echo)],
    ))
    .await;
    // A token file with garbage in it: the upgrade is refused.
    let garbage = idp.dir.join("garbage.jwt");
    std::fs::write(&garbage, "not-a-token\n").expect("write");
    let b = start_agent(&agent_with_token(
        &relay,
        "premise-03",
        &garbage,
        &[("echo", echo)],
    ))
    .await;

    wait_until("both refusals counted", DEADLINE, || async {
        failures(&relay, "agent_id_mismatch") >= 1 && failures(&relay, "malformed_token") >= 1
    })
    .await;
    assert_eq!(health(a.health_addr()).await, "OK\n");
    assert_eq!(health(b.health_addr()).await, "OK\n");
    assert_eq!(relay.agents_for("echo"), 0);
    // A client finds nobody behind the listener (a reset may even beat connect() itself).
    if let Ok(mut s) = TcpStream::connect(listener(&relay, "echo")).await {
        wait_closed(&mut s, Duration::from_secs(5)).await;
    }
}
