//! Agent authentication on /tunnel with real keys (RSA, EC P-256, Ed25519) generated here, a
//! JWKS served from 127.0.0.1:0 and tokens minted here.

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use nowconnect_relay::{Action, AuditFilter, AuditRecord, RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::http;
use nowconnect_testkit::idp::{
    claims, ec_key, ed_key, jwks, mint, now, raw_token, rsa_key, rsa_public_pem, Algorithm, Idp,
    ISSUER,
};
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::log::{Capture, Format};
use nowconnect_testkit::mock_agent::{refusal, upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, Ticker, DEADLINE};
use nowconnect_testkit::yaml;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

// ---------- helpers ----------

const T: Duration = Duration::from_secs(5);

/// Every log line of this test binary (JSON, debug level), so a test can search it for secrets.
/// Installed before any relay starts (every test starts its relay through `relay`).
fn logs() -> &'static Capture {
    Capture::global(Format::Json)
}

/// A relay with listener `ldap` (connector `addomain`) and `extra` config.
async fn relay(extra: &str) -> RelayHandle {
    logs();
    let cfg = RelayConfig::from_yaml_str(&yaml::relay(&[("ldap", "addomain")], extra))
        .expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

/// A relay that checks tokens against `idp` (issuer required; no cool-down in these tests).
/// `security` lines are indented by two spaces; `more` adds other sections.
async fn jwt_relay(jwks_url: &str, security: &str, more: &str) -> RelayHandle {
    let r = relay(&format!(
        "security:\n  jwks_url: {jwks_url}\n  issuer: {ISSUER}\n  auth_failure_limit: 100000\n{security}{more}"
    ))
    .await;
    wait_for("JWKS loaded (/readyz)", DEADLINE, || r.is_ready()).await;
    r
}

/// Upgrades with `token`, says HELLO and expects HELLO_ACK.
async fn agent(
    relay: &RelayHandle,
    token: &str,
    agent_id: &str,
    connectors: &[&str],
) -> MockAgent<TcpStream> {
    let mut a = hello_only(relay, token, agent_id, connectors).await;
    assert_eq!(a.recv().await, Frame::HelloAck);
    a
}

/// Upgrades with `token` and sends HELLO, without waiting for the answer.
async fn hello_only(
    relay: &RelayHandle,
    token: &str,
    agent_id: &str,
    connectors: &[&str],
) -> MockAgent<TcpStream> {
    let ws = upgrade(relay.tunnel_addr(), Some(token), None)
        .await
        .expect("upgrade accepted");
    let mut a = MockAgent::v2(ws);
    a.send_hello(agent_id, connectors).await;
    a
}

/// A client on the `ldap` listener reaches `agent` and bytes flow both ways.
async fn traffic_flows(relay: &RelayHandle, agent: &mut MockAgent<TcpStream>) {
    let mut client = net::connect(ldap(relay)).await;
    // Frames of this agent's earlier (closed) streams may still be queued: skip to the OPEN.
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut client, id).await;
}

/// No agent serves the connector: a client is closed without a byte.
async fn no_stream(relay: &RelayHandle) {
    assert_eq!(relay.agents_for("addomain"), 0, "an agent got registered");
    let mut client = net::connect(ldap(relay)).await;
    let (bytes, closed) = read_to_close(&mut client, T).await;
    assert!(closed && bytes.is_empty(), "client was not closed at once");
}

fn counter(relay: &RelayHandle, prefix: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), prefix)
}

fn failures(relay: &RelayHandle, reason: &str) -> u64 {
    counter(
        relay,
        &format!("nowconnect_agent_auth_failures_total{{reason=\"{reason}\"}}"),
    )
}

/// The newest audit record of `action` (only failures or successes with `success`).
fn last_audit(relay: &RelayHandle, action: Action, success: Option<bool>) -> AuditRecord {
    relay
        .audit_records(&AuditFilter {
            action: Some(action),
            success,
            ..Default::default()
        })
        .pop()
        .unwrap_or_else(|| panic!("no audit record of {action:?}"))
}

