//! `NC_LOG_FORMAT=json` end to end: the relay and agent binaries, a JWT-authenticated tunnel, a
//! stream carrying known bytes, then every line of both logs checked against docs/logging.md:
//! valid JSON, the keys every line has, each documented event with its fields, and never the
//! payload, the token or an Authorization header.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nowconnect_testkit::idp::{agent_token, ec_key, jwks_file};
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_some, within, DEADLINE};
use nowconnect_testkit::{net, yaml};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const RELAY: &str = env!("CARGO_BIN_EXE_nowconnect-relay");
/// Bytes no log line may hold, each way through the stream.
const UP: &[u8] = b"client-bytes-3f9a1c-never-logged";
const LEVEL: &str = "debug,rustls=info,tungstenite=info,tokio_tungstenite=info,hyper=info";

/// The agent binary, built beside the relay's by the workspace build (scripts/test.sh).
fn agent_bin() -> PathBuf {
    let p = Path::new(RELAY).with_file_name("nowconnect-agent");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p nowconnect-agent`; the workspace test run does)",
        p.display()
    );
    p
}

/// Every stderr line of a child, kept as it came.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, child: &mut Child) -> tokio::task::JoinHandle<()> {
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let keep = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                keep.lock().expect("lines").push(l);
            }
        })
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines").clone()
    }

    /// The first JSON line whose `event` is `event` and whose `key` is `value` (any, when empty).
    fn event(&self, event: &str, key: &str, value: &str) -> Option<Value> {
        self.all()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == event && (value.is_empty() || v[key] == value))
    }

    /// Waits for [`event`](Lines::event); on the deadline, panics with the log's last lines.
    async fn wait(&self, who: &str, event: &str, key: &str, value: &str) -> Value {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(v) = self.event(event, key, value) {
                return v;
            }
            if tokio::time::Instant::now() > end {
                let all = self.all();
                let tail = &all[all.len().saturating_sub(30)..];
                panic!(
                    "{who} did not log `{event}` within {DEADLINE:?}; last lines:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn spawn(bin: &Path, config: &Path) -> Child {
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NC_LOG_FORMAT", "json")
        .env("NC_LOG_LEVEL", LEVEL)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// SIGTERM, then the exit within the deadline.
async fn stop(child: &mut Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = within("a graceful exit", DEADLINE, child.wait())
        .await
        .expect("wait");
    assert!(exit.success(), "{exit}");
}

/// docs/logging.md's event table: event -> the fields its lines carry.
fn documented_events() -> BTreeMap<String, Vec<String>> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/logging.md"))
        .expect("docs/logging.md");
    let section = page
        .split("## Events")
        .nth(1)
        .and_then(|s| s.split("## Audit records").next())
        .expect("an Events section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let names = |c: &str| -> Vec<String> {
                c.split(',')
                    .map(|f| f.trim().trim_matches('`').to_owned())
                    .filter(|f| !f.is_empty())
                    .collect()
            };
            (names(cells[1]).remove(0), names(cells[3]))
        })
        .collect()
}

/// docs/logging.md's list of the fields of every audit line.
fn documented_audit_fields() -> Vec<String> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/logging.md"))
        .expect("docs/logging.md");
    let row = page
        .split("## Audit records")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.starts_with("| `seq`")))
        .expect("the audit fields row");
    row.trim_matches('|')
        .split(',')
        .map(|f| f.trim().trim_matches('`').to_owned())
        .collect()
}

