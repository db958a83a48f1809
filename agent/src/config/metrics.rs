//! The `metrics` section: the optional Prometheus endpoint (`GET /metrics`). Off unless a port
//! is given; it binds to loopback unless told otherwise, since it is for a local scraper or an
//! operator's tunnel, not for the premise network at large.

use std::net::{IpAddr, SocketAddr};

use super::collector::Collector;
use super::layer::Layer;

/// Default metrics listener address: loopback only.
pub const DEFAULT_METRICS_HOST: &str = "127.0.0.1";

/// `metrics.host` and `metrics.port` (port absent: no endpoint; 0: any free port). A port equal
/// to the health port on an overlapping address could never bind, so it is refused here.
pub(super) fn validate_metrics(
    c: &mut Collector,
    l: &Layer,
    health: (IpAddr, u16),
) -> Option<SocketAddr> {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let host = super::health::parse_host(
        c,
        "metrics.host (NC_METRICS_HOST, --metrics-host)",
        l.metrics_host.as_deref(),
        loopback,
    );
    let port = l.metrics_port?;
    let (health_host, health_port) = health;
    let overlaps = host == health_host || host.is_unspecified() || health_host.is_unspecified();
    if port != 0 && port == health_port && overlaps {
        c.bad(
            "metrics.port (NC_METRICS_PORT, --metrics-port)",
            format!("{port} is the health port (health.port); pick another"),
        );
    }
    Some(SocketAddr::new(host, port))
}
