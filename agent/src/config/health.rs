//! The `health` section: where the health listener (`OK` / `READY`) binds.

use std::net::IpAddr;

use super::check::printable;
use super::collector::Collector;
use super::layer::Layer;

/// Default health listener, as in the reference agent.
pub const DEFAULT_HEALTH_HOST: &str = "0.0.0.0";
pub const DEFAULT_HEALTH_PORT: u16 = 8090;

/// `health.host` and `health.port` (port 0: any free port).
pub(super) fn validate_health(c: &mut Collector, l: &Layer) -> (IpAddr, u16) {
    let host = match l.health_host.as_deref().map(str::trim) {
        None => IpAddr::from([0, 0, 0, 0]),
        Some(h) => match h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => ip,
            Err(_) => {
                c.bad(
                    "health.host (NC_HEALTH_HOST, --health-host)",
                    format!("`{}` is not an IP address", printable(h)),
                );
                IpAddr::from([0, 0, 0, 0])
            }
        },
    };
    (host, l.health_port.unwrap_or(DEFAULT_HEALTH_PORT))
}
