//! Registry unit tests: picking, superseding, the caps and each duplicate policy.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use tokio_util::sync::CancellationToken;

use super::*;

/// A tunnel of `agent_id` from `127.0.0.<host>` serving `connectors`.
fn agent(
    tunnel_id: u64,
    agent_id: &str,
    host: u8,
    connectors: &[&str],
) -> (AgentHandle, mpsc::UnboundedReceiver<Box<NewConn>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let active = Arc::new(AtomicUsize::new(0));
    let info = Arc::new(TunnelInfo {
        tunnel_id,
        agent_id: Arc::from(agent_id),
        connectors: connectors.iter().map(|c| (*c).to_owned()).collect(),
        peer: SocketAddr::from(([127, 0, 0, host], 40_000 + tunnel_id as u16)),
        since_ms: 0,
        protocol: "nowconnect.v2",
        agent_version: String::new(),
        active: active.clone(),
        closed_c2a: AtomicU64::new(0),
        closed_a2c: AtomicU64::new(0),
        kick: CancellationToken::new(),
        epoch: Default::default(),
        targets: Default::default(),
    });
    (
        AgentHandle {
            tunnel_id,
            agent_id: Arc::from(agent_id),
            conns: tx,
            active,
            info,
            liveness: Arc::new(Liveness::new(std::time::Duration::from_secs(20))),
        },
        rx,
    )
}

fn registry(policy: DuplicatePolicy) -> Registry {
    Registry::new(Rules {
        duplicates: policy,
        ..Rules::default()
    })
}

fn serving(r: &Registry, connector: &str) -> Option<u64> {
    r.pick(connector, None).map(|a| a.tunnel_id)
}

#[test]
fn spreads_across_agents_and_forgets_departed_ones() {
    let r = Registry::default();
    let (a, _ra) = agent(1, "a", 1, &["ad"]);
    let (b, _rb) = agent(2, "b", 1, &["ad", "db"]);
    assert!(r.register(&a, None).outcome.is_ok());
    assert!(r.register(&b, None).outcome.is_ok());
    let mut seen = [0usize; 3];
    for _ in 0..10 {
        let p = r.pick("ad", None).expect("agent");
        seen[p.tunnel_id as usize] += 1;
    }
    assert_eq!(seen[1], 5, "round-robin when loads are equal");
    assert_eq!(seen[2], 5);
    // Least streams wins over round-robin.
    a.active.store(3, Ordering::Relaxed);
    for _ in 0..4 {
        assert_eq!(serving(&r, "ad"), Some(2));
    }
    assert_eq!(r.unregister(2), None, "b had no other tunnel");
    assert_eq!(serving(&r, "ad"), Some(1));
    assert!(r.pick("db", None).is_none(), "b went away: db has no agent");
    assert!(r.pick("nope", None).is_none());
}

#[test]
fn a_reconnect_from_the_same_address_supersedes_under_every_policy() {
    for policy in [
        DuplicatePolicy::NewestWins,
        DuplicatePolicy::OldestWins,
        DuplicatePolicy::Refuse,
    ] {
        let r = registry(policy);
        let (old, _r1) = agent(1, "premise-01", 1, &["ad"]);
        let (new, _r2) = agent(2, "premise-01", 1, &["ad"]);
        r.register(&old, None);
        let reg = r.register(&new, None);
        assert_eq!(
            reg.outcome,
            Ok(Placed::Serving {
                superseded: Some(1)
            }),
            "{policy:?}"
        );
        assert!(reg.elsewhere.is_empty(), "{policy:?}");
        for _ in 0..3 {
            assert_eq!(serving(&r, "ad"), Some(2), "{policy:?}");
        }
        // The old tunnel ending later must not remove the new one.
        assert_eq!(r.unregister(1), None);
        assert_eq!(serving(&r, "ad"), Some(2));
        assert_eq!(r.snapshot(), vec![("ad".to_owned(), 1)]);
        let rows = r.rows();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].serving && !rows[0].duplicate);
    }
}

#[test]
fn newest_wins_serves_the_newcomer_and_falls_back_to_the_older_tunnel() {
    let r = registry(DuplicatePolicy::NewestWins);
    let (a, _r1) = agent(1, "premise-01", 1, &["ad"]);
    let (b, _r2) = agent(2, "premise-01", 2, &["ad"]);
    r.register(&a, None);
    let reg = r.register(&b, None);
    assert_eq!(reg.elsewhere, vec![(1, a.info.peer)]);
    assert_eq!(
        reg.outcome,
        Ok(Placed::Serving {
            superseded: Some(1)
        })
    );
    assert_eq!(serving(&r, "ad"), Some(2));
    let rows = r.rows();
    assert_eq!(
        rows.iter()
            .map(|r| (r.info.tunnel_id, r.serving, r.duplicate))
            .collect::<Vec<_>>(),
        vec![(1, false, true), (2, true, true)]
    );
    // The newest ending gives new streams back to the one still connected.
    assert_eq!(r.unregister(2), Some(1));
    assert_eq!(serving(&r, "ad"), Some(1));
    assert!(!r.rows()[0].duplicate);
}

