//! The core figures of kiln, each beside the physical limit that bounds it, measured in the same
//! run on the same machine:
//!
//! 1. **Durable submits/s over HTTP** from 64 concurrent keep-alive clients (`wrk`, or an
//!    in-process client when `wrk` is missing), against the release server accepting only.
//!    Limit: raw SQLite inserts/s of the same job and `job.queued` event rows, same schema and
//!    pragmas, all in one transaction: what the disk and SQLite allow with no HTTP, no group
//!    commit and one fsync in all.
//! 2. **End-to-end jobs/s** for `sh` jobs running `true` on 2 workers, from the first submit until
//!    every job is terminal. Limit: bare spawns/s of `/bin/sh main.sh` from 2 threads.
//! 3. **submit→started latency** with idle workers (`started_at - created_at`, 1 ms resolution),
//!    and submit→terminal as the client sees it. No limit; the goal is a p50 under 5 ms.
//!
//! Why: these are the numbers the core issue closes on, and the machine they are taken on is
//! shared and noisy, so an absolute rate says little. Each figure and its limit are measured
//! alternately, 3 times, and the ratio of the medians is the number to compare between runs.
//!
//! Run it with `scripts/bench-core` (installs `wrk` first) or `cargo bench --bench core`. It prints
//! a table and writes the same figures as JSON to `target/bench-core.json`.

mod common;
mod latency;

use common::median;
use latency::Percentiles;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kiln::config::Policy;
use kiln::store::Store;
use reqwest::StatusCode;
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const RUNS: usize = 3;
/// Concurrent keep-alive clients submitting.
const CLIENTS: usize = 64;
const SUBMIT_BODY: &str = r#"{"runtime":"sh","code":"true"}"#;
/// How long each submit load lasts.
const LOAD: Duration = Duration::from_secs(5);
const RAW_INSERTS: usize = 50_000;
const E2E_JOBS: usize = 2_000;
/// Workers of the servers that run jobs, and threads of the bare-spawn limit: the 2 cores.
const PARALLELISM: usize = 2;
const LATENCY_JOBS: usize = 300;
/// Jobs in these tests take milliseconds; anything near this means the server is stuck.
const DEADLINE: Duration = Duration::from_secs(120);
const TERMINAL_EVENTS: [&str; 5] = [
    "job.succeeded",
    "job.failed",
    "job.timed_out",
    "job.cancelled",
    "job.error",
];

/// Submits `SUBMIT_BODY`, counts the answers by status, thread by thread, and prints the totals.
const WRK_SCRIPT: &str = r#"
wrk.method = "POST"
wrk.body = 'SUBMIT_BODY'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) accepted = 0; rejected = 0 end
function response(status, headers, body)
  if status == 202 then accepted = accepted + 1 else rejected = rejected + 1 end
end
function done(summary, latency, requests)
  local a, r = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("accepted"); r = r + t:get("rejected") end
  io.write(string.format("kiln-answers: accepted=%d rejected=%d\n", a, r))
end
"#;

