//! Everything a deployment can tune, with the defaults kiln ships. The binary fills this from flags
//! and environment variables; tests build it directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::RateLimit;
use crate::http::HttpLimits;
use crate::job::Limits;
use crate::job::outputs::OutputCaps;
use crate::job::policy::Policy;
use crate::runner::DEFAULT_COMPILE_LIMITS;
use crate::sandbox::SandboxConfig;
use crate::webhook::WebhookConfig;

/// The database file the commands use unless told otherwise: `kiln.db` in the working directory.
pub const DEFAULT_DB: &str = "kiln.db";

/// Where runs get their work directories unless told otherwise: `kiln-work` in the temporary
/// directory.
pub fn default_work_root() -> PathBuf {
    std::env::temp_dir().join("kiln-work")
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The SQLite file holding jobs and events, unless `postgres` is set.
    pub db_path: PathBuf,
    /// The PostgreSQL database holding them instead, shared with any number of other nodes.
    pub postgres: Option<Postgres>,
    pub listen: SocketAddr,
    /// How many jobs run at once.
    pub workers: usize,
    /// Where each run gets its fresh, private work directory.
    pub work_root: PathBuf,
    /// Names this server in lease owners, so a restarted server can tell its own earlier
    /// incarnation's jobs (rescued at once) from another live server's (left alone).
    pub node_id: String,
    /// How long a claim holds a job without renewal before it may be rescued.
    pub lease: Duration,
    /// How often workers look for jobs committed by another process (in-process submits wake
    /// them at once).
    pub poll_interval: Duration,
    /// How long running jobs may go on after SIGTERM before they are killed and requeued.
    pub shutdown_grace: Duration,
    /// The longest `?wait=` a poller may ask for.
    pub max_wait: Duration,
    /// Requests (other than long-polls, which get `max_wait` on top) are cut off after this.
    pub request_timeout: Duration,
    /// Largest request body accepted at all (413 above), but a suite sent as a stream.
    pub max_request_bytes: usize,
    /// Largest suite sent as a stream (NDJSON), which is never held whole (413 above).
    pub max_suite_bytes: u64,
    /// Where runtime definitions come from besides the built-in ones.
    pub runtimes: crate::runtime::Sources,
    /// How often a live (SSE) stream sends a keep-alive comment, so proxies and clients can tell
    /// a quiet stream from a dead one.
    pub sse_keepalive: Duration,
    /// How much a live stream may have waiting for its client.
    pub sse_buffer_bytes: usize,
    /// How long an event may wait for room in a full stream buffer; a client that makes none by
    /// then is dropped (it may resume by event id).
    pub sse_stall: Duration,
    /// Live streams open at once; more are refused with 429.
    pub sse_max_streams: usize,
    /// How large the write-ahead log may grow while readers keep it from being checkpointed.
    pub wal_max_bytes: u64,
    /// Limits on clients' connections: how many, how slow, how large their headers.
    pub http: HttpLimits,
    /// Serve without API tokens on an address other than loopback (when none exists yet).
    pub insecure: bool,
    /// Requests a second (and at once) each API token may make; `None`: no limit.
    pub token_rate: Option<RateLimit>,
    /// Jobs that may wait in the queue; submits beyond it are refused with 429.
    pub max_queued_jobs: u64,
    /// Batches that may have cases not yet ended; more are refused with 429.
    pub max_batches_in_flight: u64,
    pub policy: Policy,
    /// Limits of a compiled runtime's build step, the same for every job: the build is kiln's
    /// work, not the job's, and its time is not the job's either. Held under the caps for jobs,
    /// see [`Config::build_limits`].
    pub compile_limits: Limits,
    /// What is kept of the files a job's `outputs` match, per run.
    pub output_caps: OutputCaps,
    pub sandbox: SandboxConfig,
    pub webhooks: WebhookConfig,
    /// Whether a Judge0 submission may name a `callback_url` (Judge0's `ENABLE_CALLBACKS`).
    pub judge0_callbacks: bool,
}

/// A PostgreSQL database for the queue, as `kiln serve --db postgres://…` names it.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// `postgres://user:password@host:port/database`, as libpq takes it.
    pub url: String,
    /// Hear of other nodes' commits only by reading on a timer (`--poll-only`), for a server
    /// reached through a pooler that cannot LISTEN (PgBouncer in transaction mode).
    pub poll_only: bool,
}

/// A database URL as logs and errors show it: without its password.
pub fn without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Whether `--db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

impl Config {
    /// The embedded default: the database at `db_path`, served on loopback.
    pub fn new(db_path: PathBuf) -> Config {
        Config {
            db_path,
            postgres: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            work_root: default_work_root(),
            node_id: "kiln".into(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_request_bytes: 32 << 20,
            max_suite_bytes: 1 << 30,
            runtimes: crate::runtime::Sources::default(),
            sse_keepalive: Duration::from_secs(15),
            sse_buffer_bytes: 256 << 10,
            sse_stall: Duration::from_secs(10),
            sse_max_streams: 10_000,
            wal_max_bytes: crate::store::DEFAULT_WAL_MAX_BYTES,
            http: HttpLimits::default(),
            insecure: false,
            token_rate: None,
            max_queued_jobs: 1_000_000,
            max_batches_in_flight: 1000,
            policy: Policy::default(),
            compile_limits: DEFAULT_COMPILE_LIMITS,
            output_caps: OutputCaps::default(),
            sandbox: SandboxConfig::default(),
            webhooks: WebhookConfig::default(),
            judge0_callbacks: true,
        }
    }

    /// What a build step runs under: [`Config::compile_limits`], none above the maximum a job
    /// may ask for, so that the operator's caps hold for every process a job makes run.
    pub fn build_limits(&self) -> Limits {
        self.compile_limits.within(&self.policy.max_limits)
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_database_url_is_shown_without_its_password_and_unchanged_without_one() {
        assert_eq!(
            without_password("postgres://kiln:s3cr@t@db:5432/kiln"),
            "postgres://kiln@db:5432/kiln"
        );
        assert_eq!(
            without_password("postgresql://kiln@db/kiln"),
            "postgresql://kiln@db/kiln"
        );
        assert_eq!(without_password("postgres://db/kiln"), "postgres://db/kiln");
    }
}