#[test]
fn oldest_wins_keeps_the_newcomer_on_standby_until_the_older_ends() {
    let r = registry(DuplicatePolicy::OldestWins);
    let (a, _r1) = agent(1, "premise-01", 1, &["ad"]);
    let (b, _r2) = agent(2, "premise-01", 2, &["ad"]);
    let (c, _r3) = agent(3, "premise-01", 3, &["ad"]);
    r.register(&a, None);
    assert_eq!(
        r.register(&b, None).outcome,
        Ok(Placed::Standby { behind: 1 })
    );
    assert_eq!(
        r.register(&c, None).outcome,
        Ok(Placed::Standby { behind: 1 })
    );
    for _ in 0..5 {
        assert_eq!(serving(&r, "ad"), Some(1));
    }
    assert_eq!(r.unregister(3), None, "a standby ending changes nothing");
    assert_eq!(r.unregister(1), Some(2), "the oldest remaining serves");
    assert_eq!(serving(&r, "ad"), Some(2));
}

#[test]
fn refuse_turns_away_another_address_but_not_a_reconnect() {
    let r = registry(DuplicatePolicy::Refuse);
    let (a, _r1) = agent(1, "premise-01", 1, &["ad"]);
    let (b, _r2) = agent(2, "premise-01", 2, &["ad"]);
    r.register(&a, None);
    let reg = r.register(&b, None);
    assert_eq!(reg.outcome, Err(Refused::Duplicate));
    assert_eq!(reg.elsewhere, vec![(1, a.info.peer)]);
    assert_eq!(r.rows().len(), 1, "the refused tunnel is not registered");
    assert_eq!(r.unregister(2), None);
    assert_eq!(serving(&r, "ad"), Some(1));
    // Once the first is gone, the other address may connect.
    r.unregister(1);
    assert!(r.register(&b, None).outcome.is_ok());
}

#[test]
fn caps_per_agent_and_per_token() {
    let r = Registry::new(Rules {
        max_per_agent: 3,
        max_per_jti: 2,
        duplicates: DuplicatePolicy::NewestWins,
    });
    let handles: Vec<_> = (1..=5)
        .map(|i| agent(i, "premise-01", 1, &["ad"]))
        .collect();
    assert!(r.register(&handles[0].0, Some("j1")).outcome.is_ok());
    assert!(r.register(&handles[1].0, Some("j1")).outcome.is_ok());
    assert_eq!(
        r.register(&handles[2].0, Some("j1")).outcome,
        Err(Refused::TokenFull { limit: 2 })
    );
    // Another token of the same agent (a refresh) still fits, up to the agent's cap.
    assert!(r.register(&handles[2].0, Some("j2")).outcome.is_ok());
    assert_eq!(
        r.register(&handles[3].0, None).outcome,
        Err(Refused::AgentFull { limit: 3 })
    );
    // Another agent_id is not affected.
    let (other, _ro) = agent(9, "premise-02", 1, &["ad"]);
    assert!(r.register(&other, Some("j1")).outcome.is_ok());
    // A tunnel ending makes room again.
    r.unregister(1);
    assert!(r.register(&handles[4].0, Some("j1")).outcome.is_ok());
    assert_eq!(r.rows().len(), 4);
}

#[test]
fn picking_prefers_tunnels_that_look_alive_and_falls_back_when_none_does() {
    let r = Registry::default();
    let (a, _ra) = agent(1, "a", 1, &["ad"]);
    let (b, _rb) = agent(2, "b", 2, &["ad"]);
    assert!(r.register(&a, None).outcome.is_ok());
    assert!(r.register(&b, None).outcome.is_ok());
    // a's writer is stuck: b gets every stream, even with more streams open.
    a.liveness.set_write_slow(true);
    b.active.store(5, Ordering::Relaxed);
    for _ in 0..4 {
        assert_eq!(serving(&r, "ad"), Some(2));
    }
    // Both look bad: least streams again (a refused client is a sure failure).
    b.liveness.set_write_slow(true);
    for _ in 0..4 {
        assert_eq!(serving(&r, "ad"), Some(1));
    }
    // a recovers.
    a.liveness.set_write_slow(false);
    a.active.store(9, Ordering::Relaxed);
    assert_eq!(serving(&r, "ad"), Some(1));
}

#[test]
fn pick_skips_the_excepted_agent() {
    let r = Registry::default();
    let (a, _ra) = agent(1, "a", 1, &["ad"]);
    let (b, _rb) = agent(2, "b", 2, &["ad"]);
    assert!(r.register(&a, None).outcome.is_ok());
    assert!(r.pick("ad", Some("a")).is_none(), "only a serves");
    assert!(r.register(&b, None).outcome.is_ok());
    b.active.store(7, Ordering::Relaxed);
    b.liveness.set_write_slow(true);
    for _ in 0..3 {
        let p = r.pick("ad", Some("a")).map(|h| h.tunnel_id);
        assert_eq!(p, Some(2), "never a, even when b is worse");
    }
    assert_eq!(r.pick("ad", None).map(|h| h.tunnel_id), Some(1));
}
