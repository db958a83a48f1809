//! Per-stream authorization: the AuthZEN PDP on every OPEN (allow, deny, timeout, fail_open,
//! cache), listener CIDR allowlists, and the cap on streams per agent.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use support::idp::{connect_from, Reply, TestServer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OTHER: &str = "127.0.0.2";

fn other() -> IpAddr {
    OTHER.parse().unwrap()
}

/// A PDP whose answer the test changes at run time.
struct Pdp {
    server: TestServer,
    reply: Arc<Mutex<Reply>>,
}

impl Pdp {
    async fn start(decision: bool) -> Pdp {
        let reply = Arc::new(Mutex::new(Reply::ok(format!(
            "{{\"decision\":{decision}}}"
        ))));
        let r = reply.clone();
        let server = TestServer::start(move |method, path, _| {
            assert_eq!((method, path), ("POST", "/access/v1/evaluation"));
            r.lock().unwrap().clone()
        })
        .await;
        Pdp { server, reply }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn yaml(&self, more: &str) -> String {
        format!(
            "{DEV}pdp:\n  url: {}\n{more}",
            self.server.url("/access/v1/evaluation")
        )
    }
}

fn counter(relay: &RelayHandle, line: &str) -> u64 {
    relay
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn decisions(relay: &RelayHandle, result: &str) -> u64 {
    counter(
        relay,
        &format!("nowconnect_pdp_decisions_total{{result=\"{result}\"}}"),
    )
}

fn rejected(relay: &RelayHandle, reason: &str) -> u64 {
    counter(
        relay,
        &format!(
            "nowconnect_connections_rejected_total{{connector=\"addomain\",reason=\"{reason}\"}}"
        ),
    )
}

/// The next OPEN, skipping leftovers of earlier streams.
async fn next_open<S>(agent: &mut V2Agent<S>) -> u32
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match agent.recv().await {
            Frame::Open { id, .. } => return id,
            Frame::Fin { .. } | Frame::Rst { .. } | Frame::Window { .. } => continue,
            other => panic!("expected OPEN, got {other:?}"),
        }
    }
}

/// Bytes flow both ways on an opened stream.
async fn echo<S>(agent: &mut V2Agent<S>, client: &mut TcpStream, id: u32)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    client.write_all(b"ping").await.unwrap();
    match agent.recv().await {
        Frame::Data { id: got, payload } => {
            assert_eq!((got, &payload[..]), (id, &b"ping"[..]));
        }
        other => panic!("expected DATA, got {other:?}"),
    }
    agent.send(&data(id, b"pong")).await;
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");
}

/// The client is closed without a byte and the agent never hears of it.
async fn denied<S>(agent: &mut V2Agent<S>, client: &mut TcpStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (bytes, closed) = read_to_close(client, T).await;
    assert!(closed && bytes.is_empty(), "client not closed");
    assert!(
        agent.try_recv(Duration::from_millis(200)).await.is_none(),
        "the agent got a frame for a denied client"
    );
}

