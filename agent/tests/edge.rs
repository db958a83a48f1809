//! The agent's edge transport against mock relays and proxies written here: one-line errors
//! naming the hop (relay 401/403, subprotocol, DNS, proxy refused, hostname mismatch), an
//! `https://` proxy with TLS to the relay inside it, and IPv6 relays and targets.
//! Tokens are in `token.rs`; real proxies, the real relay and mTLS in `tests/e2e/edge`.

use std::net::SocketAddr;

use base64::Engine;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::health::probe as health;
use nowconnect_testkit::io::read_head;
use nowconnect_testkit::mock_relay::{upgrade, MockConn, MockRelay, Select, STEP};
use nowconnect_testkit::net;
use nowconnect_testkit::pki::Ca;
use nowconnect_testkit::proxy::FakeProxy;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, wait_line, within, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Agent YAML for `url` with one echo connector and `extra` top-level YAML.
fn yaml(url: &str, echo: SocketAddr, extra: &str) -> String {
    yaml::agent_with(url, "v2", &[("echo", echo)], "", extra)
}

async fn start(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("valid agent config");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's last error is one line containing every one of `parts`.
async fn wait_error(agent: &AgentHandle, parts: &[&str]) -> String {
    wait_line(DEADLINE, parts, || agent.last_error()).await
}

// The callback's error type is tungstenite's (an HTTP response), not ours to shrink.
#[allow(clippy::result_large_err)]
fn pick_v9(
    _: &Request,
    mut resp: Response,
) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        "nowconnect.v9".parse().expect("header"),
    );
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Relay refusals

#[tokio::test]
async fn relay_401_and_403_are_one_line_with_the_reason_and_retried() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let agent = start(&yaml(&relay.url(), echo.addr, "")).await;
    for (status, body) in [
        (401, "invalid token: signature mismatch"),
        (403, "address not allowed"),
    ] {
        // Each attempt of the agent gets this answer; it keeps retrying.
        let mut sock = relay.accept_tcp().await;
        let head = read_head(&mut sock, STEP).await;
        assert!(head.starts_with("GET /tunnel HTTP/1.1"), "{head}");
        let resp = format!(
            "HTTP/1.1 {status} Refused\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.expect("answer");
        let line = wait_error(&agent, &[&format!("HTTP {status}"), body]).await;
        assert_eq!(
            line,
            format!("relay refused the WebSocket upgrade: HTTP {status} ({body})")
        );
        assert_eq!(health(agent.health_addr()).await, "OK\n", "OK, not READY");
    }
    // And the next attempt still comes.
    let _ = relay.accept_tcp().await;
}

#[tokio::test]
async fn refused_subprotocol_is_named() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let agent = start(&yaml(&relay.url(), echo.addr, "")).await;
    // A relay that picks a subprotocol we never offered.
    let sock = relay.accept_tcp().await;
    let _ws = tokio_tungstenite::accept_hdr_async(sock, pick_v9).await;
    wait_error(&agent, &["WebSocket subprotocol refused"]).await;

    // A relay that refuses our offer the way ours does (400 naming the subprotocols).
    let mut sock = relay.accept_tcp().await;
    let _ = read_head(&mut sock, STEP).await;
    let body = "unsupported subprotocol (expected nowconnect.v2 or nowconnect.v1)";
    sock.write_all(
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("answer");
    wait_error(&agent, &["HTTP 400", "unsupported subprotocol"]).await;
    assert_eq!(health(agent.health_addr()).await, "OK\n");
}

// ---------------------------------------------------------------------------------------------
// DNS, proxy connect, TLS names

#[tokio::test]
async fn dns_failures_name_the_hop() {
    let echo = target::echo().await;
    let agent = start(&yaml(
        "ws://relay.nonexistent.invalid:8765/tunnel",
        echo.addr,
        "",
    ))
    .await;
    wait_error(
        &agent,
        &["DNS lookup of relay host relay.nonexistent.invalid failed"],
    )
    .await;
    drop(agent);

    let agent = start(&yaml(
        "ws://relay.nonexistent.invalid:8765/tunnel",
        echo.addr,
        "proxy: {https_proxy: 'http://proxy.nonexistent.invalid:3128'}\n",
    ))
    .await;
    wait_error(
        &agent,
        &["DNS lookup of proxy host proxy.nonexistent.invalid failed"],
    )
    .await;
    assert_eq!(health(agent.health_addr()).await, "OK\n");
}

#[tokio::test]
async fn proxy_refusing_the_connection_is_named() {
    let echo = target::echo().await;
    let refused = target::refused();
    let port = refused.addr.port();
    let agent = start(&yaml(
        "ws://relay.example.com:8765/tunnel",
        echo.addr,
        &format!("proxy: {{https_proxy: 'http://127.0.0.1:{port}'}}\n"),
    ))
    .await;
    let line = wait_error(
        &agent,
        &[&format!("TCP connect to proxy 127.0.0.1:{port} failed")],
    )
    .await;
    assert!(line.to_lowercase().contains("refused"), "{line}");
}

