//! `kiln watch`: follows a job's event stream to its end, putting its output where the job wrote
//! it and everything else on stderr as notes. Given a batch's id, it hands over to the batch's own
//! watch.
//!
//! The server sends a late watcher the current run's output from its start, but output is not
//! stored piece by piece, so the live view can still miss some (a chunk skipped while the client
//! fell behind, a run longer than the server keeps). So the watcher keeps what it was shown of
//! the last attempt, and once the job has ended prints whatever its stored result holds beyond
//! that: the output seen once, and all of it. A new attempt (after a restart or a retry) is
//! marked where it begins, since its output starts again from nothing.

use std::io::{self, Write};

use reqwest::StatusCode;
use serde_json::Value;

use super::api::Api;
use super::show::{decoded, event_line, job_line, print_stdout, show_output, stored_output};
use super::stream::{self, Step};
use super::{ClientError, Conclusion, batch, conclusion, note};

/// Follows a job, or else a batch, with this id to its end. Job and batch ids look alike, so
/// the server is asked: a job's stream first, and a batch's if there is no such job.
pub(super) async fn watch(api: &Api, id: &str, json: bool) -> Result<Conclusion, ClientError> {
    match watch_job(api, id, json).await {
        Ok(job) => {
            if json {
                let line = serde_json::json!({"id": null, "event": "job", "data": job});
                print_stdout(|out| writeln!(out, "{line}"))?;
            } else {
                // On stderr, so stdout holds the job's output and nothing else.
                eprintln_best_effort(&job_line(&job));
            }
            Ok(conclusion(&job))
        }
        Err(err) if is_not_found(&err, "job_not_found") => batch::watch(api, id, json).await,
        Err(err) => Err(err),
    }
}

/// Follows a job's event stream to the job's end and returns the job as it ended.
async fn watch_job(api: &Api, id: &str, json: bool) -> Result<Value, ClientError> {
    let mut seen = Seen::default();
    let followed = stream::follow(api, &["jobs", id, "events"], |step| match step {
        Step::Reopened => {
            seen.reopened();
            Ok(false)
        }
        Step::Message(message, data) => {
            if json {
                print_stream_json(message, data)?;
            } else {
                seen.show(&message.event, data)?;
            }
            Ok(message.id.is_some() && is_terminal_event(&message.event))
        }
    })
    .await?;
    if let stream::Followed::Refused(err) = followed {
        return Err(err);
    }
    let job = api.get_job(id, None).await?;
    if !json {
        seen.finish(&job)?;
    }
    Ok(job)
}

/// What the watcher was shown of the job's last attempt, per stream.
#[derive(Default)]
struct Seen {
    /// Why the attempt before the next one ended, from its `job.retrying`.
    retried_because: Option<String>,
    stdout: Output,
    stderr: Output,
    /// Whether anything was shown since the last line break, on either stream.
    open_line: bool,
}

#[derive(Default)]
struct Output {
    /// The bytes shown, exactly as the job wrote them.
    shown: Vec<u8>,
    /// Bytes of a replay still to skip: shown before the stream was reopened.
    skip: usize,
    /// Some of this attempt's output was not shown (skipped by the server).
    gap: bool,
}

impl Output {
    /// The part of `bytes` not shown yet, taken as shown.
    fn take_new<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let skipped = self.skip.min(bytes.len());
        self.skip -= skipped;
        let new = &bytes[skipped..];
        self.shown.extend_from_slice(new);
        new
    }

    /// What of the stored output was not shown live, and whether it is all of it (the live view
    /// missed a part, so only the whole is true).
    fn unshown<'a>(&self, stored: &'a [u8]) -> (&'a [u8], bool) {
        if !self.gap {
            if let Some(rest) = stored.strip_prefix(self.shown.as_slice()) {
                return (rest, false);
            }
            // Shown more than was stored: the stored output was cut at its limit.
            if self.shown.starts_with(stored) {
                return (&[], false);
            }
        }
        (stored, true)
    }
}

impl Seen {
    fn reopened(&mut self) {
        for output in [&mut self.stdout, &mut self.stderr] {
            output.skip = output.shown.len();
        }
    }

