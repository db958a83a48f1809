//! The `logging` section: the tracing filter and the output format.

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
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        c.bad(
            "logging.level (NC_LOG_LEVEL, --log-level)",
            format!("`{}` is not a log level or filter", printable(&level)),
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
