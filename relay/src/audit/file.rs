//! The audit file: a size-rotated JSON-lines file, read back at start-up, appended to by one
//! writer thread fed through a bounded queue.
//!
//! The thread owns the file; nothing else touches it after start-up, so a slow or stalled
//! disk holds up only that thread, never the runtimes that relay traffic.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};
use prometheus_client::metrics::counter::Counter;
use tracing::warn;

use super::record::AuditRecord;

/// Lines longer than this in an audit file are skipped when it is read back (a record is far
/// smaller; a longer line is damage, not a record).
const MAX_LINE: usize = 16 * 1024;

/// Records waiting for the writer thread, at most. A record is at most a few KiB (every field
/// is cut), so the queue holds a few MiB at worst.
pub(super) const QUEUE: usize = 1024;

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

/// Where the writer thread puts lines (the file; a test double in unit tests).
pub(super) trait Sink: Send + 'static {
    /// Appends one line (ending in `\n`).
    fn append(&mut self, line: &[u8]) -> std::io::Result<()>;
    /// Names the sink in a log line.
    fn name(&self) -> String;
}

/// The append-only JSON-lines file.
#[derive(Debug)]
pub(super) struct FileSink {
    cfg: AuditFileConfig,
    file: File,
    size: u64,
}

pub(super) fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

pub(super) fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl FileSink {
    pub fn open(cfg: AuditFileConfig) -> std::io::Result<FileSink> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(FileSink { cfg, file, size })
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
}

impl Sink for FileSink {
    /// Rotates first when the line would not fit. One `write` per record, so a crash leaves at
    /// most one partial last line, which the reader skips.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn name(&self) -> String {
        self.cfg.path.display().to_string()
    }
}

/// Reads the newest `capacity` records back from the file and its rotations, in `seq` order.
/// Damaged lines are skipped and counted.
pub(super) fn read_back(cfg: &AuditFileConfig, capacity: usize) -> (VecDeque<AuditRecord>, usize) {
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
    // A record that waited for a full queue may sit a few lines after later ones.
    ring.make_contiguous().sort_by_key(|r| r.seq);
    (ring, skipped)
}

enum Msg {
    Record(Box<AuditRecord>),
    /// Answered once every record queued before it is written.
    Flush(Sender<()>),
}

/// The handle of the writer thread; the thread ends when this is dropped and the queue is
/// drained.
#[derive(Debug)]
pub(super) struct Writer {
    tx: Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Record(_) => "Record",
            Msg::Flush(_) => "Flush",
        })
    }
}

impl Writer {
    /// Starts the thread that appends to `sink`, counting failed appends in `errors`.
    pub fn spawn(
        sink: Box<dyn Sink>,
        queue: usize,
        errors: Option<Counter>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = bounded(queue);
        std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || write_all(sink, &rx, errors.as_ref()))?;
        Ok(Writer { tx })
    }

    /// Queues `rec` unless the queue is full (then hands it back).
    pub fn try_send(&self, rec: Box<AuditRecord>) -> Result<(), Box<AuditRecord>> {
        match self.tx.try_send(Msg::Record(rec)) {
            Ok(()) => Ok(()),
            Err(
                TrySendError::Full(Msg::Record(r)) | TrySendError::Disconnected(Msg::Record(r)),
            ) => Err(r),
            Err(_) => Ok(()),
        }
    }

    /// Queues `rec`, waiting up to `wait` for room; false when it could not.
    pub fn send_wait(&self, rec: Box<AuditRecord>, wait: Duration) -> bool {
        self.tx.send_timeout(Msg::Record(rec), wait).is_ok()
    }

    /// Waits (up to `wait` in all) until everything queued so far is written.
    pub fn flush(&self, wait: Duration) -> bool {
        let (ack, done) = bounded(1);
        let deadline = std::time::Instant::now() + wait;
        match self.tx.send_deadline(Msg::Flush(ack), deadline) {
            Ok(()) => done.recv_deadline(deadline).is_ok(),
            Err(SendTimeoutError::Timeout(_) | SendTimeoutError::Disconnected(_)) => false,
        }
    }
}

fn write_all(mut sink: Box<dyn Sink>, rx: &Receiver<Msg>, errors: Option<&Counter>) {
    // A write error is logged once until a write succeeds again.
    let mut failing = false;
    for msg in rx {
        let rec = match msg {
            Msg::Record(rec) => rec,
            Msg::Flush(ack) => {
                let _ = ack.try_send(());
                continue;
            }
        };
        let written = serde_json::to_vec(&rec)
            .map_err(std::io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                sink.append(&line)
            });
        match written {
            Ok(()) => failing = false,
            Err(e) => {
                if let Some(c) = errors {
                    c.inc();
                }
                if !failing {
                    warn!(file = %sink.name(), error = %e, "cannot append to the audit file; records stay in memory and in the log");
                    failing = true;
                }
            }
        }
    }
}
