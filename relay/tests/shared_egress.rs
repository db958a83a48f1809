//! Agents behind one shared egress address (`security.shared_egress_cidrs`): a bad-token storm
//! from one user there cools down that user's subject, not the address, so a valid agent behind
//! the same address still connects; without the setting the same storm locks the address.

use std::net::IpAddr;

use nowconnect_relay::{Action, AuditFilter, RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::idp::{claims, ec_key, mint, Idp, Key, ISSUER};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{refusal, upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::net::TcpStream;

/// Every agent and the attacker come from here.
fn egress() -> IpAddr {
    net::other_loopback()
}

/// A JWT relay with the default cool-down (20 failures) and, with `shared`, 127.0.0.2 marked
/// as shared egress.
async fn relay(idp: &Idp, shared: bool) -> RelayHandle {
    log::init();
    let egress_line = if shared {
        "  shared_egress_cidrs: [127.0.0.2/32]\n"
    } else {
        ""
    };
    let yaml = yaml::relay(
        &[("ldap", "addomain")],
        &format!(
            "security:\n  jwks_url: {}\n  issuer: {ISSUER}\n  auth_failure_limit: 20\n{egress_line}",
            idp.url()
        ),
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded", DEADLINE, || r.is_ready()).await;
    r
}

/// The status of one upgrade from the egress address with `token`.
async fn attempt(relay: &RelayHandle, token: Option<&str>) -> u16 {
    match upgrade(relay.tunnel_addr(), token, Some(egress())).await {
        Ok(_) => 101,
        Err(e) => refusal(e).0,
    }
}

/// 25 tokens of user `intruder` signed by a key the IdP never published: 20 get 401, the
/// cool-down then answers 429.
async fn storm(relay: &RelayHandle) {
    let forged = ec_key("forger").with_kid("ec-1");
    let mut c = claims("intruder");
    c["sub"] = "user:intruder".into();
    let bad = mint(&forged, &c);
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(attempt(relay, Some(&bad)).await);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
}

async fn valid_agent(relay: &RelayHandle, key: &Key) -> Result<MockAgent<TcpStream>, u16> {
    let token = mint(key, &claims("premise-01"));
    let ws = upgrade(relay.tunnel_addr(), Some(&token), Some(egress()))
        .await
        .map_err(|e| refusal(e).0)?;
    let mut a = MockAgent::v2(ws);
    a.send_hello("premise-01", &["addomain"]).await;
    assert_eq!(a.recv().await, Frame::HelloAck);
    Ok(a)
}

#[tokio::test]
async fn a_storm_from_one_user_behind_a_shared_egress_leaves_other_agents_in() {
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let relay = relay(&idp, true).await;
    storm(&relay).await;
    // The cool-down started for that subject only, and says so.
    let cooldowns = relay.audit_records(&AuditFilter {
        action: Some(Action::SourceCooldown),
        ..Default::default()
    });
    assert_eq!(cooldowns.len(), 1);
    let detail = cooldowns[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("user:intruder"), "{detail}");

    let agent = valid_agent(&relay, &key)
        .await
        .expect("a valid agent behind the same address connects");
    // The intruder is still cooling down; requests without a token count as their own subject.
    let mut c = claims("intruder");
    c["sub"] = "user:intruder".into();
    assert_eq!(attempt(&relay, Some(&mint(&key, &c))).await, 429);
    for _ in 0..20 {
        assert_eq!(attempt(&relay, None).await, 401);
    }
    assert_eq!(attempt(&relay, None).await, 429);
    drop(agent);
    let again = valid_agent(&relay, &key).await;
    assert!(again.is_ok(), "the agent reconnects: {:?}", again.err());
}

#[tokio::test]
async fn without_shared_egress_the_same_storm_locks_the_address() {
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let relay = relay(&idp, false).await;
    storm(&relay).await;
    assert_eq!(valid_agent(&relay, &key).await.err(), Some(429));
}
