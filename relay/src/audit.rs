//! The audit trail: every security-relevant decision, in one place.
//!
//! Each record is written as one structured log event (target `nowconnect::audit`, its fields
//! as log fields, so `NC_LOG_FORMAT=json` gives one JSON object per line), kept in a bounded
//! in-memory ring that the portal API serves with filters, and, with `audit.file`, appended as
//! one JSON line to a size-rotated file that the next start reads back. Records never hold
//! tokens, header values or payload bytes: only names, addresses and short reasons.
//!
//! One mutex covers the ring and the file, so `seq` order, ring order and file order agree. It
//! is taken once per record (per tunnel, per client connection, per admin action), never per byte.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::metrics::AuditLabels;

/// Records kept in memory; older ones are dropped (they stay in the log and the file).
pub const AUDIT_RING: usize = 4096;
/// Longest `detail` kept.
pub const MAX_DETAIL: usize = 512;
/// Lines longer than this in an audit file are skipped when it is read back (a record is far
/// smaller; a longer line is damage, not a record).
const MAX_LINE: usize = 16 * 1024;

/// What happened. The `as_str` names are the `action` field of records and of portal filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `/tunnel` upgrade: token accepted or refused (with the reason).
    TunnelAuth,
    /// HELLO accepted, or refused for an agent_id mismatch, an ungranted connector, a block.
    Hello,
    /// A client connection on a listener: stream allowed, or denied (cidr, pdp, scope, cap).
    Open,
    /// An agent tunnel ended, or an operator disconnected an agent.
    AgentDisconnected,
    /// A tunnel's agent_id is also connected from another source address (`success`: the new
    /// tunnel was admitted; `reason`: the `security.duplicate_agent` policy).
    DuplicateAgent,
    /// A source address failed too often and is refused for a while.
    SourceCooldown,
    /// An operator blocked an agent_id (its tunnels are refused until unblocked).
    AgentBlocked,
    /// An operator lifted a block.
    AgentUnblocked,
    /// An operator terminated a live session (stream).
    SessionTerminated,
    /// An operator turned a security policy on or off.
    PolicyToggled,
    /// A portal API request was refused (bad token, missing role, MFA policy).
    PortalAuth,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::TunnelAuth,
        Action::Hello,
        Action::Open,
        Action::AgentDisconnected,
        Action::DuplicateAgent,
        Action::SourceCooldown,
        Action::AgentBlocked,
        Action::AgentUnblocked,
        Action::SessionTerminated,
        Action::PolicyToggled,
        Action::PortalAuth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::TunnelAuth => "tunnel_auth",
            Action::Hello => "hello",
            Action::Open => "open",
            Action::AgentDisconnected => "agent_disconnected",
            Action::DuplicateAgent => "duplicate_agent",
            Action::SourceCooldown => "source_cooldown",
            Action::AgentBlocked => "agent_blocked",
            Action::AgentUnblocked => "agent_unblocked",
            Action::SessionTerminated => "session_terminated",
            Action::PolicyToggled => "policy_toggled",
            Action::PortalAuth => "portal_auth",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.as_str() == s)
    }
}

/// One audit record. Optional fields are omitted from JSON when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increasing, and continued across restarts when `audit.file` is set.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub action: Action,
    pub success: bool,
    /// Who acted: the agent_id for tunnel events, `portal:<sub>` for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What was acted on (`tunnel`, `connector:<name>`, `agent:<id>`, `session:<cid>`,
    /// `policy:<id>`, `portal:<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Short machine-readable reason (`expired`, `agent_id_mismatch`, `pdp_denied`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
    /// What decided an OPEN (`cidr`, `pdp`, `scope`, `stream_cap`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Cow<'static, str>>,
    /// The agent the record is about (filters and scoped portal views use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's (tunnel), the client's (OPEN) or the operator's (portal) address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<u64>,
    /// A short human-readable note (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A record being built: `Event::new(..).agent(..).source(..)`, then [`Audit::record`].
