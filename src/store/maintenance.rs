//! What operators do to the file from outside the service — back it up, inspect it — and the
//! figures the running service reports about it (queue depth, WAL size).
//!
//! The commands open their own connection rather than going through a server: they must work
//! whether or not one runs, and SQLite already lets one process read a consistent snapshot (WAL)
//! while another writes. They never create a database: a mistyped path is an error, not a new
//! empty file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::{BUSY_TIMEOUT, StoreError, migrate, wal};

/// Opens an existing database for an operator's command; `migrate` brings its schema up to this
/// kiln's (as `kiln serve` would at start) for commands that rely on the latest schema.
pub(super) fn open_existing(path: &Path, migrate: bool) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if migrate {
        migrate::apply(&mut conn)?;
    }
    Ok(conn)
}

/// A finished backup.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
    pub jobs: i64,
    pub events: i64,
    pub user_version: u32,
}

/// Writes a consistent copy of the database at `source` to `dest` while servers go on writing.
///
/// `VACUUM INTO` reads one snapshot (a read transaction, which in WAL mode never blocks writers
/// nor is disturbed by them) and writes it out compacted; the page-by-page backup API instead
/// starts over whenever another process writes, which a busy server may do forever. The copy is
/// written beside `dest`, synced, checked and only then renamed into place, so `dest` is either
/// absent or a complete backup that passed `integrity_check`.
pub fn backup(source: &Path, dest: &Path) -> Result<Backup, StoreError> {
    if dest.exists() {
        return Err(StoreError::Exists(dest.to_path_buf()));
    }
    let conn = open_existing(source, false)?;
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let io = |e: std::io::Error| StoreError::Io(dest.to_path_buf(), e.to_string());
    let written = (|| {
        let name = partial
            .to_str()
            .ok_or_else(|| StoreError::Io(partial.clone(), "the path is not valid UTF-8".into()))?;
        conn.execute("VACUUM INTO ?1", [name])?;
        // VACUUM INTO leaves the new file unsynced.
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        let copy = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let health = check(&copy, false)?;
        if health.integrity != ["ok"] {
            return Err(StoreError::Corrupt(format!(
                "the backup failed integrity_check: {}",
                health.integrity.join("; ")
            )));
        }
        let count = |table: &str| {
            copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        };
        let (jobs, events) = (count("jobs")?, count("events")?);
        drop(copy);
        rename_durably(&partial, dest)?;
        Ok(Backup {
            path: dest.to_path_buf(),
            bytes: std::fs::metadata(dest).map_or(0, |m| m.len()),
            jobs,
            events,
            user_version: health.user_version,
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// Puts a finished, synced backup at `partial` in place as `dest`, and syncs the directory, so
/// that after a crash `dest` is either absent or the whole backup.
pub fn rename_durably(partial: &Path, dest: &Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io(dest.to_path_buf(), e.to_string());
    std::fs::rename(partial, dest).map_err(io)?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// What `kiln doctor` reads about a database file.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub journal_mode: String,
    pub user_version: u32,
    /// The last migration this kiln knows.
    pub known_version: u32,
    /// `["ok"]`, or what `integrity_check` (or `quick_check`) found wrong.
    pub integrity: Vec<String>,
    pub page_size: u64,
    pub pages: u64,
    pub free_pages: u64,
    pub wal_bytes: u64,
    /// Rows in `prune_in_progress`, which is empty unless a prune runs (or one was killed
    /// between its statements, which SQLite rolls back, so never for long).
    pub prune_markers: i64,
}

/// Reads the file's pragmas and checks its integrity: the full `integrity_check` (every index
/// against its table), or the faster `quick_check` when `quick`.
pub fn inspect(path: &Path, quick: bool) -> Result<Health, StoreError> {
    let conn = open_existing(path, false)?;
    let mut health = check(&conn, quick)?;
    health.wal_bytes = wal::size(&wal::wal_path(path));
    Ok(health)
}

fn check(conn: &Connection, quick: bool) -> Result<Health, StoreError> {
    let get = |name: &str| conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
    let pragma = if quick {
        "quick_check"
    } else {
        "integrity_check"
    };
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}"))?;
    let integrity = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let has_markers: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'prune_in_progress'",
        [],
        |r| r.get(0),
    )?;
    let prune_markers = match has_markers {
        true => conn.query_row("SELECT count(*) FROM prune_in_progress", [], |r| r.get(0))?,
        false => 0,
    };
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Health {
        journal_mode: conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
        user_version: conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
        known_version: migrate::MIGRATIONS.last().map_or(0, |m| m.version),
        integrity,
        page_size: unsigned(get("page_size")?),
        pages: unsigned(get("page_count")?),
        free_pages: unsigned(get("freelist_count")?),
        wal_bytes: 0,
        prune_markers,
    })
}

/// How many jobs are in each status, every status present (0 for none).
pub(super) fn queue_depth(conn: &Connection) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut depth: BTreeMap<String, i64> = crate::job::Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    // The counts the triggers keep, not a count of the jobs: a scrape reads a few rows however
    // many jobs the file holds.
    let mut stmt =
        conn.prepare_cached("SELECT status, sum(jobs) FROM job_counts GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (status, n) = row?;
        depth.insert(status, n);
    }
    Ok(depth)
}

/// How long an operator's command waits for the write lock before giving up: longer than a
/// server's, since it runs rarely and has nobody waiting on an answer.
pub(super) const OPERATOR_BUSY_TIMEOUT: Duration = Duration::from_secs(60);
