//! The `kiln` command: `kiln serve` runs the service; the other subcommands are a client for a
//! running server. Errors become exit codes here and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kiln::auth::RateLimit;
use kiln::client::{self, ClientCommand, ClientOpts};
use kiln::config::Config;
use kiln::http::HttpLimits;
use kiln::job::hosts::{HostPolicy, HostRule};
use kiln::ops::OpsCommand;
use kiln::sandbox::{Mode, SandboxConfig};
use kiln::store::Store;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A durable job queue for running untrusted code"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: HTTP API, workers and the database
    Serve(Box<ServeArgs>),
    /// Make, list and revoke API tokens, in the database file (the server need not run)
    Token(TokenArgs),
    #[command(flatten)]
    Ops(OpsCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The SQLite database file (created if missing)
    #[arg(long, env = "KILN_DB", default_value = "kiln.db")]
    db: PathBuf,
    /// Address to listen on
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8000")]
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
    #[arg(long, env = "KILN_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Seconds running jobs may go on after SIGTERM before they are killed and requeued
    #[arg(long, env = "KILN_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Extra runtime NAME=INTERPRETER (the code is passed as its first argument); repeatable
    #[arg(long = "runtime", value_name = "NAME=PATH", value_parser = kiln::runtime::parse_extra)]
    runtimes: Vec<(String, PathBuf)>,
    /// Isolation of jobs: `full` (every namespace including a user namespace, seccomp, Landlock,
    /// cgroups), `namespaces` (the same without a user namespace, for hosts that forbid them;
    /// needs root) or `none` (development only: submitted code runs with the server's
    /// privileges). kiln refuses to start if the host cannot give the level asked for.
    #[arg(long, env = "KILN_SANDBOX", value_enum, default_value = "full")]
    sandbox: Mode,
    /// Extra host path bound read-only into every sandbox (e.g. another interpreter's tree);
    /// repeatable
    #[arg(long = "sandbox-bind", value_name = "PATH")]
    sandbox_binds: Vec<PathBuf>,
    /// First unprivileged host uid/gid sandboxed jobs map to (uses the next 10001)
    #[arg(long, env = "KILN_SANDBOX_UID_BASE", default_value_t = 200_000,
          value_parser = clap::value_parser!(u32).range(1..4_000_000_000))]
    sandbox_uid_base: u32,
    /// Milliseconds between keep-alive comments on a live (SSE) stream
    #[arg(long, env = "KILN_SSE_KEEPALIVE_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    sse_keepalive_ms: u64,
    /// Bytes a live stream may have waiting for its client
    #[arg(long, env = "KILN_SSE_BUFFER_BYTES", default_value_t = 256 << 10,
          value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    sse_buffer_bytes: u64,
    /// Milliseconds an event may wait for a full stream buffer to drain before its client is
    /// dropped as too slow (it may resume by event id)
    #[arg(long, env = "KILN_SSE_STALL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    sse_stall_ms: u64,
    /// Live streams open at once; more are refused with 429
    #[arg(long, env = "KILN_SSE_MAX_STREAMS", default_value_t = 10_000)]
    sse_max_streams: usize,
    /// Most cases one batch (test suite) may have; more is refused with 413
    #[arg(long, env = "KILN_MAX_BATCH_CASES", default_value_t = 10_000)]
    max_batch_cases: usize,
    /// MiB the database's write-ahead log may reach while a reader keeps it from being
    /// checkpointed; past a quarter of it the log is truncated as soon as readers allow, and at
    /// it new jobs are refused with 503
    #[arg(long, env = "KILN_WAL_MAX_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    wal_max_mb: u64,
    /// Most jobs waiting in the queue (cases of batches included); submits beyond it are
    /// refused with 429 and Retry-After
    #[arg(long, env = "KILN_MAX_QUEUED_JOBS", default_value_t = 1_000_000)]
    max_queued_jobs: u64,
    /// Most batches with cases not yet ended; more are refused with 429 and Retry-After
    #[arg(long, env = "KILN_MAX_BATCHES_IN_FLIGHT", default_value_t = 1000)]
    max_batches_in_flight: u64,
    /// Requests a second each API token may make, sustained (429 and Retry-After beyond);
    /// 0 for no limit
    #[arg(long, env = "KILN_TOKEN_RATE", default_value_t = 0.0)]
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
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// What a client may hold of the server: connections, time, header bytes.
#[derive(clap::Args)]
struct HttpArgs {
    /// Connections served at once (each live stream holds one); more wait to be accepted
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Milliseconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection stays open
    #[arg(long, env = "KILN_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// Milliseconds a client has to send a request's whole body (408 after)
    #[arg(long, env = "KILN_BODY_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
    /// Largest request line and headers, bytes (431 above)
    #[arg(long, env = "KILN_MAX_HEADER_BYTES", default_value_t = 16 << 10,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 20)))]
    max_header_bytes: u32,
    /// Milliseconds a request may take (long-polls get their wait on top); 503 after
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
}

