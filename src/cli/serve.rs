//! `kiln serve`'s flags, and how they become a [`Config`]. Every default shown here is read from
//! the library ([`Config::new`], [`HttpLimits::default`], [`WebhookConfig::default`], the
//! sandbox's in [`SandboxArgs`]), so a default changed there changes the binary and its `--help`
//! too. The flags without one (`--workers`, the job limits, ...) are `Option`s laid over it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use super::SandboxArgs;
use crate::auth::RateLimit;
use crate::config::{Config, DEFAULT_DB};
use crate::http::HttpLimits;
use crate::job::hosts::{HostPolicy, HostRule};
use crate::job::outputs::OutputCaps;
use crate::webhook::WebhookConfig;

/// What an unflagged `kiln serve` runs with, before the host's own name and worker count.
pub(super) fn defaults() -> &'static Config {
    static DEFAULTS: LazyLock<Config> = LazyLock::new(|| Config::new(PathBuf::from(DEFAULT_DB)));
    &DEFAULTS
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn as_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// An address to listen on: `IP:PORT`, or `localhost:PORT` as people write it for loopback.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if let Some(port) = s
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let port = s
        .parse::<u16>()
        .map_or("8000".into(), |port| port.to_string());
    Err(format!(
        "expected an IP address and a port, such as 127.0.0.1:{port} (this host only) or \
         0.0.0.0:{port} (every interface)"
    ))
}

/// A span of time as a flag takes it, in humantime's syntax (`24h`, `30m`), and as `--help` shows
/// it: in hours when it is whole hours, as people write it, rather than humantime's `1day`.
#[derive(Clone, Copy, Debug)]
struct Span(Duration);

