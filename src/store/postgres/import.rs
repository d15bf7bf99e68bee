//! `kiln migrate-to`'s copy: a SQLite file's whole history into a PostgreSQL database, ids kept,
//! so that `kiln serve --db postgres://…` serves the same jobs, events, batches and tokens.
//!
//! Why it is shaped so:
//!
//! - **One snapshot, one transaction.** The SQLite side reads in one read transaction, so it
//!   copies one consistent state even if a server still writes the file (which the operator
//!   should have stopped: what it writes later is not copied). The PostgreSQL side writes in one
//!   transaction, after the migrations: all of it commits, or none of it.
//! - **Only into an empty database.** Ids are kept, so rows already there would collide, or
//!   worse, mix two histories under one cursor; a database holding any kiln rows is refused
//!   before anything is written. The one exception is `settings`: a `kiln serve` started on the
//!   empty database may have generated a webhook secret, which signed nothing (no webhook rows),
//!   and the SQLite file's secret, which receivers know, replaces it.
//! - **Triggers, not copies, for what triggers keep.** Inserting jobs and batches fires
//!   PostgreSQL's counting triggers (`counters`, `job_counts`), so those are computed from the
//!   rows copied rather than copied too, which would count each job twice. The per-minute
//!   history (`jobs_ended`, `job_latency`) is kept by triggers on a job's *end*, which inserting
//!   an ended job does not fire, and it outlives pruned jobs, so it is copied.
//!   `latency_buckets` is the migrations' own. Inserting events takes the commit-order lock and
//!   sends one `NOTIFY` per statement, which PostgreSQL folds into one at commit.
//! - **Bounded memory.** A blocking thread reads rows in chunks and hands them over a channel
//!   of two chunks to a binary `COPY` per table, so a history of any size streams through.
//! - **Sequences past every id.** Each identity column is set past the largest id copied and
//!   past SQLite's `sqlite_sequence` (AUTOINCREMENT never reuses an id, even a pruned one), so
//!   new rows never collide and an event cursor never sees an id twice.
//!
//! Values are converted by the PostgreSQL column's type (see `schema/postgres/0001_init.sql`):
//! uuid from text, bytea from text or blob (the exact bytes), boolean from 0 or 1, json as the
//! very text SQLite holds (a webhook payload must stay byte for byte), integers range-checked.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{PgError, migrate, pool};
use crate::store::{StoreError, maintenance};

/// What becomes of each table of kiln's SQLite schema, in the order they are copied (a table
/// after those its foreign keys name). A test holds this list to `schema/*.sql`.
const TABLES: &[(&str, Treatment)] = &[
    ("batches", Treatment::Copied),
    ("jobs", Treatment::Copied),
    ("events", Treatment::Copied),
    ("webhooks", Treatment::Copied),
    ("job_files", Treatment::Copied),
    ("tokens", Treatment::Copied),
    ("tenants", Treatment::Copied),
    ("settings", Treatment::Copied),
    ("prunes", Treatment::Copied),
    ("prune_in_progress", Treatment::Copied),
    ("jobs_ended", Treatment::Copied),
    ("job_latency", Treatment::Copied),
    ("counters", Treatment::Counted),
    ("job_counts", Treatment::Counted),
    ("latency_buckets", Treatment::Fixed),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Treatment {
    Copied,
    /// Computed by PostgreSQL's triggers as the rows they count are inserted.
    Counted,
    /// The same rows on both sides, written by the migrations.
    Fixed,
}

/// Rows per chunk handed from the reader to the writer, at most.
const CHUNK_ROWS: usize = 1000;
/// Bytes of values per chunk, at most (a single larger row is a chunk of its own).
const CHUNK_BYTES: usize = 4 << 20;
/// How often a long table reports how far it got.
const PROGRESS_EVERY: u64 = 50_000;

/// How far the copy of one table is.
#[derive(Clone, Debug)]
pub struct ImportProgress<'a> {
    pub table: &'a str,
    /// Rows written so far.
    pub rows: u64,
    /// Rows the snapshot holds.
    pub total: u64,
    /// True once the table is copied whole.
    pub done: bool,
    /// Since its copy began.
    pub elapsed: Duration,
}

