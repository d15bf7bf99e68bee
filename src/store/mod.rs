//! The store: the one place that knows SQL. [`Store`] is its interface, in domain terms
//! (`submit`, `claim`, `finish`, ...), over two backends: SQLite (`sqlite`, the embedded
//! default: one file, one writer thread with group commit) and PostgreSQL ([`postgres`], for
//! many nodes on one database). The rest of kiln holds a `Store` and never asks which: both
//! write the same rows and the same events, and both return from a write only once it is
//! durable. What only one backend can do (a SQLite file's pragmas, write-ahead log and backup)
//! says so in its error.

mod batch;
mod bytes;
#[cfg(test)]
mod claim_tests;
mod maintenance;
mod migrate;
mod planner;
pub mod postgres;
mod prune;
mod read;
mod sqlite;
mod stats;
mod tenants;
mod wal;
mod webhooks;
mod write;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::bus::Bus;
use crate::job::batch::{Batch, BatchSpec, Case, CaseReport, CaseSpec, Group, SuiteSpec};
use crate::job::{
    BatchId, Event, Finish, Job, JobId, JobSpec, Outcome, Progress, RunResult, Status,
};
use postgres::{PgError, PgStore};

pub use batch::{BatchCancel, BatchSubmitted, BatchSummary};
pub use maintenance::{Backup, Health, backup, inspect, rename_durably};
pub use migrate::{MIGRATIONS, Migration};
pub use prune::{PruneOptions, PrunePreview, PruneReport, prune, prune_preview};
pub use read::{JobFilter, JobInput, JobSummary, Order, Page};
pub use sqlite::{Sqlite, WriterThread};
pub use stats::{Counts, Percentiles, Step};
pub use tenants::{ActiveToken, Admission, Full, TokenInfo, Visibility};
pub use wal::DEFAULT_WAL_MAX_BYTES;
pub use webhooks::{Attempt, Delivery, Subject};
pub use write::{CLAIM_SQL, CancelResult, ClaimedJob, Submitted};

/// How long a connection waits for a lock held by another process (an operator's `sqlite3`,
/// a backup) before giving up with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    #[error("no read connection available: {0}")]
    Pool(Arc<r2d2::Error>),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        source: Arc<rusqlite::Error>,
    },
    #[error("the database is at schema version {found}, newer than this kiln knows ({known})")]
    TooNew { found: u32, known: u32 },
    #[error("pragma {pragma} is {found:?}, expected {expected:?}")]
    Pragma {
        pragma: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    #[error("the database writer has stopped")]
    WriterStopped,
    #[error("a database task failed: {0}")]
    Task(String),
    #[error(
        "the write-ahead log has reached {bytes} bytes (limit {limit}): another connection keeps \
         a read transaction open, so it cannot be checkpointed"
    )]
    WalFull { bytes: u64, limit: u64 },
    #[error(
        "no database at {}: give the server's with --db or KILN_DB (only `kiln serve` creates \
         one)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("{} already exists; kiln does not overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("{path}: {message}", path = .0.display(), message = .1)]
    Io(PathBuf, String),
    #[error("{0}")]
    Postgres(PgError),
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Postgres(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// Why the database cannot take a request right now, for conditions that pass on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Another process holds the lock (an operator's write transaction, a backup).
    Busy,
    /// The disk holding the database or its log is full.
    DiskFull,
    /// The file or its file system has become read-only.
    ReadOnly,
    /// Reading or writing the file failed, or what was read back made no sense.
    Io,
    /// The write-ahead log is at its limit (see `--wal-max-mb`).
    WalFull,
    /// Every read connection is in use.
    Pool,
}

impl StoreError {
    /// True for conditions outside kiln that pass on their own or once an operator acts (lock
    /// held by another process, disk full, read-only or failing disk): callers should answer
    /// "try again later", not "broken".
    pub fn is_transient(&self) -> bool {
        self.unavailable().is_some()
    }

