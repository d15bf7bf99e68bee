//! `kiln watch`: follows a job's event stream to its end, putting its output where the job wrote
//! it and everything else on stderr as notes. Given a batch's id, it hands over to the batch's own
//! watch.

use std::io::{self, Write};

use reqwest::StatusCode;
use serde_json::Value;

use super::api::Api;
use super::show::{event_line, job_line, print_stdout, show_output};
use super::{ClientError, Conclusion, batch, conclusion, note, stream};

/// Follows a job, or else a batch, with this id to its end. Job and batch ids look alike, so
/// the server is asked: a job's stream first, and a batch's if there is no such job.
pub(super) async fn watch(api: &Api, id: &str, json: bool) -> Result<Conclusion, ClientError> {
    match watch_job(api, id, json).await {
        Ok(job) => {
            if !json {
                print_stdout(|out| writeln!(out, "{}", job_line(&job)))?;
            }
            Ok(conclusion(&job))
        }
        Err(err) if is_not_found(&err, "job_not_found") => batch::watch(api, id, json).await,
        Err(err) => Err(err),
    }
}

/// Follows a job's event stream to the job's end and returns the job as it ended.
async fn watch_job(api: &Api, id: &str, json: bool) -> Result<Value, ClientError> {
    let mut saw_output = false;
    let followed = stream::follow(api, &["jobs", id, "events"], |message, data| {
        if json {
            print_stream_json(message, data)?;
        } else {
            saw_output |= message.event == "output";
            show_stream_message(&message.event, data)?;
        }
        Ok(message.id.is_some() && is_terminal_event(&message.event))
    })
    .await?;
    if let stream::Followed::Refused(err) = followed {
        return Err(err);
    }
    let job = api.get_job(id, None).await?;
    if !json && !saw_output {
        // Nothing was seen live (the job ran before we looked): show what it stored.
        show_output(&job)?;
    }
    Ok(job)
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

fn is_terminal_event(event: &str) -> bool {
    matches!(
        event,
        "job.succeeded" | "job.failed" | "job.timed_out" | "job.cancelled" | "job.error"
    )
}

/// Puts one stream message where a person watching wants it: output where the job wrote it,
/// everything else as a note.
fn show_stream_message(event: &str, data: &Value) -> Result<(), ClientError> {
    let text = |name: &str| data.get(name).and_then(Value::as_str).unwrap_or_default();
    match event {
        "output" if text("stream") == "stderr" => {
            // Nowhere better to report a failing stderr, so the write is best effort.
            let _ = io::stderr().lock().write_all(text("data").as_bytes());
        }
        "output" => print_stdout(|out| out.write_all(text("data").as_bytes()))?,
        "output.lost" => note(&format!(
            "{} output chunks were skipped while this client fell behind",
            data.get("chunks").unwrap_or(&Value::Null)
        )),
        "job.progress" => {
            let progress = data.get("data").unwrap_or(&Value::Null);
            let percent = progress.get("percent").unwrap_or(&Value::Null);
            let message = progress.get("message").and_then(Value::as_str);
            note(&format!(
                "progress {percent}% {}",
                message.unwrap_or_default()
            ));
        }
        _ => note(&event_line(data, false)),
    }
    Ok(())
}
