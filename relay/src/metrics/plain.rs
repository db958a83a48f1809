//! A counter exposed under its registered name, without the `_total` suffix.
//!
//! The reference's catalog names four counters without the suffix (`nowconnect_fin_sent`,
//! `nowconnect_fin_recv`, `nowconnect_rst_sent`, `nowconnect_rst_recv`), and the boards
//! operators bring query exactly those names. prometheus-client appends `_total` to every sample
//! of a `Counter`; this type keeps the counter's `# TYPE ... counter` line but writes its sample
//! the way a gauge's is written (name as registered, then the value).

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A monotonic counter whose sample is named exactly as registered.
#[derive(Debug, Clone, Default)]
pub struct PlainCounter(Counter);

impl PlainCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The gauge encoder writes `name{labels} value` with no suffix; the value only grows.
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn sample_has_no_total_suffix_and_type_stays_counter() {
        let mut registry = Registry::default();
        let c = PlainCounter::default();
        registry.register("nowconnect_fin_sent", "FIN frames sent", c.clone());
        c.inc();
        c.inc();
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("# TYPE nowconnect_fin_sent counter\n"),
            "{text}"
        );
        assert!(text.contains("\nnowconnect_fin_sent 2\n"), "{text}");
        assert!(!text.contains("nowconnect_fin_sent_total"), "{text}");
    }
}
