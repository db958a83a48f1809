//! Feeds the dashboard's traffic ring ([`crate::history`]) from the metrics: a sample every
//! [`SAMPLE_EVERY`](crate::history::SAMPLE_EVERY) of each running listener's connector counters
//! and the refused authentications. Reads atomics only; never on the data path.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::history::{Counts, Snapshot, SAMPLE_EVERY};
use crate::metrics::{BytesLabels, ConnectorLabel, C2P, P2C};
use crate::Shared;

/// The counters now.
pub(crate) fn snapshot(shared: &Shared) -> Snapshot {
    let m = &shared.metrics;
    let names: BTreeSet<String> = shared
        .listeners
        .bound()
        .into_iter()
        .flat_map(|l| l.connectors)
        .collect();
    let connectors = names
        .into_iter()
        .map(|connector| {
            let bytes = |direction| {
                m.tcp_bytes
                    .get_or_create(&BytesLabels {
                        direction,
                        connector: connector.clone(),
                    })
                    .get()
            };
            let counts = Counts {
                bytes_c2a: bytes(C2P),
                bytes_a2c: bytes(P2C),
                streams: m
                    .tcp_connections
                    .get_or_create(&ConnectorLabel {
                        connector: connector.clone(),
                    })
                    .get(),
            };
            (Arc::<str>::from(connector), counts)
        })
        .collect();
    Snapshot::new(connectors, m.auth_refusals.get())
}

/// Samples until the relay stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.history.record(crate::unix_ms(), snapshot(&shared));
    }
}
