//! The portal's OpenAPI document: it parses as OpenAPI 3.1 and describes what the relay does,
//! checked by a property-based API fuzzer (schemathesis, from PyPI) run against a live relay
//! with an admin token: no 5xx, no response outside the schema.
//!
//! Without the `schemathesis` command the fuzz test is skipped locally and fails under CI=true
//! (scripts/install-deps.sh installs it).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_testkit::http::request as api;
use nowconnect_testkit::idp::{admin_token, agent_token, ec_key, Idp};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::io::AsyncWriteExt;

/// A relay with JWT agents from `idp`, listeners `ldap` and `pg`, state in `state_dir`; ready
/// (keys loaded).
async fn portal_relay(idp: &Idp, state_dir: &Path, extra: &str) -> RelayHandle {
    log::init();
    let yaml = yaml::portal_relay(&idp.url(), state_dir, extra);
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded (/readyz)", DEADLINE, || r.is_ready()).await;
    r
}

#[tokio::test]
async fn openapi_document_validates_and_matches_the_routes() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("oas");
    let relay = portal_relay(&idp, dir.path(), "").await;
    // Served without a token.
    let r = api(
        relay.portal_addr(),
        "GET",
        "/api/v1/openapi.json",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.body.to_string();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let ops: Vec<_> = spec.operations().collect();
    let mut listed: Vec<String> = ops
        .iter()
        .map(|(path, method, _)| format!("{method} {path}"))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            "DELETE /api/v1/agents/{id}",
            "DELETE /api/v1/sessions/{cid}",
            "GET /api/v1/agents",
            "GET /api/v1/audit",
            "GET /api/v1/connectors",
            "GET /api/v1/history",
            "GET /api/v1/me",
            "GET /api/v1/policies",
            "GET /api/v1/policies/{id}",
            "GET /api/v1/sessions",
            "GET /api/v1/status",
            "PATCH /api/v1/policies/{id}",
            "POST /api/v1/agents/{id}/unblock",
        ]
    );
    for (path, method, op) in &ops {
        let codes: Vec<&String> = op.responses.as_ref().expect("responses").keys().collect();
        for code in ["200", "400", "401", "403", "503"] {
            assert!(
                codes.iter().any(|c| *c == code),
                "{method} {path} lacks {code}"
            );
        }
    }
    // Every $ref resolves.
    let doc = &r.body;
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let ptr = r.trim_start_matches('#');
        assert!(doc.pointer(ptr).is_some(), "dangling $ref {r}");
    }
    assert_eq!(
        doc.pointer("/components/securitySchemes/bearer/scheme"),
        Some(&serde_json::json!("bearer"))
    );
    let action = doc
        .pointer("/components/schemas/Action/enum")
        .expect("the Action enum");
    assert!(action
        .as_array()
        .expect("an array")
        .contains(&serde_json::json!("policy_toggled")));
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// The fuzzer's command, or `None` (skip locally; fail in CI).
fn schemathesis() -> Option<&'static str> {
    let found = std::process::Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("schemathesis");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "schemathesis is not installed (scripts/install-deps.sh installs it)"
    );
    eprintln!("skipping: schemathesis is not installed (pip install schemathesis)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let Some(cmd) = schemathesis() else { return };
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("fuzz");
    let relay = portal_relay(&idp, dir.path(), "").await;
    // Something to list: an agent, a live session, a refused token in the trail.
    let ws = upgrade(
        relay.tunnel_addr(),
        Some(&agent_token(&key, "agent-a")),
        None,
    )
    .await
    .expect("upgrade accepted");
    let mut agent = MockAgent::v2(ws);
    agent.hello("agent-a", &["addomain"]).await;
    let mut client = net::connect(relay.listener_addr("ldap").expect("listener ldap")).await;
    agent.expect_open("addomain").await;
    client.write_all(b"hello").await.expect("client write");
    let _ = upgrade(relay.tunnel_addr(), Some("garbage"), None).await;

    let admin = admin_token(&key, &["pwd", "otp"]);
    let url = format!("http://{}/api/v1/openapi.json", relay.portal_addr());
    let seed = std::env::var("NC_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20250131".into());
    let report = dir.join("junit.xml");
    let child = tokio::process::Command::new(cmd)
        .arg("run")
        .arg(&url)
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .args(["--checks", "all"])
        .args(["--max-examples", "12"])
        .args(["--seed", &seed])
        .args(["--workers", "1"])
        .args(["--request-timeout", "5"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("schemathesis starts");
    let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .expect("schemathesis finished within 150 s")
        .expect("schemathesis output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The token is sanitized in schemathesis' output, but never print it ourselves.
    let show = |s: &str| s.replace(&admin, "<token>");
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{}\n{}",
        out.status,
        show(&stdout),
        show(&stderr)
    );
    eprintln!("{}", show(&stdout));
    // It really ran: the relay answered many portal requests, none of them a 5xx.
    let metrics = relay.metrics_text();
    let requests: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("nowconnect_portal_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        requests >= 50,
        "only {requests} portal requests:\n{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("nowconnect_portal_requests_total{") && l.contains("status=\"5")),
        "5xx answers:\n{metrics}"
    );
}
