//! Retention: removing old finished jobs and batches with their events, optionally copying them
//! to an archive file first. The one path that deletes events; `schema/0006_prune.sql` explains
//! the marker row that lets it.
//!
//! It runs from its own connection, beside any running server, in small transactions: each takes
//! the write lock for one chunk of jobs and lets go, and a pause follows, so the server's writer
//! (which waits up to its busy timeout for the lock) gets in between two chunks and submits stall
//! for one chunk's time at worst. Going through a server's writer instead would need the server
//! up, and would not make the deletes any shorter.
//!
//! A job goes when it is finished, finished before the cut-off, has no webhook call still pending,
//! and, for a case, when its batch also finished before the cut-off. A batch goes once none of its
//! cases is left. A prune stopped midway leaves whole chunks behind, never half of one; the next
//! run carries on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde::Serialize;
use uuid::Uuid;

use super::StoreError;
use super::maintenance::{OPERATOR_BUSY_TIMEOUT, open_existing};

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Milliseconds since the epoch: jobs and batches that finished before this go.
    pub finished_before: i64,
    /// A SQLite file (created if missing) the rows are copied to before they are deleted.
    pub archive: Option<PathBuf>,
    /// Jobs (or batches) per transaction.
    pub chunk: usize,
    /// Rest between two transactions, so that a server waiting for the write lock gets it.
    pub pause: Duration,
}

impl PruneOptions {
    pub fn new(finished_before: i64) -> PruneOptions {
        PruneOptions {
            finished_before,
            archive: None,
            chunk: 500,
            // SQLite's busy handler sleeps at most 100 ms between tries: a server waiting for the
            // lock always tries within a pause this long.
            pause: Duration::from_millis(100),
        }
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Its row in the `prunes` table.
    pub prune_id: i64,
    pub jobs: u64,
    pub batches: u64,
    pub events: u64,
    pub transactions: u64,
    /// The longest any one transaction held the write lock, in milliseconds.
    pub longest_transaction_ms: u64,
    /// How long its transactions held the write lock in all, in milliseconds.
    pub locked_ms: f64,
    pub archive: Option<PathBuf>,
}

/// The tables whose rows a prune removes, with their primary key (kept in the archive so a
/// chunk copied twice — say, the prune was stopped between copying and deleting — replaces its
/// first copy instead of doubling it).
pub(super) const ARCHIVED: &[(&str, &str)] = &[
    ("jobs", "id TEXT PRIMARY KEY"),
    ("batches", "id TEXT PRIMARY KEY"),
    ("events", "id INTEGER PRIMARY KEY"),
    ("webhooks", "id INTEGER PRIMARY KEY"),
    (
        "job_files",
        "job_id TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (job_id, path)",
    ),
];

/// A job that may go: finished before the cut-off (?2), no pending call, its batch (if any) gone
/// too. `j` is the job.
const JOB_MAY_GO: &str = "j.status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'error')
    AND j.finished_at < ?2
    AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.job_id = j.id AND w.status = 'pending')
    AND (j.batch_id IS NULL OR EXISTS (
        SELECT 1 FROM batches b
        WHERE b.id = j.batch_id AND b.finished_at < ?2
          AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.batch_id = b.id AND w.status = 'pending')))";

/// A batch that may go: finished before the cut-off (?2), no case left, no pending call.
const BATCH_MAY_GO: &str = "b.finished_at < ?2
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
    AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.batch_id = b.id AND w.status = 'pending')";

/// What one kind of row a prune removes needs: how to pick a chunk, copy it, delete it.
struct Kind {
    table: &'static str,
    /// Ids after ?1 that may go (cut-off ?2), in id order, at most ?4; ?3 bounds the scan.
    select: String,
    /// Deletes the ids of the JSON array ?1 that may still go (cut-off ?2), returning them.
    delete: String,
    /// Deletes their dependent rows (events, calls), given the ids actually deleted as ?1.
    dependents: &'static [&'static str],
    /// Copies the JSON array ?1 of ids and their dependents to the archive.
    archive: &'static [&'static str],
}

