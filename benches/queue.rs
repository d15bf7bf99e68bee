//! The queue's own figures, rows 1, 2 and 7 of the benchmark issue, each beside the physical
//! limit that bounds it, measured in the same run on the same machine:
//!
//! 1. **Durable submits/s over HTTP** from 64 concurrent keep-alive clients (`wrk`, or an
//!    in-process client when `wrk` is missing), against the release server accepting only
//!    (`--workers 0`). Limit: raw SQLite inserts/s of the same job and `job.queued` event rows,
//!    same schema and pragmas, all in one transaction. Goal: 20,000/s.
//! 2. **Queue throughput without spawning**: jobs/s through submit → claim → finish, with
//!    [`Store::submit`] called by 64 concurrent submitters (what `POST /v1/jobs` does after
//!    validating) and 64 of kiln's own workers ([`Workers`]: claim, lease keeper, progress
//!    recorder, finish) whose executor, [`NoOp`], is compiled only into the benches and runs
//!    nothing. Limit: the raw durable life cycle (insert, claim, complete, each with its event,
//!    same schema and pragmas) in transactions of 1,000 from one thread. Goal: 30,000 jobs/s and
//!    0.75 of the limit.
//! 7. **Readers vs the writer**: row 2 again while a poller reads 5,000 jobs/s through the read
//!    path of `GET /v1/jobs/{id}` ([`Store::job`]). Limit: row 2's throughput in the same run;
//!    goal: polling costs at most 20% of it. The largest size the write-ahead log reached during
//!    rows 2 and 7 is reported too: under constant load it must stay bounded.
//!
//! Why: the machine these run on is shared and noisy, so an absolute rate says little; each
//! figure and its limit are measured alternately, `KILN_BENCH_RUNS` times (3), and the ratio of
//! the medians is the number to compare between runs.
//!
//! Run it with `cargo bench --bench queue`. It prints a table and writes the rows as JSON to
//! `target/bench-queue.json`. `KILN_BENCH_ROWS=2,7` measures only those rows (with their
//! limits), for profiling one of them.