fn main() {
    let runtime = Runtime::new().expect("tokio runtime");
    let use_wrk = Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let generator = if use_wrk {
        "wrk -t2 -c64 -d5s"
    } else {
        "in-process reqwest client, 64 tasks (wrk not installed)"
    };
    println!("kiln core bench: {RUNS} runs; submit load from {generator}");

    let mut submits = Figure::new(
        if use_wrk {
            "durable submits/s, HTTP, 64 clients (wrk)"
        } else {
            "durable submits/s, HTTP, 64 clients (in-process client)"
        },
        "raw SQLite inserts/s, 1 transaction",
    );
    let mut e2e = Figure::new(
        "end-to-end sh jobs/s, 2 workers",
        "bare spawns/s, 2 threads",
    );
    let mut started = Vec::new();
    let mut terminal = Vec::new();
    let mut rows_checks = Vec::new();
    for run in 1..=RUNS {
        let load = submit_load(&runtime, use_wrk);
        let inserts = raw_inserts();
        println!(
            "run {run}: {:.0} submits/s ({} answered 202, {} socket errors, {} rows in jobs) \
             vs {inserts:.0} raw inserts/s",
            load.rate, load.accepted, load.socket_errors, load.rows
        );
        rows_checks.push(json!({
            "accepted": load.accepted,
            "socket_errors": load.socket_errors,
            "rows": load.rows,
        }));
        submits.runs.push(load.rate);
        submits.limit_runs.push(inserts);
        let (jobs, spawns) = (end_to_end(&runtime), bare_spawns());
        println!("run {run}: {jobs:.0} jobs/s end to end vs {spawns:.0} bare spawns/s");
        e2e.runs.push(jobs);
        e2e.limit_runs.push(spawns);
        let latency = latency(&runtime);
        println!(
            "run {run}: submit->started p50 {:.0} ms, p99 {:.0} ms; submit->terminal p50 \
             {:.1} ms, p99 {:.1} ms",
            latency.started.p50, latency.started.p99, latency.terminal.p50, latency.terminal.p99
        );
        started.push(latency.started);
        terminal.push(latency.terminal);
    }

    let p50 = |runs: &[Percentiles]| runs.iter().map(|p| p.p50).collect::<Vec<_>>();
    let p99 = |runs: &[Percentiles]| runs.iter().map(|p| p.p99).collect::<Vec<_>>();
    let latencies = [
        ("submit→started p50, ms (1 ms resolution)", p50(&started)),
        ("submit→started p99, ms (1 ms resolution)", p99(&started)),
        ("submit→terminal p50, ms (client)", p50(&terminal)),
        ("submit→terminal p99, ms (client)", p99(&terminal)),
    ];
    let mut rows: Vec<Value> = vec![submits.to_json(), e2e.to_json()];
    for (name, runs) in latencies {
        rows.push(json!({"figure": name, "median": median(&runs), "runs": runs}));
    }
    print_table(&rows);
    println!("limits: {}; {}", submits.limit, e2e.limit);

    let report = json!({
        "runs": RUNS,
        "submit_load": generator,
        "submit_rows_check": rows_checks,
        "figures": rows,
    });
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("bench-core.json");
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    std::fs::write(&path, text + "\n").expect("write the JSON report");
    println!("written to {}", path.display());
}

/// A figure measured [`RUNS`] times, with its limit measured alongside.
struct Figure {
    name: &'static str,
    limit: &'static str,
    runs: Vec<f64>,
    limit_runs: Vec<f64>,
}

impl Figure {
    fn new(name: &'static str, limit: &'static str) -> Figure {
        Figure {
            name,
            limit,
            runs: Vec::new(),
            limit_runs: Vec::new(),
        }
    }

    fn to_json(&self) -> Value {
        let (figure, limit) = (median(&self.runs), median(&self.limit_runs));
        json!({
            "figure": self.name,
            "median": figure,
            "runs": self.runs,
            "limit": self.limit,
            "limit_median": limit,
            "limit_runs": self.limit_runs,
            "ratio": figure / limit,
        })
    }
}

fn print_table(rows: &[Value]) {
    let cell = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or(String::new(), |x| format!("{x:.digits$}"))
    };
    println!();
    println!("| figure | median | limit median | ratio |");
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row["figure"].as_str().unwrap_or_default(),
            cell(&row["median"], 1),
            cell(&row["limit_median"], 0),
            cell(&row["ratio"], 3),
        );
    }
    println!();
}

