//! Value checks that more than one section uses: names, day-bounded seconds, and echoing a
//! value safely in an error line.

use std::time::Duration;

use super::collector::Collector;

/// A name (agent id, connector) of at most `max` bytes, without control characters or commas.
pub(super) fn check_name(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("required, must not be empty".into());
    }
    if s.len() > max {
        return Err(format!("{} bytes long, at most {max}", s.len()));
    }
    if s.chars().any(|c| c.is_control() || c == ',') {
        return Err("must not contain control characters or commas".into());
    }
    Ok(())
}

/// `v` (or `default`) seconds, from 1 to a day; out of range is reported and `default` used.
pub(super) fn secs_up_to_a_day(
    c: &mut Collector,
    key: &str,
    v: Option<u64>,
    default: u64,
) -> Duration {
    match v.unwrap_or(default) {
        0 => {
            c.bad(key, "must be at least 1");
            Duration::from_secs(default)
        }
        s if s > 86_400 => {
            c.bad(key, "must be at most 86400 (one day)");
            Duration::from_secs(default)
        }
        s => Duration::from_secs(s),
    }
}

/// A value safe to echo in an error line: no control characters, bounded.
pub(super) fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}