fn jobs() -> Kind {
    Kind {
        table: "jobs",
        select: format!(
            "SELECT j.id FROM jobs j WHERE j.id > ?1 AND j.id < ?3 AND {JOB_MAY_GO}
             ORDER BY j.id LIMIT ?4"
        ),
        delete: format!(
            "DELETE FROM jobs AS j WHERE j.id IN (SELECT value FROM json_each(?1)) AND {JOB_MAY_GO}
             RETURNING id"
        ),
        dependents: &[
            "DELETE FROM events WHERE job_id IN (SELECT value FROM json_each(?1))",
            "DELETE FROM webhooks WHERE job_id IN (SELECT value FROM json_each(?1))",
            "DELETE FROM job_files WHERE job_id IN (SELECT value FROM json_each(?1))",
        ],
        archive: &[
            "jobs WHERE id IN (SELECT value FROM json_each(?1))",
            "events WHERE job_id IN (SELECT value FROM json_each(?1))",
            "webhooks WHERE job_id IN (SELECT value FROM json_each(?1))",
            "job_files WHERE job_id IN (SELECT value FROM json_each(?1))",
        ],
    }
}

fn batches() -> Kind {
    Kind {
        table: "batches",
        select: format!(
            "SELECT b.id FROM batches b WHERE b.id > ?1 AND b.id < ?3 AND {BATCH_MAY_GO}
             ORDER BY b.id LIMIT ?4"
        ),
        delete: format!(
            "DELETE FROM batches AS b WHERE b.id IN (SELECT value FROM json_each(?1))
               AND {BATCH_MAY_GO}
             RETURNING id"
        ),
        // Its cases' events went with them; these are the batch's own.
        dependents: &[
            "DELETE FROM events WHERE batch_id IN (SELECT value FROM json_each(?1))",
            "DELETE FROM webhooks WHERE batch_id IN (SELECT value FROM json_each(?1))",
        ],
        archive: &[
            "batches WHERE id IN (SELECT value FROM json_each(?1))",
            "events WHERE batch_id IN (SELECT value FROM json_each(?1)) AND job_id IS NULL",
            "webhooks WHERE batch_id IN (SELECT value FROM json_each(?1))",
        ],
    }
}

/// Prunes the database at `db` as `options` say.
pub fn prune(db: &Path, options: &PruneOptions) -> Result<PruneReport, StoreError> {
    let conn = open_existing(db, true)?;
    conn.busy_timeout(OPERATOR_BUSY_TIMEOUT)?;
    let archive = match &options.archive {
        Some(path) => Some(attach_archive(&conn, db, path)?),
        None => None,
    };
    let started = crate::job::time::now_ms();
    conn.execute(
        "INSERT INTO prunes (started_at, finished_before, archive) VALUES (?1, ?2, ?3)",
        params![
            started,
            options.finished_before,
            archive.as_ref().map(|p| p.to_string_lossy().into_owned())
        ],
    )?;
    let mut report = PruneReport {
        prune_id: conn.last_insert_rowid(),
        archive,
        ..PruneReport::default()
    };
    // Ids are UUIDv7, which begin with their creation time: nothing created after the cut-off
    // can have finished before it, so the scan stops there (a minute later, for clock skew
    // between the id and created_at).
    let bound = id_bound(options.finished_before.saturating_add(60_000));
    for kind in [jobs(), batches()] {
        let mut after = String::new();
        loop {
            let chosen: Vec<String> = conn
                .prepare_cached(&kind.select)?
                .query_map(
                    params![after, options.finished_before, bound, options.chunk as i64],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let Some(last) = chosen.last() else {
                break;
            };
            after = last.clone();
            let ids = serde_json::Value::from(chosen).to_string();
            if report.archive.is_some() {
                copy_to_archive(&conn, &kind, &ids)?;
            }
            let (removed, events, held) =
                delete_chunk(&conn, &kind, &ids, options, report.prune_id)?;
            let held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
            report.longest_transaction_ms = report.longest_transaction_ms.max(held_ms);
            report.locked_ms += held.as_secs_f64() * 1000.0;
            report.transactions += 1;
            report.events += events;
            match kind.table {
                "jobs" => report.jobs += removed,
                _ => report.batches += removed,
            }
            std::thread::sleep(options.pause);
        }
    }
    conn.execute(
        "UPDATE prunes SET finished_at = ?1 WHERE id = ?2",
        params![crate::job::time::now_ms(), report.prune_id],
    )?;
    Ok(report)
}

/// What a prune with a cut-off would remove, counted without removing anything, and what it
/// would leave of the finished history: `kiln prune --dry-run`, and the question asked before a
/// prune that would leave none.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrunePreview {
    pub jobs: u64,
    pub batches: u64,
    pub events: u64,
    /// Finished jobs that would stay (newer than the cut-off, or still owed a webhook call).
    pub finished_jobs_kept: u64,
}

