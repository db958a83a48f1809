//! Two real directories behind one connector (domain controllers of one domain): with the first
//! stopped every search still succeeds through the second, and once the first is back it is used
//! again. The servers share a port on two loopback addresses, as DCs share 389 on two hosts.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nowconnect_testkit::slapd::{self, Client, Options, Slapd};
use nowconnect_testkit::wait::DEADLINE;

use crate::{agent_yaml, listener, relay, start_agent};

/// Two plain slapd instances on 127.0.0.2 and 127.0.0.3, one port, counting connections.
fn two_directories() -> (Slapd, Slapd) {
    let mut last = String::new();
    for _ in 0..5 {
        let first = Slapd::start_with(&Options {
            ip: Some(Ipv4Addr::new(127, 0, 0, 2)),
            log_connections: true,
            ..Options::default()
        })
        .expect("first slapd starts");
        match Slapd::start_with(&Options {
            ip: Some(Ipv4Addr::new(127, 0, 0, 3)),
            port: Some(first.addr.port()),
            log_connections: true,
            ..Options::default()
        }) {
            Ok(second) => return (first, second),
            // Someone took the port on 127.0.0.3 meanwhile: another pair.
            Err(e) => last = e,
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3: {last}");
}

fn search(via: SocketAddr) -> Result<usize, String> {
    Client::new(format!("ldap://{via}"))
        .search(slapd::PEOPLE_FILTER, &["uid"], None)
        .map(|out| slapd::count_entries(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_directory_is_skipped_and_used_again_when_back() {
    if !nowconnect_testkit::require(Slapd::binaries_present(), "slapd or ldap-utils") {
        return;
    }
    let (mut dc1, dc2) = tokio::task::block_in_place(two_directories);
    let relay = relay(&["addomain"]).await;
    let port = dc1.addr.port();
    let yaml = agent_yaml(relay.tunnel_addr(), "v2", &[("addomain", dc1.addr)]).replace(
        &format!("{{host: '127.0.0.2', port: {port}}}"),
        &format!("{{hosts: ['127.0.0.2', '127.0.0.3'], port: {port}, strategy: failover}}"),
    );
    assert!(yaml.contains("hosts: ['127.0.0.2'"), "agent YAML: {yaml}");
    let agent = start_agent(&yaml).await;
    nowconnect_testkit::health::wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    let via = listener(&relay, "addomain");

    tokio::task::block_in_place(|| {
        // Both up: failover order sends every connection to the first.
        let (before1, before2) = (dc1.connections(), dc2.connections());
        for i in 0..3 {
            assert_eq!(search(via), Ok(slapd::PEOPLE_COUNT), "search {i}, both up");
        }
        assert_eq!(dc1.connections() - before1, 3, "the first directory serves");
        assert_eq!(dc2.connections(), before2, "the second waits");

        // The first goes away: not one search fails, the second serves them all.
        dc1.stop();
        let before2 = dc2.connections();
        for i in 0..10 {
            assert_eq!(
                search(via),
                Ok(slapd::PEOPLE_COUNT),
                "search {i}, first down"
            );
        }
        assert_eq!(dc2.connections() - before2, 10, "the second serves");

        // Back: after its pause the agent tries it again and uses it.
        dc1.start_again().expect("first slapd starts again");
        let before1 = dc1.connections();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut searches = 0;
        while dc1.connections() == before1 {
            assert!(
                Instant::now() < deadline,
                "the first directory was not used again within 60 s ({searches} searches)"
            );
            assert_eq!(
                search(via),
                Ok(slapd::PEOPLE_COUNT),
                "search while it comes back"
            );
            searches += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        let before2 = dc2.connections();
        for i in 0..3 {
            assert_eq!(
                search(via),
                Ok(slapd::PEOPLE_COUNT),
                "search {i}, first back"
            );
        }
        assert_eq!(
            dc2.connections(),
            before2,
            "failover order again: the first serves"
        );
    });
}
