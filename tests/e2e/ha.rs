//! Several relays as one service for real (issue 16): the registry (Redis or one in-memory
//! directory) claims agents with epochs and fills every relay's view, and the mesh carries a
//! client on one relay to the agent on another. No view or epoch test hooks here.

use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_agent::AgentHandle;
use nowconnect_relay::{MemoryDirectory, Prebound, RelayHandle};
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::http::get;
use nowconnect_testkit::io::{recv_hash, send_random};
use nowconnect_testkit::net;
use nowconnect_testkit::redis::Redis;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{wait_for, wait_for_async, within, DEADLINE};
use nowconnect_testkit::yaml;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent_yaml, listener, relay_yaml, start_agent, start_relay_on};

const ONE_MIB: usize = 1024 * 1024;

/// Relay `id` exporting `db` in `ha.mode` `mode`, on Redis at `redis_url` or on `dir`.
async fn ha_relay(
    id: &str,
    mode: &str,
    redis_url: &str,
    dir: Option<&MemoryDirectory>,
) -> RelayHandle {
    nowconnect_testkit::log::init();
    let y = relay_yaml(&["db"]) + &yaml::ha(mode, id, redis_url, "");
    let prebound = Prebound {
        directory: dir.cloned(),
        ..Prebound::default()
    };
    start_relay_on(&y, prebound).await
}

/// Agent `premise-01` for `db` = `target` on the relays `urls` (first one first).
async fn agent_on(urls: &[SocketAddr], target: SocketAddr) -> AgentHandle {
    let mut y = agent_yaml(urls[0], "v2", &[("db", target)]);
    if urls.len() > 1 {
        let first = format!("  url: ws://{}/tunnel\n", urls[0]);
        let rest: Vec<String> = urls[1..]
            .iter()
            .map(|a| format!("'ws://{a}/tunnel'"))
            .collect();
        y = y.replace(&first, &format!("{first}  urls: [{}]\n", rest.join(", ")));
        assert!(y.contains("urls:"), "{y}");
    }
    let agent = start_agent(&y).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    agent
}

/// Waits until `relay` sees `premise-01` for `db` on `owner` with its current claim there.
async fn sees_owner(relay: &RelayHandle, owner: &RelayHandle, owner_id: &str) {
    wait_for(
        &format!("the agent on {owner_id} in the view"),
        DEADLINE,
        || {
            let Some(e) = owner.claim_epoch("premise-01").filter(|e| *e > 0) else {
                return false;
            };
            relay.remote_agents("db") == [(owner_id.to_owned(), "premise-01".to_owned(), e)]
        },
    )
    .await;
}

/// `len` random bytes each way through an echo target behind `addr`: byte-exact both ways.
async fn echo_exact(addr: SocketAddr, seed: u64, len: usize) {
    let mut client = net::connect(addr).await;
    let (mut r, mut w) = client.split();
    let (sent, (got_len, got)) = within("the echo through the relays", DEADLINE * 3, async {
        tokio::join!(send_random(&mut w, seed, len), recv_hash(&mut r))
    })
    .await;
    assert_eq!(got_len, len, "every byte came back");
    assert_eq!(got, sent, "the bytes came back unchanged");
}

async fn readyz(relay: &RelayHandle) -> (u16, Value) {
    let (status, text) = get(relay.tunnel_addr(), "/readyz").await;
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_b_reaches_the_agent_on_a_through_the_registry() {
    let echo = target::echo().await;
    let dir = MemoryDirectory::new();
    let a = ha_relay(
        "relay-a",
        "active",
        "redis://unused.invalid:6379",
        Some(&dir),
    )
    .await;
    let b = ha_relay(
        "relay-b",
        "active",
        "redis://unused.invalid:6379",
        Some(&dir),
    )
    .await;
    let _agent = agent_on(&[a.tunnel_addr()], echo.addr).await;
    sees_owner(&b, &a, "relay-a").await;
    assert_eq!(b.agents_for("db"), 0, "no agent on B itself");
    wait_for("B's link to A up", DEADLINE, || b.mesh_links_up() == 1).await;

    echo_exact(listener(&b, "db"), 1, ONE_MIB).await;
    assert!(
        nowconnect_testkit::metrics::value(
            &b.metrics_text(),
            "nowconnect_mesh_frames_total{dir=\"tx\",type=\"forward\"}"
        ) >= 1,
        "the stream went over the mesh"
    );
}

/// What a short echo attempt through `addr` saw within `bound`.
#[derive(Debug, PartialEq)]
enum Attempt {
    Echoed,
    Closed,
    Hung,
}

async fn try_echo(addr: SocketAddr, bound: Duration) -> Attempt {
    let attempt = async {
        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
            return Attempt::Closed;
        };
        if c.write_all(b"ping").await.is_err() {
            return Attempt::Closed;
        }
        let mut back = [0u8; 4];
        match c.read_exact(&mut back).await {
            Ok(_) if &back == b"ping" => Attempt::Echoed,
            Ok(_) => panic!("wrong bytes came back: {back:?}"),
            Err(_) => Attempt::Closed,
        }
    };
    tokio::time::timeout(bound, attempt)
        .await
        .unwrap_or(Attempt::Hung)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_cross_relay_opens_use_the_last_owner_or_fail_fast_and_redis_back_works() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let url = redis.url();
    let echo = target::echo().await;
    let a = ha_relay("relay-a", "active", &url, None).await;
    let b = ha_relay("relay-b", "active", &url, None).await;
    let _agent = agent_on(&[a.tunnel_addr()], echo.addr).await;
    sees_owner(&b, &a, "relay-a").await;
    let e1 = a.claim_epoch("premise-01").expect("claimed on A");
    wait_for("B's link to A up", DEADLINE, || b.mesh_links_up() == 1).await;
    echo_exact(listener(&b, "db"), 2, 64 * 1024).await;

    redis.stop().await;
    wait_for_async("B's /readyz says degraded", DEADLINE, || async {
        readyz(&b).await.1["status"] == "degraded"
    })
    .await;
    let (status, body) = readyz(&b).await;
    assert_eq!(status, 200, "degraded is still ready: {body}");
    assert_eq!(body["registry"], "down", "{body}");
    echo_exact(listener(&a, "db"), 3, 64 * 1024).await;
    for _ in 0..5 {
        let got = try_echo(listener(&b, "db"), Duration::from_secs(1)).await;
        assert_ne!(
            got,
            Attempt::Hung,
            "a cross-relay open without Redis never hangs"
        );
    }

    redis.start_again().await;
    wait_for("B sees A's agent claimed anew", DEADLINE, || {
        b.remote_agents("db")
            .first()
            .is_some_and(|(r, agent, e)| r == "relay-a" && agent == "premise-01" && *e > e1)
    })
    .await;
    wait_for_async("a cross-relay echo works again", DEADLINE, || async {
        try_echo(listener(&b, "db"), Duration::from_secs(1)).await == Attempt::Echoed
    })
    .await;
    echo_exact(listener(&b, "db"), 4, ONE_MIB).await;
    wait_for_async("B's /readyz is ready again", DEADLINE, || async {
        readyz(&b).await.1["status"] == "ready"
    })
    .await;
}