impl PrunePreview {
    /// Whether the prune would remove every finished job there is (and there is one).
    pub fn takes_all_history(&self) -> bool {
        self.jobs > 0 && self.finished_jobs_kept == 0
    }
}

/// Counts what [`prune`] with cut-off `finished_before` would remove from the database at `db`,
/// in one read: nothing is written, no row is added to `prunes`.
pub fn prune_preview(db: &Path, finished_before: i64) -> Result<PrunePreview, StoreError> {
    let conn = open_existing(db, false)?;
    conn.busy_timeout(OPERATOR_BUSY_TIMEOUT)?;
    let tx = conn.unchecked_transaction()?;
    // A batch goes once its cases are gone, so it is counted when none of them would stay.
    let (jobs, batches, events, kept): (i64, i64, i64, i64) = tx.query_row(
        &format!(
            "WITH gone AS (SELECT j.id FROM jobs j WHERE {JOB_MAY_GO}),
                  gone_batches AS (
                      SELECT b.id FROM batches b
                      WHERE b.finished_at < ?2
                        AND NOT EXISTS (SELECT 1 FROM webhooks w
                                        WHERE w.batch_id = b.id AND w.status = 'pending')
                        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id
                                        AND j.id NOT IN (SELECT id FROM gone)))
             SELECT (SELECT count(*) FROM gone),
                    (SELECT count(*) FROM gone_batches),
                    (SELECT count(*) FROM events WHERE job_id IN (SELECT id FROM gone))
                      + (SELECT count(*) FROM events
                         WHERE job_id IS NULL AND batch_id IN (SELECT id FROM gone_batches)),
                    (SELECT count(*) FROM jobs j
                     WHERE j.status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'error')
                       AND j.id NOT IN (SELECT id FROM gone))"
        ),
        // ?1 is unused here: the statement shares JOB_MAY_GO's numbering.
        params![rusqlite::types::Null, finished_before],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(PrunePreview {
        jobs: count(jobs),
        batches: count(batches),
        events: count(events),
        finished_jobs_kept: count(kept),
    })
}

/// The smallest UUIDv7 of millisecond `ms`, as text: every id created before `ms` sorts below.
fn id_bound(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes).to_string()
}

