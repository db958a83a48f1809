//! The HA registry for real: relays on loopback sharing a Debian `redis-server` (or one
//! in-memory directory), agents that say HELLO to one of them. Claims fence across relays,
//! peers are discovered, a relay that dies leaves nothing behind once its TTL is over, and a
//! Redis outage degrades `/readyz` (still 200) while local flows keep working; Redis back
//! (empty) gets the registry republished without restarting any relay.

use std::time::Duration;

use nowconnect_relay::{MemoryDirectory, Prebound, RelayConfig, RelayHandle};
use nowconnect_testkit::http::get;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{v2_agent, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::redis::Redis;
use nowconnect_testkit::wait::{wait_for, wait_for_async, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use serde_json::Value;
use tokio::net::TcpStream;

/// Presence TTL 3 s (the minimum): expiry takes up to that plus a heartbeat.
const EXPIRY: Duration = Duration::from_secs(10);

fn config(replica: &str, redis_url: &str, mesh_lines: &str) -> RelayConfig {
    let y = yaml::relay(&[("ldap", "addomain")], "")
        + DEV
        + &yaml::ha("active", replica, redis_url, mesh_lines);
    RelayConfig::from_yaml_str(&y).expect("valid relay config")
}

async fn relay(replica: &str, redis_url: &str, mesh_lines: &str) -> RelayHandle {
    log::init();
    nowconnect_relay::start(config(replica, redis_url, mesh_lines))
        .await
        .expect("relay starts")
}

async fn agent(relay: &RelayHandle, id: &str) -> MockAgent<TcpStream> {
    v2_agent(relay.tunnel_addr(), id, &["addomain"]).await
}

/// The agent's claim epoch on `relay`, once it has one.
async fn claimed(relay: &RelayHandle, agent: &str) -> u64 {
    wait_for("the agent is claimed", DEADLINE, || {
        relay.claim_epoch(agent).is_some_and(|e| e > 0)
    })
    .await;
    relay.claim_epoch(agent).expect("claimed")
}

async fn sees(relay: &RelayHandle, owner: &str, agent: &str, epoch: u64) {
    let want = vec![(owner.to_owned(), agent.to_owned(), epoch)];
    wait_for(&format!("{want:?} in the view"), DEADLINE, || {
        relay.remote_agents("addomain") == want
    })
    .await;
}

async fn readyz(relay: &RelayHandle) -> (u16, Value) {
    let (status, text) = get(relay.tunnel_addr(), "/readyz").await;
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, body)
}

/// A client on `relay`'s listener reaches `agent` (a local flow).
async fn local_flow(relay: &RelayHandle, agent: &mut MockAgent<TcpStream>) {
    let mut client = net::connect(relay.listener_addr("ldap").expect("ldap")).await;
    let id = agent.next_open("addomain").await;
    agent.ping_pong(&mut client, id).await;
}

#[tokio::test]
async fn a_hello_claims_with_a_larger_epoch_on_every_relay_and_peers_are_discovered() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let url = redis.url();
    let static_peer = "    peers:\n      - {replica_id: relay-z, url: \"ws://127.0.0.1:1/mesh\"}\n";
    let a = relay("relay-a", &url, static_peer).await;
    let b = relay("relay-b", &url, "").await;
    // Nobody set mesh.advertise_url: each relay publishes its tunnel address.
    let a_url = format!("ws://{}/mesh", a.tunnel_addr());
    let b_url = format!("ws://{}/mesh", b.tunnel_addr());
    wait_for("b discovers a", DEADLINE, || {
        b.mesh_peers() == [("relay-a".to_owned(), a_url.clone())]
    })
    .await;
    wait_for("a discovers b and keeps its static peer", DEADLINE, || {
        a.mesh_peers()
            == [
                ("relay-b".to_owned(), b_url.clone()),
                ("relay-z".to_owned(), "ws://127.0.0.1:1/mesh".to_owned()),
            ]
    })
    .await;

    let _on_a = agent(&a, "premise-01").await;
    let e1 = claimed(&a, "premise-01").await;
    sees(&b, "relay-a", "premise-01", e1).await;
    assert!(
        a.remote_agents("addomain").is_empty(),
        "its own agent is local"
    );

    // The agent says HELLO to b as well: b takes it with a larger epoch, a sees b own it.
    let _on_b = agent(&b, "premise-01").await;
    let e2 = claimed(&b, "premise-01").await;
    assert!(e2 > e1, "epoch {e2} after {e1}");
    sees(&a, "relay-b", "premise-01", e2).await;
    wait_for(
        "b no longer routes to a's superseded claim",
        DEADLINE,
        || b.remote_agents("addomain").is_empty(),
    )
    .await;
    let m = b.metrics_text();
    assert!(
        m.contains("nowconnect_registry_ops_total{op=\"claim\",result=\"ok\"}"),
        "{m}"
    );
    assert!(m.contains("nowconnect_registry_up 1"), "{m}");
}

