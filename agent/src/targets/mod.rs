//! A connector's targets at run time: the configured hosts ([`Target`]), the order an OPEN tries
//! them in ([`Strategy`]), their passive health ([`health`]), shared by every stream of the
//! connector ([`TargetSet`]), and the dial that walks them within one budget ([`dial`]).
//!
//! This module never reads the configuration: `config` builds a [`TargetSet`] from what it
//! validated, and a reload keeps the set (and so its health) of a connector whose target is
//! unchanged.

pub(crate) mod dial;
pub mod health;
mod strategy;

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use health::{Health, Order};
pub use strategy::Strategy;

/// Most hosts one connector may list.
pub const MAX_HOSTS: usize = health::MAX_HOSTS;

/// Where one connector's streams go: one or more hosts on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host names or IP addresses of the on-premise service (at least one, at most
    /// [`MAX_HOSTS`], no duplicates; IPv6 without brackets).
    pub hosts: Vec<String>,
    pub port: u16,
    pub strategy: Strategy,
}

impl Target {
    /// One host on one port (the single `host:` key).
    pub fn single(host: impl Into<String>, port: u16) -> Target {
        Target {
            hosts: vec![host.into()],
            port,
            strategy: Strategy::Failover,
        }
    }

    /// The `target` label and log field of host `i`: `host:port`, IPv6 in brackets.
    pub fn label(&self, i: usize) -> HostPort<'_> {
        HostPort {
            host: self.hosts.get(i).map_or("", String::as_str),
            port: self.port,
        }
    }
}

/// `host:port` as written in logs, metrics and STATUS (IPv6 in brackets).
#[derive(Debug, Clone, Copy)]
pub struct HostPort<'a> {
    pub host: &'a str,
    pub port: u16,
}

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A connector's target with the health its streams share (every tunnel's streams: the set is
/// held by the running configuration). Equality is the target's: health is run-time state.
#[derive(Debug)]
pub struct TargetSet {
    pub target: Target,
    /// Held only to compute an order or record an outcome (no await while held): a few
    /// nanoseconds per OPEN, never on the data path.
    health: Mutex<Health>,
}

impl PartialEq for TargetSet {
    fn eq(&self, other: &TargetSet) -> bool {
        self.target == other.target
    }
}

impl Eq for TargetSet {}

impl std::ops::Deref for TargetSet {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

impl TargetSet {
    /// Every host starts up (untried hosts are tried in order).
    pub fn new(target: Target, now: Instant) -> TargetSet {
        let n = target.hosts.len().min(MAX_HOSTS);
        TargetSet {
            target,
            health: Mutex::new(Health::new(n, now)),
        }
    }

    /// The hosts an OPEN tries, in order (see [`Health::order`]).
    pub fn order(&self, now: Instant) -> Order {
        let strategy = self.target.strategy;
        self.lock().order(strategy, now)
    }

    /// The health of every host, read now.
    pub fn health(&self) -> Health {
        self.lock().clone()
    }

    /// Runs `f` on the health (records an outcome).
    pub fn with_health<R>(&self, f: impl FnOnce(&mut Health) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Health> {
        // Nothing panics while holding it; recover the state if something ever did.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_bracket_ipv6() {
        let t = Target {
            hosts: vec!["dc1.corp".into(), "fd00::5".into()],
            port: 636,
            strategy: Strategy::Failover,
        };
        assert_eq!(t.label(0).to_string(), "dc1.corp:636");
        assert_eq!(t.label(1).to_string(), "[fd00::5]:636");
    }

    #[test]
    fn sets_compare_by_target_only() {
        let now = Instant::now();
        let a = TargetSet::new(Target::single("a", 1), now);
        let b = TargetSet::new(Target::single("a", 1), now);
        a.with_health(|h| h.failed(0, now));
        assert_eq!(a, b);
        assert_ne!(a, TargetSet::new(Target::single("a", 2), now));
    }
}
