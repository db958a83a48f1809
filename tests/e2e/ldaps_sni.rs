//! One relay port for several LDAPS directories, routed by the TLS server name: two real slapd
//! instances with certificates for different names behind one `route_by: sni` listener. Each name
//! reaches its own directory (its certificate verifies by that name, through the tunnel); a name
//! without a route is closed; a ClientHello dribbled one byte per second is cut at the peek
//! deadline; a 64 KiB junk "ClientHello" is refused on its header, nothing of it buffered.

use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_testkit::hosts::HostsFile;
use nowconnect_testkit::pki::Ca;
use nowconnect_testkit::slapd;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ldaps::{ldaps_slapd, ldaps_tools, search_by_name};
use crate::{agent_yaml, listener, start_agent, start_relay};

const DC1: &str = "dc1.corp.test";
const DC2: &str = "dc2.corp.test";
/// In the hosts file, pointing at the relay, but without a route.
const DC9: &str = "dc9.corp.test";
const PEEK_TIMEOUT_MS: u64 = 2500;

/// Relay YAML: one sni listener `ldaps` (dc1 -> `ldaps_dc1`, dc2 -> `ldaps_dc2`, no default).
fn relay_yaml() -> String {
    format!(
        "listeners:\n  - name: ldaps\n    bind: 127.0.0.1:0\n    route_by: sni\n    routes:\n      \
         {DC1}: ldaps_dc1\n      {DC2}: ldaps_dc2\n    sni_peek_timeout_ms: {PEEK_TIMEOUT_MS}\n\
         tunnel:\n  host: 127.0.0.1\n  port: 0\n  ping_interval_sec: 5\n  ping_timeout_sec: 5\n{}",
        nowconnect_testkit::yaml::DEV
    )
}

fn rejected(relay: &nowconnect_relay::RelayHandle, reason: &str) -> u64 {
    nowconnect_testkit::metrics::value(
        &relay.metrics_text(),
        &format!("nowconnect_sni_rejected_total{{listener=\"ldaps\",reason=\"{reason}\"}}"),
    )
}

/// Until the relay closes `c` (EOF or reset), writing `bytes` one at a time every `pace`:
/// how long it took and how many bytes went out.
async fn dribble(c: &mut TcpStream, bytes: &[u8], pace: Duration) -> (Duration, usize) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(pace);
    let mut buf = [0u8; 16];
    let mut sent = 0;
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the relay never closed the dribbling client"
        );
        tokio::select! {
            r = c.read(&mut buf) => {
                assert!(matches!(r, Ok(0) | Err(_)), "no bytes expected: {r:?}");
                return (start.elapsed(), sent);
            }
            _ = tick.tick(), if sent < bytes.len() => {
                if c.write_all(&bytes[sent..=sent]).await.is_err() {
                    return (start.elapsed(), sent);
                }
                sent += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_reaches_its_own_directory_through_one_sni_listener() {
    if !ldaps_tools() {
        return;
    }
    let dir = TempDir::new("ldaps-sni");
    let ca = Ca::new("NowConnect test directory CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let lo = "127.0.0.1".parse().expect("ip");
    let (dc1, dc2) = tokio::task::block_in_place(|| {
        (
            ldaps_slapd(&ca, DC1, lo, None, &dir),
            ldaps_slapd(&ca, DC2, lo, None, &dir),
        )
    });
    let relay = start_relay(&relay_yaml()).await;
    let targets = [("ldaps_dc1", dc1.addr), ("ldaps_dc2", dc2.addr)];
    let agent = start_agent(&agent_yaml(relay.tunnel_addr(), "v2", &targets)).await;
    nowconnect_testkit::health::wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    let via: SocketAddr = listener(&relay, "ldaps");
    let hosts = HostsFile::new(&[(via.ip(), DC1), (via.ip(), DC2), (via.ip(), DC9)]);

    // Each certificate names one directory only: a search by the other name through the wrong
    // server would fail verification, so a verified search proves the route.
    for (name, server) in [(DC1, &dc1), (DC2, &dc2)] {
        let direct = search_by_name(
            &hosts,
            &ca_file,
            name,
            server.addr.port(),
            slapd::PEOPLE_FILTER,
        )
        .await
        .expect("direct LDAPS search by name");
        let tunneled = search_by_name(&hosts, &ca_file, name, via.port(), slapd::PEOPLE_FILTER)
            .await
            .unwrap_or_else(|e| panic!("{name} through the sni listener: {e}"));
        assert_eq!(
            slapd::count_entries(&tunneled),
            slapd::PEOPLE_COUNT,
            "{name}"
        );
        assert_eq!(
            slapd::normalize_ldif(&tunneled),
            slapd::normalize_ldif(&direct),
            "{name}: other entries through the tunnel"
        );
    }
    assert_eq!(rejected(&relay, "unknown_name"), 0);

    // A name with no route and no default: closed before any byte reaches a directory.
    let unknown = search_by_name(&hosts, &ca_file, DC9, via.port(), "(objectClass=*)").await;
    let unknown = unknown.expect_err("a name without a route reached a directory");
    eprintln!("unknown name: {unknown}");
    wait_for("the unknown name counted", DEADLINE, || {
        rejected(&relay, "unknown_name") == 1
    })
    .await;

    // One byte per second: cut at the peek deadline, long before the hello is complete.
    let hello = [22u8, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
    let mut c = TcpStream::connect(via).await.expect("connect");
    let (closed, sent) = dribble(&mut c, &hello, Duration::from_secs(1)).await;
    assert!(
        closed >= Duration::from_millis(PEEK_TIMEOUT_MS) && closed < Duration::from_secs(8),
        "dribbling client closed after {closed:?}"
    );
    assert!(sent < hello.len(), "the whole hello went out: no deadline");
    assert_eq!(rejected(&relay, "timeout"), 1);

    // 64 KiB of junk announced as one huge handshake record: refused on the header.
    let mut junk = vec![22u8, 3, 1, 0xff, 0xff];
    junk.extend((0..64 * 1024).map(|i| (i % 251) as u8));
    let mut c = TcpStream::connect(via).await.expect("connect");
    let start = Instant::now();
    c.write_all(&junk[..1024]).await.expect("the first KiB");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("refused well before the peek deadline");
    assert!(matches!(r, Ok(0) | Err(_)), "no bytes expected: {r:?}");
    assert!(start.elapsed() < Duration::from_millis(PEEK_TIMEOUT_MS));
    assert!(
        c.write_all(&junk[1024..]).await.is_err(),
        "the rest of the junk was accepted after the refusal"
    );
    assert_eq!(rejected(&relay, "invalid"), 1);
}
