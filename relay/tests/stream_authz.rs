//! Per-stream authorization: the AuthZEN PDP on every OPEN (allow, deny, timeout, fail_open,
//! cache), listener CIDR allowlists, and the cap on streams per agent.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, AuditRecord, RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::http::{Reply, TestServer};
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{v2_agent, MockAgent};
use nowconnect_testkit::net::{self, connect_from};
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

fn other() -> IpAddr {
    net::other_loopback()
}

fn yaml(extra: &str) -> String {
    yaml::relay(&[("ldap", "addomain")], extra)
}

/// A relay with listener `ldap` (connector `addomain`) and `extra` config.
async fn relay(extra: &str) -> RelayHandle {
    log::init();
    let cfg = RelayConfig::from_yaml_str(&yaml(extra)).expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
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
            r.lock().expect("reply").clone()
        })
        .await;
        Pdp { server, reply }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }

    fn yaml(&self, more: &str) -> String {
        format!(
            "{DEV}pdp:\n  url: {}\n{more}",
            self.server.url("/access/v1/evaluation")
        )
    }
}

fn counter(relay: &RelayHandle, line: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), line)
}

/// `nowconnect_pdp_{which}_total`: the catalog's `allow` (cache hits included), `deny`,
/// `errors` (timeouts included), and our `cache_hits`, `timeouts`.
fn decisions(relay: &RelayHandle, which: &str) -> u64 {
    counter(relay, &format!("nowconnect_pdp_{which}_total "))
}

fn rejected(relay: &RelayHandle, reason: &str) -> u64 {
    counter(
        relay,
        &format!(
            "nowconnect_connections_rejected_total{{connector=\"addomain\",reason=\"{reason}\"}}"
        ),
    )
}

/// The newest OPEN audit record (only failures with `Some(false)`).
fn last_open(relay: &RelayHandle, success: Option<bool>) -> AuditRecord {
    relay
        .audit_records(&AuditFilter {
            action: Some(Action::Open),
            success,
            ..Default::default()
        })
        .pop()
        .expect("an OPEN audit record")
}

/// The client is closed without a byte and the agent never hears of it.
async fn denied(agent: &mut MockAgent<TcpStream>, client: &mut TcpStream) {
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
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    let id = agent.expect_open("addomain").await;
    agent.ping_pong(&mut client, id).await;
    assert_eq!(pdp.server.hits(), 1);
    let body: serde_json::Value =
        serde_json::from_slice(&pdp.server.body(0)).expect("a JSON request body");
    assert_eq!(body["subject"]["type"], "agent");
    assert_eq!(body["subject"]["id"], "premise-01");
    assert_eq!(body["action"]["name"], "connect");
    assert_eq!(body["resource"]["type"], "connector");
    assert_eq!(body["resource"]["id"], "addomain");
    assert_eq!(body["context"]["client_ip"], "127.0.0.1");
    assert_eq!(body["context"]["listener"], "ldap");
    assert_eq!(decisions(&relay, "allow"), 1);
    let open = last_open(&relay, None);
    assert!(open.success);
    assert_eq!(open.by.as_deref(), Some("pdp"));
    assert_eq!(open.agent_id.as_deref(), Some("premise-01"));
}

#[tokio::test]
async fn pdp_deny_closes_the_client_before_any_open_and_is_not_cached() {
    let pdp = Pdp::start(false).await;
    let relay = relay(&pdp.yaml("")).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    for n in 1..=2u64 {
        let mut client = net::connect(ldap(&relay)).await;
        // The client talks at once; none of it may reach the agent.
        client.write_all(b"secret").await.expect("client write");
        denied(&mut agent, &mut client).await;
        assert_eq!(decisions(&relay, "deny"), n);
        assert_eq!(pdp.server.hits() as u64, n, "denials are asked again");
    }
    assert_eq!(rejected(&relay, "pdp_denied"), 2);
    let open = last_open(&relay, Some(false));
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
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let started = std::time::Instant::now();
    let mut client = net::connect(ldap(&relay)).await;
    denied(&mut agent, &mut client).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited for the slow PDP"
    );
    assert_eq!(decisions(&relay, "timeouts"), 1);

    for reply in [
        Reply {
            status: 500,
            ..Reply::ok("oops")
        },
        Reply::ok("{\"decision\":\"yes\"}"),
        Reply::ok("not json"),
    ] {
        pdp.set(reply);
        let mut client = net::connect(ldap(&relay)).await;
        denied(&mut agent, &mut client).await;
    }
    // The timeout above and these three.
    assert_eq!(decisions(&relay, "errors"), 4);
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
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    let id = agent.expect_open("addomain").await;
    agent.ping_pong(&mut client, id).await;
    assert_eq!(decisions(&relay, "timeouts"), 1);
    let open = last_open(&relay, None);
    assert!(open.success);
    assert_eq!(open.reason.as_deref(), Some("timeout"));
}

