//! The store on PostgreSQL, for deployments past one machine (issue 20): many `kiln serve`
//! nodes on one database, one of the two backends of [`super::Store`]. It connects, brings the
//! schema of `schema/postgres/` up to date, and does a job's life (submit with admission and idempotency, claim, lease renewal, finish,
//! release, rescue, cancel, progress, read back), suites (a batch and its cases stored in one
//! transaction, each case judged and counted into its batch as it ends, the batch completed by
//! its last case, cancelled whole, read back with its groups and pass@k), the event feed, the
//! job listing, the webhook outbox, the figures of `GET /v1/stats` (`stats`), retention
//! (`prune`: `kiln prune` and its preview), and tokens, tenants and settings with the same
//! domain types, the same method signatures and the same events as the SQLite store; and the
//! copy of a SQLite file's whole history into an empty database (`import`: `kiln migrate-to`).
//!
//! Why it differs from the SQLite store in shape: PostgreSQL takes concurrent writers, so there
//! is no single writer thread and no group commit; each operation is one short transaction on a
//! pooled connection ([`deadpool_postgres`] over [`tokio_postgres`]), durable when its commit
//! returns (every connection runs with `synchronous_commit=on`, whatever the server's default).
//! Concurrent claimers take different jobs (`FOR NO KEY UPDATE SKIP LOCKED`), events are
//! committed in id order (the `events_in_commit_order` trigger of
//! `schema/postgres/0001_init.sql`), so a reader following the history by id never skips one
//! that committed late, and every transaction takes its locks in one order (see `write`), so
//! that writers on many nodes never deadlock: a suite's cases ending on several nodes at once
//! complete it exactly once.
//!
//! Every connection, pooled or not, goes through the one TLS connector that `tls` builds from
//! the URL's `sslmode` and `sslrootcert`.
//!
//! The pool is for queries only: a pooled connection is driven by the pool, which discards
//! notifications, so the `feed` that tells this node's bus of every node's commits listens on
//! a connection of its own.
//!
//! Not here yet (the next phases of issue 20): `kiln prune` running on it (the command takes a
//! SQLite file; what it would call is here). Nor SQLite's `finish_and_claim`: one transaction
//! changing two jobs' statuses would lock the stats rows of `schema/postgres/0002_stats.sql` in
//! two statements, out of the one order that keeps writers from deadlocking, and would write
//! its first event before its second job's row lock.

mod batch;
mod feed;
mod import;
mod migrate;
mod prune;
mod read;
mod stats;
mod tenants;
mod tls;
mod webhooks;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    ActiveToken, Admission, Attempt, BatchCancel, BatchSubmitted, BatchSummary, CancelResult,
    ClaimedJob, Counts, Delivery, JobFilter, JobInput, JobSummary, Page, PruneOptions,
    PrunePreview, PruneReport, Step, StoreError, Submitted, TokenInfo, Unavailable, Visibility,
};
use crate::bus::Bus;
use crate::job::batch::{Batch, BatchSpec, Case, CaseReport, CaseSpec, Group, SuiteSpec};
use crate::job::time::now_ms;
use crate::job::{
    BatchId, Event, EventKind, Finish, Job, JobId, JobSpec, Outcome, Progress, RunResult, Status,
};
use crate::metrics::METRICS;
use tls::Tls;
use write::Running;

pub use feed::Wakeups;
pub use import::{ImportProgress, Imported, TableImported, import_sqlite};
pub use migrate::MIGRATIONS;