#[tokio::test]
async fn a_silent_proxy_times_out_naming_the_step() {
    // A proxy that accepts and never answers CONNECT.
    let silent = target::silent().await;
    let port = silent.addr().port();
    let echo = target::echo().await;
    let y = yaml(
        "ws://relay.example.com:8765/tunnel",
        echo.addr,
        &format!("proxy: {{https_proxy: 'http://127.0.0.1:{port}'}}\n"),
    )
    .replace(
        "reconnect_max_ms: 200}",
        "reconnect_max_ms: 200, handshake_timeout_ms: 300}",
    );
    let agent = start(&y).await;
    let line = wait_error(&agent, &["timed out"]).await;
    assert_eq!(
        line,
        format!(
            "timed out after 300 ms waiting for proxy 127.0.0.1:{port} to answer CONNECT \
             relay.example.com:8765"
        )
    );
    assert!(silent.accepted() >= 1);
}

#[tokio::test]
async fn hostname_mismatch_names_the_certificate_names() {
    let ca = Ca::new("NowConnect Test CA");
    let relay = MockRelay::bind().await;
    let acceptor = ca.acceptor(&["other.example", "10.9.9.9"], None);
    let dir = TempDir::new("mismatch");
    let bundle = ca.write(dir.path(), "ca.pem");
    let echo = target::echo().await;
    let agent = start(&yaml(
        &format!("wss://localhost:{}/tunnel", relay.addr.port()),
        echo.addr,
        &format!("proxy: {{ca_bundle: '{}'}}\n", bundle.display()),
    ))
    .await;
    let sock = relay.accept_tcp().await;
    assert!(acceptor.accept(sock).await.is_err(), "agent aborts TLS");
    let line = wait_error(&agent, &["hostname mismatch"]).await;
    assert_eq!(
        line,
        "TLS to relay localhost: hostname mismatch: the certificate is for other.example, 10.9.9.9"
    );
}

// ---------------------------------------------------------------------------------------------
// https:// proxy: TLS to the proxy, CONNECT, TLS to the relay inside

#[tokio::test]
async fn https_proxy_carries_tls_to_the_relay_with_the_relays_name() {
    let ca = Ca::new("NowConnect Test CA");
    let relay = MockRelay::bind().await;
    let relay_tls = ca.acceptor(&["relay.nonexistent.invalid"], None);
    // The proxy's certificate names the proxy; the relay's names the relay.
    let proxy = FakeProxy::start(Some(ca.acceptor(&["localhost"], None)), relay.addr, None).await;
    let dir = TempDir::new("https-proxy");
    let bundle = ca.write(dir.path(), "ca.pem");
    let echo = target::echo().await;
    let agent = start(&yaml(
        "wss://relay.nonexistent.invalid/tunnel",
        echo.addr,
        &format!(
            "proxy: {{https_proxy: 'https://bob:p%40ss%3Aw@localhost:{}', ca_bundle: '{}'}}\n",
            proxy.addr.port(),
            bundle.display()
        ),
    ))
    .await;

    // The relay's name is never resolved by the agent (it does not resolve at all): the proxy
    // is asked for it, and the TLS inside the tunnel carries it as SNI.
    let tcp = relay.accept_tcp().await;
    let tls = within("TLS inside the CONNECT tunnel", STEP, relay_tls.accept(tcp))
        .await
        .expect("relay TLS");
    assert_eq!(
        tls.get_ref().1.server_name(),
        Some("relay.nonexistent.invalid"),
        "SNI is the relay's name"
    );
    let (ws, version, up) = upgrade(tls, Select::Negotiate).await;
    assert_eq!(up.path, "/tunnel");
    let mut conn = MockConn::new(ws, version, up);
    assert_eq!(conn.hello_ack().await, "premise-01");
    wait_for("READY through the https proxy", DEADLINE, || {
        agent.is_ready()
    })
    .await;

    let heads = proxy.heads();
    let head = heads.first().expect("one CONNECT");
    assert!(
        head.starts_with("CONNECT relay.nonexistent.invalid:443 HTTP/1.1\r\n"),
        "{head}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("bob:p@ss:w");
    assert!(
        head.contains(&format!("Proxy-Authorization: Basic {basic}\r\n")),
        "percent-decoded credentials: {head}"
    );
}

// ---------------------------------------------------------------------------------------------
// IPv6

#[tokio::test]
async fn ipv6_relay_and_targets_by_ip_and_name() {
    if !nowconnect_testkit::require(net::has_ipv6_loopback().await, "IPv6 loopback") {
        return;
    }
    let relay = MockRelay::bind_on("[::1]:0").await;
    let echo6 = target::echo_on("[::1]:0").await;
    let echo4 = target::echo().await;
    let mut y = yaml::agent(
        &format!("ws://[::1]:{}/tunnel", relay.addr.port()),
        "v2",
        &[("six", echo6.addr), ("name", echo4.addr)],
    );
    y = y.replace("host: '127.0.0.1'", "host: 'localhost'");
    let agent = start(&y).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    assert!(matches!(conn.recv().await, Frame::Hello(_)));
    conn.send(Frame::HelloAck).await;
    for (id, connector) in [(1, "six"), (3, "name")] {
        conn.send(Frame::Open {
            id,
            connector: connector.into(),
            client_addr: None,
        })
        .await;
        conn.echo_roundtrip(id, connector.as_bytes()).await;
    }
    assert!(agent.is_ready());
}
