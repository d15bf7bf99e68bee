//! How the client shows a job and its events to a person: one line per job or event, the stored
//! output after it, and the notes that tell what was cut. Everything goes through
//! [`cli::print`], so a reader that went away ends nothing.

use std::io::{self, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::{ClientError, note, paint};
use crate::cli;
use crate::job::content::Encoding;

/// `<id>  <status> (<outcome>)  exit <code>  <wall> ms  <runtime>`, and for a suite's case
/// `case "<name>"  <verdict>: <detail>`, leaving out what the job does not have yet (a queued
/// job has no outcome, exit code, time or verdict).
pub(super) fn job_line(job: &Value) -> String {
    job_line_in(job, false)
}

/// [`job_line`], its status and verdict coloured if `colour`.
pub(super) fn job_line_in(job: &Value, colour: bool) -> String {
    let text = |name: &str| job.get(name).and_then(Value::as_str);
    let number = |name: &str| job.get(name).and_then(Value::as_i64);
    let mut parts = vec![text("id").unwrap_or("?").to_owned()];
    let status = text("status").unwrap_or("?");
    // "cancelled (cancelled)" says nothing twice.
    let shown = match text("outcome") {
        Some(outcome) if outcome != status => format!("{status} ({outcome})"),
        _ => status.to_owned(),
    };
    parts.push(paint::with(colour, status, &shown));
    if let Some(code) = number("exit_code") {
        parts.push(format!("exit {code}"));
    } else if let Some(signal) = number("signal") {
        parts.push(format!("signal {signal}"));
    }
    if let Some(wall) = number("wall_ms") {
        parts.push(format!("{wall} ms"));
    }
    if let Some(runtime) = text("runtime") {
        parts.push(runtime.to_owned());
    }
    if let Some(attempt) = number("attempt").filter(|&attempt| attempt > 1) {
        parts.push(format!("attempt {attempt}"));
    }
    if let Some(case) = text("case_name") {
        parts.push(format!("case {case:?}"));
    }
    if let Some(verdict) = text("verdict") {
        let shown = paint::with(colour, verdict, verdict);
        parts.push(match text("verdict_detail") {
            Some(detail) => format!("{shown}: {detail}"),
            None => shown,
        });
    }
    parts.join("  ")
}

/// What a job waited on is doing, for a spinner: `queued`, `running (attempt 2) 40% linking`.
pub(super) fn state_line(job: &Value) -> String {
    let id = job.get("id").and_then(Value::as_str).unwrap_or("?");
    let status = job.get("status").and_then(Value::as_str).unwrap_or("?");
    let mut line = format!("job {id} {status}");
    if let Some(attempt) = job
        .get("attempt")
        .and_then(Value::as_i64)
        .filter(|&attempt| attempt > 1)
    {
        line.push_str(&format!(" (attempt {attempt})"));
    }
    if let Some(progress) = job.get("progress").filter(|p| !p.is_null()) {
        let percent = progress.get("percent").and_then(Value::as_u64).unwrap_or(0);
        let message = progress
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("");
        line.push_str(&format!("  {percent}% {message}"));
    }
    line
}

/// `<event id>  [<job id>]  <at>  <type>  attempt <n>  <data>`.
pub(super) fn event_line(event: &Value, with_job: bool) -> String {
    let field = |name: &str| match event.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let mut parts = vec![field("id")];
    if with_job {
        parts.push(field("job_id"));
    }
    parts.push(field("at"));
    parts.push(field("type"));
    parts.push(format!("attempt {}", field("attempt")));
    match event.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) if map.is_empty() => {}
        Some(data) => parts.push(data.to_string()),
    }
    parts.join("  ")
}

pub(super) fn show_job(job: &Value, json: bool) -> Result<(), ClientError> {
    if json {
        return print_json(job);
    }
    let line = job_line_in(job, paint::enabled());
    print_stdout(|out| writeln!(out, "{line}"))?;
    show_output(job)
}

