//! Rate limits on audit records of refusals, and the aggregates that stand in for the rest.
//!
//! Time is cut into windows of `audit.refusal_window_sec` (one minute by default). Within one,
//! each source may write `max_refusals_per_source` refusal records of each action (its refused
//! client connections do not hide its refused tokens) and all sources together
//! `max_refusals_total`; every refusal past either limit is only counted, per (source, action,
//! reason). When the window closes, each count becomes one aggregate record ("N more refused
//! from X in the last minute"). Pure: the caller passes `now`, and records nothing itself.
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources are tracked per window; a refusal from
//! a source that finds the table full (or from no address at all) is held to the global limit
//! only, and past it is counted in one "other sources" bucket per (action, reason). Actions
//! and reasons are static names, so each count list is bounded by their number.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::record::Action;

/// Sources tracked in one window.
pub(crate) const MAX_SOURCES: usize = 1024;

/// The refusal limits (`audit.max_refusals_per_source`, `audit.max_refusals_total`,
/// `audit.refusal_window_sec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    /// Refusal records of one action one source may write per window (0: only aggregates).
    pub per_source: u32,
    /// Refusal records all sources together may write per window.
    pub total: u32,
    pub window: Duration,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        RefusalLimits {
            per_source: 30,
            total: 300,
            window: Duration::from_secs(60),
        }
    }
}

/// The source key: IPv4 as is (IPv4-mapped IPv6 counts as IPv4), IPv6 cut to its /64, since
/// one host usually owns a whole /64.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

type Reason = Option<Cow<'static, str>>;

/// Refusals not written, per (action, reason).
#[derive(Debug, Default)]
struct Folded(Vec<(Action, Reason, u64)>);

impl Folded {
    fn add(&mut self, action: Action, reason: &Reason) {
        match self
            .0
            .iter_mut()
            .find(|(a, r, _)| *a == action && r == reason)
        {
            Some((_, _, n)) => *n += 1,
            None => self.0.push((action, reason.clone(), 1)),
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    /// Records written in this window, per action (indexed like [`Action::ALL`]).
    written: [u32; Action::ALL.len()],
    folded: Folded,
}

/// One aggregate record to write: `more` refusals of `action`/`reason` from `source` (the key;
/// `None`: from the sources not tracked) in a window of `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Aggregate {
    pub source: Option<IpAddr>,
    pub action: Action,
    pub reason: Reason,
    pub more: u64,
    pub window: Duration,
}

impl Aggregate {
    /// "N more refused from X in the last minute".
    pub fn detail(&self) -> String {
        let from = match self.source {
            Some(IpAddr::V6(v6)) => format!("{v6}/64"),
            Some(ip) => ip.to_string(),
            None => "other sources".to_owned(),
        };
        let secs = self.window.as_secs();
        let span = if secs == 60 {
            "minute".to_owned()
        } else {
            format!("{secs} s")
        };
        format!("{} more refused from {from} in the last {span}", self.more)
    }
}

/// The limits' state for the current window.
#[derive(Debug)]
pub(super) struct Limiter {
    limits: RefusalLimits,
    start: Instant,
    written: u32,
    sources: HashMap<IpAddr, Source>,
    others: Folded,
}

impl Limiter {
    pub fn new(limits: RefusalLimits, now: Instant) -> Limiter {
        Limiter {
            limits,
            start: now,
            written: 0,
            sources: HashMap::new(),
            others: Folded::default(),
        }
    }

    /// The aggregates of the window when it has closed by `now` (a new one starts), else
    /// nothing. Called before every [`Limiter::admit`] and periodically.
    pub fn roll(&mut self, now: Instant) -> Vec<Aggregate> {
        if now.saturating_duration_since(self.start) < self.limits.window {
            return Vec::new();
        }
        self.close(now)
    }

    /// Ends the window now (shutdown): its aggregates.
    pub fn close(&mut self, now: Instant) -> Vec<Aggregate> {
        let window = self.limits.window;
        let mut out = Vec::new();
        let mut push = |source, folded: Folded| {
            for (action, reason, more) in folded.0 {
                out.push(Aggregate {
                    source,
                    action,
                    reason,
                    more,
                    window,
                });
            }
        };
        for (ip, s) in self.sources.drain() {
            push(Some(ip), s.folded);
        }
        push(None, std::mem::take(&mut self.others));
        self.start = now;
        self.written = 0;
        out
    }

