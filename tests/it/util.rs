//! The test harness: starts the real `kiln` binary on a loopback port with its own database file
//! and work directory, and talks to it over HTTP.
//!
//! With `KILN_TEST_DB=postgres://…` set, every server the harness starts gets a PostgreSQL
//! database of its own on that server instead of a SQLite file, so the same tests prove the same
//! promises on both backends. A server restarted in the same directory (after `kill -9`, say)
//! finds its database again. Tests that read or damage the SQLite file itself do not apply
//! there: [`Server::db_path`] says so, and `.ci/run` leaves those tests out of that run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::db::{self, Cell};
use crate::pg::TestDb;

/// What a test does when the host lacks what it needs (a loop device, a compiler): says so and
/// returns on a developer's machine, fails under `KILN_TEST_STRICT=1`, which `.ci/run` sets so
/// that a test CI could not run is never counted as passed. The unit tests' own helper, shared so
/// that both kinds of test follow one rule.
#[path = "../../src/testing.rs"]
mod testing;
pub(crate) use testing::skip;

/// Held exclusively by a test that mounts a file system and must unmount it again
/// (`faults`), and shared by one that keeps servers of its own running for long (the Python
/// client's pytest run): every server keeps sandboxes started ahead of their runs, each in a
/// mount namespace copied from the host's, and one copied while the test's file system was
/// mounted keeps it alive however often it is unmounted.
pub static HOST_MOUNTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The PostgreSQL databases of servers that were stopped, by their directory, for the server
/// started next in that directory (a restart) to take over.
static PARKED: std::sync::Mutex<Vec<(PathBuf, TestDb)>> = std::sync::Mutex::new(Vec::new());

/// The PostgreSQL database of each directory a server ran in, for `kiln` subcommands run on it.
static URLS: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// Whether the harness runs servers on PostgreSQL (`KILN_TEST_DB`).
pub fn on_postgres() -> bool {
    std::env::var_os("KILN_TEST_DB").is_some()
}

pub struct Server {
    child: Child,
    db: PathBuf,
    /// The server's database when it runs on PostgreSQL.
    pg: Option<TestDb>,
    /// The flags the test gave, which a restart gives again.
    args: Vec<String>,
    /// The host uids this server's sandboxed jobs run as: `uid_base..uid_base + UID_SPAN`.
    pub uid_base: u32,
    _stdout: BufReader<ChildStdout>,
    pub url: String,
    pub dir: TempDir,
    http: reqwest::Client,
}

impl Server {
    /// A server with two workers on a fresh database.
    pub async fn start() -> Server {
        Server::start_in(TempDir::new().expect("temp dir"), &[]).await
    }

    pub async fn start_with(args: &[&str]) -> Server {
        Server::start_in(TempDir::new().expect("temp dir"), args).await
    }

