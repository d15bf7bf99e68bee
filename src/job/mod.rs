//! The domain, at the bottom of kiln: the job as the rest of kiln sees it. What a submitter asks
//! for once validated ([`JobSpec`]), the [`Limits`] it runs under, the [`Status`] it moves
//! through, why it ended ([`Outcome`]), the [`Event`]s that record each step, and the job as
//! stored ([`Job`]). Plain data and pure rules: no SQL, no HTTP, no processes.
//!
//! Beside it: suites of cases ([`batch`]), how a case is judged ([`verdict`]) and what a failed
//! program's stderr says of why ([`failure`]); what a deployment lets a submission ask for
//! ([`policy`], with the hosts a callback may reach in [`hosts`]) and the checks that hold a
//! submission to it ([`validate`], one set of rules for every entry point); what a name may look
//! like ([`names`]); timestamps as kiln keeps them ([`time`]); the bytes a job is given and
//! gives back, and how JSON writes them ([`content`]).
//!
//! Nothing here imports anything of kiln outside `src/job/`: the configuration, the store, the
//! API, the runner and the rest depend on this module and it on none of them, so a change up
//! there never reaches the domain (`tests/it/architecture.rs` holds the crate to it).

pub mod batch;
pub mod content;
pub mod failure;
pub mod hosts;
pub mod names;
pub mod outputs;
pub mod policy;
pub(crate) mod text;
pub mod time;
pub mod validate;
pub mod verdict;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use content::{Content, Encoding};
use outputs::{Collected, OmittedFile, OutputFile};
use text::text_enum;
use verdict::{Judgement, Verdict};

/// Job ids are UUIDv7: they sort by creation time, so the primary key doubles as the FIFO order.
pub type JobId = uuid::Uuid;

/// Batch ids are UUIDv7, like job ids.
pub type BatchId = uuid::Uuid;

text_enum! {
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
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Status {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        TimedOut => "timed_out",
        Cancelled => "cancelled",
        Error => "error",
    }
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

text_enum! {
    /// Why a job ended. The status says *how* it ended; the outcome says *why*, precisely enough to
    /// tell a wall-clock kill from a CPU-time kill, or a crash from an output flood.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Outcome {
        /// Exited with status 0.
        Success => "success",
        /// Exited with a non-zero status.
        NonzeroExit => "nonzero_exit",
        /// Killed by a signal it did not ask for from us (a crash, `kill -9` from inside, ...).
        Signal => "signal",
        /// Ran longer than `limits.wall_ms`.
        WallTimeLimit => "wall_time_limit",
        /// Used more than `limits.cpu_ms` of CPU.
        CpuTimeLimit => "cpu_time_limit",
        /// Killed for using more than `limits.memory_mb`.
        MemoryLimit => "memory_limit",
        /// Wrote more than `limits.output_bytes` to stdout or stderr.
        OutputLimit => "output_limit",
        /// A compiled runtime's compiler refused the code (its output is the job's stdout/stderr).
        CompileError => "compile_error",
        /// The run could not be set up as the job asked: the kernel refused its args or the
        /// files it named. The submitter's doing, which validation refuses at submit wherever it
        /// is known then; one found only at the run ends the job at once, never retried.
        InvalidRequest => "invalid_request",
        /// Cancelled by a user before it finished.
        Cancelled => "cancelled",
        /// Its worker (or the whole server) stopped renewing the lease and no attempts were left.
        LeaseExpired => "lease_expired",
        /// The server shut down while it ran and no attempts were left.
        Shutdown => "shutdown",
        /// kiln could not run it: runtime missing, work directory or process could not be set up.
        RunnerError => "runner_error",
    }
}

impl Outcome {
    /// The terminal status a job with this outcome ends in.
    pub fn status(self) -> Status {
        match self {
            Outcome::Success => Status::Succeeded,
            Outcome::NonzeroExit
            | Outcome::Signal
            | Outcome::MemoryLimit
            | Outcome::OutputLimit
            | Outcome::CompileError
            | Outcome::InvalidRequest => Status::Failed,
            Outcome::WallTimeLimit | Outcome::CpuTimeLimit => Status::TimedOut,
            Outcome::Cancelled => Status::Cancelled,
            Outcome::LeaseExpired | Outcome::Shutdown | Outcome::RunnerError => Status::Error,
        }
    }
}

/// The resources one run may use. Every job stores the limits it actually ran under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_mb: u64,
    pub processes: u64,
    pub output_bytes: u64,
    pub file_bytes: u64,
    /// The CPU the run may use, in percent of one core (50 is half a core, 200 two cores),
    /// held by its cgroup's quota; `None` for no quota. Absent from jobs stored before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u64>,
}