    /// Puts one stream message where a person watching wants it: output where the job wrote
    /// it, a marker where a new attempt begins, everything else as a note.
    fn show(&mut self, event: &str, data: &Value) -> Result<(), ClientError> {
        let text = |name: &str| data.get(name).and_then(Value::as_str).unwrap_or_default();
        // A piece that is not UTF-8 comes in base64; a malformed one is shown as it came.
        let output = || {
            decoded(text("data"), data.get("encoding").and_then(Value::as_str))
                .unwrap_or_else(|_| text("data").as_bytes().to_vec())
        };
        match event {
            "output" if text("stream") == "stderr" => {
                let output = output();
                let new = self.stderr.take_new(&output);
                self.note_open_line(new);
                // Nowhere better to report a failing stderr, so the write is best effort.
                let _ = io::stderr().lock().write_all(new);
            }
            "output" => {
                let output = output();
                let new = self.stdout.take_new(&output);
                self.note_open_line(new);
                print_stdout(|out| out.write_all(new))?;
            }
            "output.lost" => {
                self.stdout.gap = true;
                self.stderr.gap = true;
                self.note(&format!(
                    "{} output chunks were skipped live; the stored output follows at the end",
                    data.get("chunks").unwrap_or(&Value::Null)
                ));
            }
            "job.progress" => {
                let progress = data.get("data").unwrap_or(&Value::Null);
                let percent = progress.get("percent").unwrap_or(&Value::Null);
                let message = progress.get("message").and_then(Value::as_str);
                self.note(&format!(
                    "progress {percent}% {}",
                    message.unwrap_or_default()
                ));
            }
            "job.retrying" => {
                self.retried_because = data
                    .get("data")
                    .and_then(|d| d.get("reason"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.note(&event_line(data, false));
            }
            "job.started" => {
                let attempt = data.get("attempt").and_then(Value::as_i64).unwrap_or(1);
                if attempt > 1 {
                    let why = self
                        .retried_because
                        .take()
                        .unwrap_or_else(|| "unknown".into());
                    self.line_break();
                    eprintln_best_effort(&format!("--- attempt {attempt} (previous: {why}) ---"));
                }
                self.stdout = Output::default();
                self.stderr = Output::default();
                self.note(&event_line(data, false));
            }
            _ => self.note(&event_line(data, false)),
        }
        Ok(())
    }

    fn note_open_line(&mut self, shown: &[u8]) {
        if let Some(&last) = shown.last() {
            self.open_line = last != b'\n';
        }
    }

    /// Ends a line the job's output left open, so a note does not stick to it.
    fn line_break(&mut self) {
        if std::mem::take(&mut self.open_line) {
            eprintln_best_effort("");
        }
    }

    fn note(&mut self, message: &str) {
        self.line_break();
        note(message);
    }

    /// Shows what the job's stored result holds that was not shown live.
    fn finish(&mut self, job: &Value) -> Result<(), ClientError> {
        if self.stdout.shown.is_empty() && self.stderr.shown.is_empty() && !self.stdout.gap {
            // Nothing was seen live (the job ran before we looked): show what it stored.
            return show_output(job);
        }
        let (stored_stdout, stored_stderr) =
            (stored_output(job, "stdout")?, stored_output(job, "stderr")?);
        let (stdout, whole) = self.stdout.unshown(&stored_stdout);
        if whole && !stdout.is_empty() {
            self.note("the stored stdout in full, as the live view missed part of it:");
        }
        print_stdout(|out| out.write_all(stdout))?;
        self.note_open_line(stdout);
        let (stderr, whole) = self.stderr.unshown(&stored_stderr);
        if whole && !stderr.is_empty() {
            self.note("the stored stderr in full, as the live view missed part of it:");
        }
        let _ = io::stderr().lock().write_all(stderr);
        self.note_open_line(stderr);
        self.line_break();
        Ok(())
    }
}

fn eprintln_best_effort(line: &str) {
    // Nowhere better to report a failing stderr.
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// One stream message as a line of JSON, for `watch --json`.
pub(super) fn print_stream_json(
    message: &stream::SseMessage,
    data: &Value,
) -> Result<(), ClientError> {
    let line = serde_json::json!({"id": message.id, "event": message.event, "data": data});
    print_stdout(|out| writeln!(out, "{line}"))
}

/// True if the server said there is no such thing, with this error code.
pub(super) fn is_not_found(err: &ClientError, code: &str) -> bool {
    matches!(err, ClientError::Api { status, code: Some(c), .. }
        if *status == StatusCode::NOT_FOUND && c == code)
}

pub(super) fn is_terminal_event(event: &str) -> bool {
    matches!(
        event,
        "job.succeeded" | "job.failed" | "job.timed_out" | "job.cancelled" | "job.error"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_after_reopening_skips_what_was_shown() {
        let mut out = Output::default();
        assert_eq!(out.take_new(b"one\n"), b"one\n");
        out.skip = out.shown.len();
        assert_eq!(out.take_new(b"one\n"), b"");
        assert_eq!(out.take_new(b"two\n"), b"two\n");
        assert_eq!(out.shown, b"one\ntwo\n");
    }

    #[test]
    fn the_stored_output_adds_only_what_was_not_shown() {
        let mut out = Output::default();
        out.take_new(b"a\nb\n");
        assert_eq!(out.unshown(b"a\nb\nc\n"), (b"c\n".as_slice(), false));
        assert_eq!(
            out.unshown(b"a\n"),
            (b"".as_slice(), false),
            "stored cut at its limit"
        );
        assert_eq!(
            out.unshown(b"x\n"),
            (b"x\n".as_slice(), true),
            "not what was shown"
        );
        out.gap = true;
        assert_eq!(out.unshown(b"a\nb\nc\n"), (b"a\nb\nc\n".as_slice(), true));
    }
}
