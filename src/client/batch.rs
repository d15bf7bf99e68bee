//! `kiln batch`: submits a test suite, and with `--wait` follows it to its end with a progress
//! bar, then prints a summary (totals by verdict, the cases that did not pass) and exits 0 only if
//! every case passed, so it drops into CI as a step. `--junit FILE` writes the report CI systems
//! ingest.
//!
//! `kiln watch BATCH_ID` lands here too: it prints each case's verdict as the case ends, then
//! the same summary. Both follow the batch's event stream; `--wait` falls back to long-polling
//! the batch if the server will not stream it. So do `kiln status`, `cancel` and `events` given
//! a batch's id, and `kiln batch cancel|report|cases ID` work on a batch already submitted.
//!
//! Progress is for a person: a bar on a terminal, and where there is none (a CI log) a line
//! `n/N cases done` when the first case ends, at most every few seconds after, and at the end.
//!
//! The suite file is the body of `POST /v1/batches`, except that `"code_file"` (the suite's, or
//! a case's) may name a file (relative to the suite) holding the code instead of `"code"`. A
//! file ending in `.ndjson` or `.jsonl` is a suite of lines, sent as a stream as it is read.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::api::{Api, REQUEST_SLACK, api_error_from, content_type, send, transport_error};
use super::interrupt::Interrupt;
use super::show::{print_json, print_stdout};
use super::stream::{self, Followed, Step};
use super::submit::read_content;
use super::watch::{is_not_found, print_stream_json};
use super::{ClientError, ClientOpts, Wait, deadline, note, paint};
use crate::cli::Conclusion;

/// How long one progress poll may be held by the server; the bar moves at least this often.
const PROGRESS_WAIT_SECS: u64 = 1;
/// Cases fetched per page of the summary.
const PAGE: u32 = 1000;
/// Failing cases listed in the summary before the rest are only counted.
const SHOWN_FAILURES: usize = 50;
/// Without a terminal, the longest gap between two progress lines while cases end.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// `kiln batch SUITE` or `kiln batch cancel|report|cases ID`.
#[derive(Clone, Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BatchArgs {
    #[command(subcommand)]
    action: Option<BatchAction>,
    /// The suite file
    #[arg(required = true)]
    suite: Option<PathBuf>,
    /// Follow the batch (at most SECS seconds, if given) with a progress bar, print a summary,
    /// and exit 0 only if every case passed
    #[arg(long, value_name = "SECS", num_args = 0..=1)]
    wait: Option<Option<u64>>,
    /// Write the JUnit XML report to this file once the batch is done (implies --wait)
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Submitting again with the same key returns the first batch instead of a new one
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    pub(super) opts: ClientOpts,
}

