//! kiln's store on PostgreSQL (`kiln::store::postgres`), against a real server (`pg.rs`): the
//! schema of `schema/postgres/` applies once and holds the state machine and the append-only
//! history itself, and a job's life there writes what the SQLite store writes, with claimers
//! on several connections never taking the same job.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kiln::job::content::Content;
use kiln::job::{Finish, JobId, JobSpec, Limits, Outcome, RunResult, Status};
use kiln::store::postgres::{MIGRATIONS, PgError, PgStore};
use kiln::store::{
    Admission, Attempt, CancelResult, Delivery, Full, Store, Subject, Submitted, Visibility,
};
use serde_json::Value;

use crate::pg::TestDb;

pub(crate) const LEASE: Duration = Duration::from_secs(30);

pub(crate) fn spec(code: &str) -> JobSpec {
    JobSpec {
        runtime: "sh".into(),
        code: Content::from(code),
        stdin: Content::from("input"),
        args: vec!["one".into()],
        files: [("data.txt".to_owned(), Content::from(vec![0xff, 0x00]))].into(),
        outputs: Vec::new(),
        limits: Limits {
            wall_ms: 10_000,
            cpu_ms: 10_000,
            memory_mb: 512,
            processes: 64,
            output_bytes: 1 << 20,
            file_bytes: 16 << 20,
            cpu_percent: None,
        },
        priority: 0,
        max_attempts: 3,
        idempotency_key: None,
        callback_url: None,
        callback_shape: Default::default(),
        interactive: false,
    }
}

pub(crate) fn open() -> Admission {
    Admission {
        tenant: None,
        max_queued_jobs: 10_000,
        max_batches_in_flight: 10,
    }
}

/// A run that exited 0 having written `stdout`.
pub(crate) fn success(stdout: &[u8]) -> Finish {
    Finish {
        outcome: Outcome::Success,
        result: RunResult {
            exit_code: Some(0),
            stdout: stdout.to_vec(),
            stderr: b"warning\n".to_vec(),
            wall_ms: 12,
            cpu_ms: 3,
            memory_kb: 2048,
            ..RunResult::default()
        },
        error: None,
        judged: None,
    }
}

pub(crate) async fn store(db: &TestDb) -> PgStore {
    PgStore::connect(&db.url, 4)
        .await
        .expect("connect and migrate")
}

pub(crate) fn created(submitted: Submitted) -> JobId {
    match submitted {
        Submitted::Created(id) => id,
        other => panic!("expected a new job, got {other:?}"),
    }
}

/// A job's history as both backends must write it: each event's type, attempt and data.
fn path(events: Vec<kiln::job::Event>) -> Vec<(String, Option<u32>, Value)> {
    events
        .into_iter()
        .map(|e| (e.kind, e.attempt, e.data))
        .collect()
}

/// A job as the API shows it, but for its id and times, which differ between backends.
fn shown(job: kiln::job::Job) -> Value {
    let mut value = serde_json::to_value(job).unwrap();
    for field in ["id", "created_at", "started_at", "finished_at"] {
        value.as_object_mut().unwrap().remove(field);
    }
    value
}

/// The SQLSTATE of a statement the server refused.
pub(crate) fn refused(result: Result<u64, tokio_postgres::Error>) -> (String, String) {
    let e = result.expect_err("the server should refuse this");
    let db = e.as_db_error().expect("an error from the server");
    (db.code().code().to_owned(), db.message().to_owned())
}

const CHECK_VIOLATION: &str = "23514";

/// The last of SQLite's migrations (`schema/`) that PostgreSQL's (`schema/postgres/`) include.
const SQLITE_PORTED_THROUGH: u32 = 13;

/// SQLite's migrations after that one, still to be ported.
const SQLITE_NOT_YET_PORTED: &[&str] = &[];

