//! A complete system on loopback: relay, agent and a sample echo target, wired together.
//!
//! Nothing leaves 127.0.0.1, the relay runs with the development auth bypass (loopback only) and
//! the agent dials it over plain `ws://`, which is allowed here for the same reason.
//!
//! The dashboard (`/ui/`) is real: the demo makes a signing key at run time, gives the relay its
//! JWKS as a file, and mints one admin token for the URL it prints (demo only: a real relay's
//! operators sign in with their IdP, see docs/dashboard.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_relay::{RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running demo; dropping it stops everything.
#[derive(Debug)]
pub struct Demo {
    pub relay: RelayHandle,
    pub agent: AgentHandle,
    /// Where the sample echo target listens (the agent's side of the tunnel).
    pub target: SocketAddr,
    /// Where a client connects (the relay's listener for connector `echo`).
    pub client: SocketAddr,
    /// The dashboard, signed in as the demo's admin (the token is in the URL's fragment,
    /// which the browser never sends to the server).
    pub dashboard_url: String,
    /// The admin token in that URL.
    pub admin_token: String,
    target_task: JoinHandle<()>,
    /// Holds the relay's portal JWKS file.
    dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.target_task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh P-256 key: its JWKS document and a token for the demo's admin, valid 12 hours.
fn demo_admin() -> anyhow::Result<(String, String)> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let point = key.public_key_raw();
    if point.len() != 65 {
        bail!("unexpected P-256 public key encoding");
    }
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "demo",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "sub": "demo-admin", "aud": "nowconnect-portal", "roles": ["admin"],
        "amr": ["pwd", "otp"], "iat": now, "exp": now + 12 * 3600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo".to_owned());
    let signing = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
    let token = jsonwebtoken::encode(&header, &claims, &signing)?;
    Ok((jwks.to_string(), token))
}

/// Starts the three parts; `listen_port` is the relay listener's port (0 = any free port).
pub async fn start(listen_port: u16) -> anyhow::Result<Demo> {
    let (target, target_task) = echo_target().await?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nowconnect-demo-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).context("creating the demo's temporary directory")?;
    let (jwks, admin_token) = demo_admin().context("making the dashboard's demo key")?;
    let jwks_file = dir.join("portal-jwks.json");
    std::fs::write(&jwks_file, jwks).context("writing the portal JWKS")?;
    let relay_yaml = format!(
        "tunnel:\n  host: 127.0.0.1\n  port: 0\nsecurity:\n  dev_bypass: true\n\
         portal:\n  jwks_url: file://{}\n\
         listeners:\n  - name: echo\n    bind: 127.0.0.1:{listen_port}\n    connector: echo\n",
        jwks_file.display()
    );
    let relay = nowconnect_relay::start(RelayConfig::from_yaml_str(&relay_yaml)?)
        .await
        .context("starting the relay")?;
    let agent_yaml = format!(
        "tunnel:\n  url: ws://{}/tunnel\n  agent_id: demo-agent\n  allow_insecure_ws: true\n  \
         exported_connectors: [echo]\nhealth:\n  host: 127.0.0.1\n  port: 0\n\
         targets:\n  echo:\n    host: 127.0.0.1\n    port: {}\n",
        relay.tunnel_addr(),
        target.port()
    );
    let agent = nowconnect_agent::start(AgentConfig::from_yaml_str(&agent_yaml)?)
        .await
        .context("starting the agent")?;
    let client = relay
        .listener_addr("echo")
        .context("relay has no `echo` listener")?;
    let dashboard_url = format!("http://{}/ui/#token={admin_token}", relay.tunnel_addr());
    let demo = Demo {
        relay,
        agent,
        target,
        client,
        dashboard_url,
        admin_token,
        target_task,
        dir,
    };
    demo.wait_ready(Duration::from_secs(10)).await?;
    Ok(demo)
}

impl Demo {
    /// Waits until the agent's health port says READY.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        loop {
            if health(self.agent.health_addr()).await.as_deref() == Some("READY\n") {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("the agent did not become READY within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The dashboard answers and takes the admin token: `GET /ui/` and `GET /api/v1/me`.
    pub async fn dashboard_check(&self) -> anyhow::Result<()> {
        let addr = self.relay.tunnel_addr();
        let page = http_get(addr, "/ui/", None).await?;
        if !page.starts_with("HTTP/1.1 200")
            || !page
                .to_ascii_lowercase()
                .contains("content-security-policy")
        {
            bail!("GET /ui/ did not answer the page");
        }
        let me = http_get(addr, "/api/v1/me", Some(&self.admin_token)).await?;
        if !me.starts_with("HTTP/1.1 200") || !me.contains("\"admin\":true") {
            bail!("the demo's admin token was not accepted by /api/v1/me");
        }
        Ok(())
    }

    /// Sends `msg` through the tunnel and checks it comes back; returns the round-trip time.
    pub async fn self_check(&self, msg: &[u8]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut s = TcpStream::connect(self.client)
            .await
            .context("connecting to the relay listener")?;
        s.set_nodelay(true)?;
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .context("no echo within 5 s")??;
        if back != msg {
            bail!("the echo differs from what was sent");
        }
        Ok(start.elapsed())
    }
}

/// One HTTP/1.1 GET on loopback; the whole answer (the demo has no HTTP client crate).
async fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .context("no HTTP answer within 5 s")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn health(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// The sample target: echoes every byte back, half-closes after the client's EOF.
pub async fn echo_target() -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the echo target")?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}
