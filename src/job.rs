//! The job as the rest of kiln sees it: what a submitter asks for ([`JobSpec`]), the [`Limits`] it
//! runs under, the [`Status`] it moves through, why it ended ([`Outcome`]), and the [`Event`]s that
//! record each step. Plain data: no SQL, no HTTP, no processes. Validation of a submission lives
//! here too, so every entry point (the v1 API, the compatibility aliases, later batches) applies the
//! same rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Policy;
use crate::names::{self, shown};

/// Job ids are UUIDv7: they sort by creation time, so the primary key doubles as the FIFO order.
pub type JobId = uuid::Uuid;

/// Where a job is in its life. The allowed transitions:
///
/// ```text
///            claim              finish
/// queued ──────────► running ──────────► succeeded | failed | timed_out | error
///   │  ▲                │
///   │  └── retrying ────┤ lease expired / shutdown, attempts left
///   │                   │ (no attempts left → error)
///   └──── cancel ───────┴──► cancelled
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Error,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
        Status::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// Why a job ended. The status says *how* it ended; the outcome says *why*, precisely enough to
/// tell a wall-clock kill from a CPU-time kill, or a crash from an output flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited with status 0.
    Success,
    /// Exited with a non-zero status.
    NonzeroExit,
    /// Killed by a signal it did not ask for from us (a crash, `kill -9` from inside, ...).
    Signal,
    /// Ran longer than `limits.wall_ms`.
    WallTimeLimit,
    /// Used more than `limits.cpu_ms` of CPU.
    CpuTimeLimit,
    /// Killed for using more than `limits.memory_mb`.
    MemoryLimit,
    /// Wrote more than `limits.output_bytes` to stdout or stderr.
    OutputLimit,
    /// A compiled runtime's compiler refused the code (its output is the job's stdout/stderr).
    CompileError,
    /// Cancelled by a user before it finished.
    Cancelled,
    /// Its worker (or the whole server) stopped renewing the lease and no attempts were left.
    LeaseExpired,
    /// The server shut down while it ran and no attempts were left.
    Shutdown,
    /// kiln could not run it: runtime missing, work directory or process could not be set up.
    RunnerError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NonzeroExit => "nonzero_exit",
            Outcome::Signal => "signal",
            Outcome::WallTimeLimit => "wall_time_limit",
            Outcome::CpuTimeLimit => "cpu_time_limit",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputLimit => "output_limit",
            Outcome::CompileError => "compile_error",
            Outcome::Cancelled => "cancelled",
            Outcome::LeaseExpired => "lease_expired",
            Outcome::Shutdown => "shutdown",
            Outcome::RunnerError => "runner_error",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        use Outcome::*;
        [
            Success,
            NonzeroExit,
            Signal,
            WallTimeLimit,
            CpuTimeLimit,
            MemoryLimit,
            OutputLimit,
            CompileError,
            Cancelled,
            LeaseExpired,
            Shutdown,
            RunnerError,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == s)
    }

    /// The terminal status a job with this outcome ends in.
    pub fn status(self) -> Status {
        match self {
            Outcome::Success => Status::Succeeded,
            Outcome::NonzeroExit
            | Outcome::Signal
            | Outcome::MemoryLimit
            | Outcome::OutputLimit
            | Outcome::CompileError => Status::Failed,
            Outcome::WallTimeLimit | Outcome::CpuTimeLimit => Status::TimedOut,
            Outcome::Cancelled => Status::Cancelled,
            Outcome::LeaseExpired | Outcome::Shutdown | Outcome::RunnerError => Status::Error,
        }
    }
}

/// The resources one run may use. Every job stores the limits it actually ran under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_mb: u64,
    pub processes: u64,
    pub output_bytes: u64,
    pub file_bytes: u64,
}

/// Limits as a submitter states them: any may be left out and then takes the configured default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub wall_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub processes: Option<u64>,
    pub output_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
}

/// A submission as decoded from the wire, before validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub runtime: String,
    pub code: String,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub priority: i32,
    pub max_attempts: Option<u32>,
    /// Where to POST the result when the job ends (see [`crate::webhook`]).
    pub callback_url: Option<String>,
}

/// A validated job, ready to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub runtime: String,
    pub code: String,
    pub stdin: String,
    pub args: Vec<String>,
    pub files: BTreeMap<String, String>,
    pub limits: Limits,
    pub priority: i32,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

/// Why a submission was refused. The HTTP layer turns `TooLarge` into 413 and `Invalid` into 422.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

