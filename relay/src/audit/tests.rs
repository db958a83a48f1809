//! Unit tests of the audit trail: the ring, the file, the refusal limits, the writer's queue.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::file::{open_append, rotated, Sink};
use super::*;

fn peer(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

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
            .source(peer("10.0.0.1:5")),
    );
    let r = &a.query(&AuditFilter::default())[0];
    let json = serde_json::to_value(r).expect("serializes");
    assert_eq!(json["action"], "tunnel_auth");
    assert_eq!(json["success"], false);
    assert_eq!(json["reason"], "expired");
    assert_eq!(json["resource"], "tunnel");
    assert_eq!(json["source"], "10.0.0.1:5");
    assert!(json.get("agent_id").is_none());
    assert!(json.get("actor").is_none());
    assert!(json.get("more").is_none());
    let back: AuditRecord = serde_json::from_value(json).expect("reads back");
    assert_eq!(&back, r);
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
    // Dropping the trail waits for the writer thread.
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
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

fn metric(m: &crate::metrics::Metrics, line: &str) -> u64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn refusals_past_the_limits_become_one_aggregate_and_successes_never_do() {
    let m = crate::metrics::Metrics::new();
    let a = Audit::open(100, None, &m)
        .expect("in memory")
        .limited(RefusalLimits {
            per_source: 2,
            total: 100,
            window: Duration::from_secs(60),
        });
    let t0 = Instant::now();
    for port in 0..10 {
        let e = Event::new(Action::Open, false)
            .reason("cidr_blocked")
            .connector("ad")
            .source(peer(&format!("10.0.0.1:{}", 1000 + port)));
        a.record_at(e, t0);
    }
    // Successes from the same source: never limited.
    for _ in 0..5 {
        let e = Event::new(Action::TunnelAuth, true).source(peer("10.0.0.1:9"));
        a.record_at(e, t0);
    }
    let refused = AuditFilter {
        success: Some(false),
        ..Default::default()
    };
    assert_eq!(a.query(&refused).len(), 2, "two of their own");
    assert_eq!(a.len(), 7);
    assert_eq!(
        metric(&m, "nowconnect_audit_aggregated_total{action=\"open\"}"),
        8
    );
    // The next record after the window closes writes the aggregate first.
    a.record_at(
        Event::new(Action::PolicyToggled, true).actor("portal:ops"),
        t0 + Duration::from_secs(61),
    );
    let all = a.query(&AuditFilter::default());
    let agg = &all[all.len() - 2];
    assert_eq!(agg.more, Some(8));
    assert_eq!((agg.action, agg.success), (Action::Open, false));
    assert_eq!(agg.reason.as_deref(), Some("cidr_blocked"));
    assert_eq!(agg.source.as_deref(), Some("10.0.0.1"));
    assert_eq!(
        agg.detail.as_deref(),
        Some("8 more refused from 10.0.0.1 in the last minute")
    );
    assert_eq!(all[all.len() - 1].action, Action::PolicyToggled);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    // A new window, a new budget; closing it early (shutdown) writes what it folded.
    let t1 = t0 + Duration::from_secs(62);
    for _ in 0..3 {
        a.record_at(
            Event::new(Action::Open, false)
                .reason("cidr_blocked")
                .source(peer("10.0.0.1:1")),
            t1,
        );
    }
    a.close();
    let last = a.newest(&AuditFilter::default(), 1).remove(0);
    assert_eq!(last.more, Some(1));
    assert_eq!(
        metric(
            &m,
            "nowconnect_audit_records_total{action=\"open\",result=\"failure\"}"
        ),
        2 + 1 + 2 + 1,
        "records written: not the folded ones"
    );
}

/// A disk that writes a line only when the test lets it (and says when one is waiting).
struct Gated {
    entered: Sender<()>,
    gate: Receiver<()>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sink for Gated {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let _ = self.entered.try_send(());
        let _ = self.gate.recv();
        let text = String::from_utf8_lossy(line).into_owned();
        self.lines.lock().expect("lines").push(text);
        Ok(())
    }
    fn name(&self) -> String {
        "gated".to_owned()
    }
}

#[test]
fn a_full_queue_drops_refusal_lines_but_successes_wait_for_room() {
    let m = crate::metrics::Metrics::new();
    let (entered_tx, entered) = bounded(100);
    let (open, gate) = bounded(100);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Gated {
        entered: entered_tx,
        gate,
        lines: lines.clone(),
    };
    let a = Arc::new(Audit::with_sink(Box::new(sink), 2, &m));
    let refusal = |n: u16| {
        Event::new(Action::TunnelAuth, false)
            .reason("expired")
            .source(peer(&format!("10.0.0.{n}:1")))
    };
    a.record(refusal(1));
    entered.recv().expect("the writer holds the first line");
    a.record(refusal(2));
    a.record(refusal(3));
    // The queue (2) is full: a refusal's line is dropped at once; the record stays in memory.
    a.record(refusal(4));
    let dropped = |reason| {
        metric(
            &m,
            &format!("nowconnect_audit_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(dropped("queue_full"), 1);
    assert_eq!(a.len(), 4);
    // A success waits for room, bounded: on a stalled disk it gives up after WRITER_WAIT.
    let started = Instant::now();
    a.record(Event::new(Action::TunnelAuth, true).agent("stalled"));
    assert!(started.elapsed() >= WRITER_WAIT, "{:?}", started.elapsed());
    assert_eq!((dropped("queue_full"), dropped("writer_stalled")), (1, 1));
    // A slow disk (one line per 20 ms): the success waits and gets its line.
    let feeder = std::thread::spawn(move || {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(20));
            let _ = open.send(());
        }
    });
    a.record(Event::new(Action::PolicyToggled, true).actor("portal:ops"));
    a.close();
    feeder.join().expect("feeder");
    let lines = lines.lock().expect("lines").clone();
    assert!(lines.iter().any(|l| l.contains("portal:ops")), "{lines:?}");
    for n in 1..=3 {
        assert!(lines.iter().any(|l| l.contains(&format!("10.0.0.{n}:1"))));
    }
    assert!(!lines.iter().any(|l| l.contains("10.0.0.4:1")));
    assert_eq!(
        dropped("writer_stalled"),
        1,
        "the success waited, was not dropped"
    );
}