impl Limits {
    /// Each of these limits, none above the one of `caps`.
    pub fn within(self, caps: &Limits) -> Limits {
        Limits {
            wall_ms: self.wall_ms.min(caps.wall_ms),
            cpu_ms: self.cpu_ms.min(caps.cpu_ms),
            memory_mb: self.memory_mb.min(caps.memory_mb),
            processes: self.processes.min(caps.processes),
            output_bytes: self.output_bytes.min(caps.output_bytes),
            file_bytes: self.file_bytes.min(caps.file_bytes),
            // No quota is above any cap.
            cpu_percent: match caps.cpu_percent {
                Some(cap) => Some(self.cpu_percent.map_or(cap, |percent| percent.min(cap))),
                None => self.cpu_percent,
            },
        }
    }
}

/// A validated job, ready to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub runtime: String,
    pub code: Content,
    pub stdin: Content,
    pub args: Vec<String>,
    pub files: BTreeMap<String, Content>,
    /// The files to keep after the run, by path or glob ([`outputs`]).
    pub outputs: Vec<String>,
    pub limits: Limits,
    pub priority: i32,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    /// What the call to `callback_url` looks like.
    pub callback_shape: CallbackShape,
    /// Its stdin stays open, after `stdin`, for what is written to it while it runs.
    pub interactive: bool,
}

text_enum! {
    /// How a job's end is told to its `callback_url`: kiln's own signed POST of the job, or the
    /// PUT of the submission that a client of kiln's Judge0 API expects. Kept with the job (and
    /// its outbox row), so a call made after a restart has the shape it was asked in.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum CallbackShape {
        #[default]
        Kiln => "kiln",
        Judge0 => "judge0",
    }
}

text_enum! {
    /// What kind of step an [`Event`] records. Stored as text (`job.started`, ...), so operators
    /// can filter on it and later kinds can be added without a schema change.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum EventKind {
        Queued => "job.queued",
        Started => "job.started",
        Retrying => "job.retrying",
        /// The running job reported how far it got (see [`Progress`]).
        Progress => "job.progress",
        Succeeded => "job.succeeded",
        Failed => "job.failed",
        TimedOut => "job.timed_out",
        Cancelled => "job.cancelled",
        Error => "job.error",
        /// A webhook call was answered with a 2xx.
        WebhookDelivered => "webhook.delivered",
        /// A webhook call failed (no answer, or not a 2xx); its data says whether it will be
        /// retried.
        WebhookFailed => "webhook.failed",
        /// A suite's cases were all stored (one event for the whole batch).
        BatchQueued => "batch.queued",
        /// A suite's last case ended; the data holds the totals.
        BatchCompleted => "batch.completed",
    }
}

impl EventKind {
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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// The global cursor: strictly increasing, never reused.
    pub id: i64,
    /// The job it is about; `None` for a batch's own events.
    #[schema(value_type = Option<String>, format = "uuid")]
    pub job_id: Option<JobId>,
    /// The batch it belongs to: a batch's own events and those of its cases.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub batch_id: Option<BatchId>,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Job {
    #[schema(value_type = String, format = "uuid")]
    pub id: JobId,
    pub status: Status,
    pub outcome: Option<Outcome>,
    pub runtime: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub priority: i32,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The output, written in the encoding beside it: as text when it is UTF-8, else (or when
    /// `?encoding=base64` asks) base64 of the exact bytes.
    pub stdout: String,
    pub stdout_encoding: Encoding,
    pub stderr: String,
    pub stderr_encoding: Encoding,
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
    #[schema(value_type = Option<String>, format = "uuid")]
    pub batch_id: Option<BatchId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_detail: Option<String>,
    /// For a job that named `outputs`: its patterns, and once it ended the files kept (served
    /// at `/v1/jobs/{id}/files/{path}`) and those that matched but were left out, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_out: Option<Vec<OutputFile>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files_omitted: Vec<OmittedFile>,
}

impl Job {
    /// The same job with both streams in base64 whatever they hold, for a client that wants the
    /// bytes without looking at each stream's encoding. Exact: text in `utf-8` is the bytes.
    pub fn with_base64_output(mut self) -> Job {
        for (text, encoding) in [
            (&mut self.stdout, &mut self.stdout_encoding),
            (&mut self.stderr, &mut self.stderr_encoding),
        ] {
            if *encoding == Encoding::Utf8 {
                *text = Content::from(std::mem::take(text)).shown(true).0;
                *encoding = Encoding::Base64;
            }
        }
        self
    }
}

/// How far a running job says it got: a percentage and a short message, as it wrote them to its
/// progress descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub percent: u8,
    pub message: String,
}

/// What a run produced, as the worker hands it to the store.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Exactly the bytes the program wrote, up to the output cap.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_kb: u64,
    /// For a compiled runtime: whether this run compiled the code or ran a batch's shared build.
    pub build: Option<BuildUse>,
    /// The files of the work directory its `outputs` matched.
    pub files: Collected,
}

