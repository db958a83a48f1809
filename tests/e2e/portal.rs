//! The relay's portal API with the real agent: `DELETE /api/v1/sessions/{cid}` closes the
//! client's socket within a second and the agent closes its target socket. The relay admits the
//! agent with the dev bypass; portal tokens are checked against their own JWKS
//! (`portal.jwks_url`, a file) with an Ed25519 key made here.

use std::time::Duration;

use nowconnect_testkit::http;
use nowconnect_testkit::idp::{ed_key, jwks_file, mint, portal_claims};
use nowconnect_testkit::io::wait_closed;
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{within, DEADLINE};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{listener, ready_agent, relay_yaml, start_relay};

/// `method path` on the portal with `token`; returns the status and the JSON body.
async fn api(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let r = http::request(addr, method, path, Some(token), None).await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_session_closes_the_client_and_the_agents_target_socket() {
    // A portal signing key, its JWKS file, and an admin token with a second factor.
    let dir = TempDir::new("e2e-portal");
    let key = ed_key("ops");
    let jwks_url = jwks_file(dir.path(), &[&key]);
    let token = mint(
        &key,
        &portal_claims("ops-1", &["pwd", "otp"], json!({"roles": ["admin"]})),
    );
    // The target hands each accepted socket to the test, which watches it close.
    let (app, mut targets) = target::handoff().await;
    let yaml = relay_yaml(&["app"]) + &format!("portal:\n  jwks_url: {jwks_url}\n");
    let relay = start_relay(&yaml).await;
    let _agent = ready_agent(&relay, "v2", &[("app", app.addr)]).await;

    let mut client = net::connect(listener(&relay, "app")).await;
    client.write_all(b"hello").await.expect("write");
    let mut at_target = within("the target reached", DEADLINE, targets.recv())
        .await
        .expect("target socket");
    let mut buf = [0u8; 5];
    at_target
        .read_exact(&mut buf)
        .await
        .expect("bytes reach the target");
    assert_eq!(&buf, b"hello");

    let (status, sessions) = api(relay.portal_addr(), "GET", "/api/v1/sessions", &token).await;
    assert_eq!(status, 200, "{sessions}");
    let rows = sessions.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{sessions}");
    assert_eq!(rows[0]["agent_id"], "premise-01");
    assert_eq!(rows[0]["bytes_c2a"], 5);
    let cid = rows[0]["cid"].as_str().expect("cid").to_owned();

    let (status, body) = api(
        relay.portal_addr(),
        "DELETE",
        &format!("/api/v1/sessions/{cid}"),
        &token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let client_closed = wait_closed(&mut client, Duration::from_secs(1)).await;
    assert!(client_closed < Duration::from_secs(1));
    // The agent got the RST and closed its socket to the target.
    wait_closed(&mut at_target, Duration::from_secs(5)).await;
    let (_, audit) = api(
        relay.portal_addr(),
        "GET",
        "/api/v1/audit?action=session_terminated",
        &token,
    )
    .await;
    assert_eq!(audit[0]["actor"], "portal:ops-1");
    assert_eq!(audit[0]["resource"], format!("session:{cid}"));
}
