//! The `logging` section: the tracing filter and the output format.
//!
//! The filter is tracing-subscriber's [`Targets`] (prefix match on the event's target, no
//! regex engine in the binary), parsed here: comma-separated directives, each a level
//! (`info`, the default for every target), `target=level` (`nowconnect_agent::stream=debug`) or
//! a bare target (`nowconnect_agent`: everything from it). Levels: `trace`, `debug`, `info`,
//! `warn`, `error`, `off` or `0`..`5`, any case. Span and field filters (`target[span]=level`)
//! are refused with a reason.

use tracing_subscriber::filter::{LevelFilter, Targets};

use super::check::printable;
use super::collector::Collector;
use super::layer::Layer;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// `logging.level` (normalised) and `logging.format`.
pub(super) fn validate_logging(c: &mut Collector, l: &Layer) -> (String, LogFormat) {
    let level = normalise_level(l.log_level.as_deref().unwrap_or("info"));
    if let Err(why) = log_filter(&level) {
        c.bad(
            "logging.level (NC_LOG_LEVEL, --log-level)",
            format!(
                "`{}` is not a log level or filter: {why}",
                printable(&level)
            ),
        );
    }
    let format = match l
        .log_format
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("plain") | Some("text") | Some("") => LogFormat::Plain,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.bad(
                "logging.format (NC_LOG_FORMAT, --log-format)",
                format!("`{}` is not one of plain, json", printable(other)),
            );
            LogFormat::Plain
        }
    };
    (level, format)
}

/// Python-style level names of the reference (`INFO`, `WARNING`, `CRITICAL`) as tracing levels.
fn normalise_level(s: &str) -> String {
    match s.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".into(),
        "critical" | "fatal" => "error".into(),
        "" => "info".into(),
        other => other.to_owned(),
    }
}

/// The tracing filter of a (normalised) `logging.level`; see the module documentation.
pub fn log_filter(spec: &str) -> Result<Targets, String> {
    let mut filter = Targets::new();
    let mut any = false;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        any = true;
        if let Ok(level) = part.parse::<LevelFilter>() {
            filter = filter.with_default(level);
            continue;
        }
        let (target, level) = match part.split_once('=') {
            Some((t, l)) => {
                // tracing-subscriber reads an empty level as `error`: refuse it here.
                let level = Some(l.trim())
                    .filter(|l| !l.is_empty())
                    .and_then(|l| l.parse::<LevelFilter>().ok())
                    .ok_or_else(|| format!("`{}` is not a level", printable(l.trim())))?;
                (t.trim(), level)
            }
            None => (part, LevelFilter::TRACE),
        };
        let valid = !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
        if !valid {
            return Err(format!(
                "`{}` is not a target (module path; span and field filters are not supported)",
                printable(target)
            ));
        }
        filter = filter.with_target(target, level);
    }
    if !any {
        filter = filter.with_default(LevelFilter::INFO);
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn on(f: &Targets, target: &str, level: Level) -> bool {
        f.would_enable(target, &level)
    }

    #[test]
    fn a_level_applies_to_every_target() {
        let f = log_filter("debug").expect("valid");
        assert!(on(&f, "nowconnect_agent::stream", Level::DEBUG));
        assert!(on(&f, "rustls", Level::DEBUG));
        assert!(!on(&f, "nowconnect_agent", Level::TRACE));
        let f = log_filter("INFO").expect("valid");
        assert!(on(&f, "x", Level::INFO) && !on(&f, "x", Level::DEBUG));
        let f = log_filter("off").expect("valid");
        assert!(!on(&f, "x", Level::ERROR));
        let f = log_filter("4").expect("valid");
        assert!(on(&f, "x", Level::DEBUG) && !on(&f, "x", Level::TRACE));
    }

    #[test]
    fn directives_set_levels_per_target_prefix() {
        let f = log_filter("info, nowconnect_agent::stream=debug,").expect("valid");
        assert!(on(&f, "nowconnect_agent::stream", Level::DEBUG));
        assert!(!on(&f, "nowconnect_agent::tunnel", Level::DEBUG));
        assert!(on(&f, "nowconnect_agent::tunnel", Level::INFO));
        // Only a target: everything else is off, as with the relay's filter.
        let f = log_filter("nowconnect_agent=warn").expect("valid");
        assert!(on(&f, "nowconnect_agent::x", Level::WARN));
        assert!(!on(&f, "rustls", Level::ERROR));
        // A bare target: all of its events.
        let f = log_filter("warn,nowconnect_agent").expect("valid");
        assert!(on(&f, "nowconnect_agent", Level::TRACE));
        assert!(!on(&f, "tokio", Level::INFO));
    }

    #[test]
    fn empty_means_info() {
        let f = log_filter(" , ").expect("valid");
        assert!(on(&f, "x", Level::INFO) && !on(&f, "x", Level::DEBUG));
    }

    #[test]
    fn bad_filters_say_why() {
        for (spec, why) in [
            ("verbose=", "not a level"),
            ("nowconnect_agent=loud", "not a level"),
            ("nowconnect_agent[stream]=debug", "span and field filters"),
            ("=debug", "not a target"),
            ("a b", "not a target"),
        ] {
            let e = log_filter(spec).expect_err(spec);
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}
