//! `route_by: sni` listeners end to end: real TLS clients (rustls, a CA made at run time) through
//! one relay listener reach the TLS server of the connector their server name routes to, through
//! a bridging agent; the relay only relays bytes (the client verifies the server's own
//! certificate). Unknown names, missing names, dribbled, oversized and non-TLS first bytes.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, RelayConfig, RelayHandle};
use nowconnect_testkit::bridge::{bridge, tls_echo_target, Bridge};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::v2_agent;
use nowconnect_testkit::pki::{server_name, Ca};
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DC1: &str = "dc1.corp.local";
const DC2: &str = "dc2.corp.local";

/// Relay YAML with one sni listener `ldaps` (`dc1 -> ldaps_dc1`, `dc2 -> ldaps_dc2`, then
/// `more` under the listener) on 127.0.0.1:0, dev bypass, then `security` lines.
fn yaml_with(more: &str, security: &str) -> String {
    format!(
        "listeners:\n  - name: ldaps\n    bind: 127.0.0.1:0\n    route_by: sni\n    routes:\n      \
         {DC1}: ldaps_dc1\n      {DC2}: ldaps_dc2\n{more}\
         tunnel:\n  host: 127.0.0.1\n  port: 0\nsecurity:\n  dev_bypass: true\n{security}"
    )
}

fn yaml(more: &str) -> String {
    yaml_with(more, "")
}

struct Setup {
    relay: RelayHandle,
    ca: Ca,
    agent: Bridge,
    _targets: Vec<JoinHandle<()>>,
}

/// The relay of [`yaml`]`(more)`, an agent serving both connectors, and a TLS server per
/// connector: `ldaps_dc1`'s certificate names dc1 and dc3 (the default's clients), `ldaps_dc2`'s
/// dc2.
async fn setup(more: &str) -> Setup {
    setup_with(more, "").await
}

/// [`setup`] with `security` lines.
async fn setup_with(more: &str, security: &str) -> Setup {
    log::init();
    let cfg = RelayConfig::from_yaml_str(&yaml_with(more, security)).expect("valid relay config");
    let relay = nowconnect_relay::start(cfg).await.expect("relay starts");
    let ca = Ca::new("sni test CA");
    let (a1, t1) = tls_echo_target(&ca, &[DC1, "dc3.corp.local"], "dc1").await;
    let (a2, t2) = tls_echo_target(&ca, &[DC2], "dc2").await;
    let agent = v2_agent(
        relay.tunnel_addr(),
        "premise-01",
        &["ldaps_dc1", "ldaps_dc2"],
    )
    .await;
    wait_for("agent registered", DEADLINE, || {
        relay.agents_for("ldaps_dc1") == 1 && relay.agents_for("ldaps_dc2") == 1
    })
    .await;
    let targets = HashMap::from([("ldaps_dc1".to_owned(), a1), ("ldaps_dc2".to_owned(), a2)]);
    Setup {
        relay,
        ca,
        agent: bridge(agent, targets),
        _targets: vec![t1, t2],
    }
}

fn addr(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldaps").expect("listener ldaps")
}

/// A TLS client asking for `name` (verified against `ca` only): writes "ping", returns the
/// server's whole answer.
async fn ask(relay: &RelayHandle, ca: &Ca, name: &str) -> io::Result<String> {
    let tcp = TcpStream::connect(addr(relay)).await?;
    let mut tls = ca.connector().connect(server_name(name), tcp).await?;
    tls.write_all(b"ping").await?;
    tls.flush().await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer)
}

fn metric(relay: &RelayHandle, series: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), series)
}

fn rejected(relay: &RelayHandle, reason: &str) -> u64 {
    metric(
        relay,
        &format!("nowconnect_sni_rejected_total{{listener=\"ldaps\",reason=\"{reason}\"}}"),
    )
}