impl std::str::FromStr for Span {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Span, Self::Err> {
        humantime::parse_duration(s).map(Span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        if self.0.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(3600) {
            write!(f, "{}h", secs / 3600)
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file of settings, each key a flag below without its dashes
    /// (`max-wall-ms = 60000`); flags and environment variables win over it
    #[arg(long, env = "KILN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the settings in effect (defaults, config file, environment, flags) as such a file,
    /// and exit
    #[arg(long)]
    pub print_config: bool,
    /// The database: a SQLite file (created if missing), or a PostgreSQL database shared by
    /// any number of nodes, as postgres://user:password@host:port/database (TLS:
    /// ?sslmode=verify-full&sslrootcert=ca.pem; see docs/deployment.md)
    #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// On PostgreSQL, hear of other nodes' commits by reading the event log twice a second
    /// instead of LISTEN (for a pooler that cannot LISTEN, such as PgBouncer's transaction mode)
    #[arg(long, env = "KILN_POLL_ONLY")]
    poll_only: bool,
    /// Address and port to listen on (localhost:PORT is 127.0.0.1:PORT)
    #[arg(long, env = "KILN_LISTEN", default_value_t = defaults().listen,
          value_parser = parse_listen)]
    listen: SocketAddr,
    /// Jobs run at once; 0 serves the API without running jobs [default: number of CPUs]
    #[arg(long, env = "KILN_WORKERS")]
    workers: Option<usize>,
    /// Directory for the per-run work directories [default: $TMPDIR/kiln-work]
    #[arg(long, env = "KILN_WORK_ROOT")]
    work_root: Option<PathBuf>,
    /// Name of this server in lease owners [default: the host name]
    #[arg(long, env = "KILN_NODE_ID")]
    node_id: Option<String>,
    /// Lease length in seconds: a job whose worker stops renewing is rescued after this
    #[arg(long, env = "KILN_LEASE_SECS", default_value_t = defaults().lease.as_secs())]
    lease_secs: u64,
    /// Seconds running jobs may go on after SIGTERM before they are killed and requeued
    #[arg(long, env = "KILN_SHUTDOWN_GRACE_SECS",
          default_value_t = defaults().shutdown_grace.as_secs())]
    shutdown_grace_secs: u64,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Milliseconds between keep-alive comments on a live (SSE) stream
    #[arg(long, env = "KILN_SSE_KEEPALIVE_MS", default_value_t = millis(defaults().sse_keepalive),
          value_parser = clap::value_parser!(u64).range(1..))]
    sse_keepalive_ms: u64,
    /// Bytes a live stream may have waiting for its client
    #[arg(long, env = "KILN_SSE_BUFFER_BYTES",
          default_value_t = as_u64(defaults().sse_buffer_bytes),
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    sse_buffer_bytes: u64,
    /// Milliseconds an event may wait for a full stream buffer to drain before its client is
    /// dropped as too slow (it may resume by event id)
    #[arg(long, env = "KILN_SSE_STALL_MS", default_value_t = millis(defaults().sse_stall),
          value_parser = clap::value_parser!(u64).range(1..))]
    sse_stall_ms: u64,
    /// Live streams open at once; more are refused with 429
    #[arg(long, env = "KILN_SSE_MAX_STREAMS", default_value_t = defaults().sse_max_streams)]
    sse_max_streams: usize,
    /// Most cases one batch (test suite) may have; more is refused with 413
    #[arg(long, env = "KILN_MAX_BATCH_CASES",
          default_value_t = defaults().policy.max_batch_cases)]
    max_batch_cases: usize,
    /// Largest request body, bytes, but a suite sent as a stream (413 above)
    #[arg(long, env = "KILN_MAX_REQUEST_BYTES",
          default_value_t = defaults().max_request_bytes)]
    max_request_bytes: usize,
    /// Largest suite sent as a stream (NDJSON), bytes (413 above)
    #[arg(long, env = "KILN_MAX_SUITE_BYTES", default_value_t = defaults().max_suite_bytes)]
    max_suite_bytes: u64,
    /// MiB the database's write-ahead log may reach while a reader keeps it from being
    /// checkpointed; past a quarter of it the log is truncated as soon as readers allow, and at
    /// it new jobs are refused with 503
    #[arg(long, env = "KILN_WAL_MAX_MB", default_value_t = defaults().wal_max_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    wal_max_mb: u64,
    /// Most jobs waiting in the queue (cases of batches included); submits beyond it are
    /// refused with 429 and Retry-After
    #[arg(long, env = "KILN_MAX_QUEUED_JOBS", default_value_t = defaults().max_queued_jobs)]
    max_queued_jobs: u64,
    /// Most batches with cases not yet ended; more are refused with 429 and Retry-After
    #[arg(long, env = "KILN_MAX_BATCHES_IN_FLIGHT",
          default_value_t = defaults().max_batches_in_flight)]
    max_batches_in_flight: u64,
    /// Requests a second each API token may make, sustained (429 and Retry-After beyond);
    /// 0 for no limit
    #[arg(long, env = "KILN_TOKEN_RATE",
          default_value_t = defaults().token_rate.map_or(0.0, |limit| limit.rate))]
    token_rate: f64,
    /// Requests an API token may make at once after a quiet spell [default: twice the rate,
    /// at least 1]
    #[arg(long, env = "KILN_TOKEN_BURST")]
    token_burst: Option<f64>,
    /// Serve without API tokens on an address other than loopback while none exists. Anyone
    /// who reaches the address can then run code and read every job
    #[arg(long, env = "KILN_INSECURE")]
    insecure: bool,
    /// Log format
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// How `kiln serve` logs, on stderr.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a client may hold of the server: connections, time, header bytes.
#[derive(Clone, Debug, clap::Args)]
pub struct HttpArgs {
    /// Connections served at once (each live stream holds one); more wait to be accepted
    #[arg(long, env = "KILN_MAX_CONNECTIONS",
          default_value_t = as_u32(HttpLimits::default().max_connections),
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Milliseconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection stays open
    #[arg(long, env = "KILN_HEADER_TIMEOUT_MS",
          default_value_t = millis(HttpLimits::default().header_read_timeout),
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// Milliseconds a client has to send a request's whole body (408 after)
    #[arg(long, env = "KILN_BODY_TIMEOUT_MS",
          default_value_t = millis(HttpLimits::default().body_read_timeout),
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
    /// Largest request line and headers, bytes (431 above)
    #[arg(long, env = "KILN_MAX_HEADER_BYTES",
          default_value_t = as_u32(HttpLimits::default().max_header_bytes),
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 20)))]
    max_header_bytes: u32,
    /// Milliseconds a request may take (long-polls get their wait on top); 503 after
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_MS",
          default_value_t = millis(defaults().request_timeout),
          value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
}