impl JobSpec {
    /// Checks a request against the deployment's policy and fills in defaults. `source_file_of`
    /// names the file a runtime's code is written to, or `None` for a runtime not offered here.
    pub fn validate(
        request: JobRequest,
        idempotency_key: Option<String>,
        policy: &Policy,
        source_file_of: impl Fn(&str) -> Option<String>,
    ) -> Result<JobSpec, Rejection> {
        let Some(source_file) = source_file_of(&request.runtime) else {
            return Err(Rejection::Invalid(format!(
                "unknown runtime {}; GET /v1/runtimes lists the available ones",
                shown(&request.runtime)
            )));
        };
        if request.files.contains_key(&source_file) {
            return Err(Rejection::Invalid(format!(
                "files must not contain {source_file:?}: the code is written there"
            )));
        }
        if request.code.trim().is_empty() {
            return Err(Rejection::Invalid("code must not be empty".into()));
        }
        check_size("code", request.code.len(), policy.max_code_bytes)?;
        let files_bytes: usize = request.files.iter().map(|(n, c)| n.len() + c.len()).sum();
        check_size("files", files_bytes, policy.max_files_bytes)?;
        if request.files.len() > policy.max_files {
            return Err(Rejection::TooLarge(format!(
                "{} files given, at most {} allowed",
                request.files.len(),
                policy.max_files
            )));
        }
        let mut look_alikes = names::LookAlikes::with_capacity(request.files.len() + 1);
        look_alikes.check(&source_file);
        for name in request.files.keys() {
            check_file_name(name)?;
            if let Some(other) = look_alikes.check(name) {
                return Err(Rejection::Invalid(format!(
                    "file name {} looks like {}: use names a reader can tell apart",
                    shown(name),
                    shown(other)
                )));
            }
        }
        check_input(&request.stdin, &request.args, policy)?;
        if request.code.contains('\0') {
            return Err(Rejection::Invalid(
                "code, stdin and args must not contain NUL bytes".into(),
            ));
        }
        let max_attempts = request.max_attempts.unwrap_or(policy.default_max_attempts);
        if max_attempts == 0 || max_attempts > policy.max_max_attempts {
            return Err(Rejection::Invalid(format!(
                "max_attempts must be between 1 and {}",
                policy.max_max_attempts
            )));
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(Rejection::Invalid(
                "Idempotency-Key must be 1 to 255 characters".into(),
            ));
        }
        if let Some(url) = &request.callback_url {
            policy
                .callbacks
                .check_url(url)
                .map_err(Rejection::Invalid)?;
        }
        Ok(JobSpec {
            runtime: request.runtime,
            code: request.code,
            stdin: request.stdin,
            args: request.args,
            files: request.files,
            limits: resolve_limits(request.limits, policy)?,
            priority: request.priority,
            max_attempts,
            idempotency_key,
            callback_url: request.callback_url,
        })
    }
}

/// The checks on what one run is given besides the code: its stdin and arguments.
pub(crate) fn check_input(stdin: &str, args: &[String], policy: &Policy) -> Result<(), Rejection> {
    check_size("stdin", stdin.len(), policy.max_stdin_bytes)?;
    if args.len() > policy.max_args {
        return Err(Rejection::TooLarge(format!(
            "{} args given, at most {} allowed",
            args.len(),
            policy.max_args
        )));
    }
    if args
        .iter()
        .map(String::as_str)
        .chain([stdin])
        .any(|s| s.contains('\0'))
    {
        return Err(Rejection::Invalid(
            "code, stdin and args must not contain NUL bytes".into(),
        ));
    }
    Ok(())
}

pub(crate) fn check_size(what: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        return Err(Rejection::TooLarge(format!(
            "{what} is {len} bytes, at most {max} allowed"
        )));
    }
    Ok(())
}

/// File names are relative paths inside the work directory: no absolute paths, no `..`, no empty or
/// `.` components, no backslashes, and nothing [`names::hidden_character`] refuses. The runner
/// trusts names that passed this check.
pub fn check_file_name(name: &str) -> Result<(), Rejection> {
    let invalid = |why: &str| {
        Err(Rejection::Invalid(format!(
            "file name {} {why}",
            shown(name)
        )))
    };
    if name.is_empty() || name.len() > 255 {
        return invalid("must be 1 to 255 bytes");
    }
    if name.starts_with('/') {
        return invalid("must be relative");
    }
    if let Some(why) = names::hidden_character(name) {
        return invalid(why);
    }
    if name.contains('\\') {
        return invalid("must not contain backslashes");
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return invalid("must not contain empty, '.' or '..' components");
    }
    Ok(())
}

