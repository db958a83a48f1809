//! The dashboard's traffic history: per-minute counters for the last hour, relay-wide and per
//! connector, kept in a ring of bounded size.
//!
//! The ring stores, for each minute it saw, the relay's cumulative counters at the last sample
//! of that minute (bytes each way, streams opened, refused authentications). A minute's figures
//! are the difference to the minute before, so a missed sample loses nothing: the next minute
//! covers it. Memory is bounded: [`MINUTES`] + 1 snapshots of at most [`MAX_CONNECTORS`]
//! connectors each (connectors beyond that count in the relay-wide totals only).
//!
//! Pure: the caller passes the time and the counters (a ticker every [`SAMPLE_EVERY`], and each
//! `GET /api/v1/history`, so the current minute is live). Never on the data path: sampling
//! reads the metrics' atomics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Minutes kept (one hour).
pub(crate) const MINUTES: usize = 60;
/// Connectors with a series of their own.
pub(crate) const MAX_CONNECTORS: usize = 256;
/// How often the ticker samples.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const MINUTE_MS: u64 = 60_000;

/// Cumulative counters (since the relay started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub bytes_c2a: u64,
    pub bytes_a2c: u64,
    pub streams: u64,
}

impl Counts {
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            bytes_c2a: self.bytes_c2a.saturating_sub(earlier.bytes_c2a),
            bytes_a2c: self.bytes_a2c.saturating_sub(earlier.bytes_a2c),
            streams: self.streams.saturating_sub(earlier.streams),
        }
    }
}

/// One sample: cumulative counters per connector and in total.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Sorted by name, at most [`MAX_CONNECTORS`].
    connectors: Vec<(Arc<str>, Counts)>,
    total: Counts,
    auth_failures: u64,
}

impl Snapshot {
    /// `connectors` in any order; the totals count every one of them.
    pub fn new(mut connectors: Vec<(Arc<str>, Counts)>, auth_failures: u64) -> Snapshot {
        let mut total = Counts::default();
        for (_, c) in &connectors {
            total.bytes_c2a = total.bytes_c2a.saturating_add(c.bytes_c2a);
            total.bytes_a2c = total.bytes_a2c.saturating_add(c.bytes_a2c);
            total.streams = total.streams.saturating_add(c.streams);
        }
        connectors.sort_by(|a, b| a.0.cmp(&b.0));
        connectors.dedup_by(|a, b| a.0 == b.0);
        connectors.truncate(MAX_CONNECTORS);
        Snapshot {
            connectors,
            total,
            auth_failures,
        }
    }

    fn get(&self, name: &str) -> Counts {
        self.connectors
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .map_or(Counts::default(), |i| self.connectors[i].1)
    }
}

/// One minute of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Minute {
    /// Start of the minute, Unix ms.
    pub t: u64,
    pub counts: Counts,
    pub auth_failures: u64,
}

/// What `GET /api/v1/history` answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Oldest first; the last one is the current (partial) minute.
    pub minutes: Vec<Minute>,
    /// Per connector, the same minutes.
    pub connectors: Vec<(Arc<str>, Vec<Minute>)>,
}

#[derive(Debug, Default)]
struct Ring {
    /// (minute start, cumulative counters at its last sample), oldest first.
    ends: VecDeque<(u64, Snapshot)>,
    /// The counters at the end of the minute before the oldest kept (zero at start).
    base: Snapshot,
}

