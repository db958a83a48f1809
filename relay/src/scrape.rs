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
}

/// Samples the scrape-time gauges and renders every metric.
pub fn render(shared: &Shared) -> String {
    sample_gauges(shared);
    shared.metrics.render()
}
