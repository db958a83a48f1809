//! PROXY protocol v1/v2 in front of `/tunnel` and a listener, headers written by hand
//! (testkit `proxy_protocol`): every socket comes from 127.0.0.1 (the "ingress", trusted), and
//! the relay's allowlists, cool-downs, per-source caps, audit, portal and PDP see the address in
//! the header. Headers from an untrusted peer, garbled or missing headers are refused and counted.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, AuditRecord, RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::http::{self, Reply, TestServer};
use nowconnect_testkit::idp::{admin_token, claims, ec_key, mint, Idp, Key, ISSUER};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{handshake, refusal, MockAgent, OFFER_BOTH};
use nowconnect_testkit::net;
use nowconnect_testkit::proxy_protocol::{
    connect_with, try_connect_with, v1, v2, v2_local, v2_raw,
};
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;

const ALLOWED: &str = "192.0.2.10:5000";
const ALLOWED_2: &str = "192.0.2.11:5001";
const BLOCKED: &str = "203.0.113.9:5002";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A relay whose tunnel port and listener `ldap` (connector `addomain`, clients from
/// 192.0.2.0/24 only) expect PROXY headers from 127.0.0.1; agents from 192.0.2.0/24 only; JWTs
/// from `idp`; a portal on its own port; `tunnel.preauth` as `preauth`, then `more` under
/// `security:` and `extra` sections.
async fn relay(idp: &Idp, preauth: &str, more: &str, extra: &str) -> RelayHandle {
    log::init();
    let yaml = format!(
        "listeners:\n  - name: ldap\n    bind: 127.0.0.1:0\n    connector: addomain\n    \
         proxy_protocol: true\n    allow_cidrs: [192.0.2.0/24]\n\
         tunnel:\n  host: 127.0.0.1\n  port: 0\n  proxy_protocol: true\n  preauth: {preauth}\n\
         security:\n  jwks_url: {}\n  issuer: {ISSUER}\n  trusted_proxies: [127.0.0.1/32]\n  \
         tunnel_allow_cidrs: [192.0.2.0/24]\n{more}\
         portal:\n  bind: 127.0.0.1:0\n{extra}",
        idp.url()
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded", DEADLINE, || r.is_ready()).await;
    r
}

fn metric(relay: &RelayHandle, line: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), line)
}

fn http_refused(relay: &RelayHandle, reason: &str) -> u64 {
    metric(
        relay,
        &format!("nowconnect_http_refused_total{{reason=\"{reason}\"}}"),
    )
}

fn rejected(relay: &RelayHandle, reason: &str) -> u64 {
    metric(
        relay,
        &format!(
            "nowconnect_connections_rejected_total{{connector=\"addomain\",reason=\"{reason}\"}}"
        ),
    )
}

fn last(relay: &RelayHandle, action: Action, success: bool) -> AuditRecord {
    relay
        .audit_records(&AuditFilter {
            action: Some(action),
            success: Some(success),
            ..Default::default()
        })
        .pop()
        .unwrap_or_else(|| panic!("no audit record of {action:?} success={success}"))
}

/// Upgrades `/tunnel` over a connection that starts with `header`, from `from` when given.
async fn upgrade_behind(
    relay: &RelayHandle,
    header: &[u8],
    from: Option<IpAddr>,
    token: Option<&str>,
) -> Result<MockAgent<TcpStream>, WsError> {
    let addr = relay.tunnel_addr();
    let sock = connect_with(addr, from, header).await;
    let (ws, _) = handshake(
        sock,
        &format!("ws://{addr}/tunnel"),
        Some(OFFER_BOTH),
        token,
    )
    .await?;
    Ok(MockAgent::v2(ws))
}

/// A valid agent `agent_id` behind a header naming `client`: HELLO_ACK.
async fn agent_behind(
    relay: &RelayHandle,
    key: &Key,
    client: SocketAddr,
    agent_id: &str,
) -> MockAgent<TcpStream> {
    let header = v2(client, relay.tunnel_addr());
    let token = mint(key, &claims(agent_id));
    let mut a = upgrade_behind(relay, &header, None, Some(&token))
        .await
        .expect("upgrade accepted");
    a.send_hello(agent_id, &["addomain"]).await;
    assert_eq!(a.recv().await, Frame::HelloAck);
    a
}

/// A connection starting with `header` (from `from`) that the relay refuses at once: a reset
/// before the connect or the write completed, or a close without an answer.
async fn refused_at_once(addr: SocketAddr, from: Option<IpAddr>, header: &[u8]) {
    if let Ok(mut s) = try_connect_with(addr, from, header).await {
        closed_silently(&mut s, Duration::from_secs(2)).await;
    }
}

