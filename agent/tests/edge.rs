//! The agent's edge transport against mock relays and proxies written here: one-line errors
//! naming the hop (relay 401/403, subprotocol, DNS, proxy refused, hostname mismatch), an
//! `https://` proxy with TLS to the relay inside it, and IPv6 relays and targets.
//! Tokens are in `token.rs`; real proxies, the real relay and mTLS in `tests/e2e/edge`.
#![allow(clippy::result_large_err)]

mod common;

use base64::Engine;
use common::edge::*;
use common::pki::{temp_dir, write, Ca};
use common::*;
use nowconnect_shared::Frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

// ---------------------------------------------------------------------------------------------
// Relay refusals

#[tokio::test]
async fn relay_401_and_403_are_one_line_with_the_reason_and_retried() {
    let relay = MockRelay::bind().await;
    let echo = echo_target().await;
    let agent = start(&yaml(&relay.url(), echo, "", "")).await;
    for (status, body) in [
        (401, "invalid token: signature mismatch"),
        (403, "address not allowed"),
    ] {
        // Each attempt of the agent gets this answer; it keeps retrying.
        let mut sock = relay.accept_tcp().await;
        let head = read_head(&mut sock).await;
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
    let echo = echo_target().await;
    let agent = start(&yaml(&relay.url(), echo, "", "")).await;
    // A relay that picks a subprotocol we never offered.
    let sock = relay.accept_tcp().await;
    let cb = |_: &Request, mut resp: Response| {
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            "nowconnect.v9".parse().expect("header"),
        );
        Ok(resp)
    };
    let _ws = tokio_tungstenite::accept_hdr_async(sock, cb).await;
    wait_error(&agent, &["WebSocket subprotocol refused"]).await;

    // A relay that refuses our offer the way ours does (400 naming the subprotocols).
    let mut sock = relay.accept_tcp().await;
    let _ = read_head(&mut sock).await;
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
    let echo = echo_target().await;
    let agent = start(&yaml(
        "ws://relay.nonexistent.invalid:8765/tunnel",
        echo,
        "",
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
        echo,
        "",
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
    let echo = echo_target().await;
    let port = refused_port().await;
    let agent = start(&yaml(
        "ws://relay.example.com:8765/tunnel",
        echo,
        "",
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
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            socks.push(s);
        }
    });
    let echo = echo_target().await;
    let y = yaml(
        "ws://relay.example.com:8765/tunnel",
        echo,
        "",
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
    held.abort();
}

#[tokio::test]
async fn hostname_mismatch_names_the_certificate_names() {
    let ca = Ca::new("NowConnect Test CA");
    let relay = MockRelay::bind().await;
    let acceptor = ca.acceptor(&["other.example", "10.9.9.9"], None);
    let dir = temp_dir("mismatch");
    let bundle = write(&dir, "ca.pem", &ca.pem());
    let echo = echo_target().await;
    let agent = start(&yaml(
        &format!("wss://localhost:{}/tunnel", relay.addr.port()),
        echo,
        "",
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
    let proxy = fake_proxy(Some(ca.acceptor(&["localhost"], None)), relay.addr, None).await;
    let dir = temp_dir("https-proxy");
    let bundle = write(&dir, "ca.pem", &ca.pem());
    let echo = echo_target().await;
    let agent = start(&yaml(
        "wss://relay.nonexistent.invalid/tunnel",
        echo,
        "",
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
    let tls = within("TLS inside the CONNECT tunnel", relay_tls.accept(tcp))
        .await
        .expect("relay TLS");
    assert_eq!(
        tls.get_ref().1.server_name(),
        Some("relay.nonexistent.invalid"),
        "SNI is the relay's name"
    );
    let (mut ws, _, up) = upgrade(tls, Select::Negotiate).await;
    assert_eq!(up.path, "/tunnel");
    assert_eq!(v2_hello_ack(&mut ws).await, "premise-01");
    wait_until("READY through the https proxy", || async {
        agent.is_ready()
    })
    .await;

    let heads = proxy.heads.lock().expect("heads").clone();
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
    let Ok(probe) = TcpListener::bind("[::1]:0").await else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "IPv6 loopback is required in CI"
        );
        eprintln!("skipping: no IPv6 loopback");
        return;
    };
    drop(probe);
    let relay = MockRelay::bind_on("[::1]:0").await;
    let l6 = TcpListener::bind("[::1]:0").await.expect("bind v6 echo");
    let echo6 = l6.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l6.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let echo4 = echo_target().await;
    let mut y = agent_yaml(
        &format!("ws://[::1]:{}/tunnel", relay.addr.port()),
        "v2",
        &[("six", echo6), ("name", echo4)],
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
        echo_roundtrip(&mut conn, id, connector.as_bytes()).await;
    }
    assert!(agent.is_ready());
}
