//! Stolen or copied agent tokens, sent for real over loopback with tokens minted here: the caps
//! on tunnels per token (`jti`) and per agent_id, and a second tunnel of an agent_id from
//! another source address (127.0.0.2), audited, shown in the portal and decided by
//! `security.duplicate_agent`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, AuditRecord, RelayConfig, RelayHandle};
use nowconnect_testkit::http::request as api;
use nowconnect_testkit::idp::{admin_token, claims, ec_key, mint, Idp, Key};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, wait_for_async, DEADLINE};
use nowconnect_testkit::yaml;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const AGENT: &str = "premise-01";

/// A relay with JWT agents from `idp` (listeners `ldap` -> `addomain`, `pg` -> `db`), `security`
/// lines (two-space indented) added to its `security` section and `more` sections after it;
/// ready (keys loaded).
async fn relay(idp: &Idp, dir: &Path, security: &str, more: &str) -> RelayHandle {
    log::init();
    let y = yaml::under(
        &yaml::portal_relay(&idp.url(), dir, more),
        "security",
        security,
    );
    let cfg = RelayConfig::from_yaml_str(&y).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded (/readyz)", DEADLINE, || r.is_ready()).await;
    r
}

/// A token for [`AGENT`], with `jti` when given.
fn token(key: &Key, jti: Option<&str>) -> String {
    let mut c = claims(AGENT);
    if let Some(j) = jti {
        c["jti"] = json!(j);
    }
    mint(key, &c)
}

/// A tunnel from `from` (127.0.0.1 when `None`) that said HELLO for `addomain`; `Ok` with the
/// agent on HELLO_ACK, the close frame on a refusal.
async fn tunnel(
    relay: &RelayHandle,
    token: &str,
    from: Option<IpAddr>,
) -> Result<MockAgent<TcpStream>, (CloseCode, String)> {
    let ws = upgrade(relay.tunnel_addr(), Some(token), from)
        .await
        .expect("upgrade accepted");
    let mut a = MockAgent::v2(ws);
    a.hello_answer(AGENT, &["addomain"]).await.map(|()| a)
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

/// A client on `ldap` reaches `agent` (and so no other tunnel: each client is one pick).
async fn gets_the_stream(relay: &RelayHandle, agent: &mut MockAgent<TcpStream>) -> TcpStream {
    let mut client = net::connect(ldap(relay)).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut client, id).await;
    client
}

