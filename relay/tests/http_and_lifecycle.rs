//! Health, readiness, metrics, auth refusal, TLS, shutdown, and the binary's exit codes.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nowconnect_relay::{start, RelayConfig, StartError};
use nowconnect_shared::{Frame, RstCode};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test]
async fn health_ready_metrics() {
    let relay = dev_relay().await;
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
async fn separate_metrics_port_has_no_tunnel() {
    let relay = relay(&format!("{DEV}observability:\n  metrics_port: 0\n")).await;
    assert_ne!(relay.metrics_addr(), relay.tunnel_addr());
    assert_eq!(http_get(relay.metrics_addr(), "/readyz").await.0, 200);
    assert!(http_get(relay.metrics_addr(), "/metrics")
        .await
        .1
        .contains("nowconnect_agents_connected"));
    assert_eq!(http_get(relay.metrics_addr(), "/tunnel").await.0, 404);
}

#[tokio::test]
async fn upgrade_without_dev_bypass_is_401() {
    let relay = relay("").await;
    let err = ws_connect(relay.tunnel_addr(), Some("nowconnect.v2"))
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
    let relay = dev_relay().await;
    let err = ws_connect(relay.tunnel_addr(), Some("chat"))
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
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let listener = relay.listener_addr("ldap").unwrap();
    let _client = TcpStream::connect(listener).await.unwrap();
    let id = agent.expect_open("addomain").await;

    relay.shutdown();
    assert_eq!(http_get(relay.tunnel_addr(), "/readyz").await.0, 503);
    // New clients are no longer accepted.
    eventually("listener closed", || {
        std::net::TcpStream::connect_timeout(&listener, Duration::from_millis(200)).is_err()
    })
    .await;
    // The open stream still works during the grace period.
    agent.send(&data(id, b"still here")).await;
    assert!(matches!(
        agent.try_recv(Duration::from_millis(50)).await,
        None | Some(Frame::Window { .. })
    ));
    agent
        .send(&Frame::Rst {
            id,
            code: RstCode::Other,
            reason: "done".into(),
        })
        .await;
    tokio::time::timeout(T, relay.wait())
        .await
        .expect("stopped once the last stream ended");
}

#[tokio::test]
async fn grace_period_ends_streams() {
    let relay = relay(&format!("{DEV}limits:\n  shutdown_grace_ms: 200\n")).await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    agent.expect_open("addomain").await;
    relay.shutdown();
    tokio::time::timeout(T, relay.wait())
        .await
        .expect("stopped after grace");
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
}

#[tokio::test]
async fn dropping_the_handle_stops_everything() {
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    agent.expect_open("addomain").await;
    drop(relay);
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed);
    assert!(agent.try_recv(T).await.is_none(), "tunnel closed");
}

#[tokio::test]
async fn tls_tunnel() {
    let dir = std::env::temp_dir().join(format!("nc-relay-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let relay = relay(&format!(
        "  tls:\n    cert_file: {}\n    key_file: {}\n{DEV}",
        cert.display(),
        key.display()
    ))
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(relay.tunnel_addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://localhost:{}/tunnel", relay.tunnel_addr().port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("nowconnect.v2, nowconnect.v1"),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let mut agent = V2Agent::new(ws);
    agent.hello("tls-agent", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let id = agent.expect_open("addomain").await;
    client.write_all(b"over tls").await.unwrap();
    assert_eq!(agent.recv().await, data(id, b"over tls"));
    // A plain-text request on the TLS port gets nothing useful.
    let plain = ws_connect(relay.tunnel_addr(), Some("nowconnect.v2")).await;
    assert!(plain.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nowconnect-relay"))
}

#[test]
fn binary_exits_2_on_bad_config() {
    let dir = std::env::temp_dir().join(format!("nc-relay-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cloud.yaml");
    std::fs::write(&path, "listeners:\n  - name: x\n    bind: nope\n").unwrap();
    let out = bin()
        .arg("--config")
        .arg(&path)
        .env_remove("NOWCONNECT_DEV_BYPASS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listeners[0].bind"), "{stderr}");
    assert!(stderr.contains("listeners[0].connector"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = bin()
        .env("NC_CONFIG", dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // tokio would panic on this; the relay names the variable instead.
    let good = dir.join("good.yaml");
    std::fs::write(&good, yaml(DEV)).unwrap();
    let out = bin()
        .arg("--config")
        .arg(&good)
        .env("TOKIO_WORKER_THREADS", "two")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_exits_0_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("nc-relay-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cloud.yaml");
    std::fs::write(&path, yaml(DEV)).unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&path)
        .env("NC_LOG_LEVEL", "info")
        .env_remove("NC_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Start-up is done once the HTTP server logs that it listens.
    loop {
        let line = lines.next().expect("relay exited early").unwrap();
        if line.contains("relay HTTP server listening") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline, "relay did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tunnel_allow_cidrs_refuses_other_sources() {
    let relay = relay(&format!("{DEV}  tunnel_allow_cidrs: [10.0.0.0/8]\n")).await;
    let err = ws_connect(relay.tunnel_addr(), Some("nowconnect.v2"))
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
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
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
    let relay = start(RelayConfig::from_yaml_str(&yaml).unwrap())
        .await
        .unwrap();
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
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
