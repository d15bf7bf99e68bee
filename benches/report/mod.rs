//! The one shape every benchmark target reports in, so `scripts/bench` can merge them into one
//! table: a row of the benchmark issue's list, a figure, the physical limit measured in the same
//! run, how close the figure comes to it, the goal and whether it was met. Each target writes its
//! rows as a JSON array to `target/bench-NAME.json`; `benches/table.rs` reads them back.
//!
//! Also how long a benchmark runs: `KILN_BENCH_RUNS` (default 3) and `KILN_BENCH_QUICK=1`
//! (a tenth of the sizes), for trying a bench on a busy machine, and what part of it runs.

// Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use crate::common::median;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

/// How many times each figure and its limit are measured; the medians are reported.
pub fn runs() -> usize {
    std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .filter(|&runs| runs > 0)
        .unwrap_or(3)
}

/// Whether `KILN_BENCH_QUICK=1` asks for a tenth of the sizes.
pub fn quick() -> bool {
    std::env::var_os("KILN_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// `full`, or a tenth of it (at least 1) when [`quick`].
pub fn size(full: usize) -> usize {
    if quick() { (full / 10).max(1) } else { full }
}

/// What the comma-separated list in `variable` selects (rows, runtimes): everything when it is
/// unset or empty, for tuning one part of a bench without running the rest.
pub fn selected(variable: &str) -> impl Fn(&str) -> bool {
    let list = std::env::var(variable).unwrap_or_default();
    move |name| list.trim().is_empty() || list.split(',').any(|item| item.trim() == name)
}

/// Which way a figure improves: this decides how its ratio to the limit is taken, so that a
/// ratio is always the fraction of the limit reached (1 is at the limit, lower is further away).
#[derive(Clone, Copy)]
pub enum Better {
    /// A rate: ratio = figure / limit.
    Higher,
    /// A time or a size: ratio = limit / figure.
    Lower,
}

/// What a figure must reach.
#[derive(Clone, Copy)]
pub enum Goal {
    None,
    /// The ratio to the limit must be at least this.
    RatioAtLeast(f64),
    /// The figure itself must be below this, in its unit.
    Below(f64),
    /// The figure must be within this factor of the limit: ratio ≥ 1 / factor.
    Within(f64),
}

/// One row of the table, as JSON: the format `benches/queue.rs` writes too.
#[derive(Serialize)]
pub struct Row {
    pub row: u32,
    pub figure: String,
    /// The median of `runs`.
    pub value: f64,
    pub unit: &'static str,
    pub limit_name: Option<String>,
    /// The median of `limit_runs`.
    pub limit: Option<f64>,
    pub ratio: Option<f64>,
    pub goal: Option<String>,
    pub met: Option<bool>,
    pub runs: Vec<f64>,
    pub limit_runs: Vec<f64>,
}

impl Row {
    /// A figure with no limit to compare with (a memory size, a count of bytes).
    pub fn plain(row: u32, figure: impl Into<String>, unit: &'static str, runs: Vec<f64>) -> Row {
        Row::measured(row, figure, unit, runs, Better::Lower, None, Goal::None)
    }

    /// A figure beside its limit (`name`, measured once per run alongside it), and its goal.
    pub fn measured(
        row: u32,
        figure: impl Into<String>,
        unit: &'static str,
        runs: Vec<f64>,
        better: Better,
        limit: Option<(String, Vec<f64>)>,
        goal: Goal,
    ) -> Row {
        let value = median(&runs);
        let (limit_name, limit_runs) = limit.unzip();
        let limit_runs = limit_runs.unwrap_or_default();
        let limit = (!limit_runs.is_empty()).then(|| median(&limit_runs));
        let ratio = limit.map(|limit| match better {
            Better::Higher => value / limit,
            Better::Lower => limit / value,
        });
        let (goal, met) = match goal {
            Goal::None => (None, None),
            Goal::RatioAtLeast(at_least) => (
                Some(format!("ratio ≥ {at_least}")),
                ratio.map(|ratio| ratio >= at_least),
            ),
            Goal::Below(below) => (Some(format!("< {below} {unit}")), Some(value < below)),
            Goal::Within(factor) => (
                Some(format!("within {factor}× of the limit")),
                ratio.map(|ratio| ratio >= 1.0 / factor),
            ),
        };
        Row {
            row,
            figure: figure.into(),
            value,
            unit,
            limit_name,
            limit,
            ratio,
            goal,
            met,
            runs,
            limit_runs,
        }
    }
}

/// Prints the rows as a table and writes them to `target/bench-NAME.json` (under
/// `CARGO_TARGET_DIR` when set).
pub fn write(name: &str, rows: &[Row]) {
    let rows = serde_json::to_value(rows).expect("rows as JSON");
    print_table(rows.as_array().expect("an array"));
    let path = target_dir().join(format!("bench-{name}.json"));
    let text = serde_json::to_string_pretty(&rows).expect("rows as JSON");
    std::fs::write(&path, text + "\n").expect("write the JSON rows");
    println!("written to {}", path.display());
}

/// The target directory the bench was built in.
pub fn target_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_path_buf()
}

/// The rows as a Markdown table, the format of docs/benchmarks.md: `benches/table.rs` prints
/// every target's rows with this too.
pub fn print_table(rows: &[Value]) {
    println!();
    println!("| row | figure | value | limit, measured in the same run | ratio | goal | met |");
    println!("|---:|---|---:|---|---:|---|---|");
    for row in rows {
        let text = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
        let unit = text("unit");
        let value = row["value"]
            .as_f64()
            .map_or("—".to_owned(), |v| format!("{} {unit}", number(v)));
        let limit = match row["limit"].as_f64() {
            Some(limit) => format!("{} {unit} ({})", number(limit), text("limit_name")),
            None => "—".to_owned(),
        };
        let ratio = row["ratio"]
            .as_f64()
            .map_or("—".to_owned(), |r| format!("{r:.2}"));
        let met = match row["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        let goal = row["goal"].as_str().unwrap_or("—");
        let number = match &row["row"] {
            Value::String(rows) => rows.clone(),
            other => other.to_string(),
        };
        println!(
            "| {number} | {} | {value} | {limit} | {ratio} | {goal} | {met} |",
            text("figure"),
        );
    }
    println!();
}

/// Three significant figures or more, with thousands separated: 16,714; 61.3; 7.52; 0.905.
pub fn number(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let digits = format!("{:.0}", x.abs());
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        format!("{}{grouped}", if x < 0.0 { "-" } else { "" })
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
