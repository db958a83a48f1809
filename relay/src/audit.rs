//! The audit trail: every security-relevant decision, in one place.
//!
//! Each record is written as one structured log event (target `nowconnect::audit`, its fields
//! as log fields, so `NC_LOG_FORMAT=json` gives one JSON object per line) and kept in a bounded
//! in-memory ring that the portal API (a later issue) serves with filters. Records never hold
//! tokens, header values or payload bytes: only names, addresses and short reasons.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{info, warn};

/// Records kept in memory; older ones are dropped (they stay in the log).
pub const AUDIT_RING: usize = 4096;
/// Longest `detail` kept.
pub const MAX_DETAIL: usize = 512;

/// What happened. The `as_str` names are the `action` field of records and of portal filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `/tunnel` upgrade: token accepted or refused (with the reason).
    TunnelAuth,
    /// HELLO accepted, or refused for an agent_id mismatch or an ungranted connector.
    Hello,
    /// A client connection on a listener: stream allowed, or denied (cidr, pdp, scope, cap).
    Open,
    /// An agent tunnel ended.
    AgentDisconnected,
    /// A source address failed too often and is refused for a while.
    SourceCooldown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::TunnelAuth => "tunnel_auth",
            Action::Hello => "hello",
            Action::Open => "open",
            Action::AgentDisconnected => "agent_disconnected",
            Action::SourceCooldown => "source_cooldown",
        }
    }
}

/// One audit record. Optional fields are omitted from JSON when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Increasing per relay process; lets a reader page through the ring.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub action: Action,
    pub success: bool,
    /// Short machine-readable reason (`expired`, `agent_id_mismatch`, `pdp_denied`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What decided an OPEN (`cidr`, `pdp`, `scope`, `stream_cap`, `none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's (tunnel) or the client's (OPEN) address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<u64>,
    /// A short human-readable note (never secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A record being built: `Event::new(..).agent(..).source(..)`, then [`Audit::record`].
#[derive(Debug, Clone)]
pub struct Event {
    rec: AuditRecord,
}

impl Event {
    pub fn new(action: Action, success: bool) -> Event {
        Event {
            rec: AuditRecord {
                seq: 0,
                ts_ms: 0,
                action,
                success,
                reason: None,
                by: None,
                agent_id: None,
                source: None,
                connector: None,
                tunnel_id: None,
                detail: None,
            },
        }
    }
    pub fn reason(mut self, reason: &'static str) -> Event {
        self.rec.reason = Some(reason);
        self
    }
    pub fn by(mut self, by: &'static str) -> Event {
        self.rec.by = Some(by);
        self
    }
    pub fn agent(mut self, agent_id: &str) -> Event {
        self.rec.agent_id = Some(agent_id.to_owned());
        self
    }
    pub fn source(mut self, source: impl std::fmt::Display) -> Event {
        self.rec.source = Some(source.to_string());
        self
    }
    pub fn connector(mut self, connector: &str) -> Event {
        self.rec.connector = Some(connector.to_owned());
        self
    }
    pub fn tunnel(mut self, tunnel_id: u64) -> Event {
        self.rec.tunnel_id = Some(tunnel_id);
        self
    }
    /// A note, cut to [`MAX_DETAIL`] bytes (it may quote peer-supplied names).
    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        let mut d = detail.into();
        if d.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d.truncate(end);
        }
        self.rec.detail = Some(d);
        self
    }
}

/// The relay's audit trail.
#[derive(Debug)]
pub struct Audit {
    ring: Mutex<VecDeque<AuditRecord>>,
    capacity: usize,
    seq: AtomicU64,
}

impl Default for Audit {
    fn default() -> Self {
        Audit::with_capacity(AUDIT_RING)
    }
}

impl Audit {
    pub fn with_capacity(capacity: usize) -> Audit {
        Audit {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            seq: AtomicU64::new(1),
        }
    }

    /// Logs the record and keeps it in the ring.
    pub fn record(&self, event: Event) {
        let mut rec = event.rec;
        rec.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        rec.ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        log(&rec);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(rec);
    }

    /// Records still in the ring, oldest first, that match `filter`.
    pub fn query(&self, filter: &AuditFilter) -> Vec<AuditRecord> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().filter(|r| filter.matches(r)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which records a reader wants (the portal's `success=`, `action=`, `agent_id=` filters).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<Action>,
    pub success: Option<bool>,
    pub agent_id: Option<String>,
    /// Only records with `seq` greater than this.
    pub after_seq: Option<u64>,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        self.action.is_none_or(|a| a == r.action)
            && self.success.is_none_or(|s| s == r.success)
            && self
                .agent_id
                .as_deref()
                .is_none_or(|a| r.agent_id.as_deref() == Some(a))
            && self.after_seq.is_none_or(|s| r.seq > s)
    }
}

fn log(r: &AuditRecord) {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    macro_rules! emit {
        ($level:ident) => {
            $level!(
                target: "nowconnect::audit",
                audit = true,
                seq = r.seq,
                ts_ms = r.ts_ms,
                action = r.action.as_str(),
                success = r.success,
                reason = r.reason.unwrap_or(""),
                by = r.by.unwrap_or(""),
                agent_id = %o(&r.agent_id),
                source = %o(&r.source),
                connector = %o(&r.connector),
                tunnel_id = r.tunnel_id.unwrap_or(0),
                detail = %o(&r.detail),
                "audit"
            )
        };
    }
    if r.success {
        emit!(info);
    } else {
        emit!(warn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_filters() {
        let a = Audit::with_capacity(3);
        for i in 0..5 {
            a.record(
                Event::new(Action::Open, i % 2 == 0)
                    .agent("a")
                    .connector("ad")
                    .by("pdp"),
            );
        }
        assert_eq!(a.len(), 3);
        let all = a.query(&AuditFilter::default());
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        let failed = a.query(&AuditFilter {
            success: Some(false),
            ..Default::default()
        });
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].seq, 4);
        assert!(a
            .query(&AuditFilter {
                action: Some(Action::Hello),
                ..Default::default()
            })
            .is_empty());
        assert_eq!(
            a.query(&AuditFilter {
                after_seq: Some(4),
                ..Default::default()
            })
            .len(),
            1
        );
    }

    #[test]
    fn json_omits_empty_fields() {
        let a = Audit::default();
        a.record(
            Event::new(Action::TunnelAuth, false)
                .reason("expired")
                .source("10.0.0.1:5"),
        );
        let r = &a.query(&AuditFilter::default())[0];
        let json = serde_json::to_value(r).expect("serializes");
        assert_eq!(json["action"], "tunnel_auth");
        assert_eq!(json["success"], false);
        assert_eq!(json["reason"], "expired");
        assert!(json.get("agent_id").is_none());
        let long = Event::new(Action::Hello, false).detail("é".repeat(MAX_DETAIL));
        let d = long.rec.detail.expect("detail");
        assert!(d.len() <= MAX_DETAIL && d.chars().all(|c| c == 'é'));
    }
}