#[derive(Clone, Debug, clap::Subcommand)]
enum BatchAction {
    /// Cancel every case of the batch that has not ended
    Cancel {
        /// The batch's id
        id: String,
    },
    /// Print the batch's JUnit XML report, or write it to a file
    Report {
        /// The batch's id
        id: String,
        /// Write it to this file instead of stdout
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the batch's cases in suite order: verdict, name, time and why
    Cases {
        /// The batch's id
        id: String,
        /// Only the cases that did not pass
        #[arg(long)]
        failed: bool,
    },
}

pub(super) async fn run(api: &Api, json: bool, args: BatchArgs) -> Result<Conclusion, ClientError> {
    match args.action {
        Some(BatchAction::Cancel { id }) => cancel(api, &id, json).await,
        Some(BatchAction::Report { id, output }) => {
            let report = report(api, &id).await?;
            match output {
                Some(path) => write_report(&path, &report)?,
                None if json => {
                    print_json(&serde_json::json!({"format": "junit", "report": report}))?;
                }
                None => print_stdout(|out| out.write_all(report.as_bytes()))?,
            }
            Ok(Conclusion::Success)
        }
        Some(BatchAction::Cases { id, failed }) => {
            let cases = cases(api, &id, |case| {
                !failed || case.get("verdict").and_then(Value::as_str) != Some("passed")
            })
            .await?;
            if json {
                print_json(&serde_json::json!({ "cases": cases }))?;
            } else {
                print_stdout(|out| case_table(out, &cases))?;
            }
            Ok(Conclusion::Success)
        }
        None => {
            let Some(suite) = args.suite else {
                return Err(ClientError::Usage(
                    "give a suite file, or one of cancel, report, cases and a batch id".into(),
                ));
            };
            submit(
                api,
                json,
                &suite,
                args.wait,
                args.junit.as_deref(),
                args.idempotency_key.as_deref(),
            )
            .await
        }
    }
}

/// `kiln status BATCH_ID`: the batch's summary, after waiting for its end if asked.
pub(super) async fn status(
    api: &Api,
    id: &str,
    wait: Option<Option<Instant>>,
    json: bool,
) -> Result<Conclusion, ClientError> {
    let read = async {
        match wait {
            None => api.get(&["batches", id], &[]).await,
            Some(until) => poll_until(api, id, until).await,
        }
    };
    let batch = read.await.map_err(|err| no_such_batch(err, id))?;
    if json {
        print_json(&batch)?;
    } else {
        show_summary(api, id, &batch).await?;
    }
    Ok(conclusion(&batch))
}

/// `kiln cancel BATCH_ID`.
pub(super) async fn cancel(api: &Api, id: &str, json: bool) -> Result<Conclusion, ClientError> {
    let request = api
        .http
        .post(api.url(&["batches", id, "cancel"]))
        .timeout(REQUEST_SLACK);
    let batch = send(request).await.map_err(|err| no_such_batch(err, id))?;
    if json {
        print_json(&batch)?;
    } else {
        let number = |name: &str| batch.get(name).and_then(Value::as_u64).unwrap_or(0);
        let cancelled = batch
            .get("by_status")
            .and_then(|s| s.get("cancelled"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        print_stdout(|out| {
            writeln!(
                out,
                "batch {id}: cancelled; {cancelled} cases cancelled, {} passed, {} failed",
                number("passed"),
                number("failed")
            )
        })?;
    }
    Ok(Conclusion::Success)
}

/// A batch the server does not know, when a job of that id was not found either.
fn no_such_batch(err: ClientError, id: &str) -> ClientError {
    if is_not_found(&err, "batch_not_found") {
        ClientError::Usage(format!("no job or batch has the id {id}"))
    } else {
        err
    }
}

fn write_report(path: &Path, report: &str) -> Result<(), ClientError> {
    std::fs::write(path, report).map_err(|source| ClientError::WriteFile {
        path: path.to_owned(),
        source,
    })?;
    note(&format!("wrote the JUnit report to {}", path.display()));
    Ok(())
}

async fn submit(
    api: &Api,
    json: bool,
    suite: &Path,
    wait: Wait,
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
    let until = deadline(wait).flatten();
    let wait = wait.is_some() || junit.is_some();
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
        .guard("the batch", &id, follow(api, &id, total, until))
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
        write_report(path, &report(api, &id).await?)?;
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
    let names: HashMap<String, String> = cases(api, id, |_| true)
        .await
        .map_err(|err| no_such_batch(err, id))?
        .into_iter()
        .filter_map(|case| Some((text(&case, "job_id")?, text(&case, "name")?)))
        .collect();
    let followed = stream::follow(api, &["batches", id, "events"], |step| {
        let Step::Message(message, data) = step else {
            return Ok(false);
        };
        if json {
            print_stream_json(message, data)?;
        } else if let Some(verdict) = case_verdict(&message.event, data) {
            let job = data.get("job_id").and_then(Value::as_str).unwrap_or("-");
            let name = names.get(job).map_or(job, String::as_str);
            let shown = paint::verdict(verdict, &format!("{verdict:<14}"));
            print_stdout(|out| writeln!(out, "{shown}  {name}"))?;
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
    if json {
        let line = serde_json::json!({"id": null, "event": "batch", "data": batch});
        print_stdout(|out| writeln!(out, "{line}"))?;
    } else {
        show_summary(api, id, &batch).await?;
    }
    Ok(conclusion(&batch))
}

/// A success only if the batch is done and every case passed; pending while cases are left.
fn conclusion(batch: &Value) -> Conclusion {
    if batch.get("done").and_then(Value::as_bool) == Some(false) {
        return Conclusion::Pending;
    }
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
    let colour = paint::enabled();
    print_stdout(|out| summary(out, id, batch, &failing, colour))
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
    let text = read_content(path)?;
    let mut suite: Value = serde_json::from_slice(text.as_bytes()).map_err(|err| {
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
    // Sent as it is: text, or base64 for a file that is not UTF-8.
    let code = read_content(&base.join(PathBuf::from(name)))?;
    let code = serde_json::to_value(&code).map_err(|err| ClientError::Usage(err.to_string()))?;
    fields.insert("code".to_owned(), code);
    Ok(())
}

/// Follows the batch to its end (or `until`), moving a progress bar on stderr as its cases
/// end, or without a terminal printing a progress line now and then, and returns the batch as
/// it ended (or as it was when `until` came). The bar is fed by the batch's event stream, or by
/// long-polling if the server will not stream it.
async fn follow(
    api: &Api,
    id: &str,
    total: usize,
    until: Option<Instant>,
) -> Result<Value, ClientError> {
    let mut progress = Progress::new(total as u64);
    let followed = async {
        let followed = stream::follow(api, &["batches", id, "events"], |step| {
            let Step::Message(message, data) = step else {
                return Ok(false);
            };
            if let Some(verdict) = case_verdict(&message.event, data) {
                progress.case_ended(verdict == "passed");
            }
            Ok(ends_batch(message))
        })
        .await?;
        if let Followed::Refused(err) = followed {
            note(&format!("{err}; following the batch by polling instead"));
        }
        // At once if the stream saw the batch to its end.
        poll(api, id, &mut progress).await
    };
    let Some(until) = until else {
        return followed.await;
    };
    match tokio::time::timeout_at(until.into(), followed).await {
        Ok(batch) => batch,
        Err(_) => {
            progress.bar.finish_and_clear();
            note(&format!(
                "batch {id} has not ended yet; `kiln watch {id}` follows it on"
            ));
            api.get(&["batches", id], &[]).await
        }
    }
}

/// How far along a batch is, shown as a bar on a terminal or as lines without one.
struct Progress {
    bar: indicatif::ProgressBar,
    total: u64,
    done: u64,
    passed: u64,
    /// When the last line was printed, without a terminal.
    printed: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} cases  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Progress {
            bar,
            total,
            done: 0,
            passed: 0,
            printed: None,
        }
    }

    fn case_ended(&mut self, passed: bool) {
        let (done, passed_now) = (self.done + 1, self.passed + u64::from(passed));
        self.set(done, passed_now, done - passed_now);
    }

    fn set(&mut self, done: u64, passed: u64, failed: u64) {
        let changed = done != self.done;
        (self.done, self.passed) = (done, passed);
        self.bar.set_length(self.total);
        self.bar.set_position(done);
        self.bar
            .set_message(format!("{passed} passed, {failed} failed"));
        // The bar is hidden where stderr is no terminal: lines take its place there.
        if !self.bar.is_hidden() || !changed {
            return;
        }
        let due = self
            .printed
            .is_none_or(|at| at.elapsed() >= PROGRESS_LINE_EVERY);
        if due || done == self.total {
            self.printed = Some(Instant::now());
            note(&format!(
                "{done}/{} cases done, {passed} passed, {failed} failed",
                self.total
            ));
        }
    }
}

/// Long-polls the batch until it is done, moving the progress.
async fn poll(api: &Api, id: &str, progress: &mut Progress) -> Result<Value, ClientError> {
    loop {
        let batch = poll_once(api, id).await?;
        let number = |name: &str| batch.get(name).and_then(Value::as_u64).unwrap_or(0);
        let tally = |name: &str| {
            batch
                .get("progress")
                .and_then(|p| p.get(name))
                .and_then(Value::as_u64)
        };
        if let Some(total) = tally("total") {
            progress.total = total;
        }
        let done = tally("done").unwrap_or(0);
        progress.set(done, number("passed"), number("failed"));
        if batch.get("done").and_then(Value::as_bool) != Some(false) {
            progress.bar.finish_and_clear();
            return Ok(batch);
        }
    }
}

/// One long-poll of the batch, held by the server for a moment while it is not done.
async fn poll_once(api: &Api, id: &str) -> Result<Value, ClientError> {
    let request = api
        .http
        .get(api.url(&["batches", id]))
        .query(&[("wait", PROGRESS_WAIT_SECS)])
        .timeout(Duration::from_secs(PROGRESS_WAIT_SECS) + REQUEST_SLACK);
    send(request).await
}

/// Long-polls the batch until it is done or `until` passes (never, if `None`).
async fn poll_until(api: &Api, id: &str, until: Option<Instant>) -> Result<Value, ClientError> {
    loop {
        let batch = poll_once(api, id).await?;
        let expired = until.is_some_and(|until| Instant::now() >= until);
        if batch.get("done").and_then(Value::as_bool) != Some(false) || expired {
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
    let url = response.url().clone();
    let kind = content_type(&response);
    let body = response.bytes().await.map_err(transport_error)?;
    if !status.is_success() {
        return Err(no_such_batch(
            api_error_from(&url, status, &kind, &body),
            id,
        ));
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
    colour: bool,
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
                let shown = paint::with(colour, verdict, &format!("{verdict:<14}"));
                writeln!(out, "  {shown} {count:>6}")?;
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
        let shown = paint::with(colour, verdict, &format!("{verdict:<14}"));
        writeln!(out, "{:<width$}  {shown}  {}", text("name"), text("detail"))?;
    }
    if failing.len() > SHOWN_FAILURES {
        writeln!(out, "... and {} more", failing.len() - SHOWN_FAILURES)?;
    }
    Ok(())
}

/// `kiln batch cases`: one line per case, in suite order.
fn case_table(out: &mut impl Write, cases: &[Value]) -> std::io::Result<()> {
    let colour = paint::enabled();
    let width = cases
        .iter()
        .filter_map(|case| case.get("name").and_then(Value::as_str))
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 40);
    writeln!(
        out,
        "{:>5}  {:<14}  {:<width$}  {:>8}  detail",
        "index", "verdict", "case", "wall ms"
    )?;
    for case in cases {
        let text = |name: &str| case.get(name).and_then(Value::as_str).unwrap_or("-");
        let verdict = case
            .get("verdict")
            .and_then(Value::as_str)
            .unwrap_or_else(|| text("status"));
        let shown = paint::with(colour, verdict, &format!("{verdict:<14}"));
        let number = |name: &str| {
            case.get(name)
                .and_then(Value::as_i64)
                .map_or_else(|| "-".to_owned(), |n| n.to_string())
        };
        writeln!(
            out,
            "{:>5}  {shown}  {:<width$}  {:>8}  {}",
            number("index"),
            text("name"),
            number("wall_ms"),
            text("detail")
        )?;
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
        summary(&mut out, "b1", &batch, &failing, false).expect("write");
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
