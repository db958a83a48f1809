//! STATUS frames (an agent's report of its targets' health) against the relay, sent raw over
//! loopback: a valid report shows in `nowconnect_connector_targets` for the connectors the
//! tunnel exported only; oversized, malformed, over-long and misaddressed reports are counted
//! as protocol errors and ignored (the last good report stays, the tunnel keeps working); one
//! before HELLO is refused like any bad HELLO (close 1008). A flood of reports, valid or not, is
//! cut after a burst: the relay closes that tunnel and serves another agent's client meanwhile.

use std::time::Duration;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::binary::{self, FrameType, HEADER_LEN};
use nowconnect_shared::status::{MAX_STATUS_LEN, MAX_STATUS_TARGETS};
use nowconnect_shared::{Frame, Limits, Status, TargetStatus};
use nowconnect_testkit::log::{Capture, Format};
use nowconnect_testkit::mock_agent::{connect, v2_agent, MockAgent, OFFER_BOTH};
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::{net, yaml};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SEND: Duration = Duration::from_secs(2);

async fn relay() -> RelayHandle {
    let yaml = yaml::relay(&[("ldap", "addomain"), ("pg", "db")], yaml::DEV);
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn metric(relay: &RelayHandle, line: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), line)
}

fn targets_series(relay: &RelayHandle) -> Vec<String> {
    relay
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("nowconnect_connector_targets{"))
        .map(str::to_owned)
        .collect()
}

fn target(name: &str, up: bool) -> TargetStatus {
    TargetStatus {
        target: name.to_owned(),
        up,
        since_ms: 100,
        failures: u64::from(!up),
    }
}

/// A STATUS message with `body` as is, on stream `id`.
fn raw_status(id: u32, body: &[u8]) -> Message {
    let mut m = Vec::with_capacity(HEADER_LEN + body.len());
    m.push(FrameType::Status as u8);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(body);
    Message::Binary(m.into())
}

async fn send_raw(agent: &mut MockAgent<TcpStream>, what: &str, msg: Message) {
    let sent = match agent.try_feed_msg(msg, SEND).await {
        Ok(()) => agent.try_flush(SEND).await,
        Err(e) => Err(e),
    };
    sent.unwrap_or_else(|e| panic!("the relay reads a STATUS that is {what}: {e}"));
}

