//! The database file as operators see it: pragmas, migrations, indexes and the append-only log.

use rusqlite::Connection;

use crate::util::{Server, sh};

#[tokio::test]
async fn the_durability_pragmas_are_in_force_on_the_write_connection() {
    let server = Server::start().await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let db = &ready["database"];
    assert_eq!(db["journal_mode"], "wal");
    assert_eq!(db["synchronous"], 2, "2 is FULL");
    assert_eq!(db["foreign_keys"], true);
    assert!(db["busy_timeout_ms"].as_i64() >= Some(1000), "{db}");

    // journal_mode is a property of the file: any other connection sees it too.
    let conn = Connection::open(server.db_path()).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn migrations_bring_a_fresh_file_to_the_latest_version_and_reapply_as_no_ops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    for _ in 0..2 {
        let (store, writer) = kiln::store::Store::open(&path, 1).unwrap();
        drop(store);
        writer.join();
    }
    let conn = Connection::open(&path).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let latest = kiln::store::MIGRATIONS.last().unwrap().version;
    assert_eq!(version, latest);
    for table in [
        "jobs",
        "events",
        "job_timeline",
        "queue_depth",
        "job_summary",
        "webhooks",
        "webhook_deliveries",
        "settings",
        "batches",
        "batch_summary",
        "case_results",
    ] {
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 1, "{table} exists");
    }
}

#[test]
fn every_file_in_schema_is_a_registered_migration_in_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    let registered: Vec<String> = kiln::store::MIGRATIONS
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    assert_eq!(files, registered);
    // Strictly increasing rather than contiguous: numbers are handed out to work in progress
    // before it lands, so one may be missing until the work that holds it is merged.
    let mut previous = 0;
    for m in kiln::store::MIGRATIONS {
        assert!(m.version > previous, "{} after {previous}", m.version);
        previous = m.version;
        assert!(
            m.name.starts_with(&format!("{:04}_", m.version)),
            "{}",
            m.name
        );
    }
}

#[tokio::test]
async fn claiming_reads_the_claim_index_in_order_and_never_sorts_the_queue() {
    let server = Server::start_with(&["--workers", "1"]).await;
    // A few queued rows so the planner has statistics to look at.
    server.submit(sh("sleep 5")).await;
    for _ in 0..20 {
        server.submit(sh("true")).await;
    }
    let conn = Connection::open(server.db_path()).unwrap();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", kiln::store::CLAIM_SQL))
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map(rusqlite::params!["owner", 0, 0], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("TEMP B-TREE"), "the claim sorts:\n{plan}");
    assert!(
        plan.contains("jobs_claim"),
        "the claim does not use jobs_claim:\n{plan}"
    );
}

#[tokio::test]
async fn each_filter_of_the_job_listing_walks_an_index_newest_first_without_sorting() {
    let server = Server::start_with(&["--workers", "0"]).await;
    for _ in 0..20 {
        server.submit(sh("true")).await;
    }
    let conn = Connection::open(server.db_path()).unwrap();
    // The shape `GET /v1/jobs` builds for one filter (src/store/read.rs): a page below a cursor,
    // newest first. Without an index for the filter, a page of a rare value reads the table.
    for (column, index) in [
        ("status", "jobs_status"),
        ("outcome", "jobs_outcome"),
        ("runtime", "jobs_runtime"),
        ("tenant", "jobs_tenant"),
    ] {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT id, status FROM jobs
             WHERE id < ?1 AND {column} = ?2 ORDER BY id DESC LIMIT ?3"
        );
        let plan: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map(rusqlite::params!["~", "x", 50], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{column}: not by {index}:\n{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{column}: sorts:\n{plan}");
    }
}

#[tokio::test]
async fn events_are_append_only() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let update = conn.execute(
        "UPDATE events SET type = 'job.forged' WHERE job_id = ?1",
        [&id],
    );
    let err = update.expect_err("UPDATE on events must fail").to_string();
    assert!(err.contains("append-only"), "{err}");
    let delete = conn.execute("DELETE FROM events WHERE job_id = ?1", [&id]);
    let err = delete.expect_err("DELETE on events must fail").to_string();
    assert!(err.contains("append-only"), "{err}");
    let count: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE job_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(count, 3, "queued, started, succeeded are all still there");
}

#[tokio::test]
async fn the_status_column_refuses_values_outside_the_state_machine() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    let conn = Connection::open(server.db_path()).unwrap();
    let err = conn
        .execute("UPDATE jobs SET status = 'done' WHERE id = ?1", [&id])
        .expect_err("CHECK constraint");
    assert!(err.to_string().contains("CHECK"), "{err}");
}
