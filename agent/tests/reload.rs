//! SIGHUP reloads the real `nowconnect-agent` binary's `premise.yaml`: a changed target and a
//! new connector apply (new HELLO on a new tunnel, new streams to the new target) while a stream
//! opened before keeps flowing byte-exact to the old target; an invalid file is refused in one
//! error line and the agent stays READY with the old configuration; the process lives on.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nowconnect_shared::Frame;
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::mock_relay::{MockConn, MockRelay, Select};
use nowconnect_testkit::temp::{self, TempDir};
use nowconnect_testkit::wait::{wait_some, within, DEADLINE};
use nowconnect_testkit::{target, yaml};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_nowconnect-agent");

/// The agent's YAML for `targets` (all exported), JSON logs at info.
fn premise(relay: &MockRelay, targets: &[(&str, SocketAddr)]) -> String {
    format!(
        "{}logging: {{level: info, format: json}}\n",
        yaml::agent(&relay.url(), "v2", targets)
    )
}

/// The agent's stderr, one JSON record a line, collected as it comes.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<serde_json::Value>>>);

impl Log {
    fn follow(&self, child: &mut tokio::process::Child) {
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let v = serde_json::from_str(&l)
                    .unwrap_or_else(|_| serde_json::json!({"level": "RAW", "message": l}));
                log.0.lock().expect("log").push(v);
            }
        });
    }

    /// Records whose message contains `part`, as `(level, message)`.
    fn matching(&self, part: &str) -> Vec<(String, String)> {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        self.0
            .lock()
            .expect("log")
            .iter()
            .filter_map(|r| {
                let msg = text(&r["message"]);
                msg.contains(part).then(|| (text(&r["level"]), msg))
            })
            .collect()
    }

    fn field(&self, message: &str, field: &str) -> Option<String> {
        self.0.lock().expect("log").iter().find_map(|r| {
            (r["message"] == message)
                .then(|| r[field].as_str().map(str::to_owned))
                .flatten()
        })
    }

    async fn wait(&self, part: &str) -> Vec<(String, String)> {
        wait_some(&format!("log line `{part}`"), DEADLINE, || {
            Some(self.matching(part)).filter(|m| !m.is_empty())
        })
        .await
    }

    fn all(&self) -> String {
        format!("{:#?}", self.0.lock().expect("log"))
    }
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Bytes of stream `id` until `n` have come (WINDOW frames skipped).
async fn data(conn: &mut MockConn<TcpStream>, id: u32, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match conn.recv().await {
            Frame::Data { id: i, payload } if i == id => got.extend_from_slice(&payload),
            Frame::Window { .. } => {}
            other => panic!("stream {id}: unexpected frame {other:?}"),
        }
    }
    got
}

/// Opens stream `id` to `connector`; returns the tag its target greets with.
async fn open(conn: &mut MockConn<TcpStream>, id: u32, connector: &str, tag_len: usize) -> Vec<u8> {
    conn.send(Frame::Open {
        id,
        connector: connector.into(),
        client_addr: None,
    })
    .await;
    data(conn, id, tag_len).await
}

async fn hello(conn: &mut MockConn<TcpStream>) -> Vec<String> {
    match conn.recv().await {
        Frame::Hello(h) => h.connectors,
        other => panic!("expected HELLO, got {other:?}"),
    }
}