/// A finished copy, committed.
#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    pub tables: Vec<TableImported>,
    /// Jobs that were running in the snapshot: their leases run out, and the new deployment's
    /// rescuer requeues them (or ends them as `error`), as after any crash.
    pub running_jobs: u64,
    /// Tables of the file that are not kiln's (an operator's own), left out.
    pub skipped: Vec<String>,
    pub elapsed_ms: u64,
}

/// One table copied.
#[derive(Clone, Debug, Serialize)]
pub struct TableImported {
    pub table: String,
    pub rows: u64,
    pub elapsed_ms: u64,
    /// For a table with an identity column: the id its next row gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_id: Option<i64>,
}

/// Copies the SQLite database at `sqlite` (its schema brought up to date first, as `kiln serve`
/// would) into the PostgreSQL database at `url` (its schema likewise), telling `progress` how
/// far each table is. Nothing is written to PostgreSQL unless all of it is.
pub async fn import_sqlite(
    sqlite: &Path,
    url: &str,
    mut progress: impl FnMut(&ImportProgress<'_>),
) -> Result<Imported, StoreError> {
    let started = Instant::now();
    let (chunks, mut received) = mpsc::channel(2);
    let path = sqlite.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || read(&path, &chunks));
    let written = write(url, &mut received, &mut progress).await;
    drop(received);
    let read = reader.await.map_err(|e| StoreError::Task(e.to_string()))?;
    // A reader that failed closed the channel, which the writer saw as an early end: the
    // reader's error is the cause.
    read?;
    let (tables, snapshot) = written?;
    Ok(Imported {
        tables,
        running_jobs: snapshot.running_jobs,
        skipped: snapshot.skipped,
        elapsed_ms: millis(started.elapsed()),
    })
}

/// What the reader found in its snapshot, sent before any row.
#[derive(Debug)]
struct Snapshot {
    tables: Vec<SourceTable>,
    /// `sqlite_sequence`: the largest id each AUTOINCREMENT table ever handed out.
    sequences: BTreeMap<String, i64>,
    running_jobs: u64,
    skipped: Vec<String>,
}

#[derive(Debug)]
struct SourceTable {
    name: &'static str,
    columns: Vec<String>,
    rows: u64,
}

/// A value as SQLite held it.
#[derive(Debug)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

#[derive(Debug)]
enum Message {
    Snapshot(Snapshot),
    Rows(Vec<Vec<Cell>>),
    /// The table being sent has no more rows.
    End,
}

