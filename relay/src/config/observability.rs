//! The `observability` section: the metrics port and the default log filter.

use super::collector::Collector;
use super::raw::RawObservability;

#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilityConfig {
    /// Separate port for `/healthz`, `/readyz`, `/metrics` on `tunnel.host`; `None`: same as `/tunnel`.
    pub metrics_port: Option<u16>,
    /// Default `tracing` filter (`NC_LOG_LEVEL` wins).
    pub log_level: String,
}

/// `tunnel_port` is `tunnel.port` as written (`None` when the default applies).
pub(super) fn validate_observability(
    c: &mut Collector,
    o: RawObservability,
    tunnel_port: Option<u16>,
) -> ObservabilityConfig {
    let log_level = o.log_level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        c.bad(
            "observability.log_level",
            format!("`{log_level}` is not a log level or filter (e.g. info, debug)"),
        );
    }
    if let (Some(mp), Some(tp)) = (o.metrics_port, tunnel_port) {
        if mp != 0 && mp == tp {
            c.bad(
                "observability.metrics_port",
                "must differ from tunnel.port (omit it to serve metrics on the tunnel port)",
            );
        }
    }
    ObservabilityConfig {
        metrics_port: o.metrics_port,
        log_level,
    }
}
