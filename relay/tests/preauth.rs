//! Pre-auth limits on the relay's HTTP servers (`tunnel.preauth`), sent for real on loopback to
//! a relay that checks JWTs: thousands of half-open and idle keep-alive connections, the total
//! and per-source caps, a slow head, oversized heads. A valid agent still gets in, memory and
//! descriptors stay bounded, and everything unauthenticated goes at its deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::idp::{claims, ec_key, mint, Idp, Key, ISSUER};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::process::{open_fds, raise_nofile, rss_kib};
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Sources the flood comes from (127.0.1.1 ..), each holding [`PER_SOURCE`] connections.
const SOURCES: u8 = 30;
const PER_SOURCE: usize = 100;
const FLOOD: usize = SOURCES as usize * PER_SOURCE;

async fn jwt_relay(idp: &Idp, preauth: &str) -> RelayHandle {
    log::init();
    let yaml = yaml::relay(
        &[("ldap", "addomain")],
        &format!(
            "  preauth: {preauth}\nsecurity:\n  jwks_url: {}\n  issuer: {ISSUER}\n  \
             auth_failure_limit: 100000\n",
            idp.url()
        ),
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded", DEADLINE, || r.is_ready()).await;
    r
}

fn metric(relay: &RelayHandle, line: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), line)
}

fn refused(relay: &RelayHandle, reason: &str) -> u64 {
    metric(
        relay,
        &format!("nowconnect_http_refused_total{{reason=\"{reason}\"}}"),
    )
}

fn held(relay: &RelayHandle) -> u64 {
    metric(relay, "nowconnect_http_preauth_connections ")
}

fn flooder(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 1))
}

/// A keep-alive client: one `GET /healthz` answered, then idle.
async fn keep_alive(addr: SocketAddr, from: IpAddr) -> TcpStream {
    let mut s = net::connect_from(from, addr).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = s.read(&mut buf).await.expect("read /healthz answer");
        assert!(n > 0, "closed before the /healthz answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    s
}

/// Whether the relay closed `s` (EOF or reset) within `wait`. A small buffer: thousands of
/// these run at once.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    let end = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A connection the relay refused at accept: closed at once (or reset before the connect ended).
async fn refused_at_once(addr: SocketAddr, from: IpAddr) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0)).expect("bind");
    if let Ok(mut s) = sock.connect(addr).await {
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "a connection over the cap was not closed"
        );
    }
}

/// Upgrades `/tunnel` from `from` with a valid token and expects HELLO_ACK.
async fn valid_agent(relay: &RelayHandle, key: &Key, from: IpAddr) -> MockAgent<TcpStream> {
    let ws = upgrade(
        relay.tunnel_addr(),
        Some(&mint(key, &claims("premise-01"))),
        Some(from),
    )
    .await
    .expect("a valid agent is upgraded");
    let mut a = MockAgent::v2(ws);
    a.send_hello("premise-01", &["addomain"]).await;
    assert_eq!(a.recv().await, Frame::HelloAck);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_unauthenticated_connections_leave_an_agent_in_and_go_at_the_deadline() {
    // Both ends of every connection live in this process.
    raise_nofile(2 * FLOOD as u64 + 2048);
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let relay = jwt_relay(
        &idp,
        "{max_total: 3200, max_per_source: 100, head_timeout_ms: 8000, idle_timeout_ms: 8000}",
    )
    .await;
    let addr = relay.tunnel_addr();
    // Warm up (allocator pools, metric families, the JWKS cache), then measure.
    drop(valid_agent(&relay, &key, net::other_loopback()).await);
    drop(keep_alive(addr, net::other_loopback()).await);
    wait_for("warm-up connections gone", DEADLINE, || {
        relay.agents_for("addomain") == 0 && held(&relay) == 0
    })
    .await;
    let fds_before = open_fds();
    let rss_before = rss_kib();

    // Half of each source's connections say nothing; the other half ask /healthz and idle.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..SOURCES {
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::with_capacity(PER_SOURCE);
            for n in 0..PER_SOURCE {
                held.push(if n % 2 == 0 {
                    net::connect_from(flooder(i), addr).await
                } else {
                    keep_alive(addr, flooder(i)).await
                });
            }
            held
        }));
    }
    let mut flood = Vec::with_capacity(FLOOD);
    for t in tasks {
        flood.extend(t.await.expect("flood task"));
    }
    let opened_in = started.elapsed();
    wait_for(
        "every flood connection held",
        Duration::from_secs(2),
        || held(&relay) == FLOOD as u64,
    )
    .await;
    assert_eq!(
        refused(&relay, "total_cap") + refused(&relay, "source_cap"),
        0
    );

    // One more from a full source is closed at once; other sources are unaffected.
    for _ in 0..20 {
        refused_at_once(addr, flooder(0)).await;
    }
    assert_eq!(refused(&relay, "source_cap"), 20);

    // The valid agent gets in quickly while the flood is held.
    let t = Instant::now();
    let agent = within(
        "HELLO_ACK while 3,000 connections are held",
        Duration::from_secs(2),
        valid_agent(&relay, &key, net::other_loopback()),
    )
    .await;
    eprintln!(
        "{FLOOD} connections opened in {opened_in:?}; HELLO_ACK after {:?}",
        t.elapsed()
    );
    assert_eq!(relay.agents_for("addomain"), 1);
    assert_eq!(
        held(&relay),
        FLOOD as u64,
        "an authenticated tunnel does not count"
    );
    let rss_held = rss_kib();
    eprintln!("RSS before {rss_before} KiB, holding {FLOOD}: {rss_held} KiB");
    assert!(
        rss_held.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_held} KiB"
    );

    // At the deadline the relay closes every one of them: its descriptors go, ours stay open.
    wait_for(
        "every unauthenticated connection closed",
        Duration::from_secs(15),
        || held(&relay) == 0,
    )
    .await;
    for s in &mut flood {
        assert!(closed_within(s, Duration::from_secs(2)).await);
    }
    assert!(refused(&relay, "head_timeout") >= (FLOOD / 2) as u64);
    assert!(refused(&relay, "idle_timeout") >= (FLOOD / 2) as u64);
    let fds_held = open_fds();
    eprintln!("descriptors: {fds_before} before, {fds_held} with only our {FLOOD} ends open");
    assert!(
        fds_held <= fds_before + FLOOD + 32,
        "the relay still holds descriptors: {fds_before} before, {fds_held} now"
    );
    drop(flood);
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 32,
        "descriptors: {fds_before} before, {fds_after} after"
    );
    // The agent's tunnel outlived every deadline.
    assert_eq!(relay.agents_for("addomain"), 1);
    drop(agent);
}