/// The upgrade is refused with `status` and `reason` (metric, audit, WWW-Authenticate), and no
/// stream can be opened.
async fn refused(relay: &RelayHandle, case: &str, token: Option<&str>, status: u16, reason: &str) {
    let before = failures(relay, reason);
    let err = upgrade(relay.tunnel_addr(), token, None)
        .await
        .err()
        .unwrap_or_else(|| panic!("{case}: upgrade was accepted"));
    let (got, body, www) = refusal(err);
    assert_eq!(got, status, "{case}: status (body {body:?})");
    assert!(
        !body.is_empty() && body.len() < 80,
        "{case}: short reason, got {body:?}"
    );
    if status == 401 {
        assert!(www.contains(reason), "{case}: WWW-Authenticate {www:?}");
    }
    assert_eq!(
        failures(relay, reason),
        before + 1,
        "{case}: metric {reason}"
    );
    let last = last_audit(relay, Action::TunnelAuth, None);
    assert!(!last.success, "{case}");
    assert_eq!(last.reason.as_deref(), Some(reason), "{case}: audit reason");
    no_stream(relay).await;
}

// ---------- tests ----------

#[tokio::test]
async fn valid_tokens_of_every_key_type_get_hello_ack_and_carry_traffic() {
    let rsa = rsa_key("rsa-1", Algorithm::RS256);
    let pss = rsa.with_alg(Algorithm::PS256);
    let ec = ec_key("ec-1");
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let relay = jwt_relay(&idp.url(), "", "").await;
    assert_eq!(http::get(relay.tunnel_addr(), "/readyz").await.0, 200);
    for (i, key) in [&rsa, &pss, &ec, &ed].into_iter().enumerate() {
        let id = format!("premise-{i}");
        let token = mint(key, &claims(&id));
        let mut a = agent(&relay, &token, &id, &["addomain"]).await;
        traffic_flows(&relay, &mut a).await;
        drop(a);
        wait_for("agent gone", DEADLINE, || relay.agents_for("addomain") == 0).await;
    }
    assert_eq!(counter(&relay, "nowconnect_agent_auth_successes_total"), 4);
    let ok = relay.audit_records(&AuditFilter {
        action: Some(Action::Hello),
        success: Some(true),
        ..Default::default()
    });
    assert_eq!(ok.len(), 4);
    assert_eq!(ok[3].agent_id.as_deref(), Some("premise-3"));
    let opens = relay.audit_records(&AuditFilter {
        action: Some(Action::Open),
        ..Default::default()
    });
    assert_eq!(opens.len(), 4);
    assert!(opens
        .iter()
        .all(|r| r.success && r.by.as_deref() == Some("none")));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_status_and_reason_and_open_no_stream() {
    let rsa = rsa_key("rsa-1", Algorithm::RS256);
    let ec = ec_key("ec-1");
    let ed = ed_key("ed-1");
    // The same kid signed by a key the IdP never published.
    let impostor = ec_key("x").with_kid("ec-1");
    let ghost = ed_key("ghost");
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let relay = jwt_relay(&idp.url(), "", "").await;
    let good = claims("premise-01");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };

    refused(&relay, "no header", None, 401, "missing_token").await;
    refused(&relay, "garbage", Some("garbage"), 401, "malformed_token").await;
    refused(
        &relay,
        "garbage parts",
        Some("a.b.c"),
        401,
        "malformed_token",
    )
    .await;
    let none = raw_token(&json!({"alg": "none", "kid": "rsa-1"}), &good, b"");
    refused(&relay, "alg none", Some(&none), 401, "alg_not_allowed").await;
    let none_no_sig = raw_token(&json!({"alg": "none"}), &good, b"");
    refused(
        &relay,
        "alg none, no kid",
        Some(&none_no_sig),
        401,
        "alg_not_allowed",
    )
    .await;
    // The classic confusion: HMAC keyed with the RSA public key a verifier might use as secret.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &good,
        &EncodingKey::from_secret(rsa_public_pem().as_bytes()),
    )
    .expect("HS256 token");
    refused(
        &relay,
        "HS256 with the public key",
        Some(&hs),
        401,
        "alg_not_allowed",
    )
    .await;
    // ES256 header naming the RSA key: refused before any signature check.
    let mismatch = mint(&ec.with_kid("rsa-1"), &good);
    refused(
        &relay,
        "alg/key type mismatch",
        Some(&mismatch),
        401,
        "alg_mismatch",
    )
    .await;
    let wrong_aud = mint(&ed, &with("aud", json!("someone-else")));
    refused(&relay, "wrong aud", Some(&wrong_aud), 401, "wrong_audience").await;
    let no_aud = {
        let mut c = good.clone();
        c.as_object_mut().expect("claims object").remove("aud");
        mint(&ed, &c)
    };
    refused(&relay, "no aud", Some(&no_aud), 401, "missing_claim").await;
    let wrong_iss = mint(&ed, &with("iss", json!("https://evil.test")));
    refused(&relay, "wrong iss", Some(&wrong_iss), 401, "wrong_issuer").await;
    let expired = mint(&rsa, &with("exp", json!(now() - 3600)));
    refused(&relay, "expired", Some(&expired), 401, "expired").await;
    let early = mint(&ec, &with("nbf", json!(now() + 3600)));
    refused(
        &relay,
        "nbf in the future",
        Some(&early),
        401,
        "not_yet_valid",
    )
    .await;
    // A string nbf must not be read as "no nbf".
    let string_nbf = mint(&ec, &with("nbf", json!((now() + 3600).to_string())));
    let err = upgrade(relay.tunnel_addr(), Some(&string_nbf), None)
        .await
        .expect_err("string nbf refused");
    assert_eq!(refusal(err).0, 401);
    let unknown = mint(&ghost, &good);
    refused(&relay, "unknown kid", Some(&unknown), 401, "unknown_kid").await;
    let forged = mint(&impostor, &good);
    refused(
        &relay,
        "key not in the JWKS",
        Some(&forged),
        401,
        "bad_signature",
    )
    .await;
    let tampered = {
        let t = mint(&ed, &good);
        let (head, sig) = t.rsplit_once('.').expect("three parts");
        let body = raw_token(&json!({}), &with("agent_id", json!("premise-99")), b"");
        let payload = body.split('.').nth(1).expect("payload");
        let header = head.split('.').next().expect("header");
        format!("{header}.{payload}.{sig}")
    };
    refused(
        &relay,
        "tampered claims",
        Some(&tampered),
        401,
        "bad_signature",
    )
    .await;
    let no_agent = {
        let mut c = good.clone();
        c.as_object_mut().expect("claims object").remove("agent_id");
        mint(&rsa, &c)
    };
    refused(
        &relay,
        "missing agent_id",
        Some(&no_agent),
        403,
        "missing_agent_id",
    )
    .await;
    let numeric_agent = mint(&ed, &with("agent_id", json!(7)));
    refused(
        &relay,
        "non-string agent_id",
        Some(&numeric_agent),
        403,
        "missing_agent_id",
    )
    .await;

    // The valid token still works after all that.
    let mut a = agent(&relay, &mint(&ed, &good), "premise-01", &["addomain"]).await;
    traffic_flows(&relay, &mut a).await;
}

