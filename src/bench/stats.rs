//! Percentiles and summaries of latency samples.

/// Summary of a set of samples (same unit as the samples).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The `p`-th percentile of sorted samples, nearest rank on `(n - 1) * p` (as the team's
/// `netbench` computes it, so our figures and the harness's compare). NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Sorts `samples` and summarises them.
pub fn summarize(samples: &mut [f64]) -> Summary {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let avg = if n == 0 {
        f64::NAN
    } else {
        samples.iter().sum::<f64>() / n as f64
    };
    Summary {
        n,
        avg,
        p50: percentile(samples, 50.0),
        p99: percentile(samples, 99.0),
        p999: percentile(samples, 99.9),
        max: samples.last().copied().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_hundred() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = summarize(&mut v);
        assert_eq!(s.n, 100);
        assert_eq!(s.p50, 51.0); // round(0.5 * 99) = 50 -> the 51st value
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        assert!((s.avg - 50.5).abs() < 1e-9);
    }

    #[test]
    fn empty_is_nan() {
        let s = summarize(&mut []);
        assert_eq!(s.n, 0);
        assert!(s.p50.is_nan() && s.max.is_nan());
    }
}