#[tokio::test]
async fn pdp_allow_relays_and_is_asked_in_authzen_form() {
    let pdp = Pdp::start(true).await;
    let relay = relay(&pdp.yaml("")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let id = agent.expect_open("addomain").await;
    echo(&mut agent, &mut client, id).await;
    assert_eq!(pdp.server.hits(), 1);
    let body: serde_json::Value =
        serde_json::from_slice(&pdp.server.bodies.lock().unwrap()[0]).unwrap();
    assert_eq!(body["subject"]["type"], "agent");
    assert_eq!(body["subject"]["id"], "premise-01");
    assert_eq!(body["action"]["name"], "connect");
    assert_eq!(body["resource"]["type"], "connector");
    assert_eq!(body["resource"]["id"], "addomain");
    assert_eq!(body["context"]["client_ip"], "127.0.0.1");
    assert_eq!(body["context"]["listener"], "ldap");
    assert_eq!(decisions(&relay, "allow"), 1);
    let open = relay
        .audit_records(&AuditFilter {
            action: Some(Action::Open),
            ..Default::default()
        })
        .pop()
        .unwrap();
    assert!(open.success);
    assert_eq!(open.by.as_deref(), Some("pdp"));
    assert_eq!(open.agent_id.as_deref(), Some("premise-01"));
}

#[tokio::test]
async fn pdp_deny_closes_the_client_before_any_open_and_is_not_cached() {
    let pdp = Pdp::start(false).await;
    let relay = relay(&pdp.yaml("")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    for n in 1..=2u64 {
        let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
            .await
            .unwrap();
        // The client talks at once; none of it may reach the agent.
        client.write_all(b"secret").await.unwrap();
        denied(&mut agent, &mut client).await;
        assert_eq!(decisions(&relay, "deny"), n);
        assert_eq!(pdp.server.hits() as u64, n, "denials are asked again");
    }
    assert_eq!(rejected(&relay, "pdp_denied"), 2);
    let open = relay
        .audit_records(&AuditFilter {
            action: Some(Action::Open),
            success: Some(false),
            ..Default::default()
        })
        .pop()
        .unwrap();
    assert_eq!(
        (open.by.as_deref(), open.reason.as_deref()),
        (Some("pdp"), Some("pdp_denied"))
    );
    // The tunnel itself is fine.
    assert_eq!(relay.agents_for("addomain"), 1);
}

#[tokio::test]
async fn pdp_timeout_and_errors_deny() {
    let pdp = Pdp::start(true).await;
    pdp.set(Reply {
        delay: Duration::from_secs(3),
        ..Reply::ok("{\"decision\":true}")
    });
    let relay = relay(&pdp.yaml("  timeout_ms: 100\n")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let started = std::time::Instant::now();
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    denied(&mut agent, &mut client).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited for the slow PDP"
    );
    assert_eq!(decisions(&relay, "timeout"), 1);

    for reply in [
        Reply {
            status: 500,
            ..Reply::ok("oops")
        },
        Reply::ok("{\"decision\":\"yes\"}"),
        Reply::ok("not json"),
    ] {
        pdp.set(reply);
        let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
            .await
            .unwrap();
        denied(&mut agent, &mut client).await;
    }
    assert_eq!(decisions(&relay, "error"), 3);
    assert_eq!(rejected(&relay, "pdp_denied"), 4);
}

#[tokio::test]
async fn pdp_timeout_with_fail_open_allows() {
    let pdp = Pdp::start(false).await;
    pdp.set(Reply {
        delay: Duration::from_secs(3),
        ..Reply::ok("{\"decision\":false}")
    });
    let relay = relay(&pdp.yaml("  timeout_ms: 100\n  fail_open: true\n")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let id = agent.expect_open("addomain").await;
    echo(&mut agent, &mut client, id).await;
    assert_eq!(decisions(&relay, "timeout"), 1);
    let open = relay
        .audit_records(&AuditFilter {
            action: Some(Action::Open),
            ..Default::default()
        })
        .pop()
        .unwrap();
    assert!(open.success);
    assert_eq!(open.reason.as_deref(), Some("timeout"));
}

#[tokio::test]
async fn pdp_allow_is_cached_for_many_opens_within_the_ttl() {
    let pdp = Pdp::start(true).await;
    let relay = relay(&pdp.yaml("  cache_ttl_sec: 60\n")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let addr = relay.listener_addr("ldap").unwrap();
    // 20 clients at once (one shared request), then 20 one after another (cache hits).
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..20 {
        next_open(&mut agent).await;
    }
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let id = next_open(&mut agent).await;
        echo(&mut agent, &mut c, id).await;
    }
    assert_eq!(pdp.server.hits(), 1, "the PDP saw one call for 40 OPENs");
    assert_eq!(
        decisions(&relay, "allow") + decisions(&relay, "cache_hit"),
        40
    );
    assert!(decisions(&relay, "cache_hit") >= 20);
    // Another client address is another question.
    let _c = connect_from(other(), addr).await;
    next_open(&mut agent).await;
    assert_eq!(pdp.server.hits(), 2);
    drop(clients);
}

#[tokio::test]
async fn a_slow_pdp_holds_only_the_client_being_decided() {
    let pdp = Pdp::start(true).await;
    let relay = relay(&pdp.yaml("  cache_ttl_sec: 60\n  timeout_ms: 10000\n")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let addr = relay.listener_addr("ldap").unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let first_id = agent.expect_open("addomain").await;

    pdp.set(Reply {
        delay: Duration::from_secs(2),
        ..Reply::ok("{\"decision\":true}")
    });
    let mut second = connect_from(other(), addr).await;
    eventually("the PDP is asked about the second client", || {
        pdp.server.hits() == 2
    })
    .await;
    // While that decision is pending, the established stream keeps flowing, promptly.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        echo(&mut agent, &mut first, first_id).await;
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
    // Then the second client is allowed and opened.
    let id = next_open(&mut agent).await;
    echo(&mut agent, &mut second, id).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "opened before the PDP answered"
    );
}

#[tokio::test]
async fn listener_allowing_only_127_0_0_2_refuses_127_0_0_1() {
    let yaml = yaml(DEV).replace(
        "connector: addomain\n",
        "connector: addomain\n    allow_cidrs: [127.0.0.2/32]\n",
    );
    let relay = nowconnect_relay::start(RelayConfig::from_yaml_str(&yaml).unwrap())
        .await
        .unwrap();
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let addr = relay.listener_addr("ldap").unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    denied(&mut agent, &mut client).await;
    assert_eq!(rejected(&relay, "cidr_blocked"), 1);
    let rec = relay
        .audit_records(&AuditFilter {
            action: Some(Action::Open),
            success: Some(false),
            ..Default::default()
        })
        .pop()
        .unwrap();
    assert_eq!(
        (rec.by.as_deref(), rec.reason.as_deref()),
        (Some("cidr"), Some("cidr_blocked"))
    );
    assert!(rec.source.unwrap().starts_with("127.0.0.1:"));
    // The allowed address gets through.
    let mut ok = connect_from(other(), addr).await;
    let id = next_open(&mut agent).await;
    echo(&mut agent, &mut ok, id).await;
}

#[tokio::test]
async fn streams_per_agent_are_capped() {
    let relay = relay(&format!("{DEV}limits:\n  max_streams_per_agent: 2\n")).await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    let addr = relay.listener_addr("ldap").unwrap();
    let _a = TcpStream::connect(addr).await.unwrap();
    let a_id = agent.expect_open("addomain").await;
    let mut b = TcpStream::connect(addr).await.unwrap();
    let b_id = agent.expect_open("addomain").await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    denied(&mut agent, &mut c).await;
    assert_eq!(rejected(&relay, "max_streams_per_agent"), 1);
    // A stream ends (the agent resets it): room for one more.
    agent
        .send(&Frame::Rst {
            id: a_id,
            code: nowconnect_shared::RstCode::Other,
            reason: "done".into(),
        })
        .await;
    eventually("a stream closed", || relay.open_connections() == 1).await;
    let mut d = TcpStream::connect(addr).await.unwrap();
    let d_id = next_open(&mut agent).await;
    echo(&mut agent, &mut d, d_id).await;
    echo(&mut agent, &mut b, b_id).await;
}