#[tokio::test]
async fn pdp_allow_is_cached_for_many_opens_within_the_ttl() {
    let pdp = Pdp::start(true).await;
    let relay = relay(&pdp.yaml("  cache_ttl_sec: 60\n")).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let addr = ldap(&relay);
    // 20 clients at once (one shared request), then 20 one after another (cache hits).
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(net::connect(addr).await);
    }
    for _ in 0..20 {
        agent.next_open("addomain").await;
    }
    for _ in 0..20 {
        let mut c = net::connect(addr).await;
        let id = agent.next_open("addomain").await;
        agent.ping_pong(&mut c, id).await;
    }
    assert_eq!(pdp.server.hits(), 1, "the PDP saw one call for 40 OPENs");
    assert_eq!(decisions(&relay, "allow"), 40);
    assert!(decisions(&relay, "cache_hits") >= 20);
    // Another client address is another question.
    let _c = connect_from(other(), addr).await;
    agent.next_open("addomain").await;
    assert_eq!(pdp.server.hits(), 2);
    drop(clients);
}

#[tokio::test]
async fn a_slow_pdp_holds_only_the_client_being_decided() {
    let pdp = Pdp::start(true).await;
    let relay = relay(&pdp.yaml("  cache_ttl_sec: 60\n  timeout_ms: 10000\n")).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let addr = ldap(&relay);
    let mut first = net::connect(addr).await;
    let first_id = agent.expect_open("addomain").await;

    pdp.set(Reply {
        delay: Duration::from_secs(2),
        ..Reply::ok("{\"decision\":true}")
    });
    let mut second = connect_from(other(), addr).await;
    wait_for("the PDP is asked about the second client", DEADLINE, || {
        pdp.server.hits() == 2
    })
    .await;
    // While that decision is pending, the established stream keeps flowing, promptly.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        agent.ping_pong(&mut first, first_id).await;
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
    // Then the second client is allowed and opened.
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut second, id).await;
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
    let relay =
        nowconnect_relay::start(RelayConfig::from_yaml_str(&yaml).expect("valid relay config"))
            .await
            .expect("relay starts");
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let addr = ldap(&relay);
    let mut client = net::connect(addr).await;
    denied(&mut agent, &mut client).await;
    assert_eq!(rejected(&relay, "cidr_blocked"), 1);
    let rec = last_open(&relay, Some(false));
    assert_eq!(
        (rec.by.as_deref(), rec.reason.as_deref()),
        (Some("cidr"), Some("cidr_blocked"))
    );
    assert!(rec.source.expect("source").starts_with("127.0.0.1:"));
    // The allowed address gets through.
    let mut ok = connect_from(other(), addr).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut ok, id).await;
}

#[tokio::test]
async fn streams_per_agent_are_capped() {
    let relay = relay(&format!("{DEV}limits:\n  max_streams_per_agent: 2\n")).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    let addr = ldap(&relay);
    let _a = net::connect(addr).await;
    let a_id = agent.expect_open("addomain").await;
    let mut b = net::connect(addr).await;
    let b_id = agent.expect_open("addomain").await;
    let mut c = net::connect(addr).await;
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
    wait_for("a stream closed", DEADLINE, || {
        relay.open_connections() == 1
    })
    .await;
    let mut d = net::connect(addr).await;
    let d_id = agent.next_open("addomain").await;
    agent.ping_pong(&mut d, d_id).await;
    agent.ping_pong(&mut b, b_id).await;
}

/// A PDP added by a reload decides the next OPEN on a tunnel that was up before the reload;
/// removed again, OPENs go through without asking it.
#[tokio::test]
async fn a_pdp_added_by_reload_decides_on_tunnels_already_up() {
    use nowconnect_relay::config::ProcessEnv;
    use nowconnect_testkit::temp::{self, TempDir};
    log::init();
    let pdp = Pdp::start(false).await;
    let dir = TempDir::new("authz-reload");
    let path = dir.write("cloud.yaml", &yaml(DEV));
    let cfg = RelayConfig::load(&path, &ProcessEnv).expect("valid relay config");
    let relay = nowconnect_relay::start(cfg).await.expect("relay starts");
    let mut agent = v2_agent(relay.tunnel_addr(), "pdp-agent", &["addomain"]).await;
    let _first = net::connect(ldap(&relay)).await;
    agent.expect_open("addomain").await;

    temp::replace(&path, &yaml(&pdp.yaml("")));
    let report = relay.reload(&path, &ProcessEnv).await.expect("applied");
    assert!(report.summary().contains("pdp"), "{}", report.summary());
    let mut second = net::connect(ldap(&relay)).await;
    denied(&mut agent, &mut second).await;
    assert_eq!(decisions(&relay, "deny"), 1);
    assert_eq!(pdp.server.hits(), 1);

    temp::replace(&path, &yaml(DEV));
    relay.reload(&path, &ProcessEnv).await.expect("applied");
    let _third = net::connect(ldap(&relay)).await;
    agent.next_open("addomain").await;
    assert_eq!(pdp.server.hits(), 1, "a removed PDP is not asked");
}
