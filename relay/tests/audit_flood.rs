//! The audit trail under a flood of refusals: 10,000 refused client connections must neither
//! push an earlier operator action and agent authentication out of the trail (in memory and in
//! a small, rotated audit file) nor go unaccounted: aggregate records say how many more.

use std::path::Path;
use std::time::{Duration, Instant};

use nowconnect_relay::{Action, AuditFilter, AuditRecord, RelayConfig, RelayHandle};
use nowconnect_testkit::http::request as api;
use nowconnect_testkit::idp::{admin_token, agent_token, ec_key, Idp};
use nowconnect_testkit::io::connect_from_and_wait_closed;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml;
use serde_json::Value;

const FLOOD: usize = 10_000;
/// Connections in flight at once.
const PARALLEL: usize = 32;
/// How long one refused client may wait for its reset.
const T: Duration = Duration::from_secs(5);

/// A portal relay whose `guarded` listener admits only 127.0.0.1, with an audit file of 16 KiB
/// and one rotation (32 KiB in all: 10,000 refusal lines would rotate it a hundred times), and
/// refusal windows of 2 s with 5 records per source (so the test sees several windows close).
async fn relay(idp: &Idp, dir: &Path) -> RelayHandle {
    log::init();
    let yaml = yaml::portal_relay(
        &idp.url(),
        dir,
        "audit:\n  max_file_bytes: 16384\n  keep_files: 1\n  max_refusals_per_source: 5\n  \
         max_refusals_total: 50\n  refusal_window_sec: 2\n",
    );
    let guarded = "  - name: guarded\n    bind: 127.0.0.1:0\n    connector: addomain\n    \
                   allow_cidrs: [127.0.0.1/32]\n";
    let yaml = yaml::under(&yaml, "listeners", guarded);
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded (/readyz)", DEADLINE, || r.is_ready()).await;
    r
}

/// Refusals a set of records accounts for: one per record of its own, `more` per aggregate.
fn accounted<'a>(recs: impl Iterator<Item = &'a AuditRecord>) -> u64 {
    recs.filter(|r| r.action == Action::Open && !r.success)
        .filter(|r| r.reason.as_deref() == Some("cidr_blocked"))
        .map(|r| r.more.unwrap_or(1))
        .sum()
}

/// Every record in the audit file and its one rotation, oldest first.
fn file_records(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for name in ["audit.jsonl.1", "audit.jsonl"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            continue;
        };
        out.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_refusals_keep_the_earlier_trail_and_are_counted_in_aggregates() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("audit-flood");
    let relay = relay(&idp, dir.path()).await;
    let admin = admin_token(&key, &["pwd", "otp"]);

    // An operator action, then a successful agent authentication.
    let r = api(
        relay.portal_addr(),
        "PATCH",
        "/api/v1/policies/pol-pdp-enforce",
        Some(&admin),
        Some(r#"{"enabled": false}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ws = upgrade(
        relay.tunnel_addr(),
        Some(&agent_token(&key, "agent-a")),
        None,
    )
    .await
    .expect("upgrade accepted");
    let mut agent = MockAgent::v2(ws);
    agent.hello("agent-a", &["addomain"]).await;

    // 10,000 connections from 127.0.0.2 to a listener that admits only 127.0.0.1: each is
    // reset at once (the client waits for that, so the loop is paced by the relay).
    let guarded = relay.listener_addr("guarded").expect("listener guarded");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PARALLEL {
        tasks.push(tokio::spawn(async move {
            for _ in 0..FLOOD / PARALLEL + 1 {
                connect_from_and_wait_closed(net::other_loopback(), guarded, T).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood task");
    }
    let sent = (FLOOD / PARALLEL + 1) * PARALLEL;
    assert!(sent >= FLOOD);
    eprintln!("{sent} refused connections in {:?}", started.elapsed());
    let rejected = format!(
        "nowconnect_connections_rejected_total{{connector=\"addomain\",reason=\"cidr_blocked\"}} {sent}"
    );
    assert!(relay.metrics_text().contains(&rejected));

    // Every refusal is accounted for, in memory, once the last window has closed.
    let all = || relay.audit_records(&AuditFilter::default());
    wait_for("aggregates of every window", DEADLINE, || {
        accounted(all().iter()) == sent as u64
    })
    .await;
    let recs = all();
    assert!(
        recs.len() < 200,
        "{} records for {sent} refusals",
        recs.len()
    );
    let agg = recs
        .iter()
        .find(|r| r.more.is_some())
        .expect("an aggregate record");
    assert_eq!(agg.source.as_deref(), Some("127.0.0.2"));
    let n = agg.more.expect("more");
    assert_eq!(
        agg.detail.as_deref(),
        Some(format!("{n} more refused from 127.0.0.2 in the last 2 s").as_str())
    );
    let folded: u64 = recs.iter().filter_map(|r| r.more).sum();
    let counted = relay
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("nowconnect_audit_aggregated_total{action=\"open\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(counted, Some(folded));

    // The earlier records are still in memory, and the portal serves them.
    let query = |q: &'static str| {
        let admin = admin.clone();
        let addr = relay.portal_addr();
        async move {
            let r = api(
                addr,
                "GET",
                &format!("/api/v1/audit{q}"),
                Some(&admin),
                None,
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.array().clone()
        }
    };
    let toggles = query("?action=policy_toggled").await;
    assert_eq!(toggles.len(), 1, "{toggles:?}");
    assert_eq!(toggles[0]["resource"], "policy:pol-pdp-enforce");
    let auths: Vec<Value> = query("?action=tunnel_auth&success=true").await;
    assert!(
        auths.iter().any(|r| r["agent_id"] == "agent-a"),
        "{auths:?}"
    );
    let refusals = query("?action=open&success=false&limit=1000").await;
    assert!(refusals.iter().any(|r| r["more"].as_u64().is_some()));

    // ... and in the file (the live one or its one rotation): not rotated away, and the
    // aggregates add up there too.
    wait_for("the file holds every window", DEADLINE, || {
        accounted(file_records(dir.path()).iter()) == sent as u64
    })
    .await;
    let file = file_records(dir.path());
    assert!(file
        .iter()
        .any(|r| r.action == Action::PolicyToggled && r.actor.as_deref() == Some("portal:alice")));
    assert!(file.iter().any(|r| r.action == Action::TunnelAuth
        && r.success
        && r.agent_id.as_deref() == Some("agent-a")));
    assert!(file.iter().any(|r| r.action == Action::Hello && r.success));
    assert!(!relay
        .metrics_text()
        .contains("nowconnect_audit_dropped_total{"));

    // The agent that authenticated before the flood still carries traffic.
    let mut client = net::connect(relay.listener_addr("ldap").expect("ldap")).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut client, id).await;
}
