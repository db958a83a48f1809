//! The `audit` section: the audit trail's file and its rotation, and the limits on records of
//! refusals.

use std::path::Path;
use std::time::Duration;

use super::collector::Collector;
use super::raw::RawAudit;
use crate::audit::{AuditFileConfig, RefusalLimits};

const DEFAULT_AUDIT_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_AUDIT_KEEP: usize = 3;

/// Most refusal records a window may allow (more is no limit at all).
const MAX_REFUSALS: u32 = 1_000_000;

/// The file (`None` without `audit.file` and `state_dir`: records then live in memory and the
/// log only) and the refusal limits.
pub(super) fn validate_audit(
    c: &mut Collector,
    au: RawAudit,
    state_dir: Option<&Path>,
) -> (Option<AuditFileConfig>, RefusalLimits) {
    let d = RefusalLimits::default();
    let mut count = |key: &str, v: Option<u32>, default: u32| {
        let v = v.unwrap_or(default);
        if v > MAX_REFUSALS {
            c.bad(key, format!("must be between 0 and {MAX_REFUSALS}"));
        }
        v
    };
    let per_source = count(
        "audit.max_refusals_per_source",
        au.max_refusals_per_source,
        d.per_source,
    );
    let total = count("audit.max_refusals_total", au.max_refusals_total, d.total);
    let window_sec = au.refusal_window_sec.unwrap_or(d.window.as_secs());
    if !(1..=3600).contains(&window_sec) {
        c.bad("audit.refusal_window_sec", "must be between 1 and 3600");
    }
    let limits = RefusalLimits {
        per_source,
        total,
        window: Duration::from_secs(window_sec.clamp(1, 3600)),
    };
    let max_bytes = au.max_file_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES);
    if max_bytes < 4096 {
        c.bad("audit.max_file_bytes", "must be at least 4096");
    }
    let keep = au.keep_files.unwrap_or(DEFAULT_AUDIT_KEEP);
    if keep == 0 || keep > 100 {
        c.bad("audit.keep_files", "must be between 1 and 100");
    }
    let path = au
        .file
        .filter(|f| !f.as_os_str().is_empty())
        .or_else(|| state_dir.map(|d| d.join("audit.jsonl")));
    let file = path.map(|path| AuditFileConfig {
        path,
        max_bytes,
        keep,
    });
    (file, limits)
}