    /// Starts a server on the database in `dir` (which may already hold one), its jobs on a uid
    /// range of their own unless `args` name one (`--sandbox-uid-base`).
    pub async fn start_in(dir: TempDir, args: &[&str]) -> Server {
        let given: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let uid_base = flag_value(args, "--sandbox-uid-base").map_or_else(next_uid_base, |base| {
            base.parse().expect("a numeric --sandbox-uid-base")
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("log file");
        // A test may put the database elsewhere (a small file system, say).
        let db = flag_value(args, "--db").map_or_else(|| dir.path().join("kiln.db"), PathBuf::from);
        let pg = if on_postgres() && flag_value(args, "--db").is_none() {
            let pg = database_for(dir.path()).await;
            lock(&URLS).push((dir.path().to_owned(), pg.url.clone()));
            Some(pg)
        } else {
            None
        };
        let mut own = vec![
            "--db".into(),
            pg.as_ref()
                .map_or_else(|| db.clone().into_os_string(), |pg| pg.url.clone().into()),
        ];
        if flag_value(args, "--work-root").is_none() {
            own.extend([
                "--work-root".into(),
                dir.path().join("work").into_os_string(),
            ]);
        }
        let mut rest = args.to_vec();
        if let Some(i) = rest.iter().position(|a| *a == "--db") {
            rest.drain(i..(i + 2).min(rest.len()));
        }
        let args = rest.as_slice();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .args(own)
            .args(
                flag_value(args, "--listen")
                    .is_none()
                    .then_some(["--listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(
                flag_value(args, "--sandbox-uid-base")
                    .is_none()
                    .then(|| ["--sandbox-uid-base".to_owned(), uid_base.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(defaults_not_in(args))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start kiln");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("kiln listening on ")
            .unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("kiln did not start: {line:?}\n{log}")
            })
            .to_owned();
        Server {
            child,
            db,
            pg,
            args: given,
            uid_base,
            _stdout: stdout,
            url,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// The server's SQLite file, for a test that reads it as an operator's `sqlite3` would.
    pub fn db_path(&self) -> PathBuf {
        assert!(
            self.pg.is_none(),
            "this test reads the SQLite file, and does not apply on PostgreSQL (KILN_TEST_DB)"
        );
        self.db.clone()
    }

    /// The server's PostgreSQL database, when it runs on one.
    pub fn pg_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|pg| pg.url.as_str())
    }

    /// The rows `sql` answers, read from the server's database on either backend (see
    /// [`crate::db`]).
    pub fn rows(&self, sql: &str) -> Vec<Vec<Cell>> {
        match &self.pg {
            None => db::sqlite_rows(&self.db, sql),
            Some(pg) => db::pg_rows(&pg.url, sql),
        }
    }

    /// The whole number `sql` answers, read from the server's database on either backend: a
    /// count of rows, most often, where a test proves that nothing was half-written.
    #[track_caller]
    pub fn count(&self, sql: &str) -> i64 {
        match self.rows(sql).first().and_then(|row| row.first()) {
            Some(cell) => cell.int(),
            None => panic!("{sql}: no row"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill9(mut self) -> TempDir {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        self.park_database();
        std::mem::replace(&mut self.dir, TempDir::new().expect("temp dir"))
    }

    /// Leaves the server's PostgreSQL database for the next server started in its directory.
    fn park_database(&mut self) {
        if let Some(pg) = self.pg.take() {
            lock(&PARKED).push((self.dir.path().to_owned(), pg));
        }
    }

    /// SIGKILL, then a new server on the same database, directory and address, as a crash and
    /// an operator's restart would leave it: clients that were talking to it may reconnect.
    pub async fn restart(self) -> Server {
        self.kill9_for_restart().restart().await
    }

    /// SIGKILL, keeping what the same node needs to come back: its flags (and with them its node
    /// id), its address and its uid range, so that a restarted cluster node is the node it was.
    pub fn kill9_for_restart(self) -> Killed {
        let mut args = self.args.clone();
        set_flag(
            &mut args,
            "--listen",
            self.url.trim_start_matches("http://"),
        );
        set_flag(&mut args, "--sandbox-uid-base", &self.uid_base.to_string());
        let uid_base = self.uid_base;
        Killed {
            dir: self.kill9(),
            args,
            uid_base,
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> (std::process::ExitStatus, TempDir) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for exit");
        self.park_database();
        let dir = std::mem::replace(&mut self.dir, TempDir::new().expect("temp dir"));
        (status, dir)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string().into_bytes(), &[])
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        decode(request.send().await.expect("POST")).await
    }

    /// Submits a job and returns its id, asserting the 202.
    pub async fn submit(&self, job: Value) -> String {
        let (status, body) = self.post("/v1/jobs", &job).await;
        assert_eq!(status, StatusCode::ACCEPTED, "submit answered {body}");
        body["id"].as_str().expect("job id").to_owned()
    }

    /// Waits (long-poll) until the job is terminal and returns it.
    pub async fn finished(&self, id: &str) -> Value {
        for _ in 0..12 {
            let (status, job) = self.get(&format!("/v1/jobs/{id}?wait=10")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if is_terminal(&job["status"]) {
                return job;
            }
        }
        panic!("job {id} did not finish in 2 minutes");
    }

    /// Polls until the job is running.
    pub async fn running(&self, id: &str) -> Value {
        for _ in 0..1000 {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            if job["status"] == "running" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never started");
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/jobs/{id}/events")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"].as_array().expect("events").clone()
    }
}

impl Drop for Server {
    /// SIGTERM first, so the server removes its cgroups as a real shutdown does; SIGKILL if it
    /// takes too long.
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..500 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(mutex: &'static std::sync::Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The database a server started in `dir` runs on: the one a server before it in `dir` left,
/// or a fresh one.
async fn database_for(dir: &std::path::Path) -> TestDb {
    let parked = {
        let mut parked = lock(&PARKED);
        parked
            .iter()
            .position(|(d, _)| d == dir)
            .map(|i| parked.swap_remove(i).1)
    };
    match parked {
        Some(pg) => pg,
        None => TestDb::create("harness")
            .await
            .expect("KILN_TEST_DB names a server, so there is no skipping"),
    }
}

/// Starts `kiln serve --db db` (work root under `work`, no workers, `--sandbox none`: no job
/// runs) listening on `listen` with `extra` flags, and stops it again once it listens: `Ok` if
/// it got that far, else its exit status and what it said on stderr before it exited.
pub fn serve_until_listening(
    db: &std::ffi::OsStr,
    work: &std::path::Path,
    listen: &str,
    extra: &[&str],
) -> Result<(), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--db")
        .arg(db)
        .arg("--work-root")
        .arg(work)
        .args(["--listen", listen, "--workers", "0", "--sandbox", "none"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    let listening = line.starts_with("kiln listening on");
    if listening {
        // SAFETY: kill(2) on the child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let out = child.wait_with_output().expect("wait for kiln");
    match listening {
        true => Ok(()),
        false => Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// What `--db` names the database of the servers started in `dir` by, for a test that runs
/// another subcommand (`kiln token`) before any server starts there: the SQLite file, or on
/// PostgreSQL a database made now and left for the first server in `dir`.
pub fn db_arg_in(dir: &std::path::Path) -> std::ffi::OsString {
    if !on_postgres() {
        return dir.join("kiln.db").into_os_string();
    }
    if let Some((_, url)) = lock(&URLS).iter().rev().find(|(d, _)| d == dir) {
        return url.into();
    }
    let mut parked = lock(&PARKED);
    if let Some((_, pg)) = parked.iter().find(|(d, _)| d == dir) {
        return pg.url.clone().into();
    }
    // Called outside the test's runtime or inside it, where it may not block: a thread of its
    // own with a runtime of its own makes the database.
    let pg = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to make the test database")
            .block_on(TestDb::create("harness"))
    })
    .join()
    .expect("make the test database")
    .expect("KILN_TEST_DB names a server, so there is no skipping");
    let url = pg.url.clone();
    parked.push((dir.to_owned(), pg));
    url.into()
}

/// A server killed by [`Server::kill9_for_restart`], to be started again.
pub struct Killed {
    dir: TempDir,
    args: Vec<String>,
    uid_base: u32,
}

impl Killed {
    pub async fn restart(self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Server::start_in(self.dir, &args).await
    }

    /// The host uids the killed server's jobs ran as, where nothing may be left.
    pub fn job_uids(&self) -> std::ops::Range<u32> {
        self.uid_base + 1..self.uid_base + UID_SPAN
    }
}

/// Gives `flag` the value `value` in `args`, in place of any it had.
fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_owned(),
        None => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

/// The value given for `flag` in `args`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| *a == flag)?;
    args.get(i + 1).copied()
}

/// Two workers, node id `test` and no shutdown grace, unless the test says otherwise.
fn defaults_not_in(args: &[&str]) -> Vec<&'static str> {
    [
        ("--workers", "2"),
        ("--node-id", "test"),
        ("--shutdown-grace-secs", "0"),
    ]
    .into_iter()
    .filter(|(flag, _)| !args.contains(flag))
    .flat_map(|(flag, value)| [flag, value])
    .collect()
}

/// An answer's status and JSON body (`{"raw": text}` when the body is not JSON).
pub async fn decode(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, body)
}

pub fn is_terminal(status: &Value) -> bool {
    ["succeeded", "failed", "timed_out", "cancelled", "error"]
        .iter()
        .any(|s| status == s)
}

pub fn sh(code: &str) -> Value {
    json!({"runtime": "sh", "code": code})
}

/// Checks that a job's events are a valid path through the state machine: queued first; each
/// start followed by progress, then a retry or the end before the next start, attempts counting
/// up from 1; exactly one terminal event, last but for the attempts of its webhook call, which
/// only follow it.
pub fn assert_valid_history(events: &[Value]) {
    if let Err(fault) = check_history(events) {
        panic!("{fault}");
    }
}

/// Why a job's history is not a valid path through the state machine.
#[derive(Debug)]
pub enum HistoryFault {
    /// An attempt started while an earlier one had not ended: the job ran twice at once.
    Overlap(String),
    Invalid(String),
}

impl std::fmt::Display for HistoryFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HistoryFault::Overlap(m) => write!(f, "two attempts at once: {m}"),
            HistoryFault::Invalid(m) => write!(f, "invalid history: {m}"),
        }
    }
}

/// [`assert_valid_history`], answering instead of panicking, for checkers that count faults.
pub fn check_history(events: &[Value]) -> Result<(), HistoryFault> {
    let invalid = |what: &str| Err(HistoryFault::Invalid(format!("{what}: {events:?}")));
    let webhook = |e: &Value| {
        e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("webhook."))
    };
    let own = events.iter().take_while(|e| !webhook(e)).count();
    if !events[own..].iter().all(webhook) {
        return invalid("webhook attempts only after the job's end");
    }
    let events = &events[..own];
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect();
    if types.first() != Some(&"job.queued") {
        return invalid("queued first");
    }
    let terminal = |t: &str| {
        matches!(
            t,
            "job.succeeded" | "job.failed" | "job.timed_out" | "job.cancelled" | "job.error"
        )
    };
    if types.iter().filter(|t| terminal(t)).count() != 1 {
        return invalid("exactly one terminal event");
    }
    if !terminal(types.last().unwrap_or(&"")) {
        return invalid("terminal last");
    }
    let mut running: Option<u64> = None;
    let mut attempts = 0;
    for event in &events[1..] {
        let attempt = event["attempt"].as_u64();
        match event["type"].as_str().unwrap_or("?") {
            "job.started" => {
                if running.is_some() {
                    return Err(HistoryFault::Overlap(format!("{events:?}")));
                }
                attempts += 1;
                if attempt != Some(attempts) {
                    return invalid("attempts count up");
                }
                running = attempt;
            }
            "job.retrying" => {
                if running.take() != attempt {
                    return invalid("retry of the running attempt");
                }
            }
            "job.progress" => {
                if running.is_none() || running != attempt {
                    return invalid("progress of the running attempt");
                }
            }
            "job.cancelled" if running.is_none() => {
                if attempt.is_some() {
                    return invalid("a queued job's cancel belongs to no attempt");
                }
            }
            t if terminal(t) => {
                if running.is_none() {
                    return invalid("an end without a start");
                }
                if running.take() != attempt {
                    return invalid("end of the running attempt");
                }
            }
            _ => return invalid("an unexpected event"),
        }
    }
    Ok(())
}

/// Host uids one server's jobs may use (its sandbox maps into 10,001 of them).
pub const UID_SPAN: u32 = 10_001;

/// A uid range no other server of this test run uses, so that "no process of this server's jobs
/// is left" can be checked while other tests run jobs too.
fn next_uid_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    400_000 + (std::process::id() % 64) * 40_000_000 + n * (UID_SPAN + 1)
}

impl Server {
    /// Runs the command-line client against this server, in its directory, to its end.
    /// Runs `kiln` in the server's directory with `KILN_URL` naming the server and, on
    /// PostgreSQL, `KILN_DB` its database, so that an operator's command finds what the
    /// server uses (its `kiln.db` in the directory, on SQLite) unless `--db` says otherwise.
    pub fn kiln(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .envs(self.pg_url().map(|url| ("KILN_DB", url)))
            .env("KILN_URL", &self.url)
            .current_dir(self.dir.path())
            .output()
            .expect("run kiln")
    }

    /// The host uids its jobs run as. `uid_base` itself is the sandboxes' init (root in their
    /// user namespace), of which a server keeps some started ahead of their jobs.
    pub fn job_uids(&self) -> std::ops::Range<u32> {
        self.uid_base + 1..self.uid_base + UID_SPAN
    }
}

/// Processes of jobs whose real uid lies in `range`, as [`processes_of_uids`], but without a
/// sandbox's job still waiting for its run: that process runs the server's own executable until
/// its `execve`, and never anything submitted. What a running server's jobs left behind.
pub fn job_processes(range: std::ops::Range<u32>) -> Vec<i32> {
    let server = std::fs::canonicalize(env!("CARGO_BIN_EXE_kiln")).expect("the server's binary");
    processes_of_uids(range)
        .into_iter()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe != server))
        .collect()
}

/// Live (not zombie) processes whose real uid lies in `range`, whatever they run: after a server
/// is gone, nothing of its sandboxes may be left.
pub fn processes_of_uids(range: std::ops::Range<u32>) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        };
        let uid = field("Uid:").and_then(|u| u.parse::<u32>().ok());
        let zombie = field("State:").is_some_and(|s| s == "Z");
        if uid.is_some_and(|u| range.contains(&u)) && !zombie {
            found.push(pid);
        }
    }
    found
}