/// Callbacks to a job's `callback_url` when it ends.
#[derive(clap::Args)]
struct WebhookArgs {
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
    #[arg(long, env = "KILN_WEBHOOK_HORIZON", default_value = "24h",
          value_parser = humantime::parse_duration)]
    webhook_horizon: Duration,
    /// Most attempts per webhook call
    #[arg(long, env = "KILN_WEBHOOK_MAX_ATTEMPTS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    webhook_max_attempts: u32,
    /// Seconds a receiver has to answer one call
    #[arg(long, env = "KILN_WEBHOOK_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    webhook_timeout_secs: u64,
    /// Webhook calls in flight at once
    #[arg(long, env = "KILN_WEBHOOK_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..10_000))]
    webhook_concurrency: u64,
    /// Delay before the first retry, ms; each later retry doubles it, up to an hour
    #[arg(long, env = "KILN_WEBHOOK_RETRY_BASE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    webhook_retry_base_ms: u64,
}

/// Default and maximum limits for submitted jobs.
#[derive(clap::Args)]
struct LimitArgs {
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
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The SQLite database file of the server
    #[arg(long, env = "KILN_DB", default_value = "kiln.db", global = true)]
    db: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token for a tenant and print it, once: only its hash is kept
    Create {
        /// Whose jobs the token submits and sees (letters, digits, '.', '_', '-')
        #[arg(long, value_parser = parse_tenant)]
        tenant: String,
        /// The token sees every tenant's jobs and the global event feed
        #[arg(long)]
        admin: bool,
    },
    /// List the tokens made: id, tenant, first characters, and whether revoked
    List,
    /// Revoke a token by its id; a running server refuses it within a second
    Revoke { id: i64 },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_tenant(s: &str) -> Result<String, String> {
    let fine = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fine {
        Ok(s.to_owned())
    } else {
        Err("1 to 64 letters, digits, '.', '_' or '-'".into())
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    // `kiln doctor` checks a server only if one was named.
    let url_given = matches.value_source("url") != Some(ValueSource::DefaultValue);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Ops(command) => runtime.block_on(kiln::ops::run(&cli.client, url_given, command)),
        Command::Token(args) => match runtime.block_on(token(args, cli.client.json)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiln: {e}");
                ExitCode::from(2)
            }
        },
        Command::Client(command) => match runtime.block_on(client::run(&cli.client, command)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("kiln: {e}");
                ExitCode::from(2)
            }
        },
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let config = config_from(args);
    let result = kiln::server::run(config, shutdown_signal(), |addr| {
        // One line on stdout, for scripts and tests that start the server on port 0.
        println!("kiln listening on http://{addr}");
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kiln stopped");
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn token(args: TokenArgs, json: bool) -> Result<(), String> {
    let (store, writer) =
        Store::open(&args.db, 1).map_err(|e| format!("cannot open {}: {e}", args.db.display()))?;
    let done = token_command(&store, args.command, json).await;
    drop(store);
    writer.join();
    done
}

async fn token_command(store: &Store, command: TokenCommand, json: bool) -> Result<(), String> {
    match command {
        TokenCommand::Create { tenant, admin } => {
            let made = kiln::auth::new_token().map_err(|e| format!("no randomness: {e}"))?;
            let secret = kiln::auth::random_hex(32).map_err(|e| format!("no randomness: {e}"))?;
            let id = store
                .create_token(tenant.clone(), admin, made.hash, made.prefix, secret)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                let out = serde_json::json!({"id": id, "tenant": tenant, "admin": admin,
                                             "token": made.token});
                println!("{out}");
            } else {
                println!("{}", made.token);
                eprintln!(
                    "kiln: token {id} for tenant {tenant:?}{}: shown this once, keep it secret",
                    if admin { " (admin)" } else { "" }
                );
            }
        }
        TokenCommand::List => {
            let tokens = store.tokens().await.map_err(|e| e.to_string())?;
            if json {
                let out = serde_json::to_string(&tokens).map_err(|e| e.to_string())?;
                println!("{out}");
                return Ok(());
            }
            println!(
                "{:>4}  {:<13}  {:<20}  {:<5}  {:<24}  revoked",
                "id", "token", "tenant", "admin", "created"
            );
            let when = kiln::job::time::rfc3339;
            for t in tokens {
                println!(
                    "{:>4}  {:<13}  {:<20}  {:<5}  {:<24}  {}",
                    t.id,
                    format!("{}…", t.prefix),
                    t.tenant,
                    if t.admin { "yes" } else { "no" },
                    when(t.created_at),
                    t.revoked_at.map_or_else(|| "-".to_owned(), when),
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !store.revoke_token(id).await.map_err(|e| e.to_string())? {
                return Err(format!("no token {id} in force (see `kiln token list`)"));
            }
            eprintln!("kiln: token {id} revoked");
        }
    }
    Ok(())
}

fn config_from(args: ServeArgs) -> Config {
    let mut config = Config::new(args.db);
    config.listen = args.listen;
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if let Some(work_root) = args.work_root {
        config.work_root = work_root;
    }
    config.node_id = args.node_id.unwrap_or_else(host_name);
    config.lease = Duration::from_secs(args.lease_secs.max(1));
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace_secs);
    config.extra_runtimes = args.runtimes;
    config.sse_keepalive = Duration::from_millis(args.sse_keepalive_ms);
    config.sse_buffer_bytes = usize::try_from(args.sse_buffer_bytes).unwrap_or(usize::MAX);
    config.sse_stall = Duration::from_millis(args.sse_stall_ms);
    config.sse_max_streams = args.sse_max_streams;
    config.policy.max_batch_cases = args.max_batch_cases;
    config.wal_max_bytes = args.wal_max_mb.saturating_mul(1 << 20);
    config.max_queued_jobs = args.max_queued_jobs;
    config.max_batches_in_flight = args.max_batches_in_flight;
    config.insecure = args.insecure;
    config.token_rate = (args.token_rate > 0.0).then(|| RateLimit {
        rate: args.token_rate,
        burst: args.token_burst.unwrap_or(2.0 * args.token_rate).max(1.0),
    });
    config.sandbox = SandboxConfig {
        mode: args.sandbox,
        extra_binds: args.sandbox_binds,
        uid_base: args.sandbox_uid_base,
        // One per worker, so that no worker's next start waits for another's.
        ready: config.workers.max(1),
    };
    let h = args.http;
    config.http = HttpLimits {
        max_connections: h.max_connections as usize,
        header_read_timeout: Duration::from_millis(h.header_timeout_ms),
        body_read_timeout: Duration::from_millis(h.body_timeout_ms),
        max_header_bytes: h.max_header_bytes as usize,
    };
    config.request_timeout = Duration::from_millis(h.request_timeout_ms);
    let w = args.webhooks;
    config.policy.callbacks = HostPolicy::new(w.webhook_allow_hosts, w.webhook_deny_hosts);
    config.webhooks.secret = w.webhook_secret;
    config.webhooks.horizon = w.webhook_horizon;
    config.webhooks.max_attempts = w.webhook_max_attempts;
    config.webhooks.timeout = Duration::from_secs(w.webhook_timeout_secs);
    config.webhooks.concurrency = usize::try_from(w.webhook_concurrency).unwrap_or(32);
    config.webhooks.retry_base = Duration::from_millis(w.webhook_retry_base_ms);
    let l = args.limits;
    let (default, max) = (
        &mut config.policy.default_limits,
        &mut config.policy.max_limits,
    );
    let set = |slot: &mut u64, value: Option<u64>| {
        if let Some(v) = value {
            *slot = v;
        }
    };
    set(&mut default.wall_ms, l.default_wall_ms);
    set(&mut max.wall_ms, l.max_wall_ms);
    set(&mut default.cpu_ms, l.default_cpu_ms);
    set(&mut max.cpu_ms, l.max_cpu_ms);
    set(&mut default.memory_mb, l.default_memory_mb);
    set(&mut max.memory_mb, l.max_memory_mb);
    set(&mut default.output_bytes, l.default_output_bytes);
    set(&mut max.output_bytes, l.max_output_bytes);
    config
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kiln".into())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
