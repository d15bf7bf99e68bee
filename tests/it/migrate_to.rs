//! `kiln migrate-to postgres://…`: a SQLite deployment's history, made by a real server, copied by
//! the real command into a real PostgreSQL database (`pg.rs`), then served from there exactly as
//! it was: every job, its events with the same ids in the same order, the suite with its groups
//! and pass@k, the tokens, the stats; new jobs and the event cursor carry on after the copied
//! ids. A database that already holds kiln rows is refused, and a copy failing halfway leaves
//! nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::auth::{As, create_token};
use crate::pg::TestDb;
use crate::streams::Sse;
use crate::util::{Server, sh};
use crate::webhooks::Receiver;

/// Runs `kiln migrate-to URL --db FILE`.
fn migrate_to(url: &str, sqlite: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["migrate-to", url, "--db"])
        .arg(sqlite)
        .env_remove("KILN_DB")
        .output()
        .expect("run kiln migrate-to")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `path` until its events include one of type `kind`.
async fn until_event(client: &As, path: &str, kind: &str) {
    for _ in 0..1500 {
        let (_, body) = client.get(path).await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["type"] == kind) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no {kind} in {path} within 30 s");
}

/// A file a job kept, as its bytes.
async fn kept_file(server: &Server, token: &str, id: &str, path: &str) -> Vec<u8> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{id}/files/{path}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET file");
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.bytes().await.expect("body").to_vec()
}

