//! The audit trail: every security-relevant decision, in one place.
//!
//! Each record is written as one structured log event (target `nowconnect::audit`, its fields
//! as log fields, so `NC_LOG_FORMAT=json` gives one JSON object per line), kept in a bounded
//! in-memory ring that the portal API serves with filters, and, with `audit.file`, appended as
//! one JSON line to a size-rotated file that the next start reads back. Records never hold
//! tokens, header values or payload bytes: only names, addresses and short reasons.
//!
//! Under a flood. Refusals (every record with `success: false`: CIDR blocks, connection caps,
//! bad tokens, refused HELLOs, cool-downs, refused portal requests) are rate-limited per source
//! and overall (module `limit`); past the limits they are counted, and each (source, action,
//! reason) count becomes one aggregate record when its window closes (a ticker closes windows
//! on time; the next record closes one too). Successes, which include every successful
//! authentication and every operator action (portal actions, policy toggles, disconnects), are
//! never limited or aggregated. So a connect/reset loop writes a few dozen lines a minute, not
//! thousands, and cannot rotate the earlier records out of the file or the ring.
//!
//! Off the runtime threads. [`Audit::record`] never touches the disk: under one short lock it
//! assigns `seq`, logs, keeps the record in the ring and queues it for the writer thread (module
//! `file`), so `seq` order, ring order and file order agree. When that bounded queue is full
//! (the disk is slower than the records):
//! - a refusal's file line is dropped and counted (`nowconnect_audit_dropped_total{reason=
//!   "queue_full"}`); the record stays in the ring and the log. Refusals are what a flood is
//!   made of: waiting for them would hand the flood the threads that relay traffic.
//! - a success or an aggregate waits for room, outside the lock, up to [`WRITER_WAIT`]. Those
//!   are few and are what the file is for (who got in, what an operator changed, how many were
//!   refused); only a disk stalled for longer costs their line (`reason="writer_stalled"`).
//!   Such a record may land a few lines after later ones; reading back sorts by `seq`.

mod file;
mod limit;
mod record;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use file::AuditFileConfig;
pub(crate) use limit::source_key;
pub use limit::RefusalLimits;
pub use record::{Action, AuditRecord, Event, SourceAddr, MAX_DETAIL};

use crate::metrics::{ActionLabel, AuditLabels, ReasonLabel};
use file::{FileSink, Writer};
use limit::{Aggregate, Limiter};

/// Records kept in memory; older ones are dropped (they stay in the log and the file).
pub const AUDIT_RING: usize = 4096;
/// Longest a success or an aggregate waits for room in the writer's queue.
pub const WRITER_WAIT: Duration = Duration::from_secs(1);
/// Longest a shutdown waits for the writer to catch up.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Inner {
    ring: VecDeque<AuditRecord>,
    /// The next record's `seq`.
    next_seq: u64,
    limiter: Limiter,
}

#[derive(Debug)]
struct Counters {
    /// `nowconnect_audit_records_total{action,result}`.
    records: Family<AuditLabels, Counter>,
    /// `nowconnect_audit_dropped_total{reason}`.
    dropped: Family<ReasonLabel, Counter>,
    /// `nowconnect_audit_aggregated_total{action}`.
    aggregated: Family<ActionLabel, Counter>,
}

/// The relay's audit trail.
#[derive(Debug)]
pub struct Audit {
    inner: Mutex<Inner>,
    capacity: usize,
    /// `None` without `audit.file`.
    writer: Option<Writer>,
    counters: Option<Counters>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit::with_capacity(AUDIT_RING)
    }
}

