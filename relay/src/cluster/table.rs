//! The directory's rules as a plain data structure with an explicit clock (no I/O): what
//! [`super::memory::MemoryDirectory`] runs and what the Redis scripts in [`super::redis`]
//! mirror, key for key. The property test below drives it with random claims, refreshes,
//! releases and clock jumps across relays.

use std::collections::HashMap;

use super::directory::{ClaimKind, ClaimReq, Listing, Owner, RelayEntry};

#[derive(Debug, Clone)]
struct Entry {
    owner: Owner,
    /// Clock value (ms) at which the entry is gone unless refreshed.
    expires: u64,
}

/// The directory's state; `now` is milliseconds on any monotonic clock.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Newest epoch per agent; never removed, never lowered.
    epochs: HashMap<String, u64>,
    owners: HashMap<String, Entry>,
    /// replica_id -> (entry, expires).
    relays: HashMap<String, (RelayEntry, u64)>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Table {
    fn live_owner(&self, agent: &str, now: u64) -> Option<&Owner> {
        self.owners
            .get(agent)
            .filter(|e| e.expires > now)
            .map(|e| &e.owner)
    }

    /// See [`super::directory::Directory::claim`].
    pub fn claim(&mut self, req: &ClaimReq, now: u64) -> Option<u64> {
        let floor = match req.kind {
            ClaimKind::Take { floor } => floor,
            ClaimKind::Keep { held } => {
                if let Some(o) = self.live_owner(&req.agent_id, now) {
                    if o.relay_id == req.relay_id && o.epoch == held {
                        if let Some(e) = self.owners.get_mut(&req.agent_id) {
                            e.expires = now.saturating_add(ms(req.ttl));
                        }
                        return Some(held);
                    }
                    return None;
                }
                held
            }
        };
        let cur = self.epochs.get(&req.agent_id).copied().unwrap_or(0);
        let epoch = cur.max(floor).saturating_add(1);
        self.epochs.insert(req.agent_id.clone(), epoch);
        self.owners.insert(
            req.agent_id.clone(),
            Entry {
                owner: Owner {
                    agent_id: req.agent_id.clone(),
                    relay_id: req.relay_id.clone(),
                    epoch,
                    connectors: req.connectors.clone(),
                },
                expires: now.saturating_add(ms(req.ttl)),
            },
        );
        Some(epoch)
    }

    fn holds(&self, agent: &str, relay: &str, epoch: u64, now: u64) -> bool {
        self.live_owner(agent, now)
            .is_some_and(|o| o.relay_id == relay && o.epoch == epoch)
    }

    pub fn refresh(
        &mut self,
        agent: &str,
        relay: &str,
        epoch: u64,
        ttl: std::time::Duration,
        now: u64,
    ) -> bool {
        if !self.holds(agent, relay, epoch, now) {
            return false;
        }
        if let Some(e) = self.owners.get_mut(agent) {
            e.expires = now.saturating_add(ms(ttl));
        }
        true
    }

    pub fn release(&mut self, agent: &str, relay: &str, epoch: u64, now: u64) -> bool {
        let held = self.holds(agent, relay, epoch, now);
        if held {
            self.owners.remove(agent);
        }
        held
    }

    pub fn announce(&mut self, relay: &RelayEntry, ttl: std::time::Duration, now: u64) {
        self.relays.insert(
            relay.replica_id.clone(),
            (relay.clone(), now.saturating_add(ms(ttl))),
        );
    }

    pub fn withdraw(&mut self, relay: &str) {
        self.relays.remove(relay);
    }

    pub fn load(&self, now: u64) -> Listing {
        let mut owners: Vec<Owner> = self
            .owners
            .values()
            .filter(|e| e.expires > now)
            .map(|e| e.owner.clone())
            .collect();
        owners.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut epochs: Vec<(String, u64)> =
            self.epochs.iter().map(|(a, e)| (a.clone(), *e)).collect();
        epochs.sort();
        let mut relays: Vec<RelayEntry> = self
            .relays
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(r, _)| r.clone())
            .collect();
        relays.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        Listing {
            owners,
            epochs,
            relays,
        }
    }

    /// Drops expired relays and owners, and owners naming a relay that is not live.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.relays.len() + self.owners.len();
        self.relays.retain(|_, (_, exp)| *exp > now);
        let relays = &self.relays;
        self.owners
            .retain(|_, e| e.expires > now && relays.contains_key(&e.owner.relay_id));
        before - self.relays.len() - self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const TTL: Duration = Duration::from_millis(3000);
    const RELAYS: [&str; 3] = ["a", "b", "c"];
    const AGENTS: [&str; 2] = ["p1", "p2"];

    fn req(agent: &str, relay: &str, kind: ClaimKind) -> ClaimReq {
        ClaimReq {
            agent_id: agent.into(),
            relay_id: relay.into(),
            connectors: vec!["db".into()],
            ttl: TTL,
            kind,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take(usize, usize),
        Keep(usize, usize),
        Refresh(usize, usize),
        Release(usize, usize),
        Announce(usize),
        Advance(u64),
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        let r = 0..RELAYS.len();
        let a = 0..AGENTS.len();
        prop_oneof![
            (r.clone(), a.clone()).prop_map(|(r, a)| Op::Take(r, a)),
            (r.clone(), a.clone()).prop_map(|(r, a)| Op::Keep(r, a)),
            (r.clone(), a.clone()).prop_map(|(r, a)| Op::Refresh(r, a)),
            (r.clone(), a.clone()).prop_map(|(r, a)| Op::Release(r, a)),
            r.prop_map(Op::Announce),
            (0u64..4000).prop_map(Op::Advance),
            Just(Op::Sweep),
        ]
    }

    proptest! {
        /// At most one relay holds an agent's newest epoch; epochs strictly increase; a claim
        /// that was released, superseded or expired never becomes live again.
        #[test]
        fn claims_fence_and_dead_claims_stay_dead(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = Table::default();
            let mut now = 0u64;
            // What each relay believes it holds: (relay, agent) -> epoch.
            let mut held: HashMap<(usize, usize), u64> = HashMap::new();
            let mut dead: Vec<(String, String, u64)> = Vec::new();
            let mut last_epoch: HashMap<String, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Take(r, a) | Op::Keep(r, a) => {
                        let kind = match (&op, held.get(&(r, a))) {
                            (Op::Keep(..), Some(h)) => ClaimKind::Keep { held: *h },
                            (Op::Keep(..), None) => continue,
                            _ => ClaimKind::Take { floor: 0 },
                        };
                        let before = t.load(now).owners.into_iter().find(|o| o.agent_id == AGENTS[a]);
                        if let Some(e) = t.claim(&req(AGENTS[a], RELAYS[r], kind), now) {
                            let prev = last_epoch.get(AGENTS[a]).copied().unwrap_or(0);
                            if Some(e) != held.get(&(r, a)).copied() {
                                prop_assert!(e > prev, "epoch {e} after {prev}");
                            }
                            last_epoch.insert(AGENTS[a].into(), e.max(prev));
                            if let Some(b) = before.filter(|b| b.epoch != e) {
                                dead.push((b.agent_id, b.relay_id, b.epoch));
                            }
                            if let Some(old) = held.insert((r, a), e).filter(|o| *o != e) {
                                dead.push((AGENTS[a].into(), RELAYS[r].into(), old));
                            }
                        }
                    }
                    Op::Refresh(r, a) => {
                        if let Some(e) = held.get(&(r, a)) {
                            if !t.refresh(AGENTS[a], RELAYS[r], *e, TTL, now) {
                                dead.push((AGENTS[a].into(), RELAYS[r].into(), *e));
                                held.remove(&(r, a));
                            }
                        }
                    }
                    Op::Release(r, a) => {
                        if let Some(e) = held.remove(&(r, a)) {
                            t.release(AGENTS[a], RELAYS[r], e, now);
                            dead.push((AGENTS[a].into(), RELAYS[r].into(), e));
                        }
                    }
                    Op::Announce(r) => t.announce(
                        &RelayEntry { replica_id: RELAYS[r].into(), mesh_url: String::new() },
                        TTL,
                        now,
                    ),
                    Op::Advance(d) => {
                        // Whatever expires now is dead for good.
                        for o in t.load(now).owners {
                            if t.load(now + d).owners.iter().all(|n| n != &o) {
                                dead.push((o.agent_id, o.relay_id, o.epoch));
                            }
                        }
                        now += d;
                    }
                    Op::Sweep => {
                        let live = t.load(now).owners;
                        t.sweep(now);
                        for o in live {
                            if !t.load(now).owners.contains(&o) {
                                dead.push((o.agent_id, o.relay_id, o.epoch));
                            }
                        }
                    }
                }
                let l = t.load(now);
                for agent in AGENTS {
                    let owners: Vec<_> = l.owners.iter().filter(|o| o.agent_id == agent).collect();
                    prop_assert!(owners.len() <= 1);
                    let newest = l.epochs.iter().find(|(a, _)| a == agent).map(|(_, e)| *e);
                    if let Some(o) = owners.first() {
                        prop_assert_eq!(Some(o.epoch), newest, "the owner holds the newest epoch");
                        prop_assert!(
                            !dead.iter().any(|(a, r, e)| a == agent && r == &o.relay_id && *e == o.epoch),
                            "a dead claim came back: {:?}", o
                        );
                    }
                    // A dead claim can no longer be refreshed or released.
                    for (a, r, e) in dead.iter().filter(|(a, ..)| a == agent) {
                        prop_assert!(!t.holds(a, r, *e, now));
                    }
                }
            }
        }
    }

    #[test]
    fn keep_refuses_while_another_relay_holds_and_takes_a_new_epoch_after() {
        let mut t = Table::default();
        let ea = t
            .claim(&req("p1", "a", ClaimKind::Take { floor: 0 }), 0)
            .expect("claimed");
        let eb = t
            .claim(&req("p1", "b", ClaimKind::Take { floor: 0 }), 10)
            .expect("claimed");
        assert!(eb > ea);
        assert_eq!(
            t.claim(&req("p1", "a", ClaimKind::Keep { held: ea }), 20),
            None
        );
        assert!(!t.refresh("p1", "a", ea, TTL, 20));
        // b's entry expires: a's tunnel still serves, so it may claim again, with a new epoch.
        let again = t
            .claim(&req("p1", "a", ClaimKind::Keep { held: ea }), 10 + 3000)
            .expect("claimed");
        assert!(again > eb);
        // A directory that lost everything still never reuses an epoch (floor).
        let mut fresh = Table::default();
        let e = fresh
            .claim(&req("p1", "a", ClaimKind::Keep { held: again }), 0)
            .expect("claimed");
        assert!(e > again);
    }
}