/// Checks every line of `who`'s log; returns the events seen.
fn check_lines(
    who: &str,
    lines: &[String],
    forbidden: &[(&str, Vec<u8>)],
    events: &BTreeMap<String, Vec<String>>,
    audit_fields: &[String],
) -> Vec<String> {
    let mut seen = Vec::new();
    assert!(!lines.is_empty(), "{who} logged nothing");
    for l in lines {
        for (what, bytes) in forbidden {
            let needle = String::from_utf8_lossy(bytes);
            assert!(!l.contains(needle.as_ref()), "{who} logged {what}: {l}");
        }
        let lower = l.to_ascii_lowercase();
        assert!(
            !lower.contains("authorization") && !lower.contains("bearer "),
            "{who} logged an Authorization header: {l}"
        );
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {l}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "{who}: `{key}` missing: {l}");
        }
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "{who}: level: {l}"
        );
        assert!(
            v.get("fields").is_none(),
            "{who}: fields nested, not flat: {l}"
        );
        if v["audit"] == true {
            for f in audit_fields {
                assert!(v.get(f).is_some(), "{who}: audit line without `{f}`: {l}");
            }
            assert_eq!(
                v["event"], v["action"],
                "{who}: an audit line's event is its action"
            );
        } else if let Some(event) = v["event"].as_str() {
            let fields = events
                .get(event)
                .unwrap_or_else(|| panic!("{who}: event `{event}` is not in docs/logging.md: {l}"));
            for f in fields {
                assert!(v.get(f).is_some(), "{who}: `{event}` without `{f}`: {l}");
            }
        }
        if let Some(e) = v["event"].as_str() {
            seen.push(e.to_owned());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_of_both_binaries_are_documented_and_hold_no_secret() {
    let agent_bin = agent_bin();
    let dir = TempDir::new("json-logs");
    let key = ec_key("logs");
    let jwks = jwks_file(dir.path(), &[&key]);
    let relay_cfg = dir.write("cloud.yaml", &yaml::portal_relay(&jwks, dir.path(), ""));
    let mut relay = spawn(Path::new(RELAY), &relay_cfg);
    let relay_log = Lines::default();
    let relay_reader = relay_log.follow(&mut relay);
    let started = relay_log.wait("relay", "relay_started", "", "").await;
    let tunnel: std::net::SocketAddr = started["tunnel_addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("tunnel_addr");
    let bound = relay_log
        .wait("relay", "listener_started", "listener", "ldap")
        .await;
    let ldap: std::net::SocketAddr = bound["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("addr");

    let echo = target::echo().await;
    let token = agent_token(&key, "premise-01");
    let token_file = dir.write("agent.jwt", &token);
    let agent_cfg = dir.write(
        "premise.yaml",
        &yaml::agent_with(
            &format!("ws://{tunnel}/tunnel"),
            "v2",
            &[("addomain", echo.addr)],
            &format!("  auth: {{token_file: {}}}\n", token_file.display()),
            "",
        ),
    );
    let mut agent = spawn(&agent_bin, &agent_cfg);
    let agent_log = Lines::default();
    let agent_reader = agent_log.follow(&mut agent);
    agent_log.wait("agent", "tunnel_connected", "", "").await;

    // Known bytes through a stream, echoed by the target.
    let mut client = net::connect(ldap).await;
    client.write_all(UP).await.expect("write");
    let mut back = vec![0u8; UP.len()];
    within("the echo", DEADLINE, client.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(back, UP);
    drop(client);
    wait_some("the open audited", DEADLINE, || {
        relay_log
            .event("open", "success", "")
            .filter(|v| v["success"] == true)
    })
    .await;

    stop(&mut agent).await;
    relay_log
        .wait("relay", "agent_disconnected", "agent_id", "premise-01")
        .await;
    stop(&mut relay).await;
    let _ = within("the relay's log read", DEADLINE, relay_reader).await;
    let _ = within("the agent's log read", DEADLINE, agent_reader).await;

    let events = documented_events();
    let audit_fields = documented_audit_fields();
    assert!(events.contains_key("listener_started") && audit_fields.len() > 10);
    let sig = token
        .rsplit('.')
        .next()
        .expect("signature")
        .as_bytes()
        .to_vec();
    let claims = token.split('.').nth(1).expect("claims").as_bytes().to_vec();
    let forbidden = [
        ("the payload", UP.to_vec()),
        ("the token's signature", sig),
        ("the token's claims", claims),
    ];
    let seen_relay = check_lines(
        "relay",
        &relay_log.all(),
        &forbidden,
        &events,
        &audit_fields,
    );
    let seen_agent = check_lines(
        "agent",
        &agent_log.all(),
        &forbidden,
        &events,
        &audit_fields,
    );
    for e in [
        "relay_started",
        "listener_started",
        "tunnel_auth",
        "hello",
        "agent_connected",
        "open",
        "agent_disconnected",
        "shutdown_requested",
        "listener_stopped",
        "relay_stopped",
    ] {
        assert!(
            seen_relay.iter().any(|s| s == e),
            "relay never logged `{e}`: {seen_relay:?}"
        );
    }
    for e in ["agent_started", "tunnel_connected", "agent_stopping"] {
        assert!(
            seen_agent.iter().any(|s| s == e),
            "agent never logged `{e}`: {seen_agent:?}"
        );
    }
}
