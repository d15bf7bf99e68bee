//! What the benchmarks share: how a figure is summarised over runs, the executor that runs
//! nothing (`noop`), and a throwaway PostgreSQL cluster (`pg`).

pub mod noop;
pub mod pg;

/// The median: the figure the benchmarks report, robust to one noisy run.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}
