//! Abuse controls on /tunnel: many failed upgrades, the per-source cool-down (429), and the cap
//! on attempts in progress per source.

use std::net::IpAddr;

use nowconnect_relay::{Action, AuditFilter, RelayConfig, RelayHandle};
use nowconnect_testkit::idp::{claims, ec_key, ed_key, mint, now, raw_token, Idp};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::process::rss_kib;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;

fn attacker() -> IpAddr {
    net::other_loopback()
}

async fn jwt_relay(jwks_url: &str, security: &str) -> RelayHandle {
    log::init();
    let yaml = yaml::relay(
        &[("ldap", "addomain")],
        &format!("security:\n  jwks_url: {jwks_url}\n{security}"),
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded", DEADLINE, || r.is_ready()).await;
    r
}

fn counter(relay: &RelayHandle, line: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), line)
}

fn status_and_retry_after(err: WsError) -> (u16, Option<u64>) {
    match err {
        WsError::Http(resp) => (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        ),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// One open stream through `agent`; returns the client and the stream id.
async fn open_stream(relay: &RelayHandle, agent: &mut MockAgent<TcpStream>) -> (TcpStream, u32) {
    let client = net::connect(relay.listener_addr("ldap").expect("listener ldap")).await;
    let id = agent.expect_open("addomain").await;
    (client, id)
}

#[tokio::test]
async fn a_thousand_failed_upgrades_leave_the_relay_serving_with_flat_memory() {
    let ec = ec_key("ec-1");
    let idp = Idp::start(&[&ec]).await;
    // No cool-down here, so that every attempt goes through the full token check.
    let relay = jwt_relay(
        &idp.url(),
        "  auth_failure_limit: 1000000\n  max_pending_upgrades_per_ip: 1000\n",
    )
    .await;
    let good = claims("premise-01");
    let mut agent = {
        let ws = upgrade(relay.tunnel_addr(), Some(&mint(&ec, &good)), None)
            .await
            .expect("a valid token is accepted");
        let mut a = MockAgent::v2(ws);
        a.hello("premise-01", &["addomain"]).await;
        a
    };
    let (mut client, id) = open_stream(&relay, &mut agent).await;

    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let impostor = ec_key("x").with_kid("ec-1");
    let bad_tokens: Vec<Option<String>> = vec![
        None,
        Some("garbage".into()),
        Some(raw_token(
            &json!({"alg": "none", "kid": "ec-1"}),
            &good,
            b"",
        )),
        Some(mint(&ec, &with("exp", json!(now() - 3600)))),
        Some(mint(&ec, &with("aud", json!("other")))),
        Some(mint(&impostor, &good)),
        Some(mint(&ec_key("x").with_kid("forged"), &good)),
        Some("x".repeat(20_000)),
    ];
    let storm = |n: usize| {
        let addr = relay.tunnel_addr();
        let bad = bad_tokens.clone();
        async move {
            for batch in 0..n / 10 {
                let mut tasks = Vec::new();
                for i in 0..10 {
                    let token = bad[(batch * 10 + i) % bad.len()].clone();
                    tasks.push(tokio::spawn(async move {
                        let r = upgrade(addr, token.as_deref(), Some(attacker())).await;
                        status_and_retry_after(r.expect_err("refused")).0
                    }));
                }
                for t in tasks {
                    let status = t.await.expect("attempt task");
                    assert!(status == 401 || status == 403, "status {status}");
                }
            }
        }
    };
    // Warm up (allocator pools, metric families), then measure.
    storm(200).await;
    let before = rss_kib();
    storm(1000).await;
    let after = rss_kib();
    eprintln!("RSS before {before} KiB, after 1000 failed upgrades {after} KiB");
    let failures: u64 = relay
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("nowconnect_agent_auth_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(failures, 1200);
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 1000 failed upgrades"
    );
    // Bounded state: one tracked source, the audit ring at its cap at most, no leaked slots.
    assert!(relay.tracked_sources() <= 2, "{}", relay.tracked_sources());
    assert!(
        relay.audit_records(&AuditFilter::default()).len() <= nowconnect_relay::audit::AUDIT_RING
    );
    assert_eq!(relay.open_connections(), 1);

    // The agent that was connected all along still carries its stream ...
    agent.ping_pong(&mut client, id).await;
    let (mut c2, id2) = open_stream(&relay, &mut agent).await;
    agent.ping_pong(&mut c2, id2).await;
    // ... and a new valid agent, even from the attacker's address, gets in.
    let ws = upgrade(
        relay.tunnel_addr(),
        Some(&mint(&ec, &claims("premise-02"))),
        Some(attacker()),
    )
    .await
    .expect("valid agent accepted");
    let mut second = MockAgent::v2(ws);
    second.hello("premise-02", &["db"]).await;
}

#[tokio::test]
async fn repeated_failures_from_one_source_get_429_for_a_cooldown() {
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    let relay = jwt_relay(
        &idp.url(),
        "  auth_failure_limit: 5\n  auth_failure_window_sec: 60\n  auth_cooldown_sec: 120\n",
    )
    .await;
    let good = mint(&ed, &claims("premise-01"));
    for _ in 0..5 {
        let err = upgrade(relay.tunnel_addr(), Some("garbage"), Some(attacker()))
            .await
            .expect_err("refused");
        assert_eq!(status_and_retry_after(err).0, 401);
    }
    // Now even a valid token from that source waits out the cool-down, without being read.
    for token in [Some("garbage"), Some(good.as_str()), None] {
        let err = upgrade(relay.tunnel_addr(), token, Some(attacker()))
            .await
            .expect_err("cooling down");
        let (status, retry) = status_and_retry_after(err);
        assert_eq!(status, 429);
        let retry = retry.expect("Retry-After");
        assert!((1..=120).contains(&retry), "{retry}");
    }
    assert_eq!(
        counter(
            &relay,
            "nowconnect_agent_auth_failures_total{reason=\"cooldown\"}"
        ),
        3
    );
    let cd = relay.audit_records(&AuditFilter {
        action: Some(Action::SourceCooldown),
        ..Default::default()
    });
    assert_eq!(cd.len(), 1);
    assert_eq!(cd[0].source.as_deref(), Some("127.0.0.2"));
    // Other sources are unaffected.
    let ws = upgrade(relay.tunnel_addr(), Some(&good), None)
        .await
        .expect("127.0.0.1 is not cooling down");
    let mut a = MockAgent::v2(ws);
    a.hello("premise-01", &["addomain"]).await;
}

#[tokio::test]
async fn attempts_in_progress_are_capped_per_source() {
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    let relay = jwt_relay(&idp.url(), "  max_pending_upgrades_per_ip: 2\n").await;
    let token = mint(&ed, &claims("premise-01"));
    // Two upgrades that never send HELLO hold both slots of 127.0.0.1.
    let first = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect("first slot");
    let _second = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect("second slot");
    let err = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect_err("third refused");
    assert_eq!(status_and_retry_after(err), (429, Some(1)));
    assert_eq!(
        counter(
            &relay,
            "nowconnect_agent_auth_failures_total{reason=\"too_many_pending\"}"
        ),
        1
    );
    // Another source has its own slots.
    let _other = upgrade(relay.tunnel_addr(), Some(&token), Some(attacker()))
        .await
        .expect("another source has its own slots");
    // A HELLO accepted frees its slot.
    let mut a = MockAgent::v2(first);
    a.hello("premise-01", &["addomain"]).await;
    let ws = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect("slot free again");
    let mut b = MockAgent::v2(ws);
    b.hello("premise-01", &["addomain"]).await;
    // Registered tunnels hold no slot: with `_second` still pending, one more attempt fits and
    // the next does not.
    let _third = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect("one slot left");
    let err = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect_err("both slots taken again");
    assert_eq!(status_and_retry_after(err).0, 429);
}
