//! What the latency benchmarks share: how one run's latencies are summarised. Apart from
//! `common` because the sandbox benchmark measures rates only.

/// Percentiles of one run's latencies, in milliseconds.
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    pub fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).max(1) - 1];
        Percentiles {
            p50: rank(0.5),
            p99: rank(0.99),
        }
    }
}