#[tokio::test]
async fn hello_agent_id_mismatch_closes_the_tunnel() {
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    let relay = jwt_relay(&idp.url(), "", "").await;
    let token = mint(&ed, &claims("premise-01"));
    let mut a = hello_only(&relay, &token, "premise-02", &["addomain"]).await;
    let (code, reason) = a.closed_with().await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("does not match"), "{reason}");
    assert_eq!(failures(&relay, "agent_id_mismatch"), 1);
    let rec = last_audit(&relay, Action::Hello, Some(false));
    assert_eq!(rec.reason.as_deref(), Some("agent_id_mismatch"));
    assert_eq!(rec.agent_id.as_deref(), Some("premise-01"));
    assert!(rec.detail.expect("detail").contains("premise-02"));
    no_stream(&relay).await;
}

#[tokio::test]
async fn connectors_must_be_granted_when_scopes_are_required() {
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    // Nothing configured: secure by default.
    let relay = jwt_relay(&idp.url(), "", "").await;
    let ungranted = || {
        let mut c = claims("premise-01");
        c.as_object_mut()
            .expect("claims object")
            .remove("connectors");
        c
    };
    let grant = |k: &str, v: serde_json::Value| {
        let mut c = ungranted();
        c[k] = v;
        mint(&ed, &c)
    };

    // Not granted: no claim at all, another connector, a prefix of the name, plain scope
    // words that happen to be the connector's name.
    let refused = [
        mint(&ed, &ungranted()),
        grant("connectors", json!(["devdomain"])),
        grant("scope", json!("openid connector:add")),
        grant("scope", json!("openid addomain")),
        grant("scp", json!(["addomain"])),
    ];
    let n = refused.len() as u64;
    for token in refused {
        let mut a = hello_only(&relay, &token, "premise-01", &["addomain"]).await;
        let (code, reason) = a.closed_with().await;
        assert_eq!(code, CloseCode::Policy);
        assert!(reason.contains("not granted"), "{reason}");
        no_stream(&relay).await;
    }
    assert_eq!(failures(&relay, "connector_not_granted"), n);
    // One ungranted connector among granted ones refuses the whole HELLO.
    let token = grant("connectors", json!(["addomain"]));
    let mut a = hello_only(&relay, &token, "premise-01", &["addomain", "db"]).await;
    assert_eq!(a.closed_with().await.0, CloseCode::Policy);
    no_stream(&relay).await;

    // Granted, in each documented form.
    for token in [
        grant("connectors", json!(["addomain"])),
        grant("connectors", json!(["connector:addomain"])),
        grant("scp", json!(["connector:addomain", "openid"])),
        grant("scp", json!("connector:addomain")),
        grant("scope", json!("openid connector:addomain")),
        grant("scope", json!(["nowconnect:connector:addomain"])),
        grant("scp", json!("profile nowconnect:connector:addomain")),
    ] {
        let mut a = agent(&relay, &token, "premise-01", &["addomain"]).await;
        traffic_flows(&relay, &mut a).await;
        drop(a);
        wait_for("agent gone", DEADLINE, || relay.agents_for("addomain") == 0).await;
    }
}