/// One transaction: the marker row, the chunk's rows that may still go (rechecked under the
/// write lock), their dependents, the marker gone, the tally. Returns the rows and events
/// removed, and how long the write lock was held (not counting the wait for it).
fn delete_chunk(
    conn: &Connection,
    kind: &Kind,
    ids: &str,
    options: &PruneOptions,
    prune_id: i64,
) -> Result<(u64, u64, Duration), StoreError> {
    // Immediate: the write lock from the start, never a read upgraded to a write, which fails
    // without waiting when another writer committed in between.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let locked = Instant::now();
    tx.execute_batch("PRAGMA defer_foreign_keys = ON")?;
    // Rows go before what refers to them so that the recheck decides; the references are
    // checked at commit, when both are gone.
    tx.execute(
        "INSERT INTO prune_in_progress (prune_id) VALUES (?1)",
        [prune_id],
    )?;
    let removed: Vec<String> = tx
        .prepare_cached(&kind.delete)?
        .query_map(params![ids, options.finished_before], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let removed_ids = serde_json::Value::from(removed.clone()).to_string();
    let mut events = 0;
    for (i, sql) in kind.dependents.iter().enumerate() {
        let n = tx.prepare_cached(sql)?.execute([&removed_ids])?;
        if i == 0 {
            events = n as u64;
        }
    }
    tx.execute(
        "DELETE FROM prune_in_progress WHERE prune_id = ?1",
        [prune_id],
    )?;
    let rows = removed.len() as u64;
    let (jobs, batches) = match kind.table {
        "jobs" => (rows, 0),
        _ => (0, rows),
    };
    tx.execute(
        "UPDATE prunes SET jobs = jobs + ?1, batches = batches + ?2, events = events + ?3
         WHERE id = ?4",
        params![jobs as i64, batches as i64, events as i64, prune_id],
    )?;
    tx.commit()?;
    Ok((rows, events, locked.elapsed()))
}

/// Attaches the archive as `archive`, creating it and its tables if needed and adding any
/// column this kiln's schema has that an older archive lacks.
fn attach_archive(conn: &Connection, db: &Path, path: &Path) -> Result<PathBuf, StoreError> {
    let same = std::fs::canonicalize(path)
        .ok()
        .zip(std::fs::canonicalize(db).ok())
        .is_some_and(|(a, b)| a == b);
    if same {
        return Err(StoreError::Io(
            path.to_path_buf(),
            "the archive cannot be the database itself".into(),
        ));
    }
    let name = path
        .to_str()
        .ok_or_else(|| StoreError::Io(path.to_path_buf(), "the path is not valid UTF-8".into()))?;
    // The database's own connection may not create files; the archive's may.
    drop(Connection::open(path)?);
    conn.execute("ATTACH DATABASE ?1 AS archive", [name])?;
    // The copy must be on disk before the rows it saves are deleted.
    conn.execute_batch("PRAGMA archive.synchronous = FULL")?;
    for (table, key) in ARCHIVED {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS archive.{table} ({key})"
        ))?;
        let have = columns(conn, "archive", table)?;
        for (column, declared) in columns_typed(conn, table)? {
            if !have.contains(&column) {
                conn.execute_batch(&format!(
                    "ALTER TABLE archive.{table} ADD COLUMN \"{column}\" {declared}"
                ))?;
            }
        }
    }
    Ok(path.to_path_buf())
}

fn columns(conn: &Connection, schema: &str, table: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(&format!("PRAGMA {schema}.table_info({table})"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<_, _>>()?;
    Ok(names)
}

/// The main database's columns of `table` with their declared types.
fn columns_typed(conn: &Connection, table: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare(&format!("PRAGMA main.table_info({table})"))?;
    let columns = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(columns)
}

/// Copies a chunk and its dependents to the archive in one transaction of the archive file,
/// committed before the chunk is deleted from the database.
fn copy_to_archive(conn: &Connection, kind: &Kind, ids: &str) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    for from in kind.archive {
        let table = from.split_whitespace().next().unwrap_or_default();
        let list = columns(&tx, "main", table)?
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        tx.prepare_cached(&format!(
            "INSERT OR REPLACE INTO archive.{table} ({list}) SELECT {list} FROM main.{from}"
        ))?
        .execute([ids])?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_bound_sorts_after_ids_created_before_it_and_before_ids_created_after() {
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_700_000_000,
            0,
        ));
        let after = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_700_000_001,
            0,
        ));
        let bound = id_bound(1_700_000_000_500);
        assert!(before.to_string() < bound, "{before} < {bound}");
        assert!(bound < after.to_string(), "{bound} < {after}");
    }
}
