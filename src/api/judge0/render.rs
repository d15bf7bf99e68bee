//! A kiln job as a Judge0 submission: its status by Judge0's rules, its times and sizes in
//! Judge0's units and formats, only the fields asked for, text base64-encoded when asked.
//!
//! The status follows `isolate_job.rb#determine_status` of Judge0 v1.13.1, from what kiln
//! recorded: a time limit is 5, a compile error 6, a signal 7–10 or 12 by its number, a non-zero
//! exit 11, kiln unable to run the program 13, the kernel refusing to start it 14; a program
//! that ran to its end is 3, or 4 when its stdout is not its expected output (kiln's suite judge
//! compares them, right-trimming every line and the whole text as Judge0 does).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::error::Judge0Error;
use super::submission::encode;
use crate::job::content::{Content, Encoding};
use crate::job::verdict::Verdict;
use crate::job::{Job, Outcome, Status};
use crate::store::JobInput;

/// Judge0's statuses, by id.
pub const STATUSES: [(u8, &str); 14] = [
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
];

/// What `GET /submissions/{token}` answers when no `fields` are asked for.
const DEFAULT_FIELDS: [&str; 8] = [
    "token",
    "time",
    "memory",
    "stdout",
    "stderr",
    "compile_output",
    "message",
    "status",
];

/// Every field a submission has in Judge0 v1.13.1, which `fields=*` answers: the columns of its
/// `submissions` table, then `status` and `language`. Not one more: the official Python SDK
/// refuses a submission with a field it does not know.
pub const ALL_FIELDS: [&str; 35] = [
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
];

/// The fields `?fields=` asks for: `*` for all, a comma-separated list, or the default set when
/// empty. An unknown one is `400`, named as Judge0 names it.
pub fn requested(fields: Option<&str>) -> Result<Vec<&'static str>, Judge0Error> {
    let asked: Vec<&str> = fields
        .unwrap_or_default()
        .split(',')
        .filter(|f| !f.is_empty())
        .collect();
    let invalid: Vec<&str> = asked
        .iter()
        .copied()
        .filter(|f| *f != "*" && !ALL_FIELDS.contains(f))
        .collect();
    if !invalid.is_empty() {
        return Err(Judge0Error::bad_request(format!(
            "invalid fields: [{}]",
            invalid.join(", ")
        )));
    }
    if asked.contains(&"*") {
        return Ok(ALL_FIELDS.to_vec());
    }
    let chosen: Vec<&'static str> = ALL_FIELDS
        .iter()
        .copied()
        .filter(|f| asked.contains(f))
        .collect();
    Ok(if chosen.is_empty() {
        DEFAULT_FIELDS.to_vec()
    } else {
        chosen
    })
}

/// The Judge0 status of a job.
pub fn status_id(job: &Job) -> u8 {
    let Some(outcome) = job.outcome else {
        return match job.status {
            Status::Queued => 1,
            Status::Running => 2,
            _ => 13,
        };
    };
    match outcome {
        Outcome::Success if job.verdict == Some(Verdict::WrongAnswer) => 4,
        Outcome::Success => 3,
        Outcome::WallTimeLimit | Outcome::CpuTimeLimit => 5,
        Outcome::CompileError => 6,
        Outcome::Signal => match job.signal {
            Some(libc::SIGSEGV) => 7,
            Some(libc::SIGXFSZ) => 8,
            Some(libc::SIGFPE) => 9,
            Some(libc::SIGABRT) => 10,
            _ => 12,
        },
        // Judge0 writes output to a file of at most `max_file_size`: too much is SIGXFSZ.
        Outcome::OutputLimit => 8,
        Outcome::NonzeroExit => 11,
        Outcome::MemoryLimit => 12,
        Outcome::InvalidRequest => 14,
        Outcome::Cancelled | Outcome::LeaseExpired | Outcome::Shutdown | Outcome::RunnerError => 13,
    }
}

fn description(id: u8) -> &'static str {
    STATUSES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("Internal Error", |(_, d)| d)
}

/// Judge0's `message`: what isolate said of the run, in its words where kiln knows the same.
fn message(job: &Job) -> Option<String> {
    match job.outcome? {
        Outcome::Success | Outcome::CompileError => None,
        Outcome::NonzeroExit => job
            .exit_code
            .map(|code| format!("Exited with error status {code}")),
        Outcome::Signal => job
            .signal
            .map(|signal| format!("Caught fatal signal {signal}")),
        Outcome::WallTimeLimit => Some("Time limit exceeded (wall clock)".into()),
        Outcome::CpuTimeLimit => Some("Time limit exceeded".into()),
        Outcome::MemoryLimit => Some("Memory limit exceeded".into()),
        Outcome::OutputLimit => Some("Output limit exceeded".into()),
        Outcome::Cancelled => Some("Cancelled".into()),
        _ => Some(job.error.clone().unwrap_or_else(|| "Internal error".into())),
    }
}

