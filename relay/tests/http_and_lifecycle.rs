//! Health, readiness, metrics, auth refusal, TLS, shutdown, prebound listeners, and the
//! binary's exit codes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use nowconnect_relay::{start, start_with, Prebound, RelayConfig, RelayHandle, StartError};
use nowconnect_shared::{Frame, RstCode};
use nowconnect_testkit::http::get as http_get;
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{self, data, v2_agent, MockAgent, OFFER_BOTH};
use nowconnect_testkit::net;
use nowconnect_testkit::pki::{self, Ca};
use nowconnect_testkit::process;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, within, Ticker, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

fn yaml(extra: &str) -> String {
    yaml::relay(&[("ldap", "addomain")], extra)
}

/// A relay with listener `ldap` (connector `addomain`) and `extra` config.
async fn relay(extra: &str) -> RelayHandle {
    log::init();
    let cfg = RelayConfig::from_yaml_str(&yaml(extra)).expect("valid relay config");
    start(cfg).await.expect("relay starts")
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

/// A client on the `ldap` listener.
async fn client(relay: &RelayHandle) -> TcpStream {
    net::connect(ldap(relay)).await
}

#[tokio::test]
async fn health_ready_metrics() {
    let relay = relay(DEV).await;
    assert_eq!(http_get(relay.tunnel_addr(), "/healthz").await.0, 200);
    assert_eq!(http_get(relay.tunnel_addr(), "/readyz").await.0, 200);
    let (status, body) = http_get(relay.tunnel_addr(), "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "nowconnect_tcp_connections_total",
        "nowconnect_tcp_active_connections",
        "nowconnect_tcp_bytes_total",
        "nowconnect_connection_duration_seconds",
        "nowconnect_agents_connected",
        "nowconnect_listener_accept_errors_total",
        "nowconnect_queue_overflow_total",
    ] {
        assert!(body.contains(name), "missing {name}");
    }
    assert_eq!(http_get(relay.tunnel_addr(), "/nope").await.0, 404);
}

#[tokio::test]
async fn separate_metrics_port_has_no_tunnel_and_is_the_only_metrics_port() {
    let relay = relay(&format!(
        "{DEV}observability:\n  metrics_port: 0\nportal:\n  bind: 127.0.0.1:0\n"
    ))
    .await;
    assert_ne!(relay.metrics_addr(), relay.tunnel_addr());
    assert_ne!(relay.portal_addr(), relay.tunnel_addr());
    assert_eq!(http_get(relay.metrics_addr(), "/readyz").await.0, 200);
    assert!(http_get(relay.metrics_addr(), "/metrics")
        .await
        .1
        .contains("nowconnect_agents_connected"));
    assert_eq!(http_get(relay.metrics_addr(), "/tunnel").await.0, 404);
    // Not on the agents' port nor the operators' port: only where it was configured.
    for (what, addr) in [
        ("tunnel", relay.tunnel_addr()),
        ("portal", relay.portal_addr()),
    ] {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 404, "/metrics on the {what} port: {body}");
        assert_eq!(http_get(addr, "/healthz").await.0, 200, "{what} health");
    }
}

#[tokio::test]
async fn without_a_metrics_port_metrics_stay_on_the_tunnel_and_portal_ports() {
    let relay = relay(&format!("{DEV}portal:\n  bind: 127.0.0.1:0\n")).await;
    assert_eq!(relay.metrics_addr(), relay.tunnel_addr());
    for addr in [relay.tunnel_addr(), relay.portal_addr()] {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("nowconnect_agents_connected"));
    }
}

#[tokio::test]
async fn upgrade_without_dev_bypass_is_401() {
    let relay = relay("").await;
    let err = mock_agent::connect(relay.tunnel_addr(), Some("nowconnect.v2"))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 401);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(
                body.contains("agent authentication not configured"),
                "{body}"
            );
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    assert!(relay
        .metrics_text()
        .contains("nowconnect_agent_auth_failures_total{reason=\"not_configured\"} 1"));
}

