//! The relay behind a real HAProxy (Debian's, TCP mode, `send-proxy-v2`) in front of its tunnel
//! port and a listener: HAProxy connects to the relay from 127.0.0.9 (the only trusted proxy),
//! while its clients come from other loopback addresses, so whatever the relay's allowlists and
//! audit show can only have come from the PROXY header.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use nowconnect_relay::{Action, AuditFilter, AuditRecord, RelayHandle};
use nowconnect_testkit::haproxy::{Haproxy, Send};
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::io::{connect_and_wait_closed, read_to_close};
use nowconnect_testkit::mock_agent::{refusal, upgrade};
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent_yaml, listener, relay_yaml, start_agent, start_relay};

fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn audited(relay: &RelayHandle, action: Action, success: bool) -> Vec<AuditRecord> {
    relay.audit_records(&AuditFilter {
        action: Some(action),
        success: Some(success),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_shows_the_relay_the_real_client_addresses() {
    let echo = target::echo().await;
    // Agents only from 127.0.0.1, clients only from 127.0.0.2; PROXY headers only from HAProxy.
    let yaml = relay_yaml(&["echo"]).replace(
        "    connector: echo\n",
        "    connector: echo\n    proxy_protocol: true\n    allow_cidrs: [127.0.0.2/32]\n",
    );
    let yaml = yaml::under(&yaml, "tunnel", "  proxy_protocol: true\n").replace(
        "security:\n  dev_bypass: true\n",
        "security:\n  dev_bypass: true\n  trusted_proxies: [127.0.0.9/32]\n  \
         tunnel_allow_cidrs: [127.0.0.1/32]\n",
    );
    let relay = start_relay(&yaml).await;
    let Some(haproxy) = Haproxy::start(
        &[
            (relay.tunnel_addr(), Send::V2),
            (listener(&relay, "echo"), Send::V2),
        ],
        Some(lo(9)),
    )
    .await
    else {
        return;
    };
    let (tunnel_fe, echo_fe) = (haproxy.frontends[0], haproxy.frontends[1]);

    // The real agent dials HAProxy from 127.0.0.1 and is admitted as 127.0.0.1, although the
    // relay's socket peer is HAProxy's 127.0.0.9.
    let agent = start_agent(&agent_yaml(tunnel_fe, "v2", &[("echo", echo.addr)])).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    let hello = audited(&relay, Action::Hello, true);
    let source = hello[0].source.clone().unwrap_or_default();
    assert!(source.starts_with("127.0.0.1:"), "agent seen from {source}");

    // A WebSocket client behind HAProxy from 127.0.0.3 is refused by tunnel_allow_cidrs under
    // its own address.
    let err = upgrade(tunnel_fe, None, Some(lo(3)))
        .await
        .expect_err("127.0.0.3 is not an allowed agent source");
    assert_eq!(refusal(err).0, 403);
    let refused = audited(&relay, Action::TunnelAuth, false);
    let source = refused[0].source.clone().unwrap_or_default();
    assert!(source.starts_with("127.0.0.3:"), "refused as {source}");

    // A client from 127.0.0.2 reaches the echo target through HAProxy, the listener and the
    // agent, and is audited as 127.0.0.2.
    let mut c = net::connect_from(lo(2), echo_fe).await;
    c.write_all(b"behind haproxy").await.expect("write");
    let mut back = [0u8; 14];
    tokio::time::timeout(DEADLINE, c.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&back, b"behind haproxy");
    let open = audited(&relay, Action::Open, true);
    let source = open[0].source.clone().unwrap_or_default();
    assert!(
        source.starts_with("127.0.0.2:"),
        "client seen from {source}"
    );
    assert_eq!(source, c.local_addr().expect("local").to_string());

    // A client from 127.0.0.3 is refused by the listener's allow_cidrs.
    let mut c3 = net::connect_from(lo(3), echo_fe).await;
    let (bytes, closed) = read_to_close(&mut c3, Duration::from_secs(5)).await;
    assert!(closed && bytes.is_empty(), "127.0.0.3 was relayed");
    wait_for("the refusal audited", DEADLINE, || {
        audited(&relay, Action::Open, false).iter().any(|r| {
            r.source
                .as_deref()
                .is_some_and(|s| s.starts_with("127.0.0.3:"))
        })
    })
    .await;

    // Straight to the relay, around HAProxy, nobody is believed: closed and counted.
    connect_and_wait_closed(listener(&relay, "echo"), Duration::from_secs(5)).await;
    assert!(relay.metrics_text().contains(
        "nowconnect_connections_rejected_total{connector=\"echo\",reason=\"proxy_untrusted\"} 1"
    ));
    drop(agent);
}