/// Milliseconds as Judge0 shows seconds: a decimal string, `"0.012"`.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The fields that show what the job was given rather than what it did.
const INPUT: [&str; 3] = ["source_code", "stdin", "expected_output"];

/// Whether showing `fields` needs what the job was given, which is read apart from the job.
pub fn needs_input(fields: &[&str]) -> bool {
    fields.iter().any(|f| INPUT.contains(f))
}

/// A field Judge0 shows as text holds bytes that are not UTF-8, and base64 was not asked for;
/// Judge0 then refuses to show the submission.
#[derive(Debug)]
pub struct NotUtf8;

/// A stream of output as bytes, from the encoding it is stored in.
fn stream(text: &str, encoding: Encoding) -> Cow<'_, [u8]> {
    match encoding {
        Encoding::Utf8 => Cow::Borrowed(text.as_bytes()),
        Encoding::Base64 => Cow::Owned(STANDARD.decode(text).unwrap_or_default()),
    }
}

/// The bytes of a field Judge0 shows as text (or in base64), `None` for any other field; the
/// inner `None` is a field with nothing in it.
fn bytes_of<'a>(
    field: &str,
    job: &'a Job,
    input: Option<&'a JobInput>,
) -> Option<Option<Cow<'a, [u8]>>> {
    let compiled_badly = job.outcome == Some(Outcome::CompileError);
    let stdout = || stream(&job.stdout, job.stdout_encoding);
    let stderr = || stream(&job.stderr, job.stderr_encoding);
    // Judge0 leaves a field nothing was written to `null`.
    let written = |bytes: Cow<'a, [u8]>| (!bytes.is_empty()).then_some(bytes);
    let given = |content: &'a Content| written(Cow::Borrowed(content.as_bytes()));
    Some(match field {
        "stdout" if !compiled_badly => written(stdout()),
        "stderr" if !compiled_badly => written(stderr()),
        "stdout" | "stderr" => None,
        "compile_output" if compiled_badly => written(Cow::Owned([stdout(), stderr()].concat())),
        "compile_output" => None,
        "message" => message(job).map(|m| Cow::Owned(m.into_bytes())),
        "source_code" => input.and_then(|i| given(&i.code)),
        "stdin" => input.and_then(|i| given(&i.stdin)),
        "expected_output" => input
            .and_then(|i| i.expected_output.as_ref())
            .map(|e| Cow::Borrowed(e.as_bytes())),
        _ => return None,
    })
}

/// The submission a job is, with `fields`; `language` is the Judge0 id and name it answers to,
/// `input` what it was given (needed only for the fields [`needs_input`] names).
pub fn submission(
    job: &Job,
    input: Option<&JobInput>,
    language: (u32, &str),
    fields: &[&str],
    base64: bool,
) -> Result<Value, NotUtf8> {
    let id = status_id(job);
    let limits = &job.limits;
    let mut out = Map::new();
    for &field in fields {
        let value = match bytes_of(field, job, input) {
            Some(None) => Value::Null,
            Some(Some(bytes)) if base64 => json!(encode(&bytes)),
            Some(Some(bytes)) => json!(std::str::from_utf8(&bytes).map_err(|_| NotUtf8)?),
            None => match field {
                "token" => json!(job.id),
                "status" => json!({"id": id, "description": description(id)}),
                "status_id" => json!(id),
                "language" => json!({"id": language.0, "name": language.1}),
                "language_id" => json!(language.0),
                "time" => json!(job.cpu_ms.map(seconds)),
                "wall_time" => json!(job.wall_ms.map(seconds)),
                "memory" => json!(job.memory_kb),
                "exit_code" => json!(job.exit_code),
                "exit_signal" => json!(job.signal),
                "created_at" => json!(crate::job::time::rfc3339(job.created_at)),
                "finished_at" => json!(job.finished_at.map(crate::job::time::rfc3339)),
                "number_of_runs" => json!(1),
                "cpu_time_limit" => json!(seconds(limits.cpu_ms)),
                "cpu_extra_time" => json!(seconds(0)),
                "wall_time_limit" => json!(seconds(limits.wall_ms)),
                "memory_limit" => json!(limits.memory_mb * 1024),
                "max_processes_and_or_threads" => json!(limits.processes),
                "max_file_size" => json!(limits.file_bytes / 1024),
                "enable_per_process_and_thread_time_limit"
                | "enable_per_process_and_thread_memory_limit"
                | "redirect_stderr_to_stdout"
                | "enable_network" => json!(false),
                // What kiln has no counterpart of, or does not keep as given (docs/compat.md).
                _ => Value::Null,
            },
        };
        out.insert(field.to_owned(), value);
    }
    Ok(Value::Object(out))
}

