//! What an agent reported about its targets (STATUS frames), per tunnel: kept for the portal's
//! agent view and the `nowconnect_connector_targets` gauge.
//!
//! Bounded by the tunnel's HELLO: only connectors it exported are kept (a report naming others
//! drops those), each with at most `MAX_STATUS_TARGETS` targets (the decoder refused more). A
//! new report replaces the previous one whole.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use nowconnect_shared::status::MAX_STATUS_TARGETS;
use nowconnect_shared::{Status, TargetStatus};

/// The latest report of one tunnel.
#[derive(Debug, Default)]
pub(crate) struct TargetHealth {
    latest: Mutex<Option<Report>>,
}

/// One report as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// Unix ms when it arrived: a target's state began `since_ms` before it.
    pub received_ms: u64,
    pub targets: BTreeMap<String, Vec<TargetStatus>>,
}

impl TargetHealth {
    /// Keeps `status` (received at `now_ms`), restricted to the `exported` connectors.
    pub fn update(&self, status: Status, exported: &[String], now_ms: u64) {
        let mut targets = status.targets;
        targets.retain(|c, _| exported.iter().any(|e| e == c));
        for list in targets.values_mut() {
            list.truncate(MAX_STATUS_TARGETS);
        }
        *self.lock() = Some(Report {
            received_ms: now_ms,
            targets,
        });
    }

    /// The latest report, if the agent sent one.
    pub fn snapshot(&self) -> Option<Report> {
        self.lock().clone()
    }

    /// Targets (up, down) per reported connector.
    pub fn counts(&self) -> Vec<(String, u64, u64)> {
        let guard = self.lock();
        let Some(r) = guard.as_ref() else {
            return Vec::new();
        };
        r.targets
            .iter()
            .map(|(c, list)| {
                let up = list.iter().filter(|t| t.up).count() as u64;
                (c.clone(), up, list.len() as u64 - up)
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Report>> {
        // Nothing panics while holding it; recover the state if something ever did.
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: &str, up: bool) -> TargetStatus {
        TargetStatus {
            target: target.into(),
            up,
            since_ms: 10,
            failures: u64::from(!up),
        }
    }

    #[test]
    fn keeps_only_exported_connectors_and_counts_states() {
        let h = TargetHealth::default();
        assert_eq!(h.snapshot(), None);
        assert!(h.counts().is_empty());
        let mut s = Status::default();
        s.targets
            .insert("ad".into(), vec![t("dc1:636", true), t("dc2:636", false)]);
        s.targets.insert("other".into(), vec![t("x:1", true)]);
        h.update(s, &["ad".into()], 5_000);
        let r = h.snapshot().expect("kept");
        assert_eq!(r.received_ms, 5_000);
        assert_eq!(r.targets.keys().collect::<Vec<_>>(), ["ad"]);
        assert_eq!(h.counts(), [("ad".to_string(), 1, 1)]);
        // A new report replaces the old one whole.
        h.update(Status::default(), &["ad".into()], 6_000);
        assert!(h.counts().is_empty());
    }
}
