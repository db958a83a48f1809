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
    agent_as("premise-01", urls, target).await
}

/// [`agent_on`] with the agent_id `id`.
async fn agent_as(id: &str, urls: &[SocketAddr], target: SocketAddr) -> AgentHandle {
    let mut y = agent_yaml(urls[0], "v2", &[("db", target)])
        .replace("agent_id: premise-01", &format!("agent_id: {id}"));
    assert!(y.contains(&format!("agent_id: {id}")), "{y}");
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

/// A target for incarnation `tag`: writes `tag` (4 bytes, big endian), then echoes.
async fn tagged_echo(tag: u32) -> target::Target {
    target::serve(move |mut s| async move {
        if s.write_all(&tag.to_be_bytes()).await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// One stream through `addr` with `payload`: the tag of the incarnation that served it (the
/// echo byte-exact), `Ok(None)` when refused (closed), `Err` when nothing happened within
/// `bound`.
async fn tagged_stream(
    addr: SocketAddr,
    payload: &[u8],
    bound: Duration,
) -> Result<Option<u32>, ()> {
    let attempt = async {
        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
            return None;
        };
        let mut tag = [0u8; 4];
        c.read_exact(&mut tag).await.ok()?;
        c.write_all(payload).await.ok()?;
        let mut back = vec![0u8; payload.len()];
        c.read_exact(&mut back).await.ok()?;
        assert!(back == payload, "a stream that succeeds is byte-exact");
        Some(u32::from_be_bytes(tag))
    };
    tokio::time::timeout(bound, attempt).await.map_err(|_| ())
}

/// Which incarnations of the agent were claimed / started so far (the flapper writes it).
#[derive(Debug, Default)]
struct Flaps {
    /// The newest incarnation whose claim is the directory's newest; older ones are gone.
    claimed: u32,
    /// The newest incarnation started.
    started: u32,
    /// The newest incarnation that served a stream.
    served: u32,
    done: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flapping_between_two_relays_never_gets_a_stream_on_the_stale_owner() {
    const FLAPS: u32 = 50;
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
    let relays = [(&a, "relay-a"), (&b, "relay-b")];
    let mut targets = Vec::new();
    for k in 0..=FLAPS {
        targets.push(tagged_echo(k).await);
    }
    let flaps = std::sync::Arc::new(std::sync::Mutex::new(Flaps::default()));

    // Incarnation 0 on A, claimed, before the client loop starts.
    let mut agent = agent_on(&[a.tunnel_addr(), b.tunnel_addr()], targets[0].addr).await;
    let mut epochs = vec![wait_claim(&a, "relay-a", &dir, 0).await];
    sees_owner(&b, &a, "relay-a").await;
    wait_for("B's link to A up", DEADLINE, || b.mesh_links_up() == 1).await;

    let b_db = listener(&b, "db");
    let clients = {
        let flaps = flaps.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            // Bounded: at most 50000 streams, and the test's deadline below.
            for i in 0..50000u64 {
                let lo = {
                    let f = flaps.lock().expect("lock");
                    if f.done {
                        break;
                    }
                    f.claimed
                };
                let payload = nowconnect_testkit::io::random_bytes(i, 8 * 1024);
                let got = tagged_stream(b_db, &payload, Duration::from_secs(5)).await;
                let hi = {
                    let mut f = flaps.lock().expect("lock");
                    if let Ok(Some(tag)) = got {
                        f.served = f.served.max(tag);
                    }
                    f.started
                };
                seen.push((lo, hi, got));
            }
            seen
        })
    };

    for k in 1..=FLAPS {
        // Kill the incarnation (as kill -9) and wait until its relay has let it go.
        let (old, _) = relays[((k - 1) % 2) as usize];
        drop(agent);
        wait_for("the old tunnel is gone", DEADLINE, || {
            old.agents_for("db") == 0
        })
        .await;
        // The next one lists the other relay first.
        let (new, new_id) = relays[(k % 2) as usize];
        let (old_addr, new_addr) = (old.tunnel_addr(), new.tunnel_addr());
        flaps.lock().expect("lock").started = k;
        agent = agent_on(&[new_addr, old_addr], targets[k as usize].addr).await;
        let e = wait_claim(new, new_id, &dir, *epochs.last().expect("one")).await;
        epochs.push(e);
        flaps.lock().expect("lock").claimed = k;
        // Each incarnation serves B's clients (over the mesh when it is on A) before it moves.
        wait_for(
            &format!("incarnation {k} serves a stream"),
            DEADLINE,
            || flaps.lock().expect("lock").served == k,
        )
        .await;
    }
    flaps.lock().expect("lock").done = true;
    let seen = within("the client loop ends", DEADLINE * 2, clients)
        .await
        .expect("client loop");
    drop(agent);

    let mut served = [0usize; 2];
    let mut refused = 0;
    for (lo, hi, got) in &seen {
        match got {
            Err(()) => panic!("a stream opened on B hung (incarnations {lo}..={hi})"),
            Ok(None) => refused += 1,
            Ok(Some(tag)) => {
                assert!(
                    (*lo..=*hi).contains(tag),
                    "stream served by incarnation {tag}, but {lo} held the newest claim when \
                     it was opened (and {hi} was the newest started when it was served)"
                );
                served[(*tag % 2) as usize] += 1;
            }
        }
    }
    assert!(
        served[0] > 0 && served[1] > 0,
        "streams served on A over the mesh ({}) and locally on B ({}); {refused} refused",
        served[0],
        served[1]
    );
}

/// Waits until `relay` (`relay_id`) holds the agent with a claim above `prev` that is the
/// directory's newest; returns that epoch.
async fn wait_claim(relay: &RelayHandle, relay_id: &str, dir: &MemoryDirectory, prev: u64) -> u64 {
    wait_for(&format!("a new claim on {relay_id}"), DEADLINE, || {
        relay.agents_for("db") == 1
            && relay.claim_epoch("premise-01").is_some_and(|e| {
                e > prev && dir.owner_of("premise-01") == Some((relay_id.to_owned(), e))
            })
    })
    .await;
    relay.claim_epoch("premise-01").expect("claimed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_two_relays_serve_clients_of_both_and_a_killed_one_is_covered_at_once() {
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
    let (tx, ty) = (tagged_echo(1).await, tagged_echo(2).await);
    let x = agent_as("premise-x", &[a.tunnel_addr()], tx.addr).await;
    let _y = agent_as("premise-y", &[b.tunnel_addr()], ty.addr).await;
    let claimed = |relay: &RelayHandle, agent: &str| relay.claim_epoch(agent).filter(|e| *e > 0);
    wait_for("A and B each see the other's agent", DEADLINE, || {
        let (Some(ex), Some(ey)) = (claimed(&a, "premise-x"), claimed(&b, "premise-y")) else {
            return false;
        };
        a.remote_agents("db") == [("relay-b".to_owned(), "premise-y".to_owned(), ey)]
            && b.remote_agents("db") == [("relay-a".to_owned(), "premise-x".to_owned(), ex)]
    })
    .await;
    wait_for("mesh links up both ways", DEADLINE, || {
        a.mesh_links_up() == 1 && b.mesh_links_up() == 1
    })
    .await;
    let bound = Duration::from_secs(5);
    let (a_db, b_db) = (listener(&a, "db"), listener(&b, "db"));
    for i in 0..10u64 {
        let payload = nowconnect_testkit::io::random_bytes(i, 4 * 1024);
        let on_a = tagged_stream(a_db, &payload, bound).await;
        assert_eq!(on_a, Ok(Some(1)), "a client on A goes to the agent on A");
        let on_b = tagged_stream(b_db, &payload, bound).await;
        assert_eq!(on_b, Ok(Some(2)), "a client on B goes to the agent on B");
    }

    // X dies (as kill -9). Once A has let its tunnel go, every new client on A goes to Y.
    drop(x);
    wait_for("A has no local agent", DEADLINE, || a.agents_for("db") == 0).await;
    for i in 0..20u64 {
        let payload = nowconnect_testkit::io::random_bytes(100 + i, 64 * 1024);
        let on_a = tagged_stream(a_db, &payload, bound).await;
        assert_eq!(
            on_a,
            Ok(Some(2)),
            "client {i} on A after the kill goes to B's agent"
        );
    }
}
