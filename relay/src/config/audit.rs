//! The `audit` section: the audit trail's file and its rotation.

use std::path::Path;

use super::collector::Collector;
use super::raw::RawAudit;
use crate::audit::AuditFileConfig;

const DEFAULT_AUDIT_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_AUDIT_KEEP: usize = 3;

/// `None` without `audit.file` and `state_dir` (records then live in memory and the log only).
pub(super) fn validate_audit(
    c: &mut Collector,
    au: RawAudit,
    state_dir: Option<&Path>,
) -> Option<AuditFileConfig> {
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
    path.map(|path| AuditFileConfig {
        path,
        max_bytes,
        keep,
    })
}