#[tokio::test]
async fn migrations_apply_to_an_empty_database_once_however_many_nodes_start() {
    let Some(db) = TestDb::create("migrations_apply_once").await else {
        return;
    };
    // Three nodes starting together on an empty database: one applies, the others wait for it.
    let (a, b, c) = tokio::join!(
        PgStore::connect(&db.url, 1),
        PgStore::connect(&db.url, 1),
        PgStore::connect(&db.url, 1)
    );
    let newest = MIGRATIONS.last().expect("a migration").version;
    for node in [a, b, c] {
        assert_eq!(
            node.expect("connect").schema_version().await.unwrap(),
            newest
        );
    }
    let client = db.client().await;
    let applied = client
        .query(
            "SELECT version, applied_at FROM kiln_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(applied.len(), MIGRATIONS.len());
    let first_applied: i64 = applied[0].get(1);

    // Starting again finds nothing to do and changes nothing.
    store(&db).await;
    let again: i64 = client
        .query_one(
            "SELECT applied_at FROM kiln_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, first_applied);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kiln_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, MIGRATIONS.len());
}

#[tokio::test]
async fn connecting_to_a_server_that_is_not_there_fails_at_once_with_the_reason() {
    // A loopback port nothing listens on: refused at once, and said so, rather than retried.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("postgres://kiln@127.0.0.1:{port}/kiln");
    let started = std::time::Instant::now();
    let err = PgStore::connect(&url, 1)
        .await
        .err()
        .expect("no server there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, PgError::Db(_)), "{err:?}");
    assert!(
        err.to_string().contains("Connection refused"),
        "the reason, not the pool's words for it: {err}"
    );
}

#[tokio::test]
async fn a_database_from_a_newer_kiln_is_refused() {
    let Some(db) = TestDb::create("newer_schema_refused").await else {
        return;
    };
    store(&db).await;
    db.client()
        .await
        .execute(
            "INSERT INTO kiln_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
            &[],
        )
        .await
        .unwrap();
    match PgStore::connect(&db.url, 1).await {
        Err(PgError::TooNew { found: 999, known }) => {
            assert_eq!(known, MIGRATIONS.last().unwrap().version)
        }
        other => panic!("expected TooNew, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn every_table_and_column_carries_a_comment_for_operators() {
    let Some(db) = TestDb::create("every_column_commented").await else {
        return;
    };
    store(&db).await;
    let client = db.client().await;
    let bare: Vec<String> = client
        .query(
            "SELECT c.relname || coalesce('.' || a.attname, '')
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                                     AND NOT a.attisdropped
             WHERE c.relkind = 'r'
               AND (obj_description(c.oid, 'pg_class') IS NULL
                    OR (a.attname IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL))
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(bare.is_empty(), "without a comment: {bare:?}");
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'
               AND tablename IN ('jobs', 'events', 'batches', 'webhooks', 'tokens', 'tenants',
                                 'counters', 'prunes', 'prune_in_progress', 'job_files',
                                 'settings', 'kiln_migrations', 'job_counts',
                                 'latency_buckets', 'jobs_ended', 'job_latency')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 16,
        "every table of SQLite's migrations 1 to 13 is there, so the check above saw them"
    );
}

#[tokio::test]
async fn the_schema_has_every_table_column_index_and_view_that_sqlites_migrations_make() {
    let Some(db) = TestDb::create("same_schema_as_sqlite").await else {
        return;
    };
    store(&db).await;
    // Every SQLite migration is ported or waiting to be: a new one must be added to one side.
    let (ported, waiting): (Vec<_>, Vec<_>) = kiln::store::MIGRATIONS
        .iter()
        .partition(|m| m.version <= SQLITE_PORTED_THROUGH);
    for m in waiting {
        assert!(
            SQLITE_NOT_YET_PORTED.contains(&m.name),
            "{} is not in schema/postgres/: port it, or list it in SQLITE_NOT_YET_PORTED",
            m.name
        );
    }
    // SQLite's schema as far as PostgreSQL's goes.
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    for m in ported {
        conn.execute_batch(m.sql).unwrap();
    }
    let sqlite_names = |sql: &str| -> BTreeSet<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let client = db.client().await;
    let pg_names = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter().map(|r| r.get(0)).collect::<BTreeSet<String>>()
        }
    };
    let columns_sqlite = sqlite_names(
        "SELECT m.name || '.' || c.name FROM sqlite_schema m, pragma_table_info(m.name) c
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    );
    let columns_pg = pg_names(
        "SELECT table_name || '.' || column_name FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name IN
               (SELECT tablename FROM pg_tables WHERE schemaname = 'public')
           AND table_name NOT IN ('kiln_migrations', 'leader', 'rate_buckets')",
    )
    .await;
    // What only a cluster needs: its migrations' own record, who leads the maintenance, and
    // the rate buckets its nodes share.
    assert_eq!(columns_pg, columns_sqlite, "the tables' columns");
    let indexes_sqlite =
        sqlite_names("SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL");
    let indexes_pg = pg_names(
        // Those made for a primary key or UNIQUE column are SQLite's autoindexes, unnamed there.
        "SELECT i.relname::text FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_namespace n ON n.oid = i.relnamespace AND n.nspname = 'public'
         WHERE NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
    )
    .await;
    assert_eq!(indexes_pg, indexes_sqlite, "the indexes");
    let views_sqlite = sqlite_names("SELECT name FROM sqlite_schema WHERE type = 'view'");
    let views_pg = pg_names("SELECT viewname FROM pg_views WHERE schemaname = 'public'").await;
    assert_eq!(views_pg, views_sqlite, "the views");
}

#[tokio::test]
async fn the_schema_refuses_rows_that_break_the_job_state_machine() {
    let Some(db) = TestDb::create("state_machine_checks").await else {
        return;
    };
    let kiln = store(&db).await;
    let client = db.client().await;
    let insert = |columns: &str, values: &str| {
        format!(
            "INSERT INTO jobs (id, runtime, code, limits, created_at{columns})
             VALUES (gen_random_uuid(), 'sh', 'true', '{{}}', 0{values})"
        )
    };
    let ended = ", status, attempt, outcome, finished_at";
    // A status the state machine does not have.
    let (code, message) = refused(client.execute(&insert(", status", ", 'done'"), &[]).await);
    assert_eq!(code, CHECK_VIOLATION, "{message}");
    // Running without a lease.
    let running = insert(", status, attempt", ", 'running', 1");
    let (code, _) = refused(client.execute(&running, &[]).await);
    assert_eq!(code, CHECK_VIOLATION);
    // Ended, but with the outcome of another ending.
    let wrong = insert(ended, ", 'succeeded', 1, 'nonzero_exit', 5");
    let (code, _) = refused(client.execute(&wrong, &[]).await);
    assert_eq!(code, CHECK_VIOLATION);
    // The same row with its own outcome is fine: the checks are not refusing everything.
    let right = insert(ended, ", 'failed', 1, 'nonzero_exit', 5");
    client
        .execute(&right, &[])
        .await
        .expect("a consistent failed job");

    // And transitions: a job that ended never starts again, a queued one never ends untried.
    let id = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    let (code, message) = refused(
        client
            .execute(
                "UPDATE jobs SET status = 'succeeded', outcome = 'success', finished_at = 1
                 WHERE id = $1",
                &[&id],
            )
            .await,
    );
    assert_eq!(code, CHECK_VIOLATION);
    assert!(message.contains("queued -> succeeded"), "{message}");
    // The refused statement's error reaches the client before its transaction is rolled back
    // and its row lock let go; a claim in between would skip the locked row. A round trip on
    // the same connection waits for the rollback.
    client.execute("SELECT 1", &[]).await.unwrap();
    let claimed = kiln.claim("w1", LEASE).await.unwrap().expect("a job");
    assert!(
        kiln.finish(id, claimed.attempt, &success(b""))
            .await
            .unwrap()
    );
    let (_, message) = refused(
        client
            .execute(
                "UPDATE jobs SET status = 'queued', outcome = NULL, finished_at = NULL
                 WHERE id = $1",
                &[&id],
            )
            .await,
    );
    assert!(message.contains("succeeded -> queued"), "{message}");
}

#[tokio::test]
async fn events_cannot_be_changed_or_deleted_except_by_a_prune() {
    let Some(db) = TestDb::create("events_append_only").await else {
        return;
    };
    let kiln = store(&db).await;
    kiln.submit(&spec("true"), &open()).await.unwrap();
    let client = db.client().await;
    for statement in [
        "UPDATE events SET type = 'job.succeeded'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let (_, message) = refused(client.execute(statement, &[]).await);
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
    let count = || async {
        let n: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    assert_eq!(count().await, 1);
    // Prune's exception, as kiln prune uses it: a marker row for the length of the transaction.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO prunes (started_at, finished_before) VALUES (0, 0);
             INSERT INTO prune_in_progress SELECT max(id) FROM prunes;
             DELETE FROM events;
             DELETE FROM prune_in_progress;
             COMMIT;",
        )
        .await
        .expect("a prune may delete events");
    assert_eq!(count().await, 0);
}

#[tokio::test]
async fn a_job_passes_through_postgres_as_through_sqlite_with_the_same_events() {
    let Some(db) = TestDb::create("same_path_as_sqlite").await else {
        return;
    };
    let pg = store(&db).await;
    let dir = tempfile::TempDir::new().unwrap();
    let (sqlite, writer) = Store::open(&dir.path().join("kiln.db"), 1).unwrap();
    let job = spec("echo hi");
    let end = success(b"hi\n\xff");

    let pg_id = created(pg.submit(&job, &open()).await.unwrap());
    let sqlite_id = created(sqlite.submit(job.clone(), open()).await.unwrap());
    let pg_claim = pg.claim("node-a/w1", LEASE).await.unwrap().expect("a job");
    let sqlite_claim = sqlite
        .claim("node-a/w1", LEASE)
        .await
        .unwrap()
        .expect("a job");
    assert_eq!((pg_claim.id, pg_claim.attempt), (pg_id, 1));
    assert_eq!(sqlite_claim.id, sqlite_id);
    // What the worker is handed is the job as submitted, its bytes exact.
    assert_eq!(pg_claim.code, job.code);
    assert_eq!(pg_claim.files, job.files);
    assert_eq!(pg_claim.args, sqlite_claim.args);
    assert_eq!(pg_claim.limits, sqlite_claim.limits);
    assert!(pg.finish(pg_id, 1, &end).await.unwrap());
    assert!(
        sqlite
            .finish(sqlite_id, 1, Arc::new(success(b"hi\n\xff")))
            .await
            .unwrap()
    );
    // A second finish of the same attempt is not this worker's to write.
    assert!(!pg.finish(pg_id, 1, &end).await.unwrap());

    let pg_events = path(pg.job_events(pg_id, 0).await.unwrap().expect("the job"));
    let sqlite_events = path(
        sqlite
            .job_events(sqlite_id, 0)
            .await
            .unwrap()
            .expect("the job"),
    );
    assert_eq!(pg_events, sqlite_events);
    let kinds: Vec<&str> = pg_events.iter().map(|(kind, ..)| kind.as_str()).collect();
    assert_eq!(kinds, ["job.queued", "job.started", "job.succeeded"]);

    // The job reads back the same, but for its id and times.
    let pg_job = shown(pg.job(pg_id).await.unwrap().expect("the job"));
    assert_eq!(
        pg_job,
        shown(sqlite.job(sqlite_id).await.unwrap().expect("the job"))
    );
    assert_eq!(pg_job["status"], "succeeded");
    assert_eq!(
        pg_job["stdout_encoding"], "base64",
        "not UTF-8, so shown as base64"
    );

    // Operators see the same through the view: the exact bytes, and how the API shows them.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT stdout_encoding, stdout_bytes, stderr_encoding FROM job_output
             WHERE job_id = $1",
            &[&pg_id],
        )
        .await
        .unwrap();
    let (encoding, bytes, stderr): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (encoding.as_str(), bytes, stderr.as_str()),
        ("base64", 4, "utf-8")
    );
    drop(sqlite);
    writer.join();
}

#[tokio::test]
async fn an_idempotency_key_replays_its_job_and_a_full_queue_refuses_more() {
    let Some(db) = TestDb::create("idempotency_and_admission").await else {
        return;
    };
    let kiln = store(&db).await;
    let keyed = JobSpec {
        idempotency_key: Some("k1".into()),
        ..spec("true")
    };
    let id = created(kiln.submit(&keyed, &open()).await.unwrap());
    assert_eq!(
        kiln.submit(&keyed, &open()).await.unwrap(),
        Submitted::Replayed(id)
    );
    let changed = JobSpec {
        code: Content::from("false"),
        ..keyed.clone()
    };
    assert_eq!(
        kiln.submit(&changed, &open()).await.unwrap(),
        Submitted::KeyReused(id)
    );
    // Another tenant's key is its own.
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let other = created(kiln.submit(&keyed, &acme).await.unwrap());
    assert_ne!(other, id);

    let tight = Admission {
        max_queued_jobs: 3,
        ..open()
    };
    created(kiln.submit(&spec("true"), &tight).await.unwrap());
    assert_eq!(
        kiln.submit(&spec("true"), &tight).await.unwrap(),
        Submitted::Full(Full::Queue { queued: 3, max: 3 })
    );
    let events: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM events WHERE type = 'job.queued'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        events, 3,
        "one job.queued per job stored, none for a replay or a refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claimers_on_two_connections_never_claim_the_same_job() {
    let Some(db) = TestDb::create("skip_locked_claims").await else {
        return;
    };
    let setup = store(&db).await;
    let mut submitted = BTreeSet::new();
    for _ in 0..200 {
        submitted.insert(created(setup.submit(&spec("true"), &open()).await.unwrap()));
    }
    // Two nodes, each with its own pool, claiming as fast as they can.
    let claimer = |node: PgStore, name: &'static str| {
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(job) = node.claim(name, LEASE).await.expect("claim") {
                assert_eq!(job.attempt, 1);
                claimed.push(job.id);
            }
            claimed
        })
    };
    let (node_a, node_b) = (
        PgStore::connect(&db.url, 1).await.unwrap(),
        PgStore::connect(&db.url, 1).await.unwrap(),
    );
    let (a, b) = tokio::join!(claimer(node_a, "node-a"), claimer(node_b, "node-b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    let both: BTreeSet<JobId> = a.iter().chain(&b).copied().collect();
    assert_eq!(a.len() + b.len(), 200, "every job claimed once");
    assert_eq!(both, submitted, "no job claimed twice, none left");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both claimers took jobs ({} and {})",
        a.len(),
        b.len()
    );
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM events WHERE type = 'job.started'",
            &[],
        )
        .await
        .unwrap();
    let (started, jobs): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((started, jobs), (200, 200), "one job.started per job");
}