#[tokio::test]
async fn unknown_subprotocol_is_refused() {
    let relay = relay(DEV).await;
    let err = mock_agent::connect(relay.tunnel_addr(), Some("chat"))
        .await
        .expect_err("refused");
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400));
}

#[tokio::test]
async fn dev_bypass_refused_on_non_loopback() {
    let yaml = yaml(DEV).replace("host: 127.0.0.1", "host: 0.0.0.0");
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("refused");
    assert_eq!(err.problems()[0].key, "security.dev_bypass");
    // Even a config built in code is refused at start-up.
    let mut cfg = RelayConfig::dev_loopback(&[("ldap", "addomain")]);
    cfg.tunnel.host = "0.0.0.0".into();
    match start(cfg).await {
        Err(StartError::Config(msg)) => assert!(msg.contains("security.dev_bypass"), "{msg}"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn config_errors_name_every_key() {
    let err = RelayConfig::from_yaml_str(
        "listeners:\n  - name: x\n    bind: nope\n    connector: ''\ntunnel:\n  ping_timeout_sec: 0\n",
    )
    .expect_err("invalid");
    let keys: Vec<_> = err.problems().iter().map(|p| p.key.clone()).collect();
    assert_eq!(
        keys,
        [
            "listeners[0].bind",
            "listeners[0].connector",
            "tunnel.ping_timeout_sec"
        ]
    );
}

#[tokio::test]
async fn graceful_shutdown_waits_for_streams_and_readyz_says_503() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let listener = ldap(&relay);
    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;

    relay.shutdown();
    assert_eq!(http_get(relay.tunnel_addr(), "/readyz").await.0, 503);
    // New clients are no longer accepted.
    wait_for("listener closed", DEADLINE, || {
        std::net::TcpStream::connect_timeout(&listener, Duration::from_millis(200)).is_err()
    })
    .await;
    // The open stream still works during the grace period, both ways.
    agent.send(&data(id, b"still here")).await;
    let mut buf = [0u8; 10];
    within(
        "a2c during the grace period",
        T,
        client.read_exact(&mut buf),
    )
    .await
    .expect("client read");
    assert_eq!(&buf, b"still here");
    client.write_all(b"me too").await.expect("client write");
    loop {
        match agent.recv().await {
            Frame::Window { id: i, .. } if i == id => continue,
            other => {
                assert_eq!(other, data(id, b"me too"), "c2a during the grace period");
                break;
            }
        }
    }
    agent
        .send(&Frame::Rst {
            id,
            code: RstCode::Other,
            reason: "done".into(),
        })
        .await;
    within(
        "the relay to stop once the last stream ended",
        T,
        relay.wait(),
    )
    .await;
}

/// Graceful shutdown tells agents to go with 1001 Going Away: a tunnel without streams at
/// once (its agent can move to another relay), one with an open stream only after that stream
/// is done, well before the (long) grace period ends.
#[tokio::test]
async fn shutdown_closes_idle_tunnels_with_going_away_at_once_busy_ones_when_done() {
    let relay = relay(&format!("{DEV}limits:\n  shutdown_grace_ms: 60000\n")).await;
    let mut busy = v2_agent(relay.tunnel_addr(), "busy", &["addomain"]).await;
    let mut client = client(&relay).await;
    let id = busy.expect_open("addomain").await;
    let mut idle = v2_agent(relay.tunnel_addr(), "idle", &[]).await;

    relay.shutdown();
    let (code, reason) = within("1001 to the idle agent", T, idle.closed_with()).await;
    assert_eq!(u16::from(code), 1001, "Going Away, not {code:?} ({reason})");
    assert_eq!(reason, "relay shutting down");
    // The busy tunnel still carries its stream.
    busy.send(&data(id, b"still")).await;
    let mut buf = [0u8; 5];
    within("a2c while draining", T, client.read_exact(&mut buf))
        .await
        .expect("client read");
    assert_eq!(&buf, b"still");
    busy.send(&Frame::Rst {
        id,
        code: RstCode::Other,
        reason: "done".into(),
    })
    .await;
    let (code, _) = within("1001 once the stream is done", T, busy.closed_with()).await;
    assert_eq!(u16::from(code), 1001);
    within("the relay to stop", T, relay.wait()).await;
}

/// Streams still open when `shutdown_grace_ms` is over are closed; the relay stops then, not
/// before (paused clock: the grace period passes in no real time).
#[tokio::test(start_paused = true)]
async fn grace_period_ends_streams() {
    let _tick = Ticker::start();
    let grace = Duration::from_secs(20);
    let relay = relay(&format!(
        "{DEV}limits:\n  shutdown_grace_ms: {}\n",
        grace.as_millis()
    ))
    .await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    agent.expect_open("addomain").await;
    let t0 = Instant::now();
    relay.shutdown();
    within(
        "the relay to stop after the grace period",
        grace * 2,
        relay.wait(),
    )
    .await;
    let waited = t0.elapsed();
    assert!(
        waited >= grace && waited < grace + Duration::from_secs(1),
        "stopped after {waited:?}, grace is {grace:?}"
    );
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(
        closed,
        "the open stream was closed at the end of the grace period"
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_everything() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    agent.expect_open("addomain").await;
    drop(relay);
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed);
    assert!(agent.try_recv(T).await.is_none(), "tunnel closed");
}

#[tokio::test]
async fn tls_tunnel() {
    let dir = TempDir::new("relay-tls");
    let ca = Ca::new("Relay Test CA");
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "relay");
    let relay = relay(&format!(
        "  tls:\n    cert_file: {}\n    key_file: {}\n{DEV}",
        cert.display(),
        key.display()
    ))
    .await;

    let tcp = TcpStream::connect(relay.tunnel_addr())
        .await
        .expect("connect /tunnel");
    let tls = ca
        .connector()
        .connect(pki::server_name("localhost"), tcp)
        .await
        .expect("TLS to the relay");
    let url = format!("wss://localhost:{}/tunnel", relay.tunnel_addr().port());
    let (ws, _) = mock_agent::handshake(tls, &url, Some(OFFER_BOTH), None)
        .await
        .expect("upgrade over TLS");
    let mut agent = MockAgent::v2(ws);
    agent.hello("tls-agent", &["addomain"]).await;
    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;
    client.write_all(b"over tls").await.expect("client write");
    assert_eq!(agent.recv().await, data(id, b"over tls"));
    // A plain-text request on the TLS port gets nothing useful.
    let plain = mock_agent::connect(relay.tunnel_addr(), Some("nowconnect.v2")).await;
    assert!(plain.is_err());
}

/// Listeners the test bound itself are served as they are: no re-bind, the same ports.
#[tokio::test]
async fn prebound_listeners_are_served_and_unknown_names_refused() {
    log::init();
    let tunnel = net::bind().await;
    let ldap_l = net::bind().await;
    let (tunnel_addr, ldap_addr) = (net::addr(&tunnel), net::addr(&ldap_l));
    let cfg = RelayConfig::from_yaml_str(&yaml(DEV)).expect("valid relay config");
    let relay = start_with(
        cfg,
        None,
        Prebound {
            tunnel: Some(tunnel),
            listeners: HashMap::from([("ldap".to_owned(), ldap_l)]),
            ..Prebound::default()
        },
    )
    .await
    .expect("relay starts on prebound listeners");
    assert_eq!(relay.tunnel_addr(), tunnel_addr);
    assert_eq!(relay.listener_addr("ldap"), Some(ldap_addr));
    let mut agent = v2_agent(tunnel_addr, "a", &["addomain"]).await;
    let mut c = TcpStream::connect(ldap_addr).await.expect("connect");
    let id = agent.expect_open("addomain").await;
    agent.ping_pong(&mut c, id).await;

    let cfg = RelayConfig::from_yaml_str(&yaml(DEV)).expect("valid relay config");
    let err = start_with(
        cfg,
        None,
        Prebound {
            tunnel: None,
            listeners: HashMap::from([("nope".to_owned(), net::bind().await)]),
            ..Prebound::default()
        },
    )
    .await
    .map(|_| ())
    .expect_err("an unknown listener name is refused");
    assert!(
        matches!(&err, StartError::Config(m) if m.contains("`nope`")),
        "{err}"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nowconnect-relay"))
}

#[test]
fn binary_exits_2_on_bad_config() {
    let dir = TempDir::new("relay-bad");
    let path = dir.write("cloud.yaml", "listeners:\n  - name: x\n    bind: nope\n");
    let out = bin()
        .arg("--config")
        .arg(&path)
        .env_remove("NOWCONNECT_DEV_BYPASS")
        .output()
        .expect("run the relay");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listeners[0].bind"), "{stderr}");
    assert!(stderr.contains("listeners[0].connector"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = bin()
        .env("NC_CONFIG", dir.join("missing.yaml"))
        .output()
        .expect("run the relay");
    assert_eq!(out.status.code(), Some(2));

    // tokio would panic on this; the relay names the variable instead.
    let good = dir.write("good.yaml", &yaml(DEV));
    let out = bin()
        .arg("--config")
        .arg(&good)
        .env("TOKIO_WORKER_THREADS", "two")
        .output()
        .expect("run the relay");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn binary_exits_0_on_sigterm() {
    let dir = TempDir::new("relay-term");
    let path = dir.write("cloud.yaml", &yaml(DEV));
    let mut child = bin()
        .arg("--config")
        .arg(&path)
        .env("NC_LOG_LEVEL", "info")
        .env_remove("NC_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the relay");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    // Start-up is done once the HTTP server logs that it listens.
    loop {
        let line = lines
            .next()
            .expect("relay exited early")
            .expect("stderr line");
        if line.contains("relay HTTP server listening") {
            break;
        }
    }
    process::signal(child.id(), "-TERM");
    assert_eq!(
        process::wait_exit(&mut child, Duration::from_secs(10)),
        Some(0)
    );
}

#[tokio::test]
async fn tunnel_allow_cidrs_refuses_other_sources() {
    let relay = relay(&format!("{DEV}  tunnel_allow_cidrs: [10.0.0.0/8]\n")).await;
    let err = mock_agent::connect(relay.tunnel_addr(), Some("nowconnect.v2"))
        .await
        .expect_err("refused");
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403));
    assert!(relay
        .metrics_text()
        .contains("nowconnect_agent_auth_failures_total{reason=\"cidr_blocked\"} 1"));
}

#[tokio::test]
async fn global_allow_cidrs_fence_every_listener() {
    // security.allow_cidrs applies to listener clients (not to agents on /tunnel).
    let relay = relay(&format!("{DEV}  allow_cidrs: [10.0.0.0/8]\n")).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
    assert!(
        agent.try_recv(Duration::from_millis(100)).await.is_none(),
        "no OPEN"
    );
    assert!(relay.metrics_text().contains(
        "nowconnect_connections_rejected_total{connector=\"addomain\",reason=\"cidr_blocked\"} 1"
    ));
    let denied = relay.audit_records(&nowconnect_relay::AuditFilter {
        action: Some(nowconnect_relay::Action::Open),
        success: Some(false),
        ..Default::default()
    });
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].by.as_deref(), Some("cidr"));
    assert_eq!(denied[0].reason.as_deref(), Some("cidr_blocked"));
}

#[tokio::test]
async fn listener_allow_cidrs_closes_other_clients() {
    let yaml = yaml(DEV).replace(
        "connector: addomain\n",
        "connector: addomain\n    allow_cidrs: [10.0.0.0/8]\n",
    );
    let relay = start(RelayConfig::from_yaml_str(&yaml).expect("valid relay config"))
        .await
        .expect("relay starts");
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed);
    assert!(
        agent.try_recv(Duration::from_millis(100)).await.is_none(),
        "no OPEN"
    );
    assert!(relay.metrics_text().contains(
        "nowconnect_connections_rejected_total{connector=\"addomain\",reason=\"cidr_blocked\"} 1"
    ));
}
