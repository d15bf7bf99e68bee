//! Sandboxed jobs through the real server: rows 3 and 4 of the benchmark issue.
//!
//! 3. **End-to-end sandboxed jobs/s** for `/bin/true` (an extra runtime `true=/bin/true`) and
//!    for `python3 -c pass` (the `python` runtime running `pass`): the release server with 2
//!    workers, 64 keep-alive clients submitting, from the first submit until every job's terminal
//!    event is in the feed. Limit: bare spawns/s of the same command (`/bin/true`,
//!    `/usr/bin/python3 -c pass`) from 2 threads, the same cores. Goals: ratio ≥ 0.6 and ≥ 0.8.
//! 4. **Latency with idle workers**: one `/bin/true` job at a time, submitted once the previous
//!    one has ended and the workers have been idle for a moment; the times from sending the
//!    submit until its `job.started` and its terminal event arrive on a Server-Sent Events
//!    stream of `GET /v1/events` opened beforehand. Goals: started p50 < 5 ms, terminal p50
//!    < 15 ms. Limit: what the path must pay at least on this disk, measured in the same run:
//!    a durable SQLite commit (WAL, `synchronous=FULL`, one row) for the submit and one for the
//!    claim; for the terminal event a third for the result and a bare spawn of `/bin/true`.
//!
//! Each figure and its limit are measured alternately, `KILN_BENCH_RUNS` (3) times; the medians
//! and their ratio are reported, the ratio being the number to compare between machines. Rows go
//! to `target/bench-jobs.json` (see `benches/report`). Needs root, as the sandbox does.

mod common;
mod latency;
mod report;
mod server;

use latency::Percentiles;
use report::{Better, Goal, Row};
use server::{Server, scratch};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;
use tokio::runtime::Runtime;

/// Workers of the server, and threads of the bare-spawn limit: the 2 cores.
const PARALLELISM: usize = 2;
const PYTHON: &str = "/usr/bin/python3";
const EXTRA_RUNTIME: &str = "true=/bin/true";
/// Jobs take milliseconds; anything near this means the server is stuck.
const DEADLINE: Duration = Duration::from_secs(300);

/// One program as the server runs it and as it is spawned bare.
struct Program {
    label: &'static str,
    body: &'static str,
    bare: &'static [&'static str],
    /// Jobs per measurement, before `KILN_BENCH_QUICK`.
    jobs: usize,
    goal: f64,
}

const PROGRAMS: [Program; 2] = [
    Program {
        label: "/bin/true",
        body: r#"{"runtime":"true","code":"true"}"#,
        bare: &["/bin/true"],
        jobs: 1000,
        goal: 0.6,
    },
    Program {
        label: "python3 -c pass",
        body: r#"{"runtime":"python","code":"pass"}"#,
        bare: &[PYTHON, "-c", "pass"],
        jobs: 300,
        goal: 0.8,
    },
];

/// `/bin/true` jobs per latency measurement, one at a time.
const LATENCY_JOBS: usize = 200;
/// How long the workers stay idle before each latency job.
const IDLE: Duration = Duration::from_millis(20);
/// Commits and spawns timed for the latency limit.
const FLOOR_SAMPLES: usize = 200;