/// Where databases and work directories go: the target directory's disk, not a tmpfs, so fsync
/// costs what it costs for a real deployment.
fn scratch() -> TempDir {
    TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

/// The release server on a fresh database, stopped (SIGTERM, then SIGKILL) when dropped, panics
/// included.
struct Server {
    process: ServerProcess,
    url: String,
    dir: TempDir,
}

struct ServerProcess(Child);

impl Server {
    fn start(workers: usize) -> Server {
        let dir = scratch();
        let log = File::create(dir.path().join("server.log")).expect("server log");
        let mut process = ServerProcess(
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .arg("serve")
                .arg("--db")
                .arg(dir.path().join("kiln.db"))
                .arg("--work-root")
                .arg(dir.path().join("work"))
                .args(["--listen", "127.0.0.1:0", "--workers", &workers.to_string()])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .expect("start kiln serve"),
        );
        // The pipe stays open with the child: kiln prints nothing after this line.
        let stdout = process.0.stdout.as_mut().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the listening line");
        let Some(url) = line.trim().strip_prefix("kiln listening on ") else {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("kiln did not start: {line:?}\n{log}");
        };
        Server {
            url: url.to_owned(),
            process,
            dir,
        }
    }

    /// Stops the server cleanly (the writer drains and checkpoints) and keeps its directory.
    fn stop(self) -> TempDir {
        let Server { process, dir, .. } = self;
        drop(process);
        dir
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let child = &mut self.0;
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("kiln did not stop within 10 s of SIGTERM: killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

async fn post_job(client: &reqwest::Client, url: &str, body: &'static str) -> Value {
    let response = client
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /v1/jobs");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    let response = client.get(&url).send().await.expect("GET");
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.expect("JSON answer")
}

struct Load {
    rate: f64,
    accepted: u64,
    /// Requests that got no answer (connect, read, write errors, time-outs).
    socket_errors: u64,
    rows: u64,
}

/// 1. Durable submits/s, against a server with `--workers 0`: it accepts jobs and runs none, so
///    the whole machine goes to accepting.
fn submit_load(runtime: &Runtime, use_wrk: bool) -> Load {
    let server = Server::start(0);
    let (rate, accepted, rejected, socket_errors) = if use_wrk {
        wrk(&server)
    } else {
        runtime.block_on(reqwest_load(&server.url))
    };
    assert_eq!(rejected, 0, "every submit must be answered 202");
    let dir = server.stop();
    let db = Connection::open(dir.path().join("kiln.db")).expect("open the database");
    let (rows, claimed): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE attempt > 0) FROM jobs WHERE code = 'true'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count jobs");
    assert_eq!(claimed, 0, "a job ran on a server with --workers 0");
    let rows = u64::try_from(rows).expect("a count");
    // Requests still in flight when the load stopped may have been committed, unanswered.
    let in_flight = CLIENTS as u64 + socket_errors;
    assert!(
        (accepted..=accepted + in_flight).contains(&rows),
        "{accepted} submits were answered 202 but jobs holds {rows} rows"
    );
    Load {
        rate,
        accepted,
        socket_errors,
        rows,
    }
}

/// Requests/s, 202s, other answers and socket errors, as wrk reports them.
fn wrk(server: &Server) -> (f64, u64, u64, u64) {
    let script = server.dir.path().join("submit.lua");
    let lua = WRK_SCRIPT.replace("SUBMIT_BODY", SUBMIT_BODY);
    std::fs::write(&script, lua).expect("write the wrk script");
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CLIENTS}"),
            &format!("-d{}s", LOAD.as_secs()),
        ])
        .arg("-s")
        .arg(&script)
        .arg(format!("{}/v1/jobs", server.url))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    let numbers = |prefix: &str| -> Vec<f64> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_default();
        line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let rate = numbers("Requests/sec:");
    let answers = numbers("kiln-answers:");
    assert!(
        rate.len() == 1 && answers.len() == 2,
        "unexpected wrk output: {text}"
    );
    let socket_errors = numbers("Socket errors:").iter().sum::<f64>();
    (
        rate[0],
        answers[0] as u64,
        answers[1] as u64,
        socket_errors as u64,
    )
}

