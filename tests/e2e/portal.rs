//! The relay's portal API with the real agent: `DELETE /api/v1/sessions/{cid}` closes the
//! client's socket within a second and the agent closes its target socket. The relay admits the
//! agent with the dev bypass; portal tokens are checked against their own JWKS
//! (`portal.jwks_url`, a file) with an Ed25519 key made here by the `openssl` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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

/// A portal signing key, its JWKS file, and an admin token with a second factor.
struct PortalIdp {
    dir: PathBuf,
    token: String,
}

impl PortalIdp {
    fn new() -> PortalIdp {
        let dir = std::env::temp_dir().join(format!("nc-e2e-portal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let key = dir.join("key.pem");
        let key_s = key.to_str().expect("utf-8");
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", key_s]);
        let spki = openssl(&["pkey", "-in", key_s, "-pubout", "-outform", "DER"]);
        assert_eq!(spki.len(), 44);
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": "ops", "x": b64(&spki[12..]),
        }]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("write jwks");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({"alg": "EdDSA", "kid": "ops", "typ": "JWT"});
        let claims = serde_json::json!({
            "aud": "nowconnect-portal", "sub": "ops-1", "roles": ["admin"], "amr": ["pwd", "otp"],
            "iat": now, "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let input_file = dir.join("token.in");
        std::fs::write(&input_file, &input).expect("write");
        let sig = openssl(&[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            key_s,
            "-in",
            input_file.to_str().expect("utf-8"),
        ]);
        assert_eq!(sig.len(), 64);
        PortalIdp {
            token: format!("{input}.{}", b64(&sig)),
            dir,
        }
    }

    fn jwks_url(&self) -> String {
        format!("file://{}", self.dir.join("jwks.json").display())
    }
}

impl Drop for PortalIdp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `method path` on the portal; returns the status and the JSON body.
async fn api(addr: SocketAddr, method: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect portal");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut raw))
        .await
        .expect("portal answered")
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http answer");
    let status = head[9..12].parse().expect("status");
    (status, serde_json::from_str(body).expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_session_closes_the_client_and_the_agents_target_socket() {
    let idp = PortalIdp::new();
    // The target hands each accepted socket to the test, which watches it close.
    let (tx, mut targets) = mpsc::unbounded_channel::<TcpStream>();
    let (target, _t) = serve(move |s| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(s);
        }
    })
    .await;
    let yaml = relay_yaml(0, &["app"]) + &format!("portal:\n  jwks_url: {}\n", idp.jwks_url());
    let relay = start_relay(&yaml).await;
    let _agent = ready_agent(&relay, "v2", &[("app", target)]).await;

    let mut client = TcpStream::connect(listener(&relay, "app"))
        .await
        .expect("connect");
    client.write_all(b"hello").await.expect("write");
    let mut at_target = tokio::time::timeout(DEADLINE, targets.recv())
        .await
        .expect("target reached in time")
        .expect("target socket");
    let mut buf = [0u8; 5];
    at_target
        .read_exact(&mut buf)
        .await
        .expect("bytes reach the target");
    assert_eq!(&buf, b"hello");

    let (status, sessions) = api(relay.portal_addr(), "GET", "/api/v1/sessions", &idp.token).await;
    assert_eq!(status, 200, "{sessions}");
    let rows = sessions.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{sessions}");
    assert_eq!(rows[0]["agent_id"], "premise-01");
    assert_eq!(rows[0]["bytes_c2a"], 5);
    let cid = rows[0]["cid"].as_str().expect("cid").to_owned();

    let (status, body) = api(
        relay.portal_addr(),
        "DELETE",
        &format!("/api/v1/sessions/{cid}"),
        &idp.token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let client_closed = wait_closed(&mut client, Duration::from_secs(1)).await;
    assert!(client_closed < Duration::from_secs(1));
    // The agent got the RST and closed its socket to the target.
    wait_closed(&mut at_target, Duration::from_secs(5)).await;
    let (_, audit) = api(
        relay.portal_addr(),
        "GET",
        "/api/v1/audit?action=session_terminated",
        &idp.token,
    )
    .await;
    assert_eq!(audit[0]["actor"], "portal:ops-1");
    assert_eq!(audit[0]["resource"], format!("session:{cid}"));
}
