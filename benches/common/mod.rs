//! What the benchmarks share: how a figure is summarised over runs.

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

/// One row of the benchmark table, in the shape every bench target writes and `scripts/bench`
/// merges: a figure, the physical limit it is compared with (measured in the same run), their
/// ratio, the goal and whether it was met, and each run's value.
#[allow(dead_code)]
#[derive(serde::Serialize)]
pub struct Row {
    pub row: u32,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub limit_name: String,
    pub limit: f64,
    pub ratio: f64,
    pub goal: &'static str,
    pub met: bool,
    pub runs: Vec<f64>,
}

/// Writes `rows` as a JSON array to `target/NAME` (or under `$CARGO_TARGET_DIR`) and returns
/// the path.
#[allow(dead_code)]
pub fn write_rows(name: &str, rows: &[Row]) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join(name);
    let text = serde_json::to_string_pretty(rows).expect("JSON");
    std::fs::write(&path, text + "\n").expect("write the JSON report");
    path
}
