//! Operations on a live deployment: pruning old history, backing up, metrics, and the doctor's
//! checks of the host, each against the real server binary and its database file.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::util::{Server, on_postgres, sh};

/// Submits `sh("true")` jobs one after another until `stop`, counting answers that were not 202.
pub(crate) fn keep_submitting(
    server: &Server,
    stop: Arc<AtomicBool>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let (url, accepted, refused) = (
        server.url.clone(),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (ok, bad) = (Arc::clone(&accepted), Arc::clone(&refused));
    let task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !stop.load(Ordering::Relaxed) {
            let answer = http
                .post(format!("{url}/v1/jobs"))
                .json(&sh("true"))
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 202 => ok.fetch_add(1, Ordering::Relaxed),
                _ => bad.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    (task, accepted, refused)
}

fn count(conn: &Connection, sql: &str, id: &str) -> i64 {
    conn.query_row(sql, [id], |r| r.get(0)).expect(sql)
}

fn scalar(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

// Two threads: the submitter goes on while the test waits for the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_finished_jobs_and_batches_into_an_archive_while_the_server_runs() {
    let server = Server::start().await;
    // Before the cut-off: a job still running when the prune comes, finished jobs, a batch.
    let running = server.submit(sh("sleep 20")).await;
    server.running(&running).await;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(server.submit(sh(&format!("echo old-{i}"))).await);
    }
    let suite = json!({"runtime": "sh", "code": "cat", "cases": [
        {"stdin": "a", "expected_output": "a"}, {"stdin": "b", "expected_output": "b"}]});
    let (status, batch) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, 202, "{batch}");
    let batch_id = batch["id"].as_str().expect("batch id").to_owned();
    let cases: Vec<String> = batch["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["job_id"].as_str().expect("case job id").to_owned())
        .collect();
    for id in old.iter().chain(&cases) {
        server.finished(id).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = kiln::job::time::rfc3339(kiln::job::time::now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    // After it: a recent job, whose history must stay whole.
    let recent = server.submit(sh("echo recent")).await;
    server.finished(&recent).await;
    let recent_events = server.events(&recent).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (submitter, accepted, refused) = keep_submitting(&server, Arc::clone(&stop));
    let archive = server.dir.path().join("archive.db");
    let out = server.kiln(&[
        "prune",
        "--finished-before",
        &cutoff,
        "--archive",
        archive.to_str().expect("utf-8 path"),
        "--chunk",
        "2",
        "--json",
    ]);
    stop.store(true, Ordering::Relaxed);
    submitter.await.expect("submitter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["jobs"], 5, "3 jobs and 2 cases: {report}");
    assert_eq!(report["batches"], 1, "{report}");
    assert!(report["transactions"].as_u64() >= Some(4), "{report}");
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "every submit meanwhile got 202"
    );
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "submits went on meanwhile"
    );

    for id in old.iter().chain(&cases) {
        let (status, _) = server.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 404, "{id} was pruned");
    }
    let (status, _) = server.get(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(status, 404, "the batch was pruned");
    assert_eq!(
        server.events(&recent).await,
        recent_events,
        "recent history untouched"
    );
    let (_, still) = server.get(&format!("/v1/jobs/{running}")).await;
    assert_eq!(
        still["status"], "running",
        "an unfinished job stays: {still}"
    );

    let archived = Connection::open_with_flags(&archive, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the archive opens");
    let stdout: String = archived
        .query_row("SELECT stdout FROM jobs WHERE id = ?1", [&old[0]], |r| {
            r.get(0)
        })
        .expect("an archived job");
    assert_eq!(stdout, "old-0\n");
    assert_eq!(scalar(&archived, "SELECT count(*) FROM jobs"), 5);
    assert_eq!(
        count(
            &archived,
            "SELECT count(*) FROM events WHERE job_id = ?1",
            &old[1]
        ),
        3,
        "queued, started, succeeded"
    );
    assert_eq!(
        count(
            &archived,
            "SELECT count(*) FROM events WHERE batch_id = ?1",
            &batch_id
        ),
        2 + 2 * 3,
        "batch.queued, batch.completed and each case's three"
    );
    assert_eq!(
        count(
            &archived,
            "SELECT count(*) FROM batches WHERE id = ?1",
            &batch_id
        ),
        1
    );

    let prune = report["prune_id"].as_i64().expect("prune id");
    assert_eq!(
        server.count(&format!(
            "SELECT jobs FROM prunes WHERE id = {prune} AND finished_at IS NOT NULL"
        )),
        5,
        "the prune is on record"
    );
    let old_events = format!("SELECT count(*) FROM events WHERE job_id = '{}'", old[0]);
    assert_eq!(server.count(&old_events), 0);
    assert_eq!(server.count("SELECT count(*) FROM prune_in_progress"), 0);
}

#[tokio::test]
async fn after_a_prune_an_operators_delete_on_events_still_fails() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    let out = server.kiln(&[
        "prune",
        "--db",
        "kiln.db",
        "--finished-before",
        "0s",
        "--yes",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = server.submit(sh("true")).await;
    server.finished(&after).await;
    let delete = Command::new("sqlite3")
        .arg(server.db_path())
        .arg("DELETE FROM events")
        .output()
        .expect("run sqlite3");
    let stderr = String::from_utf8_lossy(&delete.stderr);
    assert!(!delete.status.success(), "DELETE must fail");
    assert!(stderr.contains("append-only"), "{stderr}");
    let conn = Connection::open(server.db_path()).expect("open");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM events WHERE job_id = ?1", &id),
        0
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM events WHERE job_id = ?1",
            &after
        ),
        3,
        "the prune took the first job's events; the operator could not take the second's"
    );
}

#[tokio::test]
async fn a_job_whose_webhook_is_still_pending_is_not_pruned() {
    // Nothing listens on port 9: the call fails and stays pending, to be retried in an hour.
    let server = Server::start_with(&["--webhook-retry-base-ms", "3600000"]).await;
    let id = server
        .submit(json!({"runtime": "sh", "code": "true", "callback_url": "http://127.0.0.1:9/hook"}))
        .await;
    server.finished(&id).await;
    let out = server.kiln(&["prune", "--finished-before", "0s", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["jobs"], 0, "{report}");
    let (status, _) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_jobs_are_submitted_opens_and_passes_integrity_check() {
    let server = Server::start().await;
    for _ in 0..5 {
        let id = server.submit(sh("echo before")).await;
        server.finished(&id).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (submitter, accepted, refused) = keep_submitting(&server, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = server.kiln(&["backup", "copy.db", "--db", "kiln.db"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    submitter.await.expect("submitter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "every submit meanwhile got 202"
    );
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "submits went on meanwhile"
    );

    let copy = Connection::open_with_flags(
        server.dir.path().join("copy.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the backup opens");
    let integrity: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let version: u32 = copy
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(
        version,
        kiln::store::MIGRATIONS.last().expect("migrations").version
    );
    let before = count(
        &copy,
        "SELECT count(*) FROM jobs WHERE stdout = ?1",
        "before\n",
    );
    assert_eq!(before, 5, "every job finished before the backup is in it");

    let again = server.kiln(&["backup", "copy.db", "--db", "kiln.db"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing file is never overwritten"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// A uid range for the doctor's test runs (`test`: 0 and 1 of this file, 2 of `cluster.rs`)
/// that no test server uses.
pub(crate) fn doctor_uid_base(test: u32) -> String {
    (3_000_000_000 + (std::process::id() % 64) * 60_000 + test * 20_000).to_string()
}

#[tokio::test]
async fn the_doctor_finds_a_working_host_database_and_server() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    let work = server.dir.path().join("doctor-work");
    let out = server.kiln(&[
        "doctor",
        "--db",
        "kiln.db",
        "--work-root",
        work.to_str().expect("utf-8 path"),
        "--sandbox-uid-base",
        &doctor_uid_base(0),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "ok    sandbox   level full",
        "ok    runtimes  sh: ",
        "ok    database  integrity_check: ok",
        &format!("ok    server    {} is ready", server.url),
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    let left: Vec<_> = std::fs::read_dir(&work).expect("work root").collect();
    assert!(
        left.is_empty(),
        "the doctor's runs leave nothing behind: {left:?}"
    );
}

#[tokio::test]
async fn the_doctor_says_what_is_missing_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["doctor", "--json", "--url", "http://127.0.0.1:9"])
        .args(["--runtime", "ghost=/nonexistent/ghost"])
        .args(["--sandbox-uid-base", &doctor_uid_base(1)])
        .arg("--work-root")
        .arg(dir.path().join("work"))
        .current_dir(dir.path())
        .output()
        .expect("run kiln doctor");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .collect();
    let said = |area: &str, words: &str| {
        failed.iter().any(|c| {
            c["area"] == area
                && c["detail"].as_str().is_some_and(|d| d.contains(words))
                && c["fix"].as_str().is_some_and(|f| !f.is_empty())
        })
    };
    assert!(
        said(
            "runtimes",
            "runtime ghost (from --runtime) cannot be offered: /nonexistent/ghost is missing"
        ),
        "{report}"
    );
    assert!(
        said("server", "no answer from http://127.0.0.1:9"),
        "{report}"
    );
    assert_eq!(failed.len(), 2, "nothing else fails: {report}");
}

/// A scrape of `GET /metrics`, checked to be well-formed text exposition: every sample belongs
/// to a family declared by a `# TYPE` line before it and has a numeric value.
async fn scrape(server: &Server) -> std::collections::HashMap<String, f64> {
    let response = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    let mut families = Vec::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            families.push(declared.split(' ').next().unwrap_or("").to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let name = series.split('{').next().unwrap_or(series);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| families.iter().any(|f| f == base))
            .unwrap_or(name);
        assert!(families.iter().any(|f| f == family), "{line} has no # TYPE");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_count_submits_claims_runs_and_webhook_failures_as_they_happen() {
    let server = Server::start().await;
    let before = scrape(&server).await;
    let get = |m: &std::collections::HashMap<String, f64>, series: &str| {
        m.get(series).copied().unwrap_or(0.0)
    };
    assert_eq!(get(&before, "kiln_jobs_submitted_total"), 0.0);
    assert_eq!(get(&before, "kiln_jobs{status=\"queued\"}"), 0.0);

    let ok = server.submit(sh("echo hi")).await;
    let bad = server.submit(sh("exit 3")).await;
    // Nothing listens on port 9: the callback fails at once.
    let called = server
        .submit(json!({"runtime": "sh", "code": "true", "callback_url": "http://127.0.0.1:9/"}))
        .await;
    for id in [&ok, &bad, &called] {
        server.finished(id).await;
    }
    let stream = reqwest::Client::new()
        .get(format!("{}/v1/events", server.url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open a live stream");
    let mut after = scrape(&server).await;
    for _ in 0..100 {
        if get(&after, "kiln_webhook_failures_total") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(&server).await;
    }
    for (series, expected) in [
        ("kiln_jobs_submitted_total", 3.0),
        ("kiln_jobs_claimed_total", 3.0),
        ("kiln_jobs_finished_total{status=\"succeeded\"}", 2.0),
        ("kiln_jobs_finished_total{status=\"failed\"}", 1.0),
        ("kiln_runs_total{outcome=\"success\"}", 2.0),
        ("kiln_runs_total{outcome=\"nonzero_exit\"}", 1.0),
        ("kiln_jobs{status=\"succeeded\"}", 2.0),
        ("kiln_jobs{status=\"failed\"}", 1.0),
        ("kiln_job_run_seconds_count", 3.0),
        ("kiln_job_run_seconds_bucket{le=\"+Inf\"}", 3.0),
        ("kiln_job_queue_wait_seconds_count", 3.0),
        ("kiln_sse_streams", 1.0),
    ] {
        assert_eq!(get(&after, series), expected, "{series}");
    }
    assert!(
        get(&after, "kiln_webhook_failures_total") >= 1.0,
        "the failed call"
    );
    assert!(get(&after, "kiln_job_run_seconds_sum") > 0.0);
    // SQLite's writer thread and its WAL: a PostgreSQL node has neither.
    if !on_postgres() {
        let commits = get(&after, "kiln_writer_commit_seconds_count");
        assert!(commits >= 7.0, "submits, claims, ends: {commits} commits");
        assert_eq!(get(&after, "kiln_writer_batch_operations_count"), commits);
        assert!(
            get(&after, "kiln_wal_bytes") > 0.0,
            "the WAL holds the commits"
        );
    }
    drop(stream);
}

/// Runs `kiln` with its stdout a pipe whose reader is already gone, as `kiln … | head -1` is
/// once `head` has its line.
fn into_a_closed_pipe(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .stdout(writer)
        .output()
        .expect("run kiln")
}

#[test]
fn a_reader_that_went_away_is_a_quiet_success_for_the_operators_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    crate::auth::create_token(dir.path(), "acme", false);
    for args in [
        &["token", "list"][..],
        &["token", "list", "--json"],
        &["prune", "--finished-before", "30d"],
        &["backup", "copy.db"],
    ] {
        let out = into_a_closed_pipe(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn no_command_but_serve_creates_a_database_each_names_the_path_and_how_to_give_it() {
    // Run where no database is, as an operator in the wrong directory does (issue 16, P4).
    let dir = tempfile::tempdir().expect("temp dir");
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("KILN_DB")
            .output()
            .expect("run kiln")
    };
    let elsewhere = dir.path().join("elsewhere.db");
    let elsewhere = elsewhere.to_str().expect("utf-8 path");
    for args in [
        &["token", "create", "--tenant", "acme"][..],
        &[
            "token", "create", "--tenant", "ops", "--admin", "--db", elsewhere,
        ],
        &["token", "list"],
        &["token", "revoke", "1"],
        &["prune", "--finished-before", "30d"],
        &["backup", "copy.db"],
    ] {
        let out = kiln(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let path = match args.contains(&"--db") {
            true => elsewhere,
            false => "kiln.db",
        };
        assert!(
            stderr.contains(&format!(
                "no database at {path}: give the server's with --db or KILN_DB"
            )),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: no token printed");
    }
    // The doctor checks a host before its server's first start, so it only warns.
    let out = kiln(&["doctor", "--work-root", "work", "--sandbox", "none"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warn  database  no database at kiln.db: kiln serve creates it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fix: if the server's database is elsewhere, give it with --db or KILN_DB"),
        "{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name != "work")
        .collect();
    assert!(left.is_empty(), "nothing was created: {left:?}");
}

/// `kiln ARGS` on a terminal (a pty that `script` makes) in `dir`, typing `typed` at it; its
/// exit code and everything the terminal showed.
fn on_a_terminal(server: &Server, args: &[&str], typed: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let command = std::iter::once(env!("CARGO_BIN_EXE_kiln"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .envs(server.pg_url().map(|url| ("KILN_DB", url)))
        .current_dir(server.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(typed.as_bytes()).expect("type");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for script");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn jobs_left(server: &Server) -> i64 {
    server.count("SELECT count(*) FROM jobs")
}

#[tokio::test]
async fn a_dry_run_prune_says_what_would_go_and_deletes_nothing() {
    let server = Server::start().await;
    for _ in 0..2 {
        let id = server.submit(sh("echo hi")).await;
        server.finished(&id).await;
    }
    let out = server.kiln(&["prune", "--finished-before", "0s", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("would prune 2 jobs, 0 batches and 6 events, keeping 0 finished jobs;"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was deleted"), "{stdout}");
    let out = server.kiln(&["prune", "--finished-before", "0s", "--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["would_prune"]["jobs"], 2, "{report}");
    assert_eq!(jobs_left(&server), 2);
    assert_eq!(
        server.count("SELECT count(*) FROM prunes"),
        0,
        "not even a prunes row"
    );
}

#[tokio::test]
async fn a_prune_age_that_could_be_minutes_or_months_is_refused() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    for (age, expected) in [
        ("1m", "could mean minutes or months: use 1min or 30d"),
        ("1mo", "give days instead, e.g. 30d or 365d"),
    ] {
        let out = server.kiln(&["prune", "--finished-before", age, "--yes"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{age}: {stderr}");
        assert!(stderr.contains(expected), "{age}: {stderr}");
    }
    assert_eq!(jobs_left(&server), 1);
}

#[tokio::test]
async fn a_prune_of_all_history_asks_on_a_terminal_and_without_one_needs_yes() {
    let server = Server::start().await;
    for _ in 0..2 {
        let id = server.submit(sh("true")).await;
        server.finished(&id).await;
    }
    let all = ["prune", "--finished-before", "0d"];

    let out = server.kiln(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("would remove every finished job (2 jobs") && stderr.contains("--yes"),
        "{stderr}"
    );
    assert_eq!(jobs_left(&server), 2, "nothing pruned without a terminal");

    let (code, shown) = on_a_terminal(&server, &all, "n\n");
    assert!(shown.contains("Go ahead? [y/N]"), "{shown}");
    assert!(shown.contains("nothing pruned"), "{shown}");
    assert_eq!(code, Some(2), "{shown}");
    let (code, shown) = on_a_terminal(&server, &all, "\n");
    assert_eq!(code, Some(2), "no is the default: {shown}");
    assert_eq!(jobs_left(&server), 2);

    let (code, shown) = on_a_terminal(&server, &all, "y\n");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("pruned 2 jobs"), "{shown}");
    assert_eq!(jobs_left(&server), 0);

    // Once the history is gone there is nothing left to ask about.
    let out = server.kiln(&all);
    assert!(out.status.success(), "{out:?}");
}

/// The lines of a server's log (`server.log` in its directory) that are warnings.
fn warnings(server: &Server) -> Vec<String> {
    std::fs::read_to_string(server.dir.path().join("server.log"))
        .expect("server log")
        .lines()
        .filter(|line| line.contains("WARN"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_server_warns_of_another_live_one_with_its_work_root_or_sandbox_uids() {
    let first = Server::start().await;
    let shared = first.dir.path().join("work");
    let same_root = Server::start_with(&["--work-root", shared.to_str().expect("utf-8")]).await;
    let warned = warnings(&same_root);
    assert!(
        warned.iter().any(|w| w.contains(&format!(
            "another live kiln server (pid {}, listening on {}) uses the work root",
            first.pid(),
            first.url.trim_start_matches("http://")
        )) && w.contains("give each server its own --work-root")),
        "{warned:?}"
    );

    // The doctor sees them too, from the register.
    let doctor = first.kiln(&["doctor", "--sandbox", "none", "--work-root", "doctor-work"]);
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("warn  servers"))
        .unwrap_or_else(|| panic!("no warning of the servers in\n{stdout}"));
    for pid in [first.pid(), same_root.pid()] {
        assert!(line.contains(&format!("pid {pid}")), "{line}");
    }

    // Its uids, from another work root: started by hand, for util gives each server its own.
    let dir = tempfile::tempdir().expect("temp dir");
    let overlapping = (first.uid_base + 5000).to_string();
    let out = serve_until_listening(dir.path(), &["--sandbox-uid-base", &overlapping]);
    assert!(
        out.contains(&format!("another live kiln server (pid {}", first.pid()))
            && out.contains("give each server its own --sandbox-uid-base, 10001 or more apart"),
        "{out}"
    );
    assert!(
        warnings(&first)
            .iter()
            .all(|w| !w.contains("another live kiln server"))
    );

    // Once the first is gone, so is its claim.
    let first_pid = first.pid();
    drop(same_root);
    drop(first);
    let out = serve_until_listening(dir.path(), &["--sandbox-uid-base", &overlapping]);
    assert!(!out.contains(&format!("pid {first_pid}")), "{out}");
}

/// Starts `kiln serve` on a fresh database in `dir` with `args`, stops it once it listens, and
/// returns what it logged.
fn serve_until_listening(dir: &std::path::Path, args: &[&str]) -> String {
    use std::io::BufRead as _;
    let log = dir.join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--db")
        .arg(dir.join("kiln.db"))
        .arg("--work-root")
        .arg(dir.join("work"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--shutdown-grace-secs",
            "0",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start kiln");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("wait");
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(line.starts_with("kiln listening on"), "{line:?}\n{logged}");
    logged
}

#[tokio::test]
async fn a_busy_port_stops_the_start_at_once_before_the_database_is_touched() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("serve")
        .arg("--db")
        .arg(dir.path().join("kiln.db"))
        .arg("--work-root")
        .arg(dir.path().join("work"))
        .args(["--listen", &port])
        .output()
        .expect("run kiln serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let said = format!("cannot listen on {port}: ");
    assert_eq!(stderr.matches(&said).count(), 1, "said once: {stderr}");
    assert!(
        stderr.contains("another process listens there (an earlier kiln serve?)")
            && stderr.contains("--listen or KILN_LISTEN"),
        "{stderr}"
    );
    assert!(!dir.path().join("kiln.db").exists(), "no database was made");
    assert!(!dir.path().join("work").exists(), "nor a work root");
}

#[tokio::test]
async fn the_servers_log_file_is_plain_words_without_colour_or_debug_dumps() {
    let server = Server::start().await;
    let log = std::fs::read_to_string(server.dir.path().join("server.log")).expect("log");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a file:\n{log}");
    for dump in ["Some(", "Report {", "Support {", "[\""] {
        assert!(!log.contains(dump), "{dump:?} in\n{log}");
    }
    let ready = log
        .lines()
        .find(|line| line.contains("sandbox ready"))
        .expect("a sandbox ready line");
    assert!(
        ready
            .contains("sandbox=level full: user, pid, mount, network, ipc, uts, cgroup namespaces"),
        "{ready}"
    );
    let serving = log
        .lines()
        .find(|line| line.contains("kiln is serving"))
        .expect("a serving line");
    assert!(serving.contains("sh"), "names its runtimes: {serving}");
}