/// How long opening a connection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an operation waits for a free pooled connection before failing, as the SQLite
/// store's read pool does (r2d2's default).
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How many of a suite's cases are read ahead of the statement storing them.
const CASES_AHEAD: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PgError {
    #[error("database error: {}", said(.0))]
    Db(Arc<tokio_postgres::Error>),
    #[error("no database connection available: {}", tls::with_causes(.0.as_ref()))]
    Pool(Arc<deadpool_postgres::PoolError>),
    #[error("the database URL is not one kiln can use: {0}")]
    Url(String),
    /// The URL's TLS settings cannot be put to use: its root certificates cannot be read.
    #[error("TLS to the database: {0}")]
    Tls(String),
    #[error("cannot set up the connection pool: {0}")]
    Setup(String),
    #[error("migration {version} ({name}) failed: {}", said(source))]
    Migration {
        version: u32,
        name: &'static str,
        source: Arc<tokio_postgres::Error>,
    },
    #[error("the database is at schema version {found}, newer than this kiln knows ({known})")]
    TooNew { found: u32, known: u32 },
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
    #[error("cannot archive to {}: {reason}", path.display())]
    Archive { path: PathBuf, reason: String },
    /// A suite's cases could not be stored as given: one could not be read, or they were not
    /// as many as the suite said. Nothing of the suite was stored.
    #[error("the suite cannot be stored: {0}")]
    Suite(String),
    /// `kiln migrate-to` found kiln's rows in the database it was to copy into: ids are kept,
    /// so they would collide. Nothing was written.
    #[error(
        "the PostgreSQL database already holds kiln rows (in {}): kiln migrate-to copies only \
         into a database without any, and copied nothing; give it a new database \
         (createdb), or drop this one's kiln tables",
        tables.join(", ")
    )]
    NotEmpty { tables: Vec<String> },
    /// A table could not be copied from SQLite; the copy's transaction was rolled back.
    #[error("cannot copy table {table}: {reason}; nothing was copied")]
    Copy { table: String, reason: String },
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        // A connection the server refused is the server's error, in its words ("database
        // \"kiln\" does not exist"), not the pool's ("error occurred while creating a new
        // object").
        if let deadpool_postgres::PoolError::Backend(e) = e {
            return PgError::Db(Arc::new(e));
        }
        PgError::Pool(Arc::new(e))
    }
}

impl PgError {
    /// What keeps the database from taking the request, if it is something that passes: the
    /// server out of reach or restarting, out of connections, disk or memory, or a transaction
    /// that lost a serialization or deadlock check.
    pub fn unavailable(&self) -> Option<Unavailable> {
        match self {
            PgError::Pool(_) => Some(Unavailable::Pool),
            PgError::Db(e) if e.is_closed() => Some(Unavailable::Io),
            PgError::Db(e) => match e.code().map(|c| c.code()) {
                // Connection exceptions, and the server shutting down or starting.
                Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                    Some(Unavailable::Io)
                }
                Some("53100") => Some(Unavailable::DiskFull),
                // Other insufficient resources: connections, memory.
                Some(code) if code.starts_with("53") => Some(Unavailable::Pool),
                Some("40001" | "40P01" | "55P03") => Some(Unavailable::Busy),
                Some("25006") => Some(Unavailable::ReadOnly),
                // No SQLSTATE: the socket failed (refused, reset) rather than the server.
                None => Some(Unavailable::Io),
                Some(_) => None,
            },
            _ => None,
        }
    }

    /// The SQLSTATE the server answered with, if the error came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Db(e) => e.code().map(|c| c.code()),
            PgError::Migration { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// What the server (or the connection) said: tokio-postgres shows an error the server sent
/// as only "db error", with the server's words in its source; any other error (a TLS
/// handshake refused, a connection reset) is told with its chain of causes.
fn said(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => tls::with_causes(e),
    }
}

/// A pool of at most `connections` to `url`, each connection set up as kiln needs it, and the
/// configuration and TLS connector it connects with (see `tls`). Nothing is connected yet.
fn pool(url: &str, connections: usize) -> Result<(Pool, tokio_postgres::Config, Tls), PgError> {
    let (mut config, settings) = tls::parse(url, |name| std::env::var(name).ok())?;
    let tls = Tls::new(&settings)?;
    // A 202 promises the job is on disk: kiln's commits wait for the WAL flush even where
    // the server's default lets them return earlier.
    let options = match config.get_options() {
        Some(given) => format!("{given} -c synchronous_commit=on"),
        None => "-c synchronous_commit=on".to_owned(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("kiln");
    }
    // Without one, a server that does not answer holds a connect for minutes of TCP retries.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(connections.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| PgError::Setup(e.to_string()))?;
    Ok((pool, config, tls))
}

/// What one snapshot of the database holds, as a backup of it reports.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotFigures {
    pub jobs: i64,
    pub events: i64,
    pub schema_version: u32,
}

