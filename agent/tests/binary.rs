//! The `nowconnect-agent` binary: exit codes, one-line config errors, SIGTERM.

use std::process::{Command, Stdio};

use nowconnect_shared::Frame;
use nowconnect_testkit::mock_relay::{MockRelay, Select, STEP};
use nowconnect_testkit::target;
use nowconnect_testkit::wait::within;

const BIN: &str = env!("CARGO_BIN_EXE_nowconnect-agent");

fn agent(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_clear().envs(env.iter().copied());
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The agent with one connector `x` to `target` over `ws://` to `url`, health on a free
/// port, a clean environment, stdio to null (callers may pipe stderr).
fn tunnel_agent(url: &str, target: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.args([
        "--url",
        url,
        "--allow-insecure-ws",
        "--agent-id",
        "premise-01",
        "--connectors",
        "x",
        "--target",
        target,
        "--health-host",
        "127.0.0.1",
        "--health-port",
        "0",
    ])
    .env_clear()
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    c
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn bad_configuration_exits_2_with_one_line() {
    let out = agent(&[], &[]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("nowconnect-agent: invalid configuration:"),
        "{err}"
    );
    for key in [
        "tunnel.url",
        "tunnel.agent_id",
        "tunnel.exported_connectors",
    ] {
        assert!(err.contains(key), "{key} named: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn ws_url_is_refused_at_start_unless_allowed() {
    let env = [
        ("NC_AGENT_URL", "ws://127.0.0.1:1/tunnel"),
        ("NC_AGENT_ID", "a"),
        ("NC_CONNECTORS", "x"),
        ("NC_TARGET_x_HOST", "127.0.0.1"),
        ("NC_TARGET_x_PORT", "9"),
    ];
    let out = agent(&["--check"], &env).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ws://") && err.contains("allow_insecure_ws"),
        "{err}"
    );

    let mut allowed = env.to_vec();
    allowed.push(("NC_ALLOW_INSECURE_WS", "true"));
    let out = agent(&["--check"], &allowed).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

#[test]
fn missing_config_file_exits_2() {
    let out = agent(&["--config", "/nonexistent/premise.yaml"], &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/premise.yaml"), "{err}");
}

#[tokio::test]
async fn sigterm_closes_the_tunnel_and_exits_0() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let url = relay.url();
    let target = format!("x={}", echo.addr);
    let mut child = tunnel_agent(&url, &target)
        .args(["--log-format", "json"])
        .spawn()
        .expect("spawn");
    let mut conn = relay.accept(Select::Negotiate).await;
    match conn.recv().await {
        Frame::Hello(h) => assert_eq!(h.connectors, vec!["x".to_string()]),
        other => panic!("expected HELLO, got {other:?}"),
    }
    conn.send(Frame::HelloAck).await;
    sigterm(&child);
    assert!(conn.try_recv().await.is_none(), "Close frame on SIGTERM");
    let status = within("agent exit", STEP, child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// A stop that comes while the agent starts (systemd's stop right after start) is still the
/// graceful one: SIGTERM at the agent's first log line, exit 0 after "stopping".
#[tokio::test]
async fn sigterm_at_the_first_log_line_is_a_graceful_stop() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let url = relay.url();
    let target = format!("x={}", echo.addr);
    let mut child = tunnel_agent(&url, &target)
        .env("NC_LOG_LEVEL", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = within("the first log line", STEP, lines.next_line())
        .await
        .expect("stderr")
        .expect("a log line");
    sigterm(&child);
    let mut rest = Vec::new();
    while let Some(l) = within("agent log", STEP, lines.next_line())
        .await
        .expect("stderr")
    {
        rest.push(l);
    }
    let status = within("agent exit", STEP, child.wait())
        .await
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "first line {first:?}, then {rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
}
