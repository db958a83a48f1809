//! Reporting target health to the relay: the STATUS report of a session's multi-host
//! connectors ([`report`]) and the pacing that sends one at most once a second, coalescing the
//! changes in between ([`Pacer`]).
//!
//! A session reports only to a relay whose HELLO_ACK announced `status` (an older relay would
//! count an undecodable frame), only over v2, and only for connectors its HELLO exported that
//! have more than one host.

use std::time::Duration;

use nowconnect_shared::status::MAX_STATUS_LEN;
use nowconnect_shared::{Limits, Status, TargetStatus};
use tokio::time::Instant;

use crate::config::AgentConfig;

/// Reports are at least this far apart.
pub(super) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The report for the connectors `announced` (this session's HELLO) exports with more than one
/// host, as the running table `current` has them now; `None` when there is none. Connectors
/// that would push the body past the protocol's limit are left out, last first.
pub(super) fn report(
    announced: &AgentConfig,
    current: &AgentConfig,
    now: std::time::Instant,
) -> Option<Status> {
    let mut s = Status::default();
    for name in announced.targets.keys() {
        let Some(set) = current.targets.get(name).filter(|t| t.hosts.len() > 1) else {
            continue;
        };
        let health = set.health();
        let list = health
            .hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| TargetStatus {
                target: set.label(i).to_string(),
                up: h.up,
                since_ms: u64::try_from(now.saturating_duration_since(h.since).as_millis())
                    .unwrap_or(u64::MAX),
                failures: h.failures,
            })
            .collect();
        s.targets.insert(name.to_string(), list);
    }
    let limits = Limits::default();
    let mut body = Vec::with_capacity(1024);
    while !s.targets.is_empty() && s.encode_body(&limits, &mut body).is_err() {
        // Only the size can fail (the table was validated): drop the last connector.
        let last = s.targets.keys().next_back().cloned();
        if let Some(last) = last {
            tracing::debug!(connector = %last, max = MAX_STATUS_LEN, "target report too long; connector left out");
            s.targets.remove(&last);
        }
        body.clear();
    }
    (!s.targets.is_empty()).then_some(s)
}

/// When the next report goes out: as soon as something changed, but never sooner than
/// [`MIN_INTERVAL`] after the last one; changes meanwhile share one report.
#[derive(Debug, Default)]
pub(super) struct Pacer {
    last: Option<Instant>,
    due: Option<Instant>,
}

impl Pacer {
    /// Something changed at `now`; returns when to send.
    pub fn changed(&mut self, now: Instant) -> Instant {
        let earliest = self.last.map_or(now, |l| (l + MIN_INTERVAL).max(now));
        *self.due.get_or_insert(earliest)
    }

    /// A report went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last = Some(now);
        self.due = None;
    }

    pub fn due(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_coalesce_to_one_report_a_second() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.due(), None);
        assert_eq!(p.changed(t0), t0, "the first goes out at once");
        p.sent(t0);
        let t = t0 + Duration::from_millis(100);
        assert_eq!(p.changed(t), t0 + MIN_INTERVAL);
        assert_eq!(
            p.changed(t + Duration::from_millis(300)),
            t0 + MIN_INTERVAL,
            "coalesced"
        );
        p.sent(t0 + MIN_INTERVAL);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.changed(later), later, "quiet long enough: at once");
    }

    #[test]
    fn only_multi_host_connectors_of_the_hello_are_reported() {
        let yaml = "tunnel: {url: 'wss://r/t', agent_id: a}\ntargets:\n  one: {host: h, port: 1}\n  two: {hosts: [a, '[fd00::5]'], port: 636}\n";
        let cfg = AgentConfig::from_yaml_str(yaml).expect("valid");
        let now = std::time::Instant::now() + Duration::from_millis(1500);
        let s = report(&cfg, &cfg, now).expect("a report");
        assert_eq!(s.targets.keys().collect::<Vec<_>>(), ["two"]);
        let list = &s.targets["two"];
        assert_eq!(list[0].target, "a:636");
        assert_eq!(list[1].target, "[fd00::5]:636");
        assert!(list
            .iter()
            .all(|t| t.up && t.failures == 0 && t.since_ms >= 1500));
        let single = AgentConfig::from_yaml_str(
            "tunnel: {url: 'wss://r/t', agent_id: a}\ntargets: {one: {host: h, port: 1}}\n",
        )
        .expect("valid");
        assert!(report(&single, &single, now).is_none());
        // A connector this HELLO did not export is not reported.
        assert!(report(&single, &cfg, now).is_none());
    }
}
