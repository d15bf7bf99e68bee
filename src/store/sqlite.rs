//! The SQLite backend of [`super::Store`], the embedded default: one file, one writer thread
//! that commits every state change together with its event (group commit, see `writer`), and a
//! pool of read-only connections for everything else. Each write method returns only after the
//! transaction holding it is durable on disk (`synchronous=FULL`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};

use super::writer::Writer;
use super::{
    ActiveToken, Admission, Attempt, BUSY_TIMEOUT, BatchCancel, BatchSubmitted, BatchSummary,
    CancelResult, ClaimedJob, Counts, Delivery, JobFilter, JobInput, JobSummary, Page, Pragmas,
    Step, StoreError, Submitted, TokenInfo, Visibility, batch, maintenance, migrate, planner, read,
    stats, tenants, wal, webhooks, write,
};
use crate::bus::Bus;
use crate::job::batch::{Batch, BatchSpec, Case, CaseReport, CaseSpec, Group, SuiteSpec};
use crate::job::time::now_ms;
use crate::job::{
    BatchId, Event, Finish, Job, JobId, JobSpec, Outcome, Progress, RunResult, Status,
};

/// Shared handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Sqlite {
    writer: Writer,
    readers: r2d2::Pool<SqliteConnectionManager>,
    bus: Arc<Bus>,
    path: PathBuf,
    wal: PathBuf,
    wal_limit: wal::Limit,
}

/// Owned by whoever opened the store: joining it waits until every write has been committed and
/// the file has been checkpointed.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Blocks until the writer has drained and closed the database. Every [`super::Store`] clone must be
    /// dropped first, or this waits forever.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

impl Sqlite {
    /// Opens (creating if needed) the database, brings its schema up to date and starts the
    /// writer thread. Only the server creates a database: see [`Sqlite::open_existing`].
    pub fn open(path: &Path, readers: u32) -> Result<(Sqlite, WriterThread), StoreError> {
        Sqlite::start(Connection::open(path)?, path, readers)
    }