/// Callbacks to a job's `callback_url` when it ends.
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// Key webhook calls are signed with (HMAC-SHA256) [default: one generated at the first
    /// start and kept in the database, table settings]
    #[arg(long, env = "KILN_WEBHOOK_SECRET", hide_env_values = true,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    webhook_secret: Option<String>,
    /// Callback hosts allowed: NAME, *.NAME, ADDRESS or CIDR; once any is given, only these
    /// [default: every host not denied]
    #[arg(long = "webhook-allow-host", value_name = "HOST", env = "KILN_WEBHOOK_ALLOW_HOSTS",
          value_delimiter = ',', value_parser = HostRule::parse)]
    webhook_allow_hosts: Vec<HostRule>,
    /// Callback hosts denied, on top of the cloud metadata services (always denied): NAME,
    /// *.NAME, ADDRESS or CIDR
    #[arg(long = "webhook-deny-host", value_name = "HOST", env = "KILN_WEBHOOK_DENY_HOSTS",
          value_delimiter = ',', value_parser = HostRule::parse)]
    webhook_deny_hosts: Vec<HostRule>,
    /// How long after a job ends its webhook is retried, e.g. 24h, 30m
    #[arg(long, env = "KILN_WEBHOOK_HORIZON",
          default_value_t = Span(WebhookConfig::default().horizon))]
    webhook_horizon: Span,
    /// Most attempts per webhook call
    #[arg(long, env = "KILN_WEBHOOK_MAX_ATTEMPTS",
          default_value_t = WebhookConfig::default().max_attempts,
          value_parser = clap::value_parser!(u32).range(1..))]
    webhook_max_attempts: u32,
    /// Seconds a receiver has to answer one call
    #[arg(long, env = "KILN_WEBHOOK_TIMEOUT_SECS",
          default_value_t = WebhookConfig::default().timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    webhook_timeout_secs: u64,
    /// Webhook calls in flight at once
    #[arg(long, env = "KILN_WEBHOOK_CONCURRENCY",
          default_value_t = as_u64(WebhookConfig::default().concurrency),
          value_parser = clap::value_parser!(u64).range(1..10_000))]
    webhook_concurrency: u64,
    /// Delay before the first retry, ms; each later retry doubles it, up to an hour
    #[arg(long, env = "KILN_WEBHOOK_RETRY_BASE_MS",
          default_value_t = millis(WebhookConfig::default().retry_base),
          value_parser = clap::value_parser!(u64).range(1..))]
    webhook_retry_base_ms: u64,
    /// Refuse the callback_url of Judge0 submissions, as Judge0 with ENABLE_CALLBACKS=false
    #[arg(long, env = "KILN_NO_JUDGE0_CALLBACKS")]
    no_judge0_callbacks: bool,
}