/// What `kiln doctor` reads of a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgHealth {
    /// The server's version, as `SHOW server_version` says it.
    pub server_version: String,
    /// The newest migration applied (0: kiln has not been here yet), and the newest this kiln
    /// knows.
    pub schema_version: u32,
    pub known_version: u32,
    pub max_connections: i64,
    /// Connections open to the server now, kiln's and everyone else's.
    pub connections: i64,
    /// The node leading the maintenance and for how many more milliseconds, if one does.
    pub leader: Option<(String, i64)>,
    /// Whether the server waits for the WAL flush before a commit returns by default; kiln
    /// asks for it on its own connections either way.
    pub synchronous_commit: String,
}

/// Reads what `kiln doctor` reports of the database at `url`, changing nothing: unlike
/// [`PgStore::connect`], it applies no migration, so it may look at a database kiln has not
/// used yet, or one a newer kiln has.
pub async fn inspect(url: &str) -> Result<PgHealth, PgError> {
    let (pool, _, _) = pool(url, 1)?;
    let client = pool.get().await?;
    let settings = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('max_connections')::bigint,
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
                    current_setting('synchronous_commit')",
            &[],
        )
        .await?;
    let schema_version = migrate::current(&client).await?;
    // The leader table comes with migration 5.
    let leader = match schema_version >= 5 {
        true => client
            .query_opt(
                "SELECT node, expires_at - (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 FROM leader WHERE name = 'maintenance'",
                &[],
            )
            .await?
            .map(|row| Ok::<_, PgError>((row.try_get(0)?, row.try_get(1)?)))
            .transpose()?,
        false => None,
    };
    Ok(PgHealth {
        server_version: settings.try_get(0)?,
        schema_version,
        known_version: migrate::MIGRATIONS.len() as u32,
        max_connections: settings.try_get(1)?,
        connections: settings.try_get(2)?,
        leader,
        synchronous_commit: settings.try_get::<_, String>(3)?,
    })
}