fn main() {
    let runs = report::runs();
    let tokio = Runtime::new().expect("tokio runtime");
    println!(
        "kiln jobs bench: {runs} runs; end to end with {PARALLELISM} workers, then {} jobs one at \
         a time",
        report::size(LATENCY_JOBS)
    );
    let mut throughput: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); PROGRAMS.len()];
    let (mut started, mut terminal) = (Vec::new(), Vec::new());
    let (mut commit_ms, mut spawn_ms) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for (program, (figure, limit)) in PROGRAMS.iter().zip(&mut throughput) {
            let jobs = report::size(program.jobs);
            let rate = tokio.block_on(end_to_end(program, jobs));
            let bare = bare_spawns(program.bare, jobs);
            println!(
                "run {run}: {rate:.0} {} jobs/s end to end vs {bare:.0} bare spawns/s",
                program.label
            );
            figure.push(rate);
            limit.push(bare);
        }
        let latency = tokio.block_on(latency(report::size(LATENCY_JOBS)));
        let (commit, spawn) = (durable_commit_ms(), bare_spawn_ms());
        println!(
            "run {run}: submit->started p50 {:.2} ms, p99 {:.2} ms; submit->terminal p50 {:.2} \
             ms, p99 {:.2} ms; a durable commit {commit:.2} ms, a bare /bin/true {spawn:.2} ms",
            latency.started.p50, latency.started.p99, latency.terminal.p50, latency.terminal.p99
        );
        started.push(latency.started);
        terminal.push(latency.terminal);
        commit_ms.push(commit);
        spawn_ms.push(spawn);
    }

    let mut rows = Vec::new();
    for (program, (figure, limit)) in PROGRAMS.iter().zip(throughput) {
        rows.push(Row::measured(
            3,
            format!(
                "end-to-end sandboxed `{}` jobs/s, {PARALLELISM} workers, {} clients",
                program.label,
                server::CLIENTS
            ),
            "jobs/s",
            figure,
            Better::Higher,
            Some((
                format!(
                    "bare spawns/s of `{}`, {PARALLELISM} threads",
                    program.bare.join(" ")
                ),
                limit,
            )),
            Goal::RatioAtLeast(program.goal),
        ));
    }
    let started_floor: Vec<f64> = commit_ms.iter().map(|c| 2.0 * c).collect();
    let terminal_floor: Vec<f64> = commit_ms
        .iter()
        .zip(&spawn_ms)
        .map(|(c, s)| 3.0 * c + s)
        .collect();
    let p50 = |runs: &[Percentiles]| runs.iter().map(|p| p.p50).collect::<Vec<_>>();
    let p99 = |runs: &[Percentiles]| runs.iter().map(|p| p.p99).collect::<Vec<_>>();
    let latencies = [
        ("p50", "started", p50(&started), &started_floor, Some(5.0)),
        ("p99", "started", p99(&started), &started_floor, None),
        (
            "p50",
            "terminal",
            p50(&terminal),
            &terminal_floor,
            Some(15.0),
        ),
        ("p99", "terminal", p99(&terminal), &terminal_floor, None),
    ];
    for (percentile, event, runs, floor, goal) in latencies {
        let floor_name = if event == "started" {
            "2 durable SQLite commits"
        } else {
            "3 durable SQLite commits + a bare `/bin/true`"
        };
        rows.push(Row::measured(
            4,
            format!("submit→{event} seen over SSE, `/bin/true`, idle workers, {percentile}"),
            "ms",
            runs,
            Better::Lower,
            Some((floor_name.to_owned(), floor.clone())),
            goal.map_or(Goal::None, Goal::Below),
        ));
    }
    report::write("jobs", &rows);
}

fn start_server(workers: usize) -> (Server, tempfile::TempDir) {
    let dir = scratch();
    let server = Server::start_in(
        dir.path(),
        &[
            "--workers",
            &workers.to_string(),
            "--runtime",
            EXTRA_RUNTIME,
        ],
    );
    (server, dir)
}

/// Row 3: [`server::CLIENTS`] clients submit `jobs` jobs while the event feed is paged through
/// until each has a terminal event; every one must succeed.
async fn end_to_end(program: &Program, jobs: usize) -> f64 {
    let (server, _dir) = start_server(PARALLELISM);
    let url = server.url.clone();
    let client = reqwest::Client::new();
    let start = Instant::now();
    let body = program.body;
    let mut submitters = Some(tokio::spawn({
        let url = url.clone();
        async move { server::submit_many(&url, body, jobs).await }
    }));
    let (mut cursor, mut ended, mut succeeded) = (0, 0, 0);
    while ended < jobs {
        assert!(
            start.elapsed() < DEADLINE,
            "only {ended} of {jobs} jobs ended in time"
        );
        // A submit answered otherwise than 202 ends the bench now, not at the deadline.
        if let Some(done) = submitters.take_if(|task| task.is_finished()) {
            done.await.expect("the submitters");
        }
        let page = server::get_json(
            &client,
            &format!("{url}/v1/events?after={cursor}&limit=1000"),
        )
        .await;
        let events = page["events"].as_array().expect("events");
        for kind in events.iter().filter_map(|e| e["type"].as_str()) {
            ended += usize::from(server::TERMINAL_EVENTS.contains(&kind));
            succeeded += usize::from(kind == "job.succeeded");
        }
        cursor = page["next_after"].as_i64().expect("next_after");
        if events.len() < 1000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let elapsed = start.elapsed();
    if let Some(submitters) = submitters {
        submitters.await.expect("the submitters");
    }
    assert_eq!(succeeded, jobs, "every {} job must succeed", program.label);
    jobs as f64 / elapsed.as_secs_f64()
}

/// Row 3's limit: the command spawned and waited for directly, from [`PARALLELISM`] threads.
fn bare_spawns(command: &[&str], jobs: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLELISM {
            s.spawn(|| {
                for _ in 0..jobs / PARALLELISM {
                    spawn(command);
                }
            });
        }
    });
    (jobs / PARALLELISM * PARALLELISM) as f64 / start.elapsed().as_secs_f64()
}