    /// What keeps the database from taking the request, if it is something that passes.
    pub fn unavailable(&self) -> Option<Unavailable> {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Sqlite(e) => match e.sqlite_error_code()? {
                DatabaseBusy | DatabaseLocked => Some(Unavailable::Busy),
                DiskFull => Some(Unavailable::DiskFull),
                ReadOnly => Some(Unavailable::ReadOnly),
                // A failing disk shows as I/O errors, and pages read back from it as corrupt or
                // missing: none of it is kiln's bug, and all of it may pass once the disk is
                // back, so it is answered like the rest here rather than as an internal error.
                SystemIoFailure | DatabaseCorrupt | NotADatabase | CannotOpen => {
                    Some(Unavailable::Io)
                }
                _ => None,
            },
            StoreError::Postgres(e) => e.unavailable(),
            StoreError::Pool(_) => Some(Unavailable::Pool),
            StoreError::WalFull { .. } => Some(Unavailable::WalFull),
            _ => None,
        }
    }
}

/// The pragmas in force on the write connection, as SQLite reports them back.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Pragmas {
    pub journal_mode: String,
    pub synchronous: i64,
    pub foreign_keys: bool,
    pub busy_timeout_ms: i64,
    pub user_version: u32,
}

/// Shared handle to the database, whichever backend holds it. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(Sqlite),
    Postgres(PgStore),
}

