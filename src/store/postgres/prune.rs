//! Retention on PostgreSQL: removing old finished jobs and batches with their events, webhook
//! calls and kept files, optionally copying them to an archive file first, under the rules of
//! SQLite's `store::prune`. A job goes when it is finished, finished before the cut-off, has no
//! webhook call still pending, and, for a case, when its batch also finished before the cut-off
//! with no call pending; a batch goes once none of its cases is left. Each prune leaves its row
//! in `prunes`, counted up as each chunk commits, so a stopped prune says how far it got and the
//! next one carries on.
//!
//! The one path that deletes events: each chunk's transaction inserts a marker into
//! `prune_in_progress`, which lets `events_refuse_delete` pass, and deletes it again before it
//! commits, so no other session ever sees one and every other DELETE is still refused.
//!
//! Beside nodes that keep writing, in chunks of `PruneOptions::chunk` jobs (or batches), one
//! short transaction each with a pause between, rather than SQLite's write lock: a chunk locks
//! its own rows, which writers leave alone once they have ended (but for the run of a
//! cancelled job, below), and the `job_counts` rows of their tenants and statuses, which the
//! delete trigger updates in key order as every writer does; it inserts no event, so it never
//! takes the lock that keeps events in commit order. A node ending a job whose figures share a
//! row with the chunk's waits for that chunk at most.
//!
//! What may go is chosen outside the transaction and judged again inside it, as the rows are
//! then, with the rows locked `FOR UPDATE` (a delete needs that lock anyway). While they are
//! locked nothing can come to refer to them (the foreign keys' checks take a share lock), so
//! the events, calls and files deleted and archived with them are all there are: a cancelled
//! job whose run is still being kept (`keep_cancelled_run`) is either kept first and pruned
//! whole, or pruned first and its late run dropped.
//!
//! Where it differs from SQLite's: it runs on one of the store's pooled connections, not on a
//! file of its own, so there is no database file for the archive to be mistaken for; the
//! report's `locked_ms` and `longest_transaction_ms` are how long each chunk's transaction was
//! open (holding its rows) rather than how long it held a database-wide lock; and with an
//! archive, each chunk is copied while its rows are locked, inside its transaction, so that
//! the archive holds exactly what was deleted, at the price of a longer transaction per chunk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Client, GenericClient};
use futures_util::TryStreamExt;
use rusqlite::types::Value;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::PgError;
use super::read::first_id_at;
use crate::job::time::now_ms;
use crate::store::maintenance::OPERATOR_BUSY_TIMEOUT;
use crate::store::prune::ARCHIVED;
use crate::store::{PruneOptions, PrunePreview, PruneReport};

/// A job that may go: finished before the cut-off ($1), no pending call, its batch (if any)
/// finished before the cut-off with no pending call either. `j` is the job.
const JOB_MAY_GO: &str = "j.status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'error')
    AND j.finished_at < $1
    AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.job_id = j.id AND w.status = 'pending')
    AND (j.batch_id IS NULL OR EXISTS (
        SELECT 1 FROM batches b
        WHERE b.id = j.batch_id AND b.finished_at < $1
          AND NOT EXISTS (SELECT 1 FROM webhooks w
                          WHERE w.batch_id = b.id AND w.status = 'pending')))";

/// A batch that may go: finished before the cut-off ($1), no case left, no pending call.
const BATCH_MAY_GO: &str = "b.finished_at < $1
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
    AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.batch_id = b.id AND w.status = 'pending')";

/// What one kind of row a prune removes needs: how to choose a chunk, lock it, copy it and
/// delete it.
struct Kind {
    table: &'static str,
    /// Ids after $2 and below $3 that may go (cut-off $1), in id order, at most $4.
    choose: String,
    /// Locks those of the ids $2 that may still go (cut-off $1), in id order; returns them.
    lock: String,
    /// Deletes the locked ids $1 and what refers to them, in one statement so that each
    /// foreign key is checked once both sides are gone; returns how many events went.
    delete: &'static str,
    /// The rows the archive keeps: each table, and which of its rows, given the ids as $1.
    archived: &'static [(&'static str, &'static str)],
}

