//! `kiln batch`: submits a test suite, and with `--wait` follows it to its end with a progress
//! bar, then prints a summary (totals by verdict, the cases that did not pass) and exits 0 only if
//! every case passed, so it drops into CI as a step. `--junit FILE` writes the report CI systems
//! ingest.
//!
//! `kiln watch BATCH_ID` lands here too: it prints each case's verdict as the case ends, then
//! the same summary. Both follow the batch's event stream; `--wait` falls back to long-polling
//! the batch if the server will not stream it.
//!
//! The suite file is the body of `POST /v1/batches`, except that `"code_file"` (the suite's, or
//! a case's) may name a file (relative to the suite) holding the code instead of `"code"`. A
//! file ending in `.ndjson` or `.jsonl` is a suite of lines, sent as a stream as it is read.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::api::{Api, REQUEST_SLACK, api_error, send, transport_error};
use super::interrupt::Interrupt;
use super::show::{print_json, print_stdout};
use super::stream::{self, Followed, Step};
use super::submit::read_text;
use super::watch::{is_not_found, print_stream_json};
use super::{ClientError, note};
use crate::cli::Conclusion;

/// How long one progress poll may be held by the server; the bar moves at least this often.
const PROGRESS_WAIT_SECS: u64 = 1;
/// Cases fetched per page of the summary.
const PAGE: u32 = 1000;
/// Failing cases listed in the summary before the rest are only counted.
const SHOWN_FAILURES: usize = 50;

pub(super) async fn run(
    api: &Api,
    json: bool,
    suite: &Path,
    wait: bool,
    junit: Option<&Path>,
    idempotency_key: Option<&str>,
) -> Result<Conclusion, ClientError> {
    // A code_file the streamed suite names but cannot be read ends the body early; this says why.
    let unreadable = Arc::new(Mutex::new(None));
    let mut request = api.http.post(api.url(&["batches"])).timeout(REQUEST_SLACK);
    request = if is_ndjson(suite) {
        request
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(stream_suite(suite, Arc::clone(&unreadable)).await?)
    } else {
        request.json(&load_suite(suite)?)
    };
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let wait = wait || junit.is_some();
    // Before the submit: a Ctrl-C during it then still gets the id shown.
    let mut interrupt = wait.then(Interrupt::listen).transpose()?;
    let accepted = match send(request).await {
        Ok(accepted) => accepted,
        Err(err) => {
            let why = unreadable.lock().ok().and_then(|mut why| why.take());
            return Err(why.unwrap_or(err));
        }
    };
    let total = accepted
        .get("cases")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let id = accepted
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::BadResponse {
            url: api.base.to_string(),
            detail: "the accepted batch has no \"id\"".to_owned(),
        })?
        .to_owned();
    let Some(interrupt) = &mut interrupt else {
        if json {
            print_json(&accepted)?;
        } else {
            print_stdout(|out| writeln!(out, "{id}"))?;
        }
        return Ok(Conclusion::Success);
    };
    note(&format!("batch {id} submitted; following it"));
    let batch = match interrupt
        .guard("the batch", &id, follow(api, &id, total))
        .await
    {
        Ok(Some(batch)) => batch,
        Ok(None) => return Ok(Conclusion::Interrupted),
        Err(err) => {
            note(&format!(
                "batch {id} was submitted; see it with `kiln watch {id}`"
            ));
            return Err(err);
        }
    };
    if let Some(path) = junit {
        let report = report(api, &id).await?;
        std::fs::write(path, report).map_err(|source| ClientError::WriteFile {
            path: path.to_owned(),
            source,
        })?;
        note(&format!("wrote the JUnit report to {}", path.display()));
    }
    if json {
        print_json(&batch)?;
    } else {
        show_summary(api, &id, &batch).await?;
    }
    Ok(conclusion(&batch))
}

