//! The reference's metric catalog: a relay that carried traffic, FINs, RSTs, a PDP allow, a deny
//! and an error, and an agent that reconnected, exports every catalog name with its labels; and
//! the families a scrape shows are exactly those docs/metrics.md lists.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::{Dir, Frame, RstCode};
use nowconnect_testkit::http::{self, Reply, TestServer};
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{data, v2_agent};
use nowconnect_testkit::net;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

/// The catalog, as exposed: (sample name, labels every series of it must carry).
const CATALOG: &[(&str, &[&str])] = &[
    ("nowconnect_tcp_connections_total", &["connector"]),
    ("nowconnect_tcp_active_connections", &["connector"]),
    ("nowconnect_tcp_bytes_total", &["direction", "connector"]),
    ("nowconnect_tunnel_reconnects_total", &["agent", "reason"]),
    ("nowconnect_tunnel_uptime_seconds", &["agent"]),
    ("nowconnect_listener_accept_errors_total", &["connector"]),
    ("nowconnect_queue_overflow_total", &["side", "connector"]),
    ("nowconnect_fin_sent", &[]),
    ("nowconnect_fin_recv", &[]),
    ("nowconnect_rst_sent", &[]),
    ("nowconnect_rst_recv", &[]),
    ("nowconnect_pdp_allow_total", &[]),
    ("nowconnect_pdp_deny_total", &[]),
    ("nowconnect_pdp_errors_total", &[]),
    ("nowconnect_connection_duration_seconds_bucket", &["le"]),
    ("nowconnect_connection_duration_seconds_count", &[]),
    ("nowconnect_connection_duration_seconds_sum", &[]),
];

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

/// A PDP answering what the test last set.
async fn pdp() -> (TestServer, Arc<Mutex<Reply>>) {
    let reply = Arc::new(Mutex::new(Reply::ok("{\"decision\":true}")));
    let r = reply.clone();
    let server = TestServer::start(move |_, _, _| r.lock().expect("reply").clone()).await;
    (server, reply)
}

/// One sample line: its name, its label names and values, its value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn samples(page: &str) -> Vec<Sample> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample has a value");
            let value = value.parse().expect("a numeric value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split("\",")
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label k=\"v\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// The names operators query, one per family of the page: a counter's samples end in `_total`
/// (except the catalog's four FIN/RST counters, written without it), a histogram is named by
/// its family.
fn exposed_families(page: &str) -> BTreeSet<String> {
    let all = samples(page);
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("# TYPE name kind");
            let plain = all.iter().any(|s| s.name == name);
            if kind == "counter" && !plain {
                format!("{name}_total")
            } else {
                name.to_owned()
            }
        })
        .collect()
}

/// The first column of every table row of docs/metrics.md that names a metric.
fn documented() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let page = std::fs::read_to_string(path).expect("docs/metrics.md");
    let mut names = BTreeSet::new();
    for row in page.lines().filter(|l| l.starts_with("| `nowconnect_")) {
        let cell = row.split('`').nth(1).expect("a name in backticks");
        let name = cell.split('{').next().expect("a name").to_owned();
        assert!(names.insert(name.clone()), "{name} listed twice");
    }
    names
}

