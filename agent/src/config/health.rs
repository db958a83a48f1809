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
    let host = parse_host(
        c,
        "health.host (NC_HEALTH_HOST, --health-host)",
        l.health_host.as_deref(),
        IpAddr::from([0, 0, 0, 0]),
    );
    (host, l.health_port.unwrap_or(DEFAULT_HEALTH_PORT))
}

/// A listening host: an IP address (IPv6 with or without brackets), `default` when absent; a
/// bad value is reported under `key` (and `default` stands in, so validation goes on).
pub(super) fn parse_host(
    c: &mut Collector,
    key: &str,
    value: Option<&str>,
    default: IpAddr,
) -> IpAddr {
    let Some(h) = value.map(str::trim) else {
        return default;
    };
    match h
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip,
        Err(_) => {
            c.bad(key, format!("`{}` is not an IP address", printable(h)));
            default
        }
    }
}