#[tokio::test]
async fn redis_down_degrades_readyz_keeps_local_flows_and_redis_back_gets_the_registry_republished()
{
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let url = redis.url();
    let a = relay("relay-a", &url, "").await;
    let b = relay("relay-b", &url, "").await;
    let mut on_a = agent(&a, "premise-01").await;
    let e1 = claimed(&a, "premise-01").await;
    sees(&b, "relay-a", "premise-01", e1).await;
    let (status, body) = readyz(&a).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    assert_eq!(body["registry"], "up");

    redis.stop().await;
    wait_for_async("a's /readyz says degraded", DEADLINE, || async {
        readyz(&a).await.1["status"] == "degraded"
    })
    .await;
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "degraded is still ready for local traffic");
    assert_eq!(body["registry"], "down");
    assert_eq!(body["reasons"][0], "registry_unreachable", "{body}");
    assert_eq!(body["replica_id"], "relay-a");
    assert!(a.metrics_text().contains("nowconnect_registry_up 0"));
    local_flow(&a, &mut on_a).await;
    // The last known owner stays in b's view while Redis is down.
    assert_eq!(b.remote_agents("addomain").len(), 1);

    redis.start_again().await;
    wait_for("b sees the agent again, claimed anew", DEADLINE, || {
        b.remote_agents("addomain")
            .first()
            .is_some_and(|(r, agent, e)| r == "relay-a" && agent == "premise-01" && *e > e1)
    })
    .await;
    assert!(a.claim_epoch("premise-01").expect("local") > e1);
    wait_for_async("a's /readyz is ready again", DEADLINE, || async {
        readyz(&a).await.1["status"] == "ready"
    })
    .await;
    local_flow(&a, &mut on_a).await;
}

#[tokio::test]
async fn a_relay_that_dies_leaves_no_owner_or_peer_behind_once_its_ttl_is_over() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let url = redis.url();
    let b = relay("relay-b", &url, "").await;
    // Relay a runs on a runtime of its own that the test drops without a shutdown: no release,
    // no withdraw, as after SIGKILL.
    let (a_tunnel, e1) = {
        let url = url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let out = rt.block_on(async {
                let a = relay("relay-a", &url, "").await;
                let on_a = agent(&a, "premise-01").await;
                let e = claimed(&a, "premise-01").await;
                let addr = a.tunnel_addr();
                std::mem::forget((a, on_a));
                (addr, e)
            });
            rt.shutdown_background();
            out
        })
        .join()
        .expect("relay a ran")
    };
    let a_url = format!("ws://{a_tunnel}/mesh");
    sees(&b, "relay-a", "premise-01", e1).await;
    assert_eq!(b.mesh_peers(), [("relay-a".to_owned(), a_url)]);
    wait_for("a's claim and presence expire", EXPIRY, || {
        b.remote_agents("addomain").is_empty() && b.mesh_peers().is_empty()
    })
    .await;
}

#[tokio::test]
async fn relays_sharing_a_memory_directory_form_one_service_without_redis() {
    log::init();
    let dir = MemoryDirectory::new();
    let start = |replica: &str| {
        let cfg = config(replica, "redis://unused.invalid:6379", "");
        let dir = dir.clone();
        async move {
            nowconnect_relay::start_with(
                cfg,
                None,
                Prebound {
                    directory: Some(dir),
                    ..Prebound::default()
                },
            )
            .await
            .expect("relay starts")
        }
    };
    let a = start("relay-a").await;
    let b = start("relay-b").await;
    let _on_a = agent(&a, "premise-01").await;
    let e1 = claimed(&a, "premise-01").await;
    assert_eq!(dir.owner_of("premise-01"), Some(("relay-a".to_owned(), e1)));
    sees(&b, "relay-a", "premise-01", e1).await;
    let (status, body) = readyz(&b).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    // a stops gracefully: it releases its claim and withdraws at once, no TTL to wait for.
    a.shutdown();
    a.wait().await;
    assert_eq!(dir.owner_of("premise-01"), None);
    wait_for("b no longer sees a", DEADLINE, || {
        b.remote_agents("addomain").is_empty() && b.mesh_peers().is_empty()
    })
    .await;
}