/// The reader: one read transaction over the whole copy, its rows sent in chunks. A writer that
/// stopped (closed the channel) stops it too, without an error of its own.
fn read(path: &Path, out: &mpsc::Sender<Message>) -> Result<(), StoreError> {
    let mut conn = maintenance::open_existing(path, true)?;
    let tx = conn.transaction()?;
    let snapshot = snapshot(&tx)?;
    let tables: Vec<(&'static str, Vec<String>, String)> = snapshot
        .tables
        .iter()
        .map(|t| Ok((t.name, t.columns.clone(), order_by(&tx, t.name)?)))
        .collect::<Result<_, StoreError>>()?;
    if out.blocking_send(Message::Snapshot(snapshot)).is_err() {
        return Ok(());
    }
    for (name, columns, order) in tables {
        let columns: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let mut select = tx.prepare(&format!(
            "SELECT {} FROM {} ORDER BY {order}",
            columns.join(", "),
            quote(name)
        ))?;
        let mut rows = select.query([])?;
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                let cell = Cell::from(row.get_ref(i)?);
                bytes += cell.size();
                cells.push(cell);
            }
            chunk.push(cells);
            if chunk.len() >= CHUNK_ROWS || bytes >= CHUNK_BYTES {
                if out
                    .blocking_send(Message::Rows(std::mem::take(&mut chunk)))
                    .is_err()
                {
                    return Ok(());
                }
                bytes = 0;
            }
        }
        if !chunk.is_empty() && out.blocking_send(Message::Rows(chunk)).is_err() {
            return Ok(());
        }
        if out.blocking_send(Message::End).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn snapshot(tx: &rusqlite::Transaction<'_>) -> Result<Snapshot, StoreError> {
    let mut listed = tx.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY name",
    )?;
    let present: Vec<String> = listed
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let skipped = present
        .iter()
        .filter(|name| !TABLES.iter().any(|(known, _)| known == name))
        .cloned()
        .collect();
    let mut tables = Vec::new();
    for (name, treatment) in TABLES {
        if *treatment != Treatment::Copied {
            continue;
        }
        if !present.iter().any(|p| p == name) {
            return Err(StoreError::Corrupt(format!(
                "the database has no table {name}, which its schema version should have"
            )));
        }
        let columns = tx
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{name}') ORDER BY cid"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let rows: i64 =
            tx.query_row(&format!("SELECT count(*) FROM {}", quote(name)), [], |r| {
                r.get(0)
            })?;
        tables.push(SourceTable {
            name,
            columns,
            rows: u64::try_from(rows).unwrap_or(0),
        });
    }
    let sequences = tx
        .prepare("SELECT name, seq FROM sqlite_sequence")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let running: i64 = tx.query_row(
        "SELECT count(*) FROM jobs WHERE status = 'running'",
        [],
        |r| r.get(0),
    )?;
    Ok(Snapshot {
        tables,
        sequences,
        running_jobs: u64::try_from(running).unwrap_or(0),
        skipped,
    })
}

/// The primary key's columns, so that rows go in id order; a table without one, by rowid.
fn order_by(tx: &rusqlite::Transaction<'_>, table: &str) -> Result<String, StoreError> {
    let key: Vec<String> = tx
        .prepare(&format!(
            "SELECT name FROM pragma_table_info('{table}') WHERE pk > 0 ORDER BY pk"
        ))?
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|name| name.map(|n| quote(&n)))
        .collect::<Result<_, _>>()?;
    Ok(if key.is_empty() {
        "rowid".to_owned()
    } else {
        key.join(", ")
    })
}