/// Default and maximum limits for submitted jobs.
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Default wall-clock limit per job, ms
    #[arg(long, env = "KILN_DEFAULT_WALL_MS")]
    default_wall_ms: Option<u64>,
    /// Maximum wall-clock limit a job may ask for, ms
    #[arg(long, env = "KILN_MAX_WALL_MS")]
    max_wall_ms: Option<u64>,
    /// Default CPU-time limit per job, ms
    #[arg(long, env = "KILN_DEFAULT_CPU_MS")]
    default_cpu_ms: Option<u64>,
    /// Maximum CPU-time limit a job may ask for, ms
    #[arg(long, env = "KILN_MAX_CPU_MS")]
    max_cpu_ms: Option<u64>,
    /// Default memory limit per job, MiB
    #[arg(long, env = "KILN_DEFAULT_MEMORY_MB")]
    default_memory_mb: Option<u64>,
    /// Maximum memory limit a job may ask for, MiB
    #[arg(long, env = "KILN_MAX_MEMORY_MB")]
    max_memory_mb: Option<u64>,
    /// Default cap on each of stdout and stderr, bytes
    #[arg(long, env = "KILN_DEFAULT_OUTPUT_BYTES")]
    default_output_bytes: Option<u64>,
    /// Maximum output cap a job may ask for, bytes
    #[arg(long, env = "KILN_MAX_OUTPUT_BYTES")]
    max_output_bytes: Option<u64>,
    /// Default CPU quota per job, percent of one core [default: none]
    #[arg(long, env = "KILN_DEFAULT_CPU_PERCENT",
          value_parser = clap::value_parser!(u64).range(1..))]
    default_cpu_percent: Option<u64>,
    /// Maximum CPU quota a job may ask for, percent of one core; with it, a job that asks for
    /// none gets the default or else this [default: none]
    #[arg(long, env = "KILN_MAX_CPU_PERCENT",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_cpu_percent: Option<u64>,
    /// Largest code of a job or a case, bytes (413 above)
    #[arg(long, env = "KILN_MAX_CODE_BYTES", default_value_t = defaults().policy.max_code_bytes)]
    max_code_bytes: usize,
    /// Largest stdin of a job or a case, bytes (413 above)
    #[arg(long, env = "KILN_MAX_STDIN_BYTES",
          default_value_t = defaults().policy.max_stdin_bytes)]
    max_stdin_bytes: usize,
    /// Most bytes of files (names and contents) a job or a case may give (413 above)
    #[arg(long, env = "KILN_MAX_FILES_BYTES",
          default_value_t = defaults().policy.max_files_bytes)]
    max_files_bytes: usize,
    /// Most files kept of those a job's `outputs` match, per run
    #[arg(long, env = "KILN_MAX_OUTPUT_FILES",
          default_value_t = defaults().output_caps.max_files)]
    max_output_files: usize,
    /// Most bytes kept of the files a job's `outputs` match, all together, per run
    #[arg(long, env = "KILN_MAX_OUTPUT_FILES_BYTES",
          default_value_t = defaults().output_caps.max_bytes)]
    max_output_files_bytes: u64,
    /// Wall-clock limit of a compiled runtime's build step, ms (at most --max-wall-ms)
    #[arg(long, env = "KILN_COMPILE_WALL_MS",
          default_value_t = defaults().compile_limits.wall_ms)]
    compile_wall_ms: u64,
    /// CPU-time limit of a build step, ms (at most --max-cpu-ms)
    #[arg(long, env = "KILN_COMPILE_CPU_MS",
          default_value_t = defaults().compile_limits.cpu_ms)]
    compile_cpu_ms: u64,
    /// Memory limit of a build step, MiB (at most --max-memory-mb)
    #[arg(long, env = "KILN_COMPILE_MEMORY_MB",
          default_value_t = defaults().compile_limits.memory_mb)]
    compile_memory_mb: u64,
    /// Cap on each of a build step's stdout and stderr, bytes (at most --max-output-bytes)
    #[arg(long, env = "KILN_COMPILE_OUTPUT_BYTES",
          default_value_t = defaults().compile_limits.output_bytes)]
    compile_output_bytes: u64,
}

