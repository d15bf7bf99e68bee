//! Injected faults: the disk fills up, an operator's `sqlite3` holds the write lock or a read
//! transaction for a long time, a job's run cannot be set up. Each time the server answers `503`
//! with `Retry-After` (or retries the job), writes nothing by halves, does not crash, and
//! recovers by itself once the fault goes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::util::{Server, assert_valid_history, sh, skip};

/// A `POST /v1/jobs`, with the answer's `Retry-After` header.
/// Prints what a fault test injected and what kiln did, so a run of the tests shows the
/// figures (`cargo test --test it faults -- --nocapture`).
fn report(fault: &str, outcome: String) {
    println!("fault injected: {fault}\n  outcome: {outcome}");
}

async fn submit(server: &Server, job: &Value) -> (u16, Value, Option<String>) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .json(job)
        .send()
        .await
        .expect("POST /v1/jobs");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, retry_after)
}

/// A job whose code is `kib` KiB long, so that storing it must grow the database's files.
fn bulky(kib: usize, echo: &str) -> Value {
    sh(&format!("# {}\necho {echo}", "x".repeat(kib << 10)))
}

fn jobs_in(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count jobs")
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// A tmpfs of `size` mounted at `dir`; unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Why not, where mounting is not permitted.
    fn mount(dir: PathBuf, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(SmallDisk(dir)),
            other => Err(format!(
                "cannot mount a tmpfs to fill up (needs root): {other:?}"
            )),
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        // A last, smaller write takes whatever the chunks left.
        while file.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_writes_nothing_by_halves_and_recovers_without_restart() {
    let dir = TempDir::new().expect("temp dir");
    let disk = match SmallDisk::mount(dir.path().join("disk"), "8m") {
        Ok(disk) => disk,
        Err(why) => {
            return skip(
                "a_full_disk_answers_503_writes_nothing_by_halves_and_recovers_without_restart",
                &why,
            );
        }
    };
    let db = disk.0.join("kiln.db");
    let db_arg = db.to_str().expect("utf-8 path").to_owned();
    let server = Server::start_in(dir, &["--db", &db_arg]).await;
    // Its output is too large to fit in what is left of the log once the disk is full.
    let running = server
        .submit(sh("sleep 1; yes survived | head -c 300000"))
        .await;
    server.running(&running).await;

    let filler = disk.fill();
    let mut accepted = vec![running.clone()];
    let mut refusal = None;
    for i in 0..20 {
        let (status, body, retry_after) = submit(&server, &bulky(256, &i.to_string())).await;
        match status {
            202 => accepted.push(body["id"].as_str().expect("id").to_owned()),
            _ => {
                refusal = Some((status, body, retry_after));
                break;
            }
        }
    }
    let (status, body, retry_after) = refusal.expect("a submit is refused once the disk is full");
    assert_eq!(status, 503, "{body}");
    let refused = status;
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("disk") && message.contains("full"),
        "{body}"
    );
    assert!(
        retry_after
            .as_ref()
            .is_some_and(|s| s.parse::<u32>().is_ok_and(|s| s > 0))
    );
    // Reads go on while writes cannot.
    let (status, job) = server.get(&format!("/v1/jobs/{running}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(
        jobs_in(&db),
        accepted.len() as i64,
        "the refused job left nothing behind"
    );

    // The run ends while the disk is still full: its result waits to be recorded.
    let log = server.dir.path().join("server.log");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("could not record the result yet") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, job) = server.get(&format!("/v1/jobs/{running}")).await;
    assert_eq!(
        job["status"], "running",
        "not recorded while the disk is full: {job}"
    );

    std::fs::remove_file(filler).expect("free the disk");
    let job = server.finished(&running).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"].as_str().map(str::len), Some(300_000));
    let after = server.submit(bulky(256, "after")).await;
    let job = server.finished(&after).await;
    assert_eq!(job["stdout"], "after\n", "{job}");
    for id in &accepted {
        server.finished(id).await;
        assert_valid_history(&server.events(id).await);
    }
    assert_eq!(integrity(&db), "ok");
    report(
        "the disk holding the database fills up (8 MiB tmpfs)",
        format!(
            "jobs accepted: {}; then {refused} \"{message}\" (Retry-After {}); refused submits \
             left nothing; the running job's result was recorded once space returned; {} jobs \
             ran to a valid end; integrity ok; no restart",
            accepted.len(),
            retry_after.unwrap_or_default(),
            accepted.len() + 1
        ),
    );
}

/// An ext4 file system on a loop device the test creates, which the test can make fail under
/// the server as a dying disk would; unmounted and detached when dropped.
struct LoopDisk {
    image: PathBuf,
    device: String,
    mount: PathBuf,
}

impl LoopDisk {
    /// Why not, where loop devices or mounting are not permitted.
    fn mount(dir: &Path) -> Result<LoopDisk, String> {
        let image = dir.join("disk.img");
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).expect("mount point");
        let run = |program: &str, args: &[&str]| -> Result<String, String> {
            let out = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            } else {
                Err(format!(
                    "{program} {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let (image_s, mount_s) = (
            image.to_str().expect("utf-8 path").to_owned(),
            mount.to_str().expect("utf-8 path").to_owned(),
        );
        let device = std::fs::File::create(&image)
            .and_then(|f| f.set_len(32 << 20))
            .map_err(|e| format!("{}: {e}", image.display()))
            .and_then(|()| run("mkfs.ext4", &["-q", "-F", &image_s]))
            .and_then(|_| run("losetup", &["-f", "--show", &image_s]))
            .map_err(|e| {
                format!("cannot make an ext4 file system on a loop device (needs root): {e}")
            })?;
        let disk = LoopDisk {
            image,
            device,
            mount,
        };
        run("mount", &[&disk.device, &mount_s])
            .map_err(|e| format!("cannot mount {}: {e}", disk.device))?;
        Ok(disk)
    }

    /// Shuts the file system down without flushing its journal (`EXT4_IOC_SHUTDOWN`): from now
    /// on every read and write of it fails, as on a disk that has gone away.
    fn fail(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
        let root = std::fs::File::open(&self.mount).expect("open the mount point");
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&root),
                EXT4_IOC_SHUTDOWN,
                &flags,
            )
        };
        assert_eq!(rc, 0, "shut the file system down");
    }

    /// What an operator does once the disk is back: mount it again (replaying its journal).
    /// A sandbox's mount namespace still holding the old mount keeps the shut-down file system
    /// alive, and mounting the device again would bring that back: so this retries until the
    /// file system it gets is a fresh, writable one.
    async fn remount(&self) {
        for _ in 0..100 {
            let umount = Command::new("umount").arg(&self.mount).status();
            assert!(umount.is_ok_and(|s| s.success()), "umount");
            let mount = Command::new("mount")
                .arg(&self.device)
                .arg(&self.mount)
                .status();
            assert!(mount.is_ok_and(|s| s.success()), "mount again");
            if std::fs::write(self.mount.join("probe"), "ok").is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the file system never came back writable");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[tokio::test]
async fn a_disk_that_fails_under_the_database_answers_503_and_loses_nothing_committed() {
    let _alone = crate::util::HOST_MOUNTS.write().await;
    let dir = TempDir::new().expect("temp dir");
    let disk = match LoopDisk::mount(dir.path()) {
        Ok(disk) => disk,
        Err(why) => {
            return skip(
                "a_disk_that_fails_under_the_database_answers_503_and_loses_nothing_committed",
                &why,
            );
        }
    };
    let db = disk.mount.join("kiln.db");
    let db_arg = db.to_str().expect("utf-8 path").to_owned();
    // No workers: the accepted jobs wait in the queue through the failure.
    let server = Server::start_in(dir, &["--db", &db_arg, "--workers", "0"]).await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(server.submit(sh(&format!("echo {i}"))).await);
    }

    disk.fail();
    let (status, body, retry_after) = submit(&server, &sh("echo lost")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(retry_after.is_some());
    let (status, _, _) = submit(&server, &sh("echo lost")).await;
    assert_eq!(status, 503, "still refused, and still answering");
    assert_eq!(
        server.get("/healthz").await.0,
        200,
        "the server did not crash"
    );

    // The operator brings the disk back and restarts kiln: every 202 is there and runs.
    let dir = server.kill9();
    disk.remount().await;
    let server = Server::start_in(dir, &["--db", &db_arg]).await;
    for (i, id) in accepted.iter().enumerate() {
        let job = server.finished(id).await;
        assert_eq!(job["stdout"], format!("{i}\n"), "{job}");
        assert_valid_history(&server.events(id).await);
    }
    assert_eq!(jobs_in(&db), 5, "nothing of the refused submits");
    assert_eq!(integrity(&db), "ok");
    report(
        "the disk under the database fails (ext4 on a loop device, EXT4_IOC_SHUTDOWN)",
        format!(
            "submits answered {status} while it was down, the server kept answering; after \
             remount and restart {} of {} accepted jobs ran, 0 lost; integrity ok",
            accepted.len(),
            accepted.len()
        ),
    );
}

/// An operator's `sqlite3` session on the server's database, fed statements line by line.
struct Sqlite3 {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Sqlite3 {
    fn open(db: &Path) -> Sqlite3 {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sqlite3 (apt-get install sqlite3)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Sqlite3 {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs `sql` and returns the first line it prints.
    fn run(&mut self, sql: &str) -> String {
        writeln!(self.stdin, "{sql}").expect("write to sqlite3");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from sqlite3");
        line.trim().to_owned()
    }

    fn quit(mut self) {
        writeln!(self.stdin, "COMMIT;\n.quit").expect("write to sqlite3");
        drop(self.stdin);
        self.child.wait().expect("sqlite3 exits");
    }
}

#[tokio::test]
async fn an_operators_write_lock_answers_503_until_it_goes() {
    let server = Server::start().await;
    let before = server.submit(sh("echo before")).await;
    server.finished(&before).await;

    let mut operator = Sqlite3::open(&server.db_path());
    assert_eq!(operator.run("BEGIN IMMEDIATE; SELECT 'locked';"), "locked");
    let (status, body, retry_after) = submit(&server, &sh("echo during")).await;
    assert_eq!(status, 503, "{body}");
    let refused = status;
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("lock")),
        "{body}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, job) = server.get(&format!("/v1/jobs/{before}")).await;
    assert_eq!(status, 200, "reads go on: {job}");
    let (status, _) = server.get("/readyz").await;
    assert_eq!(
        status, 503,
        "not ready while the database cannot take writes"
    );
    operator.quit();

    let after = server.submit(sh("echo after")).await;
    let job = server.finished(&after).await;
    assert_eq!(job["stdout"], "after\n", "{job}");
    assert_eq!(
        jobs_in(&server.db_path()),
        2,
        "the refused job left nothing"
    );
    assert_eq!(server.get("/readyz").await.0, 200);
    report(
        "an operator's sqlite3 holds the write lock (BEGIN IMMEDIATE)",
        format!(
            "submits answered {refused} (Retry-After {}), reads went on, /readyz 503; the next \
             submit after the lock went was accepted and ran; nothing half-written",
            retry_after.unwrap_or_default()
        ),
    );
}

fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len())
}

#[tokio::test]
async fn a_reader_holding_a_transaction_open_cannot_grow_the_wal_past_its_limit() {
    const LIMIT: u64 = 4 << 20;
    // No workers: only the submits write, so the log's size is theirs alone.
    let server = Server::start_with(&["--wal-max-mb", "4", "--workers", "0"]).await;
    server.submit(sh("echo first")).await;

    let mut reader = Sqlite3::open(&server.db_path());
    assert_eq!(reader.run("BEGIN; SELECT count(*) FROM jobs;"), "1");
    let mut refusal = None;
    for i in 0..100 {
        let (status, body, retry_after) = submit(&server, &bulky(200, &i.to_string())).await;
        if status != 202 {
            refusal = Some((status, body, retry_after));
            break;
        }
    }
    let (status, body, retry_after) = refusal.expect("submits stop at the WAL limit");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("write-ahead log")),
        "{body}"
    );
    assert!(retry_after.is_some());
    let held = wal_bytes(&server.db_path());
    assert!(
        (LIMIT..LIMIT + (1 << 20)).contains(&held),
        "the WAL stopped at its limit, give or take one job: {held}"
    );
    let log = std::fs::read_to_string(server.dir.path().join("server.log")).expect("log");
    assert!(log.contains("cannot be checkpointed"), "{log}");

    reader.quit();
    let mut after = None;
    for _ in 0..50 {
        let (status, body, _) = submit(&server, &sh("echo after")).await;
        if status == 202 {
            after = body["id"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = after.expect("submits are taken again once the reader is gone");
    assert_eq!(server.get(&format!("/v1/jobs/{after}")).await.0, 200);
    assert!(
        wal_bytes(&server.db_path()) < LIMIT / 4,
        "the WAL was truncated: {}",
        wal_bytes(&server.db_path())
    );
    let log = std::fs::read_to_string(server.dir.path().join("server.log")).expect("log");
    assert!(log.contains("checkpointed and truncated"), "{log}");
    report(
        "an operator's sqlite3 holds a read transaction open (--wal-max-mb 4)",
        format!(
            "the WAL stopped at {held} bytes (limit {LIMIT}); submits answered {status} at the \
             limit; once the reader let go the WAL was truncated to {} bytes and submits were \
             taken again",
            wal_bytes(&server.db_path())
        ),
    );
}

#[tokio::test]
async fn a_run_that_cannot_be_set_up_is_retried_with_backoff_then_ends_error_with_the_reason() {
    // Not under /tmp, which every sandbox gets empty of its own.
    let tools = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let bin = tools.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let interpreter = bin.join("fake");
    std::fs::copy("/bin/sh", &interpreter).expect("an interpreter of our own");
    let runtime = format!("fake={}", interpreter.display());
    let bind = bin.to_str().expect("utf-8 path").to_owned();
    let server = Server::start_with(&["--runtime", &runtime, "--sandbox-bind", &bind]).await;
    let works = server
        .submit(json!({"runtime": "fake", "code": "echo works"}))
        .await;
    let job = server.finished(&works).await;
    assert_eq!(job["stdout"], "works\n", "{job}");

    // The interpreter vanishes from the host: every start fails, though the job is not to blame.
    let hidden = bin.join("fake.off");
    std::fs::rename(&interpreter, &hidden).expect("hide the interpreter");
    let doomed = server
        .submit(json!({"runtime": "fake", "code": "echo never", "max_attempts": 2}))
        .await;
    let job = server.finished(&doomed).await;
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(job["outcome"], "runner_error", "{job}");
    assert_eq!(job["attempt"], 2, "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not start") && error.contains("fake"),
        "{job}"
    );
    let events = server.events(&doomed).await;
    assert_valid_history(&events);
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "job.queued",
            "job.started",
            "job.retrying",
            "job.started",
            "job.error"
        ]
    );
    let at = |i: usize| {
        let at = events[i]["at"].as_str().expect("at");
        humantime::parse_rfc3339(at).expect("an RFC 3339 time")
    };
    let waited = |from, to| at(to).duration_since(at(from)).unwrap_or_default();
    assert!(
        waited(1, 2) >= Duration::from_millis(250),
        "first retry after 250 ms: {events:?}"
    );
    assert!(
        waited(3, 4) >= Duration::from_millis(500),
        "the delay doubles: {events:?}"
    );

    // The workers go on with other jobs.
    let other = server.submit(sh("echo other")).await;
    assert_eq!(server.finished(&other).await["stdout"], "other\n");

    // The host is mended while a job is between attempts: a later attempt runs it.
    let mended = server
        .submit(json!({"runtime": "fake", "code": "echo mended", "max_attempts": 5}))
        .await;
    for _ in 0..500 {
        let events = server.events(&mended).await;
        if events.iter().any(|e| e["type"] == "job.retrying") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::rename(&hidden, &interpreter).expect("restore the interpreter");
    let job = server.finished(&mended).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "mended\n");
    assert!(job["attempt"].as_u64() >= Some(2), "{job}");
    assert_valid_history(&server.events(&mended).await);
    report(
        "a run cannot be set up (the interpreter vanishes from the host)",
        format!(
            "retried after 250 ms, then 500 ms; ended error/runner_error after 2 attempts with \
             \"{error}\"; other jobs ran meanwhile; once mended, a retrying job succeeded at \
             attempt {}",
            job["attempt"]
        ),
    );
}

#[tokio::test]
async fn a_job_for_a_runtime_its_server_lacks_ends_error_at_once_with_the_reason() {
    // One server takes jobs for a runtime; the one that runs them does not have it.
    let dir = TempDir::new().expect("temp dir");
    let runtime = format!(
        "elsewhere={}",
        std::fs::canonicalize("/bin/sh").unwrap().display()
    );
    let taker = Server::start_in(dir, &["--workers", "0", "--runtime", &runtime]).await;
    let id = taker
        .submit(json!({"runtime": "elsewhere", "code": "echo hi"}))
        .await;
    let (_, dir) = taker.terminate();
    let runner = Server::start_in(dir, &[]).await;
    let job = runner.finished(&id).await;
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(job["outcome"], "runner_error", "{job}");
    assert_eq!(
        job["attempt"], 1,
        "not retried: this server will never have it"
    );
    assert!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("elsewhere") && e.contains("not available")),
        "{job}"
    );
    let again = runner.submit(sh("echo next")).await;
    assert_eq!(runner.finished(&again).await["stdout"], "next\n");
    report(
        "the server that claims a job lacks its runtime",
        format!(
            "ended error/runner_error at attempt 1 with {}; the next job ran",
            job["error"]
        ),
    );
}