fn jobs() -> Kind {
    Kind {
        table: "jobs",
        choose: format!(
            "SELECT j.id FROM jobs j WHERE j.id > $2 AND j.id < $3 AND {JOB_MAY_GO}
             ORDER BY j.id LIMIT $4"
        ),
        lock: format!(
            "SELECT j.id FROM jobs j WHERE j.id = ANY($2) AND {JOB_MAY_GO}
             ORDER BY j.id FOR UPDATE OF j"
        ),
        delete: "WITH events_gone AS (DELETE FROM events WHERE job_id = ANY($1) RETURNING 1),
                      calls_gone AS (DELETE FROM webhooks WHERE job_id = ANY($1)),
                      files_gone AS (DELETE FROM job_files WHERE job_id = ANY($1)),
                      jobs_gone AS (DELETE FROM jobs WHERE id = ANY($1))
                 SELECT count(*) FROM events_gone",
        archived: &[
            ("jobs", "id = ANY($1)"),
            ("events", "job_id = ANY($1)"),
            ("webhooks", "job_id = ANY($1)"),
            ("job_files", "job_id = ANY($1)"),
        ],
    }
}

fn batches() -> Kind {
    Kind {
        table: "batches",
        choose: format!(
            "SELECT b.id FROM batches b WHERE b.id > $2 AND b.id < $3 AND {BATCH_MAY_GO}
             ORDER BY b.id LIMIT $4"
        ),
        lock: format!(
            "SELECT b.id FROM batches b WHERE b.id = ANY($2) AND {BATCH_MAY_GO}
             ORDER BY b.id FOR UPDATE OF b"
        ),
        // Its cases' events went with them; these are the batch's own.
        delete: "WITH events_gone AS (DELETE FROM events WHERE batch_id = ANY($1) RETURNING 1),
                      calls_gone AS (DELETE FROM webhooks WHERE batch_id = ANY($1)),
                      batches_gone AS (DELETE FROM batches WHERE id = ANY($1))
                 SELECT count(*) FROM events_gone",
        archived: &[
            ("batches", "id = ANY($1)"),
            ("events", "batch_id = ANY($1) AND job_id IS NULL"),
            ("webhooks", "batch_id = ANY($1)"),
        ],
    }
}

/// Prunes as `options` say, on one connection of its own for the whole run.
pub(super) async fn prune(
    client: &mut Client,
    options: &PruneOptions,
) -> Result<PruneReport, PgError> {
    let mut archive = match &options.archive {
        Some(path) => Some(Archive::open(&*client, path).await?),
        None => None,
    };
    let archive_name = options
        .archive
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let prune_id: i64 = client
        .query_one(
            "INSERT INTO prunes (started_at, finished_before, archive) VALUES ($1, $2, $3)
             RETURNING id",
            &[&now_ms(), &options.finished_before, &archive_name],
        )
        .await?
        .try_get(0)?;
    let mut report = PruneReport {
        prune_id,
        archive: options.archive.clone(),
        ..PruneReport::default()
    };
    // Ids are UUIDv7, which begin with their creation time: nothing created after the cut-off
    // can have finished before it, so the scan stops there (a minute later, for clock skew
    // between the node that made the id and the one that ended the job).
    let bound = first_id_at(options.finished_before.saturating_add(60_000));
    let limit = i64::try_from(options.chunk).unwrap_or(i64::MAX);
    for kind in [jobs(), batches()] {
        let choose = client.prepare_cached(&kind.choose).await?;
        let mut after = Uuid::nil();
        loop {
            let chosen: Vec<Uuid> = client
                .query(&choose, &[&options.finished_before, &after, &bound, &limit])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let Some(&last) = chosen.last() else {
                break;
            };
            after = last;
            let chunk = Chunk {
                kind: &kind,
                ids: &chosen,
                finished_before: options.finished_before,
                prune_id,
            };
            let (removed, events, held) = chunk.delete(client, archive.as_mut()).await?;
            let held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
            report.longest_transaction_ms = report.longest_transaction_ms.max(held_ms);
            report.locked_ms += held.as_secs_f64() * 1000.0;
            report.transactions += 1;
            report.events += events;
            match kind.table {
                "jobs" => report.jobs += removed,
                _ => report.batches += removed,
            }
            tokio::time::sleep(options.pause).await;
        }
    }
    client
        .execute(
            "UPDATE prunes SET finished_at = $1 WHERE id = $2",
            &[&now_ms(), &prune_id],
        )
        .await?;
    Ok(report)
}

/// One chunk of one kind, as chosen.
struct Chunk<'a> {
    kind: &'a Kind,
    ids: &'a [Uuid],
    finished_before: i64,
    prune_id: i64,
}

