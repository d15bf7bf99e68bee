//! The one table of every headline figure: merges the rows the bench targets wrote
//! (`target/bench-NAME.json`, see `benches/report`) in the order of the benchmark issue's list,
//! prints them as the Markdown table of docs/benchmarks.md, and writes them with the machine and
//! the date to `target/bench.json`. Not a benchmark itself: `scripts/bench` runs it last.
//!
//! `KILN_BENCH_TARGETS` names the targets that ran this time (space-separated; default all); a
//! target whose file is missing is reported as missing rows rather than failing the table, so a
//! partial run, or a target not written yet, still gives the rest.

mod common;
mod report;

use std::time::SystemTime;

use serde_json::{Value, json};

/// Every bench target and the rows of the list it measures.
const TARGETS: [(&str, &[u32]); 10] = [
    ("queue", &[1, 2, 7]),
    ("jobs", &[3, 4]),
    ("sandbox", &[3]),
    ("scale", &[5]),
    ("streams", &[4, 6]),
    ("suites", &[8, 9, 10]),
    ("runtimes", &[11]),
    ("compat", &[12]),
    ("pyclient", &[1, 8]),
    ("cluster", &[14, 15, 16]),
];

fn main() {
    let selected = std::env::var("KILN_BENCH_TARGETS").unwrap_or_default();
    let selected: Vec<&str> = selected.split_whitespace().collect();
    let dir = report::target_dir();
    let mut rows: Vec<Value> = Vec::new();
    let mut targets = serde_json::Map::new();
    for (name, numbers) in TARGETS {
        if !selected.is_empty() && !selected.contains(&name) {
            continue;
        }
        let path = dir.join(format!("bench-{name}.json"));
        let read = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Vec<Value>>(&text).map_err(|e| e.to_string()));
        match read {
            Ok(found) => {
                targets.insert(name.into(), json!("ok"));
                rows.extend(found);
            }
            Err(why) => {
                let numbers: Vec<String> = numbers.iter().map(u32::to_string).collect();
                let note = format!(
                    "missing: benches/{name}.rs left no {} ({why})",
                    path.display()
                );
                targets.insert(name.into(), json!(note));
                rows.push(json!({
                    "row": numbers.join(", "),
                    "figure": format!("**rows {} of benches/{name}.rs missing**", numbers.join(", ")),
                    "missing": note,
                }));
            }
        }
    }
    // Stable: within a row, each target's order.
    rows.sort_by_key(|row| {
        row["row"]
            .as_u64()
            .or_else(|| row["row"].as_str()?.split(',').next()?.trim().parse().ok())
            .unwrap_or(u64::MAX)
    });

    let machine = machine();
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    println!(
        "kiln benchmarks, {date}: {}, {} CPUs, Linux {}; median of {} runs{}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        report::runs(),
        if report::quick() {
            ", quick sizes (KILN_BENCH_QUICK)"
        } else {
            ""
        },
    );
    println!(
        "ratio: the fraction of the limit reached (figure/limit for rates, limit/figure for \
         times and sizes; 1 is at the limit)"
    );
    report::print_table(&rows);
    let goals: Vec<bool> = rows.iter().filter_map(|r| r["met"].as_bool()).collect();
    println!(
        "goals met: {} of {}",
        goals.iter().filter(|&&met| met).count(),
        goals.len()
    );
    for (name, state) in &targets {
        if state != "ok" {
            println!("{name}: {}", state.as_str().unwrap_or_default());
        }
    }

    let table = json!({
        "date": date,
        "machine": machine,
        "runs": report::runs(),
        "quick": report::quick(),
        "targets": targets,
        "rows": rows,
    });
    let path = dir.join("bench.json");
    let text = serde_json::to_string_pretty(&table).expect("the table as JSON");
    std::fs::write(&path, text + "\n").expect("write the table");
    println!("written to {}", path.display());
}

/// What the figures were measured on.
fn machine() -> Value {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split_once(':')?
                    .1
                    .trim()
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1048576.0);
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": memory_gib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