const DOWN: &str = "nowconnect_connector_targets{connector=\"addomain\",state=\"down\"}";
const UP: &str = "nowconnect_connector_targets{connector=\"addomain\",state=\"up\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_counts_exported_connectors_only_and_hostile_ones_are_ignored() {
    let relay = relay().await;
    assert!(targets_series(&relay).is_empty(), "no report, no series");
    let mut agent = v2_agent(relay.tunnel_addr(), "a1", &["addomain"]).await;

    // A report naming an exported connector and one it did not export (`db`).
    let mut s = Status::default();
    s.targets.insert(
        "addomain".into(),
        vec![target("dc1:636", false), target("dc2:636", true)],
    );
    s.targets
        .insert("db".into(), vec![target("pg:5432", false)]);
    agent.send(&Frame::Status(Box::new(s))).await;
    wait_for("the report to be counted", DEADLINE, || {
        metric(&relay, DOWN) == 1
    })
    .await;
    assert_eq!(metric(&relay, UP), 1);
    let series = targets_series(&relay);
    assert_eq!(series.len(), 2, "only addomain: {series:?}");

    let errors = || metric(&relay, "nowconnect_protocol_errors_total");
    let before = errors();
    let many = format!(
        "{{\"targets\":{{\"addomain\":[{}]}}}}",
        vec![r#"{"target":"h:1","up":false,"since_ms":0,"failures":1}"#; MAX_STATUS_TARGETS + 1]
            .join(",")
    );
    let hostile: Vec<(&str, Message)> = vec![
        (
            "oversized",
            raw_status(0, &vec![b' '; MAX_STATUS_LEN + 1]),
        ),
        ("malformed JSON", raw_status(0, b"{\"targets\":{\"addomain\":[")),
        ("not an object", raw_status(0, b"[1,2]")),
        ("wrong shape", raw_status(0, br#"{"targets":{"addomain":3}}"#)),
        ("too many targets", raw_status(0, many.as_bytes())),
        (
            "control character",
            raw_status(
                0,
                b"{\"targets\":{\"addomain\":[{\"target\":\"a\\u0007\",\"up\":true,\"since_ms\":0,\"failures\":0}]}}",
            ),
        ),
        (
            "on a stream",
            raw_status(7, br#"{"targets":{"addomain":[]}}"#),
        ),
    ];
    let n = hostile.len() as u64;
    for (what, msg) in hostile {
        send_raw(&mut agent, what, msg).await;
    }
    wait_for("every hostile report to be counted", DEADLINE, || {
        errors() >= before + n
    })
    .await;
    assert_eq!(errors(), before + n, "one protocol error each");
    // The last good report stays.
    assert_eq!(metric(&relay, DOWN), 1);
    assert_eq!(metric(&relay, UP), 1);

    // The tunnel still works: a client is served, and a new report replaces the old whole
    // (an unknown connector only: nothing kept, the series go).
    let _client = net::connect(relay.listener_addr("ldap").expect("listener")).await;
    agent.expect_open("addomain").await;
    let mut unknown = Status::default();
    unknown
        .targets
        .insert("nope".into(), vec![target("x:1", false)]);
    agent.send(&Frame::Status(Box::new(unknown))).await;
    wait_for("the series of the replaced report to go", DEADLINE, || {
        targets_series(&relay).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_reports_are_summed_and_a_tunnel_end_drops_its_report() {
    let relay = relay().await;
    let mut a = v2_agent(relay.tunnel_addr(), "a1", &["addomain"]).await;
    let mut b = v2_agent(relay.tunnel_addr(), "a2", &["addomain"]).await;
    for agent in [&mut a, &mut b] {
        let mut s = Status::default();
        s.targets.insert(
            "addomain".into(),
            vec![target("dc1:636", false), target("dc2:636", true)],
        );
        agent.send(&Frame::Status(Box::new(s))).await;
    }
    wait_for("both reports to be counted", DEADLINE, || {
        metric(&relay, DOWN) == 2 && metric(&relay, UP) == 2
    })
    .await;
    drop(b);
    wait_for("the closed tunnel's report to go", DEADLINE, || {
        metric(&relay, DOWN) == 1
    })
    .await;
    assert_eq!(metric(&relay, UP), 1);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_before_hello_closes_the_tunnel() {
    let relay = relay().await;
    let (ws, _) = connect(relay.tunnel_addr(), Some(OFFER_BOTH))
        .await
        .expect("upgrade");
    let mut agent = MockAgent::v2(ws);
    agent.send(&Frame::Status(Box::default())).await;
    let code = agent.close_code().await;
    assert_eq!(code, Some(1008), "refused like any bad HELLO");
    assert!(targets_series(&relay).is_empty());
}

/// A valid STATUS: `addomain`'s 16 targets, all up (about 1 KiB of JSON to parse).
fn full_report() -> Frame {
    let list = (0..MAX_STATUS_TARGETS)
        .map(|i| target(&format!("dc{i}.corp.example:636"), true))
        .collect();
    let mut s = Status::default();
    s.targets.insert("addomain".into(), list);
    Frame::Status(Box::new(s))
}

/// Reports a paced agent may deliver at once on the default keepalive: 16, plus one for each
/// second of a stall the relay waits out (`ping_interval_sec` + `ping_timeout_sec`, 20 + 20).
const REPORT_BURST: usize = 16 + 40;

/// Sends `msg` as fast as the relay takes it (bounded in count and time); `Some` once the relay
/// stops taking it (the tunnel closed).
async fn flood_until_refused(agent: &mut MockAgent<TcpStream>, msg: &Message) -> Option<String> {
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(20) && sent < 1_000_000 {
        let mut r = agent.try_feed_msg(msg.clone(), SEND).await;
        sent += 1;
        if r.is_ok() && sent.is_multiple_of(64) {
            r = agent.try_flush(SEND).await;
        }
        if let Err(e) = r {
            return Some(e);
        }
    }
    None
}

/// An honest agent serving `db`, with a client on one of its streams (its id).
async fn honest(relay: &RelayHandle) -> (MockAgent<TcpStream>, TcpStream, u32) {
    let mut agent = v2_agent(relay.tunnel_addr(), "honest", &["db"]).await;
    let client = net::connect(relay.listener_addr("pg").expect("listener")).await;
    let id = agent.expect_open("db").await;
    (agent, client, id)
}

/// The reporting tunnel is gone, counted as a protocol error, with one warning saying why (and
/// at most the per-tunnel limit of others: each malformed report is a rate-limited warning).
async fn closed_for_reports(relay: &RelayHandle, agent_id: &str) {
    wait_for("the reporting tunnel to be gone", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;
    // Taken out of the registry first, counted a moment later.
    let ended = "nowconnect_agent_disconnects_total{reason=\"protocol_error\"}";
    wait_for("the ending to be counted", DEADLINE, || {
        metric(relay, ended) == 1
    })
    .await;
    let log = Capture::global(Format::Text).text();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(agent_id))
        .collect::<Vec<_>>();
    let why = warned
        .iter()
        .filter(|l| l.contains("floods target reports"))
        .count();
    assert_eq!(why, 1, "{warned:?}");
    assert!(warned.len() <= 11, "{} warnings", warned.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_flooding_valid_target_reports_is_closed_after_a_burst() {
    let relay = relay().await;
    let _ = Capture::global(Format::Text);
    let (mut honest, mut client, id) = honest(&relay).await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "goodreports", &["addomain"]).await;
    let report = full_report();
    // What a paced agent can deliver at once after a stall is parsed and kept.
    for _ in 0..REPORT_BURST {
        hostile.try_feed(&report, SEND).await.expect("burst");
    }
    hostile.try_flush(SEND).await.expect("burst");
    let up = "nowconnect_connector_targets{connector=\"addomain\",state=\"up\"}";
    wait_for("the burst's report to be kept", DEADLINE, || {
        metric(&relay, up) == MAX_STATUS_TARGETS as u64
    })
    .await;
    assert_eq!(relay.agents_for("addomain"), 1, "the burst is allowed");

    // Past it, as fast as the socket takes them: without the limit the relay parses them all.
    let msg =
        Message::Binary(binary::encode_to_bytes(&report, &Limits::default()).expect("encodes"));
    let stopped = flood_until_refused(&mut hostile, &msg).await;
    assert!(stopped.is_some(), "the relay kept parsing reports");
    closed_for_reports(&relay, "goodreports").await;
    honest.ping_pong(&mut client, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_flooding_malformed_target_reports_is_closed() {
    let relay = relay().await;
    let _ = Capture::global(Format::Text);
    let (mut honest, mut client, id) = honest(&relay).await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "badreports", &["addomain"]).await;
    // STATUS (type 9) on stream 0 whose JSON is cut short: each is parsed before it fails. The
    // unknown-frame limit (65,536, refilled at 16,384/s) would let a flood of them run for good.
    let mut body = vec![FrameType::Status as u8, 0, 0, 0, 0];
    body.extend_from_slice(br#"{"targets":{"addomain":["#);
    body.resize(8 * 1024, b' ');
    let msg = Message::Binary(body.into());
    let stopped = flood_until_refused(&mut hostile, &msg).await;
    assert!(
        stopped.is_some(),
        "the relay kept parsing malformed reports"
    );
    closed_for_reports(&relay, "badreports").await;
    honest.ping_pong(&mut client, id).await;
}