impl Chunk<'_> {
    /// One transaction: the marker, the chunk's rows that may still go locked, copied to the
    /// archive (committed there first), deleted with what refers to them, the marker gone, the
    /// tally. Returns the rows and events removed and how long the transaction was open.
    async fn delete(
        &self,
        client: &mut Client,
        archive: Option<&mut Archive>,
    ) -> Result<(u64, u64, Duration), PgError> {
        let began = Instant::now();
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO prune_in_progress (prune_id) VALUES ($1)",
            &[&self.prune_id],
        )
        .await?;
        let lock = tx.prepare_cached(&self.kind.lock).await?;
        let locked: Vec<Uuid> = tx
            .query(&lock, &[&self.finished_before, &self.ids])
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if let Some(archive) = archive {
            archive.copy(&tx, self.kind.archived, &locked).await?;
        }
        let delete = tx.prepare_cached(self.kind.delete).await?;
        let events: i64 = tx.query_one(&delete, &[&locked]).await?.try_get(0)?;
        tx.execute(
            "DELETE FROM prune_in_progress WHERE prune_id = $1",
            &[&self.prune_id],
        )
        .await?;
        let removed = i64::try_from(locked.len()).unwrap_or(i64::MAX);
        let (jobs, batches) = match self.kind.table {
            "jobs" => (removed, 0),
            _ => (0, removed),
        };
        tx.execute(
            "UPDATE prunes SET jobs = jobs + $1, batches = batches + $2, events = events + $3
             WHERE id = $4",
            &[&jobs, &batches, &events, &self.prune_id],
        )
        .await?;
        tx.commit().await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok((count(removed), count(events), began.elapsed()))
    }
}