fn gauge(relay: &RelayHandle, name: &str) -> u64 {
    relay
        .metrics_text()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn failures(relay: &RelayHandle, reason: &str) -> u64 {
    gauge(
        relay,
        &format!("nowconnect_agent_auth_failures_total{{reason=\"{reason}\"}}"),
    )
}

fn records(relay: &RelayHandle, action: Action) -> Vec<AuditRecord> {
    relay.audit_records(&AuditFilter {
        action: Some(action),
        ..Default::default()
    })
}

/// `GET /api/v1/agents` as an administrator.
async fn agents(relay: &RelayHandle, key: &Key) -> Vec<Value> {
    let admin = admin_token(key, &["pwd", "otp"]);
    let r = api(
        relay.portal_addr(),
        "GET",
        "/api/v1/agents",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.array().clone()
}

/// (tunnel_id, remote ip, takes_new_streams, duplicate) of every listed tunnel.
fn standing(rows: &[Value]) -> Vec<(u64, String, bool, bool)> {
    rows.iter()
        .map(|r| {
            let addr: SocketAddr = r["remote_addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .expect("remote_addr");
            (
                r["tunnel_id"].as_u64().expect("tunnel_id"),
                addr.ip().to_string(),
                r["takes_new_streams"].as_bool().expect("takes_new_streams"),
                r["duplicate"].as_bool().expect("duplicate"),
            )
        })
        .collect()
}

/// The duplicate record names both tunnels and both addresses.
fn assert_names_both(rec: &AuditRecord, rows: &[Value]) {
    let detail = rec.detail.as_deref().expect("detail");
    for r in rows {
        let id = r["tunnel_id"].as_u64().expect("tunnel_id");
        let addr = r["remote_addr"].as_str().expect("remote_addr");
        assert!(
            detail.contains(&format!("tunnel {id} from {addr}")),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn one_token_holds_only_its_cap_of_500_tunnels_and_one_agent_only_its_own() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("caps");
    let relay = relay(&idp, dir.path(), "", "").await;
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused: Vec<(CloseCode, String)> = Vec::new();
    // 250 with one token that has a jti, then 250 with one that has none; 10 at a time (the
    // source's pending-upgrade cap is 16).
    for jti in [Some("stolen-1"), None] {
        let t = token(&key, jti);
        for _ in 0..250 / 10 {
            let mut batch = JoinSet::new();
            for _ in 0..10 {
                let (addr, t) = (relay.tunnel_addr(), t.clone());
                batch.spawn(async move {
                    let ws = upgrade(addr, Some(&t), None).await.expect("upgrade");
                    let mut a = MockAgent::v2(ws);
                    a.hello_answer(AGENT, &["addomain"]).await.map(|()| a)
                });
            }
            while let Some(r) = batch.join_next().await {
                match r.expect("attempt task") {
                    Ok(a) => held.push(a),
                    Err(close) => refused.push(close),
                }
            }
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(25), "500 attempts took {took:?}");
    // The jti'd token: 2 (limits.max_tunnels_per_jti); then the agent_id is full at 3.
    assert_eq!(held.len(), 3, "admitted tunnels");
    assert_eq!(refused.len(), 497);
    assert_eq!(failures(&relay, "too_many_tunnels_per_token"), 248);
    assert_eq!(failures(&relay, "too_many_tunnels"), 249);
    for (code, reason) in &refused {
        assert_eq!(*code, CloseCode::Policy);
        assert!(
            reason.contains("limits.max_tunnels_per_jti")
                || reason.contains("limits.max_tunnels_per_agent"),
            "{reason}"
        );
    }
    assert_eq!(gauge(&relay, "nowconnect_agents_connected"), 3);
    assert_eq!(agents(&relay, &key).await.len(), 3);
    let refusals = relay.audit_records(&AuditFilter {
        action: Some(Action::Hello),
        success: Some(false),
        ..Default::default()
    });
    // (Refusal records may be aggregated under a flood; the first one is there as sent.)
    let first = refusals.first().expect("refusals are audited");
    assert_eq!(first.reason.as_deref(), Some("too_many_tunnels_per_token"));
    assert_eq!(first.agent_id.as_deref(), Some(AGENT));
    // Not credential failures: the source is not cooled down, and a tunnel ending makes room.
    drop(held.pop());
    wait_for("a tunnel slot free", DEADLINE, || {
        gauge(&relay, "nowconnect_agents_connected") == 2
    })
    .await;
    let t = token(&key, None);
    let mut a = tunnel(&relay, &t, None).await.expect("room again");
    gets_the_stream(&relay, &mut a).await;
}

#[tokio::test]
async fn newest_wins_by_default_and_a_duplicate_from_another_address_is_audited_and_shown() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("dup-newest");
    let relay = relay(&idp, dir.path(), "", "").await;
    let mut first = tunnel(&relay, &token(&key, Some("a")), None)
        .await
        .expect("first tunnel");
    let _c1 = gets_the_stream(&relay, &mut first).await;
    assert!(records(&relay, Action::DuplicateAgent).is_empty());

    let mut second = tunnel(&relay, &token(&key, Some("b")), Some(net::other_loopback()))
        .await
        .expect("newest_wins admits the second");
    let rows = agents(&relay, &key).await;
    let st = standing(&rows);
    assert_eq!(st.len(), 2, "{rows:?}");
    assert_eq!(
        (st[0].1.as_str(), st[0].2, st[0].3),
        ("127.0.0.1", false, true)
    );
    assert_eq!(
        (st[1].1.as_str(), st[1].2, st[1].3),
        ("127.0.0.2", true, true)
    );
    let dup = records(&relay, Action::DuplicateAgent);
    assert_eq!(dup.len(), 1);
    assert!(dup[0].success, "admitted");
    assert_eq!(dup[0].reason.as_deref(), Some("newest_wins"));
    assert_eq!(dup[0].agent_id.as_deref(), Some(AGENT));
    assert_eq!(dup[0].tunnel_id, Some(st[1].0));
    assert_names_both(&dup[0], &rows);
    assert_eq!(gauge(&relay, "nowconnect_agent_duplicates_total"), 1);

    // New streams go to the newcomer; when it ends, back to the first.
    let _c2 = gets_the_stream(&relay, &mut second).await;
    drop(second);
    wait_for_async("the first tunnel serves again", DEADLINE, || async {
        standing(&agents(&relay, &key).await) == vec![(st[0].0, "127.0.0.1".into(), true, false)]
    })
    .await;
    let _c3 = gets_the_stream(&relay, &mut first).await;
}

#[tokio::test]
async fn oldest_wins_keeps_the_second_address_on_standby_until_the_first_ends() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("dup-oldest");
    let relay = relay(&idp, dir.path(), "  duplicate_agent: oldest_wins\n", "").await;
    let mut first = tunnel(&relay, &token(&key, None), None)
        .await
        .expect("first tunnel");
    let mut second = tunnel(&relay, &token(&key, None), Some(net::other_loopback()))
        .await
        .expect("oldest_wins admits the second on standby");
    let rows = agents(&relay, &key).await;
    let st = standing(&rows);
    assert_eq!(
        st.iter().map(|s| (s.2, s.3)).collect::<Vec<_>>(),
        vec![(true, true), (false, true)],
        "{rows:?}"
    );
    let dup = records(&relay, Action::DuplicateAgent);
    assert_eq!(dup.len(), 1);
    assert!(dup[0].success);
    assert_eq!(dup[0].reason.as_deref(), Some("oldest_wins"));
    assert_names_both(&dup[0], &rows);
    assert!(dup[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("standby")));
    // Every client goes to the first (each client is one pick; the first got all of them).
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(gets_the_stream(&relay, &mut first).await);
    }
    let rows = agents(&relay, &key).await;
    assert_eq!(rows[0]["active_streams"], 5);
    assert_eq!(rows[1]["active_streams"], 0);
    drop(clients);
    drop(first);
    wait_for_async("the standby serves", DEADLINE, || async {
        standing(&agents(&relay, &key).await) == vec![(st[1].0, "127.0.0.2".into(), true, false)]
    })
    .await;
    let _c = gets_the_stream(&relay, &mut second).await;
}

#[tokio::test]
async fn refuse_turns_the_second_address_away_but_lets_a_reconnect_through() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("dup-refuse");
    let relay = relay(&idp, dir.path(), "  duplicate_agent: refuse\n", "").await;
    let first = tunnel(&relay, &token(&key, Some("a")), None)
        .await
        .expect("first tunnel");
    let (code, reason) = tunnel(&relay, &token(&key, Some("b")), Some(net::other_loopback()))
        .await
        .expect_err("refused");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("security.duplicate_agent"), "{reason}");
    assert!(
        !reason.contains("127.0.0.1"),
        "the other address is not told: {reason}"
    );
    assert_eq!(failures(&relay, "duplicate_agent"), 1);
    let hello = relay.audit_records(&AuditFilter {
        action: Some(Action::Hello),
        success: Some(false),
        ..Default::default()
    });
    assert_eq!(hello.len(), 1);
    assert_eq!(hello[0].reason.as_deref(), Some("duplicate_agent"));
    assert_eq!(
        hello[0]
            .source
            .as_deref()
            .map(|s| s.starts_with("127.0.0.2:")),
        Some(true)
    );
    let dup = records(&relay, Action::DuplicateAgent);
    assert_eq!(dup.len(), 1);
    assert!(!dup[0].success, "refused");
    assert_eq!(dup[0].reason.as_deref(), Some("refuse"));
    let rows = agents(&relay, &key).await;
    assert_eq!(rows.len(), 1, "the refused tunnel is not listed");
    assert_names_both(&dup[0], &rows);
    let detail = dup[0].detail.as_deref().expect("detail");
    assert!(detail.contains("127.0.0.2:"), "{detail}");

    // A reconnect from the first address (its old tunnel still registered) takes over.
    let mut again = tunnel(&relay, &token(&key, Some("a")), None)
        .await
        .expect("a reconnect from the same address");
    let _c = gets_the_stream(&relay, &mut again).await;
    assert_eq!(records(&relay, Action::DuplicateAgent).len(), 1);
    drop(first);
}