impl From<rusqlite::types::ValueRef<'_>> for Cell {
    fn from(value: rusqlite::types::ValueRef<'_>) -> Cell {
        use rusqlite::types::ValueRef;
        match value {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Integer(n),
            ValueRef::Real(x) => Cell::Real(x),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

impl Cell {
    /// Roughly what it holds in memory, for sizing chunks.
    fn size(&self) -> usize {
        match self {
            Cell::Text(b) | Cell::Blob(b) => b.len() + 8,
            _ => 8,
        }
    }

    fn describe(&self) -> String {
        match self {
            Cell::Null => "NULL".into(),
            Cell::Integer(n) => format!("the integer {n}"),
            Cell::Real(x) => format!("the real {x}"),
            Cell::Text(t) => format!("the text {:?}", String::from_utf8_lossy(t)),
            Cell::Blob(b) => format!("a blob of {} bytes", b.len()),
        }
    }
}

/// What a PostgreSQL column takes, among the types kiln's schema uses.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Uuid,
    Bytes,
    Text,
    Json,
    Bool,
    Int4,
    Int8,
}

impl Kind {
    fn of(ty: &Type) -> Option<Kind> {
        Some(match *ty {
            Type::UUID => Kind::Uuid,
            Type::BYTEA => Kind::Bytes,
            Type::TEXT | Type::VARCHAR => Kind::Text,
            Type::JSON => Kind::Json,
            Type::BOOL => Kind::Bool,
            Type::INT4 => Kind::Int4,
            Type::INT8 => Kind::Int8,
            _ => return None,
        })
    }

    /// `cell` as this kind of column takes it, or why it cannot be.
    fn convert(self, cell: Cell) -> Result<Value, String> {
        let refuse = |cell: &Cell, what: &str| Err(format!("{} is not {what}", cell.describe()));
        match (self, cell) {
            (_, Cell::Null) => Ok(Value::Null),
            (Kind::Bytes, Cell::Text(b) | Cell::Blob(b)) => Ok(Value::Raw(b)),
            (Kind::Text | Kind::Json, Cell::Text(t)) => match String::from_utf8(t) {
                Ok(s) => Ok(Value::Raw(s.into_bytes())),
                Err(e) => Err(format!("text that is not UTF-8: {e}")),
            },
            (Kind::Uuid, Cell::Text(t)) => std::str::from_utf8(&t)
                .ok()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
                .map(Value::Uuid)
                .ok_or_else(|| format!("{} is not a UUID", Cell::Text(t).describe())),
            (Kind::Bool, Cell::Integer(n @ (0 | 1))) => Ok(Value::Bool(n == 1)),
            (Kind::Int4, Cell::Integer(n)) => match i32::try_from(n) {
                Ok(n) => Ok(Value::Int4(n)),
                Err(_) => refuse(&Cell::Integer(n), "a 32-bit integer"),
            },
            (Kind::Int8, Cell::Integer(n)) => Ok(Value::Int8(n)),
            (Kind::Uuid, cell) => refuse(&cell, "a UUID"),
            (Kind::Bytes, cell) => refuse(&cell, "bytes"),
            (Kind::Text, cell) => refuse(&cell, "text"),
            (Kind::Json, cell) => refuse(&cell, "JSON text"),
            (Kind::Bool, cell) => refuse(&cell, "a boolean (0 or 1)"),
            (Kind::Int4 | Kind::Int8, cell) => refuse(&cell, "an integer"),
        }
    }
}

/// A value ready for binary `COPY`. Text, JSON and bytea are all their bytes on the wire; the
/// types were checked when the column's kind was, so `accepts` need not check again.
#[derive(Debug)]
enum Value {
    Null,
    Raw(Vec<u8>),
    Uuid(uuid::Uuid),
    Bool(bool),
    Int4(i32),
    Int8(i64),
}

impl ToSql for Value {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => return Ok(IsNull::Yes),
            Value::Raw(bytes) => out.extend_from_slice(bytes),
            Value::Uuid(id) => out.extend_from_slice(id.as_bytes()),
            Value::Bool(b) => out.extend_from_slice(&[u8::from(*b)]),
            Value::Int4(n) => out.extend_from_slice(&n.to_be_bytes()),
            Value::Int8(n) => out.extend_from_slice(&n.to_be_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// The writer: migrations, then one transaction that checks the database holds no kiln rows,
/// copies every table the reader sends and sets the sequences.
async fn write(
    url: &str,
    received: &mut mpsc::Receiver<Message>,
    progress: &mut impl FnMut(&ImportProgress<'_>),
) -> Result<(Vec<TableImported>, Snapshot), StoreError> {
    // The file first: one that is missing or from a newer kiln is refused before the
    // database is touched.
    let Some(Message::Snapshot(snapshot)) = received.recv().await else {
        return Err(StoreError::Task(stopped("its snapshot")));
    };
    let (pool, _, _) = pool(url, 1)?;
    let mut client = pool.get().await.map_err(PgError::from)?;
    migrate::apply(&mut client).await?;
    let tx = client.transaction().await.map_err(PgError::from)?;
    let names: Vec<&str> = snapshot.tables.iter().map(|t| t.name).collect();
    // Held to the commit, so that nothing else writes a row between the check and the copy.
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        names.join(", ")
    ))
    .await
    .map_err(PgError::from)?;
    let mut occupied = Vec::new();
    for name in names.iter().filter(|n| **n != "settings") {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {name})");
        let row = tx.query_one(&sql, &[]).await.map_err(PgError::from)?;
        if row.try_get::<_, bool>(0).map_err(PgError::from)? {
            occupied.push((*name).to_owned());
        }
    }
    if !occupied.is_empty() {
        return Err(PgError::NotEmpty { tables: occupied }.into());
    }
    tx.batch_execute("DELETE FROM settings")
        .await
        .map_err(PgError::from)?;
    let mut copied = Vec::new();
    for table in &snapshot.tables {
        let started = Instant::now();
        let rows = copy(&tx, table, received, started, progress)
            .await
            .map_err(|reason| PgError::Copy {
                table: table.name.to_owned(),
                reason,
            })?;
        copied.push(TableImported {
            table: table.name.to_owned(),
            rows,
            elapsed_ms: millis(started.elapsed()),
            next_id: None,
        });
    }
    let identities = tx
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
            &[],
        )
        .await
        .map_err(PgError::from)?;
    for identity in identities {
        let table: String = identity.try_get(0).map_err(PgError::from)?;
        let column: String = identity.try_get(1).map_err(PgError::from)?;
        let Some(entry) = copied.iter_mut().find(|t| t.table == table) else {
            continue;
        };
        let used = snapshot.sequences.get(&table).copied().unwrap_or(0);
        // Past the largest id copied and any SQLite handed out; a table that never had a row
        // starts at 1.
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), greatest(m, $3, 1), \
                           m IS NOT NULL OR $3 > 0) \
             FROM (SELECT max({column}) AS m FROM {table}) copied"
        );
        let row = tx
            .query_one(&sql, &[&table, &column, &used])
            .await
            .map_err(PgError::from)?;
        let set: i64 = row.try_get(0).map_err(PgError::from)?;
        entry.next_id = Some(if entry.rows == 0 && used == 0 {
            set
        } else {
            set + 1
        });
    }
    tx.commit().await.map_err(PgError::from)?;
    Ok((copied, snapshot))
}

