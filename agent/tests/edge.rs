//! The agent's edge transport against mock relays and proxies written here: one-line errors
//! naming the hop (relay 401/403, subprotocol, DNS, proxy refused, hostname mismatch, expired
//! token), an `https://` proxy with TLS to the relay inside it, token refresh with overlapping
//! tunnels, IPv6, and no secret in any log line or error.
//! (Real proxies, the real relay and mTLS are in the end-to-end tests, `tests/e2e/edge`.)
#![allow(clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::pki::{temp_dir, write, Ca};
use common::*;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_shared::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

// ---------------------------------------------------------------------------------------------
// Helpers

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An unsigned JWT-shaped token with `exp` (the agent reads `exp`, the relay would verify).
fn jwt(exp: u64, sub: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"{sub}","exp":{exp}}}"#))
    )
}

/// Replaces the file atomically, as a token rotator would.
fn rotate(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write token");
    std::fs::rename(&tmp, path).expect("rename token");
}

/// Agent YAML for `url` with one echo connector and `extra` top-level YAML; `tunnel_extra`
/// lines go under `tunnel:`.
fn yaml(url: &str, echo: SocketAddr, tunnel_extra: &str, extra: &str) -> String {
    let y = agent_yaml(url, "v2", &[("echo", echo)]);
    format!(
        "{}{extra}",
        y.replacen("tunnel:\n", &format!("tunnel:\n{tunnel_extra}"), 1)
    )
}

async fn start(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("agent config");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's last error contains every one of `parts`; returns the line.
async fn wait_error(agent: &AgentHandle, parts: &[&str]) -> String {
    let mut last = None;
    let found = tokio::time::timeout(STEP, async {
        loop {
            last = agent.last_error();
            if let Some(e) = &last {
                if parts.iter().all(|p| e.contains(p)) {
                    return e.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match found {
        Ok(line) => {
            assert!(!line.contains('\n'), "one line: {line}");
            line
        }
        Err(_) => panic!("no error containing {parts:?}; last error: {last:?}"),
    }
}

/// Reads an HTTP request head (bounded).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within("request head", s.read(&mut buf))
            .await
            .expect("read head");
        assert!(n > 0, "peer closed before the end of the head");
        head.extend_from_slice(&buf[..n]);
        assert!(head.len() < 16 * 1024, "head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A CONNECT proxy written for these tests: optional TLS in front, records every request head,
/// then either answers `answer` and closes, or connects to `upstream` (whatever host was asked
/// for, so relay names need not resolve) and pipes bytes.
struct FakeProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn fake_proxy(
    tls: Option<TlsAcceptor>,
    upstream: SocketAddr,
    answer: Option<&'static str>,
) -> FakeProxy {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = l.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (tls, h) = (tls.clone(), h.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_proxy(sock, upstream, answer, h).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            serve_proxy(s, upstream, answer, h).await
                        }
                    }
                }
            });
        }
    });
    FakeProxy { addr, heads }
}

async fn serve_proxy<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    upstream: SocketAddr,
    answer: Option<&'static str>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let head = read_head(&mut io).await;
    heads.lock().expect("heads").push(head);
    if let Some(a) = answer {
        let _ = io.write_all(a.as_bytes()).await;
        let _ = io.shutdown().await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        let _ = io.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if io
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
    }
}

/// Collects everything the agent logs (all levels) on this thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }

    /// Routes this thread's tracing events here until the guard is dropped. The tests using
    /// it run on tokio's current-thread runtime, so every agent task logs on this thread.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(sub)
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Sends `data` on stream `id` and waits for the same bytes back (echo target, small payload).
async fn echo_roundtrip(conn: &mut MockConn, id: u32, data: &[u8]) {
    conn.send(Frame::Data {
        id,
        payload: Bytes::copy_from_slice(data),
    })
    .await;
    let mut got = Vec::new();
    while got.len() < data.len() {
        match conn.recv().await {
            Frame::Data { id: i, payload } if i == id => got.extend_from_slice(&payload),
            Frame::Window { .. } => {}
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    assert_eq!(got, data);
}

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
// Tokens

#[tokio::test]
async fn expired_token_is_reported_and_the_file_is_reread() {
    let relay = MockRelay::bind().await;
    let echo = echo_target().await;
    let dir = temp_dir("expired");
    let tok = write(&dir, "token", &jwt(unix_now() - 100, "old"));
    let agent = start(&yaml(
        &relay.url(),
        echo,
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
    let capture = Capture::default();
    let _guard = capture.install();
    let relay = MockRelay::bind().await;
    let echo = echo_target().await;
    let dir = temp_dir("refresh");
    let exp1 = unix_now() + 5;
    let t1 = jwt(exp1, "first");
    let tok = write(&dir, "token", &t1);
    // Refresh 4 s before exp: due about a second after the first connect.
    let agent = start(&yaml(
        &relay.url(),
        echo,
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
    wait_until("READY", || async { agent.is_ready() }).await;
    // A stream on the first tunnel, to be kept across the switch.
    c1.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    echo_roundtrip(&mut c1, 1, b"before").await;

    // The refresh comes due while the file still holds the same token: the agent waits for a
    // new one instead of reconnecting with the old.
    wait_until("the agent notices the file is unchanged", || async {
        capture.text().contains("the token file still holds it")
    })
    .await;
    assert_eq!(agent.connects(), 1);

    // Health is sampled from now on; READY must hold throughout the switch.
    let saw_ok = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (saw_ok, stop, addr) = (saw_ok.clone(), stop.clone(), agent.health_addr());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if health(addr).await != "READY\n" {
                    saw_ok.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

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
    // Hold HELLO_ACK back a little: the overlap is where health could drop if the agent had
    // closed the old tunnel first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c2.send(Frame::HelloAck).await;
    wait_until("second tunnel counted", || async { agent.connects() == 2 }).await;

    // New streams go to the new tunnel; the old one still carries its stream...
    c2.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    echo_roundtrip(&mut c2, 1, b"on the new tunnel").await;
    echo_roundtrip(&mut c1, 1, b"old stream still flows").await;
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
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    assert!(
        !saw_ok.load(Ordering::Relaxed),
        "health stayed READY across the refresh"
    );
    assert!(agent.is_ready());
    echo_roundtrip(&mut c2, 1, b"still fine").await;
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    let capture = Capture::default();
    let _guard = capture.install();
    let relay = MockRelay::bind().await;
    let echo = echo_target().await;
    let dir = temp_dir("secrets");
    let token = jwt(unix_now() + 3600, "very-secret-subject");
    let tok = write(&dir, "token", &token);

    // The relay refuses the token.
    let agent = start(&yaml(
        &relay.url(),
        echo,
        &format!("  auth: {{token_file: '{}'}}\n", tok.display()),
        "",
    ))
    .await;
    let mut sock = relay.accept_tcp().await;
    let head = read_head(&mut sock).await;
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
    let proxy = fake_proxy(
        None,
        relay.addr,
        Some("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n"),
    )
    .await;
    let agent = start(&yaml(
        &relay.url(),
        echo,
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