/// Everything a client can read about this history, by what it asked: each answer must be the
/// same from the SQLite server and from the PostgreSQL one.
async fn answers(
    server: &Server,
    admin: &str,
    jobs: &[String],
    batch: &str,
    kept: &str,
) -> BTreeMap<String, Value> {
    let client = As::new(server, Some(admin));
    let mut paths: Vec<String> = jobs
        .iter()
        .flat_map(|id| [format!("/v1/jobs/{id}"), format!("/v1/jobs/{id}/events")])
        .collect();
    paths.extend([
        format!("/v1/batches/{batch}"),
        format!("/v1/batches/{batch}/groups"),
        format!("/v1/batches/{batch}/cases?limit=100"),
        format!("/v1/batches/{batch}/events?limit=1000"),
        "/v1/jobs?limit=100".to_owned(),
        "/v1/batches?limit=100".to_owned(),
        "/v1/events?after=0&limit=1000".to_owned(),
    ]);
    let mut answers = BTreeMap::new();
    for path in paths {
        let (status, body) = client.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        answers.insert(path, body);
    }
    // The figures, without what is about this server or this moment: the jobs by status, and
    // the minutes in which jobs ended (absolute, so a later read sees the same ones).
    let (_, stats) = client.get("/v1/stats").await;
    answers.insert(
        "/v1/stats".into(),
        json!({"jobs": stats["jobs"], "oldest_queued_at": stats["oldest_queued_at"]}),
    );
    let (_, series) = client.get("/v1/stats/series?window=3600").await;
    let ended: Vec<Value> = series["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["ended"].as_object().is_some_and(|e| !e.is_empty()))
        .cloned()
        .collect();
    assert!(!ended.is_empty(), "{series}");
    answers.insert("/v1/stats/series".into(), json!(ended));
    answers.insert(
        "kept file out/sub/b.bin".into(),
        json!(kept_file(server, admin, kept, "out/sub/b.bin").await),
    );
    answers
}

/// A SQLite server's mixed history, with tokens for tenant `acme` and an admin: jobs that
/// succeeded (with a webhook delivered), failed, wrote bytes that are not UTF-8, were cancelled
/// and kept files, and a suite with groups, pass@k and its own delivered webhook. Stopped once
/// it has all settled; returns its directory, the tokens, the jobs (the one with files last)
/// and the batch.
async fn sqlite_history() -> (TempDir, String, String, Vec<String>, String) {
    let receiver = Receiver::start().await;
    let dir = TempDir::new().expect("temp dir");
    let acme = create_token(dir.path(), "acme", false);
    let admin = create_token(dir.path(), "ops", true);
    let server = Server::start_in(dir, &[]).await;
    let as_acme = As::new(&server, Some(&acme));
    let as_admin = As::new(&server, Some(&admin));

    let hooked = as_acme
        .submit(json!({"runtime": "sh", "code": "echo hello", "callback_url": receiver.url()}))
        .await;
    let failed = as_acme.submit(sh("echo oops >&2; exit 3")).await;
    let binary = as_admin.submit(sh("printf '\\377\\000raw'")).await;
    let cancelled = as_acme.submit(sh("sleep 30")).await;
    let (status, body) = as_acme
        .post(&format!("/v1/jobs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let suite = json!({
        "runtime": "sh", "code": "read n; echo $n", "pass_at_k": [1, 2],
        "callback_url": receiver.url(),
        "cases": [
            {"name": "a1", "group": "p1", "stdin": "1", "expected_output": "1"},
            {"name": "a2", "group": "p1", "stdin": "2", "expected_output": "3"},
            {"name": "b1", "group": "p2", "stdin": "5", "expected_output": "5"},
            {"name": "b2", "group": "p2", "stdin": "6", "expected_output": "7"},
        ],
    });
    let (status, submitted) = as_acme.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let batch = submitted["id"].as_str().expect("batch id").to_owned();
    let files = as_admin
        .submit(json!({
            "runtime": "sh",
            "code": "mkdir -p out/sub; printf hello > out/a.txt; printf '\\377\\000' > out/sub/b.bin",
            "outputs": ["out/**"],
        }))
        .await;
    let jobs = vec![hooked, failed, binary, cancelled, files];
    for id in &jobs {
        as_admin.finished(id).await;
    }
    until_event(
        &as_admin,
        &format!("/v1/jobs/{}/events", jobs[0]),
        "webhook.delivered",
    )
    .await;
    until_event(
        &as_admin,
        &format!("/v1/batches/{batch}/events?limit=1000"),
        "webhook.delivered",
    )
    .await;
    let (_, done) = as_admin.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(done["done"], true, "{done}");
    let (stopped, dir) = server.terminate();
    assert!(stopped.success(), "{stopped:?}");
    (dir, acme, admin, jobs, batch)
}

fn token_list(db: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["token", "list", "--json", "--db", db])
        .env_remove("KILN_DB")
        .output()
        .expect("kiln token list");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[tokio::test]
async fn a_sqlite_history_is_served_the_same_from_postgres_and_goes_on_after_its_last_ids() {
    let Some(db) = TestDb::create("migrate_to_history").await else {
        return;
    };
    let (dir, acme, admin, mut jobs, batch) = sqlite_history().await;
    let kept = jobs.last().expect("the job with files").clone();
    // One job still queued when the server stops: its count moves with it, and it runs after.
    let sqlite = Server::start_in(dir, &["--workers", "0"]).await;
    let waiting = As::new(&sqlite, Some(&admin))
        .submit(sh("echo queued before the move"))
        .await;
    jobs.push(waiting.clone());
    let before = answers(&sqlite, &admin, &jobs, &batch, &kept).await;
    let (_, dir) = sqlite.terminate();
    let file = dir.path().join("kiln.db");

    // The test server trusts every connection, so a password is taken and never needed.
    let with_password = db.url.replacen("postgres@", "postgres:s3cret@", 1);
    assert_ne!(with_password, db.url);
    let out = migrate_to(&with_password, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("in one transaction"), "{summary}");
    assert!(
        !summary.contains("s3cret") && !stderr(&out).contains("s3cret"),
        "the password is never shown"
    );
    for table in [
        "jobs",
        "events",
        "batches",
        "webhooks",
        "tokens",
        "job_files",
    ] {
        assert!(
            stderr(&out).contains(&format!("{table}: ")),
            "progress for {table}: {}",
            stderr(&out)
        );
    }

    // Read with no workers first, so that the queued job stays as it was copied.
    let pg = Server::start_with(&["--db", &db.url, "--workers", "0"]).await;
    let after = answers(&pg, &admin, &jobs, &batch, &kept).await;
    for (path, answer) in &before {
        assert_eq!(Some(answer), after.get(path), "{path}");
    }
    assert_eq!(
        token_list(&db.url),
        token_list(file.to_str().expect("UTF-8 path"))
    );
    let queued: i64 = db
        .client()
        .await
        .query_one("SELECT value FROM counters WHERE name = 'queued_jobs'", &[])
        .await
        .expect("counters")
        .get(0);
    assert_eq!(
        queued, 1,
        "counted once, by the trigger, not copied as well"
    );
    let (_, dir) = pg.terminate();
    drop(dir);

    // The event cursor resumes after the last copied id: the events written next, the queued
    // job's run and a new job's, take the ids after it, in order.
    let pg = Server::start_with(&["--db", &db.url]).await;
    let feed = &before["/v1/events?after=0&limit=1000"]["events"];
    let last = feed
        .as_array()
        .and_then(|events| events.last())
        .and_then(|e| e["id"].as_i64())
        .expect("a last event");
    let bearer = format!("Bearer {admin}");
    let mut stream = Sse::open(
        &pg,
        "/v1/events",
        &[
            ("authorization", &bearer),
            ("last-event-id", &last.to_string()),
        ],
    )
    .await;
    let as_acme = As::new(&pg, Some(&acme));
    let fresh = as_acme.submit(sh("echo after the move")).await;
    assert!(!jobs.contains(&fresh), "a fresh id");
    let job = as_acme.finished(&fresh).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "after the move\n");
    let ran = As::new(&pg, Some(&admin)).finished(&waiting).await;
    assert_eq!(ran["stdout"], "queued before the move\n", "{ran}");
    let streamed = stream
        .until(|item| {
            item.event() == Some("job.succeeded") && item.json()["job_id"] == fresh.as_str()
        })
        .await;
    let ids: Vec<i64> = streamed.iter().filter_map(|item| item.id()).collect();
    assert_eq!(ids.first(), Some(&(last + 1)), "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(
        streamed
            .iter()
            .any(|item| item.json()["job_id"] == fresh.as_str()),
        "the new job's events"
    );
    // The tenant's token still sees its own jobs, and only those.
    let (status, _) = as_acme.get(&format!("/v1/jobs/{}", jobs[0])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = as_acme.get(&format!("/v1/jobs/{}", jobs[2])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the admin's job");
}

#[test]
fn a_url_that_is_not_postgres_or_a_file_that_is_not_there_is_refused_before_any_copy() {
    let dir = TempDir::new().expect("temp dir");
    let missing = dir.path().join("kiln.db");
    let out = migrate_to("mysql://kiln:s3cret@db/kiln", &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a PostgreSQL URL"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
    // Nothing listens on port 1: the file is looked at before the database is.
    let out = migrate_to("postgres://kiln@127.0.0.1:1/kiln", &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no database at"), "{}", stderr(&out));
    assert!(!missing.exists(), "no file is created");
}

/// Rows in each kiln table of the database, by table.
async fn kiln_rows(db: &TestDb) -> BTreeMap<&'static str, i64> {
    let client = db.client().await;
    let mut rows = BTreeMap::new();
    for table in [
        "jobs",
        "events",
        "batches",
        "webhooks",
        "job_files",
        "tokens",
        "tenants",
        "prunes",
        "jobs_ended",
        "job_latency",
        "job_counts",
    ] {
        let row = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        rows.insert(table, row.get(0));
    }
    rows
}

/// Events added by hand to [`small_history`], so that its copy takes several chunks.
const EXTRA_EVENTS: i64 = 2500;

/// A stopped SQLite server's file holding three ended jobs, the first with
/// [`EXTRA_EVENTS`] progress events more than its run wrote.
async fn small_history() -> (TempDir, std::path::PathBuf) {
    let server = Server::start().await;
    let mut first = None;
    for code in ["true", "exit 1", "echo three"] {
        let id = server.submit(sh(code)).await;
        server.finished(&id).await;
        first.get_or_insert(id);
    }
    let (_, dir) = server.terminate();
    let file = dir.path().join("kiln.db");
    let conn = rusqlite::Connection::open(&file).expect("open the file");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
         INSERT INTO events (job_id, at, type, attempt, data)
         SELECT ?1, 0, 'job.progress', 1, json_object('n', i) FROM n",
        rusqlite::params![first.expect("a job"), EXTRA_EVENTS],
    )
    .expect("extra events");
    (dir, file)
}

#[tokio::test]
async fn a_second_migrate_to_into_the_filled_database_is_refused_and_changes_nothing() {
    let Some(db) = TestDb::create("migrate_to_twice").await else {
        return;
    };
    let (_dir, file) = small_history().await;
    let first = migrate_to(&db.url, &file);
    assert!(first.status.success(), "{}", stderr(&first));
    let copied = kiln_rows(&db).await;
    assert_eq!(copied["jobs"], 3);
    assert!(copied["events"] > EXTRA_EVENTS, "{copied:?}");

    let again = migrate_to(&db.url, &file);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let said = stderr(&again);
    assert!(said.contains("already holds kiln rows"), "{said}");
    assert!(said.contains("jobs"), "names what it found: {said}");
    assert!(said.contains("copied nothing"), "{said}");
    assert_eq!(kiln_rows(&db).await, copied);
}

#[tokio::test]
async fn a_copy_failing_or_cut_off_halfway_through_the_events_leaves_the_database_without_a_row() {
    let Some(db) = TestDb::create("migrate_to_fails").await else {
        return;
    };
    let (_dir, file) = small_history().await;
    // The schema as kiln makes it, and one thing that will refuse event 2000, in the copy's
    // second chunk of events: the jobs and a thousand events are written by then.
    drop(
        kiln::store::postgres::PgStore::connect(&db.url, 1)
            .await
            .expect("schema"),
    );
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'the test refuses event %', new.id; END $$;
             CREATE TRIGGER refuse_event BEFORE INSERT ON events
                 FOR EACH ROW WHEN (new.id = 2000) EXECUTE FUNCTION refuse_event();",
        )
        .await
        .expect("the refusing trigger");

    let failed = migrate_to(&db.url, &file);
    assert_eq!(failed.status.code(), Some(2), "{}", stderr(&failed));
    let said = stderr(&failed);
    assert!(said.contains("cannot copy table events"), "{said}");
    assert!(said.contains("the test refuses event 2000"), "{said}");
    assert!(
        kiln_rows(&db).await.values().all(|n| *n == 0),
        "{:?}",
        kiln_rows(&db).await
    );
    let counters: Vec<(String, i64)> = client
        .query("SELECT name, value FROM counters ORDER BY name", &[])
        .await
        .expect("counters")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(counters.iter().all(|(_, n)| *n == 0), "{counters:?}");

    // Its connection closed under it at the same event: the server rolls the transaction back.
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN new; END $$;",
        )
        .await
        .expect("the closing trigger");
    let cut = migrate_to(&db.url, &file);
    assert_eq!(cut.status.code(), Some(2), "{}", stderr(&cut));
    assert!(
        stderr(&cut).contains("cannot copy table events"),
        "{}",
        stderr(&cut)
    );
    assert!(
        kiln_rows(&db).await.values().all(|n| *n == 0),
        "{:?}",
        kiln_rows(&db).await
    );

    // Nothing half-written stands in the way of the copy once the cause is gone.
    client
        .batch_execute("DROP TRIGGER refuse_event ON events")
        .await
        .expect("drop the trigger");
    let copied = migrate_to(&db.url, &file);
    assert!(copied.status.success(), "{}", stderr(&copied));
    assert_eq!(kiln_rows(&db).await["jobs"], 3);
}