impl ServeArgs {
    /// The configuration these flags ask for.
    pub fn config(self) -> Config {
        let postgres = self
            .db
            .to_str()
            .filter(|db| crate::config::is_postgres_url(db))
            .map(|url| crate::config::Postgres {
                url: url.to_owned(),
                poll_only: self.poll_only,
            });
        let mut config = Config::new(self.db);
        config.postgres = postgres;
        config.listen = self.listen;
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if let Some(work_root) = self.work_root {
            config.work_root = work_root;
        }
        config.node_id = self.node_id.unwrap_or_else(host_name);
        config.lease = Duration::from_secs(self.lease_secs.max(1));
        config.shutdown_grace = Duration::from_secs(self.shutdown_grace_secs);
        // One sandbox ready per worker, so that no worker's next start waits for another's.
        config.sandbox = self.sandbox.config(config.workers.max(1));
        config.runtimes = self.sandbox.runtime_sources();
        config.sse_keepalive = Duration::from_millis(self.sse_keepalive_ms);
        config.sse_buffer_bytes = usize::try_from(self.sse_buffer_bytes).unwrap_or(usize::MAX);
        config.sse_stall = Duration::from_millis(self.sse_stall_ms);
        config.sse_max_streams = self.sse_max_streams;
        config.policy.max_batch_cases = self.max_batch_cases;
        config.max_request_bytes = self.max_request_bytes;
        config.max_suite_bytes = self.max_suite_bytes;
        config.wal_max_bytes = self.wal_max_mb.saturating_mul(1 << 20);
        config.max_queued_jobs = self.max_queued_jobs;
        config.max_batches_in_flight = self.max_batches_in_flight;
        config.insecure = self.insecure;
        config.token_rate = (self.token_rate > 0.0).then(|| RateLimit {
            rate: self.token_rate,
            burst: self.token_burst.unwrap_or(2.0 * self.token_rate).max(1.0),
        });
        self.http.apply(&mut config);
        self.webhooks.apply(&mut config);
        self.limits.apply(&mut config);
        config
    }
}

impl HttpArgs {
    fn apply(self, config: &mut Config) {
        config.http = HttpLimits {
            max_connections: self.max_connections as usize,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_timeout_ms),
            max_header_bytes: self.max_header_bytes as usize,
        };
        config.request_timeout = Duration::from_millis(self.request_timeout_ms);
    }
}

impl WebhookArgs {
    fn apply(self, config: &mut Config) {
        config.policy.callbacks =
            HostPolicy::new(self.webhook_allow_hosts, self.webhook_deny_hosts);
        let webhooks = &mut config.webhooks;
        webhooks.secret = self.webhook_secret;
        webhooks.horizon = self.webhook_horizon.0;
        webhooks.max_attempts = self.webhook_max_attempts;
        webhooks.timeout = Duration::from_secs(self.webhook_timeout_secs);
        webhooks.concurrency = usize::try_from(self.webhook_concurrency).unwrap_or(usize::MAX);
        webhooks.retry_base = Duration::from_millis(self.webhook_retry_base_ms);
        config.judge0_callbacks = !self.no_judge0_callbacks;
    }
}

impl LimitArgs {
    fn apply(self, config: &mut Config) {
        let (default, max) = (
            &mut config.policy.default_limits,
            &mut config.policy.max_limits,
        );
        let set = |slot: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        set(&mut default.wall_ms, self.default_wall_ms);
        set(&mut max.wall_ms, self.max_wall_ms);
        set(&mut default.cpu_ms, self.default_cpu_ms);
        set(&mut max.cpu_ms, self.max_cpu_ms);
        set(&mut default.memory_mb, self.default_memory_mb);
        set(&mut max.memory_mb, self.max_memory_mb);
        set(&mut default.output_bytes, self.default_output_bytes);
        set(&mut max.output_bytes, self.max_output_bytes);
        if self.default_cpu_percent.is_some() {
            default.cpu_percent = self.default_cpu_percent;
        }
        if self.max_cpu_percent.is_some() {
            max.cpu_percent = self.max_cpu_percent;
        }
        config.policy.max_code_bytes = self.max_code_bytes;
        config.policy.max_stdin_bytes = self.max_stdin_bytes;
        config.policy.max_files_bytes = self.max_files_bytes;
        config.output_caps = OutputCaps {
            max_files: self.max_output_files,
            max_bytes: self.max_output_files_bytes,
        };
        let build = &mut config.compile_limits;
        build.wall_ms = self.compile_wall_ms;
        build.cpu_ms = self.compile_cpu_ms;
        build.memory_mb = self.compile_memory_mb;
        build.output_bytes = self.compile_output_bytes;
    }
}

