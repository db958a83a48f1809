//! The Redis directory against a real `redis-server` (testkit starts it on a unix socket).

use super::*;
use nowconnect_testkit::redis::Redis;
use nowconnect_testkit::wait::{wait_for_async, DEADLINE};

const TTL: Duration = Duration::from_secs(10);

fn req(agent: &str, relay: &str, kind: ClaimKind, ttl: Duration) -> ClaimReq {
    ClaimReq {
        agent_id: agent.into(),
        relay_id: relay.into(),
        connectors: vec!["addomain".into(), "db".into()],
        ttl,
        kind,
    }
}

fn relay(id: &str) -> RelayEntry {
    RelayEntry {
        replica_id: id.into(),
        mesh_url: format!("wss://{id}.test:8443/mesh"),
    }
}

#[tokio::test]
async fn claims_fence_across_relays_and_survive_a_redis_restarted_empty() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let d = RedisDirectory::new(&redis.url()).expect("url");
    let take = ClaimKind::Take { floor: 0 };
    let a1 = d.claim(&req("p1", "a", take, TTL)).await.expect("up");
    let b2 = d.claim(&req("p1", "b", take, TTL)).await.expect("up");
    assert_eq!((a1, b2), (Some(1), Some(2)), "one INCR per claim");
    assert!(
        !d.refresh("p1", "a", 1, TTL).await.expect("up"),
        "superseded"
    );
    assert!(d.refresh("p1", "b", 2, TTL).await.expect("up"));
    assert!(
        !d.release("p1", "a", 1).await.expect("up"),
        "not a's to release"
    );
    let keep_a = ClaimKind::Keep { held: 1 };
    assert_eq!(
        d.claim(&req("p1", "a", keep_a, TTL)).await.expect("up"),
        None
    );
    let l = d.load().await.expect("up");
    assert_eq!(l.owners.len(), 1);
    assert_eq!((l.owners[0].relay_id.as_str(), l.owners[0].epoch), ("b", 2));
    assert_eq!(l.owners[0].connectors, ["addomain", "db"]);
    assert_eq!(l.epochs, [("p1".to_owned(), 2)]);
    // b keeps its own claim without a new epoch.
    let keep_b = ClaimKind::Keep { held: 2 };
    assert_eq!(
        d.claim(&req("p1", "b", keep_b, TTL)).await.expect("up"),
        Some(2)
    );
    assert!(d.release("p1", "b", 2).await.expect("up"));
    // Nobody holds p1: a's tunnel still serves, so it claims again, with a new epoch.
    assert_eq!(
        d.claim(&req("p1", "a", keep_a, TTL)).await.expect("up"),
        Some(3)
    );

    redis.stop().await;
    assert!(d.load().await.is_err(), "Redis is down");
    redis.start_again().await;
    // Empty again: the refresh fails, the claim comes back above what the relay held.
    wait_for_async("Redis answers again", DEADLINE, || async {
        d.load().await.is_ok()
    })
    .await;
    assert!(!d.refresh("p1", "a", 3, TTL).await.expect("up"));
    let keep = ClaimKind::Keep { held: 3 };
    assert_eq!(
        d.claim(&req("p1", "a", keep, TTL)).await.expect("up"),
        Some(4)
    );
}

#[tokio::test]
async fn entries_expire_without_heartbeat_and_the_sweeper_clears_dead_relays() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let d = RedisDirectory::new(&redis.url()).expect("url");
    let short = Duration::from_millis(300);
    let take = ClaimKind::Take { floor: 0 };
    // "ghost" announced itself briefly and then died; its claim's TTL is long.
    d.announce(&relay("ghost"), short).await.expect("up");
    d.announce(&relay("live"), TTL).await.expect("up");
    d.claim(&req("p-ghost", "ghost", take, TTL))
        .await
        .expect("up");
    d.claim(&req("p-live", "live", take, TTL))
        .await
        .expect("up");
    // An agent whose claim is never refreshed.
    d.claim(&req("p-stale", "live", take, short))
        .await
        .expect("up");
    let l = d.load().await.expect("up");
    assert_eq!(l.relays.len(), 2);
    assert_eq!(l.owners.len(), 3);
    wait_for_async(
        "ghost's entry and p-stale's claim expire",
        DEADLINE,
        || async {
            let l = d.load().await.expect("up");
            l.relays.len() == 1 && l.owners.len() == 2
        },
    )
    .await;
    let l = d.load().await.expect("up");
    assert_eq!(l.relays, [relay("live")]);
    assert!(
        l.epochs.iter().any(|(a, _)| a == "p-stale"),
        "still indexed"
    );
    let cleared = d.sweep().await.expect("up");
    // ghost in the relay index, p-stale in the agent index, p-ghost's owner entry.
    assert_eq!(cleared, 3);
    let l = d.load().await.expect("up");
    let owners: Vec<&str> = l.owners.iter().map(|o| o.agent_id.as_str()).collect();
    assert_eq!(owners, ["p-live"], "a dead relay's claims are gone");
    assert!(!l.epochs.iter().any(|(a, _)| a == "p-stale"));
    assert_eq!(d.sweep().await.expect("up"), 0, "nothing left to clear");
}

#[test]
fn sentinel_and_cluster_urls_name_their_hosts() {
    assert!(RedisDirectory::new("redis+sentinel://s1:26379,s2:26379/mymaster").is_ok());
    assert!(RedisDirectory::new("redis+sentinel://s1:26379").is_err());
    assert!(RedisDirectory::new("redis+cluster://n1:6379,n2:6379").is_ok());
    assert!(RedisDirectory::new("redis+cluster://").is_err());
    let (hosts, master) = split_hosts(":pw@s1:26379,s2:26379/m");
    assert_eq!(hosts, [":pw@s1:26379", ":pw@s2:26379"]);
    assert_eq!(master, "m");
}
