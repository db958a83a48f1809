//! The portal API (`/api/v1`) against a relay with JWT agents: keys made here, the JWKS served
//! from 127.0.0.1:0, portal and agent tokens minted here, raw v2 agents, state in a temp dir.

use std::time::Duration;

use nowconnect_relay::RelayHandle;
use nowconnect_shared::{Frame, RstCode};
use nowconnect_testkit::http::{request as api, Response};
use nowconnect_testkit::idp::{
    admin_token, agent_token, claims, ec_key, mint, now, portal_claims, Idp,
};
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::mock_agent::{refusal, upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use serde_json::{json, Value};
use tokio::net::TcpStream;

#[path = "support/portal.rs"]
mod support;
use support::{agent, portal_relay};

const T: Duration = Duration::from_secs(5);

/// A client on `listener` relayed to `agent`, one round trip done; returns (client, stream id).
async fn session(
    relay: &RelayHandle,
    agent: &mut MockAgent<TcpStream>,
    listener: &str,
    connector: &str,
) -> (TcpStream, u32) {
    let addr = relay
        .listener_addr(listener)
        .unwrap_or_else(|| panic!("listener {listener}"));
    let mut client = net::connect(addr).await;
    let id = loop {
        match agent.recv().await {
            Frame::Open {
                id, connector: c, ..
            } => {
                assert_eq!(c, connector);
                break id;
            }
            Frame::Window { .. } => continue,
            other => panic!("expected OPEN, got {other:?}"),
        }
    };
    agent.ping_pong(&mut client, id).await;
    (client, id)
}

fn agent_ids(rows: &[Value]) -> Vec<&str> {
    rows.iter()
        .map(|r| r["agent_id"].as_str().expect("agent_id is a string"))
        .collect()
}

async fn audit(relay: &RelayHandle, token: &str, query: &str) -> Vec<Value> {
    let r: Response = api(
        relay.portal_addr(),
        "GET",
        &format!("/api/v1/audit{query}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.array().clone()
}

#[tokio::test]
async fn mfa_policy_refuses_password_only_tokens_until_an_admin_turns_it_off() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("mfa");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    assert_eq!(addr, relay.tunnel_addr(), "same port by default");
    let mut a = agent(&relay, &key, "agent-a", &["addomain"]).await;
    let (_client, _) = session(&relay, &mut a, "ldap", "addomain").await;

    let mfa = admin_token(&key, &["pwd", "otp"]);
    let pwd = admin_token(&key, &["pwd"]);

    // A second factor: everything is visible.
    let agents = api(addr, "GET", "/api/v1/agents", Some(&mfa), None).await;
    assert_eq!(agents.status, 200, "{}", agents.body);
    assert_eq!(agent_ids(agents.array()), vec!["agent-a"]);
    let row = &agents.array()[0];
    assert_eq!(row["connectors"], json!(["addomain"]));
    assert_eq!(row["protocol_version"], "nowconnect.v2");
    assert_eq!(row["active_streams"], 1);
    assert!(row["bytes_c2a"].as_u64().expect("a number") >= 4, "{row}");
    assert!(row["remote_addr"]
        .as_str()
        .expect("a string")
        .starts_with("127.0.0.1:"));
    let sessions = api(addr, "GET", "/api/v1/sessions", Some(&mfa), None).await;
    assert_eq!(sessions.array().len(), 1, "{}", sessions.body);
    assert_eq!(sessions.array()[0]["bytes_a2c"], 4);
    let policy = api(
        addr,
        "GET",
        "/api/v1/policies/pol-mfa-required",
        Some(&mfa),
        None,
    )
    .await;
    assert_eq!(policy.body["enabled"], true, "on by default");
    assert_eq!(policy.body["type"], "authentication");

    // Password only: refused, and the reason says so.
    let refused = api(addr, "GET", "/api/v1/agents", Some(&pwd), None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"], "mfa_required");
    let why = refused.body["reason"].as_str().expect("a string");
    assert!(
        why.contains("password-only") && why.contains("pol-mfa-required"),
        "{why}"
    );
    let failures = audit(&relay, &mfa, "?success=false&action=portal_auth").await;
    assert_eq!(failures[0]["reason"], "mfa_required");

    // No token, a garbage token: 401 with WWW-Authenticate and a short JSON reason.
    for token in [None, Some("not.a.jwt")] {
        let r = api(addr, "GET", "/api/v1/agents", token, None).await;
        assert_eq!(r.status, 401);
        let www = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        assert_eq!(r.body["error"], "invalid_token");
        assert!(r.body["reason"].as_str().expect("a string").len() < 80);
    }
    // An agent token (wrong audience) is no portal token.
    let r = api(
        addr,
        "GET",
        "/api/v1/agents",
        Some(&agent_token(&key, "agent-a")),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.body["reason"]
        .as_str()
        .expect("a string")
        .contains("wrong_audience"));
    // A valid portal token without the role or an agent_id: 403.
    let nobody = mint(
        &key,
        &portal_claims("bob", &["otp"], json!({"roles": ["viewer"]})),
    );
    assert_eq!(
        api(addr, "GET", "/api/v1/agents", Some(&nobody), None)
            .await
            .status,
        403
    );

    // The password-only admin cannot turn the policy off itself.
    let off = Some(r#"{"enabled": false}"#);
    let r = api(
        addr,
        "PATCH",
        "/api/v1/policies/pol-mfa-required",
        Some(&pwd),
        off,
    )
    .await;
    assert_eq!(r.status, 403);
    // An admin with MFA turns it off: the password-only token works at once.
    let r = api(
        addr,
        "PATCH",
        "/api/v1/policies/pol-mfa-required",
        Some(&mfa),
        off,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["enabled"], false);
    let r = api(addr, "GET", "/api/v1/sessions", Some(&pwd), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.array().len(), 1);
    let toggles = audit(&relay, &pwd, "?action=policy_toggled").await;
    assert_eq!(toggles.len(), 1);
    assert_eq!(toggles[0]["actor"], "portal:alice");
    assert_eq!(toggles[0]["resource"], "policy:pol-mfa-required");
    assert_eq!(toggles[0]["detail"], "true -> false");
    assert_eq!(toggles[0]["success"], true);
    let toggle_id = toggles[0]["id"].clone();
    let metrics = relay.metrics_text();
    assert!(
        metrics.contains("nowconnect_policy_enabled{policy=\"pol-mfa-required\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("nowconnect_portal_requests_total{method=\"PATCH\",route=\"/api/v1/policies/{id}\",status=\"200\"} 1"));
    assert!(metrics.contains("nowconnect_portal_auth_failures_total{reason=\"mfa_required\"}"));
    assert!(metrics.contains(
        "nowconnect_audit_records_total{action=\"policy_toggled\",result=\"success\"} 1"
    ));

    // Restart on the same state_dir: still off, and the toggle is still in the trail.
    drop(a);
    drop(relay);
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    let r = api(
        addr,
        "GET",
        "/api/v1/policies/pol-mfa-required",
        Some(&pwd),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["enabled"], false);
    let toggles = audit(&relay, &pwd, "?action=policy_toggled").await;
    assert_eq!(toggles.len(), 1);
    assert_eq!(toggles[0]["id"], toggle_id);
    // Turned on again, the password-only token is refused again.
    let on = Some(r#"{"enabled": true}"#);
    let r = api(
        addr,
        "PATCH",
        "/api/v1/policies/pol-mfa-required",
        Some(&mfa),
        on,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        api(addr, "GET", "/api/v1/agents", Some(&pwd), None)
            .await
            .status,
        403
    );
    // Bad bodies and ids.
    for body in [
        "{}",
        r#"{"enabled": "no"}"#,
        r#"{"enabled": true, "x": 1}"#,
        "nope",
    ] {
        let r = api(
            addr,
            "PATCH",
            "/api/v1/policies/pol-mfa-required",
            Some(&mfa),
            Some(body),
        )
        .await;
        assert_eq!(r.status, 400, "{body}");
    }
    let r = api(addr, "PATCH", "/api/v1/policies/pol-nope", Some(&mfa), on).await;
    assert_eq!(r.status, 404);
    let r = api(
        addr,
        "PUT",
        "/api/v1/policies/pol-mfa-required",
        Some(&mfa),
        on,
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PATCH"));
}

#[tokio::test]
async fn scoped_token_sees_only_its_agent() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("scope");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    let mut a = agent(&relay, &key, "agent-a", &["addomain"]).await;
    let mut b = agent(&relay, &key, "agent-b", &["db"]).await;
    let (_ca, _) = session(&relay, &mut a, "ldap", "addomain").await;
    let (_cb, _) = session(&relay, &mut b, "pg", "db").await;

    let admin = admin_token(&key, &["pwd", "hwk"]);
    let all = api(addr, "GET", "/api/v1/sessions", Some(&admin), None).await;
    assert_eq!(all.array().len(), 2);
    let only_b = api(
        addr,
        "GET",
        "/api/v1/sessions?agent_id=agent-b",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(agent_ids(only_b.array()), vec!["agent-b"]);
    let db = api(
        addr,
        "GET",
        "/api/v1/sessions?connector=db",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(agent_ids(db.array()), vec!["agent-b"]);
    let connectors = api(addr, "GET", "/api/v1/connectors", Some(&admin), None).await;
    let names: Vec<_> = connectors
        .array()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("addomain"), json!("db")]);
    assert_eq!(connectors.array()[0]["agents"], json!(["agent-a"]));
    assert_eq!(connectors.array()[0]["active_streams"], 1);
    assert_eq!(connectors.array()[1]["listeners"][0]["name"], "pg");

    let scoped = mint(
        &key,
        &portal_claims(
            "agent-a-owner",
            &["pwd", "otp"],
            json!({"agent_id": "agent-a"}),
        ),
    );
    let agents = api(addr, "GET", "/api/v1/agents", Some(&scoped), None).await;
    assert_eq!(agents.status, 200, "{}", agents.body);
    assert_eq!(agent_ids(agents.array()), vec!["agent-a"]);
    let sessions = api(addr, "GET", "/api/v1/sessions", Some(&scoped), None).await;
    assert_eq!(agent_ids(sessions.array()), vec!["agent-a"]);
    let sessions = api(
        addr,
        "GET",
        "/api/v1/sessions?agent_id=agent-b",
        Some(&scoped),
        None,
    )
    .await;
    assert!(sessions.array().is_empty());
    let rows = audit(&relay, &scoped, "?limit=1000").await;
    assert!(
        rows.len() >= 3,
        "tunnel_auth, hello, open of agent-a: {rows:?}"
    );
    assert!(rows.iter().all(|r| r["agent_id"] == "agent-a"), "{rows:?}");
    assert!(audit(&relay, &scoped, "?agent_id=agent-b").await.is_empty());
    let admin_rows = audit(&relay, &admin, "?agent_id=agent-b").await;
    assert!(!admin_rows.is_empty());
    // Newest first.
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r["id"].as_u64().expect("a number"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // Read-only: no changes, no other lists.
    let cid = all.array()[0]["cid"].as_str().expect("a string").to_owned();
    for (method, path, body) in [
        (
            "PATCH",
            "/api/v1/policies/pol-mfa-required".to_owned(),
            Some(r#"{"enabled":false}"#),
        ),
        ("DELETE", format!("/api/v1/sessions/{cid}"), None),
        ("DELETE", "/api/v1/agents/agent-a".to_owned(), None),
        (
            "DELETE",
            "/api/v1/agents/agent-b?block=true".to_owned(),
            None,
        ),
        ("POST", "/api/v1/agents/agent-a/unblock".to_owned(), None),
        ("GET", "/api/v1/policies".to_owned(), None),
        ("GET", "/api/v1/connectors".to_owned(), None),
    ] {
        let r = api(addr, method, &path, Some(&scoped), body).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert_eq!(r.body["error"], "forbidden");
    }
    assert_eq!(relay.agents_for("addomain"), 1, "nothing was disconnected");
    assert_eq!(relay.open_connections(), 2, "nothing was terminated");
}

#[tokio::test]
async fn deleting_a_session_resets_the_agent_stream_and_closes_the_client_within_a_second() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("session");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    let mut a = agent(&relay, &key, "agent-a", &["addomain"]).await;
    let (mut client, id) = session(&relay, &mut a, "ldap", "addomain").await;
    let (_other, other_id) = session(&relay, &mut a, "ldap", "addomain").await;
    let admin = admin_token(&key, &["otp"]);

    let sessions = api(addr, "GET", "/api/v1/sessions", Some(&admin), None).await;
    let row = sessions
        .array()
        .iter()
        .find(|s| s["stream_id"] == id)
        .expect("the session is listed")
        .clone();
    assert_eq!(row["connector"], "addomain");
    assert_eq!(row["agent_id"], "agent-a");
    assert_eq!(
        row["client_addr"],
        client.local_addr().expect("local address").to_string()
    );
    let cid = row["cid"].as_str().expect("a string");

    let started = tokio::time::Instant::now();
    let r = api(
        addr,
        "DELETE",
        &format!("/api/v1/sessions/{cid}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["terminated"], true);
    let (bytes, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed, "client socket still open 1 s after DELETE");
    assert!(bytes.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    // The agent is told to close its target socket.
    match a.recv().await {
        Frame::Rst { id: got, code, .. } => assert_eq!((got, code), (id, RstCode::Denied)),
        other => panic!("expected RST, got {other:?}"),
    }
    // The other session is untouched and gone from the list only when it ends.
    let sessions = api(addr, "GET", "/api/v1/sessions", Some(&admin), None).await;
    let left: Vec<_> = sessions
        .array()
        .iter()
        .map(|s| s["stream_id"].clone())
        .collect();
    assert_eq!(left, vec![json!(other_id)]);
    let r = api(
        addr,
        "DELETE",
        &format!("/api/v1/sessions/{cid}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "already gone");
    let r = api(
        addr,
        "DELETE",
        "/api/v1/sessions/garbage",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    let rec = &audit(&relay, &admin, "?action=session_terminated").await[0];
    assert_eq!(rec["actor"], "portal:alice");
    assert_eq!(rec["resource"], format!("session:{cid}"));
    assert_eq!(rec["agent_id"], "agent-a");
    assert_eq!(rec["connector"], "addomain");
    assert!(relay
        .metrics_text()
        .contains("nowconnect_sessions_terminated_total 1"));
    // An agent-side queue overflow (its RST) is counted with side="agent".
    a.send(&Frame::Rst {
        id: other_id,
        code: RstCode::QueueOverflow,
        reason: String::new(),
    })
    .await;
    wait_for("agent-side overflow counted", DEADLINE, || {
        relay
            .metrics_text()
            .contains("nowconnect_queue_overflow_total{side=\"agent\",connector=\"addomain\"} 1")
    })
    .await;
}

#[tokio::test]
async fn blocked_agent_is_dropped_and_refused_until_unblocked() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("block");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    let mut a = agent(&relay, &key, "agent-a", &["addomain"]).await;
    let admin = admin_token(&key, &["pwd", "otp"]);

    let r = api(
        addr,
        "DELETE",
        "/api/v1/agents/agent-a?block=true",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["disconnected_tunnels"], 1);
    assert_eq!(r.body["blocked"], true);
    // The tunnel is dropped: the agent gets a close frame, the connector has no agent.
    assert_eq!(a.try_recv(T).await, None, "tunnel closed");
    wait_for("agent unregistered", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;

    // Reconnects are refused (and audited) until unblocked, across a restart too.
    let refused = |relay: &nowconnect_relay::RelayHandle| {
        let (addr, token) = (relay.tunnel_addr(), agent_token(&key, "agent-a"));
        async move {
            let err = upgrade(addr, Some(&token), None)
                .await
                .expect_err("refused");
            let (status, body, _) = refusal(err);
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("blocked"), "{body}");
        }
    };
    refused(&relay).await;
    let rec = &audit(&relay, &admin, "?success=false&action=tunnel_auth").await[0];
    assert_eq!(rec["reason"], "agent_blocked");
    assert_eq!(rec["agent_id"], "agent-a");
    let blocked = audit(&relay, &admin, "?action=agent_blocked").await;
    assert_eq!(blocked[0]["actor"], "portal:alice");
    assert_eq!(blocked[0]["resource"], "agent:agent-a");
    let gone = audit(
        &relay,
        &admin,
        "?action=agent_disconnected&agent_id=agent-a",
    )
    .await;
    assert!(
        gone.iter().any(|r| r["reason"] == "admin_disconnect"),
        "{gone:?}"
    );
    assert!(
        gone.iter().any(|r| r["actor"] == "portal:alice"),
        "{gone:?}"
    );
    // Not a credential failure: no cool-down for the source.
    drop(relay);
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    refused(&relay).await;

    let r = api(
        addr,
        "POST",
        "/api/v1/agents/agent-a/unblock",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["blocked"], false);
    let _a = agent(&relay, &key, "agent-a", &["addomain"]).await;
    assert_eq!(relay.agents_for("addomain"), 1);
    let unblocked = audit(&relay, &admin, "?action=agent_unblocked").await;
    assert_eq!(unblocked.len(), 1);
    let r = api(
        addr,
        "POST",
        "/api/v1/agents/agent-a/unblock",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "not blocked any more");
    let r = api(addr, "DELETE", "/api/v1/agents/nobody", Some(&admin), None).await;
    assert_eq!(r.status, 404, "not connected");
    let r = api(
        addr,
        "DELETE",
        "/api/v1/agents/agent-a?block=maybe",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn refused_agent_tokens_are_in_the_audit_trail_after_a_restart() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("audit");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let admin = admin_token(&key, &["mfa"]);

    let mut expired = claims("agent-x");
    expired["exp"] = json!(now() - 3600);
    let token = mint(&key, &expired);
    let err = upgrade(relay.tunnel_addr(), Some(&token), None)
        .await
        .expect_err("refused");
    assert_eq!(refusal(err).0, 401);
    let _ok = agent(&relay, &key, "agent-y", &["db"]).await;

    let check = |rows: Vec<Value>| {
        assert!(rows.iter().all(|r| r["success"] == false), "{rows:?}");
        let rec = rows
            .iter()
            .find(|r| r["action"] == "tunnel_auth")
            .unwrap_or_else(|| panic!("no refused tunnel_auth in {rows:?}"));
        assert_eq!(rec["reason"], "expired");
        assert!(rec["source"]
            .as_str()
            .expect("a string")
            .starts_with("127.0.0.1:"));
        assert!(rec["time"].as_str().expect("a string").ends_with('Z'));
        rec["id"].clone()
    };
    let id = check(audit(&relay, &admin, "?success=false").await);
    let since = audit(
        &relay,
        &admin,
        "?since=2000-01-01T00:00:00Z&success=true&limit=1",
    )
    .await;
    assert_eq!(since.len(), 1);
    assert!(audit(&relay, &admin, "?since=2999-01-01T00:00:00%2B02:00")
        .await
        .is_empty());
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?since=yesterday",
        "?action=nope",
        "?success=maybe",
    ] {
        let r = api(
            relay.portal_addr(),
            "GET",
            &format!("/api/v1/audit{bad}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    // Never a token in the file.
    drop(relay);
    let file = std::fs::read_to_string(dir.join("audit.jsonl")).expect("audit.jsonl");
    assert!(!file.contains(&token) && !file.contains(&admin));
    assert!(
        !file.contains(&token[..20]),
        "token prefix in the audit file"
    );

    let relay = portal_relay(&idp, dir.path(), "").await;
    assert_eq!(check(audit(&relay, &admin, "?success=false").await), id);
}

#[tokio::test]
async fn separate_portal_bind_keeps_the_api_off_the_tunnel_port() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("bind");
    let relay = portal_relay(&idp, dir.path(), "portal:\n  bind: 127.0.0.1:0\n").await;
    assert_ne!(relay.portal_addr(), relay.tunnel_addr());
    let admin = admin_token(&key, &["otp"]);
    let r = api(
        relay.tunnel_addr(),
        "GET",
        "/api/v1/agents",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = api(
        relay.portal_addr(),
        "GET",
        "/api/v1/agents",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = api(relay.portal_addr(), "GET", "/tunnel", None, None).await;
    assert_eq!(r.status, 404, "no tunnel on the portal port");
}