/// The newest refused OPEN's audit reason and detail.
fn last_refusal(relay: &RelayHandle) -> (String, String) {
    let r = relay
        .audit_records(&AuditFilter {
            action: Some(Action::Open),
            success: Some(false),
            ..Default::default()
        })
        .pop()
        .expect("a refused OPEN in the audit trail");
    (
        r.reason.clone().unwrap_or_default().into_owned(),
        r.detail.clone().unwrap_or_default(),
    )
}

/// A raw client that sent `first`: how long until the relay closed it (EOF or reset).
async fn closed_after(relay: &RelayHandle, first: &[u8]) -> Duration {
    let mut c = TcpStream::connect(addr(relay)).await.expect("connect");
    let start = Instant::now();
    c.write_all(first).await.expect("write the first bytes");
    let mut buf = [0u8; 64];
    let n = within("the relay closing the client", DEADLINE, c.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "no bytes expected: {n:?}");
    start.elapsed()
}

/// A real rustls ClientHello for `name`.
fn hello(name: &str) -> Vec<u8> {
    let ca = Ca::new("unused");
    let cfg = std::sync::Arc::new(ca.client_config());
    let mut conn = rustls::ClientConnection::new(cfg, server_name(name)).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

#[tokio::test]
async fn each_name_reaches_its_own_server_and_unknown_names_the_default() {
    let mut s = setup("    default: ldaps_dc1\n").await;
    for (name, connector, answer) in [
        (DC1, "ldaps_dc1", "dc1: ping"),
        (DC2, "ldaps_dc2", "dc2: ping"),
        ("DC2.Corp.Local", "ldaps_dc2", "dc2: ping"),
        // Not routed: the default; its server's certificate names dc3 too.
        ("dc3.corp.local", "ldaps_dc1", "dc1: ping"),
    ] {
        let got = ask(&s.relay, &s.ca, name).await.expect("TLS end to end");
        assert_eq!(got, answer, "{name}");
        assert_eq!(s.agent.next_open().await, connector, "{name}");
    }
    let routed = |connector: &str, result: &str| {
        metric(
            &s.relay,
            &format!(
                "nowconnect_sni_routed_total{{listener=\"ldaps\",connector=\"{connector}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(routed("ldaps_dc1", "exact"), 1);
    assert_eq!(routed("ldaps_dc2", "exact"), 2);
    assert_eq!(routed("ldaps_dc1", "default"), 1);
    // The streams carry the chosen connector.
    let conns = |c: &str| {
        metric(
            &s.relay,
            &format!("nowconnect_tcp_connections_total{{connector=\"{c}\"}}"),
        )
    };
    assert_eq!((conns("ldaps_dc1"), conns("ldaps_dc2")), (2, 2));
    wait_for("streams closed", DEADLINE, || {
        s.relay.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn without_a_default_unknown_and_missing_names_are_closed_and_audited() {
    let mut s = setup("").await;
    let e = ask(&s.relay, &s.ca, "dc9.corp.local")
        .await
        .expect_err("closed by the relay");
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ),
        "{e}"
    );
    assert_eq!(rejected(&s.relay, "unknown_name"), 1);
    let (reason, detail) = last_refusal(&s.relay);
    assert_eq!(reason, "unknown_name");
    assert!(
        detail.contains("listener=ldaps") && detail.contains("sni=dc9.corp.local"),
        "{detail}"
    );

    // An IP address: rustls sends no server name.
    ask(&s.relay, &s.ca, "127.0.0.1")
        .await
        .expect_err("closed by the relay");
    assert_eq!(rejected(&s.relay, "no_sni"), 1);
    assert_eq!(last_refusal(&s.relay).0, "no_sni");

    // Nothing reached the agent, and a routed name still works.
    assert_eq!(
        ask(&s.relay, &s.ca, DC2).await.expect("routed"),
        "dc2: ping"
    );
    assert_eq!(s.agent.next_open().await, "ldaps_dc2");
    assert!(
        s.agent.opened.try_recv().is_err(),
        "only the routed client reached the agent"
    );
    wait_for("streams closed", DEADLINE, || {
        s.relay.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn a_dribbled_client_hello_is_cut_at_the_deadline_from_accept() {
    let s = setup("    sni_peek_timeout_ms: 300\n").await;
    let bytes = hello(DC1);
    let mut c = TcpStream::connect(addr(&s.relay)).await.expect("connect");
    let start = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut buf = [0u8; 16];
    let mut sent = 0;
    let closed = loop {
        tokio::select! {
            r = c.read(&mut buf) => {
                assert!(matches!(r, Ok(0) | Err(_)), "no bytes expected: {r:?}");
                break start.elapsed();
            }
            _ = pace.tick(), if sent < bytes.len() => {
                if c.write_all(&bytes[sent..=sent]).await.is_err() {
                    break start.elapsed();
                }
                sent += 1;
            }
        }
        assert!(start.elapsed() < DEADLINE, "never closed");
    };
    assert!(
        closed >= Duration::from_millis(300),
        "closed after {closed:?}"
    );
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    assert!(
        sent < bytes.len(),
        "the whole hello went out: the deadline did not hold"
    );
    assert_eq!(rejected(&s.relay, "timeout"), 1);
    assert_eq!(last_refusal(&s.relay).0, "timeout");
}

#[tokio::test]
async fn junk_and_plain_text_are_refused_at_once() {
    // A peek deadline far beyond the bounds below: a refusal in time is not a timeout.
    let s = setup("    sni_peek_timeout_ms: 20000\n").await;
    let mut junk = vec![22u8, 3, 1, 0xff, 0xff];
    junk.extend((0..64 * 1024).map(|i| (i % 251) as u8));
    let mut c = TcpStream::connect(addr(&s.relay)).await.expect("connect");
    let start = Instant::now();
    c.write_all(&junk[..1024]).await.expect("first KiB");
    let mut buf = [0u8; 16];
    let r = within("the refusal", Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // The rest can not be delivered: the relay is gone.
    let rest = c.write_all(&junk[1024..]).await;
    assert!(rest.is_err(), "63 KiB more were accepted after the refusal");
    assert_eq!(rejected(&s.relay, "invalid"), 1);
    let (reason, detail) = last_refusal(&s.relay);
    assert_eq!(reason, "invalid");
    assert!(detail.contains("bad_record_length"), "{detail}");
    assert_eq!(
        metric(&s.relay, "nowconnect_buffered_bytes{dir=\"c2a\"}"),
        0
    );

    let took = closed_after(&s.relay, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(rejected(&s.relay, "invalid"), 2);
    assert!(last_refusal(&s.relay).1.contains("not_handshake"));
    assert_eq!(s.relay.open_connections(), 0);
}

#[tokio::test]
async fn a_reload_changes_the_routes_for_new_clients() {
    let mut s = setup("").await;
    assert_eq!(
        ask(&s.relay, &s.ca, DC1).await.expect("routed"),
        "dc1: ping"
    );
    assert_eq!(s.agent.next_open().await, "ldaps_dc1");
    let bound = addr(&s.relay);
    // dc1's name now goes to ldaps_dc2 (whose server does not hold dc1's certificate: the
    // client refuses it, which shows the relay never answers for a backend).
    let swapped = yaml("").replace(&format!("{DC1}: ldaps_dc1"), &format!("{DC1}: ldaps_dc2"));
    let swapped = swapped.replace("default: ldaps_dc1\n", "");
    let cfg = RelayConfig::from_yaml_str(&swapped).expect("valid");
    let report = s.relay.reload_config(cfg).await.expect("reload");
    assert!(format!("{report:?}").contains("ldaps"), "{report:?}");
    assert_eq!(addr(&s.relay), bound, "same socket");
    let e = ask(&s.relay, &s.ca, DC1)
        .await
        .expect_err("wrong certificate");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert_eq!(s.agent.next_open().await, "ldaps_dc2");
}

#[tokio::test]
async fn behind_a_proxy_header_the_allowlist_comes_first_and_the_hello_is_read_after_the_header() {
    use nowconnect_testkit::proxy_protocol::{connect_with, v1, v2};
    let s = setup_with(
        "    proxy_protocol: true\n    allow_cidrs: [192.0.2.0/24]\n",
        "  trusted_proxies: [127.0.0.1/32]\n",
    )
    .await;
    let mut s = s;
    let relay_addr = addr(&s.relay);
    for header in [
        v2("192.0.2.10:5000".parse().expect("address"), relay_addr),
        v1("192.0.2.11:5001".parse().expect("address"), relay_addr),
    ] {
        let tcp = connect_with(relay_addr, None, &header).await;
        let mut tls =
            s.ca.connector()
                .connect(server_name(DC2), tcp)
                .await
                .expect("TLS after the PROXY header");
        tls.write_all(b"ping").await.expect("write");
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.expect("answer");
        assert_eq!(answer, "dc2: ping");
        assert_eq!(s.agent.next_open().await, "ldaps_dc2");
    }
    // Outside the allowlist: refused before any ClientHello is looked at, labelled with the
    // listener's name (no connector is chosen yet).
    let blocked = v2("203.0.113.9:5002".parse().expect("address"), relay_addr);
    let mut c = connect_with(relay_addr, None, &blocked).await;
    let mut buf = [0u8; 8];
    let r = within("the refusal", DEADLINE, c.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let cidr = "nowconnect_connections_rejected_total{connector=\"ldaps\",reason=\"cidr_blocked\"}";
    wait_for("the refusal counted", DEADLINE, || {
        metric(&s.relay, cidr) == 1
    })
    .await;
    assert_eq!(
        rejected(&s.relay, "timeout") + rejected(&s.relay, "closed"),
        0
    );
}

#[tokio::test]
async fn the_portal_lists_an_sni_listener_under_each_connector_with_its_routes() {
    use nowconnect_testkit::idp::{admin_token, ec_key, Idp, ISSUER};
    log::init();
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let yaml = format!(
        "listeners:\n  - name: ldaps\n    bind: 127.0.0.1:0\n    route_by: sni\n    routes:\n      \
         {DC1}: ldaps_dc1\n      '*.lab.corp.local': ldaps_lab\n    default: ldaps_dc1\n\
         tunnel:\n  host: 127.0.0.1\n  port: 0\nsecurity:\n  jwks_url: {}\n  issuer: {ISSUER}\n",
        idp.url()
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let relay = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded", DEADLINE, || relay.is_ready()).await;
    let admin = admin_token(&key, &["pwd", "otp"]);
    let r = nowconnect_testkit::http::request(
        relay.portal_addr(),
        "GET",
        "/api/v1/connectors",
        Some(&admin),
        None,
    )
    .await;
    let rows = r.array();
    let names: Vec<&str> = rows.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["ldaps_dc1", "ldaps_lab"], "{rows:?}");
    for row in rows {
        let l = &row["listeners"][0];
        assert_eq!(l["name"], "ldaps");
        assert_eq!(l["route_by"], "sni");
        assert_eq!(l["routes"][DC1], "ldaps_dc1");
        assert_eq!(l["routes"]["*.lab.corp.local"], "ldaps_lab");
        assert_eq!(l["default"], "ldaps_dc1");
    }
}

#[tokio::test]
async fn the_pdp_is_asked_about_the_connector_the_name_chose() {
    use nowconnect_testkit::http::{Reply, TestServer};
    let pdp = TestServer::start(|_, _, _| Reply::ok("{\"decision\":true}")).await;
    let more = format!("pdp:\n  url: {}\n", pdp.url("/access/v1/evaluation"));
    let mut s = setup_with("", &more).await;
    assert_eq!(
        ask(&s.relay, &s.ca, DC2).await.expect("allowed"),
        "dc2: ping"
    );
    assert_eq!(s.agent.next_open().await, "ldaps_dc2");
    assert_eq!(pdp.hits(), 1);
    let body: serde_json::Value = serde_json::from_slice(&pdp.body(0)).expect("an AuthZEN request");
    assert_eq!(body["resource"]["id"], "ldaps_dc2", "{body}");
    assert_eq!(body["context"]["listener"], "ldaps", "{body}");
}
