//! The real agent against a relay that checks tokens (no dev bypass): an Ed25519 key made at run
//! time, the JWKS in a local file (`file://`), tokens signed here and handed to the agent through
//! `tunnel.auth.token_file`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nowconnect_relay::RelayHandle;
use nowconnect_testkit::health::{probe as health, wait_health};
use nowconnect_testkit::idp::{claims, ed_key, jwks_file, mint, Key};
use nowconnect_testkit::io::wait_closed;
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent_yaml, listener, relay_yaml, start_agent, start_relay};

/// A signing key, its JWKS file, and token files for the agent.
struct Idp {
    dir: TempDir,
    key: Key,
    jwks_url: String,
}

impl Idp {
    fn new(name: &str) -> Idp {
        let dir = TempDir::new(&format!("e2e-auth-{name}"));
        let key = ed_key("e2e");
        let jwks_url = jwks_file(dir.path(), &[&key]);
        Idp { dir, key, jwks_url }
    }

    /// A signed token for `agent_id`, written to a file the agent reads.
    fn token_file(&self, name: &str, agent_id: &str) -> PathBuf {
        self.dir.write(
            &format!("{name}.jwt"),
            &format!("{}\n", mint(&self.key, &claims(agent_id))),
        )
    }
}

async fn jwt_relay(idp: &Idp, connectors: &[&str]) -> RelayHandle {
    let yaml = relay_yaml(connectors).replace(
        "security:\n  dev_bypass: true\n",
        &format!("security:\n  jwks_url: {}\n", idp.jwks_url),
    );
    start_relay(&yaml).await
}

fn agent_with_token(
    relay: &RelayHandle,
    agent_id: &str,
    token: &Path,
    targets: &[(&str, std::net::SocketAddr)],
) -> String {
    agent_yaml(relay.tunnel_addr(), "v2", targets)
        .replace("agent_id: premise-01", &format!("agent_id: {agent_id}"))
        .replacen(
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
    let echo = target::echo().await;
    let relay = jwt_relay(&idp, &["echo"]).await;
    let token = idp.token_file("valid", "premise-01");
    let agent = start_agent(&agent_with_token(
        &relay,
        "premise-01",
        &token,
        &[("echo", echo.addr)],
    ))
    .await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    let mut s = net::connect(listener(&relay, "echo")).await;
    s.write_all(b"through an authenticated tunnel")
        .await
        .expect("write");
    let mut buf = [0u8; 31];
    within("the echo", Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"through an authenticated tunnel");
    assert!(relay
        .metrics_text()
        .contains("nowconnect_agent_auth_successes_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_bad_tokens_never_get_ready() {
    let idp = Idp::new("bad");
    let echo = target::echo().await;
    let relay = jwt_relay(&idp, &["echo"]).await;

    // A token for another agent_id: the upgrade succeeds, the HELLO is refused.
    let other = idp.token_file("other", "premise-02");
    let a = start_agent(&agent_with_token(
        &relay,
        "premise-01",
        &other,
        &[("echo", echo.addr)],
    ))
    .await;
    // A token file with garbage in it: the upgrade is refused.
    let garbage = idp.dir.write("garbage.jwt", "not-a-token\n");
    let b = start_agent(&agent_with_token(
        &relay,
        "premise-03",
        &garbage,
        &[("echo", echo.addr)],
    ))
    .await;

    wait_for("both refusals counted", DEADLINE, || {
        failures(&relay, "agent_id_mismatch") >= 1 && failures(&relay, "malformed_token") >= 1
    })
    .await;
    assert_eq!(health(a.health_addr()).await, "OK\n");
    assert_eq!(health(b.health_addr()).await, "OK\n");
    assert_eq!(relay.agents_for("echo"), 0);
    // A client finds nobody behind the listener (a reset may even beat connect() itself).
    if let Ok(mut s) = tokio::net::TcpStream::connect(listener(&relay, "echo")).await {
        wait_closed(&mut s, Duration::from_secs(5)).await;
    }
}