fn spawn(command: &[&str]) {
    let status = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", command[0]));
    assert!(status.success(), "{command:?}: {status}");
}

struct Latency {
    started: Percentiles,
    terminal: Percentiles,
}

/// Row 4: one job at a time, each timed from sending its submit to its events arriving on a
/// live stream of the global feed.
async fn latency(jobs: usize) -> Latency {
    let (server, _dir) = start_server(PARALLELISM);
    let client = reqwest::Client::new();
    let mut feed = Feed::open(&client, &server.url).await;
    let body = PROGRAMS[0].body;
    // Unmeasured: the first jobs warm the connections, the sandboxes and the page cache.
    for _ in 0..10 {
        let id = server::submit(&client, &server.url, body).await;
        feed.until(&id, |kind| server::TERMINAL_EVENTS.contains(&kind))
            .await;
    }
    let (mut started, mut terminal) = (Vec::new(), Vec::new());
    for _ in 0..jobs {
        tokio::time::sleep(IDLE).await;
        let sent = Instant::now();
        let id = server::submit(&client, &server.url, body).await;
        let (at, _) = feed.until(&id, |kind| kind == "job.started").await;
        started.push(ms(at - sent));
        let (at, kind) = feed
            .until(&id, |kind| server::TERMINAL_EVENTS.contains(&kind))
            .await;
        terminal.push(ms(at - sent));
        assert_eq!(kind, "job.succeeded");
    }
    Latency {
        started: Percentiles::of(started),
        terminal: Percentiles::of(terminal),
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A live stream of `GET /v1/events`, read message by message as the bytes arrive.
struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn open(client: &reqwest::Client, url: &str) -> Feed {
        let response = client
            .get(format!("{url}/v1/events"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET /v1/events as a stream");
        assert!(response.status().is_success(), "{}", response.status());
        Feed {
            response,
            buffer: String::new(),
        }
    }

    /// Reads until an event of job `id` whose type passes `wanted`; returns when its bytes
    /// arrived and its type.
    async fn until(&mut self, id: &str, wanted: impl Fn(&str) -> bool) -> (Instant, String) {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data).expect("an event as JSON");
                let kind = event["type"].as_str().unwrap_or_default();
                if event["job_id"] == id && wanted(kind) {
                    return (Instant::now(), kind.to_owned());
                }
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("the stream went silent")
                .expect("read the stream")
                .expect("the stream ended");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

/// Row 4's limit: milliseconds per durable commit of one small row, SQLite in WAL with
/// `synchronous=FULL` as kiln's store runs it, on the same disk; the median of
/// [`FLOOR_SAMPLES`].
fn durable_commit_ms() -> f64 {
    let dir = scratch();
    let db = Connection::open(dir.path().join("floor.db")).expect("open");
    db.pragma_update(None, "journal_mode", "WAL")
        .expect("journal_mode");
    db.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", [])
        .expect("create");
    let mut insert = db
        .prepare("INSERT INTO t (v) VALUES ('a small row of about the size of an event')")
        .expect("prepare");
    let samples = (0..FLOOR_SAMPLES)
        .map(|_| {
            let start = Instant::now();
            insert.execute([]).expect("insert");
            ms(start.elapsed())
        })
        .collect();
    Percentiles::of(samples).p50
}

/// Row 4's limit: milliseconds per bare spawn of `/bin/true`, the median of [`FLOOR_SAMPLES`].
fn bare_spawn_ms() -> f64 {
    let samples = (0..FLOOR_SAMPLES)
        .map(|_| {
            let start = Instant::now();
            spawn(&["/bin/true"]);
            ms(start.elapsed())
        })
        .collect();
    Percentiles::of(samples).p50
}
