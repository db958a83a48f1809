//! Portal test helpers: portal tokens minted with a key made at run time, a tiny HTTP/1.1 client
//! for `/api/v1`, a relay with two connectors and a state directory of its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use nowconnect_relay::{start, RelayConfig, RelayHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::idp::{self, Idp, Key, ISSUER};
use super::{eventually, T};

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("nc-portal-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Claims of a portal token for `sub` with `amr`; `extra` is merged in (roles, agent_id, ...).
pub fn portal_claims(sub: &str, amr: &[&str], extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": "nowconnect-portal",
        "sub": sub,
        "amr": amr,
        "iat": idp::now(),
        "exp": idp::now() + 600,
    });
    if let (Some(obj), Value::Object(more)) = (c.as_object_mut(), extra) {
        obj.extend(more);
    }
    c
}

pub fn admin_token(key: &Key, amr: &[&str]) -> String {
    idp::mint(
        key,
        &portal_claims("alice", amr, json!({"roles": ["viewer", "admin"]})),
    )
}

pub fn agent_token(key: &Key, agent_id: &str) -> String {
    idp::mint(key, &idp::claims(agent_id))
}

/// Relay config: listeners `ldap` (connector addomain) and `pg` (connector db), JWT agents,
/// state in `state_dir`.
pub fn portal_yaml(jwks_url: &str, state_dir: &std::path::Path, extra: &str) -> String {
    format!(
        "listeners:\n  - name: ldap\n    bind: 127.0.0.1:0\n    connector: addomain\n\
         \x20 - name: pg\n    bind: 127.0.0.1:0\n    connector: db\n\
         tunnel:\n  host: 127.0.0.1\n  port: 0\n\
         security:\n  jwks_url: {jwks_url}\n  issuer: {ISSUER}\n  auth_failure_limit: 100000\n\
         state_dir: {}\n{extra}",
        state_dir.display()
    )
}

pub async fn portal_relay(idp: &Idp, state_dir: &std::path::Path, extra: &str) -> RelayHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("NC_TEST_LOG").unwrap_or_else(|_| "off".into()),
        ))
        .with_test_writer()
        .try_init();
    let cfg = RelayConfig::from_yaml_str(&portal_yaml(&idp.url(), state_dir, extra))
        .expect("valid config");
    let r = start(cfg).await.expect("relay starts");
    eventually("JWKS loaded (/readyz)", || r.is_ready()).await;
    r
}

/// One portal answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn array(&self) -> &Vec<Value> {
        self.body
            .as_array()
            .unwrap_or_else(|| panic!("expected an array, got {} {}", self.status, self.body))
    }
}

/// `method path` on the portal with an optional Bearer token and JSON body.
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "PATCH" || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut raw))
        .await
        .expect("portal answered in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
    };
    Resp {
        status,
        headers,
        body,
    }
}