/// `kiln watch` of a batch: each case's verdict as it ends (or, with `--json`, every stream
/// message as a line of JSON), then the summary.
pub(super) async fn watch(api: &Api, id: &str, json: bool) -> Result<Conclusion, ClientError> {
    let names: HashMap<String, String> = match cases(api, id, |_| true).await {
        Ok(cases) => cases
            .into_iter()
            .filter_map(|case| Some((text(&case, "job_id")?, text(&case, "name")?)))
            .collect(),
        Err(err) if is_not_found(&err, "batch_not_found") => {
            return Err(ClientError::Usage(format!(
                "no job or batch has the id {id}"
            )));
        }
        Err(err) => return Err(err),
    };
    let followed = stream::follow(api, &["batches", id, "events"], |step| {
        let Step::Message(message, data) = step else {
            return Ok(false);
        };
        if json {
            print_stream_json(message, data)?;
        } else if let Some(verdict) = case_verdict(&message.event, data) {
            let job = data.get("job_id").and_then(Value::as_str).unwrap_or("-");
            let name = names.get(job).map_or(job, String::as_str);
            print_stdout(|out| writeln!(out, "{verdict:<14}  {name}"))?;
        }
        Ok(ends_batch(message))
    })
    .await?;
    if let Followed::Refused(err) = followed {
        return Err(err);
    }
    let batch = send(
        api.http
            .get(api.url(&["batches", id]))
            .timeout(REQUEST_SLACK),
    )
    .await?;
    if !json {
        show_summary(api, id, &batch).await?;
    }
    Ok(conclusion(&batch))
}

/// A success only if the batch is done and every case passed.
fn conclusion(batch: &Value) -> Conclusion {
    let all_passed = batch.get("failed").and_then(Value::as_u64) == Some(0)
        && batch.get("done").and_then(Value::as_bool) == Some(true);
    if all_passed {
        Conclusion::Success
    } else {
        Conclusion::Failure
    }
}

async fn show_summary(api: &Api, id: &str, batch: &Value) -> Result<(), ClientError> {
    let failing = cases(api, id, |case| {
        case.get("verdict").and_then(Value::as_str) != Some("passed")
    })
    .await?;
    print_stdout(|out| summary(out, id, batch, &failing))
}

fn text(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// The verdict of a case whose end this stream message is; `None` for any other message.
fn case_verdict<'a>(event: &str, data: &'a Value) -> Option<&'a str> {
    data.get("job_id").and_then(Value::as_str)?;
    match event {
        // Cancelled and lost cases are not judged: their verdict is their end.
        "job.cancelled" => Some("cancelled"),
        "job.error" => Some("error"),
        "job.succeeded" | "job.failed" | "job.timed_out" => {
            data.get("data")?.get("verdict")?.as_str()
        }
        _ => None,
    }
}

fn ends_batch(message: &stream::SseMessage) -> bool {
    message.id.is_some() && message.event == "batch.completed"
}

/// The suite file as the request body, with each `code_file` (the suite's, and any case's) read
/// in.
fn load_suite(path: &Path) -> Result<Value, ClientError> {
    let text = read_text(path)?;
    let mut suite: Value = serde_json::from_str(&text).map_err(|err| {
        ClientError::Usage(format!("{} is not a JSON suite: {err}", path.display()))
    })?;
    let Some(fields) = suite.as_object_mut() else {
        return Err(ClientError::Usage(format!(
            "{} must hold a JSON object",
            path.display()
        )));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    read_code_file(fields, base, "the suite")?;
    if let Some(Value::Array(cases)) = fields.get_mut("cases") {
        for (index, case) in cases.iter_mut().enumerate() {
            if let Some(case) = case.as_object_mut() {
                read_code_file(case, base, &format!("case {}", index + 1))?;
            }
        }
    }
    Ok(suite)
}

/// True for a suite file of lines (NDJSON), sent as a stream rather than whole.
fn is_ndjson(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("ndjson" | "jsonl")
    )
}

/// The NDJSON suite file as a request body read a line at a time as it is sent, each line's
/// `code_file` read in on the way. A line that is not a JSON object goes as it is, for the
/// server to refuse by its number; a `code_file` that cannot be read ends the body, and its
/// error is left in `unreadable`.
async fn stream_suite(
    path: &Path,
    unreadable: Arc<Mutex<Option<ClientError>>>,
) -> Result<reqwest::Body, ClientError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| ClientError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let shown = path.display().to_string();
    let lines = tokio::io::BufReader::new(file).lines();
    let body = futures_util::stream::unfold(Some((lines, 0u64)), move |state| {
        let (base, shown, unreadable) = (base.clone(), shown.clone(), Arc::clone(&unreadable));
        async move {
            let (mut lines, number) = state?;
            let number = number + 1;
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), None)),
            };
            match with_code(line, &base, &format!("{shown} line {number}")) {
                Ok(mut line) => {
                    line.push('\n');
                    Some((Ok(bytes::Bytes::from(line)), Some((lines, number))))
                }
                Err(err) => {
                    let message = err.to_string();
                    if let Ok(mut slot) = unreadable.lock() {
                        *slot = Some(err);
                    }
                    Some((Err(std::io::Error::other(message)), None))
                }
            }
        }
    });
    Ok(reqwest::Body::wrap_stream(body))
}