/// The ring, shared by the ticker and the portal.
#[derive(Debug, Default)]
pub(crate) struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// Records a sample taken at `now_ms`.
    pub fn record(&self, now_ms: u64, snap: Snapshot) {
        let minute = now_ms - now_ms % MINUTE_MS;
        let Ok(mut r) = self.ring.lock() else { return };
        match r.ends.back_mut() {
            Some((m, s)) if *m == minute => *s = snap,
            // A clock stepped back: keep the ring ordered, count it in the newest minute.
            Some((m, s)) if *m > minute => *s = snap,
            _ => r.ends.push_back((minute, snap)),
        }
        while r.ends.len() > MINUTES {
            if let Some((_, s)) = r.ends.pop_front() {
                r.base = s;
            }
        }
    }

    /// The minutes of the last hour before `now_ms`, relay-wide and per connector.
    pub fn view(&self, now_ms: u64) -> View {
        let Ok(r) = self.ring.lock() else {
            return View::default();
        };
        let oldest = now_ms.saturating_sub(MINUTES as u64 * MINUTE_MS);
        let mut out = View::default();
        let mut names: Vec<Arc<str>> = r
            .ends
            .back()
            .map(|(_, s)| s.connectors.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        names.truncate(MAX_CONNECTORS);
        let mut per: Vec<Vec<Minute>> = vec![Vec::new(); names.len()];
        let mut prev = &r.base;
        for (t, s) in &r.ends {
            if *t >= oldest {
                out.minutes.push(Minute {
                    t: *t,
                    counts: s.total.since(prev.total),
                    auth_failures: s.auth_failures.saturating_sub(prev.auth_failures),
                });
                for (i, n) in names.iter().enumerate() {
                    per[i].push(Minute {
                        t: *t,
                        counts: s.get(n).since(prev.get(n)),
                        auth_failures: 0,
                    });
                }
            }
            prev = s;
        }
        out.connectors = names.into_iter().zip(per).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(c2a: u64, streams: u64, auth: u64) -> Snapshot {
        Snapshot::new(
            vec![
                (
                    "ldap".into(),
                    Counts {
                        bytes_c2a: c2a,
                        bytes_a2c: 2 * c2a,
                        streams,
                    },
                ),
                ("ssh".into(), Counts::default()),
            ],
            auth,
        )
    }

    #[test]
    fn minutes_are_differences_of_the_last_sample_of_each_minute() {
        let h = History::default();
        let t0 = 1_700_000_040_000; // a minute boundary
        h.record(t0 + 5_000, snap(100, 1, 0));
        h.record(t0 + 50_000, snap(300, 2, 1));
        h.record(t0 + 61_000, snap(1_000, 5, 4));
        let v = h.view(t0 + 62_000);
        assert_eq!(v.minutes.len(), 2);
        assert_eq!(v.minutes[0].t, t0);
        assert_eq!(v.minutes[0].counts.bytes_c2a, 300);
        assert_eq!(v.minutes[0].counts.bytes_a2c, 600);
        assert_eq!(v.minutes[0].auth_failures, 1);
        assert_eq!(v.minutes[1].t, t0 + 60_000, "the current minute, live");
        assert_eq!(v.minutes[1].counts.bytes_c2a, 700);
        assert_eq!(v.minutes[1].counts.streams, 3);
        assert_eq!(v.minutes[1].auth_failures, 3);
        let (name, ldap) = &v.connectors[0];
        assert_eq!(&**name, "ldap");
        assert_eq!(ldap[1].counts.bytes_c2a, 700);
        assert_eq!(v.connectors[1].1[1].counts, Counts::default());
    }

    #[test]
    fn one_hour_kept_and_memory_bounded() {
        let h = History::default();
        let t0 = 1_700_000_040_000;
        for m in 0..(3 * MINUTES as u64) {
            h.record(t0 + m * MINUTE_MS, snap(m * 10, m, 0));
        }
        let now = t0 + (3 * MINUTES as u64 - 1) * MINUTE_MS;
        let v = h.view(now);
        assert_eq!(v.minutes.len(), MINUTES);
        assert!(v.minutes.iter().all(|m| m.counts.bytes_c2a == 10));
        assert_eq!(h.ring.lock().expect("ring").ends.len(), MINUTES);
        // An hour later with no samples: nothing in the window.
        assert!(h
            .view(now + 2 * MINUTES as u64 * MINUTE_MS)
            .minutes
            .is_empty());
        // A gap is not lost: the next minute covers it.
        let h = History::default();
        h.record(t0, snap(10, 1, 0));
        h.record(t0 + 5 * MINUTE_MS, snap(60, 2, 0));
        let v = h.view(t0 + 5 * MINUTE_MS);
        assert_eq!(
            v.minutes.iter().map(|m| m.counts.bytes_c2a).sum::<u64>(),
            60
        );
        // Connectors beyond the cap count in the totals only.
        let many: Vec<_> = (0..MAX_CONNECTORS + 10)
            .map(|i| {
                (
                    Arc::<str>::from(format!("c{i:04}")),
                    Counts {
                        bytes_c2a: 1,
                        ..Counts::default()
                    },
                )
            })
            .collect();
        let s = Snapshot::new(many, 0);
        assert_eq!(s.connectors.len(), MAX_CONNECTORS);
        assert_eq!(s.total.bytes_c2a, (MAX_CONNECTORS + 10) as u64);
    }

    #[test]
    fn a_restarted_counter_or_a_clock_step_back_never_goes_negative() {
        let h = History::default();
        let t0 = 1_700_000_040_000;
        h.record(t0 + MINUTE_MS, snap(500, 5, 5));
        h.record(t0, snap(100, 1, 1));
        h.record(t0 + 2 * MINUTE_MS, snap(50, 0, 0));
        let v = h.view(t0 + 2 * MINUTE_MS);
        assert_eq!(v.minutes.len(), 2);
        assert_eq!(v.minutes[1].counts, Counts::default());
    }
}
