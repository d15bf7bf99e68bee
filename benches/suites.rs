//! Suites of many programs through the real server: the rows of the evaluation-workload issue.
//!
//! 8. **One suite of 1,000 distinct Python programs** (a function and a few asserts each, a
//!    tenth of them failing, in 100 groups of 10 with pass@1 and pass@10), from the submit until
//!    the batch is done, every verdict as expected. Limit: the same 1,000 programs as bare
//!    `python3 -c PROGRAM` subprocesses, as many at a time as there are cores. Goal: ratio ≥ 0.85.
//!    Beside it, the same suite to a server that runs its programs as plain subprocesses
//!    (`--sandbox none`): how much of kiln's time over bare is the sandbox's, and how much the
//!    rest of kiln's work per job. No goal: it is a development mode, never a deployment.
//! 9. **The same programs as 1,000 single jobs** submitted by [`server::CLIENTS`] clients, until
//!    the last terminal event is in the feed. Same limit. Goal: ratio ≥ 0.8.
//! 10. **A suite of 10,000 programs of ~4 KB as an NDJSON stream** (~40 MB), from the first byte
//!     sent until the `202`, to a server with no workers (so that only the upload is timed).
//!     Limit: raw SQLite inserting the same rows (a job row with its code and a queued event per
//!     case) in one durable transaction on the same disk. Goal: within 2× of it. And the server's
//!     peak resident memory over its life until then (`VmHWM`): below 64 MiB.
//!
//! Each figure and its limit are measured alternately, `KILN_BENCH_RUNS` (3) times; the medians
//! and their ratio are reported. Rows go to `target/bench-suites.json` (see `benches/report`).
//! `KILN_BENCH_ROWS=10` measures only those rows (with their limits; rows 8 and 9 share theirs),
//! for profiling one of them, as in `benches/queue.rs`. Needs root, as the sandbox does.

mod common;
mod report;
mod server;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use report::{Better, Goal, Row};
use reqwest::StatusCode;
use rusqlite::Connection;
use serde_json::{Value, json};
use server::{Server, scratch};
use tokio::runtime::Runtime;

/// Workers of the server, and subprocesses at a time of the limit: the cores.
const PARALLELISM: usize = 2;
const PYTHON: &str = "/usr/bin/python3";
/// Programs per measurement, before `KILN_BENCH_QUICK`.
const PROGRAMS: usize = 1000;
/// Samples per group (problem).
const SAMPLES: usize = 10;
/// Cases of row 10, before `KILN_BENCH_QUICK`, and the size of each one's code.
const STREAMED: usize = 10_000;
const STREAMED_CODE_BYTES: usize = 4096;
/// Far longer than either figure takes: reaching it means the server is stuck.
const DEADLINE: Duration = Duration::from_secs(600);