impl Audit {
    /// An in-memory trail (no file, no metrics) with the default refusal limits.
    pub fn with_capacity(capacity: usize) -> Audit {
        Audit {
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity.min(1024)),
                next_seq: 1,
                limiter: Limiter::new(RefusalLimits::default(), Instant::now()),
            }),
            capacity: capacity.max(1),
            writer: None,
            counters: None,
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
        audit.counters = Some(Counters {
            records: metrics.audit_records.clone(),
            dropped: metrics.audit_dropped.clone(),
            aggregated: metrics.audit_aggregated.clone(),
        });
        if let Some(cfg) = file {
            let (ring, skipped) = file::read_back(&cfg, audit.capacity);
            if skipped > 0 {
                warn!(file = %cfg.path.display(), skipped, "audit file: damaged lines skipped");
            }
            let next = ring.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
            info!(file = %cfg.path.display(), records = ring.len(), "audit trail read back");
            let what = |e: std::io::Error| format!("audit.file {}: {e}", cfg.path.display());
            let sink = FileSink::open(cfg.clone()).map_err(what)?;
            let errors = Some(metrics.audit_write_errors.clone());
            audit.writer = Some(Writer::spawn(Box::new(sink), file::QUEUE, errors).map_err(what)?);
            let inner = audit.inner.get_mut().unwrap_or_else(|p| p.into_inner());
            inner.ring = ring;
            inner.next_seq = next;
        }
        Ok(audit)
    }

    /// A trail whose writer appends to `sink` through a queue of `queue` records.
    #[cfg(test)]
    fn with_sink(
        sink: Box<dyn file::Sink>,
        queue: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Audit {
        let mut audit = Audit::open(AUDIT_RING, None, metrics).expect("in memory");
        audit.writer = Some(Writer::spawn(sink, queue, None).expect("writer thread"));
        audit
    }

    /// The same trail with these refusal limits (a new window starts now).
    pub(crate) fn limited(mut self, limits: RefusalLimits) -> Audit {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.limiter = Limiter::new(limits, Instant::now());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs the record, keeps it in the ring and queues it for the file; a refusal past the
    /// limits is only counted for its window's aggregate.
    pub fn record(&self, event: Event) {
        self.record_at(event, Instant::now());
    }

    fn record_at(&self, event: Event, now: Instant) {
        let refusal = event.is_refusal();
        let Event { mut rec, ip } = event;
        complete(&mut rec);
        let mut waiting = Vec::new();
        {
            let mut inner = self.lock();
            let closed = inner.limiter.roll(now);
            self.commit_aggregates(&mut inner, closed, &mut waiting);
            if refusal && !inner.limiter.admit(ip, rec.action, &rec.reason) {
                if let Some(c) = &self.counters {
                    c.aggregated
                        .get_or_create(&ActionLabel {
                            action: rec.action.as_str(),
                        })
                        .inc();
                }
            } else {
                self.commit(&mut inner, rec, refusal, &mut waiting);
            }
        }
        self.wait_for_writer(waiting);
    }

    /// Writes the aggregates of a refusal window that has closed (called every second).
    pub fn tick(&self) {
        let mut waiting = Vec::new();
        {
            let mut inner = self.lock();
            let closed = inner.limiter.roll(Instant::now());
            self.commit_aggregates(&mut inner, closed, &mut waiting);
        }
        self.wait_for_writer(waiting);
    }

    /// Ends the refusal window now (its aggregates are written) and waits, up to a few
    /// seconds, until the file holds every record so far. At shutdown; safe to repeat.
    pub fn close(&self) {
        let mut waiting = Vec::new();
        {
            let mut inner = self.lock();
            let closed = inner.limiter.close(Instant::now());
            self.commit_aggregates(&mut inner, closed, &mut waiting);
        }
        self.wait_for_writer(waiting);
        if let Some(w) = &self.writer {
            if !w.flush(FLUSH_WAIT) {
                warn!("the audit file writer did not catch up within {FLUSH_WAIT:?}");
            }
        }
    }

    fn commit_aggregates(
        &self,
        inner: &mut Inner,
        closed: Vec<Aggregate>,
        waiting: &mut Vec<AuditRecord>,
    ) {
        for agg in closed {
            let mut rec = Event::new(agg.action, false).detail(agg.detail()).rec;
            rec.reason = agg.reason.clone();
            rec.source = agg.source.map(|ip| match ip {
                IpAddr::V6(v6) => format!("{v6}/64"),
                v4 => v4.to_string(),
            });
            rec.more = Some(agg.more);
            complete(&mut rec);
            self.commit(inner, rec, false, waiting);
        }
    }

    /// Gives `rec` its `seq`, logs it, keeps it and queues it for the file. A `droppable`
    /// record finding the queue full loses its file line; any other goes to `waiting`.
    fn commit(
        &self,
        inner: &mut Inner,
        mut rec: AuditRecord,
        droppable: bool,
        waiting: &mut Vec<AuditRecord>,
    ) {
        rec.seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(c) = &self.counters {
            c.records
                .get_or_create(&AuditLabels {
                    action: rec.action.as_str(),
                    result: if rec.success { "success" } else { "failure" },
                })
                .inc();
        }
        log(&rec);
        if let Some(w) = &self.writer {
            if let Err(back) = w.try_send(Box::new(rec.clone())) {
                if droppable {
                    self.dropped("queue_full");
                } else {
                    waiting.push(*back);
                }
            }
        }
        if inner.ring.len() >= self.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(rec);
    }

    /// Queues records that found the queue full, waiting for room (never under the lock).
    fn wait_for_writer(&self, waiting: Vec<AuditRecord>) {
        let Some(w) = &self.writer else { return };
        for rec in waiting {
            if !w.send_wait(Box::new(rec), WRITER_WAIT) {
                self.dropped("writer_stalled");
            }
        }
    }

    fn dropped(&self, reason: &'static str) {
        if let Some(c) = &self.counters {
            c.dropped.get_or_create(&ReasonLabel { reason }).inc();
        }
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

impl Drop for Audit {
    /// The last window's aggregates and the queued lines reach the file.
    fn drop(&mut self) {
        self.close();
    }
}

/// Closes refusal windows on time, so aggregates are written within a second of a window's
/// end even when no further record comes; until `stop`.
pub(crate) async fn run_ticker(audit: Arc<Audit>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => audit.tick(),
        }
    }
}

/// Fills what every record has: the time, the actor (the agent) and the resource by default.
fn complete(rec: &mut AuditRecord) {
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
                event = r.action.as_str(),
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
mod tests;
