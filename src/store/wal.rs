//! The write-ahead log's size, and the policy that keeps it bounded.
//!
//! The writer's passive checkpoints (SQLite's automatic one, moved after the answers: see
//! [`super::writer`]) copy the WAL back into the database after commits, but cannot
//! restart the log while another connection (an operator's `sqlite3` left inside `BEGIN`, a
//! backup) still reads an older snapshot: every commit then appends, and the file grows without
//! end. Past a quarter of its limit the writer therefore tries, at most once a second and without
//! waiting, a `TRUNCATE` checkpoint, which empties the file the moment the reader lets go, and
//! logs who is to blame while it cannot. At the limit itself, new work is refused (`503`) so the
//! log stops growing; running jobs can still finish, which bounds what is written meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::BUSY_TIMEOUT;

/// The limit unless the operator sets one: far above the few MiB the passive checkpoints keep
/// the log at, so the policy acts only when something holds the log back.
pub const DEFAULT_WAL_MAX_BYTES: u64 = 1 << 30;

/// How often a blocked truncation is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How often a log that cannot be truncated is reported while it stays so.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The WAL file of the database at `db`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The WAL's size on disk; 0 when there is none (after a clean close).
pub(super) fn size(wal: &Path) -> u64 {
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// The size limit, shared by the store (which refuses new work above it) and the writer thread
/// (which checkpoints as the log nears it).
#[derive(Clone, Debug)]
pub(super) struct Limit(Arc<AtomicU64>);

impl Default for Limit {
    fn default() -> Limit {
        Limit(Arc::new(AtomicU64::new(DEFAULT_WAL_MAX_BYTES)))
    }
}

impl Limit {
    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, bytes: u64) {
        self.0.store(bytes.max(1), Ordering::Relaxed);
    }
}

/// The writer thread's side of the policy.
pub(super) struct Checkpointer {
    wal: PathBuf,
    limit: Limit,
    last_try: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Checkpointer {
    pub(super) fn new(wal: PathBuf, limit: Limit) -> Checkpointer {
        Checkpointer {
            wal,
            limit,
            last_try: None,
            last_warning: None,
        }
    }

    /// Called by the writer between transactions.
    pub(super) fn after_commit(&mut self, conn: &Connection) {
        let bytes = size(&self.wal);
        let limit = self.limit.get();
        if bytes < limit / 4 || self.last_try.is_some_and(|t| t.elapsed() < RETRY) {
            return;
        }
        self.last_try = Some(Instant::now());
        match truncate(conn) {
            Ok(true) => {
                self.last_warning = None;
                tracing::info!(
                    wal_bytes = bytes,
                    "write-ahead log checkpointed and truncated"
                );
            }
            Ok(false) if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) => {
                self.last_warning = Some(Instant::now());
                tracing::warn!(
                    wal_bytes = bytes,
                    limit_bytes = limit,
                    "the write-ahead log cannot be checkpointed: another connection keeps a read \
                     transaction open (an operator's sqlite3 inside BEGIN?); new jobs are refused \
                     once it reaches the limit"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "write-ahead log checkpoint failed"),
        }
    }
}

/// A `TRUNCATE` checkpoint that gives up at once instead of waiting for readers (the writer
/// must not stall on them). True if the log was emptied.
fn truncate(conn: &Connection) -> rusqlite::Result<bool> {
    conn.busy_timeout(Duration::ZERO)?;
    let blocked = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(blocked? == 0)
}
