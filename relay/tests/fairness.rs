//! Listener fairness: one source address cannot take every client slot of a listener
//! (`max_conn_per_source`, by default a tenth of `limits.max_conn_total`).

use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, RelayConfig, RelayHandle};
use nowconnect_shared::{Dir, Frame};
use nowconnect_testkit::http;
use nowconnect_testkit::io::wait_closed;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::v2_agent;
use nowconnect_testkit::net;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};

const T: Duration = Duration::from_secs(5);

fn rejected(relay: &RelayHandle, reason: &str) -> u64 {
    let line = format!(
        "nowconnect_connections_rejected_total{{connector=\"addomain\",reason=\"{reason}\"}} "
    );
    relay
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn one_source_holding_its_share_does_not_starve_another() {
    log::init();
    // 20 client slots in all: the default share of one source is 2.
    let extra = format!("{DEV}limits:\n  max_conn_total: 20\n");
    let cfg = RelayConfig::from_yaml_str(&yaml::relay(&[("ldap", "addomain")], &extra))
        .expect("valid relay config");
    let relay = nowconnect_relay::start(cfg).await.expect("relay starts");
    let ldap = relay.listener_addr("ldap").expect("listener ldap");
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    wait_for("agent registered", DEADLINE, || {
        relay.agents_for("addomain") == 1
    })
    .await;

    // 127.0.0.1 opens connections until one is refused; each accepted one is a live stream.
    let mut held = Vec::new();
    let mut refused = loop {
        assert!(held.len() < 20, "127.0.0.1 was never refused");
        let decided = held.len() + 1;
        let mut c = net::connect(ldap).await;
        wait_for("the listener decided", DEADLINE, || {
            relay.open_connections() as u64 + rejected(&relay, "max_conn_per_source")
                == decided as u64
        })
        .await;
        if rejected(&relay, "max_conn_per_source") == 1 {
            break c;
        }
        let id = agent.next_open("addomain").await;
        agent.ping_pong(&mut c, id).await;
        held.push((c, id));
    };
    assert_eq!(held.len(), 2, "the share is a tenth of max_conn_total");
    wait_closed(&mut refused, T).await;

    // A second source is still served end to end, and so are the streams held.
    let mut other = net::connect_from(net::other_loopback(), ldap).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut other, id).await;
    for (c, id) in &mut held {
        agent.ping_pong(c, *id).await;
    }
    assert_eq!(relay.open_connections(), 3);

    // Counted in /metrics, and audited with the source and the cap.
    let (status, text) = http::get(relay.metrics_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "nowconnect_connections_rejected_total{connector=\"addomain\",reason=\"max_conn_per_source\"} 1"
        ),
        "{text}"
    );
    let denied = relay.audit_records(&AuditFilter {
        action: Some(Action::Open),
        success: Some(false),
        ..Default::default()
    });
    assert_eq!(denied.len(), 1, "{denied:?}");
    let rec = &denied[0];
    assert_eq!(rec.reason.as_deref(), Some("max_conn_per_source"));
    assert!(rec
        .source
        .as_deref()
        .is_some_and(|s| s.starts_with("127.0.0.1:")));
    assert!(rec
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("max_conn_per_source=2")));

    // A held connection that ends (client gone, agent done) gives its source the place back.
    let (c, id) = held.pop().expect("held");
    drop(c);
    assert_eq!(agent.recv().await, Frame::Fin { id, dir: Dir::C2a });
    agent.send(&Frame::Fin { id, dir: Dir::A2c }).await;
    wait_for("the stream ended", DEADLINE, || {
        relay.open_connections() == 2
    })
    .await;
    let mut again = net::connect(ldap).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut again, id).await;
    assert_eq!(rejected(&relay, "max_conn_per_source"), 1);
}
