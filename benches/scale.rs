//! Row 5 of the benchmark issue: does kiln stay as fast with a big database? With 1,000,000
//! finished jobs and 100,000 queued in the file, each of these must stay within 1.5× of the same
//! figure on a database holding only the jobs the measurement touches (1,000 finished, 1,000
//! queued), measured in the same run:
//!
//! - **claim latency**, p50 and p99: [`Store::claim`] (the statement and the `job.started` event
//!   a worker's claim commits), one at a time, through the store's writer thread;
//! - **status-read latency**, p50 and p99: `GET /v1/jobs/{id}` for finished jobs picked at random,
//!   one at a time, against the release server;
//! - **submit throughput**: `POST /v1/jobs` from 64 keep-alive clients (an in-process client)
//!   against the release server accepting only (`--workers 0`);
//!
//! - **the dashboard's requests** (row 13), p95: every API request the dashboard's pages make
//!   but the live streams — the overview's figures and recent failures, the job list with its
//!   filters, a job's page (the job, its input, its events), the suite list — and, apart, the
//!   overview's charts (`/v1/stats/series` over an hour and a day); the figure is the slowest
//!   request's p95, which must stay under 100 ms (300 ms for the charts);
//!
//! and **bytes per job on disk**: the big file's size over its jobs, each with its events.
//!
//! How the big file is built, fast and true to what kiln writes: a server makes one finished
//! `sh` job (`echo ok`, run in the sandbox) and one queued job through the HTTP API; then each is
//! cloned with SQL (`INSERT … SELECT` from the template's row and its events, a fresh UUIDv7 and
//! the times shifted to now, every other column copied, so columns added by later migrations come
//! along), 10,000 jobs per transaction with no journal and no fsync: only building the file
//! skips them; it is back in WAL mode before anything is measured on it. It takes about a minute
//! on 2 cores; its time is printed.
//!
//! Rows go to `target/bench-scale.json` (see `benches/report`); `KILN_BENCH_QUICK=1` builds a
//! tenth of the file.

mod common;
mod latency;
mod report;
mod server;

use latency::Percentiles;
use report::{Better, Goal, Row};
use server::{Server, scratch};
use std::path::Path;
use std::time::{Duration, Instant};

use kiln::store::Store;
use rusqlite::{Connection, params};
use tempfile::TempDir;
use tokio::runtime::Runtime;

const FINISHED: usize = 1_000_000;
const QUEUED: usize = 100_000;
/// Claims timed per run; the small database holds this many queued jobs.
const CLAIMS: usize = 500;
/// Status reads timed per run; the small database holds this many finished jobs.
const READS: usize = 1_000;
/// Times each of the dashboard's requests is timed per run.
const DASHBOARD_READS: usize = 50;
/// Submits per throughput measurement.
const SUBMITS: usize = 20_000;
const JOBS_PER_TRANSACTION: usize = 10_000;
const FINISHED_BODY: &str = r#"{"runtime":"sh","code":"echo ok"}"#;
const SUBMIT_BODY: &str = r#"{"runtime":"sh","code":"true"}"#;
/// Longer than the bench: claimed jobs stay running, out of the rescuer's way.
const LEASE: Duration = Duration::from_secs(3600);

/// The template jobs every database is cloned from.
struct Templates {
    dir: TempDir,
    finished: String,
    queued: String,
}

/// One run's figures on one database.
struct Figures {
    claim: Percentiles,
    read: Percentiles,
    submits_per_s: f64,
    /// The slowest p95 of the dashboard's page requests, and of its charts' requests, in ms.
    dashboard: f64,
    charts: f64,
}