    /// [`Sqlite::open`] for an operator's command: a database that does not exist is
    /// [`StoreError::Missing`], never a new empty file, which would take a mistyped path (or
    /// the wrong directory) for a server with no tokens and no history.
    pub fn open_existing(path: &Path, readers: u32) -> Result<(Sqlite, WriterThread), StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let flags = OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE;
        Sqlite::start(Connection::open_with_flags(path, flags)?, path, readers)
    }

    fn start(
        mut conn: Connection,
        path: &Path,
        readers: u32,
    ) -> Result<(Sqlite, WriterThread), StoreError> {
        configure_writer(&conn)?;
        migrate::apply(&mut conn)?;
        planner::configure(&conn)?;
        let manager = SqliteConnectionManager::file(path)
            .with_flags(
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .with_init(|c| c.busy_timeout(BUSY_TIMEOUT));
        let readers = r2d2::Pool::builder()
            .max_size(readers.max(1))
            .min_idle(Some(1))
            .build(manager)
            .map_err(|e| StoreError::Pool(Arc::new(e)))?;
        let bus = Arc::new(Bus::default());
        let wal = wal::wal_path(path);
        let wal_limit = wal::Limit::default();
        let checkpointer = wal::Checkpointer::new(wal.clone(), wal_limit.clone());
        let planner = planner::Planner::new(planner::EVERY);
        let (writer, thread) =
            Writer::start(conn, Arc::clone(&bus), Some(checkpointer), Some(planner))
                .map_err(|e| StoreError::Task(format!("cannot start the writer thread: {e}")))?;
        let store = Sqlite {
            writer,
            readers,
            bus,
            path: path.to_path_buf(),
            wal,
            wal_limit,
        };
        Ok((store, WriterThread(thread)))
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write-ahead log's size on disk now, in bytes.
    pub fn wal_bytes(&self) -> u64 {
        wal::size(&self.wal)
    }

    /// Sets the size at which the write-ahead log stops taking new jobs (see `store::wal`).
    pub fn set_wal_max(&self, bytes: u64) {
        self.wal_limit.set(bytes);
    }

    /// Refuses new work while the write-ahead log is at its limit. A pass through the writer
    /// first gives it the chance to truncate the log, should the reader holding it back be gone.
    async fn wal_has_room(&self) -> Result<(), StoreError> {
        let limit = self.wal_limit.get();
        if self.wal_bytes() < limit {
            return Ok(());
        }
        self.writer.write(|_, _| Ok(())).await?;
        match self.wal_bytes() {
            bytes if bytes >= limit => Err(StoreError::WalFull { bytes, limit }),
            _ => Ok(()),
        }
    }

    /// How many jobs are in each status, by status name (every status, 0 for none).
    pub async fn queue_depth(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        self.read(maintenance::queue_depth).await
    }

    /// Stores a new job for `admission.tenant` (or finds the one an earlier request of that
    /// tenant with the same idempotency key created) if the queue has room, and returns once it
    /// is durable.
    pub async fn submit(
        &self,
        spec: JobSpec,
        admission: Admission,
    ) -> Result<Submitted, StoreError> {
        self.wal_has_room().await?;
        self.writer
            .write(move |conn, notices| write::submit(conn, notices, &spec, &admission, now_ms()))
            .await
    }

    /// Moves the next queued job to running under a lease held by `owner`.
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let owner = owner.to_owned();
        self.writer
            .write(move |conn, notices| {
                let now = now_ms();
                write::claim(conn, notices, &owner, now, now + lease_ms(lease))
            })
            .await
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
        let owner = owner.to_owned();
        self.writer
            .write(move |conn, _| {
                write::renew(conn, id, attempt, &owner, now_ms() + lease_ms(lease))
            })
            .await
    }

    /// Records the end of a run, if the job is still running under this attempt. False if it
    /// is not (cancelled or rescued meanwhile); the result is then discarded. A case of a batch
    /// gets its verdict (`judged`, or one that follows from the outcome) in the same
    /// transaction, and so does its batch's completion.
    pub async fn finish(
        &self,
        id: JobId,
        attempt: u32,
        end: Arc<Finish>,
    ) -> Result<bool, StoreError> {
        self.writer
            .write(move |conn, notices| write::finish(conn, notices, id, attempt, &end, now_ms()))
            .await
    }

    /// [`Sqlite::finish`], and in the same transaction the claim of the next queued job for
    /// `owner`, as [`Sqlite::claim`]: a busy worker then waits for one commit per job, not two,
    /// and the writer runs one operation instead of two.
    pub async fn finish_and_claim(
        &self,
        id: JobId,
        attempt: u32,
        end: Arc<Finish>,
        owner: &str,
        lease: Duration,
    ) -> Result<(bool, Option<ClaimedJob>), StoreError> {
        let owner = owner.to_owned();
        self.writer
            .write(move |conn, notices| {
                let now = now_ms();
                let finished = write::finish(conn, notices, id, attempt, &end, now)?;
                let next = write::claim(conn, notices, &owner, now, now + lease_ms(lease))?;
                Ok((finished, next))
            })
            .await
    }

    /// Stores a whole suite, every case with its `job.queued` event and the `batch.queued`
    /// event, in one transaction: all of it or nothing (nothing if it does not fit the limits).
    pub async fn submit_batch(
        &self,
        spec: BatchSpec,
        admission: Admission,
    ) -> Result<BatchSubmitted, StoreError> {
        let count = spec.cases.len();
        self.submit_suite(spec.suite, count, spec.cases.into_iter().map(Ok), admission)
            .await
    }

    /// Stores a suite as [`Sqlite::submit_batch`] does, its `count` cases read one at a time
    /// from `cases` inside the transaction, so that they need not all be in memory at once.
    pub async fn submit_suite<I>(
        &self,
        suite: SuiteSpec,
        count: usize,
        cases: I,
        admission: Admission,
    ) -> Result<BatchSubmitted, StoreError>
    where
        I: IntoIterator<Item = Result<CaseSpec, StoreError>> + Send + 'static,
    {
        self.wal_has_room().await?;
        self.writer
            .write(move |conn, notices| {
                batch::submit(conn, notices, &suite, count, cases, &admission, now_ms())
            })
            .await
    }

    /// Cancels the batch's unfinished cases. Running ones must also be stopped by the caller.
    pub async fn cancel_batch(&self, id: BatchId) -> Result<BatchCancel, StoreError> {
        self.writer
            .write(move |conn, notices| batch::cancel(conn, notices, id, now_ms()))
            .await
    }

    pub async fn batch(&self, id: BatchId) -> Result<Option<Batch>, StoreError> {
        self.read(move |conn| batch::batch(conn, id)).await
    }

    /// Whether every case of the batch has ended; `None` if there is no such batch.
    pub async fn batch_is_done(&self, id: BatchId) -> Result<Option<bool>, StoreError> {
        self.read(move |conn| batch::is_done(conn, id)).await
    }

    /// The batch's events (its own and its cases') with an id greater than `after`, oldest
    /// first, at most `limit`; `None` if there is no such batch.
    pub async fn batch_events(
        &self,
        id: BatchId,
        after: i64,
        limit: u32,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        self.read(move |conn| batch::events(conn, id, after, limit))
            .await
    }

    /// The id of the batch's `batch.completed` event (`None` inside while it has not completed);
    /// `None` if there is no such batch.
    pub async fn batch_completed_event(
        &self,
        id: BatchId,
    ) -> Result<Option<Option<i64>>, StoreError> {
        self.read(move |conn| batch::completed_event(conn, id))
            .await
    }

    /// The batch's cases in suite order after position `after` (all, if `None`).
    pub async fn batch_cases(
        &self,
        id: BatchId,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Option<Vec<Case>>, StoreError> {
        let after = after.map_or(-1, i64::from);
        self.read(move |conn| batch::cases(conn, id, after, limit))
            .await
    }

    /// The batch's groups in name order after `after`, at most `limit`, each with its pass@k;
    /// `None` if there is no such batch.
    pub async fn batch_groups(
        &self,
        id: BatchId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<Group>>, StoreError> {
        self.read(move |conn| batch::groups(conn, id, after.as_deref(), limit))
            .await
    }

    /// The batch and every case, with up to `excerpt` characters of each case's expected
    /// output, stdout and stderr.
    pub async fn batch_report(
        &self,
        id: BatchId,
        excerpt: u32,
    ) -> Result<Option<(Batch, Vec<CaseReport>)>, StoreError> {
        self.read(move |conn| batch::report(conn, id, excerpt))
            .await
    }

    /// Gives a running job back: queued again while attempts remain, else ended as `error`
    /// with `outcome`. Used at shutdown for jobs that did not finish in the grace period.
    pub async fn release(
        &self,
        id: JobId,
        attempt: u32,
        outcome: Outcome,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.writer
            .write(move |conn, notices| {
                let rows = write::running_attempt(conn, id, attempt)?;
                let n = write::requeue_or_end(conn, notices, &rows, outcome, &reason, now_ms())?;
                Ok(n > 0)
            })
            .await
    }

    /// Rescues every running job whose lease has run out. Returns how many were rescued.
    pub async fn rescue_expired(&self) -> Result<usize, StoreError> {
        self.writer
            .write(move |conn, notices| {
                let now = now_ms();
                let rows = write::expired_leases(conn, now)?;
                write::requeue_or_end(
                    conn,
                    notices,
                    &rows,
                    Outcome::LeaseExpired,
                    "the worker running it stopped renewing its lease",
                    now,
                )
            })
            .await
    }

    /// Rescues, without waiting for their leases to run out, the jobs an earlier incarnation of
    /// this server (same node id, another instance) was running when it died.
    pub async fn rescue_node(&self, node_prefix: &str, current: &str) -> Result<usize, StoreError> {
        let (node_prefix, current) = (node_prefix.to_owned(), current.to_owned());
        self.writer
            .write(move |conn, notices| {
                let rows = write::leases_of_node(conn, &node_prefix, &current)?;
                write::requeue_or_end(
                    conn,
                    notices,
                    &rows,
                    Outcome::LeaseExpired,
                    "the server running it stopped before it finished",
                    now_ms(),
                )
            })
            .await
    }

    /// Records how far a running job got, if it still runs under this attempt (false if not).
    pub async fn progress(
        &self,
        id: JobId,
        attempt: u32,
        progress: Progress,
    ) -> Result<bool, StoreError> {
        self.writer
            .write(move |conn, notices| {
                write::progress(conn, notices, id, attempt, &progress, now_ms())
            })
            .await
    }

    /// Adds the output and usage of the run of `attempt` to the job a cancel ended while that
    /// run went on; false if the job was not cancelled during it (see `write::keep_cancelled_run`).
    pub async fn keep_cancelled_run(
        &self,
        id: JobId,
        attempt: u32,
        result: RunResult,
    ) -> Result<bool, StoreError> {
        self.writer
            .write(move |conn, _| write::keep_cancelled_run(conn, id, attempt, &result))
            .await
    }

    /// Cancels a queued or running job. For a running job the caller must also stop the process.
    pub async fn cancel(&self, id: JobId) -> Result<CancelResult, StoreError> {
        self.writer
            .write(move |conn, notices| write::cancel(conn, notices, id, now_ms()))
            .await
    }

    /// When the earliest pending webhook is due, if any is pending.
    pub async fn next_webhook_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(webhooks::next_due).await
    }

    /// Takes up to `limit` due webhooks for delivery; nobody else takes them for `hold`, by
    /// which time this attempt's outcome should be recorded.
    pub async fn claim_webhooks(
        &self,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.writer
            .write(move |conn, _| {
                let now = now_ms();
                webhooks::claim_due(conn, now, now + lease_ms(hold), limit)
            })
            .await
    }

    /// Records an attempt's outcome and its `webhook.*` event. False if that attempt was
    /// already recorded by someone else, in which case nothing is written.
    pub async fn record_webhook(
        &self,
        delivery: Delivery,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        self.writer
            .write(move |conn, notices| {
                webhooks::record(conn, notices, &delivery, &attempt, now_ms())
            })
            .await
    }

    /// The value stored under `name`; stores `initial` first if there is none, so that every
    /// caller, now and after restarts, gets the same value.
    pub async fn setting_or_insert(
        &self,
        name: &'static str,
        initial: String,
    ) -> Result<String, StoreError> {
        self.writer
            .write(move |conn, _| webhooks::setting_or_insert(conn, name, &initial))
            .await
    }

    /// The pragmas in force on the write connection; proves the writer is alive and holds the
    /// write lock when asked.
    pub async fn pragmas(&self) -> Result<Pragmas, StoreError> {
        self.writer.write(|conn, _| read_pragmas(conn)).await
    }

    pub async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(move |conn| read::job(conn, id)).await
    }

    /// Where job `id` is in its life and whether it is interactive (its stdin stays open).
    pub async fn job_stdin(&self, id: JobId) -> Result<Option<(Status, bool)>, StoreError> {
        self.read(move |conn| read::job_stdin(conn, id)).await
    }

    /// A file job `id` kept from its run, at `path`: its content type and bytes.
    pub async fn job_file(
        &self,
        id: JobId,
        path: String,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.read(move |conn| read::job_file(conn, id, &path)).await
    }

    /// Every tenant's jobs by page, newest first: `per_page` of them after the newest `skip`,
    /// and how many there are in all.
    pub async fn jobs_page(&self, skip: i64, per_page: i64) -> Result<(Vec<Job>, i64), StoreError> {
        self.read(move |conn| read::jobs_page(conn, skip, per_page))
            .await
    }

    /// What the job was given to run; `None` if there is no such job.
    pub async fn job_input(&self, id: JobId) -> Result<Option<JobInput>, StoreError> {
        self.read(move |conn| read::job_input(conn, id)).await
    }

    /// The job's events with an id greater than `after`, oldest first; `None` if there is no
    /// such job.
    pub async fn job_events(
        &self,
        id: JobId,
        after: i64,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        self.read(move |conn| read::job_events(conn, id, after))
            .await
    }

    /// The job's status alone; `None` if there is no such job.
    pub async fn job_status(&self, id: JobId) -> Result<Option<Status>, StoreError> {
        self.read(move |conn| read::job_status(conn, id)).await
    }

    /// The newest event's id (0 if there is none): where following the feed live begins.
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        self.read(read::last_event_id).await
    }

    /// The feed: the events `who` may see with an id greater than `after`, oldest first.
    pub async fn events_after(
        &self,
        who: Visibility,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(move |conn| read::events_after(conn, &who, after, limit))
            .await
    }

    /// The feed newest first, before event `before` (`None`: from the newest).
    pub async fn events_before(
        &self,
        who: Visibility,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(move |conn| read::events_before(conn, &who, before, limit))
            .await
    }

    /// Jobs by status now and the oldest queued job, for `who`.
    pub async fn counts(&self, who: Visibility) -> Result<Counts, StoreError> {
        self.read(move |conn| stats::counts(conn, &who)).await
    }

    /// `steps` steps of `step_minutes` minutes from minute `from_minute` (minutes since the
    /// epoch): the jobs of `who` that ended in each, by outcome, and their latencies.
    pub async fn series(
        &self,
        who: Visibility,
        from_minute: i64,
        step_minutes: i64,
        steps: i64,
    ) -> Result<Vec<Step>, StoreError> {
        self.read(move |conn| stats::series(conn, &who, from_minute, step_minutes, steps))
            .await
    }

    pub async fn list_jobs(
        &self,
        who: Visibility,
        filter: JobFilter,
        page: Page,
    ) -> Result<Vec<JobSummary>, StoreError> {
        self.read(move |conn| read::list_jobs(conn, &who, &filter, page))
            .await
    }

    /// Batches `who` may see, a page at a time.
    pub async fn list_batches(
        &self,
        who: Visibility,
        page: Page,
    ) -> Result<Vec<BatchSummary>, StoreError> {
        self.read(move |conn| batch::list(conn, &who, page)).await
    }

    /// True if the job exists and `who` may see it. A row's tenant never changes, so the
    /// answer holds for as long as the job exists.
    pub async fn job_visible(&self, id: JobId, who: Visibility) -> Result<bool, StoreError> {
        self.read(move |conn| tenants::job_visible(conn, &id.to_string(), &who))
            .await
    }

    /// True if the batch exists and `who` may see it.
    pub async fn batch_visible(&self, id: BatchId, who: Visibility) -> Result<bool, StoreError> {
        self.read(move |conn| tenants::batch_visible(conn, &id.to_string(), &who))
            .await
    }

    /// Stores a token's hash for `tenant`, and the tenant with `secret` as its webhook signing
    /// key if it is new; returns the token's id.
    pub async fn create_token(
        &self,
        tenant: String,
        admin: bool,
        hash: String,
        prefix: String,
        secret: String,
    ) -> Result<i64, StoreError> {
        self.writer
            .write(move |conn, _| {
                tenants::create_token(conn, &tenant, admin, &hash, &prefix, &secret, now_ms())
            })
            .await
    }

    /// Revokes a token; false if there is no such token or it was revoked already.
    pub async fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        self.writer
            .write(move |conn, _| tenants::revoke_token(conn, id, now_ms()))
            .await
    }

    /// Every token ever made, revoked ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.read(tenants::tokens).await
    }

    /// The tokens that may be used, and whether any token was ever made.
    pub async fn active_tokens(&self) -> Result<(Vec<ActiveToken>, bool), StoreError> {
        self.read(tenants::active_tokens).await
    }

    /// The tenant's webhook signing key; stores `initial` first if it has none.
    pub async fn tenant_secret(
        &self,
        tenant: String,
        initial: String,
    ) -> Result<String, StoreError> {
        self.writer
            .write(move |conn, _| tenants::tenant_secret(conn, &tenant, &initial, now_ms()))
            .await
    }

    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(|e| StoreError::Pool(Arc::new(e)))?;
            query(&conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Sets the pragmas kiln relies on and checks that SQLite took them: a misspelt pragma is
/// silently ignored, so each one is read back.
fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every operation in a group commit runs in its own savepoint, whose undo pages SQLite keeps
    // in a statement journal. On disk (the default) that journal spilled past 64 KiB into a temp
    // file, and writing it was a quarter of the writer's time; one operation's pages fit in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let temp_store: i64 = conn.pragma_query_value(None, "temp_store", |r| r.get(0))?;
    let found = read_pragmas(conn)?;
    let expect = |pragma, ok: bool, found: String, expected| {
        if ok {
            Ok(())
        } else {
            Err(StoreError::Pragma {
                pragma,
                found,
                expected,
            })
        }
    };
    expect(
        "journal_mode",
        mode.eq_ignore_ascii_case("wal"),
        mode,
        "wal",
    )?;
    expect(
        "synchronous",
        found.synchronous == 2,
        found.synchronous.to_string(),
        "2 (FULL)",
    )?;
    expect(
        "foreign_keys",
        found.foreign_keys,
        found.foreign_keys.to_string(),
        "true",
    )?;
    expect(
        "temp_store",
        temp_store == 2,
        temp_store.to_string(),
        "2 (MEMORY)",
    )
}

fn read_pragmas(conn: &Connection) -> Result<Pragmas, StoreError> {
    let get_i64 = |name: &str| conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
    Ok(Pragmas {
        journal_mode: conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
        synchronous: get_i64("synchronous")?,
        foreign_keys: get_i64("foreign_keys")? == 1,
        busy_timeout_ms: get_i64("busy_timeout")?,
        user_version: conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
    })
}