#[tokio::test]
async fn sighup_reloads_targets_and_connectors_and_refuses_an_invalid_file() {
    let relay = MockRelay::bind().await;
    let old = target::tagged_echo(b"old:").await;
    let new = target::tagged_echo(b"new:").await;
    let ldap2 = target::tagged_echo(b"ld2:").await;
    let dir = TempDir::new("agent-reload");
    let path = dir.write("premise.yaml", &premise(&relay, &[("x", old.addr)]));
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let log = Log::default();
    log.follow(&mut child);

    let mut first = relay.accept(Select::Negotiate).await;
    assert_eq!(hello(&mut first).await, ["x"]);
    first.send(Frame::HelloAck).await;
    let health: SocketAddr = wait_some("the health address in the log", DEADLINE, || {
        log.field("agent starting", "health")?.parse().ok()
    })
    .await;
    wait_health(health, "READY\n", DEADLINE).await;

    // A stream opened before the reload, to the old target.
    assert_eq!(open(&mut first, 1, "x", 4).await, b"old:");
    first.echo_roundtrip(1, b"before the reload").await;

    // x moves to another port and ldap2 is added; SIGHUP.
    temp::replace(
        &path,
        &premise(&relay, &[("x", new.addr), ("ldap2", ldap2.addr)]),
    );
    signal(&child, "-HUP");
    // The new exported set comes in a new HELLO on a new tunnel, while the first one is open.
    let mut second = relay.accept(Select::Negotiate).await;
    assert_eq!(hello(&mut second).await, ["x", "ldap2"]);
    second.send(Frame::HelloAck).await;
    let applied = log.wait("reload applied").await;
    assert_eq!(
        applied,
        [(
            "INFO".to_string(),
            "reload applied: targets +ldap2 ~x, connectors +ldap2".to_string()
        )],
        "{}",
        log.all()
    );
    // New streams use the new table; the stream opened before still flows to the old target.
    assert_eq!(open(&mut second, 1, "x", 4).await, b"new:");
    assert_eq!(open(&mut second, 3, "ldap2", 4).await, b"ld2:");
    second.echo_roundtrip(3, b"to ldap2").await;
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    first.echo_roundtrip(1, &big).await;
    first.echo_roundtrip(1, b"after the reload").await;

    // An invalid file: refused in one error line, the running configuration stays.
    let bad = premise(&relay, &[("x", new.addr)])
        .replace(&format!("port: {}", new.addr.port()), "port: 0");
    temp::replace(&path, &bad);
    signal(&child, "-HUP");
    let refused = log.wait("reload refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (level, msg) = &refused[0];
    assert_eq!(level, "ERROR");
    assert!(
        msg.starts_with("reload refused: invalid configuration: targets.x.port")
            && msg.ends_with("; the running configuration stays")
            && !msg.contains('\n'),
        "{msg}"
    );
    // Still READY, still the reloaded table: a new stream to each connector works.
    wait_health(health, "READY\n", DEADLINE).await;
    assert_eq!(open(&mut second, 5, "x", 4).await, b"new:");
    assert_eq!(open(&mut second, 7, "ldap2", 4).await, b"ld2:");
    first.echo_roundtrip(1, b"still the first stream").await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "alive after SIGHUP"
    );
    assert_eq!(log.matching("reload applied").len(), 1, "{}", log.all());

    signal(&child, "-TERM");
    let status = within("agent exit", DEADLINE, child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{}", log.all());
}

/// In-process: removing a connector announces the smaller set on a new tunnel; on the old one
/// (still draining its stream) an OPEN for the removed connector is refused and one for a kept
/// connector goes to its new target; READY never drops.
#[tokio::test]
async fn a_removed_connector_is_refused_and_readiness_holds() {
    let relay = MockRelay::bind().await;
    let (a_old, a_new, b) = (
        target::tagged_echo(b"ao:").await,
        target::tagged_echo(b"an:").await,
        target::tagged_echo(b"bb:").await,
    );
    let yaml = |targets: &[(&str, SocketAddr)]| yaml::agent(&relay.url(), "v2", targets);
    let cfg =
        nowconnect_agent::AgentConfig::from_yaml_str(&yaml(&[("a", a_old.addr), ("b", b.addr)]))
            .expect("valid");
    let agent = nowconnect_agent::start(cfg).await.expect("start");
    let mut first = relay.accept(Select::Negotiate).await;
    assert_eq!(hello(&mut first).await, ["a", "b"]);
    first.send(Frame::HelloAck).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    assert_eq!(open(&mut first, 1, "b", 3).await, b"bb:");

    let changes = agent
        .reload(nowconnect_agent::AgentConfig::from_yaml_str(&yaml(&[(
            "a", a_new.addr,
        )])))
        .expect("applied");
    assert_eq!(changes.to_string(), "targets -b ~a, connectors -b");
    let mut second = relay.accept(Select::Negotiate).await;
    assert_eq!(hello(&mut second).await, ["a"]);
    second.send(Frame::HelloAck).await;
    wait_some("the second tunnel counted", DEADLINE, || {
        (agent.connects() == 2).then_some(())
    })
    .await;

    // The old tunnel drains stream 1 (to b, removed) and takes no new b stream.
    first
        .send(Frame::Open {
            id: 3,
            connector: "b".into(),
            client_addr: None,
        })
        .await;
    match first.recv().await {
        Frame::Rst { id: 3, code, .. } => {
            assert_eq!(code, nowconnect_shared::RstCode::UnknownConnector)
        }
        other => panic!("expected RST for stream 3, got {other:?}"),
    }
    assert_eq!(open(&mut first, 5, "a", 3).await, b"an:");
    first
        .echo_roundtrip(1, b"the removed connector's open stream")
        .await;
    assert_eq!(open(&mut second, 1, "a", 3).await, b"an:");
    assert_eq!(agent.ready_lost(), 0);
    assert!(agent.is_ready());
    // Refused: nothing changes.
    assert!(agent
        .reload(nowconnect_agent::AgentConfig::from_yaml_str("tunnel: {}\n"))
        .is_none());
    assert_eq!(agent.config().connectors().collect::<Vec<_>>(), ["a"]);
    agent.shutdown();
    agent.wait().await;
}