/// What Judge0 PUTs to a submission's `callback_url` when it has ended: its default fields,
/// always in base64 (`isolate_job.rb#call_callback`).
pub fn callback(job: &Job) -> String {
    // Base64 shows any bytes, so there is no field it cannot show.
    submission(job, None, (0, ""), &DEFAULT_FIELDS, true)
        .unwrap_or_else(|NotUtf8| json!({"token": job.id}))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_the_default_set_a_chosen_few_or_every_v1_13_1_field() {
        assert_eq!(requested(None).expect("default"), DEFAULT_FIELDS);
        assert_eq!(requested(Some("")).expect("default"), DEFAULT_FIELDS);
        assert_eq!(
            requested(Some("stdout,token")).expect("chosen"),
            ["stdout", "token"]
        );
        assert_eq!(requested(Some("*")).expect("all").len(), 35);
        let Err(Judge0Error::Plain { message, .. }) = requested(Some("stdout,queue_host,x")) else {
            panic!("unknown fields are refused")
        };
        assert_eq!(message, "invalid fields: [queue_host, x]");
    }

    fn ended(outcome: Outcome, signal: Option<i32>, verdict: Option<Verdict>) -> Job {
        Job {
            id: crate::job::JobId::from_u128(1),
            status: outcome.status(),
            outcome: Some(outcome),
            runtime: "c".into(),
            attempt: 1,
            max_attempts: 1,
            priority: 0,
            created_at: 0,
            started_at: Some(0),
            finished_at: Some(1),
            exit_code: None,
            signal,
            stdout: String::new(),
            stdout_encoding: Encoding::Utf8,
            stderr: String::new(),
            stderr_encoding: Encoding::Utf8,
            stdout_truncated: false,
            stderr_truncated: false,
            wall_ms: Some(1),
            cpu_ms: Some(1),
            memory_kb: Some(1),
            limits: crate::job::Limits {
                wall_ms: 1,
                cpu_ms: 1,
                memory_mb: 1,
                processes: 1,
                output_bytes: 1,
                file_bytes: 1,
                cpu_percent: None,
            },
            error: None,
            progress: None,
            batch_id: None,
            case_name: None,
            verdict,
            verdict_detail: None,
            outputs: Vec::new(),
            files_out: None,
            files_omitted: Vec::new(),
        }
    }

    #[test]
    fn statuses_follow_judge0s_rules_for_what_kiln_recorded() {
        let signalled = |signal| status_id(&ended(Outcome::Signal, Some(signal), None));
        assert_eq!(signalled(libc::SIGSEGV), 7);
        assert_eq!(signalled(libc::SIGXFSZ), 8);
        assert_eq!(signalled(libc::SIGFPE), 9);
        assert_eq!(signalled(libc::SIGABRT), 10);
        assert_eq!(signalled(libc::SIGKILL), 12);
        let plain = |outcome| status_id(&ended(outcome, None, None));
        assert_eq!(plain(Outcome::Success), 3);
        assert_eq!(
            status_id(&ended(Outcome::Success, None, Some(Verdict::WrongAnswer))),
            4
        );
        assert_eq!(plain(Outcome::CpuTimeLimit), 5);
        assert_eq!(plain(Outcome::WallTimeLimit), 5);
        assert_eq!(plain(Outcome::CompileError), 6);
        assert_eq!(plain(Outcome::NonzeroExit), 11);
        assert_eq!(plain(Outcome::RunnerError), 13);
        assert_eq!(plain(Outcome::InvalidRequest), 14);
        let queued = Job {
            status: Status::Queued,
            outcome: None,
            ..ended(Outcome::Success, None, None)
        };
        assert_eq!(status_id(&queued), 1);
    }

    #[test]
    fn seconds_are_decimal_strings() {
        assert_eq!(seconds(12), "0.012");
        assert_eq!(seconds(2500), "2.500");
    }
}