/// The line with its `code_file` read in, if it is a JSON object that names one.
fn with_code(line: String, base: &Path, whose: &str) -> Result<String, ClientError> {
    // Most lines carry their code inline: they go as they are, without being parsed and written
    // again.
    if !line.contains("\"code_file\"") {
        return Ok(line);
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&line) else {
        return Ok(line);
    };
    if !fields.contains_key("code_file") {
        return Ok(line);
    }
    read_code_file(&mut fields, base, whose)?;
    Ok(Value::Object(fields).to_string())
}

/// Replaces `code_file` in `fields` by `code`, read from that file relative to `base`.
fn read_code_file(
    fields: &mut serde_json::Map<String, Value>,
    base: &Path,
    whose: &str,
) -> Result<(), ClientError> {
    let Some(code_file) = fields.remove("code_file") else {
        return Ok(());
    };
    let Some(name) = code_file.as_str() else {
        return Err(ClientError::Usage(format!(
            "{whose}: code_file must be a file name"
        )));
    };
    if fields.contains_key("code") {
        return Err(ClientError::Usage(format!(
            "{whose}: give either code or code_file, not both"
        )));
    }
    let code = read_text(&base.join(PathBuf::from(name)))?;
    fields.insert("code".to_owned(), Value::String(code));
    Ok(())
}

/// Follows the batch to its end, moving a progress bar on stderr (drawn only on a terminal)
/// as its cases end, and returns the batch as it ended. The bar is fed by the batch's event
/// stream, or by long-polling if the server will not stream it.
async fn follow(api: &Api, id: &str, total: usize) -> Result<Value, ClientError> {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} cases  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut done, mut passed) = (0, 0);
    let followed = stream::follow(api, &["batches", id, "events"], |step| {
        let Step::Message(message, data) = step else {
            return Ok(false);
        };
        if let Some(verdict) = case_verdict(&message.event, data) {
            done += 1;
            passed += u64::from(verdict == "passed");
            bar.set_position(done);
            bar.set_message(format!("{passed} passed, {} failed", done - passed));
        }
        Ok(ends_batch(message))
    })
    .await?;
    if let Followed::Refused(err) = followed {
        note(&format!("{err}; following the batch by polling instead"));
    }
    // At once if the stream saw the batch to its end.
    poll(api, id, &bar).await
}

