//! The metrics of listeners that route by TLS server name (`route_by: sni`), registered with
//! the others by [`super::Metrics`]. The `listener` label is an operator-set listener name
//! (bounded by the configuration); a client's server name is never a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SniRejectLabels {
    pub listener: String,
    /// `no_sni`, `unknown_name`, `invalid`, `timeout` or `closed`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SniRoutedLabels {
    pub listener: String,
    pub connector: String,
    /// `exact`, `wildcard` or `default`.
    pub result: &'static str,
}

/// SNI routing outcomes.
#[derive(Debug, Default)]
pub struct SniMetrics {
    pub rejected: Family<SniRejectLabels, Counter>,
    pub routed: Family<SniRoutedLabels, Counter>,
}

impl SniMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "nowconnect_sni_rejected",
            "Clients of a route_by: sni listener closed before a stream, by reason: no_sni and \
             unknown_name (no route and no default), invalid (not a TLS ClientHello, or one \
             refused), timeout (ClientHello not complete within sni_peek_timeout_ms of accept), \
             closed (the client left first)",
            self.rejected.clone(),
        );
        registry.register(
            "nowconnect_sni_routed",
            "Clients of a route_by: sni listener routed to a connector, by how the server name \
             matched: exact, wildcard or default",
            self.routed.clone(),
        );
    }

    /// A client closed for `reason`.
    pub fn reject(&self, listener: &str, reason: &'static str) {
        self.rejected
            .get_or_create(&SniRejectLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// A client routed to `connector`.
    pub fn route(&self, listener: &str, connector: &str, result: &'static str) {
        self.routed
            .get_or_create(&SniRoutedLabels {
                listener: listener.to_owned(),
                connector: connector.to_owned(),
                result,
            })
            .inc();
    }
}