fn main() {
    let runs = report::runs();
    let (finished, queued) = (report::size(FINISHED), report::size(QUEUED));
    let tokio = Runtime::new().expect("tokio runtime");
    println!("kiln scale bench: {runs} runs; {finished} finished and {queued} queued jobs");
    let templates = tokio.block_on(templates());
    let big = scratch();
    let start = Instant::now();
    build(&templates, big.path(), finished, queued);
    let bytes = file_bytes(big.path());
    let jobs = (finished + queued + 2) as f64;
    println!(
        "built in {:.1} s: {:.0} MiB, {:.0} bytes a job",
        start.elapsed().as_secs_f64(),
        bytes / 1048576.0,
        bytes / jobs
    );
    let big_reads = finished_ids(big.path(), report::size(READS));

    let (mut small_runs, mut big_runs) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let small = scratch();
        build(&templates, small.path(), report::size(READS), CLAIMS);
        let small_reads = finished_ids(small.path(), report::size(READS));
        let on_small = tokio.block_on(measure(small.path(), &small_reads));
        let on_big = tokio.block_on(measure(big.path(), &big_reads));
        for (name, figures) in [("small", &on_small), ("big", &on_big)] {
            println!(
                "run {run}, {name} database: claim p50 {:.2} ms, p99 {:.2} ms; status read p50 \
                 {:.2} ms, p99 {:.2} ms; {:.0} submits/s; dashboard p95 {:.2} ms, charts p95 \
                 {:.2} ms",
                figures.claim.p50,
                figures.claim.p99,
                figures.read.p50,
                figures.read.p99,
                figures.submits_per_s,
                figures.dashboard,
                figures.charts
            );
        }
        small_runs.push(on_small);
        big_runs.push(on_big);
    }

    let big_file = format!(
        "{} finished + {} queued jobs",
        report::number(finished as f64),
        report::number(queued as f64)
    );
    let small_file = format!(
        "the same with {} finished + {CLAIMS} queued",
        report::number(report::size(READS) as f64)
    );
    let compare = |figure: &str, unit, better, of: fn(&Figures) -> f64, goal| {
        Row::measured(
            5,
            format!("{figure}, {big_file}"),
            unit,
            big_runs.iter().map(of).collect(),
            better,
            Some((small_file.clone(), small_runs.iter().map(of).collect())),
            goal,
        )
    };
    let within = Goal::Within(1.5);
    let rows = vec![
        compare("claim p50", "ms", Better::Lower, |f| f.claim.p50, within),
        compare(
            "claim p99",
            "ms",
            Better::Lower,
            |f| f.claim.p99,
            Goal::None,
        ),
        compare(
            "status read p50",
            "ms",
            Better::Lower,
            |f| f.read.p50,
            within,
        ),
        compare(
            "status read p99",
            "ms",
            Better::Lower,
            |f| f.read.p99,
            Goal::None,
        ),
        compare(
            "submits/s, 64 clients (in-process)",
            "jobs/s",
            Better::Higher,
            |f| f.submits_per_s,
            within,
        ),
        Row::measured(
            13,
            format!("the dashboard's slowest API request, p95, {big_file}"),
            "ms",
            big_runs.iter().map(|f| f.dashboard).collect(),
            Better::Lower,
            Some((
                small_file.clone(),
                small_runs.iter().map(|f| f.dashboard).collect(),
            )),
            Goal::Below(100.0),
        ),
        Row::measured(
            13,
            format!("the dashboard's charts (an hour, a day), slowest p95, {big_file}"),
            "ms",
            big_runs.iter().map(|f| f.charts).collect(),
            Better::Lower,
            Some((
                small_file.clone(),
                small_runs.iter().map(|f| f.charts).collect(),
            )),
            Goal::Below(300.0),
        ),
        Row::plain(
            5,
            "bytes per job on disk (row, events, indexes), finished `echo ok` jobs",
            "B",
            vec![bytes / jobs],
        ),
    ];
    report::write("scale", &rows);
}

/// A finished and a queued job, made by the real server through the HTTP API.
async fn templates() -> Templates {
    let dir = scratch();
    let client = reqwest::Client::new();
    let finished = {
        let server = Server::start_in(dir.path(), &["--workers", "1"]);
        let id = server::submit(&client, &server.url, FINISHED_BODY).await;
        let job = server::get_json(&client, &format!("{}/v1/jobs/{id}?wait=30", server.url)).await;
        assert_eq!(job["status"], "succeeded", "the template job: {job}");
        id
    };
    let queued = {
        let server = Server::start_in(dir.path(), &["--workers", "0"]);
        server::submit(&client, &server.url, SUBMIT_BODY).await
    };
    Templates {
        dir,
        finished,
        queued,
    }
}