#[tokio::test]
async fn a_claim_skips_a_job_another_claimer_holds_instead_of_waiting_for_it() {
    let Some(db) = TestDb::create("claim_skips_locked").await else {
        return;
    };
    let kiln = store(&db).await;
    let first = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    let second = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    // Another node's claim of the first job, caught in the middle of its transaction.
    let other = db.client().await;
    other.batch_execute("BEGIN").await.unwrap();
    other
        .execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&first])
        .await
        .unwrap();
    let claimed = tokio::time::timeout(Duration::from_secs(5), kiln.claim("w1", LEASE))
        .await
        .expect("the claim did not wait for the held job")
        .unwrap()
        .expect("a job");
    assert_eq!(claimed.id, second);
    other.batch_execute("ROLLBACK").await.unwrap();
    let next = kiln
        .claim("w1", LEASE)
        .await
        .unwrap()
        .expect("the first job, let go");
    assert_eq!(next.id, first);
}

#[tokio::test]
async fn an_event_committed_late_never_has_a_smaller_id_than_one_already_visible() {
    let Some(db) = TestDb::create("events_in_commit_order").await else {
        return;
    };
    let kiln = store(&db).await;
    let job = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    let (first, second) = (db.client().await, db.client().await);
    let insert =
        "INSERT INTO events (job_id, at, type) VALUES ($1, 0, 'job.progress') RETURNING id";
    first.batch_execute("BEGIN").await.unwrap();
    let early: i64 = first.query_one(insert, &[&job]).await.unwrap().get(0);
    // A second writer asks for its id while the first is still open: it waits for the first
    // to end rather than take the next id and commit before it.
    let late = tokio::spawn(async move {
        second.batch_execute("BEGIN").await.unwrap();
        let id: i64 = second.query_one(insert, &[&job]).await.unwrap().get(0);
        second.batch_execute("COMMIT").await.unwrap();
        id
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !late.is_finished(),
        "the second insert waited for the first transaction"
    );
    first.batch_execute("COMMIT").await.unwrap();
    let late = late.await.unwrap();
    assert!(late > early, "{late} after {early}");
}

#[tokio::test]
async fn a_claim_waiting_for_the_event_lock_does_not_deadlock_with_the_writer_holding_it() {
    let Some(db) = TestDb::create("claim_and_event_lock").await else {
        return;
    };
    let kiln = store(&db).await;
    let running = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    kiln.claim("w0", LEASE).await.unwrap().expect("a job");
    let job = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    let insert = "INSERT INTO events (job_id, at, type) VALUES ($1, 0, 'job.progress')";
    // A writer holds the event lock, for an event of another job...
    let writer = db.client().await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer.execute(insert, &[&running]).await.unwrap();
    // ...while a claim locks the job's row and waits for the lock to write job.started...
    let claimer = kiln.clone();
    let claim = tokio::spawn(async move { claimer.claim("w1", LEASE).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!claim.is_finished(), "the claim waits for the event lock");
    // ...and the writer writes another event of that job, whose foreign key check locks the
    // job's row too. Had the claim locked it FOR UPDATE, each would wait for the other until
    // PostgreSQL's deadlock detector aborted one of them.
    tokio::time::timeout(Duration::from_secs(5), writer.execute(insert, &[&job]))
        .await
        .expect("the foreign key check does not wait for the claim")
        .expect("no deadlock");
    writer.batch_execute("COMMIT").await.unwrap();
    let claimed = claim.await.unwrap().unwrap().expect("the job");
    assert_eq!(claimed.id, job);
}

/// The operators' page for PostgreSQL.
const DEPLOYMENT: &str = include_str!("../../docs/deployment.md");

#[tokio::test]
async fn the_psql_queries_of_the_deployment_page_run_against_a_real_database() {
    let Some(db) = TestDb::create("deployment_page_queries").await else {
        return;
    };
    let has_psql = std::process::Command::new("psql").arg("--version").output();
    if !has_psql.is_ok_and(|out| out.status.success()) {
        return crate::util::skip(
            "deployment_page_queries",
            "no psql (apt-get install postgresql-client)",
        );
    }
    let kiln = store(&db).await;
    let id = created(kiln.submit(&spec("echo hi"), &open()).await.unwrap());
    kiln.claim("w1", LEASE).await.unwrap().expect("a job");
    assert!(kiln.finish(id, 1, &success(b"hi\n")).await.unwrap());
    let queries: Vec<&str> = DEPLOYMENT
        .lines()
        .filter(|line| line.starts_with("psql \"$KILN_DB_URL\""))
        .collect();
    assert!(queries.len() >= 4, "{queries:?}");
    for query in queries {
        let query = query.replace("01a233dc-8072-...", &id.to_string());
        let out = std::process::Command::new("sh")
            .args(["-c", &query])
            .env("KILN_DB_URL", &db.url)
            .output()
            .expect("run psql (Debian's postgresql-client)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{query}\n{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("(1 row)") || stdout.contains("rows)"),
            "{query}\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reading_after_the_last_id_it_saw_misses_no_event_of_concurrent_writers() {
    let Some(db) = TestDb::create("follower_misses_nothing").await else {
        return;
    };
    let kiln = store(&db).await;
    let job = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    kiln.claim("w0", LEASE).await.unwrap().expect("the job");
    // Four writers whose transactions stay open a little after inserting their event, as a
    // slow commit (a busy disk, a far server) keeps one open: without the commit-order lock, a
    // later id would often commit first and the follower would step over the earlier one.
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let client = crate::pg::connect(&url).await;
                for i in 0..25u64 {
                    client.batch_execute("BEGIN").await.unwrap();
                    client
                        .execute(
                            "INSERT INTO events (job_id, at, type) VALUES ($1, 0, 'job.progress')",
                            &[&job],
                        )
                        .await
                        .unwrap();
                    let open_for = Duration::from_millis((i * 7 + writer * 3) % 4);
                    tokio::time::sleep(open_for).await;
                    client.batch_execute("COMMIT").await.unwrap();
                }
            })
        })
        .collect();
    // And two nodes doing kiln's own writes for a tenant: a submit, a claim and an end each.
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (node, acme) = (PgStore::connect(&db.url, 1).await.unwrap(), acme.clone());
        nodes.push(tokio::spawn(async move {
            let mut ended = 0;
            for _ in 0..10 {
                node.submit(&spec("true"), &acme).await.unwrap();
                // Whatever is next, perhaps the other node's; none while the other's claim
                // holds the only queued job.
                if let Some(claimed) = node.claim("node/w1", LEASE).await.unwrap() {
                    let end = success(b"");
                    assert!(
                        node.finish(claimed.id, claimed.attempt, &end)
                            .await
                            .unwrap()
                    );
                    ended += 1;
                }
            }
            ended
        }));
    }
    // What a live stream does: read a page of everything after the last id seen, again and
    // again; the same for the tenant's own stream.
    let (everyone, tenant) = (Visibility::All, Visibility::Tenant("acme".into()));
    let mut seen: Vec<i64> = Vec::new();
    let mut seen_by_acme: Vec<i64> = Vec::new();
    let mut writing = true;
    while writing {
        writing =
            !(writers.iter().all(|w| w.is_finished()) && nodes.iter().all(|n| n.is_finished()));
        loop {
            let after = seen.last().copied().unwrap_or(0);
            let page = kiln.events_after(&everyone, after, 16).await.unwrap();
            seen.extend(page.iter().map(|e| e.id));
            if page.len() < 16 {
                break;
            }
        }
        let after = seen_by_acme.last().copied().unwrap_or(0);
        let page = kiln.events_after(&tenant, after, 16).await.unwrap();
        seen_by_acme.extend(page.iter().map(|e| e.id));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut ended = 0;
    for node in nodes {
        ended += node.await.unwrap();
    }
    // Whatever the tenant's follower had yet to read when the writers stopped.
    loop {
        let after = seen_by_acme.last().copied().unwrap_or(0);
        let page = kiln.events_after(&tenant, after, 16).await.unwrap();
        if page.is_empty() {
            break;
        }
        seen_by_acme.extend(page.iter().map(|e| e.id));
    }
    let follower = db.client().await;
    let ids = |sql: &'static str| {
        let follower = &follower;
        async move {
            let rows = follower.query(sql, &[]).await.unwrap();
            rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>()
        }
    };
    let all = ids("SELECT id FROM events ORDER BY id").await;
    let acme = ids("SELECT id FROM events WHERE tenant = 'acme' ORDER BY id").await;
    assert_eq!(
        acme.len(),
        20 + 2 * ended,
        "each acme job's job.queued, and job.started and job.succeeded of those that ran"
    );
    assert_eq!(
        all.len(),
        2 + 100 + acme.len(),
        "the first job's queued and started, the writers' 100, and acme's"
    );
    assert_eq!(
        seen, all,
        "the follower saw every event, each once, in id order"
    );
    assert_eq!(
        seen_by_acme, acme,
        "the tenant's follower saw all of its own, once"
    );
    assert_eq!(kiln.last_event_id().await.unwrap(), *all.last().unwrap());
}