fn main() {
    let runs = report::runs();
    let count = report::size(PROGRAMS);
    let programs: Vec<String> = (0..count).map(program).collect();
    let tokio = Runtime::new().expect("tokio runtime");
    println!(
        "kiln suites bench: {runs} runs of {count} Python programs, {PARALLELISM} workers vs \
         {PARALLELISM} bare subprocesses at a time"
    );
    let wanted = report::selected("KILN_BENCH_ROWS");
    let (mut suite, mut single, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let mut unsandboxed = Vec::new();
    let (mut upload, mut inserts, mut peak) = (Vec::new(), Vec::new(), Vec::new());
    let streamed = report::size(STREAMED);
    let body = if wanted("10") {
        ndjson_suite(streamed)
    } else {
        Vec::new()
    };
    for run in 1..=runs {
        if wanted("10") {
            let raw = raw_insert_seconds(streamed);
            let (took, peak_mib) = tokio.block_on(upload_seconds(&body));
            println!(
                "run {run}: {streamed}-case NDJSON suite ({:.1} MB) accepted in {took:.2} s vs \
                 raw SQLite {raw:.2} s, server peak RSS {peak_mib:.1} MiB",
                body.len() as f64 / 1e6
            );
            upload.push(took);
            inserts.push(raw);
            peak.push(peak_mib);
        }
        if !(wanted("8") || wanted("9")) {
            continue;
        }
        let limit = bare_seconds(&programs);
        bare.push(limit);
        if wanted("8") {
            let as_suite = tokio.block_on(suite_seconds(&programs, Sandboxing::Full));
            let plain = tokio.block_on(suite_seconds(&programs, Sandboxing::None));
            println!(
                "run {run}: bare {limit:.2} s, one suite {as_suite:.2} s ({:.2}), unsandboxed \
                 {plain:.2} s ({:.2})",
                limit / as_suite,
                limit / plain
            );
            suite.push(as_suite);
            unsandboxed.push(plain);
        }
        if wanted("9") {
            let as_jobs = tokio.block_on(single_jobs_seconds(&programs));
            println!(
                "run {run}: bare {limit:.2} s, single jobs {as_jobs:.2} s ({:.2})",
                limit / as_jobs
            );
            single.push(as_jobs);
        }
    }
    let limit_name = format!("bare `python3 -c` of the same programs, {PARALLELISM} at a time");
    let rows = [
        (!suite.is_empty()).then(|| {
            Row::measured(
                8,
                format!(
                    "one suite of {count} distinct Python programs in groups with pass@k, \
                     {PARALLELISM} workers"
                ),
                "s",
                suite,
                Better::Lower,
                Some((limit_name.clone(), bare.clone())),
                Goal::RatioAtLeast(0.85),
            )
        }),
        (!unsandboxed.is_empty()).then(|| {
            Row::measured(
                8,
                format!(
                    "the same suite, programs unsandboxed (`--sandbox none`), {PARALLELISM} \
                     workers"
                ),
                "s",
                unsandboxed,
                Better::Lower,
                Some((limit_name.clone(), bare.clone())),
                Goal::None,
            )
        }),
        (!single.is_empty()).then(|| {
            Row::measured(
                9,
                format!(
                    "the same programs as {count} single jobs, {} clients submitting",
                    server::CLIENTS
                ),
                "s",
                single,
                Better::Lower,
                Some((limit_name, bare)),
                Goal::RatioAtLeast(0.8),
            )
        }),
        (!upload.is_empty()).then(|| {
            Row::measured(
                10,
                format!("a {streamed}-case NDJSON suite of ~4 KB programs, submit to 202"),
                "s",
                upload,
                Better::Lower,
                Some((
                    "raw SQLite inserts of its job and event rows, one transaction".to_owned(),
                    inserts,
                )),
                Goal::Within(2.0),
            )
        }),
        (!peak.is_empty()).then(|| {
            Row::measured(
                10,
                "server peak RSS until that suite's 202",
                "MiB",
                peak,
                Better::Lower,
                None,
                Goal::Below(64.0),
            )
        }),
    ];
    let rows: Vec<Row> = rows.into_iter().flatten().collect();
    report::write("suites", &rows);
}

/// Sample `i`: a function of its own and asserts on it; every tenth sample is wrong, so its
/// asserts fail as a generated program's would.
fn program(i: usize) -> String {
    let wrong = usize::from(i % 10 == 3);
    format!(
        "def solve_{i}(xs):\n    \
             total = {wrong}\n    \
             for x in xs:\n        \
                 total += x * x\n    \
             return total\n\n\
         assert solve_{i}([]) == 0\n\
         assert solve_{i}([1, 2, 3]) == 14\n\
         assert solve_{i}(list(range({i} % 50 + 10))) == sum(x * x for x in range({i} % 50 + 10))\n"
    )
}

fn expected_verdict(i: usize) -> &'static str {
    if i % 10 == 3 {
        "runtime_error"
    } else {
        "passed"
    }
}

