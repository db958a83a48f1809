//! The agent's Prometheus endpoint (`metrics.port`) against a real relay that checks tokens:
//! after a stream carried bytes, a refused target and a lost tunnel, every metric shows with its
//! labels and plausible values, and no label holds an address (but the configured targets' in
//! the per-target families) or the token.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nowconnect_relay::RelayHandle;
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::http;
use nowconnect_testkit::idp::{claims, ed_key, jwks_file, mint};
use nowconnect_testkit::io::{connect_and_wait_closed, random_bytes};
use nowconnect_testkit::metrics::value;
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent_yaml, listener, relay_yaml, start_agent, start_relay};

/// Every reason label the agent lists, each at 0 until it happens.
const REASONS: [&str; 10] = [
    "connect_failed",
    "tls",
    "token",
    "auth_refused",
    "refused",
    "timeout",
    "closed_by_relay",
    "ping_timeout",
    "protocol",
    "error",
];

/// The agent's page, checked to be a 200 in the text format.
async fn scrape(addr: SocketAddr) -> String {
    let r = http::request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    r.text
}

/// Scrapes until `cond` holds on the page, or panics with the last page.
async fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let page = scrape(addr).await;
        if cond(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last page:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_token_and_metrics(yaml: String, token: &Path) -> String {
    let yaml = yaml.replacen(
        "tunnel:\n",
        &format!("tunnel:\n  auth:\n    token_file: {}\n", token.display()),
        1,
    );
    format!("{yaml}metrics: {{host: 127.0.0.1, port: 0}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_endpoint_shows_every_metric_after_real_traffic() {
    let dir = TempDir::new("e2e-agent-metrics");
    let key = ed_key("e2e");
    let jwks_url = jwks_file(dir.path(), &[&key]);
    let token_text = mint(&key, &claims("premise-01"));
    let token = dir.write("agent.jwt", &format!("{token_text}\n"));
    let yaml = relay_yaml(&["echo", "down"]).replace(
        "security:\n  dev_bypass: true\n",
        &format!("security:\n  jwks_url: {jwks_url}\n"),
    );
    let relay: RelayHandle = start_relay(&yaml).await;
    let echo = target::echo().await;
    let down = target::refused();
    let agent = start_agent(&with_token_and_metrics(
        agent_yaml(
            relay.tunnel_addr(),
            "v2",
            &[("echo", echo.addr), ("down", down.addr)],
        ),
        &token,
    ))
    .await;
    let metrics = agent.metrics_addr().expect("metrics.port is set");
    assert_eq!(metrics.ip(), agent.health_addr().ip());
    assert_ne!(metrics, agent.health_addr());
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;

    // A stream that carries 64 KiB each way and stays open.
    let sent = random_bytes(7, 64 * 1024);
    let mut s = net::connect(listener(&relay, "echo")).await;
    s.write_all(&sent).await.expect("write");
    let mut back = vec![0u8; sent.len()];
    within("the echo", DEADLINE, s.read_exact(&mut back))
        .await
        .expect("read the echo");
    assert!(back == sent, "echo differs");
    // A stream whose target refuses: the relay closes the client's socket.
    connect_and_wait_closed(listener(&relay, "down"), DEADLINE).await;

    let failures = "nowconnect_agent_target_connect_failures_total{connector=\"down\"}";
    // The refused stream's task may still be ending when the client sees its close.
    let page = scrape_until(
        metrics,
        "the refused target counted, its stream gone",
        |p| value(p, failures) >= 1 && p.contains("\nnowconnect_agent_streams_active 1\n"),
    )
    .await;
    for name in [
        "nowconnect_agent_info",
        "nowconnect_agent_tunnel_up",
        "nowconnect_agent_tunnel_uptime_seconds",
        "nowconnect_agent_reconnects_total",
        "nowconnect_agent_streams_active",
        "nowconnect_agent_bytes_total",
        "nowconnect_agent_target_connect_failures_total",
        "nowconnect_agent_target_up",
        "nowconnect_agent_target_failures_total",
        "nowconnect_agent_token_expiry_seconds",
    ] {
        assert!(
            page.contains(&format!("# HELP {name} ")),
            "{name}: no HELP\n{page}"
        );
        assert!(
            page.contains(&format!("# TYPE {name} ")),
            "{name}: no TYPE\n{page}"
        );
    }
    let version = format!(
        "nowconnect_agent_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(page.contains(&version), "{page}");
    assert!(page.contains("\nnowconnect_agent_tunnel_up 1\n"), "{page}");
    assert!(
        page.contains("\nnowconnect_agent_streams_active 1\n"),
        "the echo stream is open\n{page}"
    );
    let n = sent.len() as u64;
    assert!(
        value(&page, "nowconnect_agent_bytes_total{direction=\"c2p\"}") >= n,
        "{page}"
    );
    assert!(
        value(&page, "nowconnect_agent_bytes_total{direction=\"p2c\"}") >= n,
        "{page}"
    );
    assert_eq!(value(&page, failures), 1, "{page}");
    assert!(
        page.contains("nowconnect_agent_target_connect_failures_total{connector=\"echo\"} 0\n"),
        "every exported connector is listed\n{page}"
    );
    for reason in REASONS {
        let series = format!("nowconnect_agent_reconnects_total{{reason=\"{reason}\"}} 0\n");
        assert!(page.contains(&series), "no reconnect yet: {series}{page}");
    }
    let left = page
        .lines()
        .find_map(|l| l.strip_prefix("nowconnect_agent_token_expiry_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("a token with exp: expiry shown\n{page}"));
    assert!(
        (500.0..=601.0).contains(&left),
        "the token expires in 10 minutes: {left}"
    );
    let uptime = page
        .lines()
        .find_map(|l| l.strip_prefix("nowconnect_agent_tunnel_uptime_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("uptime shown\n{page}"));
    assert!((0.0..60.0).contains(&uptime), "{uptime}");
    // Every configured target host shows its health: up for the echo, down for the refused.
    for (connector, addr, up) in [("echo", echo.addr, 1), ("down", down.addr, 0)] {
        let series = format!(
            "nowconnect_agent_target_up{{connector=\"{connector}\",target=\"{addr}\"}} {up}\n"
        );
        assert!(page.contains(&series), "{series}{page}");
    }
    assert_eq!(
        value(
            &page,
            &format!(
                "nowconnect_agent_target_failures_total{{connector=\"down\",target=\"{}\"}}",
                down.addr
            )
        ),
        1,
        "{page}"
    );
    // No address, port or secret anywhere on the page, but the configured targets in the
    // `target` label of the per-target families.
    let per_target = [
        "nowconnect_agent_target_up{",
        "nowconnect_agent_target_failures_total{",
    ];
    let rest: String = page
        .lines()
        .filter(|l| !per_target.iter().any(|p| l.starts_with(p)))
        .collect::<Vec<_>>()
        .join("\n");
    for secret in [
        token_text.as_str(),
        "127.0.0.1",
        &echo.addr.port().to_string(),
        &down.addr.port().to_string(),
    ] {
        assert!(!rest.contains(secret), "{secret} on the page\n{page}");
    }
    assert!(!page.contains(token_text.as_str()), "the token on the page");

    // The relay goes away: the tunnel is down, and the reconnect is counted with its reason.
    drop(s);
    drop(relay);
    let page = scrape_until(metrics, "the lost tunnel", |p| {
        p.contains("\nnowconnect_agent_tunnel_up 0\n")
            && REASONS
                .iter()
                .map(|r| {
                    value(
                        p,
                        &format!("nowconnect_agent_reconnects_total{{reason=\"{r}\"}}"),
                    )
                })
                .sum::<u64>()
                >= 1
    })
    .await;
    assert!(
        page.contains("\nnowconnect_agent_tunnel_uptime_seconds 0.000\n"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_counted_as_auth_refused_and_other_paths_are_404() {
    let dir = TempDir::new("e2e-agent-metrics-refused");
    let key = ed_key("e2e");
    let jwks_url = jwks_file(dir.path(), &[&key]);
    let yaml = relay_yaml(&["echo"]).replace(
        "security:\n  dev_bypass: true\n",
        &format!("security:\n  jwks_url: {jwks_url}\n"),
    );
    let relay = start_relay(&yaml).await;
    let echo = target::echo().await;
    // Signed by a key the relay does not know: the upgrade is refused (401).
    let stranger = ed_key("stranger");
    let token = dir.write("stranger.jwt", &mint(&stranger, &claims("premise-01")));
    let agent = start_agent(&with_token_and_metrics(
        agent_yaml(relay.tunnel_addr(), "v2", &[("echo", echo.addr)]),
        &token,
    ))
    .await;
    let metrics = agent.metrics_addr().expect("metrics.port is set");
    let page = scrape_until(metrics, "a refused upgrade counted", |p| {
        value(
            p,
            "nowconnect_agent_reconnects_total{reason=\"auth_refused\"}",
        ) >= 1
    })
    .await;
    assert!(page.contains("\nnowconnect_agent_tunnel_up 0\n"), "{page}");
    let (status, _) = http::get(metrics, "/").await;
    assert_eq!(status, 404);
    let r = http::request(metrics, "POST", "/metrics", None, Some("{}")).await;
    assert_eq!(r.status, 405);
}