/// How an attempt ended, as the worker records it: the one value that travels from the worker to
/// the store's terminal write, shared rather than copied when that write is retried.
#[derive(Debug)]
pub struct Finish {
    pub outcome: Outcome,
    pub result: RunResult,
    /// kiln's own reason when it could not run the job (the job's `error`).
    pub error: Option<String>,
    /// For a suite's case, its verdict; absent, the verdict follows from the outcome.
    pub judged: Option<Judgement>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: &impl Serialize) -> String {
        serde_json::to_string(value).expect("serialize")
    }

    fn job() -> Job {
        Job {
            id: JobId::from_u128(1),
            status: Status::Failed,
            outcome: Some(Outcome::NonzeroExit),
            runtime: "sh".into(),
            attempt: 1,
            max_attempts: 3,
            priority: 0,
            created_at: 1_700_000_000_000,
            started_at: Some(1_700_000_000_100),
            finished_at: None,
            exit_code: Some(2),
            signal: None,
            stdout: "out".into(),
            stdout_encoding: Encoding::Utf8,
            stderr: String::new(),
            stderr_encoding: Encoding::Utf8,
            stdout_truncated: false,
            stderr_truncated: true,
            wall_ms: Some(5),
            cpu_ms: None,
            memory_kb: Some(1024),
            limits: Limits {
                wall_ms: 1,
                cpu_ms: 2,
                memory_mb: 3,
                processes: 4,
                output_bytes: 5,
                file_bytes: 6,
                cpu_percent: None,
            },
            error: None,
            progress: Some(Progress {
                percent: 50,
                message: "half".into(),
            }),
            batch_id: None,
            case_name: None,
            verdict: None,
            verdict_detail: None,
            outputs: Vec::new(),
            files_out: None,
            files_omitted: Vec::new(),
        }
    }

    // The JSON of a job and of an event is what the API answers and what a webhook posts: a
    // field renamed, reordered or no longer skipped here changes both, so their shapes are
    // pinned byte for byte.
    #[test]
    fn a_job_and_an_event_keep_their_json_shape() {
        let plain = concat!(
            r#"{"id":"00000000-0000-0000-0000-000000000001","status":"failed","#,
            r#""outcome":"nonzero_exit","runtime":"sh","attempt":1,"max_attempts":3,"#,
            r#""priority":0,"created_at":"2023-11-14T22:13:20.000Z","#,
            r#""started_at":"2023-11-14T22:13:20.100Z","finished_at":null,"exit_code":2,"#,
            r#""signal":null,"stdout":"out","stdout_encoding":"utf-8","stderr":"","#,
            r#""stderr_encoding":"utf-8","stdout_truncated":false,"#,
            r#""stderr_truncated":true,"wall_ms":5,"cpu_ms":null,"memory_kb":1024,"#,
            r#""limits":{"wall_ms":1,"cpu_ms":2,"memory_mb":3,"processes":4,"#,
            r#""output_bytes":5,"file_bytes":6},"error":null,"#,
            r#""progress":{"percent":50,"message":"half"}}"#,
        );
        assert_eq!(json(&job()), plain);
        let case = Job {
            batch_id: Some(BatchId::from_u128(2)),
            case_name: Some("case 1".into()),
            verdict: Some(Verdict::RuntimeError),
            verdict_detail: Some("exit code 2".into()),
            ..job()
        };
        let case_fields = concat!(
            r#","batch_id":"00000000-0000-0000-0000-000000000002","case_name":"case 1","#,
            r#""verdict":"runtime_error","verdict_detail":"exit code 2"}"#,
        );
        assert_eq!(
            json(&case),
            format!("{}{case_fields}", &plain[..plain.len() - 1])
        );

        let event = Event {
            id: 7,
            job_id: Some(JobId::from_u128(1)),
            batch_id: None,
            at: 1_700_000_000_000,
            kind: EventKind::Queued.as_str().into(),
            attempt: None,
            data: serde_json::json!({"a": 1}),
            tenant: None,
        };
        assert_eq!(
            json(&event),
            concat!(
                r#"{"id":7,"job_id":"00000000-0000-0000-0000-000000000001","#,
                r#""at":"2023-11-14T22:13:20.000Z","type":"job.queued","attempt":null,"#,
                r#""data":{"a":1}}"#,
            )
        );
        let of_a_tenants_case = Event {
            batch_id: Some(BatchId::from_u128(2)),
            tenant: Some("acme".into()),
            ..event
        };
        assert_eq!(
            json(&of_a_tenants_case),
            concat!(
                r#"{"id":7,"job_id":"00000000-0000-0000-0000-000000000001","#,
                r#""batch_id":"00000000-0000-0000-0000-000000000002","#,
                r#""at":"2023-11-14T22:13:20.000Z","type":"job.queued","attempt":null,"#,
                r#""data":{"a":1},"tenant":"acme"}"#,
            )
        );
    }
}