#[derive(Debug, Clone)]
pub struct Event {
    rec: AuditRecord,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Event {
    pub fn new(action: Action, success: bool) -> Event {
        Event {
            rec: AuditRecord {
                seq: 0,
                ts_ms: 0,
                action,
                success,
                actor: None,
                resource: None,
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
        self.rec.reason = Some(Cow::Borrowed(reason));
        self
    }
    pub fn by(mut self, by: &'static str) -> Event {
        self.rec.by = Some(Cow::Borrowed(by));
        self
    }
    pub fn agent(mut self, agent_id: &str) -> Event {
        self.rec.agent_id = Some(agent_id.to_owned());
        self
    }
    /// Who acted, when not the agent itself (an operator: `portal:<sub>`).
    pub fn actor(mut self, actor: &str) -> Event {
        self.rec.actor = Some(cut(actor.to_owned(), 256));
        self
    }
    pub fn resource(mut self, resource: impl Into<String>) -> Event {
        self.rec.resource = Some(cut(resource.into(), 256));
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
        self.rec.detail = Some(cut(detail.into(), MAX_DETAIL));
        self
    }
}

/// Where and how big the audit file may grow (`audit.file`, `audit.max_file_bytes`,
/// `audit.keep_files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFileConfig {
    pub path: PathBuf,
    /// The file is rotated (to `<path>.1`, `<path>.2`, ...) before it grows past this.
    pub max_bytes: u64,
    /// Rotated files kept besides the live one (at least 1).
    pub keep: usize,
}

/// The append-only JSON-lines file.
#[derive(Debug)]
struct FileSink {
    cfg: AuditFileConfig,
    file: File,
    size: u64,
    /// A write error is logged once until a write succeeds again.
    failing: bool,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl FileSink {
    fn open(cfg: AuditFileConfig) -> std::io::Result<FileSink> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(FileSink {
            cfg,
            file,
            size,
            failing: false,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.cfg.path;
        let _ = std::fs::remove_file(rotated(path, self.cfg.keep));
        for n in (1..self.cfg.keep).rev() {
            let from = rotated(path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(path, n + 1))?;
            }
        }
        std::fs::rename(path, rotated(path, 1))?;
        self.file = open_append(path)?;
        self.size = 0;
        Ok(())
    }

    /// Appends one line (rotating first when it would not fit). One `write` per record, so a
    /// crash leaves at most one partial last line, which the reader skips.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Reads the newest `capacity` records back from the file and its rotations, oldest first.
/// Damaged lines are skipped and counted.
fn read_back(cfg: &AuditFileConfig, capacity: usize) -> (VecDeque<AuditRecord>, usize) {
    let mut ring = VecDeque::with_capacity(capacity.min(1024));
    let mut skipped = 0;
    let mut files: Vec<PathBuf> = (1..=cfg.keep)
        .rev()
        .map(|n| rotated(&cfg.path, n))
        .collect();
    files.push(cfg.path.clone());
    for path in files {
        let Ok(f) = File::open(&path) else { continue };
        let mut reader = BufReader::new(f);
        let mut line = Vec::with_capacity(512);
        loop {
            line.clear();
            // Bounded read: a line longer than MAX_LINE is damage; skip the rest of it.
            let n = match (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if n > MAX_LINE && line.last() != Some(&b'\n') {
                skipped += 1;
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    match (&mut reader).take(64 * 1024).read_until(b'\n', &mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if rest.last() == Some(&b'\n') => break,
                        Ok(_) => {}
                    }
                }
                continue;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<AuditRecord>(text) {
                Ok(r) => {
                    if ring.len() >= capacity {
                        ring.pop_front();
                    }
                    ring.push_back(r);
                }
                Err(_) => skipped += 1,
            }
        }
    }
    (ring, skipped)
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<AuditRecord>,
    file: Option<FileSink>,
}

/// The relay's audit trail.
#[derive(Debug)]
pub struct Audit {
    inner: Mutex<Inner>,
    capacity: usize,
    seq: AtomicU64,
    /// `nowconnect_audit_records_total{action,result}`.
    counted: Option<Family<AuditLabels, Counter>>,
    /// `nowconnect_audit_write_errors_total`.
    write_errors: Option<Counter>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit::with_capacity(AUDIT_RING)
    }
}

impl Audit {
    /// An in-memory trail (no file, no metrics).
    pub fn with_capacity(capacity: usize) -> Audit {
        Audit {
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity.min(1024)),
                file: None,
            }),
            capacity: capacity.max(1),
            seq: AtomicU64::new(1),
            counted: None,
            write_errors: None,
        }
    }

    /// A trail that appends to `file` (when set) after reading the newest records back from
    /// it, and counts records in `metrics`. Fails when the file cannot be opened for append.
    pub(crate) fn open(
        capacity: usize,
        file: Option<AuditFileConfig>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Audit, String> {
        let mut audit = Audit::with_capacity(capacity);
        audit.counted = Some(metrics.audit_records.clone());
        audit.write_errors = Some(metrics.audit_write_errors.clone());
        if let Some(cfg) = file {
            let (ring, skipped) = read_back(&cfg, audit.capacity);
            if skipped > 0 {
                warn!(file = %cfg.path.display(), skipped, "audit file: damaged lines skipped");
            }
            let next = ring.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
            info!(file = %cfg.path.display(), records = ring.len(), "audit trail read back");
            let sink = FileSink::open(cfg.clone())
                .map_err(|e| format!("audit.file {}: {e}", cfg.path.display()))?;
            audit.seq = AtomicU64::new(next);
            let inner = audit.inner.get_mut().unwrap_or_else(|p| p.into_inner());
            inner.ring = ring;
            inner.file = Some(sink);
        }
        Ok(audit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs the record, keeps it in the ring and appends it to the file.
    pub fn record(&self, event: Event) {
        let mut rec = event.rec;
        rec.ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if rec.actor.is_none() {
            rec.actor = rec.agent_id.clone();
        }
        if rec.resource.is_none() {
            rec.resource = match (rec.action, &rec.connector) {
                (Action::Open, Some(c)) => Some(format!("connector:{c}")),
                (
                    Action::TunnelAuth
                    | Action::Hello
                    | Action::AgentDisconnected
                    | Action::DuplicateAgent,
                    _,
                )
                | (Action::SourceCooldown, _) => Some("tunnel".to_owned()),
                _ => None,
            };
        }
        if let Some(c) = &self.counted {
            c.get_or_create(&AuditLabels {
                action: rec.action.as_str(),
                result: if rec.success { "success" } else { "failure" },
            })
            .inc();
        }
        let mut inner = self.lock();
        rec.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        log(&rec);
        if let Some(sink) = inner.file.as_mut() {
            let written = serde_json::to_vec(&rec)
                .map_err(std::io::Error::from)
                .and_then(|mut line| {
                    line.push(b'\n');
                    sink.append(&line)
                });
            match written {
                Ok(()) => sink.failing = false,
                Err(e) => {
                    if let Some(c) = &self.write_errors {
                        c.inc();
                    }
                    if !sink.failing {
                        warn!(file = %sink.cfg.path.display(), error = %e, "cannot append to the audit file; records stay in memory and in the log");
                        sink.failing = true;
                    }
                }
            }
        }
        if inner.ring.len() >= self.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(rec);
    }

    /// Records still in the ring, oldest first, that match `filter`.
    pub fn query(&self, filter: &AuditFilter) -> Vec<AuditRecord> {
        let inner = self.lock();
        inner
            .ring
            .iter()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect()
    }

    /// At most `limit` matching records, newest first (the portal's view).
    pub fn newest(&self, filter: &AuditFilter, limit: usize) -> Vec<AuditRecord> {
        let inner = self.lock();
        inner
            .ring
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which records a reader wants (the portal's `success=`, `action=`, `agent_id=`, `since=`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<Action>,
    pub success: Option<bool>,
    pub agent_id: Option<String>,
    /// Only records with `seq` greater than this.
    pub after_seq: Option<u64>,
    /// Only records at or after this Unix time (ms).
    pub since_ms: Option<u64>,
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
            && self.since_ms.is_none_or(|t| r.ts_ms >= t)
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
                actor = %o(&r.actor),
                resource = %o(&r.resource),
                reason = r.reason.as_deref().unwrap_or(""),
                by = r.by.as_deref().unwrap_or(""),
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
        assert_eq!(json["resource"], "tunnel");
        assert!(json.get("agent_id").is_none());
        assert!(json.get("actor").is_none());
        let back: AuditRecord = serde_json::from_value(json).expect("reads back");
        assert_eq!(&back, r);
        let long = Event::new(Action::Hello, false).detail("é".repeat(MAX_DETAIL));
        let d = long.rec.detail.expect("detail");
        assert!(d.len() <= MAX_DETAIL && d.chars().all(|c| c == 'é'));
    }

    #[test]
    fn file_is_read_back_rotated_and_damage_skipped() {
        let dir = std::env::temp_dir().join(format!("nc-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = AuditFileConfig {
            path: dir.join("sub/audit.jsonl"),
            max_bytes: 1024,
            keep: 2,
        };
        let m = crate::metrics::Metrics::new();
        let a = Audit::open(100, Some(cfg.clone()), &m).expect("opens");
        for i in 0..30 {
            a.record(
                Event::new(Action::TunnelAuth, i % 3 != 0)
                    .reason("expired")
                    .agent(&format!("agent-{i}")),
            );
        }
        drop(a);
        assert!(rotated(&cfg.path, 1).exists(), "rotated at 1 KiB");
        assert!(!rotated(&cfg.path, 3).exists(), "keeps 2 rotations");
        let total: u64 = [
            cfg.path.clone(),
            rotated(&cfg.path, 1),
            rotated(&cfg.path, 2),
        ]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
        assert!(total <= 3 * 1024, "bounded: {total}");
        // A torn last line (crash mid-write) and garbage are skipped.
        let mut f = open_append(&cfg.path).expect("append");
        f.write_all(b"not json\n{\"seq\":").expect("write");
        drop(f);
        let b = Audit::open(100, Some(cfg.clone()), &m).expect("reopens");
        let back = b.query(&AuditFilter::default());
        assert!(!back.is_empty());
        let last = back.last().expect("records");
        assert_eq!(last.seq, 30);
        assert_eq!(last.agent_id.as_deref(), Some("agent-29"));
        assert_eq!(last.actor.as_deref(), Some("agent-29"));
        assert!(back.windows(2).all(|w| w[0].seq < w[1].seq));
        b.record(Event::new(Action::Hello, true));
        let newest = b.newest(&AuditFilter::default(), 2);
        assert_eq!(newest[0].seq, 31, "seq continues after a restart");
        assert_eq!(newest.len(), 2);
        let failed = b.newest(
            &AuditFilter {
                success: Some(false),
                ..Default::default()
            },
            1000,
        );
        assert!(failed.iter().all(|r| !r.success));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
