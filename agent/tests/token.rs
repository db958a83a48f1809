//! Tokens: an expired token is reported as such and the file is re-read at every connect; a
//! token with `exp` is refreshed by opening a new tunnel before the old one closes (health stays
//! READY); tokens and proxy passwords never reach a log line or an error.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::health::probe as health;
use nowconnect_testkit::idp::{now as unix_now, unsigned};
use nowconnect_testkit::io::read_head;
use nowconnect_testkit::log::{Capture, Format};
use nowconnect_testkit::mock_relay::{MockRelay, Select, STEP};
use nowconnect_testkit::proxy::FakeProxy;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::{replace as rotate, TempDir};
use nowconnect_testkit::wait::{wait_for, wait_line, DEADLINE};
use nowconnect_testkit::yaml;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// An unsigned JWT-shaped token with `exp` (the agent reads `exp`, a relay would verify).
fn jwt(exp: u64, sub: &str) -> String {
    unsigned(&json!({"sub": sub, "exp": exp}))
}

/// Agent YAML for `url` with one echo connector; `tunnel_extra` lines go under `tunnel:`,
/// `extra` is top-level YAML.
fn yaml(url: &str, echo: SocketAddr, tunnel_extra: &str, extra: &str) -> String {
    yaml::agent_with(url, "v2", &[("echo", echo)], tunnel_extra, extra)
}