mod common;
mod report;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::noop::NoOp;
use kiln::job::policy::Policy;
use kiln::job::{JobId, JobSpec};
use kiln::live::Live;
use kiln::runtime::Runtimes;
use kiln::store::{Admission, CLAIM_SQL, Store, Submitted};
use kiln::worker::{Running, Stopping, Workers};
use report::{Better, Goal, Row};
use reqwest::StatusCode;
use rusqlite::{Connection, Statement, params};
use serde_json::json;
use server::{CLIENTS, Server, scratch};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const SUBMIT_BODY: &str = r#"{"runtime":"sh","code":"true"}"#;
/// How long each HTTP submit load lasts.
const LOAD: Duration = Duration::from_secs(5);
const RAW_INSERTS: usize = 50_000;
/// Jobs through the queue per run of rows 2 and 7, and through the raw life cycle; a tenth with
/// `KILN_BENCH_QUICK=1`, for trying the bench on a busy machine.
static QUEUE_JOBS: LazyLock<usize> = LazyLock::new(|| report::size(60_000));
const WORKERS: usize = 64;
/// Jobs per transaction of the raw life cycle.
const RAW_BATCH: usize = 1_000;
const POLLS_PER_SEC: u64 = 5_000;
/// Anything near this means the queue is stuck.
const DEADLINE: Duration = Duration::from_secs(300);
/// What the WAL must stay under. kiln leaves SQLite's automatic checkpoint at 1,000 pages (4 MiB);
/// readers that held a snapshot for long would keep it from resetting the log, which then grows.
const WAL_BOUND_MIB: f64 = 16.0;

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
    let runs = report::runs();
    let runtime = Runtime::new().expect("tokio runtime");
    let use_wrk = Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let generator = if use_wrk {
        "wrk"
    } else {
        "in-process client, wrk missing"
    };
    let only = std::env::var("KILN_BENCH_ROWS").unwrap_or_else(|_| "1,2,7".into());
    let wanted = |row: &str| only.split(',').any(|r| r.trim() == row);
    println!("kiln queue bench: {runs} runs; HTTP load from {generator}");

    let (mut submits, mut inserts) = (Vec::new(), Vec::new());
    let (mut queue, mut raw, mut polled, mut wal) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for run in 1..=runs {
        if wanted("1") {
            let load = submit_load(&runtime, use_wrk);
            let limit = raw_inserts();
            println!("run {run}: row 1: {load:.0} submits/s vs {limit:.0} raw inserts/s");
            submits.push(load);
            inserts.push(limit);
        }
        // Rows 2 and 7 swap places every run, so neither always follows the other's writes.
        let polled_first = wanted("7") && run % 2 == 0;
        if polled_first {
            polled.push(row7(run, &runtime, &mut wal));
        }
        if wanted("2") || wanted("7") {
            let plain = queue_throughput(&runtime, false);
            let limit = raw_life_cycle();
            println!(
                "run {run}: row 2: {:.0} jobs/s vs {limit:.0} raw life cycles/s \
                 (WAL at most {:.1} MiB)",
                plain.rate,
                mib(plain.wal_max)
            );
            queue.push(plain.rate);
            raw.push(limit);
            wal = wal.max(plain.wal_max);
        }
        if wanted("7") && !polled_first {
            polled.push(row7(run, &runtime, &mut wal));
        }
    }

    let wal_row = (wal > 0).then(|| {
        let mut row = Row::plain(7, "largest WAL during rows 2 and 7", "MiB", vec![mib(wal)]);
        row.limit_name = Some(format!("WAL bound: {WAL_BOUND_MIB} MiB"));
        row.limit = Some(WAL_BOUND_MIB);
        row.ratio = Some(WAL_BOUND_MIB / mib(wal));
        row.goal = Some("bounded under constant load".into());
        row.met = Some(mib(wal) <= WAL_BOUND_MIB);
        row
    });
    let rows = vec![
        (!submits.is_empty()).then(|| {
            let mut row = Row::measured(
                1,
                format!("durable submits/s over HTTP, 64 clients ({generator})"),
                "submits/s",
                submits,
                Better::Higher,
                Some((
                    "raw SQLite inserts/s of the same rows, one transaction".into(),
                    inserts,
                )),
                Goal::None,
            );
            row.goal = Some("≥ 20,000/s".into());
            row.met = Some(row.value >= 20_000.0);
            row
        }),
        (!queue.is_empty()).then(|| {
            let mut row = Row::measured(
                2,
                "queue jobs/s, submit -> claim -> finish, no-op executor, 64 workers",
                "jobs/s",
                queue.clone(),
                Better::Higher,
                Some((
                    "raw durable life cycle, transactions of 1,000, one thread".into(),
                    raw,
                )),
                Goal::RatioAtLeast(0.75),
            );
            row.goal = Some("≥ 30,000 jobs/s and ≥ 0.75 of the limit".into());
            row.met = row.met.map(|ratio_met| ratio_met && row.value >= 30_000.0);
            row
        }),
        (!polled.is_empty() && !queue.is_empty()).then(|| {
            let mut row = Row::measured(
                7,
                "row 2's jobs/s while polling 5,000 job reads/s",
                "jobs/s",
                polled,
                Better::Higher,
                Some(("row 2's jobs/s without polling".into(), queue)),
                Goal::RatioAtLeast(0.8),
            );
            row.goal = Some("≥ 0.8 of the limit".into());
            row
        }),
        wal_row,
    ];
    let rows: Vec<Row> = rows.into_iter().flatten().collect();
    report::write("queue", &rows);
}

/// One run of row 7: its jobs/s; raises `wal` to the largest WAL seen.
fn row7(run: usize, runtime: &Runtime, wal: &mut u64) -> f64 {
    let busy = queue_throughput(runtime, true);
    println!(
        "run {run}: row 7: {:.0} jobs/s with {:.0} status reads/s (WAL at most {:.1} MiB)",
        busy.rate,
        busy.reads_per_sec,
        mib(busy.wal_max)
    );
    *wal = (*wal).max(busy.wal_max);
    busy.rate
}