/// The relay closed `s` without an HTTP answer (EOF or reset) within `wait`.
async fn closed_silently(s: &mut TcpStream, wait: Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let end = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => panic!("still open after {wait:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        got.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// `GET /healthz` over a connection that already sent its PROXY header.
async fn healthz(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn tunnel_allowlist_audit_and_portal_see_the_address_in_the_header() {
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let relay = relay(&idp, "{head_timeout_ms: 1000}", "", "").await;
    let token = mint(&key, &claims("premise-01"));

    // v1 naming an allowed address: admitted, although the socket peer is 127.0.0.1.
    let header = v1(sa(ALLOWED), relay.tunnel_addr());
    let mut a = upgrade_behind(&relay, &header, None, Some(&token))
        .await
        .expect("v1 header with an allowed address is admitted");
    a.send_hello("premise-01", &["addomain"]).await;
    assert_eq!(a.recv().await, Frame::HelloAck);
    assert_eq!(
        last(&relay, Action::TunnelAuth, true).source.as_deref(),
        Some(ALLOWED)
    );
    assert_eq!(
        last(&relay, Action::Hello, true).source.as_deref(),
        Some(ALLOWED)
    );
    // The portal shows the agent at that address.
    let admin = admin_token(&key, &["pwd", "otp"]);
    let agents = http::request(
        relay.portal_addr(),
        "GET",
        "/api/v1/agents",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(agents.status, 200, "{}", agents.text);
    assert_eq!(agents.array()[0]["remote_addr"], ALLOWED);

    // v2 naming a blocked address: 403, audited under that address.
    let header = v2(sa(BLOCKED), relay.tunnel_addr());
    let err = upgrade_behind(&relay, &header, None, Some(&token))
        .await
        .expect_err("blocked address refused");
    assert_eq!(refusal(err).0, 403);
    let r = last(&relay, Action::TunnelAuth, false);
    assert_eq!(r.reason.as_deref(), Some("cidr_blocked"));
    assert_eq!(r.source.as_deref(), Some(BLOCKED));

    // LOCAL (the ingress's own health check): the socket peer itself, 127.0.0.1, which may
    // ask /healthz but is no allowed agent address.
    let mut s = connect_with(relay.tunnel_addr(), None, &v2_local()).await;
    assert!(healthz(&mut s).await.starts_with("HTTP/1.1 200"));
    let err = upgrade_behind(&relay, &v2_local(), None, Some(&token))
        .await
        .expect_err("LOCAL is the proxy itself");
    assert_eq!(refusal(err).0, 403);

    // An untrusted sender's header is not believed: closed before anything is answered.
    refused_at_once(
        relay.tunnel_addr(),
        Some(net::other_loopback()),
        &v2(sa(ALLOWED), relay.tunnel_addr()),
    )
    .await;
    assert_eq!(http_refused(&relay, "proxy_untrusted"), 1);

    // A trusted peer without a header (plain HTTP), with a garbled one, with a v2 header over
    // the length cap, and with none at all (until the deadline).
    let mut s = connect_with(
        relay.tunnel_addr(),
        None,
        b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n",
    )
    .await;
    closed_silently(&mut s, Duration::from_secs(2)).await;
    let mut garbled = v2(sa(ALLOWED), relay.tunnel_addr());
    garbled[12] = 0x31;
    let mut s = connect_with(relay.tunnel_addr(), None, &garbled).await;
    closed_silently(&mut s, Duration::from_secs(2)).await;
    let mut s = connect_with(relay.tunnel_addr(), None, &v2_raw(0x21, 0x11, &[0; 600])).await;
    closed_silently(&mut s, Duration::from_secs(2)).await;
    wait_for("garbled headers counted", DEADLINE, || {
        http_refused(&relay, "proxy_header") == 3
    })
    .await;
    let mut s = connect_with(relay.tunnel_addr(), None, b"").await;
    closed_silently(&mut s, Duration::from_secs(3)).await;
    wait_for("the missing header counted", DEADLINE, || {
        http_refused(&relay, "proxy_timeout") == 1
    })
    .await;
    // The agent admitted first is still there.
    assert_eq!(relay.agents_for("addomain"), 1);
    drop(a);
}

#[tokio::test]
async fn cooldowns_and_the_source_cap_count_the_address_in_the_header() {
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let relay = relay(&idp, "{max_per_source: 2}", "  auth_failure_limit: 3\n", "").await;
    let bad = mint(&ec_key("impostor").with_kid("ec-1"), &claims("premise-01"));
    for _ in 0..3 {
        let err = upgrade_behind(
            &relay,
            &v2(sa(ALLOWED), relay.tunnel_addr()),
            None,
            Some(&bad),
        )
        .await
        .expect_err("bad token refused");
        assert_eq!(refusal(err).0, 401);
    }
    // ALLOWED is cooling down; another address behind the same ingress is not.
    let err = upgrade_behind(
        &relay,
        &v1(sa(ALLOWED), relay.tunnel_addr()),
        None,
        Some(&bad),
    )
    .await
    .expect_err("cool-down");
    assert_eq!(refusal(err).0, 429);
    let cooldown = last(&relay, Action::SourceCooldown, false);
    assert_eq!(cooldown.source.as_deref(), Some("192.0.2.10"));
    let agent = agent_behind(&relay, &key, sa(ALLOWED_2), "premise-01").await;

    // Two connections that named 192.0.2.20 and said nothing more: the third is closed.
    let quiet = sa("192.0.2.20:6000");
    let _q1 = connect_with(relay.tunnel_addr(), None, &v2(quiet, relay.tunnel_addr())).await;
    let _q2 = connect_with(relay.tunnel_addr(), None, &v1(quiet, relay.tunnel_addr())).await;
    wait_for("two held", DEADLINE, || {
        metric(&relay, "nowconnect_http_preauth_connections ") == 2
    })
    .await;
    refused_at_once(relay.tunnel_addr(), None, &v2(quiet, relay.tunnel_addr())).await;
    assert_eq!(http_refused(&relay, "source_cap"), 1);
    let mut other = connect_with(
        relay.tunnel_addr(),
        None,
        &v2(sa("192.0.2.21:6001"), relay.tunnel_addr()),
    )
    .await;
    assert!(healthz(&mut other).await.starts_with("HTTP/1.1 200"));
    drop(agent);
}

#[tokio::test]
async fn listener_allowlist_pdp_and_audit_see_the_address_in_the_header() {
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let asked = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let seen = asked.clone();
    let pdp = TestServer::start(move |_, _, body| {
        if let Ok(v) = serde_json::from_slice(body) {
            seen.lock().expect("pdp bodies").push(v);
        }
        Reply::ok("{\"decision\":true}")
    })
    .await;
    let relay = relay(
        &idp,
        "{}",
        "",
        &format!("pdp:\n  url: {}\n", pdp.url("/access/v1/evaluation")),
    )
    .await;
    let mut agent = agent_behind(&relay, &key, sa(ALLOWED), "premise-01").await;
    let ldap = relay.listener_addr("ldap").expect("listener ldap");

    // A client named 192.0.2.30 by the ingress: allowed, asked of the PDP, audited as such;
    // the bytes after the header reach the agent unchanged.
    let client = sa("192.0.2.30:7000");
    let mut c = connect_with(ldap, None, &v2(client, ldap)).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut c, id).await;
    let open = last(&relay, Action::Open, true);
    assert_eq!(open.source.as_deref(), Some("192.0.2.30:7000"));
    let body = asked.lock().expect("pdp bodies")[0].clone();
    assert_eq!(body["context"]["client_ip"], "192.0.2.30");
    assert_eq!(body["context"]["client_port"], 7000);

    // v1 naming a blocked address: closed before any OPEN, audited under that address.
    let mut c = connect_with(ldap, None, &v1(sa(BLOCKED), ldap)).await;
    closed_silently(&mut c, Duration::from_secs(2)).await;
    let r = last(&relay, Action::Open, false);
    assert_eq!(r.reason.as_deref(), Some("cidr_blocked"));
    assert_eq!(r.source.as_deref(), Some(BLOCKED));

    // An untrusted sender, and a trusted one with a garbled header: closed and counted.
    refused_at_once(ldap, Some(net::other_loopback()), &v2(client, ldap)).await;
    assert_eq!(rejected(&relay, "proxy_untrusted"), 1);
    let mut c = connect_with(ldap, None, b"PROXY TCP4 banana\r\nhello").await;
    closed_silently(&mut c, Duration::from_secs(2)).await;
    wait_for("garbled header counted", DEADLINE, || {
        rejected(&relay, "proxy_header") == 1
    })
    .await;
    // Neither reached the agent.
    assert_eq!(agent.try_recv(Duration::from_millis(200)).await, None);
}
