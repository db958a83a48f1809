//! systemd's notify protocol, seen from a NOTIFY_SOCKET datagram socket: no READY=1 before
//! HELLO_ACK, READY=1 after it, WATCHDOG=1 pings at half of WATCHDOG_USEC, STATUS lines with the
//! tunnel state (never the token), STOPPING=1 last.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use nowconnect_agent::{AgentConfig, Notifier};
use nowconnect_shared::Frame;
use nowconnect_testkit::health::probe as health;
use nowconnect_testkit::idp::{now as unix_now, unsigned};
use nowconnect_testkit::mock_relay::{MockRelay, Select, STEP};
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::within;
use nowconnect_testkit::yaml;
use serde_json::json;
use tokio::net::UnixDatagram;

const BIN: &str = env!("CARGO_BIN_EXE_nowconnect-agent");
/// 200 ms: the agent pings every 100 ms.
const WATCHDOG_USEC: &str = "200000";

/// The systemd end of NOTIFY_SOCKET: every datagram received, in order.
struct NotifySocket {
    sock: UnixDatagram,
    got: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> (NotifySocket, String) {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let path = path.to_str().expect("utf-8 temp path").to_owned();
        (
            NotifySocket {
                sock,
                got: Vec::new(),
            },
            path,
        )
    }

    /// Receives until a datagram satisfies `pred`; returns its index in `got`.
    async fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> usize {
        within(what, STEP, async {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = self.sock.recv(&mut buf).await.expect("notify recv");
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = pred(&msg);
                self.got.push(msg);
                if hit {
                    return self.got.len() - 1;
                }
            }
        })
        .await
    }

    /// Everything already queued (the sender has stopped).
    fn drain(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.sock.try_recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    fn statuses(&self) -> Vec<&str> {
        self.got
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
            .collect()
    }
}

fn has(msg: &str, assignment: &str) -> bool {
    msg.lines().any(|l| l == assignment)
}

fn count(msgs: &[String], assignment: &str) -> usize {
    msgs.iter().filter(|m| has(m, assignment)).count()
}

#[tokio::test]
async fn ready_after_hello_ack_then_watchdog_and_status_without_the_token() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let dir = TempDir::new("notify");
    let token = unsigned(&json!({"sub": "notify-secret-subject", "exp": unix_now() + 3600}));
    let tok = dir.write("token", &token);
    let (mut systemd, path) = NotifySocket::bind(dir.path());
    let cfg = yaml::agent_with(
        &relay.url(),
        "v2",
        &[("echo", echo.addr)],
        &format!("  auth: {{token_file: '{}'}}\n", tok.display()),
        "",
    );
    let cfg = AgentConfig::from_yaml_str(&cfg).expect("config");
    let env: BTreeMap<String, String> = [
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let notify = Notifier::from_env(&env);
    let agent = nowconnect_agent::start_with(cfg, notify)
        .await
        .expect("agent starts");

    let mut conn = relay.accept(Select::Negotiate).await;
    assert_eq!(
        conn.upgrade.authorization.as_deref(),
        Some(format!("Bearer {token}").as_str()),
        "the token is in use"
    );
    assert!(matches!(conn.recv().await, Frame::Hello(_)));
    // Connected and HELLO sent, no HELLO_ACK yet: two pings prove the supervisor has run its
    // loop meanwhile, and it has not said READY=1.
    let first = systemd
        .until("a watchdog ping", |m| has(m, "WATCHDOG=1"))
        .await;
    systemd
        .until("a second ping", |m| has(m, "WATCHDOG=1"))
        .await;
    assert!(first <= 1, "pings start at once: {:?}", systemd.got);
    assert_eq!(count(&systemd.got, "READY=1"), 0, "{:?}", systemd.got);
    let connecting = format!("connecting to {}", relay.url().trim_end_matches("/tunnel"));
    assert_eq!(systemd.statuses(), [connecting.as_str()]);
    assert_eq!(health(agent.health_addr()).await, "OK\n");

    conn.send(Frame::HelloAck).await;
    let ready = systemd.until("READY=1", |m| has(m, "READY=1")).await;
    let origin = relay.url().replace("/tunnel", "");
    assert_eq!(
        systemd.got[ready],
        format!("READY=1\nSTATUS=READY: tunnel to {origin} up, 0 streams")
    );
    assert_eq!(health(agent.health_addr()).await, "READY\n");
    for n in ["a ping after READY", "a second ping after READY"] {
        systemd.until(n, |m| has(m, "WATCHDOG=1")).await;
    }

    // The stream count follows (the line is refreshed at every ping).
    conn.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    let one = format!("STATUS=READY: tunnel to {origin} up, 1 stream");
    systemd.until("1 stream", |m| m == one).await;

    // Tunnel lost: the line says when the agent retries and why.
    conn.ws.close(None).await.expect("close");
    systemd
        .until("reconnecting", |m| m.starts_with("STATUS=reconnecting in "))
        .await;
    let mut conn = relay.accept(Select::Negotiate).await;
    assert!(matches!(conn.recv().await, Frame::Hello(_)));
    conn.send(Frame::HelloAck).await;
    let again = format!("STATUS=READY: tunnel to {origin} up, 0 streams");
    systemd.until("READY again", |m| m == again).await;
    assert_eq!(
        count(&systemd.got, "READY=1"),
        1,
        "READY=1 once per process"
    );

    agent.shutdown();
    within("agent stop", STEP, agent.wait()).await;
    systemd.drain();
    let stopping = systemd
        .got
        .iter()
        .position(|m| has(m, "STOPPING=1"))
        .unwrap_or_else(|| panic!("STOPPING=1 sent: {:?}", systemd.got));
    assert_eq!(stopping, systemd.got.len() - 1, "nothing after STOPPING=1");
    for s in systemd.statuses() {
        assert!(!s.contains(&token), "token in STATUS: {s}");
        assert!(!s.contains("notify-secret-subject"), "token in STATUS: {s}");
    }
    let reconnecting = systemd
        .statuses()
        .into_iter()
        .find(|s| s.starts_with("reconnecting in "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        reconnecting.contains("relay closed the tunnel"),
        "{reconnecting}"
    );
}

#[tokio::test]
async fn the_binary_notifies_systemd_and_says_stopping_on_sigterm() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let dir = TempDir::new("notify-bin");
    let (mut systemd, path) = NotifySocket::bind(dir.path());
    let config = dir.write(
        "premise.yaml",
        &yaml::agent(&relay.url(), "v2", &[("echo", echo.addr)]),
    );
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut conn = relay.accept(Select::Negotiate).await;
    assert!(matches!(conn.recv().await, Frame::Hello(_)));
    systemd.until("a ping", |m| has(m, "WATCHDOG=1")).await;
    assert_eq!(count(&systemd.got, "READY=1"), 0, "{:?}", systemd.got);
    conn.send(Frame::HelloAck).await;
    let ready = systemd.until("READY=1", |m| has(m, "READY=1")).await;
    assert!(systemd.got[ready].contains("\nSTATUS=READY: tunnel to ws://127.0.0.1:"));
    for n in ["a ping after READY", "a second ping after READY"] {
        systemd.until(n, |m| has(m, "WATCHDOG=1")).await;
    }

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = within("agent exit", STEP, child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    systemd.drain();
    let last = systemd.got.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("STOPPING=1\nSTATUS=stopping"),
        "{:?}",
        systemd.got
    );
    drop(conn);
}