pub(crate) fn resolve_limits(request: LimitsRequest, policy: &Policy) -> Result<Limits, Rejection> {
    let (default, max) = (&policy.default_limits, &policy.max_limits);
    let pick = |name: &str, asked: Option<u64>, default: u64, max: u64| match asked {
        Some(0) => Err(Rejection::Invalid(format!(
            "limits.{name} must be positive"
        ))),
        Some(v) if v > max => Err(Rejection::Invalid(format!(
            "limits.{name} is {v}, at most {max} allowed"
        ))),
        Some(v) => Ok(v),
        None => Ok(default.min(max)),
    };
    Ok(Limits {
        wall_ms: pick("wall_ms", request.wall_ms, default.wall_ms, max.wall_ms)?,
        cpu_ms: pick("cpu_ms", request.cpu_ms, default.cpu_ms, max.cpu_ms)?,
        memory_mb: pick(
            "memory_mb",
            request.memory_mb,
            default.memory_mb,
            max.memory_mb,
        )?,
        processes: pick(
            "processes",
            request.processes,
            default.processes,
            max.processes,
        )?,
        output_bytes: pick(
            "output_bytes",
            request.output_bytes,
            default.output_bytes,
            max.output_bytes,
        )?,
        file_bytes: pick(
            "file_bytes",
            request.file_bytes,
            default.file_bytes,
            max.file_bytes,
        )?,
    })
}

/// What kind of step an [`Event`] records. Stored as text (`job.started`, ...), so operators can
/// filter on it and later kinds can be added without a schema change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Queued,
    Started,
    Retrying,
    /// The running job reported how far it got (see [`Progress`]).
    Progress,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Error,
    /// A webhook call was answered with a 2xx.
    WebhookDelivered,
    /// A webhook call failed (no answer, or not a 2xx); its data says whether it will be retried.
    WebhookFailed,
    /// A suite's cases were all stored (one event for the whole batch).
    BatchQueued,
    /// A suite's last case ended; the data holds the totals.
    BatchCompleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "job.queued",
            EventKind::Started => "job.started",
            EventKind::Retrying => "job.retrying",
            EventKind::Progress => "job.progress",
            EventKind::Succeeded => "job.succeeded",
            EventKind::Failed => "job.failed",
            EventKind::TimedOut => "job.timed_out",
            EventKind::Cancelled => "job.cancelled",
            EventKind::Error => "job.error",
            EventKind::WebhookDelivered => "webhook.delivered",
            EventKind::WebhookFailed => "webhook.failed",
            EventKind::BatchQueued => "batch.queued",
            EventKind::BatchCompleted => "batch.completed",
        }
    }

    /// The kind [`EventKind::as_str`] names.
    pub fn parse(s: &str) -> Option<EventKind> {
        use EventKind::*;
        [
            Queued,
            Started,
            Retrying,
            Progress,
            Succeeded,
            Failed,
            TimedOut,
            Cancelled,
            Error,
            WebhookDelivered,
            WebhookFailed,
            BatchQueued,
            BatchCompleted,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == s)
    }

    /// The event that records a job entering a terminal status.
    pub fn terminal(status: Status) -> Option<EventKind> {
        match status {
            Status::Succeeded => Some(EventKind::Succeeded),
            Status::Failed => Some(EventKind::Failed),
            Status::TimedOut => Some(EventKind::TimedOut),
            Status::Cancelled => Some(EventKind::Cancelled),
            Status::Error => Some(EventKind::Error),
            Status::Queued | Status::Running => None,
        }
    }

    /// True for the event that ends a job. Webhook and batch events are not a job's end.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Succeeded
                | EventKind::Failed
                | EventKind::TimedOut
                | EventKind::Cancelled
                | EventKind::Error
        )
    }
}

/// One row of the append-only history.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// The global cursor: strictly increasing, never reused.
    pub id: i64,
    /// The job it is about; `None` for a batch's own events.
    pub job_id: Option<JobId>,
    /// The batch it belongs to: a batch's own events and those of its cases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<crate::batch::BatchId>,
    #[serde(serialize_with = "crate::time::serialize_ms")]
    pub at: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempt: Option<u32>,
    pub data: serde_json::Value,
    /// Whose it is: the tenant of its job or batch (`None` on an open server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A job with its result, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: JobId,
    pub status: Status,
    pub outcome: Option<Outcome>,
    pub runtime: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i32,
    #[serde(serialize_with = "crate::time::serialize_ms")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::serialize_opt_ms")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "crate::time::serialize_opt_ms")]
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub wall_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub memory_kb: Option<u64>,
    pub limits: Limits,
    pub error: Option<String>,
    /// The latest progress the job reported, of whichever attempt reported it last.
    pub progress: Option<Progress>,
    /// For a case of a batch: the batch, the case's name and, once it ended, its verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<crate::batch::BatchId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::verdict::Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_detail: Option<String>,
}

/// How far a running job says it got: a percentage and a short message, as it wrote them to its
/// progress descriptor (see [`crate::progress`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: u8,
    pub message: String,
}

/// What a run produced, as the worker hands it to the store.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_kb: u64,
    /// For a compiled runtime: whether this run compiled the code or ran a batch's shared build.
    pub build: Option<BuildUse>,
}

/// How a compiled runtime's run got its binary. Recorded in the terminal event's data, so that
/// "a batch compiles once" can be checked from the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildUse {
    /// This run compiled the code.
    Compiled,
    /// This run reused the binary an earlier case of its batch compiled.
    Shared,
}
