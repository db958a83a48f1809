//! Several targets behind one connector (issue 21): failover skips a target that stopped (no
//! client connection fails once its failure was seen) and goes back to it after its backoff,
//! round robin spreads streams over both, and a connector whose every target refuses closes the
//! client's connection. The agent's `nowconnect_agent_target_up` follows, and so does what the
//! relay shows of it (STATUS): the portal's agent view and `nowconnect_connector_targets`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nowconnect_agent::AgentHandle;
use nowconnect_relay::RelayHandle;
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::io::connect_and_wait_closed;
use nowconnect_testkit::wait::{wait_for_async, within, DEADLINE, POLL};
use nowconnect_testkit::{http, net, target, yaml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::{agent_yaml, listener, relay, relay_yaml, start_agent, start_relay};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An agent READY at `relay` whose connector `ad` has the hosts 127.0.0.1 and 127.0.0.2 on
/// `port`, with its metrics endpoint.
async fn agent(relay: &RelayHandle, port: u16, strategy: &str) -> AgentHandle {
    let placeholder = SocketAddr::new(LOCAL, port);
    let y = agent_yaml(relay.tunnel_addr(), "v2", &[("ad", placeholder)]);
    let hosts = [LOCAL, net::other_loopback()];
    let y = yaml::with_hosts(&y, "ad", &hosts, port, strategy);
    let agent = start_agent(&format!("{y}metrics: {{host: 127.0.0.1, port: 0}}\n")).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    agent
}

/// One client connection through `addr`: the tag of the target it reached, after an echo.
async fn tag_of(addr: SocketAddr) -> [u8; 4] {
    let mut s = net::connect(addr).await;
    let mut tag = [0u8; 4];
    within("the target's tag", DEADLINE, s.read_exact(&mut tag))
        .await
        .expect("the client connection works (tag)");
    s.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    within("the echo", DEADLINE, s.read_exact(&mut back))
        .await
        .expect("the client connection works (echo)");
    assert_eq!(&back, b"ping");
    tag
}

async fn target_up(agent: &AgentHandle, host: IpAddr, port: u16) -> Option<u64> {
    let addr = agent.metrics_addr().expect("metrics endpoint");
    let (status, page) = http::get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let series =
        format!("nowconnect_agent_target_up{{connector=\"ad\",target=\"{host}:{port}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.parse().ok())
}

/// Until `addr` refuses a connection (its listener is closed).
async fn wait_refused(addr: SocketAddr) {
    wait_for_async("the stopped target to refuse", DEADLINE, || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_skips_a_stopped_target_and_returns_to_it_after_backoff() {
    let (first, second) = target::tagged_echo_pair(b"one:", b"two:").await;
    let port = first.addr.port();
    let relay = relay(&["ad"]).await;
    let agent = agent(&relay, port, "failover").await;
    let addr = listener(&relay, "ad");
    assert_eq!(
        &tag_of(addr).await,
        b"one:",
        "failover starts at the first host"
    );
    assert_eq!(target_up(&agent, LOCAL, port).await, Some(1));
    assert_eq!(
        target_up(&agent, net::other_loopback(), port).await,
        Some(1)
    );

    let first_addr = first.addr;
    drop(first);
    wait_refused(first_addr).await;
    // The OPEN that meets the refusal goes on to the second host within the same budget; the
    // following ones skip the first (down) host: no client connection fails.
    for _ in 0..5 {
        assert_eq!(&tag_of(addr).await, b"two:");
    }
    assert_eq!(target_up(&agent, LOCAL, port).await, Some(0), "marked down");

    // Back on the same port: after its backoff (1 s) one OPEN probes it and it is used again.
    // (tokio's listeners set SO_REUSEADDR, so the port binds again once the old listener is
    // closed; if this OS refused, the test fails here with the bind error.)
    let bind = first_addr.to_string();
    let end = Instant::now() + DEADLINE;
    let _first = loop {
        match target::try_tagged_echo_on(&bind, b"one:").await {
            Ok(t) => break t,
            Err(e) => assert!(Instant::now() < end, "cannot bind {bind} again: {e}"),
        }
        tokio::time::sleep(POLL).await;
    };
    let mut seen = 0;
    loop {
        let tag = tag_of(addr).await;
        seen += 1;
        if &tag == b"one:" {
            break;
        }
        assert!(
            Instant::now() < end,
            "no stream reached the first target again after {seen} streams"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(target_up(&agent, LOCAL, port).await, Some(1), "up again");
    assert_eq!(&tag_of(addr).await, b"one:", "failover prefers it again");
    drop(second);
    agent.shutdown();
    agent.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_streams_over_both_targets() {
    let (_first, _second) = target::tagged_echo_pair(b"one:", b"two:").await;
    let port = _first.addr.port();
    let relay = relay(&["ad"]).await;
    let agent = agent(&relay, port, "round_robin").await;
    let addr = listener(&relay, "ad");
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(tag_of(addr).await);
    }
    assert_eq!(
        tags,
        [*b"one:", *b"two:", *b"one:", *b"two:"],
        "rotates per OPEN"
    );
    agent.shutdown();
    agent.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_refusing_closes_the_client() {
    // 127.0.0.1:port is bound and never listens; nothing listens on 127.0.0.2:port either.
    let refused = target::refused();
    let port = refused.addr.port();
    let relay = relay(&["ad"]).await;
    let agent = agent(&relay, port, "failover").await;
    let addr = listener(&relay, "ad");
    for _ in 0..2 {
        connect_and_wait_closed(addr, DEADLINE).await;
    }
    assert_eq!(target_up(&agent, LOCAL, port).await, Some(0));
    assert_eq!(
        target_up(&agent, net::other_loopback(), port).await,
        Some(0)
    );
    let (_, page) = http::get(agent.metrics_addr().expect("metrics"), "/metrics").await;
    let failures = nowconnect_testkit::metrics::value(
        &page,
        "nowconnect_agent_target_connect_failures_total{connector=\"ad\"}",
    );
    assert_eq!(failures, 2, "two OPENs failed:\n{page}");
    for host in [LOCAL, net::other_loopback()] {
        let series = format!(
            "nowconnect_agent_target_failures_total{{connector=\"ad\",target=\"{host}:{port}\"}}"
        );
        assert_eq!(
            nowconnect_testkit::metrics::value(&page, &series),
            2,
            "{page}"
        );
    }
    agent.shutdown();
    agent.wait().await;
}

/// The relay's agent view (`GET /api/v1/agents`) of the connector `ad`: (target, up) pairs in
/// the agent's order; empty before a report.
async fn reported(relay: &RelayHandle, token: &str) -> Vec<(String, bool)> {
    let r = http::request(
        relay.portal_addr(),
        "GET",
        "/api/v1/agents",
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rows = r.array();
    assert_eq!(rows.len(), 1, "one agent tunnel: {}", r.body);
    let Some(list) = rows[0]["targets"]["ad"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|t| {
            assert!(t["since"].is_string(), "since: {t}");
            assert!(t["failures"].is_u64(), "failures: {t}");
            let target = t["target"].as_str().expect("target").to_owned();
            (target, t["up"].as_bool().expect("up"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_shows_the_agents_target_health() {
    let dir = nowconnect_testkit::temp::TempDir::new("e2e-targets");
    let key = nowconnect_testkit::idp::ed_key("ops");
    let jwks_url = nowconnect_testkit::idp::jwks_file(dir.path(), &[&key]);
    let token = nowconnect_testkit::idp::mint(
        &key,
        &nowconnect_testkit::idp::portal_claims(
            "ops-1",
            &["pwd", "otp"],
            serde_json::json!({"roles": ["admin"]}),
        ),
    );
    // 127.0.0.1:port refuses (its listener is gone), 127.0.0.2:port echoes.
    let (first, _second) = target::tagged_echo_pair(b"one:", b"two:").await;
    let port = first.addr.port();
    let first_addr = first.addr;
    drop(first);
    wait_refused(first_addr).await;
    let relay =
        start_relay(&(relay_yaml(&["ad"]) + &format!("portal:\n  jwks_url: {jwks_url}\n"))).await;
    let agent = agent(&relay, port, "failover").await;
    let down = format!("127.0.0.1:{port}");
    let up = format!("{}:{port}", net::other_loopback());
    // The first report (right after READY) has both up: nothing was dialled yet.
    wait_for_async("the first report", DEADLINE, || async {
        reported(&relay, &token).await == [(down.clone(), true), (up.clone(), true)]
    })
    .await;

    // This OPEN meets the refusal and goes on to the second host.
    assert_eq!(&tag_of(listener(&relay, "ad")).await, b"two:");
    wait_for_async(
        "the relay to show the refusing host down",
        DEADLINE,
        || async { reported(&relay, &token).await == [(down.clone(), false), (up.clone(), true)] },
    )
    .await;
    let page = || async {
        let (status, page) = http::get(relay.metrics_addr(), "/metrics").await;
        assert_eq!(status, 200);
        page
    };
    let series = |state: &str| {
        format!("nowconnect_connector_targets{{connector=\"ad\",state=\"{state}\"}} ")
    };
    wait_for_async("the relay's gauge to count it", DEADLINE, || async {
        let p = page().await;
        p.lines().any(|l| l == format!("{}1", series("down")))
            && p.lines().any(|l| l == format!("{}1", series("up")))
    })
    .await;
    agent.shutdown();
    agent.wait().await;
}