#[tokio::test]
async fn every_catalog_metric_is_exported_and_the_page_lists_exactly_the_families() {
    log::init();
    let (pdp, reply) = pdp().await;
    let cfg = RelayConfig::from_yaml_str(&yaml::relay(
        &[("ldap", "addomain")],
        &format!(
            "{DEV}pdp:\n  url: {}\n  cache_ttl_sec: 0\n",
            pdp.url("/access/v1/evaluation")
        ),
    ))
    .expect("valid relay config");
    let relay = nowconnect_relay::start(cfg).await.expect("relay starts");

    // Families that appear only after events are registered at start: the page is exact
    // before any traffic too.
    let idle = relay.metrics_text();
    assert_eq!(
        exposed_families(&idle),
        documented(),
        "idle scrape:\n{idle}"
    );

    // A first tunnel, dropped; the same agent_id again is a reconnect.
    let first = v2_agent(relay.tunnel_addr(), "edge-1", &["addomain"]).await;
    wait_for("first tunnel", DEADLINE, || relay.agents_connected() == 1).await;
    drop(first);
    wait_for("first tunnel gone", DEADLINE, || {
        relay.agents_connected() == 0
    })
    .await;
    let mut agent = v2_agent(relay.tunnel_addr(), "edge-1", &["addomain"]).await;
    wait_for("second tunnel", DEADLINE, || {
        relay.agents_for("addomain") == 1
    })
    .await;

    // PDP allow; bytes both ways; FIN c2a from the relay, FIN a2c from the agent.
    let mut client = net::connect(ldap(&relay)).await;
    let id = agent.expect_open("addomain").await;
    client.write_all(b"hello").await.expect("client write");
    assert_eq!(agent.recv().await, data(id, b"hello"));
    agent.send(&data(id, b"answer")).await;
    let mut buf = [0u8; 6];
    tokio::time::timeout(T, client.read_exact(&mut buf))
        .await
        .expect("answer in time")
        .expect("client read");
    client.shutdown().await.expect("client half-close");
    assert_eq!(agent.recv().await, Frame::Fin { id, dir: Dir::C2a });
    agent.send(&Frame::Fin { id, dir: Dir::A2c }).await;
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed, "client not closed after both FINs");

    // RST received: the agent could not connect. RST sent: a FIN in the agent's wrong direction.
    let mut c2 = net::connect(ldap(&relay)).await;
    let id2 = agent.next_open("addomain").await;
    agent
        .send(&Frame::Rst {
            id: id2,
            code: RstCode::ConnectFailed,
            reason: "refused".into(),
        })
        .await;
    assert!(read_to_close(&mut c2, T).await.1);
    let mut c3 = net::connect(ldap(&relay)).await;
    let id3 = agent.next_open("addomain").await;
    agent
        .send(&Frame::Fin {
            id: id3,
            dir: Dir::C2a,
        })
        .await;
    assert!(read_to_close(&mut c3, T).await.1);

    // PDP deny, then a PDP error: both clients closed without a byte.
    *reply.lock().expect("reply") = Reply::ok("{\"decision\":false}");
    let mut c4 = net::connect(ldap(&relay)).await;
    assert!(read_to_close(&mut c4, T).await.1);
    *reply.lock().expect("reply") = Reply::status(500);
    let mut c5 = net::connect(ldap(&relay)).await;
    assert!(read_to_close(&mut c5, T).await.1);
    wait_for("streams closed", DEADLINE, || relay.open_connections() == 0).await;
    wait_for("PDP error counted", DEADLINE, || {
        relay
            .metrics_text()
            .contains("\nnowconnect_pdp_errors_total 1\n")
    })
    .await;

    let (status, page) = http::get(relay.metrics_addr(), "/metrics").await;
    assert_eq!(status, 200);
    let all = samples(&page);
    for (name, labels) in CATALOG {
        let series: Vec<&Sample> = all.iter().filter(|s| s.name == *name).collect();
        assert!(!series.is_empty(), "no {name} in\n{page}");
        for s in &series {
            for l in *labels {
                assert!(
                    s.labels.iter().any(|(k, _)| k == l),
                    "{name} without label {l} in\n{page}"
                );
            }
            assert!(
                !s.labels.iter().any(|(k, _)| k == "agent")
                    || name.starts_with("nowconnect_tunnel_"),
                "{name} has an agent label"
            );
        }
    }
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        all.iter()
            .filter(|s| s.name == name)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{page}"))
            .value
    };
    let addomain = ("connector", "addomain");
    assert_eq!(
        value(
            "nowconnect_tcp_bytes_total",
            &[("direction", "c2p"), addomain]
        ),
        5.0
    );
    assert_eq!(
        value(
            "nowconnect_tcp_bytes_total",
            &[("direction", "p2c"), addomain]
        ),
        6.0
    );
    assert!(!page.contains("direction=\"c2a\"") && !page.contains("direction=\"a2c\""));
    // Five clients accepted: the relayed one, two reset, the denied and the errored.
    assert_eq!(value("nowconnect_tcp_connections_total", &[addomain]), 5.0);
    assert_eq!(value("nowconnect_tcp_active_connections", &[addomain]), 0.0);
    assert_eq!(
        value(
            "nowconnect_queue_overflow_total",
            &[("side", "relay"), addomain]
        ),
        0.0
    );
    assert_eq!(
        value("nowconnect_listener_accept_errors_total", &[addomain]),
        0.0
    );
    // Sampled at the scrape: ready, and the agent still serving addomain.
    assert_eq!(value("nowconnect_relay_ready", &[]), 1.0);
    assert_eq!(value("nowconnect_connector_agents", &[addomain]), 1.0);
    assert_eq!(value("nowconnect_fin_sent", &[]), 1.0);
    assert_eq!(value("nowconnect_fin_recv", &[]), 1.0);
    assert_eq!(
        value("nowconnect_rst_recv", &[("code", "connect_failed")]),
        1.0
    );
    assert_eq!(
        value("nowconnect_rst_sent", &[("code", "protocol_error")]),
        1.0
    );
    for (name, kind) in [
        ("nowconnect_fin_sent", "counter"),
        ("nowconnect_fin_recv", "counter"),
        ("nowconnect_rst_sent", "counter"),
        ("nowconnect_rst_recv", "counter"),
        ("nowconnect_tunnel_reconnects", "counter"),
        ("nowconnect_tunnel_uptime_seconds", "gauge"),
        ("nowconnect_connection_duration_seconds", "histogram"),
    ] {
        assert!(
            page.contains(&format!("# TYPE {name} {kind}\n")),
            "no # TYPE {name} {kind}"
        );
    }
    assert_eq!(value("nowconnect_pdp_allow_total", &[]), 3.0);
    assert_eq!(value("nowconnect_pdp_deny_total", &[]), 1.0);
    assert_eq!(value("nowconnect_pdp_errors_total", &[]), 1.0);
    // The first tunnel's end reason, whatever the close looked like from the relay's side.
    let reconnects: f64 = all
        .iter()
        .filter(|s| s.name == "nowconnect_tunnel_reconnects_total")
        .inspect(|s| assert!(s.labels.contains(&("agent".into(), "edge-1".into()))))
        .map(|s| s.value)
        .sum();
    assert_eq!(reconnects, 1.0, "{page}");
    assert!(value("nowconnect_tunnel_uptime_seconds", &[("agent", "edge-1")]) >= 0.0);
    assert!(value("nowconnect_connection_duration_seconds_count", &[]) >= 1.0);

    assert_eq!(exposed_families(&page), documented(), "scrape:\n{page}");
}