/// Shared handle to a PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    bus: Arc<Bus>,
    /// Stops the feed once the last handle is dropped.
    _feed: Arc<DropGuard>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of at most `connections`,
    /// and brings the schema up to date. Several nodes may connect at once: the migrations are
    /// applied by one of them, the others wait for it and find nothing left to do.
    pub async fn connect(url: &str, connections: usize) -> Result<PgStore, PgError> {
        let wakeups = Wakeups::Notify {
            poll: Duration::from_secs(1),
        };
        PgStore::connect_with(url, connections, wakeups).await
    }

    /// [`PgStore::connect`], hearing of other nodes' commits as `wakeups` says.
    pub async fn connect_with(
        url: &str,
        connections: usize,
        wakeups: Wakeups,
    ) -> Result<PgStore, PgError> {
        let (pool, config, tls) = pool(url, connections)?;
        let mut client = pool.get().await?;
        migrate::apply(&mut client).await?;
        let bus = Arc::new(Bus::default());
        let stop = CancellationToken::new();
        feed::start(&bus, pool.clone(), (config, tls), wakeups, stop.clone());
        Ok(PgStore {
            pool,
            bus,
            _feed: Arc::new(stop.drop_guard()),
        })
    }

    /// Takes or extends the maintenance leadership for `node` for `term`; true if `node` leads
    /// now (see `schema/postgres/0005_leader.sql`).
    pub async fn lead(&self, node: &str, term: Duration) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        let term = lease_ms(term);
        let led = client
            .query_opt(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
                 INSERT INTO leader (name, node, elected_at, expires_at)
                 SELECT 'maintenance', $1, ms, ms + $2 FROM now
                 ON CONFLICT (name) DO UPDATE SET
                     node = excluded.node,
                     elected_at = CASE WHEN leader.node = excluded.node
                                       THEN leader.elected_at ELSE excluded.elected_at END,
                     expires_at = excluded.expires_at
                 WHERE leader.node = excluded.node OR leader.expires_at < excluded.elected_at
                 RETURNING node",
                &[&node, &term],
            )
            .await?;
        Ok(led.is_some())
    }

    /// Gives up the leadership if `node` holds it, so that another node takes over at once.
    pub async fn resign(&self, node: &str) -> Result<(), PgError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM leader WHERE node = $1", &[&node])
            .await?;
        Ok(())
    }

    /// Where this node hears of every node's commits (see its `feed` module).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The version of the newest migration applied.
    pub async fn schema_version(&self) -> Result<u32, PgError> {
        let client = self.pool.get().await?;
        migrate::current(&client).await
    }

    /// Stores a new job for `admission.tenant` with its `job.queued` event (or finds the one an
    /// earlier request of that tenant with the same idempotency key created) if the queue has
    /// room, and returns once it is committed.
    pub async fn submit(
        &self,
        spec: &JobSpec,
        admission: &Admission,
    ) -> Result<Submitted, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let submitted = write::submit(&tx, spec, admission, now_ms()).await?;
            tx.commit().await?;
            Ok(submitted)
        })
        .await
    }

    /// Moves the next queued job (highest priority, then oldest) to running under a lease held
    /// by `owner`, with its `job.started` event; a case comes with its suite's code and files
    /// and how to judge it. Claimers on any number of nodes never take the same job, and none
    /// waits for another's claim.
    pub async fn claim(&self, owner: &str, lease: Duration) -> Result<Option<ClaimedJob>, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let now = now_ms();
            let lease_until = now.saturating_add(lease_ms(lease));
            let claimed = write::claim(&tx, owner, now, lease_until).await?;
            tx.commit().await?;
            Ok(claimed)
        })
        .await
    }

    /// Records the end of a run with its terminal event (and the webhook it asked for), if the
    /// job is still running under this attempt. False if it is not (cancelled or rescued
    /// meanwhile): nothing is written. A case of a batch gets its verdict (`judged`, or one
    /// that follows from the outcome) in the same transaction, and so does its batch's
    /// completion if it was the last case.
    pub async fn finish(&self, id: JobId, attempt: u32, end: &Finish) -> Result<bool, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let finished = write::finish(&tx, id, attempt, end, now_ms()).await?;
            tx.commit().await?;
            Ok(finished)
        })
        .await
    }

    /// Stores a whole suite, every case with its `job.queued` event and the `batch.queued`
    /// event, in one transaction: all of it or nothing (nothing if it does not fit the limits).
    pub async fn submit_batch(
        &self,
        spec: BatchSpec,
        admission: Admission,
    ) -> Result<BatchSubmitted, PgError> {
        let count = spec.cases.len();
        self.submit_suite(spec.suite, count, spec.cases.into_iter().map(Ok), admission)
            .await
    }

    /// Stores a suite as [`PgStore::submit_batch`] does, its `count` cases read one at a time
    /// from `cases` inside the transaction, so that they need not all be in memory at once.
    pub async fn submit_suite<I>(
        &self,
        suite: SuiteSpec,
        count: usize,
        cases: I,
        admission: Admission,
    ) -> Result<BatchSubmitted, PgError>
    where
        I: IntoIterator<Item = Result<CaseSpec, StoreError>> + Send + 'static,
    {
        counted(async {
            // The cases may be read from a file (a suite sent as a stream waits in a spool), which
            // must not block the runtime: a blocking thread reads them, a few ahead of the inserts.
            // Should the write end first, the reader's next send fails and it stops.
            let (ahead, cases_read) = tokio::sync::mpsc::channel(CASES_AHEAD);
            tokio::task::spawn_blocking(move || {
                for case in cases {
                    if ahead.blocking_send(case).is_err() {
                        return;
                    }
                }
            });
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let submitted =
                batch::submit(&tx, &suite, count, cases_read, &admission, now_ms()).await?;
            tx.commit().await?;
            Ok(submitted)
        })
        .await
    }

    /// Cancels the batch's unfinished cases, which completes it. Running ones must also be
    /// stopped by the caller, wherever they run.
    pub async fn cancel_batch(&self, id: BatchId) -> Result<BatchCancel, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let cancelled = batch::cancel(&tx, id, now_ms()).await?;
            tx.commit().await?;
            Ok(cancelled)
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
    ) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        let lease_until = now_ms().saturating_add(lease_ms(lease));
        write::renew(&client, id, attempt, owner, lease_until).await
    }

    /// Records how far a running job got, if it still runs under this attempt (false if not).
    pub async fn progress(
        &self,
        id: JobId,
        attempt: u32,
        progress: &Progress,
    ) -> Result<bool, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let recorded = write::progress(&tx, id, attempt, progress, now_ms()).await?;
            tx.commit().await?;
            Ok(recorded)
        })
        .await
    }

    /// Gives a running job back: queued again while attempts remain, else ended as `error`
    /// with `outcome`. For jobs that did not finish in the grace period of a shutdown.
    pub async fn release(
        &self,
        id: JobId,
        attempt: u32,
        outcome: Outcome,
        reason: &str,
    ) -> Result<bool, PgError> {
        let which = Running::Attempt(id, attempt);
        Ok(self.requeue_or_end(which, outcome, reason).await? > 0)
    }

    /// Rescues every running job whose lease has run out, whichever node ran it: retried
    /// while attempts remain, else ended as `error` (`lease_expired`). Returns how many.
    /// Rescuers on several nodes at once take each job once.
    pub async fn rescue_expired(&self) -> Result<usize, PgError> {
        let which = Running::ExpiredBefore(now_ms());
        let reason = "the worker running it stopped renewing its lease";
        self.requeue_or_end(which, Outcome::LeaseExpired, reason)
            .await
    }

    /// Rescues, without waiting for their leases to run out, the jobs an earlier instance of
    /// this node (lease owners starting with `node_prefix`, but not `current`) was running
    /// when it died.
    pub async fn rescue_node(&self, node_prefix: &str, current: &str) -> Result<usize, PgError> {
        let which = Running::OfNode(node_prefix, current);
        let reason = "the server running it stopped before it finished";
        self.requeue_or_end(which, Outcome::LeaseExpired, reason)
            .await
    }

    async fn requeue_or_end(
        &self,
        which: Running<'_>,
        outcome: Outcome,
        reason: &str,
    ) -> Result<usize, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let n = write::requeue_or_end(&tx, which, outcome, reason, now_ms()).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    /// Cancels a queued or running job. For a running job the caller must also stop the
    /// process, wherever it runs.
    pub async fn cancel(&self, id: JobId) -> Result<CancelResult, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let cancelled = write::cancel(&tx, id, now_ms()).await?;
            tx.commit().await?;
            Ok(cancelled)
        })
        .await
    }

    /// Adds the output and usage of the run of `attempt` to the job a cancel ended while that
    /// run went on; false if the job was not cancelled during it.
    pub async fn keep_cancelled_run(
        &self,
        id: JobId,
        attempt: u32,
        result: &RunResult,
    ) -> Result<bool, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let kept = write::keep_cancelled_run(&tx, id, attempt, result).await?;
            tx.commit().await?;
            Ok(kept)
        })
        .await
    }

    /// When the earliest pending webhook is due, if any is pending.
    pub async fn next_webhook_due(&self) -> Result<Option<i64>, PgError> {
        let client = self.pool.get().await?;
        webhooks::next_due(&client).await
    }

    /// Takes up to `limit` due webhooks for delivery; nobody else, on any node, takes them for
    /// `hold`, by which time this attempt's outcome should be recorded.
    pub async fn claim_webhooks(
        &self,
        limit: usize,
        hold: Duration,
    ) -> Result<Vec<Delivery>, PgError> {
        let client = self.pool.get().await?;
        let now = now_ms();
        webhooks::claim_due(&client, now, now.saturating_add(lease_ms(hold)), limit).await
    }

    /// Records an attempt's outcome and its `webhook.*` event. False if that attempt was
    /// already recorded by someone else, in which case nothing is written.
    pub async fn record_webhook(
        &self,
        delivery: &Delivery,
        attempt: &Attempt,
    ) -> Result<bool, PgError> {
        counted(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let recorded = webhooks::record(&tx, delivery, attempt, now_ms()).await?;
            tx.commit().await?;
            Ok(recorded)
        })
        .await
    }

    /// The value stored under `name`; stores `initial` first if there is none, so that every
    /// caller on every node, now and after restarts, gets the same value.
    pub async fn setting_or_insert(&self, name: &str, initial: &str) -> Result<String, PgError> {
        let client = self.pool.get().await?;
        tenants::setting_or_insert(&client, name, initial).await
    }

    /// Stores a token's hash for `tenant`, and the tenant with `secret` as its webhook signing
    /// key if it is new; returns the token's id.
    pub async fn create_token(
        &self,
        tenant: &str,
        admin: bool,
        hash: &str,
        prefix: &str,
        secret: &str,
    ) -> Result<i64, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = tenants::create_token(&tx, tenant, admin, hash, prefix, secret, now_ms()).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Revokes a token; false if there is no such token or it was revoked already.
    pub async fn revoke_token(&self, id: i64) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        tenants::revoke_token(&client, id, now_ms()).await
    }

    /// Every token ever made, revoked ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, PgError> {
        let client = self.pool.get().await?;
        tenants::tokens(&client).await
    }

    /// The tokens that may be used, and whether any token was ever made.
    pub async fn active_tokens(&self) -> Result<(Vec<ActiveToken>, bool), PgError> {
        let client = self.pool.get().await?;
        tenants::active_tokens(&client).await
    }

    /// Charges one request to a token's shared bucket (`schema/postgres/0006_rates.sql`): 0 if
    /// it may go ahead, otherwise the seconds until it could.
    pub async fn take_token(&self, hash_hex: &str, rate: f64, burst: f64) -> Result<f64, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT kiln_take_token($1, $2, $3)",
                &[&hash_hex, &rate, &burst],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The tenant's webhook signing key; stores `initial` first if it has none.
    pub async fn tenant_secret(&self, tenant: &str, initial: &str) -> Result<String, PgError> {
        let client = self.pool.get().await?;
        tenants::tenant_secret(&client, tenant, initial, now_ms()).await
    }

    /// True if the job exists and `who` may see it.
    pub async fn job_visible(&self, id: JobId, who: &Visibility) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        tenants::job_visible(&client, id, who).await
    }

    /// True if the batch exists and `who` may see it.
    pub async fn batch_visible(&self, id: BatchId, who: &Visibility) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        tenants::batch_visible(&client, id, who).await
    }

    pub async fn job(&self, id: JobId) -> Result<Option<Job>, PgError> {
        let client = self.pool.get().await?;
        read::job(&client, id).await
    }

    /// The job's status alone; `None` if there is no such job.
    pub async fn job_status(&self, id: JobId) -> Result<Option<Status>, PgError> {
        let client = self.pool.get().await?;
        read::job_status(&client, id).await
    }

    /// Where job `id` is in its life and whether it is interactive (its stdin stays open).
    pub async fn job_stdin(&self, id: JobId) -> Result<Option<(Status, bool)>, PgError> {
        let client = self.pool.get().await?;
        read::job_stdin(&client, id).await
    }

    /// A file job `id` kept from its run, at `path`: its content type and bytes.
    pub async fn job_file(
        &self,
        id: JobId,
        path: &str,
    ) -> Result<Option<(String, Vec<u8>)>, PgError> {
        let client = self.pool.get().await?;
        read::job_file(&client, id, path).await
    }

    /// What the job was given to run; `None` if there is no such job.
    pub async fn job_input(&self, id: JobId) -> Result<Option<JobInput>, PgError> {
        let client = self.pool.get().await?;
        read::job_input(&client, id).await
    }

    /// Every tenant's jobs by page, newest first: `per_page` of them after the newest `skip`,
    /// and how many there are in all.
    pub async fn jobs_page(&self, skip: i64, per_page: i64) -> Result<(Vec<Job>, i64), PgError> {
        let client = self.pool.get().await?;
        read::jobs_page(&client, skip, per_page).await
    }

    /// How many jobs are in each status, by status name (every status, 0 for none).
    pub async fn queue_depth(&self) -> Result<BTreeMap<String, i64>, PgError> {
        let client = self.pool.get().await?;
        read::queue_depth(&client).await
    }

    pub async fn batch(&self, id: BatchId) -> Result<Option<Batch>, PgError> {
        let client = self.pool.get().await?;
        batch::batch(&client, id).await
    }

    /// Whether every case of the batch has ended; `None` if there is no such batch.
    pub async fn batch_is_done(&self, id: BatchId) -> Result<Option<bool>, PgError> {
        let client = self.pool.get().await?;
        batch::is_done(&client, id).await
    }

    /// The batch's events (its own and its cases') with an id greater than `after`, oldest
    /// first, at most `limit`; `None` if there is no such batch.
    pub async fn batch_events(
        &self,
        id: BatchId,
        after: i64,
        limit: u32,
    ) -> Result<Option<Vec<Event>>, PgError> {
        let client = self.pool.get().await?;
        batch::events(&client, id, after, limit).await
    }

    /// The id of the batch's `batch.completed` event (`None` inside while it has not
    /// completed); `None` if there is no such batch.
    pub async fn batch_completed_event(&self, id: BatchId) -> Result<Option<Option<i64>>, PgError> {
        let client = self.pool.get().await?;
        batch::completed_event(&client, id).await
    }

    /// The batch's cases in suite order after position `after` (all, if `None`).
    pub async fn batch_cases(
        &self,
        id: BatchId,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Option<Vec<Case>>, PgError> {
        let client = self.pool.get().await?;
        batch::cases(&client, id, after.map_or(-1, i64::from), limit).await
    }

    /// The batch's groups in name order after `after`, at most `limit`, each with its
    /// pass@k; `None` if there is no such batch.
    pub async fn batch_groups(
        &self,
        id: BatchId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<Group>>, PgError> {
        let client = self.pool.get().await?;
        batch::groups(&client, id, after.as_deref(), limit).await
    }

    /// The batch and every case, with up to `excerpt` characters of each case's expected
    /// output, stdout and stderr.
    pub async fn batch_report(
        &self,
        id: BatchId,
        excerpt: u32,
    ) -> Result<Option<(Batch, Vec<CaseReport>)>, PgError> {
        let client = self.pool.get().await?;
        batch::report(&client, id, excerpt).await
    }

    /// Batches `who` may see, a page at a time.
    pub async fn list_batches(
        &self,
        who: Visibility,
        page: Page,
    ) -> Result<Vec<BatchSummary>, PgError> {
        let client = self.pool.get().await?;
        batch::list(&client, &who, page).await
    }

    /// The job's events with an id greater than `after`, oldest first; `None` if there is no
    /// such job.
    pub async fn job_events(&self, id: JobId, after: i64) -> Result<Option<Vec<Event>>, PgError> {
        let client = self.pool.get().await?;
        read::job_events(&client, id, after).await
    }

    /// A page of the jobs `who` may see that pass every filter given, in the page's order
    /// after its cursor.
    pub async fn list_jobs(
        &self,
        who: &Visibility,
        filter: &JobFilter,
        page: Page,
    ) -> Result<Vec<JobSummary>, PgError> {
        let client = self.pool.get().await?;
        read::list_jobs(&client, who, filter, page).await
    }

    /// Removes old finished jobs and batches with their events, webhook calls and kept files,
    /// as SQLite's `store::prune` does (and, given `options.archive`, copies them to that
    /// SQLite file first), in chunks of `options.chunk`, each its own transaction: safe while
    /// nodes keep submitting, running and ending jobs, none of which it ever removes before it
    /// has ended. It holds one of the pool's connections for the whole run. The report's times
    /// are how long each transaction was open, holding its rows.
    pub async fn prune(&self, options: &PruneOptions) -> Result<PruneReport, PgError> {
        let mut client = self.pool.get().await?;
        prune::prune(&mut client, options).await
    }

    /// What [`PgStore::prune`] with cut-off `finished_before` would remove, and the finished
    /// jobs it would keep, counted in one read without removing anything.
    pub async fn prune_preview(&self, finished_before: i64) -> Result<PrunePreview, PgError> {
        let client = self.pool.get().await?;
        prune::preview(&client, finished_before).await
    }

    /// Holds one snapshot of the database open (a read-only `REPEATABLE READ` transaction)
    /// while `use_it` runs with the snapshot's exported name, which `pg_dump --snapshot` takes
    /// to dump exactly it, and reads from the same snapshot what a backup reports of it.
    pub async fn with_snapshot<T, F>(
        &self,
        use_it: impl FnOnce(String) -> F,
    ) -> Result<(T, SnapshotFigures), PgError>
    where
        F: Future<Output = T>,
    {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let name: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .await?
            .try_get(0)?;
        let figures = tx
            .query_one(
                "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM events)",
                &[],
            )
            .await?;
        let figures = SnapshotFigures {
            jobs: figures.try_get(0)?,
            events: figures.try_get(1)?,
            schema_version: migrate::current(&tx).await?,
        };
        let used = use_it(name).await;
        tx.commit().await?;
        Ok((used, figures))
    }

    /// Jobs by status now and the oldest queued job, for `who`: exact on every node, from the
    /// figures the triggers keep in each job's own transaction.
    pub async fn counts(&self, who: Visibility) -> Result<Counts, PgError> {
        let client = self.pool.get().await?;
        stats::counts(&client, &who).await
    }

    /// `steps` steps of `step_minutes` minutes from minute `from_minute` (minutes since the
    /// epoch): the jobs of `who` that ended in each, by outcome, and their latencies.
    pub async fn series(
        &self,
        who: Visibility,
        from_minute: i64,
        step_minutes: i64,
        steps: i64,
    ) -> Result<Vec<Step>, PgError> {
        let client = self.pool.get().await?;
        stats::series(&client, &who, from_minute, step_minutes, steps).await
    }

    /// The newest event's id (0 if there is none): where following the feed live begins.
    pub async fn last_event_id(&self) -> Result<i64, PgError> {
        let client = self.pool.get().await?;
        read::last_event_id(&client).await
    }

    /// The feed: the events `who` may see with an id greater than `after`, oldest first, at
    /// most `limit`. Events commit in id order, so a follower that asks again after the last
    /// id it was given sees every event once, whichever node wrote it.
    pub async fn events_after(
        &self,
        who: &Visibility,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, PgError> {
        let client = self.pool.get().await?;
        read::events_after(&client, who, after, limit).await
    }

    /// The feed newest first, before event `before` (`None`: from the newest).
    pub async fn events_before(
        &self,
        who: &Visibility,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>, PgError> {
        let client = self.pool.get().await?;
        read::events_before(&client, who, before, limit).await
    }
}

tokio::task_local! {
    /// The kinds of the events appended by the transaction this task has under way.
    static APPENDED: std::cell::RefCell<Vec<EventKind>>;
}

/// Runs a transaction, which commits as its last step, and once it has committed counts the
/// events it appended in this node's metrics, as SQLite's writer counts its notices. The events
/// are appended from many write functions, each in a transaction its caller commits; a tally
/// kept beside the transaction rather than handed through each of them leaves them as they are.
async fn counted<T>(transaction: impl Future<Output = Result<T, PgError>>) -> Result<T, PgError> {
    let (result, appended) = APPENDED
        .scope(std::cell::RefCell::default(), async {
            let result = transaction.await;
            (result, APPENDED.with(std::cell::RefCell::take))
        })
        .await;
    if result.is_ok() {
        METRICS.committed(appended);
    }
    result
}

/// Notes events appended by the transaction under way, for [`counted`] to count once it
/// commits (outside one, as in `kiln migrate-to`, nothing counts them).
fn appended(kinds: impl IntoIterator<Item = EventKind>) {
    let _ = APPENDED.try_with(|tally| tally.borrow_mut().extend(kinds));
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}