/// The same store operations on PostgreSQL and on SQLite side by side, each answer asserted
/// to be the same on both: what phase 2 of issue 20 holds PostgreSQL's store to.
pub(crate) struct Twins {
    pub(crate) pg: PgStore,
    pub(crate) sqlite: Store,
    writer: kiln::store::WriterThread,
    pub(crate) _dir: tempfile::TempDir,
}

/// One job as each backend named it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Twin {
    pub(crate) pg: JobId,
    pub(crate) sqlite: JobId,
}

impl Twins {
    pub(crate) async fn new(db: &TestDb) -> Twins {
        let dir = tempfile::TempDir::new().unwrap();
        let (sqlite, writer) = Store::open(&dir.path().join("kiln.db"), 1).unwrap();
        Twins {
            pg: store(db).await,
            sqlite,
            writer,
            _dir: dir,
        }
    }

    pub(crate) async fn submit(&self, job: &JobSpec, admission: &Admission) -> Twin {
        Twin {
            pg: created(self.pg.submit(job, admission).await.unwrap()),
            sqlite: created(
                self.sqlite
                    .submit(job.clone(), admission.clone())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// Claims on both, which must take the same job under the same attempt; its attempt.
    pub(crate) async fn claim(&self, expected: Twin, lease: Duration) -> u32 {
        let pg = self
            .pg
            .claim("node-a/w1", lease)
            .await
            .unwrap()
            .expect("a job");
        let sqlite = self
            .sqlite
            .claim("node-a/w1", lease)
            .await
            .unwrap()
            .expect("a job");
        assert_eq!((pg.id, sqlite.id), (expected.pg, expected.sqlite));
        assert_eq!(pg.attempt, sqlite.attempt);
        pg.attempt
    }

    pub(crate) async fn rescue_expired(&self) -> usize {
        let pg = self.pg.rescue_expired().await.unwrap();
        assert_eq!(pg, self.sqlite.rescue_expired().await.unwrap());
        pg
    }

    pub(crate) async fn release(
        &self,
        job: Twin,
        attempt: u32,
        outcome: Outcome,
        reason: &str,
    ) -> bool {
        let pg = self.pg.release(job.pg, attempt, outcome, reason).await;
        let sqlite = self
            .sqlite
            .release(job.sqlite, attempt, outcome, reason.to_owned())
            .await;
        let pg = pg.unwrap();
        assert_eq!(pg, sqlite.unwrap());
        pg
    }

    async fn renew(&self, job: Twin, attempt: u32, owner: &str) -> bool {
        let pg = self.pg.renew(job.pg, attempt, owner, LEASE).await.unwrap();
        let sqlite = self.sqlite.renew(job.sqlite, attempt, owner, LEASE);
        assert_eq!(pg, sqlite.await.unwrap());
        pg
    }

    pub(crate) async fn finish(&self, job: Twin, attempt: u32, end: Finish) -> bool {
        let pg = self.pg.finish(job.pg, attempt, &end).await.unwrap();
        let sqlite = self.sqlite.finish(job.sqlite, attempt, Arc::new(end));
        assert_eq!(pg, sqlite.await.unwrap());
        pg
    }

    pub(crate) async fn cancel(&self, job: Twin) -> CancelResult {
        let pg = self.pg.cancel(job.pg).await.unwrap();
        assert_eq!(pg, self.sqlite.cancel(job.sqlite).await.unwrap());
        pg
    }

    async fn keep_cancelled_run(&self, job: Twin, attempt: u32, run: RunResult) -> bool {
        let pg = self.pg.keep_cancelled_run(job.pg, attempt, &run).await;
        let sqlite = self.sqlite.keep_cancelled_run(job.sqlite, attempt, run);
        let pg = pg.unwrap();
        assert_eq!(pg, sqlite.await.unwrap());
        pg
    }

    async fn progress(&self, job: Twin, attempt: u32, percent: u8, message: &str) -> bool {
        let progress = kiln::job::Progress {
            percent,
            message: message.into(),
        };
        let pg = self.pg.progress(job.pg, attempt, &progress).await.unwrap();
        let sqlite = self.sqlite.progress(job.sqlite, attempt, progress);
        assert_eq!(pg, sqlite.await.unwrap());
        pg
    }

    /// Asserts the job has the same history and reads back the same on both; the job as the
    /// API shows it, and its events' types.
    async fn same_job(&self, job: Twin) -> (Value, Vec<String>) {
        let pg_events = path(self.pg.job_events(job.pg, 0).await.unwrap().unwrap());
        let sqlite_events = self.sqlite.job_events(job.sqlite, 0).await.unwrap();
        assert_eq!(pg_events, path(sqlite_events.unwrap()), "the events");
        let pg_job = shown(self.pg.job(job.pg).await.unwrap().unwrap());
        let sqlite_job = shown(self.sqlite.job(job.sqlite).await.unwrap().unwrap());
        assert_eq!(pg_job, sqlite_job, "the job");
        let kinds = pg_events.into_iter().map(|(kind, ..)| kind).collect();
        (pg_job, kinds)
    }

    /// Takes the due webhooks on both, which must be the same calls; PostgreSQL's.
    pub(crate) async fn claim_webhooks(&self) -> Vec<Delivery> {
        let mut pg = self.pg.claim_webhooks(10, LEASE).await.unwrap();
        let mut sqlite = self.sqlite.claim_webhooks(10, LEASE).await.unwrap();
        pg.sort_by_key(|d| d.id);
        sqlite.sort_by_key(|d| d.id);
        let call = |d: &Delivery| {
            (
                d.event.clone(),
                d.url.clone(),
                d.attempts,
                d.shape,
                d.tenant.clone(),
            )
        };
        assert_eq!(
            pg.iter().map(call).collect::<Vec<_>>(),
            sqlite.iter().map(call).collect::<Vec<_>>()
        );
        pg
    }

    /// Records the same attempt of the one due call on both.
    pub(crate) async fn record_webhook(&self, pg: &Delivery, attempt: Attempt) -> bool {
        let sqlite = self.sqlite_delivery(pg).await;
        let recorded = self.pg.record_webhook(pg, &attempt).await.unwrap();
        let on_sqlite = self.sqlite.record_webhook(sqlite, attempt).await.unwrap();
        assert_eq!(recorded, on_sqlite);
        recorded
    }

    /// SQLite's row for the call `pg` is on PostgreSQL: the same job's, as claimed there.
    async fn sqlite_delivery(&self, pg: &Delivery) -> Delivery {
        let conn = rusqlite::Connection::open(self._dir.path().join("kiln.db")).unwrap();
        let (id, event): (i64, String) = conn
            .query_row(
                "SELECT id, event FROM webhooks WHERE event = ?1 ORDER BY id LIMIT 1",
                [&pg.event],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        Delivery {
            id,
            event,
            about: match pg.about {
                Subject::Job(_) => {
                    let job: String = conn
                        .query_row("SELECT job_id FROM webhooks WHERE id = ?1", [id], |r| {
                            r.get(0)
                        })
                        .unwrap();
                    Subject::Job(job.parse().unwrap())
                }
                other => other,
            },
            ..pg.clone()
        }
    }

    pub(crate) fn close(self) {
        drop(self.sqlite);
        self.writer.join();
    }
}

/// Lets a lease of `Duration::ZERO`, given at the current millisecond, run out.
pub(crate) async fn past_lease() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

#[tokio::test]
async fn a_lease_that_runs_out_is_retried_while_attempts_remain_then_ends_as_error_as_on_sqlite() {
    let Some(db) = TestDb::create("rescue_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let job = twins
        .submit(
            &JobSpec {
                max_attempts: 2,
                ..spec("sleep 60")
            },
            &open(),
        )
        .await;
    assert_eq!(twins.rescue_expired().await, 0, "nothing has run out yet");
    let first = twins.claim(job, Duration::ZERO).await;
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 1);
    // The worker of the rescued run learns it at its next renewal, and its end is not written.
    assert!(!twins.renew(job, first, "node-a/w1").await);
    assert!(!twins.finish(job, first, success(b"late")).await);
    let (shown, kinds) = twins.same_job(job).await;
    assert_eq!(shown["status"], "queued");
    assert_eq!(kinds, ["job.queued", "job.started", "job.retrying"]);

    let second = twins.claim(job, Duration::ZERO).await;
    assert_eq!(second, 2);
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 1);
    let (shown, kinds) = twins.same_job(job).await;
    assert_eq!(
        (&shown["status"], &shown["outcome"]),
        (&Value::from("error"), &Value::from("lease_expired"))
    );
    assert_eq!(
        shown["error"],
        "the worker running it stopped renewing its lease"
    );
    assert_eq!(
        kinds,
        [
            "job.queued",
            "job.started",
            "job.retrying",
            "job.started",
            "job.error"
        ]
    );
    assert_eq!(
        twins.rescue_expired().await,
        0,
        "an ended job is not rescued"
    );
    twins.close();
}

#[tokio::test]
async fn a_lease_is_renewed_only_by_its_owner_and_a_renewed_lease_is_not_rescued() {
    let Some(db) = TestDb::create("renew_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let job = twins.submit(&spec("sleep 60"), &open()).await;
    let attempt = twins.claim(job, Duration::ZERO).await;
    assert!(
        !twins.renew(job, attempt, "node-b/w1").await,
        "not its owner"
    );
    assert!(
        !twins.renew(job, attempt + 1, "node-a/w1").await,
        "not its attempt"
    );
    assert!(twins.renew(job, attempt, "node-a/w1").await);
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 0, "renewed for another 30 s");
    let (shown, _) = twins.same_job(job).await;
    assert_eq!(shown["status"], "running");
    twins.close();
}

#[tokio::test]
async fn a_released_job_is_queued_again_while_attempts_remain_else_ends_as_error_as_on_sqlite() {
    let Some(db) = TestDb::create("release_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let job = twins
        .submit(
            &JobSpec {
                max_attempts: 2,
                ..spec("sleep 60")
            },
            &open(),
        )
        .await;
    let reason = "the server stopped before it finished";
    let first = twins.claim(job, LEASE).await;
    assert!(twins.release(job, first, Outcome::Shutdown, reason).await);
    assert!(
        !twins.release(job, first, Outcome::Shutdown, reason).await,
        "given back already"
    );
    let second = twins.claim(job, LEASE).await;
    assert!(twins.release(job, second, Outcome::Shutdown, reason).await);
    let (shown, kinds) = twins.same_job(job).await;
    assert_eq!(
        (&shown["status"], &shown["outcome"], &shown["error"]),
        (
            &Value::from("error"),
            &Value::from("shutdown"),
            &Value::from(reason)
        )
    );
    assert_eq!(
        kinds,
        [
            "job.queued",
            "job.started",
            "job.retrying",
            "job.started",
            "job.error"
        ]
    );
    twins.close();
}

#[tokio::test]
async fn a_cancel_ends_a_queued_or_running_job_and_keeps_what_the_run_wrote_as_on_sqlite() {
    let Some(db) = TestDb::create("cancel_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let running = twins.submit(&spec("sleep 60"), &open()).await;
    let queued = twins.submit(&spec("sleep 60"), &open()).await;
    let attempt = twins.claim(running, LEASE).await;

    assert_eq!(
        twins.cancel(running).await,
        CancelResult::Cancelled {
            running_attempt: Some(attempt)
        },
        "the run to stop is named"
    );
    assert_eq!(
        twins.cancel(queued).await,
        CancelResult::Cancelled {
            running_attempt: None
        }
    );
    assert_eq!(
        twins.cancel(running).await,
        CancelResult::AlreadyFinished(Status::Cancelled)
    );
    assert_eq!(
        twins.pg.cancel(JobId::now_v7()).await.unwrap(),
        CancelResult::NotFound
    );
    // The stopped run's end is not the job's; what it wrote until it was stopped is kept.
    assert!(!twins.finish(running, attempt, success(b"late")).await);
    let stopped = RunResult {
        signal: Some(9),
        stdout: b"partial\n".to_vec(),
        wall_ms: 40,
        ..RunResult::default()
    };
    assert!(
        twins
            .keep_cancelled_run(running, attempt, stopped.clone())
            .await
    );
    assert!(
        !twins.keep_cancelled_run(queued, 1, stopped).await,
        "the queued job never ran"
    );

    let (shown, kinds) = twins.same_job(running).await;
    assert_eq!(
        (&shown["status"], &shown["outcome"], &shown["stdout"]),
        (
            &Value::from("cancelled"),
            &Value::from("cancelled"),
            &Value::from("partial\n")
        )
    );
    assert_eq!(kinds, ["job.queued", "job.started", "job.cancelled"]);
    let (_, kinds) = twins.same_job(queued).await;
    assert_eq!(kinds, ["job.queued", "job.cancelled"]);
    let events = twins.pg.job_events(running.pg, 0).await.unwrap().unwrap();
    assert_eq!(events[2].attempt, Some(attempt));
    assert_eq!(events[2].data["from"], "running");
    twins.close();
}

#[tokio::test]
async fn a_cancelled_or_rescued_job_that_asked_for_a_callback_gets_its_webhook() {
    let Some(db) = TestDb::create("cancel_and_rescue_webhooks").await else {
        return;
    };
    let kiln = store(&db).await;
    let calling = JobSpec {
        callback_url: Some("https://example.com/hook".into()),
        max_attempts: 1,
        ..spec("sleep 60")
    };
    let cancelled = created(kiln.submit(&calling, &open()).await.unwrap());
    let rescued = created(kiln.submit(&calling, &open()).await.unwrap());
    let retried = created(
        kiln.submit(
            &JobSpec {
                max_attempts: 2,
                ..calling.clone()
            },
            &open(),
        )
        .await
        .unwrap(),
    );
    kiln.cancel(cancelled).await.unwrap();
    for _ in 0..2 {
        kiln.claim("w1", Duration::ZERO)
            .await
            .unwrap()
            .expect("a job");
    }
    past_lease().await;
    assert_eq!(kiln.rescue_expired().await.unwrap(), 2);
    let rows = db
        .client()
        .await
        .query(
            "SELECT job_id, event, payload::text FROM webhooks ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let calls: Vec<(JobId, String, Value)> = rows
        .iter()
        .map(|r| {
            let payload: String = r.get(2);
            (r.get(0), r.get(1), serde_json::from_str(&payload).unwrap())
        })
        .collect();
    assert_eq!(calls.len(), 2, "none for the job retried: it has not ended");
    assert_eq!(
        (calls[0].0, calls[0].1.as_str()),
        (cancelled, "job.cancelled")
    );
    assert_eq!(calls[0].2["job"]["status"], "cancelled");
    assert_eq!((calls[1].0, calls[1].1.as_str()), (rescued, "job.error"));
    assert_eq!(calls[1].2["job"]["outcome"], "lease_expired");
    assert_ne!(calls[1].0, retried);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescuers_on_two_nodes_at_once_rescue_each_expired_job_once() {
    let Some(db) = TestDb::create("rescue_once").await else {
        return;
    };
    let setup = store(&db).await;
    for _ in 0..100 {
        setup.submit(&spec("sleep 60"), &open()).await.unwrap();
        setup
            .claim("gone/w1", Duration::ZERO)
            .await
            .unwrap()
            .expect("a job");
    }
    past_lease().await;
    let (node_a, node_b) = (
        PgStore::connect(&db.url, 2).await.unwrap(),
        PgStore::connect(&db.url, 2).await.unwrap(),
    );
    let rescuer = |node: PgStore| {
        tokio::spawn(async move {
            let mut rescued = 0;
            for _ in 0..5 {
                rescued += node.rescue_expired().await.expect("rescue");
            }
            rescued
        })
    };
    let (a, b) = tokio::join!(rescuer(node_a), rescuer(node_b));
    assert_eq!(
        a.unwrap() + b.unwrap(),
        100,
        "every job rescued, none twice"
    );
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM events WHERE type = 'job.retrying'",
            &[],
        )
        .await
        .unwrap();
    let (retried, jobs): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((retried, jobs), (100, 100), "one job.retrying per job");
}

#[tokio::test]
async fn a_restarted_node_rescues_the_jobs_its_earlier_instance_was_running() {
    let Some(db) = TestDb::create("rescue_node").await else {
        return;
    };
    let kiln = store(&db).await;
    let mine = created(kiln.submit(&spec("sleep 60"), &open()).await.unwrap());
    let others = created(kiln.submit(&spec("sleep 60"), &open()).await.unwrap());
    let current = created(kiln.submit(&spec("sleep 60"), &open()).await.unwrap());
    kiln.claim("node-a/1111/w1", LEASE).await.unwrap();
    kiln.claim("node-b/2222/w1", LEASE).await.unwrap();
    kiln.claim("node-a/3333/w1", LEASE).await.unwrap();
    assert_eq!(
        kiln.rescue_node("node-a/", "node-a/3333/").await.unwrap(),
        1
    );
    let status = |id| {
        let kiln = kiln.clone();
        async move { kiln.job(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(mine).await, Status::Queued);
    assert_eq!(status(others).await, Status::Running, "another node's");
    assert_eq!(
        status(current).await,
        Status::Running,
        "this instance's own"
    );
}

#[tokio::test]
async fn the_feed_pages_forward_and_back_and_shows_a_tenant_only_its_own_as_on_sqlite() {
    let Some(db) = TestDb::create("feed_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    assert_eq!(twins.pg.last_event_id().await.unwrap(), 0, "no history yet");
    let tenant = |name: &str| Admission {
        tenant: Some(name.into()),
        ..open()
    };
    let acme = twins.submit(&spec("true"), &tenant("acme")).await;
    twins.submit(&spec("true"), &tenant("globex")).await;
    twins.submit(&spec("true"), &open()).await;
    let attempt = twins.claim(acme, LEASE).await;
    assert!(twins.finish(acme, attempt, success(b"")).await);

    // Both backends' feeds, as each event's type, attempt, data and tenant.
    let feed =
        |events: Vec<kiln::job::Event>| -> Vec<(String, Option<u32>, Value, Option<String>)> {
            events
                .into_iter()
                .map(|e| (e.kind, e.attempt, e.data, e.tenant))
                .collect()
        };
    for who in [
        Visibility::All,
        Visibility::Tenant("acme".into()),
        Visibility::Tenant("nobody".into()),
    ] {
        for limit in [2, 100] {
            let pg = twins.pg.events_after(&who, 0, limit).await.unwrap();
            let sqlite = twins
                .sqlite
                .events_after(who.clone(), 0, limit)
                .await
                .unwrap();
            assert_eq!(
                feed(pg),
                feed(sqlite),
                "after 0 for {who:?}, {limit} at most"
            );
            let pg = twins.pg.events_before(&who, None, limit).await.unwrap();
            let sqlite = twins.sqlite.events_before(who.clone(), None, limit);
            assert_eq!(feed(pg), feed(sqlite.await.unwrap()), "newest for {who:?}");
        }
    }

    let all = twins
        .pg
        .events_after(&Visibility::All, 0, 100)
        .await
        .unwrap();
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "job.queued",
            "job.queued",
            "job.queued",
            "job.started",
            "job.succeeded"
        ]
    );
    let ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(twins.pg.last_event_id().await.unwrap(), ids[4]);
    // Paging forward from the middle, and back from it.
    let after: Vec<i64> = twins
        .pg
        .events_after(&Visibility::All, ids[1], 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(after, ids[2..4]);
    let before: Vec<i64> = twins
        .pg
        .events_before(&Visibility::All, Some(ids[3]), 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(before, [ids[2], ids[1], ids[0]], "newest first");
    let acme_only = twins
        .pg
        .events_after(&Visibility::Tenant("acme".into()), 0, 100)
        .await
        .unwrap();
    assert_eq!(acme_only.len(), 3, "acme's queued, started and succeeded");
    assert!(acme_only.iter().all(|e| e.job_id == Some(acme.pg)));
    twins.close();
}

#[tokio::test]
async fn the_job_listing_filters_orders_and_pages_as_on_sqlite() {
    let Some(db) = TestDb::create("list_jobs_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let python = JobSpec {
        runtime: "python".into(),
        ..spec("print(1)")
    };
    // Jobs of two runtimes and two tenants, in every status, ended in different ways.
    let mut jobs = Vec::new();
    for (job, admission) in [
        (&python, &acme),
        (&spec("true"), &open()),
        (&spec("false"), &acme),
        (&python, &open()),
        (&spec("sleep 60"), &acme),
        (&spec("sleep 60"), &open()),
        (&spec("true"), &acme),
    ] {
        jobs.push(twins.submit(job, admission).await);
    }
    let failure = || Finish {
        outcome: Outcome::NonzeroExit,
        result: RunResult {
            exit_code: Some(1),
            ..RunResult::default()
        },
        ..success(b"")
    };
    for (i, end) in [
        Some(success(b"1\n")),
        Some(success(b"")),
        Some(failure()),
        Some(failure()),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let attempt = twins.claim(jobs[i], LEASE).await;
        if let Some(end) = end {
            assert!(twins.finish(jobs[i], attempt, end).await);
        }
    }
    twins.cancel(jobs[5]).await;

    // A listing as the place of each job in `jobs` and what the summary says of it.
    let on = |listed: Vec<kiln::store::JobSummary>, pg: bool| -> Vec<(usize, Value)> {
        listed
            .into_iter()
            .map(|summary| {
                let place = jobs
                    .iter()
                    .position(|j| summary.id == if pg { j.pg } else { j.sqlite })
                    .expect("a job of this test");
                let mut value = serde_json::to_value(&summary).unwrap();
                for field in ["id", "created_at", "started_at", "finished_at"] {
                    value.as_object_mut().unwrap().remove(field);
                }
                (place, value)
            })
            .collect()
    };
    let list = |who: Visibility, filter: kiln::store::JobFilter, page: kiln::store::Page| {
        let twins = &twins;
        async move {
            let pg = twins.pg.list_jobs(&who, &filter, page).await.unwrap();
            let sqlite = twins.sqlite.list_jobs(who, filter, page).await.unwrap();
            let (pg, sqlite) = (on(pg, true), on(sqlite, false));
            assert_eq!(pg, sqlite);
            pg.into_iter()
                .map(|(place, _)| place)
                .collect::<Vec<usize>>()
        }
    };
    let first = |order, limit| kiln::store::Page {
        order,
        cursor: None,
        limit,
    };
    let (oldest, newest) = (
        kiln::store::Order::OldestFirst,
        kiln::store::Order::NewestFirst,
    );
    let all = kiln::store::JobFilter::default;
    let everyone = || Visibility::All;
    let acme_only = || Visibility::Tenant("acme".into());

    assert_eq!(
        list(everyone(), all(), first(oldest, 100)).await,
        [0, 1, 2, 3, 4, 5, 6]
    );
    assert_eq!(list(everyone(), all(), first(newest, 3)).await, [6, 5, 4]);
    assert_eq!(
        list(acme_only(), all(), first(oldest, 100)).await,
        [0, 2, 4, 6]
    );
    let filtered = |f: fn(&mut kiln::store::JobFilter)| {
        let mut filter = all();
        f(&mut filter);
        filter
    };
    let by_status = filtered(|f| f.status = Some(Status::Succeeded));
    assert_eq!(
        list(everyone(), by_status, first(oldest, 100)).await,
        [0, 1]
    );
    let by_outcome = filtered(|f| f.outcome = Some(Outcome::NonzeroExit));
    assert_eq!(
        list(everyone(), by_outcome, first(newest, 100)).await,
        [3, 2]
    );
    let by_runtime = filtered(|f| f.runtime = Some("python".into()));
    assert_eq!(
        list(everyone(), by_runtime.clone(), first(oldest, 100)).await,
        [0, 3]
    );
    assert_eq!(list(acme_only(), by_runtime, first(oldest, 100)).await, [0]);
    let queued = filtered(|f| f.status = Some(Status::Queued));
    assert_eq!(list(acme_only(), queued, first(oldest, 100)).await, [6]);
    let no_batch = filtered(|f| f.batch = Some(JobId::now_v7()));
    assert!(
        list(everyone(), no_batch, first(oldest, 100))
            .await
            .is_empty()
    );

    // Pages of two, each after the last id of the one before, in both orders.
    for order in [oldest, newest] {
        let (mut paged, mut cursor) = (Vec::new(), None);
        loop {
            let page = kiln::store::Page {
                order,
                cursor,
                limit: 2,
            };
            let listed = twins.pg.list_jobs(&Visibility::All, &all(), page).await;
            let listed = listed.unwrap();
            let Some(last) = listed.last() else { break };
            cursor = Some(last.id);
            paged.extend(on(listed, true).into_iter().map(|(place, _)| place));
        }
        let mut expected: Vec<usize> = (0..7).collect();
        if order == newest {
            expected.reverse();
        }
        assert_eq!(paged, expected, "{order:?}");
    }
    twins.close();
}

#[tokio::test]
async fn the_job_listing_keeps_the_jobs_submitted_between_since_and_until() {
    let Some(db) = TestDb::create("list_jobs_by_time").await else {
        return;
    };
    let kiln = store(&db).await;
    let mut submitted = Vec::new();
    for _ in 0..4 {
        let id = created(kiln.submit(&spec("true"), &open()).await.unwrap());
        submitted.push((id, kiln.job(id).await.unwrap().unwrap().created_at));
        // Each job in a millisecond of its own, as the ids' time is to the millisecond.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let filter = kiln::store::JobFilter {
        since: Some(submitted[1].1),
        until: Some(submitted[3].1),
        ..Default::default()
    };
    let page = kiln::store::Page {
        order: kiln::store::Order::OldestFirst,
        cursor: None,
        limit: 100,
    };
    let listed: Vec<JobId> = kiln
        .list_jobs(&Visibility::All, &filter, page)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        listed,
        [submitted[1].0, submitted[2].0],
        "since is inclusive, until is not"
    );
}

#[tokio::test]
async fn the_figures_behind_stats_follow_every_change_of_status_as_on_sqlite() {
    let Some(db) = TestDb::create("stats_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let retried = JobSpec {
        max_attempts: 2,
        ..spec("sleep 60")
    };
    let succeeded = twins.submit(&spec("true"), &acme).await;
    let rescued = twins.submit(&retried, &open()).await;
    let cancelled = twins.submit(&spec("sleep 60"), &acme).await;
    twins.submit(&spec("true"), &open()).await;
    let attempt = twins.claim(succeeded, LEASE).await;
    assert!(twins.finish(succeeded, attempt, success(b"")).await);
    twins.claim(rescued, Duration::ZERO).await;
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 1);
    twins.claim(rescued, LEASE).await;
    assert!(twins.renew(rescued, 2, "node-a/w1").await);
    twins.cancel(cancelled).await;

    // The same figures on both, but for the minute and the latency bucket, which depend on
    // when each backend ran the steps.
    let sqlite_file = twins._dir.path().join("kiln.db");
    let sqlite = rusqlite::Connection::open(&sqlite_file).unwrap();
    let client = db.client().await;
    for (what, sql) in [
        (
            "job_counts",
            "SELECT tenant || ' ' || status || ' ' || jobs FROM job_counts WHERE jobs > 0
             ORDER BY 1",
        ),
        (
            "jobs_ended",
            "SELECT tenant || ' ' || outcome || ' ' || sum(jobs) FROM jobs_ended
             GROUP BY tenant, outcome ORDER BY 1",
        ),
        (
            "job_latency",
            "SELECT tenant || ' ' || kind || ' ' || sum(jobs) FROM job_latency
             GROUP BY tenant, kind ORDER BY 1",
        ),
    ] {
        let pg: Vec<String> = client
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut stmt = sqlite.prepare(sql).unwrap();
        let lite: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pg, lite, "{what}");
        assert!(!pg.is_empty(), "{what} has figures");
    }
    let counts: Vec<String> = client
        .query(
            "SELECT tenant || ' ' || status || ' ' || jobs FROM job_counts WHERE jobs > 0
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        counts,
        [
            " queued 1",
            " running 1",
            "acme cancelled 1",
            "acme succeeded 1"
        ]
    );
    drop(sqlite);
    twins.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_stay_exact_and_nobody_deadlocks_while_nodes_claim_finish_and_rescue_at_once() {
    let Some(db) = TestDb::create("stats_under_concurrency").await else {
        return;
    };
    let setup = store(&db).await;
    let retried = JobSpec {
        max_attempts: 3,
        ..spec("true")
    };
    for i in 0..120 {
        let tenant = Admission {
            tenant: (i % 2 == 0).then(|| "acme".to_owned()),
            ..open()
        };
        setup.submit(&retried, &tenant).await.unwrap();
    }
    // Two workers that finish every other job they claim and drop the rest, whose leases run
    // out at once, and a rescuer taking those back: claims (queued -> running), ends (running
    // -> succeeded) and rescues (running -> queued or error) on the same rows of job_counts.
    let worker = |name: &'static str| {
        let url = db.url.clone();
        tokio::spawn(async move {
            let node = PgStore::connect(&url, 1).await.unwrap();
            for i in 0..150 {
                let Some(job) = node.claim(name, Duration::ZERO).await.expect("claim") else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                if i % 2 == 0 {
                    node.finish(job.id, job.attempt, &success(b""))
                        .await
                        .expect("finish");
                }
            }
        })
    };
    let rescuer = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let node = PgStore::connect(&url, 1).await.unwrap();
            for _ in 0..100 {
                node.rescue_expired().await.expect("rescue");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let (a, b, r) = tokio::join!(worker("node-a/w1"), worker("node-b/w1"), rescuer);
    for finished in [a, b, r] {
        finished.expect("no worker or rescuer failed");
    }
    past_lease().await;
    setup.rescue_expired().await.unwrap();

    let client = db.client().await;
    let figures = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect::<Vec<(String, String, i64)>>()
        }
    };
    let kept =
        figures("SELECT tenant, status, jobs FROM job_counts WHERE jobs > 0 ORDER BY 1, 2").await;
    let counted = figures(
        "SELECT coalesce(tenant, ''), status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    assert_eq!(kept, counted, "job_counts agrees with the jobs");
    let ended = figures(
        "SELECT tenant, outcome, sum(jobs)::bigint FROM jobs_ended GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    let ended_jobs = figures(
        "SELECT coalesce(tenant, ''), outcome, count(*) FROM jobs WHERE outcome IS NOT NULL
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    assert_eq!(ended, ended_jobs, "jobs_ended counts every end once");
    assert!(
        ended_jobs.iter().map(|(.., n)| n).sum::<i64>() > 0,
        "jobs ended while the figures were kept"
    );
}

#[tokio::test]
async fn a_webhook_is_taken_when_due_held_while_it_is_tried_and_each_attempt_recorded_once_as_on_sqlite()
 {
    let Some(db) = TestDb::create("webhooks_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    assert_eq!(twins.pg.next_webhook_due().await.unwrap(), None);
    let calling = JobSpec {
        callback_url: Some("https://example.com/hook".into()),
        ..spec("true")
    };
    let job = twins.submit(&calling, &open()).await;
    let attempt = twins.claim(job, LEASE).await;
    assert!(twins.finish(job, attempt, success(b"")).await);
    let ended = twins.pg.job(job.pg).await.unwrap().unwrap().finished_at;
    assert_eq!(
        twins.pg.next_webhook_due().await.unwrap(),
        ended,
        "due at once"
    );

    let taken = twins.claim_webhooks().await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].about, Subject::Job(job.pg));
    assert_eq!(taken[0].event, "job.succeeded");
    let payload: Value = serde_json::from_str(&taken[0].payload).unwrap();
    assert_eq!(
        payload["job"]["status"], "succeeded",
        "the exact body written at the end"
    );
    assert!(
        twins.claim_webhooks().await.is_empty(),
        "held while this attempt is made"
    );
    // A failure to be tried again at once (a due time long past), recorded once only.
    let failed = Attempt::Failed {
        status_code: Some(503),
        error: "HTTP 503".into(),
        retry_at: Some(1_000),
    };
    assert!(twins.record_webhook(&taken[0], failed.clone()).await);
    assert!(
        !twins.record_webhook(&taken[0], failed).await,
        "that attempt is recorded already"
    );
    let again = twins.claim_webhooks().await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (taken[0].id, 1));
    assert!(
        twins
            .record_webhook(&again[0], Attempt::Delivered { status_code: 200 })
            .await
    );
    assert_eq!(
        twins.pg.next_webhook_due().await.unwrap(),
        None,
        "none pending"
    );

    let (_, kinds) = twins.same_job(job).await;
    assert_eq!(
        kinds,
        [
            "job.queued",
            "job.started",
            "job.succeeded",
            "webhook.failed",
            "webhook.delivered"
        ]
    );
    let row = db
        .client()
        .await
        .query_one(
            "SELECT status, attempts, last_status, last_error FROM webhook_deliveries",
            &[],
        )
        .await
        .unwrap();
    let (status, attempts, last_status, last_error): (String, i32, i32, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (status.as_str(), attempts, last_status, last_error),
        ("delivered", 2, 200, None)
    );
    twins.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliverers_on_two_nodes_never_take_the_same_webhook() {
    let Some(db) = TestDb::create("webhooks_taken_once").await else {
        return;
    };
    let setup = store(&db).await;
    let calling = JobSpec {
        callback_url: Some("https://example.com/hook".into()),
        ..spec("true")
    };
    for _ in 0..60 {
        setup.submit(&calling, &open()).await.unwrap();
        let job = setup.claim("w1", LEASE).await.unwrap().expect("a job");
        assert!(
            setup
                .finish(job.id, job.attempt, &success(b""))
                .await
                .unwrap()
        );
    }
    let deliverer = || {
        let url = db.url.clone();
        tokio::spawn(async move {
            let node = PgStore::connect(&url, 1).await.unwrap();
            let mut taken = Vec::new();
            loop {
                let batch = node.claim_webhooks(4, LEASE).await.expect("claim");
                taken.extend(batch.iter().map(|d| d.id));
                // Done once every call is held by one node or the other; none taken now may
                // mean only that the other node is taking the due ones.
                let due = node.next_webhook_due().await.unwrap();
                if batch.is_empty() && due.is_some_and(|at| at > kiln::job::time::now_ms()) {
                    break;
                }
            }
            taken
        })
    };
    let (a, b) = tokio::join!(deliverer(), deliverer());
    let (a, b) = (a.unwrap(), b.unwrap());
    let both: BTreeSet<i64> = a.iter().chain(&b).copied().collect();
    assert_eq!(a.len() + b.len(), 60, "every call taken once");
    assert_eq!(both.len(), 60, "none taken by both nodes");
}

#[tokio::test]
async fn progress_is_recorded_only_while_its_attempt_runs_and_the_job_shows_the_latest_as_on_sqlite()
 {
    let Some(db) = TestDb::create("progress_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let job = twins.submit(&spec("sleep 1"), &open()).await;
    assert!(!twins.progress(job, 1, 10, "not started").await);
    let attempt = twins.claim(job, LEASE).await;
    assert!(twins.progress(job, attempt, 10, "loading").await);
    assert!(twins.progress(job, attempt, 60, "sorting").await);
    assert!(!twins.progress(job, attempt + 1, 70, "another run").await);
    let (shown, _) = twins.same_job(job).await;
    assert_eq!(shown["progress"]["percent"], 60, "the latest");
    assert_eq!(shown["progress"]["message"], "sorting");
    assert!(twins.finish(job, attempt, success(b"")).await);
    assert!(!twins.progress(job, attempt, 90, "after the end").await);
    let (_, kinds) = twins.same_job(job).await;
    assert_eq!(
        kinds,
        [
            "job.queued",
            "job.started",
            "job.progress",
            "job.progress",
            "job.succeeded"
        ]
    );
    twins.close();
}

#[tokio::test]
async fn tokens_tenants_and_settings_are_kept_as_on_sqlite_and_the_first_value_stored_wins() {
    let Some(db) = TestDb::create("tenants_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let (pg, sqlite) = (&twins.pg, &twins.sqlite);
    assert!(!pg.active_tokens().await.unwrap().1, "an open server");
    let hash = |n: u8| format!("{n:02x}").repeat(32);
    for (tenant, admin, n) in [("acme", false, 1), ("ops", true, 2), ("acme", false, 3)] {
        let prefix = format!("kiln_{n:08x}");
        let secret = format!("secret-{n}");
        let token_hash = hash(n);
        let on_pg = pg.create_token(tenant, admin, &token_hash, &prefix, &secret);
        let on_sqlite = sqlite.create_token(
            tenant.into(),
            admin,
            hash(n),
            prefix.clone(),
            secret.clone(),
        );
        assert_eq!(
            on_pg.await.unwrap(),
            on_sqlite.await.unwrap(),
            "the same ids"
        );
    }
    assert!(pg.revoke_token(1).await.unwrap());
    assert!(sqlite.revoke_token(1).await.unwrap());
    assert!(!pg.revoke_token(1).await.unwrap(), "revoked already");
    assert!(!pg.revoke_token(99).await.unwrap(), "no such token");

    let listed = |tokens: Vec<kiln::store::TokenInfo>| -> Vec<(i64, String, bool, String, bool)> {
        tokens
            .into_iter()
            .map(|t| (t.id, t.tenant, t.admin, t.prefix, t.revoked_at.is_some()))
            .collect()
    };
    let tokens = listed(pg.tokens().await.unwrap());
    assert_eq!(tokens, listed(sqlite.tokens().await.unwrap()));
    assert_eq!(
        tokens[0],
        (1, "acme".into(), false, "kiln_00000001".into(), true)
    );
    let active = |(tokens, any): (Vec<kiln::store::ActiveToken>, bool)| {
        let mut active: Vec<([u8; 32], String, bool)> = tokens
            .into_iter()
            .map(|t| (t.hash, t.tenant, t.admin))
            .collect();
        active.sort();
        (active, any)
    };
    let (live, any) = active(pg.active_tokens().await.unwrap());
    assert_eq!(
        (live.clone(), any),
        active(sqlite.active_tokens().await.unwrap())
    );
    assert_eq!(live.len(), 2, "the revoked one is not");
    assert_eq!(live[0].0, [2; 32]);
    assert!(any);

    // A tenant's key is the one its first token brought; later values change nothing.
    let key = pg.tenant_secret("acme", "another").await.unwrap();
    assert_eq!(key, "secret-1");
    assert_eq!(
        key,
        sqlite
            .tenant_secret("acme".into(), "another".into())
            .await
            .unwrap()
    );
    assert_eq!(pg.tenant_secret("new", "fresh").await.unwrap(), "fresh");
    assert_eq!(pg.tenant_secret("new", "later").await.unwrap(), "fresh");
    let setting = pg
        .setting_or_insert("webhook_secret", "first")
        .await
        .unwrap();
    assert_eq!(setting, "first");
    assert_eq!(
        pg.setting_or_insert("webhook_secret", "second")
            .await
            .unwrap(),
        "first"
    );

    // Who may see a job: everyone on an open server or as an admin, else its own tenant only.
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let job = twins.submit(&spec("true"), &acme).await;
    for (who, sees) in [
        (Visibility::All, true),
        (Visibility::Tenant("acme".into()), true),
        (Visibility::Tenant("globex".into()), false),
    ] {
        assert_eq!(pg.job_visible(job.pg, &who).await.unwrap(), sees, "{who:?}");
        let on_sqlite = sqlite.job_visible(job.sqlite, who.clone()).await.unwrap();
        assert_eq!(on_sqlite, sees, "{who:?} on SQLite");
    }
    assert!(
        !pg.job_visible(JobId::now_v7(), &Visibility::All)
            .await
            .unwrap()
    );
    assert!(
        !pg.batch_visible(JobId::now_v7(), &Visibility::All)
            .await
            .unwrap()
    );
    twins.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_storing_a_first_value_at_once_all_get_the_same_one() {
    let Some(db) = TestDb::create("first_value_wins").await else {
        return;
    };
    store(&db).await;
    let nodes: Vec<_> = (0..4)
        .map(|n| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let node = PgStore::connect(&url, 1).await.unwrap();
                let initial = format!("from node {n}");
                let setting = node.setting_or_insert("webhook_secret", &initial).await;
                let secret = node.tenant_secret("acme", &initial).await;
                (setting.unwrap(), secret.unwrap())
            })
        })
        .collect();
    let mut answers = BTreeSet::new();
    for node in nodes {
        answers.insert(node.await.unwrap());
    }
    assert_eq!(answers.len(), 1, "one value for the cluster: {answers:?}");
}

#[tokio::test]
async fn a_jobs_status_input_kept_files_page_and_the_queue_depth_read_back_as_on_sqlite() {
    let Some(db) = TestDb::create("reads_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let (pg, sqlite) = (&twins.pg, &twins.sqlite);
    let keeping = JobSpec {
        outputs: vec!["out/*.txt".into()],
        ..spec("mkdir out; echo hi > out/a.txt")
    };
    let interactive = JobSpec {
        interactive: true,
        ..spec("cat")
    };
    let kept = twins.submit(&keeping, &open()).await;
    let open_stdin = twins.submit(&interactive, &open()).await;
    twins.submit(&spec("true"), &open()).await;

    // What each was given to run: the exact bytes, arguments and files as submitted.
    let pg_input = pg.job_input(kept.pg).await.unwrap().expect("the job");
    let sqlite_input = sqlite
        .job_input(kept.sqlite)
        .await
        .unwrap()
        .expect("the job");
    assert_eq!(pg_input.code, keeping.code);
    assert_eq!(
        (
            &pg_input.code,
            &pg_input.stdin,
            &pg_input.args,
            &pg_input.files
        ),
        (
            &sqlite_input.code,
            &sqlite_input.stdin,
            &sqlite_input.args,
            &sqlite_input.files
        )
    );
    assert_eq!(pg_input.expected_output, None);
    assert!(pg.job_input(JobId::now_v7()).await.unwrap().is_none());
    assert_eq!(
        pg.job_stdin(open_stdin.pg).await.unwrap(),
        Some((Status::Queued, true))
    );
    assert_eq!(
        pg.job_stdin(kept.pg).await.unwrap(),
        sqlite.job_stdin(kept.sqlite).await.unwrap()
    );

    let attempt = twins.claim(kept, LEASE).await;
    assert_eq!(pg.job_status(kept.pg).await.unwrap(), Some(Status::Running));
    let mut end = success(b"");
    end.result.files.files.push(kiln::job::outputs::OutputFile {
        path: "out/a.txt".into(),
        size: 3,
        content_type: "text/plain".into(),
        contents: b"hi\n".to_vec(),
    });
    assert!(twins.finish(kept, attempt, end).await);
    let file = pg.job_file(kept.pg, "out/a.txt").await.unwrap();
    assert_eq!(file, Some(("text/plain".to_owned(), b"hi\n".to_vec())));
    assert_eq!(
        file,
        sqlite
            .job_file(kept.sqlite, "out/a.txt".into())
            .await
            .unwrap()
    );
    assert_eq!(pg.job_file(kept.pg, "out/b.txt").await.unwrap(), None);
    let (shown, _) = twins.same_job(kept).await;
    assert_eq!(shown["files_out"][0]["path"], "out/a.txt");

    for (pg_status, sqlite_status) in [
        (pg.job_status(kept.pg), sqlite.job_status(kept.sqlite)),
        (
            pg.job_status(JobId::now_v7()),
            sqlite.job_status(JobId::now_v7()),
        ),
    ] {
        assert_eq!(pg_status.await.unwrap(), sqlite_status.await.unwrap());
    }
    let depth = pg.queue_depth().await.unwrap();
    assert_eq!(depth, sqlite.queue_depth().await.unwrap());
    assert_eq!(
        (depth["queued"], depth["succeeded"], depth["error"]),
        (2, 1, 0)
    );

    let (page, total) = pg.jobs_page(1, 1).await.unwrap();
    let (sqlite_page, sqlite_total) = sqlite.jobs_page(1, 1).await.unwrap();
    assert_eq!((total, sqlite_total), (3, 3));
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, open_stdin.pg, "the second newest");
    assert_eq!(sqlite_page[0].id, open_stdin.sqlite);
    twins.close();
}
