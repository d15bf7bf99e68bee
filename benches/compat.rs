//! The Judge0 API's cost over kiln's own: row 12 of the benchmark table.
//!
//! 12. **Judge0-style submit-and-wait**: [`CLIENTS`] keep-alive clients each send
//!     `POST /judge0/submissions?wait=true` of `print(1)` (language 71) back to back, every one
//!     answered with the finished submission, `jobs` in all, on the release server with 2
//!     workers. Limit: the same jobs through kiln's own API in the same run, each client sending
//!     `POST /v1/jobs` and then `GET /v1/jobs/{id}?wait=30` for the result. Goal: ratio ≥ 0.9,
//!     the translation costing at most a tenth.
//!
//! Each figure and its limit are measured alternately, `KILN_BENCH_RUNS` (3) times, on one
//! server; the medians and their ratio are reported. Rows go to `target/bench-compat.json` (see
//! `benches/report`). Needs root, as the sandbox does.

mod common;
mod report;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use report::{Better, Goal, Row};
use reqwest::StatusCode;
use serde_json::Value;
use server::{CLIENTS, Server, scratch, submit};

/// Workers of the server: the 2 cores.
const WORKERS: &str = "2";
const JUDGE0_BODY: &str = r#"{"source_code":"print(1)","language_id":71}"#;
const KILN_BODY: &str = r#"{"runtime":"python","code":"print(1)"}"#;

/// One Judge0 submit with `wait=true`; anything but an Accepted `201` fails the bench.
async fn judge0_run(client: &reqwest::Client, url: &str) {
    let response = client
        .post(format!("{url}/judge0/submissions?wait=true"))
        .header("content-type", "application/json")
        .body(JUDGE0_BODY)
        .send()
        .await
        .expect("POST /judge0/submissions");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["status"]["id"], 3, "{answer}");
}

/// One kiln submit and its wait for the end; a job that did not succeed fails the bench.
async fn kiln_run(client: &reqwest::Client, url: &str) {
    let id = submit(client, url, KILN_BODY).await;
    let job = server::get_json(client, &format!("{url}/v1/jobs/{id}?wait=30")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// Jobs per second of `jobs` runs made by [`CLIENTS`] clients at once over one pool, from the
/// first request until the last answer.
async fn rate<F, Fut>(url: &str, jobs: usize, run: F) -> f64
where
    F: Fn(reqwest::Client, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let client = reqwest::Client::new();
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, sent, run) =
                (client.clone(), url.to_owned(), sent.clone(), run.clone());
            tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < jobs {
                    run(client.clone(), url.clone()).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a client task");
    }
    jobs as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = scratch();
    let server = Server::start_in(dir.path(), &["--workers", WORKERS]);
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let jobs = report::size(1000);
    let judge0 =
        |client: reqwest::Client, url: String| async move { judge0_run(&client, &url).await };
    let kiln = |client: reqwest::Client, url: String| async move { kiln_run(&client, &url).await };
    // Warm both paths (the interpreter's pages, the pool's connections), unmeasured.
    tokio.block_on(rate(&server.url, CLIENTS, judge0));
    tokio.block_on(rate(&server.url, CLIENTS, kiln));
    let (mut through_judge0, mut through_kiln) = (Vec::new(), Vec::new());
    for run in 0..report::runs() {
        // Alternating which goes first, so neither always meets a fuller database.
        let (j, k) = if run % 2 == 0 {
            let j = tokio.block_on(rate(&server.url, jobs, judge0));
            (j, tokio.block_on(rate(&server.url, jobs, kiln)))
        } else {
            let k = tokio.block_on(rate(&server.url, jobs, kiln));
            (tokio.block_on(rate(&server.url, jobs, judge0)), k)
        };
        println!("run {}: judge0 {j:.1} jobs/s, kiln {k:.1} jobs/s", run + 1);
        through_judge0.push(j);
        through_kiln.push(k);
    }
    let rows = [Row::measured(
        12,
        format!("Judge0 submit with wait=true of `print(1)`, {CLIENTS} clients, {jobs} jobs"),
        "jobs/s",
        through_judge0,
        Better::Higher,
        Some(("kiln's POST /v1/jobs + GET ?wait".to_owned(), through_kiln)),
        Goal::RatioAtLeast(0.9),
    )];
    report::write("compat", &rows);
}