/// Counts what [`prune`] with cut-off `finished_before` would remove, in one statement (so one
/// snapshot): nothing is written, no row is added to `prunes`.
pub(super) async fn preview(
    client: &impl GenericClient,
    finished_before: i64,
) -> Result<PrunePreview, PgError> {
    // A batch goes once its cases are gone, so it is counted when none of them would stay.
    let row = client
        .query_one(
            &format!(
                "WITH gone AS (SELECT j.id FROM jobs j WHERE {JOB_MAY_GO}),
                      gone_batches AS (
                          SELECT b.id FROM batches b
                          WHERE b.finished_at < $1
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
                         WHERE j.status IN ('succeeded', 'failed', 'timed_out', 'cancelled',
                                            'error')
                           AND j.id NOT IN (SELECT id FROM gone))"
            ),
            &[&finished_before],
        )
        .await?;
    let count = |i: usize| -> Result<u64, PgError> {
        let n: i64 = row.try_get(i)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    Ok(PrunePreview {
        jobs: count(0)?,
        batches: count(1)?,
        events: count(2)?,
        finished_jobs_kept: count(3)?,
    })
}

/// How many rows may be on their way from PostgreSQL to the archive at once: a chunk's rows
/// stream through rather than being held whole (a job's output alone may be megabytes).
const ROWS_IN_FLIGHT: usize = 16;

/// The SQLite file a prune copies to first, written as SQLite's store writes its archive
/// (`store::prune::ARCHIVED`): the same tables, keys and columns, ids as text, bytes as SQLite
/// keeps them (`TEXT_WHEN_UTF8`), JSON as its text, flags as 0 or 1, so that one archive holds
/// what either store removed and reads the same.
struct Archive {
    path: PathBuf,
    /// `None` only while a copy writes on a thread of its own (or after that thread died, which
    /// ends the prune).
    conn: Option<rusqlite::Connection>,
    /// Each archived table's columns on PostgreSQL.
    tables: Vec<(&'static str, Vec<Column>)>,
}

/// A column, and what its values become in the archive.
#[derive(Clone)]
struct Column {
    name: String,
    kind: ColumnKind,
}

#[derive(Clone, Copy)]
enum ColumnKind {
    Uuid,
    /// Always a BLOB, as SQLite stores a kept file's bytes.
    Bytes,
    /// TEXT when the bytes are UTF-8, else a BLOB: `TEXT_WHEN_UTF8`.
    TextOrBytes,
    Text,
    /// Read as its text, which keeps the bytes kiln wrote (a parse would not).
    Json,
    Int4,
    Int8,
    Bool,
}

/// The columns of bytes SQLite's store keeps as TEXT when they are UTF-8, so that `sqlite3`
/// shows them as they are (`schema/0008_bytes.sql`); its other bytes are BLOBs.
const TEXT_WHEN_UTF8: &[(&str, &str)] = &[
    ("jobs", "code"),
    ("jobs", "stdin"),
    ("jobs", "expected_output"),
    ("jobs", "stdout"),
    ("jobs", "stderr"),
    ("batches", "code"),
];

impl ColumnKind {
    fn of(table: &str, column: &str, data_type: &str) -> Option<ColumnKind> {
        Some(match data_type {
            "uuid" => ColumnKind::Uuid,
            "bytea" if TEXT_WHEN_UTF8.contains(&(table, column)) => ColumnKind::TextOrBytes,
            "bytea" => ColumnKind::Bytes,
            "text" => ColumnKind::Text,
            "json" => ColumnKind::Json,
            "integer" => ColumnKind::Int4,
            "bigint" => ColumnKind::Int8,
            "boolean" => ColumnKind::Bool,
            _ => return None,
        })
    }

    /// The type the archive declares, as SQLite's schema declares the same column.
    fn declared(self) -> &'static str {
        match self {
            ColumnKind::Uuid | ColumnKind::TextOrBytes | ColumnKind::Text | ColumnKind::Json => {
                "TEXT"
            }
            ColumnKind::Bytes => "BLOB",
            ColumnKind::Int4 | ColumnKind::Int8 | ColumnKind::Bool => "INTEGER",
        }
    }
}

/// What the reading side sends the archive's writer.
enum Copied {
    /// A row's values for the statement that inserts them (prepared once per transaction: the
    /// writer's statement cache is keyed by the text).
    Row(Arc<str>, Vec<Value>),
    /// Every row is sent: commit.
    Done,
}

impl Archive {
    /// Opens the archive (creating it if missing) with its tables, adding any column this
    /// kiln's schema has that an older archive lacks.
    async fn open(client: &impl GenericClient, path: &Path) -> Result<Archive, PgError> {
        let mut tables = Vec::with_capacity(ARCHIVED.len());
        for (table, _) in ARCHIVED {
            let rows = client
                .query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1
                     ORDER BY ordinal_position",
                    &[table],
                )
                .await?;
            let mut columns = Vec::with_capacity(rows.len());
            for r in rows {
                let (name, data_type): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let kind = ColumnKind::of(table, &name, &data_type).ok_or_else(|| {
                    archive_error(
                        path,
                        format!("{table}.{name} is {data_type}, not archivable"),
                    )
                })?;
                columns.push(Column { name, kind });
            }
            tables.push((*table, columns));
        }
        let (owned, declared) = (path.to_path_buf(), tables.clone());
        let conn = tokio::task::spawn_blocking(move || create_tables(&owned, &declared))
            .await
            .map_err(|e| archive_error(path, e.to_string()))?
            .map_err(|e| archive_error(path, e.to_string()))?;
        Ok(Archive {
            path: path.to_path_buf(),
            conn: Some(conn),
            tables,
        })
    }

    /// Copies the rows `sources` name for `ids` in one transaction of the archive, committed
    /// (and on disk) before this returns.
    async fn copy(
        &mut self,
        client: &impl GenericClient,
        sources: &[(&'static str, &'static str)],
        ids: &[Uuid],
    ) -> Result<(), PgError> {
        let mut conn = self.conn.take().ok_or_else(|| {
            archive_error(&self.path, "its writer died in an earlier copy".to_owned())
        })?;
        let mut reads = Vec::with_capacity(sources.len());
        for (table, filter) in sources {
            let columns = self
                .tables
                .iter()
                .find(|(name, _)| name == table)
                .map(|(_, columns)| columns)
                .ok_or_else(|| archive_error(&self.path, format!("{table} is not archived")))?;
            let selected = columns
                .iter()
                .map(|c| match c.kind {
                    ColumnKind::Json => format!("\"{}\"::text", c.name),
                    _ => format!("\"{}\"", c.name),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let names = columns
                .iter()
                .map(|c| format!("\"{}\"", c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let marks = vec!["?"; columns.len()].join(", ");
            reads.push(Read {
                select: format!("SELECT {selected} FROM {table} WHERE {filter}"),
                kinds: columns.iter().map(|c| c.kind).collect(),
                insert: format!("INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})").into(),
            });
        }
        let (send, mut receive) = mpsc::channel(ROWS_IN_FLIGHT);
        let writer = tokio::task::spawn_blocking(move || {
            let written = write_rows(&mut conn, &mut receive);
            (conn, written)
        });
        let read = read_rows(client, &reads, ids, send).await;
        let (conn, written) = writer
            .await
            .map_err(|e| archive_error(&self.path, e.to_string()))?;
        self.conn = Some(conn);
        // The writer's failure first: the reading side then only saw it stop listening. Had the
        // reading side failed, the writer rolled back and the read's error says why.
        written.map_err(|e| archive_error(&self.path, e.to_string()))?;
        read
    }
}

/// One table's rows of a chunk: how to read them and how to write them to the archive.
struct Read {
    select: String,
    kinds: Vec<ColumnKind>,
    insert: Arc<str>,
}

/// Streams the rows of each read to the writer, then says it is done. On a failure it stops
/// without saying so, and the writer rolls back.
async fn read_rows(
    client: &impl GenericClient,
    reads: &[Read],
    ids: &[Uuid],
    send: mpsc::Sender<Copied>,
) -> Result<(), PgError> {
    for read in reads {
        let stmt = client.prepare_cached(&read.select).await?;
        let params: [&(dyn ToSql + Sync); 1] = [&ids];
        let rows = client.query_raw(&stmt, params).await?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.try_next().await? {
            let values = read
                .kinds
                .iter()
                .enumerate()
                .map(|(column, kind)| value(&row, column, *kind))
                .collect::<Result<Vec<_>, _>>()?;
            if send
                .send(Copied::Row(read.insert.clone(), values))
                .await
                .is_err()
            {
                // The writer stopped on an error of its own, which `Archive::copy` reports.
                return Ok(());
            }
        }
    }
    // Likewise: a writer no longer listening has failed, and says why.
    let _ = send.send(Copied::Done).await;
    Ok(())
}

/// A PostgreSQL value as the SQLite store would have stored it.
fn value(row: &tokio_postgres::Row, column: usize, kind: ColumnKind) -> Result<Value, PgError> {
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    Ok(match kind {
        ColumnKind::Uuid => or_null(
            row.try_get::<_, Option<Uuid>>(column)?
                .map(|u| Value::Text(u.to_string())),
        ),
        ColumnKind::Bytes => or_null(row.try_get::<_, Option<Vec<u8>>>(column)?.map(Value::Blob)),
        ColumnKind::TextOrBytes => or_null(row.try_get::<_, Option<Vec<u8>>>(column)?.map(
            |bytes| match String::from_utf8(bytes) {
                Ok(text) => Value::Text(text),
                Err(e) => Value::Blob(e.into_bytes()),
            },
        )),
        ColumnKind::Text | ColumnKind::Json => {
            or_null(row.try_get::<_, Option<String>>(column)?.map(Value::Text))
        }
        ColumnKind::Int4 => or_null(
            row.try_get::<_, Option<i32>>(column)?
                .map(|n| Value::Integer(n.into())),
        ),
        ColumnKind::Int8 => or_null(row.try_get::<_, Option<i64>>(column)?.map(Value::Integer)),
        ColumnKind::Bool => or_null(
            row.try_get::<_, Option<bool>>(column)?
                .map(|b| Value::Integer(b.into())),
        ),
    })
}

/// Writes what arrives in one transaction, committed when the reader says it is done (and
/// rolled back if it stops first). Blocking: runs on a thread of its own.
fn write_rows(
    conn: &mut rusqlite::Connection,
    receive: &mut mpsc::Receiver<Copied>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    while let Some(copied) = receive.blocking_recv() {
        match copied {
            Copied::Row(insert, values) => {
                tx.prepare_cached(&insert)?
                    .execute(rusqlite::params_from_iter(values))?;
            }
            Copied::Done => return tx.commit(),
        }
    }
    Ok(())
}

/// Opens the archive file and gives it each table of `ARCHIVED` and every column of `tables`
/// it lacks. Blocking.
fn create_tables(
    path: &Path,
    tables: &[(&'static str, Vec<Column>)],
) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(OPERATOR_BUSY_TIMEOUT)?;
    // The copy must be on disk before the rows it saves are deleted.
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    for ((table, key), (_, columns)) in ARCHIVED.iter().zip(tables) {
        conn.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {table} ({key})"))?;
        let have: Vec<String> = conn
            .prepare(&format!("PRAGMA table_info({table})"))?
            .query_map([], |r| r.get(1))?
            .collect::<Result<_, _>>()?;
        for column in columns {
            if !have.contains(&column.name) {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN \"{}\" {}",
                    column.name,
                    column.kind.declared()
                ))?;
            }
        }
    }
    Ok(conn)
}

fn archive_error(path: &Path, reason: String) -> PgError {
    PgError::Archive {
        path: path.to_path_buf(),
        reason,
    }
}
