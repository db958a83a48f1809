//! `/metrics`: the gauges read at scrape time, then the registry's text.

use crate::Shared;

/// The gauges read at scrape time: readiness, and the agents serving each configured connector
/// (the connectors of the running configuration only, so a reload that removes one drops its
/// series).
fn sample_gauges(shared: &Shared) {
    let m = &shared.metrics;
    m.relay_ready.set(i64::from(shared.is_ready()));
    let serving = shared.registry.snapshot();
    m.connector_agents.clear();
    for l in &shared.cfg().listeners {
        for connector in l.connectors() {
            let n = serving
                .iter()
                .find(|(c, _)| *c == connector)
                .map_or(0, |(_, n)| *n);
            m.connector_agents
                .get_or_create(&crate::metrics::ConnectorLabel {
                    connector: connector.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    sample_targets(shared);
}

/// `nowconnect_connector_targets`: what the agents reported (STATUS), summed per configured
/// connector and state; connectors without a report have no series (bounded: two series per
/// configured connector).
fn sample_targets(shared: &Shared) {
    let m = &shared.metrics;
    m.connector_targets.clear();
    let cfg = shared.cfg();
    let mut sums: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    // The tunnel an agent's new streams go to: an overlapping older tunnel (token refresh) or
    // one on standby would count the same hosts twice.
    let rows = shared.registry.rows();
    for row in rows.iter().filter(|r| r.serving) {
        for (connector, up, down) in row.info.targets.counts() {
            let Some(name) = cfg
                .listeners
                .iter()
                .flat_map(|l| l.connectors())
                .find(|c| *c == connector)
            else {
                continue;
            };
            let e = sums.entry(name).or_default();
            e.0 += up;
            e.1 += down;
        }
    }
    for (connector, (up, down)) in sums {
        for (state, n) in [("up", up), ("down", down)] {
            m.connector_targets
                .get_or_create(&crate::metrics::TargetStateLabels {
                    connector: connector.to_owned(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Samples the scrape-time gauges and renders every metric.
pub fn render(shared: &Shared) -> String {
    sample_gauges(shared);
    shared.metrics.render()
}