/// The limit: every program as `python3 -c PROGRAM`, [`PARALLELISM`] at a time; seconds.
fn bare_seconds(programs: &[String]) -> f64 {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLELISM {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(code) = programs.get(i) else { break };
                    let status = Command::new(PYTHON)
                        .args(["-c", code])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("start python3");
                    assert_eq!(
                        status.success(),
                        expected_verdict(i) == "passed",
                        "bare program {i}: {status}"
                    );
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// How a server runs its programs: in kiln's sandbox, as deployed, or as plain subprocesses.
#[derive(Clone, Copy)]
enum Sandboxing {
    Full,
    None,
}

fn start_server(sandboxing: Sandboxing) -> (Server, tempfile::TempDir) {
    let dir = scratch();
    let workers = PARALLELISM.to_string();
    let mut args = vec!["--workers", &workers];
    if let Sandboxing::None = sandboxing {
        args.extend(["--sandbox", "none"]);
    }
    let server = Server::start_in(dir.path(), &args);
    (server, dir)
}

/// Row 8: the programs as one suite, from its submit until it is done; seconds.
async fn suite_seconds(programs: &[String], sandboxing: Sandboxing) -> f64 {
    let (server, _dir) = start_server(sandboxing);
    let client = reqwest::Client::new();
    let cases: Vec<Value> = programs
        .iter()
        .enumerate()
        .map(|(i, code)| {
            json!({"name": format!("sample {i}"), "group": format!("problem {}", i / SAMPLES),
                   "code": code})
        })
        .collect();
    let suite = json!({"runtime": "python", "pass_at_k": [1, SAMPLES], "cases": cases});
    let start = Instant::now();
    let response = client
        .post(format!("{}/v1/batches", server.url))
        .json(&suite)
        .send()
        .await
        .expect("POST /v1/batches");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("JSON answer");
    let id = accepted["id"].as_str().expect("batch id");
    let batch = loop {
        assert!(start.elapsed() < DEADLINE, "the suite did not end in time");
        let batch =
            server::get_json(&client, &format!("{}/v1/batches/{id}?wait=30", server.url)).await;
        if batch["done"] == true {
            break batch;
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let failing = programs
        .iter()
        .enumerate()
        .filter(|&(i, _)| expected_verdict(i) != "passed")
        .count();
    assert_eq!(batch["passed"], programs.len() - failing, "{batch}");
    assert_eq!(batch["by_verdict"]["runtime_error"], failing, "{batch}");
    elapsed
}

/// Row 9: the programs as single jobs, [`server::CLIENTS`] clients submitting, until every job's
/// terminal event is in the feed; seconds.
async fn single_jobs_seconds(programs: &[String]) -> f64 {
    let (server, _dir) = start_server(Sandboxing::Full);
    let url = server.url.clone();
    let client = reqwest::Client::new();
    let bodies: Arc<Vec<String>> = Arc::new(
        programs
            .iter()
            .map(|code| json!({"runtime": "python", "code": code}).to_string())
            .collect(),
    );
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..server::CLIENTS)
        .map(|_| {
            let (client, url, next, bodies) =
                (client.clone(), url.clone(), next.clone(), bodies.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    server::submit(&client, &url, body).await;
                }
            })
        })
        .collect();
    let (mut cursor, mut ended, mut failed) = (0, 0, 0);
    while ended < programs.len() {
        assert!(
            start.elapsed() < DEADLINE,
            "only {ended} jobs ended in time"
        );
        let page = server::get_json(
            &client,
            &format!("{url}/v1/events?after={cursor}&limit=1000"),
        )
        .await;
        let events = page["events"].as_array().expect("events");
        for kind in events.iter().filter_map(|e| e["type"].as_str()) {
            ended += usize::from(server::TERMINAL_EVENTS.contains(&kind));
            failed += usize::from(kind == "job.failed");
        }
        cursor = page["next_after"].as_i64().expect("next_after");
        if events.len() < 1000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    for submitter in submitters {
        submitter.await.expect("a submitter");
    }
    let failing = (0..programs.len())
        .filter(|&i| expected_verdict(i) != "passed")
        .count();
    assert_eq!(
        failed, failing,
        "every wrong program, and only those, fails"
    );
    elapsed
}

/// Row 10's body: a header line, then `cases` distinct programs of about
/// [`STREAMED_CODE_BYTES`], one per line, in groups of [`SAMPLES`].
fn ndjson_suite(cases: usize) -> Vec<u8> {
    let mut body = json!({"runtime": "python", "pass_at_k": [1, SAMPLES]}).to_string();
    body.push('\n');
    for i in 0..cases {
        body.push_str(
            &json!({
                "name": format!("sample {i}"),
                "group": format!("problem {}", i / SAMPLES),
                "code": streamed_code(i),
            })
            .to_string(),
        );
        body.push('\n');
    }
    body.into_bytes()
}

/// Program `i` padded with a comment to about [`STREAMED_CODE_BYTES`], as a generated sample
/// with its prompt's docstring would be.
fn streamed_code(i: usize) -> String {
    let mut code = program(i);
    code.push_str("# ");
    while code.len() < STREAMED_CODE_BYTES {
        code.push_str("lorem ipsum dolor sit amet ");
    }
    code
}

/// Row 10: the suite streamed to a server without workers; seconds until its `202`, and the
/// server's peak RSS in MiB by then.
async fn upload_seconds(body: &[u8]) -> (f64, f64) {
    let dir = scratch();
    let server = Server::start_in(dir.path(), &["--workers", "0"]);
    let client = reqwest::Client::new();
    let body = body.to_vec();
    let start = Instant::now();
    let response = client
        .post(format!("{}/v1/batches", server.url))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("POST /v1/batches");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    let took = start.elapsed().as_secs_f64();
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    (took, peak_rss_mib(server.pid()))
}

/// Peak resident memory of process `pid` over its life, MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}

/// Row 10's limit: the suite's rows inserted by raw SQLite, WAL and `synchronous=FULL` as kiln
/// runs it, in one transaction: per case a job row holding its code and a queued event; seconds.
fn raw_insert_seconds(cases: usize) -> f64 {
    let dir = scratch();
    let mut db = Connection::open(dir.path().join("raw.db")).expect("open");
    db.pragma_update(None, "journal_mode", "WAL")
        .expect("journal_mode");
    db.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    db.execute_batch(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, batch_id TEXT, case_name TEXT, \
             case_group TEXT, runtime TEXT, code TEXT, status TEXT, created_at INTEGER);
         CREATE TABLE events (id INTEGER PRIMARY KEY, job_id TEXT, type TEXT, at INTEGER, \
             data TEXT);",
    )
    .expect("create");
    let codes: Vec<String> = (0..cases).map(streamed_code).collect();
    let start = Instant::now();
    let tx = db.transaction().expect("begin");
    {
        let mut job = tx
            .prepare("INSERT INTO jobs VALUES (?1, 'b', ?2, ?3, 'python', ?4, 'queued', 0)")
            .expect("prepare");
        let mut event = tx
            .prepare(
                "INSERT INTO events (job_id, type, at, data) VALUES (?1, 'job.queued', 0, '{}')",
            )
            .expect("prepare");
        for (i, code) in codes.iter().enumerate() {
            let id = format!("{i:036}");
            job.execute(rusqlite::params![
                id,
                format!("sample {i}"),
                format!("problem {}", i / SAMPLES),
                code
            ])
            .expect("insert a job");
            event.execute([&id]).expect("insert an event");
        }
    }
    tx.commit().expect("commit");
    start.elapsed().as_secs_f64()
}
