//! The real server as the benchmarks drive it: the release binary started on a database in a
//! scratch directory on the target directory's disk (not a tmpfs, so fsync costs what it costs in
//! a deployment), stopped cleanly, and loaded from many keep-alive clients. Apart from the tests'
//! harness because a bench builds in release and measures what the tests only check.

// Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// Resident memory of process `pid`, KiB; `None` once it is gone.
pub fn rss_kib_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The event types that end a job.
pub const TERMINAL_EVENTS: [&str; 5] = [
    "job.succeeded",
    "job.failed",
    "job.timed_out",
    "job.cancelled",
    "job.error",
];

/// Concurrent keep-alive clients submitting, as in row 1.
pub const CLIENTS: usize = 64;

/// A scratch directory on the target directory's disk, traversable by everyone: a sandbox's
/// unprivileged init must reach its staging directory in a work root beneath.
pub fn scratch() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("scratch directory permissions");
    dir
}

/// `kiln serve` on a database, `DIR/kiln.db` unless told otherwise (work root `DIR/work`, log
/// `DIR/server.log`), stopped with SIGTERM, then SIGKILL after 10 s, when dropped, panics
/// included.
pub struct Server {
    child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Server {
    /// Starts the server in `dir` with `args` added (`--workers`, `--runtime`, ...) and waits
    /// until it listens.
    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        Server::start_on(dir, dir.join("kiln.db").as_os_str(), args)
    }

    /// [`Server::start_in`] on the database `db`: a SQLite file elsewhere, or a PostgreSQL URL.
    pub fn start_on(dir: &Path, db: &OsStr, args: &[&str]) -> Server {
        let log = File::create(dir.join("server.log")).expect("server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .arg("--work-root")
            .arg(dir.join("work"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start kiln serve");
        // The pipe stays open with the child: kiln prints nothing after this line.
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        let Some(url) = line.trim().strip_prefix("kiln listening on ") else {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("kiln did not start: {line:?}\n{log}");
        };
        Server {
            url: url.to_owned(),
            child,
            dir: dir.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, KiB.
    pub fn rss_kib(&self) -> f64 {
        rss_kib_of(self.pid()).expect("the server's VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("kiln did not stop within 10 s of SIGTERM: killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `body` and returns the job's id; anything but `202` fails the bench.
pub async fn submit(client: &reqwest::Client, url: &str, body: &str) -> String {
    let response = client
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /v1/jobs");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["id"].as_str().expect("a job id").to_owned()
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.expect("GET");
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.json().await.expect("JSON answer")
}

/// [`CLIENTS`] tasks submit `body` back to back over one keep-alive pool, `jobs` in all; returns
/// submits/s. An in-process client: it shares the cores with the server, so compare its rates
/// only with rates it measured itself.
pub async fn submit_many(url: &str, body: &'static str, jobs: usize) -> f64 {
    submit_many_to(&[url], body, jobs).await
}

/// [`submit_many`] spread over several servers: task `i` submits to `urls[i % urls.len()]`, so
/// each server gets an equal share of the clients.
pub async fn submit_many_to(urls: &[&str], body: &'static str, jobs: usize) -> f64 {
    let client = reqwest::Client::new();
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let url = urls[i % urls.len()].to_owned();
            let (client, sent) = (client.clone(), sent.clone());
            tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < jobs {
                    submit(&client, &url, body).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a submitting task");
    }
    jobs as f64 / start.elapsed().as_secs_f64()
}