/// Long-polls the batch until it is done, moving the progress bar.
async fn poll(api: &Api, id: &str, bar: &indicatif::ProgressBar) -> Result<Value, ClientError> {
    loop {
        let request = api
            .http
            .get(api.url(&["batches", id]))
            .query(&[("wait", PROGRESS_WAIT_SECS)])
            .timeout(Duration::from_secs(PROGRESS_WAIT_SECS) + REQUEST_SLACK);
        let batch = send(request).await?;
        let number = |name: &str| batch.get(name).and_then(Value::as_u64).unwrap_or(0);
        let progress = batch.get("progress");
        let done = progress
            .and_then(|p| p.get("done"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if let Some(total) = progress
            .and_then(|p| p.get("total"))
            .and_then(Value::as_u64)
        {
            bar.set_length(total);
        }
        bar.set_position(done);
        bar.set_message(format!(
            "{} passed, {} failed",
            number("passed"),
            number("failed")
        ));
        if batch.get("done").and_then(Value::as_bool) != Some(false) {
            bar.finish_and_clear();
            return Ok(batch);
        }
    }
}

/// The cases `keep` accepts, in suite order.
async fn cases(
    api: &Api,
    id: &str,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>, ClientError> {
    let mut kept = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut request = api
            .http
            .get(api.url(&["batches", id, "cases"]))
            .query(&[("limit", PAGE)])
            .timeout(REQUEST_SLACK);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        let page = send(request).await?;
        let cases = page
            .get("cases")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        kept.extend(cases.into_iter().filter(&keep));
        match page.get("next_after").and_then(Value::as_u64) {
            Some(next) => after = Some(next),
            None => return Ok(kept),
        }
    }
}

async fn report(api: &Api, id: &str) -> Result<String, ClientError> {
    let response = api
        .http
        .get(api.url(&["batches", id, "report"]))
        .query(&[("format", "junit")])
        .timeout(REQUEST_SLACK)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let body = response.bytes().await.map_err(transport_error)?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    String::from_utf8(body.to_vec()).map_err(|err| ClientError::BadResponse {
        url: api.base.to_string(),
        detail: format!("the report is not UTF-8: {err}"),
    })
}

/// The totals by verdict, then one line per case that did not pass.
fn summary(
    out: &mut impl Write,
    id: &str,
    batch: &Value,
    failing: &[Value],
) -> std::io::Result<()> {
    let number = |name: &str| batch.get(name).and_then(Value::as_u64).unwrap_or(0);
    let total = batch
        .get("progress")
        .and_then(|p| p.get("total"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    writeln!(
        out,
        "batch {id}: {} of {total} passed, {} failed",
        number("passed"),
        number("failed")
    )?;
    if let Some(verdicts) = batch.get("by_verdict").and_then(Value::as_object) {
        for (verdict, count) in verdicts {
            let count = count.as_u64().unwrap_or(0);
            if count > 0 {
                writeln!(out, "  {verdict:<14} {count:>6}")?;
            }
        }
    }
    if failing.is_empty() {
        return Ok(());
    }
    let width = failing
        .iter()
        .take(SHOWN_FAILURES)
        .filter_map(|case| case.get("name").and_then(Value::as_str))
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 40);
    writeln!(out)?;
    writeln!(out, "{:<width$}  {:<14}  detail", "case", "verdict")?;
    for case in failing.iter().take(SHOWN_FAILURES) {
        let text = |name: &str| case.get(name).and_then(Value::as_str).unwrap_or("-");
        let verdict = case
            .get("verdict")
            .and_then(Value::as_str)
            .unwrap_or_else(|| text("status"));
        writeln!(
            out,
            "{:<width$}  {verdict:<14}  {}",
            text("name"),
            text("detail")
        )?;
    }
    if failing.len() > SHOWN_FAILURES {
        writeln!(out, "... and {} more", failing.len() - SHOWN_FAILURES)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_summary_lists_totals_and_the_cases_that_did_not_pass() {
        let batch = json!({"passed": 2, "failed": 1, "progress": {"done": 3, "total": 3},
            "by_verdict": {"passed": 2, "wrong_answer": 1, "timed_out": 0}});
        let failing = [json!({"name": "sums", "verdict": "wrong_answer",
            "detail": "line 1, column 1: expected \"3\", got \"4\""})];
        let mut out = Vec::new();
        summary(&mut out, "b1", &batch, &failing).expect("write");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "batch b1: 2 of 3 passed, 1 failed\n  \
             passed              2\n  \
             wrong_answer        1\n\n\
             case  verdict         detail\n\
             sums  wrong_answer    line 1, column 1: expected \"3\", got \"4\"\n"
        );
    }

    #[test]
    fn a_cases_end_carries_its_verdict_and_nothing_else_does() {
        let ended = |verdict: Value| json!({"job_id": "j1", "data": {"verdict": verdict}});
        assert_eq!(
            case_verdict("job.failed", &ended(json!("wrong_answer"))),
            Some("wrong_answer")
        );
        assert_eq!(
            case_verdict("job.succeeded", &ended(json!("passed"))),
            Some("passed")
        );
        let unjudged = json!({"job_id": "j1", "data": {"outcome": "cancelled"}});
        assert_eq!(case_verdict("job.cancelled", &unjudged), Some("cancelled"));
        assert_eq!(case_verdict("job.started", &unjudged), None);
        let batch_event = json!({"job_id": null, "data": {"passed": 2}});
        assert_eq!(case_verdict("batch.completed", &batch_event), None);
    }

    #[test]
    fn code_file_is_read_relative_to_the_suite() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("sol.py"), "print(1)").expect("code");
        let suite = dir.path().join("suite.json");
        std::fs::write(
            &suite,
            r#"{"runtime": "python", "code_file": "sol.py", "cases": [{}]}"#,
        )
        .expect("suite");
        let body = load_suite(&suite).expect("loads");
        assert_eq!(body["code"], "print(1)");
        assert!(body.get("code_file").is_none());
    }

    #[test]
    fn each_case_may_name_its_own_code_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.py"), "print('a')").expect("code");
        let suite = dir.path().join("suite.json");
        std::fs::write(
            &suite,
            r#"{"runtime": "python", "cases": [{"code_file": "a.py"}, {"code": "pass"}]}"#,
        )
        .expect("suite");
        let body = load_suite(&suite).expect("loads");
        assert_eq!(body["cases"][0]["code"], "print('a')");
        assert_eq!(body["cases"][1]["code"], "pass");

        std::fs::write(
            &suite,
            r#"{"runtime": "python", "cases": [{}, {"code_file": "a.py", "code": "x"}]}"#,
        )
        .expect("suite");
        let refused = load_suite(&suite).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(
            refused,
            Err("case 2: give either code or code_file, not both".to_owned())
        );
    }
}