/// The stand-in for wrk: 64 tasks submitting back to back over one keep-alive pool.
async fn reqwest_load(url: &str) -> (f64, u64, u64, u64) {
    let client = reqwest::Client::new();
    let (accepted, rejected, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{url}/v1/jobs"));
            let counters = (accepted.clone(), rejected.clone(), errors.clone());
            tokio::spawn(async move {
                while start.elapsed() < LOAD {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(SUBMIT_BODY)
                        .send()
                        .await;
                    let counter = match sent {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => &counters.0,
                        Ok(_) => &counters.1,
                        Err(_) => &counters.2,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    let (accepted, rejected) = (
        accepted.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    let rate = (accepted + rejected) as f64 / start.elapsed().as_secs_f64();
    (rate, accepted, rejected, errors.load(Ordering::Relaxed))
}

/// Limit of 1: the same rows as the server writes for a submit, inserted straight into a fresh
/// database made by [`Store::open`], in one transaction with prepared statements.
fn raw_inserts() -> f64 {
    let dir = scratch();
    let path = dir.path().join("raw.db");
    let (store, writer) = Store::open(&path, 1).expect("create the database");
    drop(store);
    writer.join();
    let mut db = Connection::open(&path).expect("open the database");
    db.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    db.pragma_update(None, "foreign_keys", "ON")
        .expect("foreign_keys");
    let limits = serde_json::to_string(&Policy::default().default_limits).expect("limits");
    let data = json!({"runtime": "sh", "priority": 0}).to_string();

    let start = Instant::now();
    let tx = db.transaction().expect("begin");
    {
        let mut job = tx
            .prepare(
                "INSERT INTO jobs (id, runtime, code, stdin, args, files, limits, priority,
                                   max_attempts, idempotency_key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .expect("prepare the job insert");
        let mut event = tx
            .prepare(
                "INSERT INTO events (job_id, at, type, attempt, data) VALUES (?1, ?2, ?3, ?4, ?5)
                 RETURNING id",
            )
            .expect("prepare the event insert");
        for _ in 0..RAW_INSERTS {
            let id = uuid::Uuid::now_v7().to_string();
            let now = kiln::time::now_ms();
            job.execute(params![
                id,
                "sh",
                "true",
                "",
                "[]",
                "{}",
                limits,
                0,
                3,
                None::<String>,
                now
            ])
            .expect("insert a job");
            event
                .query_row(params![id, now, "job.queued", None::<u32>, data], |r| {
                    r.get::<_, i64>(0)
                })
                .expect("insert an event");
        }
    }
    tx.commit().expect("commit");
    RAW_INSERTS as f64 / start.elapsed().as_secs_f64()
}

/// 2. End-to-end jobs/s: 64 clients submit the jobs while the event feed is followed until each
///    has a terminal event.
fn end_to_end(runtime: &Runtime) -> f64 {
    let server = Server::start(PARALLELISM);
    let url = server.url.clone();
    let rate = runtime.block_on(async move {
        let client = reqwest::Client::new();
        let submitted = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let submitters: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, url, submitted) = (client.clone(), url.clone(), submitted.clone());
                tokio::spawn(async move {
                    while submitted.fetch_add(1, Ordering::Relaxed) < E2E_JOBS {
                        post_job(&client, &url, SUBMIT_BODY).await;
                    }
                })
            })
            .collect();
        let (mut cursor, mut ended, mut succeeded) = (0, 0, 0);
        while ended < E2E_JOBS {
            assert!(
                start.elapsed() < DEADLINE,
                "only {ended} jobs ended in time"
            );
            let page = get_json(
                &client,
                format!("{url}/v1/events?after={cursor}&limit=1000"),
            )
            .await;
            let events = page["events"].as_array().expect("events");
            for kind in events.iter().filter_map(|e| e["type"].as_str()) {
                ended += usize::from(TERMINAL_EVENTS.contains(&kind));
                succeeded += usize::from(kind == "job.succeeded");
            }
            cursor = page["next_after"].as_i64().expect("next_after");
            if events.len() < 1000 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let elapsed = start.elapsed();
        for task in submitters {
            task.await.expect("submitter");
        }
        assert_eq!(succeeded, E2E_JOBS, "every `true` job must succeed");
        E2E_JOBS as f64 / elapsed.as_secs_f64()
    });
    drop(server);
    rate
}

/// Limit of 2: the program a job runs, spawned and waited for directly from 2 threads.
fn bare_spawns() -> f64 {
    let dir = scratch();
    std::fs::write(dir.path().join("main.sh"), "true\n").expect("write main.sh");
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLELISM {
            s.spawn(|| {
                for _ in 0..E2E_JOBS / PARALLELISM {
                    let status = Command::new("/bin/sh")
                        .arg("main.sh")
                        .current_dir(dir.path())
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("spawn /bin/sh");
                    assert!(status.success());
                }
            });
        }
    });
    E2E_JOBS as f64 / start.elapsed().as_secs_f64()
}

struct Latency {
    started: Percentiles,
    terminal: Percentiles,
}

/// 3. Latency with idle workers: one job at a time, each waited to its end before the next.
fn latency(runtime: &Runtime) -> Latency {
    let server = Server::start(PARALLELISM);
    let url = server.url.clone();
    let (started, terminal) = runtime.block_on(async move {
        let client = reqwest::Client::new();
        let (mut started, mut terminal) = (Vec::new(), Vec::new());
        for _ in 0..LATENCY_JOBS {
            let sent = Instant::now();
            let id = post_job(&client, &url, SUBMIT_BODY).await["id"]
                .as_str()
                .expect("job id")
                .to_owned();
            let job = get_json(&client, format!("{url}/v1/jobs/{id}?wait=10")).await;
            terminal.push(sent.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(job["status"], "succeeded", "{job}");
            let wait = time(&job["started_at"])
                .duration_since(time(&job["created_at"]))
                .expect("started after created");
            started.push(wait.as_secs_f64() * 1000.0);
        }
        (started, terminal)
    });
    drop(server);
    Latency {
        started: Percentiles::of(started),
        terminal: Percentiles::of(terminal),
    }
}

fn time(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().expect("a time")).expect("an RFC 3339 time")
}