/// Writes back what earlier measurements left dirty, so that it does not compete with the next
/// one's fsyncs.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A fresh database with kiln's schema and pragmas, for the raw limits to write into directly.
fn raw_database(dir: &tempfile::TempDir) -> Connection {
    let path = dir.path().join("raw.db");
    let (store, writer) = Store::open(&path, 1).expect("create the database");
    drop(store);
    writer.join();
    let db = Connection::open(&path).expect("open the database");
    db.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    db.pragma_update(None, "foreign_keys", "ON")
        .expect("foreign_keys");
    db
}

fn default_limits() -> String {
    serde_json::to_string(&Policy::default().default_limits).expect("limits")
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, runtime, code, stdin, args, files, limits, \
     priority, max_attempts, idempotency_key, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const INSERT_EVENT: &str =
    "INSERT INTO events (job_id, at, type, attempt, data) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Limit of row 1: the rows a submit writes, inserted straight into a fresh database, in one
/// transaction with prepared statements.
fn raw_inserts() -> f64 {
    settle();
    let dir = scratch();
    let mut db = raw_database(&dir);
    let limits = default_limits();
    let data = json!({"runtime": "sh", "priority": 0}).to_string();
    let start = Instant::now();
    let tx = db.transaction().expect("begin");
    {
        let mut job = tx.prepare(INSERT_JOB).expect("prepare the job insert");
        let mut event = tx.prepare(INSERT_EVENT).expect("prepare the event insert");
        for _ in 0..RAW_INSERTS {
            insert_queued(&mut job, &mut event, &limits, &data);
        }
    }
    tx.commit().expect("commit");
    RAW_INSERTS as f64 / start.elapsed().as_secs_f64()
}

/// Inserts one queued job and its `job.queued` event as a submit writes them.
fn insert_queued(job: &mut Statement, event: &mut Statement, limits: &str, data: &str) {
    let id = uuid::Uuid::now_v7().to_string();
    let now = kiln::job::time::now_ms();
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
        .execute(params![id, now, "job.queued", None::<u32>, data])
        .expect("insert an event");
}

/// Limit of row 2: every job's life written straight into a fresh database from one thread, in
/// durable transactions of [`RAW_BATCH`] jobs per step: insert with `job.queued`, claim (kiln's
/// own claim statement) with `job.started`, complete with `job.succeeded`.
fn raw_life_cycle() -> f64 {
    settle();
    let dir = scratch();
    let mut db = raw_database(&dir);
    let limits = default_limits();
    let queued = json!({"runtime": "sh", "priority": 0}).to_string();
    let started = json!({"worker": "raw"}).to_string();
    let ended = json!({"outcome": "success", "exit_code": 0}).to_string();
    let start = Instant::now();
    for _ in 0..*QUEUE_JOBS / RAW_BATCH {
        let tx = db.transaction().expect("begin");
        {
            let mut job = tx.prepare_cached(INSERT_JOB).expect("prepare");
            let mut event = tx.prepare_cached(INSERT_EVENT).expect("prepare");
            for _ in 0..RAW_BATCH {
                insert_queued(&mut job, &mut event, &limits, &queued);
            }
        }
        tx.commit().expect("commit the inserts");

        let tx = db.transaction().expect("begin");
        let mut claimed = Vec::with_capacity(RAW_BATCH);
        {
            let mut claim = tx.prepare_cached(CLAIM_SQL).expect("prepare");
            let mut event = tx.prepare_cached(INSERT_EVENT).expect("prepare");
            for _ in 0..RAW_BATCH {
                let now = kiln::job::time::now_ms();
                let (id, attempt): (String, u32) = claim
                    .query_row(params!["raw", now + 30_000, now], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .expect("claim a job");
                event
                    .execute(params![id, now, "job.started", attempt, started])
                    .expect("insert an event");
                claimed.push((id, attempt));
            }
        }
        tx.commit().expect("commit the claims");

        let tx = db.transaction().expect("begin");
        {
            let mut finish = tx
                .prepare_cached(
                    "UPDATE jobs SET status = 'succeeded', outcome = 'success', finished_at = ?1,
                         exit_code = 0, stdout = '', stderr = '', wall_ms = 0, cpu_ms = 0,
                         memory_kb = 0, lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?2 AND attempt = ?3 AND status = 'running'",
                )
                .expect("prepare");
            let mut event = tx.prepare_cached(INSERT_EVENT).expect("prepare");
            for (id, attempt) in &claimed {
                let now = kiln::job::time::now_ms();
                let n = finish
                    .execute(params![now, id, attempt])
                    .expect("complete a job");
                assert_eq!(n, 1, "the claimed job was running");
                event
                    .execute(params![id, now, "job.succeeded", attempt, ended])
                    .expect("insert an event");
            }
        }
        tx.commit().expect("commit the completions");
    }
    *QUEUE_JOBS as f64 / start.elapsed().as_secs_f64()
}

struct Throughput {
    rate: f64,
    reads_per_sec: f64,
    wal_max: u64,
}

/// Rows 2 and 7: [`QUEUE_JOBS`] jobs submitted by [`CLIENTS`] tasks and run by [`WORKERS`]
/// no-op workers on a fresh database, timed from the first submit until every job has ended;
/// with `poll`, a poller reads [`POLLS_PER_SEC`] jobs/s meanwhile.
fn queue_throughput(runtime: &Runtime, poll: bool) -> Throughput {
    settle();
    let dir = scratch();
    let path = dir.path().join("kiln.db");
    let readers = u32::try_from(WORKERS + 4).expect("readers");
    let (store, writer) = Store::open(&path, readers).expect("open the store");
    let executor = NoOp::default();
    let workers = Arc::new(Workers {
        store: store.clone(),
        runner: executor,
        runtimes: Arc::new(Runtimes::load(&Default::default()).expect("the built-in runtimes")),
        running: Running::default(),
        live: Live::default(),
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(500),
        owner_prefix: "bench/queue/".into(),
    });
    let spec = JobSpec {
        runtime: "sh".into(),
        code: "true".into(),
        stdin: Default::default(),
        args: Vec::new(),
        files: BTreeMap::new(),
        outputs: Vec::new(),
        limits: Policy::default().default_limits,
        priority: 0,
        max_attempts: 3,
        interactive: false,
        idempotency_key: None,
        callback_url: None,
        callback_shape: Default::default(),
    };
    let wal = WalWatch::start(&path);
    let (rate, reads_per_sec) = runtime.block_on(async {
        let stopping = Stopping::default();
        let mut tasks = workers.spawn(WORKERS, &stopping);
        let ids = Arc::new(Mutex::new(Vec::with_capacity(*QUEUE_JOBS)));
        let done = CancellationToken::new();
        let poller = poll.then(|| tokio::spawn(poller(store.clone(), ids.clone(), done.clone())));
        let submitted = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let submitters: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (store, spec, ids) = (store.clone(), spec.clone(), ids.clone());
                let submitted = submitted.clone();
                tokio::spawn(async move {
                    while submitted.fetch_add(1, Ordering::Relaxed) < *QUEUE_JOBS {
                        match store.submit(spec.clone(), open()).await.expect("submit") {
                            Submitted::Created(id) => lock(&ids).push(id),
                            other => panic!("a plain submit was {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for task in submitters {
            task.await.expect("submitter");
        }
        while workers.runner.ran.load(Ordering::Relaxed) < *QUEUE_JOBS {
            assert!(start.elapsed() < DEADLINE, "the queue is stuck");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The last runs' results are at most one commit away.
        let db = Connection::open(&path).expect("open the database");
        loop {
            let unfinished: i64 = db
                .query_row(
                    "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')",
                    [],
                    |r| r.get(0),
                )
                .expect("count unfinished jobs");
            if unfinished == 0 {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "the queue is stuck");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        done.cancel();
        let reads = match poller {
            Some(poller) => poller.await.expect("poller"),
            None => 0,
        };
        stopping.claiming.cancel();
        while tasks.join_next().await.is_some() {}
        let succeeded: i64 = db
            .query_row(
                "SELECT count(*) FROM jobs WHERE status = 'succeeded'",
                [],
                |r| r.get(0),
            )
            .expect("count jobs");
        assert_eq!(
            usize::try_from(succeeded).ok(),
            Some(*QUEUE_JOBS),
            "every job succeeded once"
        );
        (*QUEUE_JOBS as f64 / elapsed, reads as f64 / elapsed)
    });
    drop(workers);
    drop(store);
    let wal_max = wal.stop();
    writer.join();
    Throughput {
        rate,
        reads_per_sec,
        wal_max,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads jobs submitted so far at [`POLLS_PER_SEC`], spread over them, through the read path of
/// `GET /v1/jobs/{id}`, until `done`. Returns how many it read.
async fn poller(store: Store, ids: Arc<Mutex<Vec<JobId>>>, done: CancellationToken) -> u64 {
    const PER_TICK: u64 = 5;
    let reads = Arc::new(AtomicU64::new(0));
    let mut tick =
        tokio::time::interval(Duration::from_micros(1_000_000 * PER_TICK / POLLS_PER_SEC));
    let mut n: usize = 0;
    while !done.is_cancelled() {
        tick.tick().await;
        for _ in 0..PER_TICK {
            n = n.wrapping_add(7919);
            let id = {
                let ids = lock(&ids);
                if ids.is_empty() {
                    continue;
                }
                ids[n % ids.len()]
            };
            let (store, reads) = (store.clone(), reads.clone());
            tokio::spawn(async move {
                if store.job(id).await.expect("read a job").is_some() {
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    reads.load(Ordering::Relaxed)
}

/// Samples the size of the database's write-ahead log every millisecond on its own thread.
struct WalWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl WalWatch {
    fn start(db: &Path) -> WalWatch {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
                std::thread::sleep(Duration::from_millis(1));
            }
            max
        });
        WalWatch { stop, thread }
    }

    /// The largest size seen.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("WAL watcher")
    }
}

/// Row 1: durable submits/s against a server that accepts jobs and runs none, so the whole
/// machine goes to accepting. Checks afterwards that every 202 left its row behind.
fn submit_load(runtime: &Runtime, use_wrk: bool) -> f64 {
    settle();
    let dir = scratch();
    let server = Server::start_in(dir.path(), &["--workers", "0"]);
    let (rate, accepted, rejected, socket_errors) = if use_wrk {
        wrk(&server)
    } else {
        runtime.block_on(reqwest_load(&server.url))
    };
    assert_eq!(rejected, 0, "every submit must be answered 202");
    // Stopped cleanly: the writer drains and checkpoints.
    drop(server);
    let db = Connection::open(dir.path().join("kiln.db")).expect("open the database");
    let rows: i64 = db
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count jobs");
    let rows = u64::try_from(rows).expect("a count");
    // Requests still in flight when the load stopped may have been committed, unanswered.
    let in_flight = CLIENTS as u64 + socket_errors;
    assert!(
        (accepted..=accepted + in_flight).contains(&rows),
        "{accepted} submits were answered 202 but jobs holds {rows} rows"
    );
    rate
}

/// Requests/s, 202s, other answers and socket errors, as wrk reports them.
fn wrk(server: &Server) -> (f64, u64, u64, u64) {
    let script = server.dir.join("submit.lua");
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
    let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, counters) =
                (client.clone(), format!("{url}/v1/jobs"), counters.clone());
            tokio::spawn(async move {
                while start.elapsed() < LOAD {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(SUBMIT_BODY)
                        .send()
                        .await;
                    let counter = match sent {
                        Ok(r) if r.status() == StatusCode::ACCEPTED => 0,
                        Ok(_) => 1,
                        Err(_) => 2,
                    };
                    counters[counter].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    let [accepted, rejected, errors] = [0, 1, 2].map(|i| counters[i].load(Ordering::Relaxed));
    let rate = (accepted + rejected) as f64 / start.elapsed().as_secs_f64();
    (rate, accepted, rejected, errors)
}

/// A submit as an open server (no tokens) makes it, far from any queue limit.
fn open() -> Admission {
    Admission {
        tenant: None,
        max_queued_jobs: u64::MAX,
        max_batches_in_flight: u64::MAX,
    }
}