/// A copy of the templates' database in `dir` with `finished` clones of the finished template
/// and then `queued` of the queued one.
fn build(templates: &Templates, dir: &Path, finished: usize, queued: usize) {
    let db_path = dir.join("kiln.db");
    std::fs::copy(templates.dir.path().join("kiln.db"), &db_path).expect("copy the templates");
    let mut db = Connection::open(&db_path).expect("open the copy");
    // Only building: no journal, no fsync, and a page cache that holds the indexes' hot pages.
    // The file goes back to WAL, as kiln runs it, before anything is measured on it.
    db.pragma_update(None, "journal_mode", "DELETE")
        .expect("journal_mode");
    db.pragma_update(None, "journal_mode", "OFF")
        .expect("journal_mode");
    db.pragma_update(None, "synchronous", "OFF")
        .expect("synchronous");
    db.pragma_update(None, "cache_size", -256 * 1024)
        .expect("cache_size");
    let columns = |table: &str| -> Vec<String> {
        let mut info = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .expect("table info");
        info.query_map([], |r| r.get(0))
            .expect("columns")
            .collect::<Result<_, _>>()
            .expect("column names")
    };
    let (job_columns, event_columns) = (columns("jobs"), columns("events"));
    let job_values: Vec<String> = job_columns
        .iter()
        .map(|c| match c.as_str() {
            "id" => "?1".to_owned(),
            c if c.ends_with("_at") => format!("{c} + ?2"),
            c => c.to_owned(),
        })
        .collect();
    let event_columns: Vec<&String> = event_columns.iter().filter(|c| *c != "id").collect();
    let event_values: Vec<String> = event_columns
        .iter()
        .map(|c| match c.as_str() {
            "job_id" => "?1".to_owned(),
            "at" => "at + ?2".to_owned(),
            c => c.to_owned(),
        })
        .collect();
    let join = |names: &[&String]| {
        names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let clone_job = format!(
        "INSERT INTO jobs ({}) SELECT {} FROM jobs WHERE id = ?3",
        join(&job_columns.iter().collect::<Vec<_>>()),
        job_values.join(", ")
    );
    let clone_events = format!(
        "INSERT INTO events ({}) SELECT {} FROM events WHERE job_id = ?3 ORDER BY id",
        join(&event_columns),
        event_values.join(", ")
    );
    for (template, count) in [(&templates.finished, finished), (&templates.queued, queued)] {
        let created: i64 = db
            .query_row(
                "SELECT created_at FROM jobs WHERE id = ?1",
                [template],
                |r| r.get(0),
            )
            .expect("the template");
        let mut left = count;
        while left > 0 {
            let tx = db.transaction().expect("begin");
            {
                let mut job = tx
                    .prepare_cached(&clone_job)
                    .expect("prepare the job clone");
                let mut events = tx
                    .prepare_cached(&clone_events)
                    .expect("prepare the events clone");
                for _ in 0..left.min(JOBS_PER_TRANSACTION) {
                    let id = uuid::Uuid::now_v7().to_string();
                    let shift = kiln::job::time::now_ms() - created;
                    job.execute(params![id, shift, template])
                        .expect("clone a job");
                    events
                        .execute(params![id, shift, template])
                        .expect("clone its events");
                }
            }
            tx.commit().expect("commit");
            left -= left.min(JOBS_PER_TRANSACTION);
        }
    }
    let mode: String = db
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

fn file_bytes(dir: &Path) -> f64 {
    ["kiln.db", "kiln.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len() as f64)
        .sum()
}

/// `count` finished jobs picked at random.
fn finished_ids(dir: &Path, count: usize) -> Vec<String> {
    let db = Connection::open(dir.join("kiln.db")).expect("open");
    let mut pick = db
        .prepare("SELECT id FROM jobs WHERE status = 'succeeded' ORDER BY random() LIMIT ?1")
        .expect("prepare");
    pick.query_map([count as i64], |r| r.get(0))
        .expect("pick")
        .collect::<Result<_, _>>()
        .expect("ids")
}

/// One run's claims, reads and submits on the database in `dir`.
async fn measure(dir: &Path, reads: &[String]) -> Figures {
    let (store, writer) = Store::open(&dir.join("kiln.db"), 1).expect("open the store");
    let mut claims = Vec::with_capacity(CLAIMS);
    for _ in 0..CLAIMS {
        let start = Instant::now();
        let claimed = store.claim("bench", LEASE).await.expect("claim");
        claims.push(start.elapsed().as_secs_f64() * 1000.0);
        assert!(claimed.is_some(), "the queue ran dry");
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("the writer thread");

    let server = Server::start_in(dir, &["--workers", "0"]);
    let client = reqwest::Client::new();
    let mut read = Vec::with_capacity(reads.len());
    for id in reads {
        let start = Instant::now();
        let job = server::get_json(&client, &format!("{}/v1/jobs/{id}", server.url)).await;
        read.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(job["status"], "succeeded");
    }
    let dashboard = slowest_p95(&client, &server.url, &dashboard_requests(reads)).await;
    let charts = slowest_p95(
        &client,
        &server.url,
        &[
            "/v1/stats/series?window=3600".to_owned(),
            "/v1/stats/series?window=86400".to_owned(),
        ],
    )
    .await;
    let submits_per_s = server::submit_many(&server.url, SUBMIT_BODY, report::size(SUBMITS)).await;
    Figures {
        claim: Percentiles::of(claims),
        read: Percentiles::of(read),
        submits_per_s,
        dashboard,
        charts,
    }
}

/// The requests the dashboard's pages make (`dashboard/app.js`), the live streams aside: the
/// overview, the job list unfiltered and by each filter it offers, a job's page, the suites.
fn dashboard_requests(finished: &[String]) -> Vec<String> {
    let since =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(3600));
    let mut requests: Vec<String> = [
        "/v1/stats",
        "/v1/events?order=newest&limit=1",
        "/v1/jobs?status=failed&order=newest&limit=10",
        "/v1/jobs?order=newest&limit=50",
        "/v1/jobs?status=queued&order=newest&limit=50",
        "/v1/jobs?outcome=success&order=newest&limit=50",
        "/v1/jobs?runtime=sh&order=newest&limit=50",
        // Filters no job in the file matches: the page is found empty only by an index.
        "/v1/jobs?runtime=ruby&order=newest&limit=50",
        "/v1/jobs?outcome=memory_limit&order=newest&limit=50",
        "/v1/jobs?status=failed&runtime=python&order=newest&limit=50",
        "/v1/batches?limit=50",
        "/v1/runtimes",
    ]
    .map(str::to_owned)
    .into();
    requests.push(format!("/v1/jobs?since={since}&order=newest&limit=50"));
    let id = &finished[finished.len() / 2];
    for page in ["", "/input", "/events"] {
        requests.push(format!("/v1/jobs/{id}{page}"));
    }
    requests
}

/// Times each request [`DASHBOARD_READS`] times, interleaved, and returns the highest p95.
async fn slowest_p95(client: &reqwest::Client, url: &str, requests: &[String]) -> f64 {
    let mut samples = vec![Vec::with_capacity(DASHBOARD_READS); requests.len()];
    for _ in 0..DASHBOARD_READS {
        for (request, times) in requests.iter().zip(&mut samples) {
            let start = Instant::now();
            server::get_json(client, &format!("{url}{request}")).await;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    requests
        .iter()
        .zip(samples)
        .map(|(request, times)| {
            let p95 = p95(times);
            println!("  {request}: p95 {p95:.2} ms");
            p95
        })
        .fold(0.0, f64::max)
}

/// The nearest-rank 95th percentile.
fn p95(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((0.95 * samples.len() as f64).ceil() as usize).max(1) - 1]
}