    /// Whether a refusal from `ip` may have a record of its own; if not, it is counted for the
    /// window's aggregates.
    pub fn admit(&mut self, ip: Option<IpAddr>, action: Action, reason: &Reason) -> bool {
        let key = ip.map(source_key);
        let full = self.sources.len() >= MAX_SOURCES;
        let source = match key {
            Some(k) if !full || self.sources.contains_key(&k) => {
                Some(self.sources.entry(k).or_default())
            }
            _ => None,
        };
        let a = action as usize;
        let source_ok = source
            .as_ref()
            .is_none_or(|s| s.written[a] < self.limits.per_source);
        if source_ok && self.written < self.limits.total {
            self.written += 1;
            if let Some(s) = source {
                s.written[a] += 1;
            }
            return true;
        }
        match source {
            Some(s) => s.folded.add(action, reason),
            None => self.others.add(action, reason),
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_source: u32, total: u32) -> (Limiter, Instant) {
        let now = Instant::now();
        let limits = RefusalLimits {
            per_source,
            total,
            window: Duration::from_secs(60),
        };
        (Limiter::new(limits, now), now)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    const CIDR: Reason = Some(Cow::Borrowed("cidr_blocked"));
    const EXPIRED: Reason = Some(Cow::Borrowed("expired"));

    #[test]
    fn per_source_limit_then_one_aggregate_per_action_and_reason() {
        let (mut l, t0) = limiter(3, 100);
        let a = ip("10.0.0.1");
        let written = (0..10).filter(|_| l.admit(a, Action::Open, &CIDR)).count();
        assert_eq!(written, 3);
        // Each action has its own budget per source.
        let tokens = (0..5)
            .filter(|_| l.admit(a, Action::TunnelAuth, &EXPIRED))
            .count();
        assert_eq!(tokens, 3);
        // Another source has its own budget; a mapped address is the same source.
        assert!(l.admit(ip("10.0.0.2"), Action::Open, &CIDR));
        assert!(!l.admit(ip("::ffff:10.0.0.1"), Action::Open, &CIDR));
        assert!(
            l.roll(t0 + Duration::from_secs(59)).is_empty(),
            "still open"
        );
        let mut aggs = l.roll(t0 + Duration::from_secs(60));
        aggs.sort_by_key(|a| a.action.as_str());
        assert_eq!(aggs.len(), 2, "{aggs:?}");
        assert_eq!((aggs[0].action, aggs[0].more), (Action::Open, 8));
        assert_eq!(aggs[0].source, a);
        assert_eq!(
            aggs[0].detail(),
            "8 more refused from 10.0.0.1 in the last minute"
        );
        assert_eq!((aggs[1].action, aggs[1].more), (Action::TunnelAuth, 2));
        // A new window: a new budget, nothing carried over.
        assert!(l.admit(a, Action::Open, &CIDR));
        assert!(l.close(t0 + Duration::from_secs(61)).is_empty());
    }

    #[test]
    fn global_limit_and_a_full_table_fold_into_other_sources() {
        let (mut l, t0) = limiter(1000, 5);
        for i in 0..(MAX_SOURCES as u32 + 50) {
            let src = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            l.admit(src, Action::Open, &CIDR);
        }
        l.admit(None, Action::Hello, &None);
        assert!(l.sources.len() <= MAX_SOURCES);
        let aggs = l.close(t0);
        let total: u64 = aggs.iter().map(|a| a.more).sum();
        assert_eq!(
            total,
            MAX_SOURCES as u64 + 50 + 1 - 5,
            "every refusal counted once"
        );
        let others: Vec<_> = aggs.iter().filter(|a| a.source.is_none()).collect();
        assert_eq!(others.len(), 2, "one bucket per action and reason");
        assert!(others
            .iter()
            .any(|a| a.more == 50 && a.action == Action::Open));
        assert!(others[0].detail().contains("from other sources"));
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let (mut l, t0) = limiter(1, 100);
        assert!(l.admit(ip("2001:db8::1"), Action::Open, &CIDR));
        assert!(!l.admit(ip("2001:db8::2"), Action::Open, &CIDR));
        assert!(l.admit(ip("2001:db8:0:1::1"), Action::Open, &CIDR));
        let aggs = l.close(t0);
        assert_eq!(aggs.len(), 1);
        assert_eq!(
            aggs[0].detail(),
            "1 more refused from 2001:db8::/64 in the last minute"
        );
    }
}