/// Lease owners name the host unless told otherwise, so that servers sharing a database file
/// tell each other's jobs apart.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kiln".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::sandbox::SandboxConfig;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> Config {
        let flags = ["kiln"].iter().chain(args);
        match Serve::try_parse_from(flags) {
            Ok(serve) => serve.args.config(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn an_unflagged_serve_runs_with_the_librarys_defaults() {
        let config = parse(&[]);
        assert_eq!(config.http, HttpLimits::default());
        assert_eq!(
            format!("{:?}", config.webhooks),
            format!("{:?}", WebhookConfig::default())
        );
        // One sandbox ready per worker is the binary's own choice.
        let sandbox = SandboxConfig {
            ready: config.workers.max(1),
            ..SandboxConfig::default()
        };
        assert_eq!(format!("{:?}", config.sandbox), format!("{sandbox:?}"));
        // And so is naming the leases after the host.
        assert_eq!(config.node_id, host_name());
        let expected = Config {
            node_id: host_name(),
            sandbox,
            ..Config::new(PathBuf::from("kiln.db"))
        };
        assert_eq!(format!("{config:#?}"), format!("{expected:#?}"));
    }

    #[test]
    fn flags_are_laid_over_the_defaults() {
        let config = parse(&[
            "--lease-secs",
            "0",
            "--workers",
            "3",
            "--max-connections",
            "7",
            "--webhook-horizon",
            "30m",
            "--default-wall-ms",
            "1234",
            "--max-cpu-percent",
            "150",
            "--token-rate",
            "0.2",
        ]);
        assert_eq!(config.lease, Duration::from_secs(1), "at least a second");
        assert_eq!((config.workers, config.sandbox.ready), (3, 3));
        assert_eq!(config.http.max_connections, 7);
        assert_eq!(config.webhooks.horizon, Duration::from_secs(1800));
        assert_eq!(config.policy.default_limits.wall_ms, 1234);
        assert_eq!(config.policy.max_limits.cpu_percent, Some(150));
        assert_eq!(config.policy.default_limits.cpu_percent, None);
        let defaults = Config::new(PathBuf::from("kiln.db"));
        assert_eq!(
            config.policy.max_limits.wall_ms,
            defaults.policy.max_limits.wall_ms
        );
        let rate = config.token_rate.map(|limit| (limit.rate, limit.burst));
        assert_eq!(
            rate,
            Some((0.2, 1.0)),
            "a burst of twice the rate, at least 1"
        );
    }

    #[test]
    fn a_build_runs_under_its_own_limits_never_above_the_caps_for_jobs() {
        let config = parse(&["--max-memory-mb", "128", "--compile-wall-ms", "5000"]);
        let build = config.build_limits();
        assert_eq!(build.memory_mb, 128, "the cap for jobs");
        assert_eq!(build.wall_ms, 5000, "its own");
        assert_eq!(
            build.cpu_ms,
            defaults().compile_limits.cpu_ms,
            "its default"
        );
    }

    #[test]
    fn the_listening_address_takes_localhost_and_says_what_it_wants_otherwise() {
        assert_eq!(
            parse(&["--listen", "localhost:9000"]).listen,
            SocketAddr::from(([127, 0, 0, 1], 9000))
        );
        assert_eq!(
            parse(&["--listen", "[::1]:9000"]).listen.to_string(),
            "[::1]:9000"
        );
        for (given, wanted) in [
            ("9000", "127.0.0.1:9000"),
            ("example.org:80", "127.0.0.1:8000"),
        ] {
            let refused = parse_listen(given).expect_err(given);
            assert!(refused.contains(wanted), "{given}: {refused}");
        }
    }

    #[test]
    fn a_span_shows_as_people_write_it_and_reads_back() {
        for (text, secs) in [("24h", 86_400), ("30m", 1800), ("1day 1s", 86_401)] {
            let span = Span(Duration::from_secs(secs));
            assert_eq!(span.to_string(), text);
            let back = text.parse::<Span>().map(|span| span.0);
            assert_eq!(back.ok(), Some(span.0), "{text}");
        }
    }
}