/// One table's rows, by binary `COPY`, as the reader sends them; the rows written, or why not.
async fn copy(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &SourceTable,
    received: &mut mpsc::Receiver<Message>,
    started: Instant,
    progress: &mut impl FnMut(&ImportProgress<'_>),
) -> Result<u64, String> {
    let columns: Vec<String> = table.columns.iter().map(|c| quote(c)).collect();
    let columns = columns.join(", ");
    let probe = tx
        .prepare(&format!("SELECT {columns} FROM {} LIMIT 0", table.name))
        .await
        .map_err(|e| format!("its columns do not match PostgreSQL's: {}", db_message(&e)))?;
    let kinds: Vec<Kind> = probe
        .columns()
        .iter()
        .map(|c| {
            Kind::of(c.type_()).ok_or_else(|| {
                format!(
                    "column {} is of type {}, which kiln does not copy into",
                    c.name(),
                    c.type_()
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            table.name
        ))
        .await
        .map_err(|e| db_message(&e))?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let report = |rows: u64, done: bool| ImportProgress {
        table: table.name,
        rows,
        total: table.rows,
        done,
        elapsed: started.elapsed(),
    };
    let mut rows = 0u64;
    loop {
        match received.recv().await {
            Some(Message::Rows(chunk)) => {
                for cells in chunk {
                    let values = cells
                        .into_iter()
                        .zip(&kinds)
                        .zip(&table.columns)
                        .map(|((cell, kind), column)| {
                            kind.convert(cell).map_err(|why| {
                                format!("row {} (in key order), column {column}: {why}", rows + 1)
                            })
                        })
                        .collect::<Result<Vec<Value>, String>>()?;
                    writer
                        .as_mut()
                        .write_raw(values.iter())
                        .await
                        .map_err(|e| db_message(&e))?;
                    rows += 1;
                    if rows.is_multiple_of(PROGRESS_EVERY) {
                        progress(&report(rows, false));
                    }
                }
            }
            Some(Message::End) => break,
            Some(Message::Snapshot(_)) | None => return Err(stopped("every row")),
        }
    }
    let written = writer.as_mut().finish().await.map_err(|e| db_message(&e))?;
    progress(&report(written, true));
    Ok(written)
}

/// A PostgreSQL error as the server put it (message, detail, hint), or as the client did.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => e.to_string(),
    }
}

/// Why the writer cannot go on: the reader ended early, whose own error is then the one shown.
fn stopped(what: &str) -> String {
    format!("the SQLite side stopped before sending {what}")
}

/// An identifier in double quotes, as both SQLite and PostgreSQL read it.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table kiln's SQLite migrations make is copied, counted by triggers or fixed by the
    /// migrations on both sides: a new table must say which, or `kiln migrate-to` would leave
    /// it behind as though it were an operator's own.
    #[test]
    fn every_table_of_the_sqlite_schema_has_its_treatment() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("in-memory database");
        crate::store::migrate::apply(&mut conn).expect("migrations");
        let tx = conn.transaction().expect("transaction");
        let snapshot = snapshot(&tx).expect("every table copied is there");
        assert_eq!(
            snapshot.skipped,
            Vec::<String>::new(),
            "tables with no treatment"
        );
        for (name, _) in TABLES {
            let found: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
                    [name],
                    |r| r.get(0),
                )
                .expect("look up");
            assert!(found, "{name} is listed but not in schema/*.sql");
        }
    }

    /// Every table copied exists in PostgreSQL's schema, and each one that counts is kept by a
    /// trigger on inserts there.
    #[test]
    fn every_table_copied_or_counted_is_in_the_postgres_schema() {
        let schema: String = crate::store::postgres::MIGRATIONS
            .iter()
            .map(|m| m.sql)
            .collect();
        for (name, treatment) in TABLES {
            assert!(
                schema.contains(&format!("CREATE TABLE {name} (")),
                "{name} is not in schema/postgres"
            );
            if *treatment == Treatment::Counted {
                assert!(
                    schema.contains(&format!("UPDATE {name} SET"))
                        || schema.contains(&format!("INSERT INTO {name} (")),
                    "no trigger keeps {name}"
                );
            }
        }
    }

    #[test]
    fn values_take_the_postgres_column_type() {
        let raw = |v: Value| match v {
            Value::Raw(b) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            raw(Kind::Bytes.convert(Cell::Blob(vec![0, 255])).unwrap()),
            [0, 255]
        );
        assert_eq!(
            raw(Kind::Bytes.convert(Cell::Text(b"hi".to_vec())).unwrap()),
            b"hi"
        );
        let payload = br#"{"b": 1,  "a": [ ]}"#.to_vec();
        assert_eq!(
            raw(Kind::Json.convert(Cell::Text(payload.clone())).unwrap()),
            payload,
            "JSON keeps its very text"
        );
        assert!(matches!(
            Kind::Bool.convert(Cell::Integer(1)),
            Ok(Value::Bool(true))
        ));
        assert!(Kind::Bool.convert(Cell::Integer(2)).is_err());
        assert!(Kind::Int4.convert(Cell::Integer(1 << 40)).is_err());
        assert!(matches!(Kind::Text.convert(Cell::Null), Ok(Value::Null)));
        assert!(Kind::Text.convert(Cell::Text(vec![0xff])).is_err());
        let id = "0190a8b2-7c3e-7d4f-8a1b-2c3d4e5f6a7b";
        assert!(matches!(
            Kind::Uuid.convert(Cell::Text(id.as_bytes().to_vec())),
            Ok(Value::Uuid(u)) if u.to_string() == id
        ));
        let refused = Kind::Uuid
            .convert(Cell::Text(b"job-1".to_vec()))
            .unwrap_err();
        assert!(refused.contains("not a UUID"), "{refused}");
    }
}
