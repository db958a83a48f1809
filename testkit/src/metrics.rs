//! Reading an OpenMetrics page (what a relay's `/metrics` renders) in tests.

/// The value of the first sample whose line starts with `series` (a name, or a name with its
/// labels as rendered, e.g. `nowconnect_rst_sent{code="flow_control"}`); 0 when absent.
/// Gauges and counters alike, rounded down.
pub fn value(page: &str, series: &str) -> u64 {
    page.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_series_and_its_value() {
        let page = "# HELP x_total X\nx_total{a=\"1\"} 3\nx_total{a=\"2\"} 5\ng 2.5\n";
        assert_eq!(value(page, "x_total{a=\"2\"}"), 5);
        assert_eq!(value(page, "g "), 2);
        assert_eq!(value(page, "missing"), 0);
    }
}