async fn start(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("valid agent config");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's last error is one line containing every one of `parts`.
async fn wait_error(agent: &AgentHandle, parts: &[&str]) -> String {
    wait_line(DEADLINE, parts, || agent.last_error()).await
}

#[tokio::test]
async fn expired_token_is_reported_and_the_file_is_reread() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let dir = TempDir::new("expired");
    let tok = dir.write("token", &jwt(unix_now() - 100, "old"));
    let agent = start(&yaml(
        &relay.url(),
        echo.addr,
        &format!("  auth: {{token_file: '{}'}}\n", tok.display()),
        "",
    ))
    .await;
    let line = wait_error(&agent, &["expired", "s ago"]).await;
    assert!(
        line.starts_with(&format!("the token in {} expired", tok.display())),
        "{line}"
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");

    // A fresh token in the file is picked up by the next attempt.
    let fresh = jwt(unix_now() + 3600, "new");
    rotate(&tok, &fresh);
    let conn = relay.accept(Select::Negotiate).await;
    assert_eq!(
        conn.upgrade.authorization.as_deref(),
        Some(format!("Bearer {fresh}").as_str())
    );
}

#[tokio::test]
async fn token_refresh_opens_the_new_tunnel_before_closing_the_old() {
    let capture = Capture::global(Format::Text);
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let dir = TempDir::new("refresh");
    let exp1 = unix_now() + 5;
    let t1 = jwt(exp1, "first");
    let tok = dir.write("token", &t1);
    // Refresh 4 s before exp: due about a second after the first connect.
    let agent = start(&yaml(
        &relay.url(),
        echo.addr,
        &format!(
            "  auth: {{token_file: '{}', refresh_before_exp_sec: 4}}\n",
            tok.display()
        ),
        "",
    ))
    .await;
    let mut c1 = relay.accept(Select::Negotiate).await;
    assert_eq!(
        c1.upgrade.authorization.as_deref(),
        Some(format!("Bearer {t1}").as_str())
    );
    assert!(matches!(c1.recv().await, Frame::Hello(_)));
    c1.send(Frame::HelloAck).await;
    wait_for("READY", DEADLINE, || agent.is_ready()).await;
    // A stream on the first tunnel, to be kept across the switch.
    c1.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    c1.echo_roundtrip(1, b"before").await;

    // The refresh comes due while the file still holds the same token: the agent waits for a
    // new one instead of reconnecting with the old.
    wait_for("the agent notices the file is unchanged", DEADLINE, || {
        capture.text().contains("the token file still holds it")
    })
    .await;
    assert_eq!(agent.connects(), 1);

    // From here READY must hold throughout the switch: the agent counts every loss of READY
    // (every moment the health port would answer OK), however short.
    assert!(agent.is_ready());
    let lost_before = agent.ready_lost();

    let t2 = jwt(unix_now() + 3600, "second");
    rotate(&tok, &t2);
    let mut c2 = relay.accept(Select::Negotiate).await;
    assert!(
        unix_now() < exp1,
        "the new tunnel comes before the old token expires"
    );
    assert_eq!(
        c2.upgrade.authorization.as_deref(),
        Some(format!("Bearer {t2}").as_str()),
        "the new tunnel carries the file's new token"
    );
    assert!(matches!(c2.recv().await, Frame::Hello(_)));
    // Hold HELLO_ACK back a little (a deliberate pause, not a wait for anything): an agent that
    // closed the old tunnel once the new one was dialled would lose READY meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c2.send(Frame::HelloAck).await;
    wait_for("second tunnel counted", DEADLINE, || agent.connects() == 2).await;

    // New streams go to the new tunnel; the old one still carries its stream...
    c2.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    c2.echo_roundtrip(1, b"on the new tunnel").await;
    c1.echo_roundtrip(1, b"old stream still flows").await;
    // ...until that stream ends; then the agent closes the old tunnel.
    c1.send(Frame::Fin {
        id: 1,
        dir: nowconnect_shared::Dir::C2a,
    })
    .await;
    loop {
        match c1.try_recv().await {
            None => break,
            Some(Frame::Fin { .. } | Frame::Window { .. } | Frame::Data { .. }) => {}
            Some(other) => panic!("unexpected frame on the old tunnel: {other:?}"),
        }
    }
    assert_eq!(
        agent.ready_lost(),
        lost_before,
        "READY was lost during the refresh"
    );
    assert!(agent.is_ready());
    assert_eq!(health(agent.health_addr()).await, "READY\n");
    c2.echo_roundtrip(1, b"still fine").await;
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    let capture = Capture::global(Format::Text);
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let dir = TempDir::new("secrets");
    let token = jwt(unix_now() + 3600, "very-secret-subject");
    let tok = dir.write("token", &token);

    // The relay refuses the token.
    let agent = start(&yaml(
        &relay.url(),
        echo.addr,
        &format!("  auth: {{token_file: '{}'}}\n", tok.display()),
        "",
    ))
    .await;
    let mut sock = relay.accept_tcp().await;
    let head = read_head(&mut sock, STEP).await;
    assert!(
        head.contains(&format!("Bearer {token}")),
        "sent to the relay"
    );
    sock.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\ninvalid token")
        .await
        .expect("answer");
    let e1 = wait_error(&agent, &["HTTP 401"]).await;
    drop(agent);

    // A proxy rejects the password.
    let proxy = FakeProxy::start(
        None,
        relay.addr,
        Some("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n"),
    )
    .await;
    let agent = start(&yaml(
        &relay.url(),
        echo.addr,
        &format!("  auth: {{token_file: '{}'}}\n", tok.display()),
        &format!(
            "proxy: {{https_proxy: 'http://alice:hunter2-pw@127.0.0.1:{}'}}\n",
            proxy.addr.port()
        ),
    ))
    .await;
    let e2 = wait_error(&agent, &["rejected the credentials of user `alice`", "407"]).await;
    drop(agent);

    let basic = base64::engine::general_purpose::STANDARD.encode("alice:hunter2-pw");
    let logs = capture.text();
    assert!(
        logs.contains("HTTP 401") && logs.contains("HTTP 407"),
        "{logs}"
    );
    for text in [&logs, &e1, &e2] {
        for secret in [token.as_str(), "very-secret", "hunter2", basic.as_str()] {
            assert!(!text.contains(secret), "`{secret}` leaked into: {text}");
        }
    }
}