#[tokio::test]
async fn key_rotation_is_picked_up_without_restart() {
    let old = ec_key("2024");
    let new = ed_key("2025");
    let idp = Idp::start(&[&old]).await;
    // Four tunnels of one agent_id stay open here (the default cap is 3).
    let relay = jwt_relay(
        &idp.url(),
        "  jwks_min_refresh_sec: 1\n  jwks_refresh_sec: 1\n",
        "limits:\n  max_tunnels_per_agent: 4\n",
    )
    .await;
    let old_token = mint(&old, &claims("premise-01"));
    let new_token = mint(&new, &claims("premise-01"));
    let mut a = agent(&relay, &old_token, "premise-01", &["addomain"]).await;
    traffic_flows(&relay, &mut a).await;

    // The IdP publishes a new key and signs with it: accepted once the relay has looked again.
    idp.publish(&[&old, &new]);
    let deadline = tokio::time::Instant::now() + T;
    let ws = loop {
        match upgrade(relay.tunnel_addr(), Some(&new_token), None).await {
            Ok(ws) => break ws,
            Err(e) => {
                assert_eq!(refusal(e).0, 401);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "new key never accepted"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut b = MockAgent::v2(ws);
    b.hello("premise-01", &["addomain"]).await;
    traffic_flows(&relay, &mut b).await;
    // The old key is still published: its tokens still work.
    let mut c = agent(&relay, &old_token, "premise-01", &["addomain"]).await;
    traffic_flows(&relay, &mut c).await;

    // The old key leaves the JWKS: its tokens are refused from the next refresh on.
    idp.publish(&[&new]);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match upgrade(relay.tunnel_addr(), Some(&old_token), None).await {
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "old key still accepted"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                let (status, _, www) = refusal(e);
                assert_eq!(status, 401);
                assert!(www.contains("unknown_kid"), "{www}");
                break;
            }
        }
    }
    let mut d = agent(&relay, &new_token, "premise-01", &["addomain"]).await;
    traffic_flows(&relay, &mut d).await;
}

#[tokio::test]
async fn idp_outage_keeps_cached_keys_working_and_the_relay_ready() {
    let ec = ec_key("ec-1");
    let idp = Idp::start(&[&ec]).await;
    let relay = jwt_relay(
        &idp.url(),
        "  jwks_refresh_sec: 1\n  jwks_min_refresh_sec: 1\n",
        "",
    )
    .await;
    let mut a = agent(
        &relay,
        &mint(&ec, &claims("premise-01")),
        "premise-01",
        &["addomain"],
    )
    .await;

    idp.server.stop();
    // Wait until the relay has tried (and failed) to refresh from the stopped IdP.
    wait_for("a failed periodic refresh", DEADLINE, || {
        counter(
            &relay,
            "nowconnect_jwks_refreshes_total{trigger=\"periodic\",result=\"error\"}",
        ) >= 1
    })
    .await;
    assert!(relay.is_ready());
    assert_eq!(http::get(relay.tunnel_addr(), "/readyz").await.0, 200);
    // The agent connected before the outage still carries traffic ...
    traffic_flows(&relay, &mut a).await;
    drop(a);
    wait_for("agent gone", DEADLINE, || relay.agents_for("addomain") == 0).await;
    // ... and a new agent with a cached key connects.
    let mut b = agent(
        &relay,
        &mint(&ec, &claims("premise-02")),
        "premise-02",
        &["addomain"],
    )
    .await;
    traffic_flows(&relay, &mut b).await;
    // An unknown kid is still an unknown kid (not "keys unavailable") while keys are cached.
    let ghost = mint(&ec_key("ghost"), &claims("premise-03"));
    let err = upgrade(relay.tunnel_addr(), Some(&ghost), None)
        .await
        .expect_err("unknown kid refused");
    assert_eq!(refusal(err).0, 401);
}

#[tokio::test]
async fn relay_without_keys_is_not_ready_and_answers_503() {
    // An IdP that is down from the start.
    let idp = Idp::start(&[&ec_key("ec-1")]).await;
    let url = idp.url();
    idp.server.stop();
    drop(idp);
    let relay = relay(&format!("security:\n  jwks_url: {url}\n")).await;
    assert!(!relay.is_ready());
    assert_eq!(http::get(relay.tunnel_addr(), "/readyz").await.0, 503);
    let token = mint(&ec_key("ec-1"), &claims("premise-01"));
    let err = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect_err("no keys: refused");
    let (status, body, _) = refusal(err);
    assert_eq!(status, 503, "{body}");
    assert_eq!(failures(&relay, "jwks_unavailable"), 1);
}

#[tokio::test]
async fn forged_kid_storm_costs_at_most_one_jwks_fetch_per_interval() {
    let ec = ec_key("ec-1");
    let idp = Idp::start(&[&ec]).await;
    // Periodic refresh far away; unknown kids may refresh once per second. All 200 attempts
    // run at once (the per-source pending and pre-auth caps are raised so every one reaches
    // the token check).
    let relay = relay(&format!(
        "  preauth: {{max_per_source: 1000}}\nsecurity:\n  jwks_url: {}\n  issuer: {ISSUER}\n  \
         auth_failure_limit: 100000\n  jwks_min_refresh_sec: 1\n  max_pending_upgrades_per_ip: 1000\n",
        idp.url()
    ))
    .await;
    wait_for("JWKS loaded (/readyz)", DEADLINE, || relay.is_ready()).await;
    let before = idp.server.hits();
    assert_eq!(before, 1, "start-up fetch");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = relay.tunnel_addr();
        let token = mint(
            &ec_key("x").with_kid(&format!("forged-{i}")),
            &claims("evil"),
        );
        tasks.push(tokio::spawn(async move {
            upgrade(addr, Some(&token), None)
                .await
                .err()
                .map(|e| refusal(e).0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("attempt task"), Some(401));
    }
    let elapsed = started.elapsed().as_secs();
    let fetches = idp.server.hits() - before;
    assert!(
        fetches as u64 <= elapsed + 1,
        "{fetches} JWKS fetches for 200 forged kids in {elapsed} s"
    );
    assert_eq!(failures(&relay, "unknown_kid"), 200);
}

#[tokio::test]
async fn jwks_from_a_local_file() {
    let ed = ed_key("ed-1");
    let dir = TempDir::new("jwks-file");
    let path = dir.write("jwks.json", &jwks(&[&ed]));
    let relay = jwt_relay(&format!("file://{}", path.display()), "", "").await;
    let mut a = agent(
        &relay,
        &mint(&ed, &claims("premise-01")),
        "premise-01",
        &["addomain"],
    )
    .await;
    traffic_flows(&relay, &mut a).await;
}

#[tokio::test]
async fn newest_tunnel_of_an_agent_id_gets_new_streams() {
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    let relay = jwt_relay(&idp.url(), "", "").await;
    let token = mint(&ed, &claims("premise-01"));
    let mut old = agent(&relay, &token, "premise-01", &["addomain"]).await;
    let mut new = agent(&relay, &token, "premise-01", &["addomain"]).await;
    for _ in 0..3 {
        traffic_flows(&relay, &mut new).await;
    }
    assert!(
        old.try_recv(Duration::from_millis(200)).await.is_none(),
        "old tunnel got an OPEN"
    );
    let hello = last_audit(&relay, Action::Hello, None);
    assert!(hello.detail.expect("detail").contains("superseded"));
}

/// The tunnel lives until its token's `exp`, then closes (paused clock: the relay's expiry
/// timer runs on tokio's clock, so the wait costs no real time).
#[tokio::test(start_paused = true)]
async fn tunnel_closes_when_its_token_expires() {
    let _tick = Ticker::start();
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    let relay = jwt_relay(&idp.url(), "  leeway_sec: 0\n", "").await;
    let mut c = claims("premise-01");
    // Whole seconds: 1 to 2 s of validity are left when the relay checks the token.
    c["exp"] = json!(now() + 2);
    let t0 = Instant::now();
    let mut a = agent(&relay, &mint(&ed, &c), "premise-01", &["addomain"]).await;
    let (code, reason) = a.closed_with().await;
    let lived = t0.elapsed();
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "token expired");
    assert!(
        lived >= Duration::from_secs(1) && lived <= Duration::from_secs(3),
        "closed {lived:?} after the upgrade; the token had 1 to 2 s left"
    );
    wait_for("agent gone", DEADLINE, || relay.agents_for("addomain") == 0).await;
    let gone = relay.audit_records(&AuditFilter {
        action: Some(Action::AgentDisconnected),
        ..Default::default()
    });
    assert_eq!(
        gone.last().expect("a disconnect record").reason.as_deref(),
        Some("token_expired")
    );
}

#[tokio::test]
async fn tokens_never_reach_the_logs_but_audit_records_do() {
    let ed = ed_key("ed-1");
    let idp = Idp::start(&[&ed]).await;
    let relay = jwt_relay(&idp.url(), "", "").await;
    let mut c = claims("log-agent");
    c["exp"] = json!(now() - 3600);
    let expired = mint(&ed, &c);
    let bad = upgrade(relay.tunnel_addr(), Some(&expired), None).await;
    assert!(bad.is_err());
    let good = mint(&ed, &claims("log-agent"));
    let mut a = agent(&relay, &good, "log-agent", &["addomain"]).await;
    traffic_flows(&relay, &mut a).await;
    drop(a);
    wait_for("agent gone", DEADLINE, || relay.agents_for("addomain") == 0).await;

    let text = logs().text();
    for token in [&expired, &good] {
        let sig = token.rsplit('.').next().expect("signature");
        assert!(!text.contains(sig), "a token signature was logged");
        let payload = token.split('.').nth(1).expect("payload");
        assert!(!text.contains(payload), "a token payload was logged");
    }
    assert!(
        !text.to_ascii_lowercase().contains("bearer ey"),
        "an Authorization header was logged"
    );
    // Audit lines are JSON objects with their fields.
    let audit: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.contains("nowconnect::audit"))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let failed = audit
        .iter()
        .find(|v| v["fields"]["action"] == "tunnel_auth" && v["fields"]["reason"] == "expired")
        .expect("an audit line for the expired token");
    assert_eq!(failed["fields"]["success"], false);
    assert!(audit
        .iter()
        .any(|v| v["fields"]["action"] == "hello" && v["fields"]["agent_id"] == "log-agent"));
    assert!(audit
        .iter()
        .any(|v| v["fields"]["action"] == "agent_disconnected"
            && v["fields"]["agent_id"] == "log-agent"));
}