/// The job's stored error, stdout and stderr (the exact bytes the program wrote, whatever
/// their encoding in the JSON), and whether they were cut at the limit.
pub(super) fn show_output(job: &Value) -> Result<(), ClientError> {
    let error = job
        .get("error")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty());
    let stdout = stored_output(job, "stdout")?;
    print_stdout(|out| {
        if let Some(error) = error {
            writeln!(out, "error: {error}")?;
        }
        out.write_all(&stdout)
    })?;
    // Nowhere better to report a failing stderr, so the write is best effort.
    let _ = io::stderr()
        .lock()
        .write_all(&stored_output(job, "stderr")?);
    let limit = job
        .get("limits")
        .and_then(|limits| limits.get("output_bytes"))
        .and_then(Value::as_u64);
    for stream in ["stdout", "stderr"] {
        let truncated = job
            .get(format!("{stream}_truncated"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if truncated {
            note(&match limit {
                Some(limit) => format!("the job's {stream} was cut at its limit of {limit} bytes"),
                None => format!("the job's {stream} was cut at its output limit"),
            });
        }
    }
    Ok(())
}

/// The runtimes of `GET /v1/runtimes`, one line each: name, version, whether it compiles, its
/// aliases and extensions, and the memory and wall-clock limits its jobs get by default.
pub(super) fn runtimes(out: &mut impl Write, listing: &Value) -> io::Result<()> {
    let runtimes = listing.get("runtimes").and_then(Value::as_array);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let words = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    for runtime in runtimes.into_iter().flatten() {
        let defaults = &runtime["limits"]["default"];
        let mut line = format!("{:<12} {}", text(runtime, "name"), text(runtime, "version"));
        if runtime["compiled"] == true {
            line.push_str("  (compiled)");
        }
        let aliases = words(runtime, "aliases");
        if !aliases.is_empty() {
            line.push_str(&format!("  aliases: {aliases}"));
        }
        let extensions = words(runtime, "extensions");
        if !extensions.is_empty() {
            line.push_str(&format!("  files: {extensions}"));
        }
        if let (Some(memory), Some(wall)) =
            (defaults["memory_mb"].as_u64(), defaults["wall_ms"].as_u64())
        {
            line.push_str(&format!("  default {memory} MiB, {wall} ms"));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The bytes of one of a job's streams: its text, or its base64 decoded where its
/// `{stream}_encoding` says so.
pub(super) fn stored_output(job: &Value, stream: &str) -> Result<Vec<u8>, ClientError> {
    let text = job.get(stream).and_then(Value::as_str).unwrap_or_default();
    let encoding = job
        .get(format!("{stream}_encoding"))
        .and_then(Value::as_str);
    decoded(text, encoding).map_err(|error| ClientError::BadResponse {
        url: format!(
            "/v1/jobs/{}",
            job.get("id").and_then(Value::as_str).unwrap_or("?")
        ),
        detail: format!("{stream} is not valid base64: {error}"),
    })
}

/// The bytes output stands for: the text itself, or its base64 decoded where `encoding` says.
pub(super) fn decoded(text: &str, encoding: Option<&str>) -> Result<Vec<u8>, base64::DecodeError> {
    if encoding == Some(Encoding::Base64.as_str()) {
        return STANDARD.decode(text);
    }
    Ok(text.as_bytes().to_vec())
}

pub(super) fn print_json(value: &Value) -> Result<(), ClientError> {
    print_stdout(|out| {
        serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
        writeln!(out)
    })
}

/// [`cli::print`], failing with this layer's error.
pub(super) fn print_stdout(
    write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> Result<(), ClientError> {
    cli::print(write).map_err(ClientError::Output)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_runtime_line_says_its_version_build_aliases_files_and_defaults() {
        let listing = json!({"runtimes": [
            {"name": "java", "version": "openjdk version \"17.0.15\"", "compiled": true,
             "aliases": [], "extensions": [".java"],
             "limits": {"default": {"memory_mb": 512, "wall_ms": 10000}}},
            {"name": "python", "version": null, "compiled": false, "aliases": ["python3"],
             "extensions": [".py"], "limits": {"default": {"memory_mb": 512, "wall_ms": 10000}}},
        ]});
        let mut out = Vec::new();
        runtimes(&mut out, &listing).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "java         openjdk version \"17.0.15\"  (compiled)  files: .java  default 512 MiB, \
             10000 ms\npython         aliases: python3  files: .py  default 512 MiB, 10000 ms\n"
        );
    }

    #[test]
    fn finished_job_line_has_every_part() {
        let job = json!({
            "id": "0190-abc", "status": "succeeded", "outcome": "success", "runtime": "python",
            "attempt": 1, "exit_code": 0, "signal": null, "wall_ms": 123,
        });
        assert_eq!(
            job_line(&job),
            "0190-abc  succeeded (success)  exit 0  123 ms  python"
        );
    }
    #[test]
    fn a_case_s_line_ends_with_its_verdict_and_why() {
        let case = json!({
            "id": "0190-abc", "status": "failed", "outcome": "nonzero_exit", "runtime": "python",
            "attempt": 1, "exit_code": 1, "wall_ms": 20, "case_name": "HumanEval/0#1",
            "verdict": "runtime_error", "verdict_detail": "exit code 1: AssertionError",
        });
        assert_eq!(
            job_line(&case),
            "0190-abc  failed (nonzero_exit)  exit 1  20 ms  python  case \"HumanEval/0#1\"  \
             runtime_error: exit code 1: AssertionError"
        );
    }
    #[test]
    fn job_line_leaves_out_what_a_job_does_not_have() {
        let queued = json!({"id": "j1", "status": "queued", "outcome": null, "runtime": "bash",
            "attempt": 0, "exit_code": null, "signal": null, "wall_ms": null});
        assert_eq!(job_line(&queued), "j1  queued  bash");

        let killed = json!({"id": "j2", "status": "failed", "outcome": "signal", "runtime": "bash",
            "attempt": 2, "exit_code": null, "signal": 9, "wall_ms": 40});
        assert_eq!(
            job_line(&killed),
            "j2  failed (signal)  signal 9  40 ms  bash  attempt 2"
        );
    }
    #[test]
    fn event_lines() {
        let event = json!({"id": 7, "job_id": "j1", "at": "2025-01-01T00:00:00.000Z",
            "type": "finished", "attempt": 1, "data": {"exit_code": 0}});
        assert_eq!(
            event_line(&event, false),
            r#"7  2025-01-01T00:00:00.000Z  finished  attempt 1  {"exit_code":0}"#
        );
        let queued = json!({"id": 1, "job_id": "j1", "at": "t", "type": "queued",
            "attempt": null, "data": {}});
        assert_eq!(event_line(&queued, true), "1  j1  t  queued  attempt -");
    }
}