/// Runs the same call on whichever backend holds the store: the two take the same arguments
/// (PostgreSQL's by reference, as `$call` is written) and answer the same domain types.
macro_rules! both {
    ($self:expr, $backend:ident => $call:expr) => {
        match $self {
            Store::Sqlite($backend) => $call.await,
            Store::Postgres($backend) => Ok($call.await?),
        }
    };
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, brings its schema up to date
    /// and starts its writer thread. Only the server creates a database: see
    /// [`Store::open_existing`].
    pub fn open(path: &Path, readers: u32) -> Result<(Store, WriterThread), StoreError> {
        let (store, writer) = Sqlite::open(path, readers)?;
        Ok((Store::Sqlite(store), writer))
    }

    /// [`Store::open`] for an operator's command: a database that does not exist is
    /// [`StoreError::Missing`], never a new empty file, which would take a mistyped path (or
    /// the wrong directory) for a server with no tokens and no history.
    pub fn open_existing(path: &Path, readers: u32) -> Result<(Store, WriterThread), StoreError> {
        let (store, writer) = Sqlite::open_existing(path, readers)?;
        Ok((Store::Sqlite(store), writer))
    }

    /// Connects to the PostgreSQL database at `url` with at most `connections` pooled
    /// connections, brings its schema up to date, and starts following its events (see
    /// `postgres::feed`), so that this node's bus hears of every commit of every node.
    pub async fn connect(
        url: &str,
        connections: usize,
        wakeups: postgres::Wakeups,
    ) -> Result<Store, StoreError> {
        let store = PgStore::connect_with(url, connections, wakeups).await?;
        Ok(Store::Postgres(store))
    }

    /// Takes or extends, for `term`, the leadership of the maintenance that runs once per
    /// database (the rescuer); true if `node` leads now. A SQLite file's server always leads:
    /// rescues of several servers on one file are serialized by its writer lock anyway.
    pub async fn lead(&self, node: &str, term: Duration) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(s) => Ok(s.lead(node, term).await?),
        }
    }

    /// Gives up what [`Store::lead`] took, at shutdown.
    pub async fn resign(&self, node: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(s) => Ok(s.resign(node).await?),
        }
    }

    /// Where this node hears of what has just been committed.
    pub fn bus(&self) -> &Bus {
        match self {
            Store::Sqlite(s) => s.bus(),
            Store::Postgres(s) => s.bus(),
        }
    }

    /// The SQLite file's path, or None on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(s) => Some(s.path()),
            Store::Postgres(_) => None,
        }
    }

    /// The SQLite write-ahead log's size on disk now, in bytes (0 on PostgreSQL, whose log the
    /// server manages).
    pub fn wal_bytes(&self) -> u64 {
        match self {
            Store::Sqlite(s) => s.wal_bytes(),
            Store::Postgres(_) => 0,
        }
    }

    /// Sets the size at which SQLite's write-ahead log stops taking new jobs (see
    /// `store::wal`); nothing on PostgreSQL.
    pub fn set_wal_max(&self, bytes: u64) {
        if let Store::Sqlite(s) = self {
            s.set_wal_max(bytes);
        }
    }

    /// How many jobs are in each status, by status name (every status, 0 for none).
    pub async fn queue_depth(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        both!(self, s => s.queue_depth())
    }

    /// Stores a new job for `admission.tenant` (or finds the one an earlier request of that
    /// tenant with the same idempotency key created) if the queue has room, and returns once it
    /// is durable.
    pub async fn submit(
        &self,
        spec: JobSpec,
        admission: Admission,
    ) -> Result<Submitted, StoreError> {
        match self {
            Store::Sqlite(s) => s.submit(spec, admission).await,
            Store::Postgres(s) => Ok(s.submit(&spec, &admission).await?),
        }
    }

    /// Moves the next queued job to running under a lease held by `owner`.
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        both!(self, s => s.claim(owner, lease))
    }

    /// Extends a lease. False if the job is no longer this attempt's to run (cancelled, or
    /// rescued after the lease ran out): the caller must stop running it.
    pub async fn renew(
        &self,
        id: JobId,
        attempt: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        both!(self, s => s.renew(id, attempt, owner, lease))
    }

    /// Records the end of a run with its terminal event, if the job still runs under this
    /// attempt; false (nothing written) if it does not.
    pub async fn finish(
        &self,
        id: JobId,
        attempt: u32,
        end: Arc<Finish>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.finish(id, attempt, end).await,
            Store::Postgres(s) => Ok(s.finish(id, attempt, &end).await?),
        }
    }

    /// [`Store::finish`], then a claim for `owner`. SQLite does both in one transaction of its
    /// group commit; PostgreSQL in two, since one transaction changing two jobs would take the
    /// figures' rows out of the one order that keeps its writers from deadlocking (see
    /// `postgres`): the claim is made whether or not the finish took.
    pub async fn finish_and_claim(
        &self,
        id: JobId,
        attempt: u32,
        end: Arc<Finish>,
        owner: &str,
        lease: Duration,
    ) -> Result<(bool, Option<ClaimedJob>), StoreError> {
        match self {
            Store::Sqlite(s) => s.finish_and_claim(id, attempt, end, owner, lease).await,
            Store::Postgres(s) => {
                let finished = s.finish(id, attempt, &end).await?;
                Ok((finished, s.claim(owner, lease).await?))
            }
        }
    }

    /// Stores a batch of independent jobs, all or nothing.
    pub async fn submit_batch(
        &self,
        spec: BatchSpec,
        admission: Admission,
    ) -> Result<BatchSubmitted, StoreError> {
        match self {
            Store::Sqlite(s) => s.submit_batch(spec, admission).await,
            Store::Postgres(s) => Ok(s.submit_batch(spec, admission).await?),
        }
    }

    /// Stores a suite and its `count` cases, all or nothing, taking the cases as they come so
    /// that a streamed suite is never held whole.
    pub async fn submit_suite<I>(
        &self,
        suite: SuiteSpec,
        count: usize,
        cases: I,
        admission: Admission,
    ) -> Result<BatchSubmitted, StoreError>
    where
        I: IntoIterator<Item = Result<CaseSpec, StoreError>> + Send + 'static,
        I::IntoIter: Send,
    {
        match self {
            Store::Sqlite(s) => s.submit_suite(suite, count, cases, admission).await,
            Store::Postgres(s) => Ok(s.submit_suite(suite, count, cases, admission).await?),
        }
    }

    pub async fn cancel_batch(&self, id: BatchId) -> Result<BatchCancel, StoreError> {
        both!(self, s => s.cancel_batch(id))
    }

    pub async fn batch(&self, id: BatchId) -> Result<Option<Batch>, StoreError> {
        both!(self, s => s.batch(id))
    }

    /// Whether the batch has completed; None if there is no such batch.
    pub async fn batch_is_done(&self, id: BatchId) -> Result<Option<bool>, StoreError> {
        both!(self, s => s.batch_is_done(id))
    }

    pub async fn batch_events(
        &self,
        id: BatchId,
        after: i64,
        limit: u32,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        both!(self, s => s.batch_events(id, after, limit))
    }

    pub async fn batch_completed_event(
        &self,
        id: BatchId,
    ) -> Result<Option<Option<i64>>, StoreError> {
        both!(self, s => s.batch_completed_event(id))
    }

    pub async fn batch_cases(
        &self,
        id: BatchId,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Option<Vec<Case>>, StoreError> {
        both!(self, s => s.batch_cases(id, after, limit))
    }

    pub async fn batch_groups(
        &self,
        id: BatchId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<Group>>, StoreError> {
        both!(self, s => s.batch_groups(id, after, limit))
    }

    pub async fn batch_report(
        &self,
        id: BatchId,
        excerpt: u32,
    ) -> Result<Option<(Batch, Vec<CaseReport>)>, StoreError> {
        both!(self, s => s.batch_report(id, excerpt))
    }

    /// Hands a running job back to the queue (or ends it, its attempts spent).
    pub async fn release(
        &self,
        id: JobId,
        attempt: u32,
        outcome: Outcome,
        reason: String,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.release(id, attempt, outcome, reason).await,
            Store::Postgres(s) => Ok(s.release(id, attempt, outcome, &reason).await?),
        }
    }

    /// Requeues (or ends) every job whose lease has run out; returns how many.
    pub async fn rescue_expired(&self) -> Result<usize, StoreError> {
        both!(self, s => s.rescue_expired())
    }

    /// Requeues the jobs an earlier instance of this node (`node_prefix`, not `current`) left
    /// running; returns how many.
    pub async fn rescue_node(&self, node_prefix: &str, current: &str) -> Result<usize, StoreError> {
        both!(self, s => s.rescue_node(node_prefix, current))
    }

    pub async fn progress(
        &self,
        id: JobId,
        attempt: u32,
        progress: Progress,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.progress(id, attempt, progress).await,
            Store::Postgres(s) => Ok(s.progress(id, attempt, &progress).await?),
        }
    }

    pub async fn keep_cancelled_run(
        &self,
        id: JobId,
        attempt: u32,
        result: RunResult,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.keep_cancelled_run(id, attempt, result).await,
            Store::Postgres(s) => Ok(s.keep_cancelled_run(id, attempt, &result).await?),
        }
    }

    pub async fn cancel(&self, id: JobId) -> Result<CancelResult, StoreError> {
        both!(self, s => s.cancel(id))
    }

    pub async fn next_webhook_due(&self) -> Result<Option<i64>, StoreError> {
        both!(self, s => s.next_webhook_due())
    }

    pub async fn claim_webhooks(
        &self,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        both!(self, s => s.claim_webhooks(limit, hold))
    }

    pub async fn record_webhook(
        &self,
        delivery: Delivery,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.record_webhook(delivery, attempt).await,
            Store::Postgres(s) => Ok(s.record_webhook(&delivery, &attempt).await?),
        }
    }

    pub async fn setting_or_insert(
        &self,
        name: &'static str,
        initial: String,
    ) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(s) => s.setting_or_insert(name, initial).await,
            Store::Postgres(s) => Ok(s.setting_or_insert(name, &initial).await?),
        }
    }

    /// The SQLite file's pragmas as SQLite reports them back. There are none on PostgreSQL,
    /// where this only checks that the database answers.
    pub async fn pragmas(&self) -> Result<Option<Pragmas>, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(Some(s.pragmas().await?)),
            Store::Postgres(s) => {
                s.schema_version().await?;
                Ok(None)
            }
        }
    }

    /// `sqlite` or `postgres`, for operators' reports.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        both!(self, s => s.job(id))
    }

    pub async fn job_stdin(&self, id: JobId) -> Result<Option<(Status, bool)>, StoreError> {
        both!(self, s => s.job_stdin(id))
    }

    pub async fn job_file(
        &self,
        id: JobId,
        path: String,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.job_file(id, path).await,
            Store::Postgres(s) => Ok(s.job_file(id, &path).await?),
        }
    }

    pub async fn jobs_page(&self, skip: i64, per_page: i64) -> Result<(Vec<Job>, i64), StoreError> {
        both!(self, s => s.jobs_page(skip, per_page))
    }

    pub async fn job_input(&self, id: JobId) -> Result<Option<JobInput>, StoreError> {
        both!(self, s => s.job_input(id))
    }

    pub async fn job_events(
        &self,
        id: JobId,
        after: i64,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        both!(self, s => s.job_events(id, after))
    }

    pub async fn job_status(&self, id: JobId) -> Result<Option<Status>, StoreError> {
        both!(self, s => s.job_status(id))
    }

    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        both!(self, s => s.last_event_id())
    }

    pub async fn events_after(
        &self,
        who: Visibility,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        match self {
            Store::Sqlite(s) => s.events_after(who, after, limit).await,
            Store::Postgres(s) => Ok(s.events_after(&who, after, limit).await?),
        }
    }

    pub async fn events_before(
        &self,
        who: Visibility,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        match self {
            Store::Sqlite(s) => s.events_before(who, before, limit).await,
            Store::Postgres(s) => Ok(s.events_before(&who, before, limit).await?),
        }
    }

    pub async fn counts(&self, who: Visibility) -> Result<Counts, StoreError> {
        both!(self, s => s.counts(who))
    }

    pub async fn series(
        &self,
        who: Visibility,
        from_minute: i64,
        step_minutes: i64,
        steps: i64,
    ) -> Result<Vec<Step>, StoreError> {
        both!(self, s => s.series(who, from_minute, step_minutes, steps))
    }

    pub async fn list_jobs(
        &self,
        who: Visibility,
        filter: JobFilter,
        page: Page,
    ) -> Result<Vec<JobSummary>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_jobs(who, filter, page).await,
            Store::Postgres(s) => Ok(s.list_jobs(&who, &filter, page).await?),
        }
    }

    pub async fn list_batches(
        &self,
        who: Visibility,
        page: Page,
    ) -> Result<Vec<BatchSummary>, StoreError> {
        both!(self, s => s.list_batches(who, page))
    }

    pub async fn job_visible(&self, id: JobId, who: Visibility) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.job_visible(id, who).await,
            Store::Postgres(s) => Ok(s.job_visible(id, &who).await?),
        }
    }

    pub async fn batch_visible(&self, id: BatchId, who: Visibility) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.batch_visible(id, who).await,
            Store::Postgres(s) => Ok(s.batch_visible(id, &who).await?),
        }
    }

    pub async fn create_token(
        &self,
        tenant: String,
        admin: bool,
        hash: String,
        prefix: String,
        secret: String,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_token(tenant, admin, hash, prefix, secret).await,
            Store::Postgres(s) => Ok(s
                .create_token(&tenant, admin, &hash, &prefix, &secret)
                .await?),
        }
    }

    pub async fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        both!(self, s => s.revoke_token(id))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        both!(self, s => s.tokens())
    }

    pub async fn active_tokens(&self) -> Result<(Vec<ActiveToken>, bool), StoreError> {
        both!(self, s => s.active_tokens())
    }

    /// Charges one request to the shared rate of the token whose SHA-256 is `hash_hex`, for
    /// `rate` requests a second and `burst` at once: `Some(0.0)` if it may go ahead, otherwise
    /// `Some(seconds)` until it could. `None` where the database is one server's alone
    /// (SQLite): the server keeps the buckets in memory, where charging costs nothing.
    pub async fn take_token(
        &self,
        hash_hex: &str,
        rate: f64,
        burst: f64,
    ) -> Result<Option<f64>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => Ok(Some(s.take_token(hash_hex, rate, burst).await?)),
        }
    }

    pub async fn tenant_secret(
        &self,
        tenant: String,
        initial: String,
    ) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(s) => s.tenant_secret(tenant, initial).await,
            Store::Postgres(s) => Ok(s.tenant_secret(&tenant, &initial).await?),
        }
    }
}
