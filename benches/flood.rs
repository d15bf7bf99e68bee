//! Memory under a flood of submits: the release server (no workers, so every accepted job stays
//! queued) takes 1,000,000 submits from 64 concurrent keep-alive clients as fast as they come,
//! then 20,000 more past its queue limit, which it refuses with 429. Its resident memory is
//! sampled every 50 ms throughout.
//!
//! Why: backpressure must keep memory bounded however fast clients submit. Queued jobs live in
//! the database, not in memory; what a submit holds in memory is bounded by the writer's queue
//! and the open connections. The figure to read is the peak RSS beside the size the queue
//! takes on disk (a server that held its queue in memory would need at least that), and beside
//! the idle RSS.
//!
//! Run it with `scripts/bench-flood` or `cargo bench --bench flood`; `KILN_FLOOD_JOBS` and
//! `KILN_FLOOD_RUNS` change the 1,000,000 jobs and 3 runs. Prints a table and writes the same
//! figures as JSON to `target/bench-flood.json`.

mod common;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::median;
use serde_json::json;
use server::{CLIENTS, Server, rss_kib_of};

const OVERFLOW: u64 = 20_000;
const SUBMIT_BODY: &str = r#"{"runtime":"sh","code":"true"}"#;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

struct Run {
    accepted: u64,
    refused: u64,
    submits_per_sec: f64,
    idle_mib: f64,
    peak_mib: f64,
    db_mib: f64,
}

fn main() {
    let jobs: u64 = env_or("KILN_FLOOD_JOBS", 1_000_000);
    let runs: usize = env_or("KILN_FLOOD_RUNS", 3);
    let mut results = Vec::new();
    for run in 1..=runs {
        let result = flood(jobs);
        eprintln!(
            "run {run}: {} accepted, {} refused, {:.0} submits/s, RSS idle {:.1} MiB, peak {:.1} MiB, \
             database {:.1} MiB",
            result.accepted,
            result.refused,
            result.submits_per_sec,
            result.idle_mib,
            result.peak_mib,
            result.db_mib
        );
        results.push(result);
    }
    let med = |f: fn(&Run) -> f64| median(&results.iter().map(f).collect::<Vec<_>>());
    let (idle, peak, db, rate) = (
        med(|r| r.idle_mib),
        med(|r| r.peak_mib),
        med(|r| r.db_mib),
        med(|r| r.submits_per_sec),
    );
    println!(
        "\nflood: {jobs} submits then {OVERFLOW} past the limit, {CLIENTS} clients, median of {runs}"
    );
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| server RSS idle | {idle:.1} MiB |");
    println!("| server RSS peak during the flood | {peak:.1} MiB |");
    println!("| the queue on disk (database file) | {db:.1} MiB |");
    println!("| peak RSS / queue on disk | {:.3} |", peak / db);
    println!("| submits/s (client in the same machine) | {rate:.0} |");
    let out = json!({
        "jobs": jobs, "overflow": OVERFLOW, "clients": CLIENTS, "runs": runs,
        "rss_idle_mib": idle, "rss_peak_mib": peak, "db_mib": db,
        "peak_over_db": peak / db, "submits_per_sec": rate,
        "accepted": results.iter().map(|r| r.accepted).collect::<Vec<_>>(),
        "refused": results.iter().map(|r| r.refused).collect::<Vec<_>>(),
    });
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/bench-flood.json");
    std::fs::write(&path, out.to_string()).expect("write the JSON figures");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flood(jobs: u64) -> Run {
    let dir = server::scratch();
    let server = Server::start_in(
        dir.path(),
        &["--workers", "0", "--max-queued-jobs", &jobs.to_string()],
    );
    std::thread::sleep(Duration::from_millis(500));
    let idle = server.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, pid) = (Arc::clone(&stop), Arc::clone(&peak), server.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib_of(pid).unwrap_or(0.0) as u64, Ordering::Relaxed);
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let started = Instant::now();
    let (accepted, refused_early) = runtime.block_on(submit(&server.url, jobs));
    let elapsed = started.elapsed();
    let (accepted_late, refused) = runtime.block_on(submit(&server.url, OVERFLOW));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert_eq!(accepted, jobs, "every submit up to the limit is accepted");
    assert_eq!(refused_early, 0);
    assert_eq!(accepted_late, 0, "past the limit, every submit is refused");
    drop(server);
    let db = std::fs::metadata(dir.path().join("kiln.db")).map_or(0, |m| m.len());
    Run {
        accepted,
        refused,
        submits_per_sec: jobs as f64 / elapsed.as_secs_f64(),
        idle_mib: idle / 1024.0,
        peak_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        db_mib: db as f64 / (1 << 20) as f64,
    }
}

/// Submits `n` jobs from [`CLIENTS`] keep-alive clients; counts 202s and 429s.
async fn submit(url: &str, n: u64) -> (u64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = reqwest::Client::new();
        let url = format!("{url}/v1/jobs");
        let (next, accepted, refused) = (
            Arc::clone(&next),
            Arc::clone(&accepted),
            Arc::clone(&refused),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(SUBMIT_BODY)
                    .send()
                    .await
                    .expect("submit");
                match response.status().as_u16() {
                    202 => accepted.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("submit answered {other}"),
                };
                response.bytes().await.expect("body");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}