#[tokio::test]
async fn the_total_cap_refuses_at_accept_and_a_tunnel_leaves_it() {
    let key = ec_key("ec-1");
    let idp = Idp::start(&[&key]).await;
    let relay = jwt_relay(
        &idp,
        "{max_total: 4, max_per_source: 4, head_timeout_ms: 30000}",
    )
    .await;
    let addr = relay.tunnel_addr();
    let first = valid_agent(&relay, &key, net::other_loopback()).await;
    wait_for("the tunnel left the pre-auth count", DEADLINE, || {
        held(&relay) == 0
    })
    .await;
    let mut quiet = Vec::new();
    for i in 0..4 {
        quiet.push(net::connect_from(flooder(i), addr).await);
    }
    wait_for("4 held", DEADLINE, || held(&relay) == 4).await;
    refused_at_once(addr, flooder(9)).await;
    assert_eq!(refused(&relay, "total_cap"), 1);
    assert!(
        upgrade(addr, Some(&mint(&key, &claims("premise-02"))), None)
            .await
            .is_err(),
        "a fifth connection got through a full total"
    );
    // The first agent's tunnel is not affected; a freed slot lets the next agent in.
    assert_eq!(relay.agents_for("addomain"), 1);
    drop(quiet.pop());
    wait_for("a slot freed", DEADLINE, || held(&relay) == 3).await;
    let second = valid_agent(&relay, &key, net::other_loopback()).await;
    drop((first, second));
}

#[tokio::test]
async fn a_slow_head_is_closed_at_the_deadline_from_accept() {
    let idp = Idp::start(&[&ec_key("ec-1")]).await;
    let relay = jwt_relay(&idp, "{head_timeout_ms: 800, idle_timeout_ms: 60000}").await;
    let mut s = net::connect(relay.tunnel_addr()).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    // One header byte every 100 ms never completes the head; the deadline still holds.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    within("the slow head closed", Duration::from_secs(5), trickle).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    wait_for("counted", DEADLINE, || refused(&relay, "head_timeout") == 1).await;
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let idp = Idp::start(&[&ec_key("ec-1")]).await;
    let relay = jwt_relay(&idp, "{max_header_bytes: 8192, max_headers: 16}").await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let many = format!(
        "GET /healthz HTTP/1.1\r\nHost: relay\r\n{}\r\n",
        (0..20).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    for (i, req) in [big, many].iter().enumerate() {
        let mut s = net::connect(relay.tunnel_addr()).await;
        s.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        within("the 431 and the close", DEADLINE, s.read_to_end(&mut got))
            .await
            .expect("read");
        assert!(
            got.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        wait_for("counted", DEADLINE, || {
            refused(&relay, "head_too_large") == i as u64 + 1
        })
        .await;
    }
    // Within the caps the same relay answers.
    let ok = keep_alive(relay.tunnel_addr(), net::other_loopback()).await;
    drop(ok);
}
