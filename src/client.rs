//! The client half of the `kiln` command line: `submit`, `status`, `events`, `watch`, `cancel` and
//! `batch` (in [`batch`]), spoken to a kiln server over its v1 HTTP API.
//!
//! It owns the subcommands' flags, the HTTP calls, turning the server's JSON into lines a person can
//! read, and what each command concludes (whether the job succeeded; `main` makes it the exit
//! code). It deliberately knows nothing of the server's
//! Rust types: it reads answers as plain JSON, so a client built from one version still talks to a
//! server of another, and `--json` can pass the server's answer through untouched.

mod batch;
mod stream;

use std::error::Error as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::Value;

use crate::cli::{self, Conclusion, Format, note};

/// The longest `?wait=` the server honours; longer waits are made of several requests.
const SERVER_MAX_WAIT: Duration = Duration::from_secs(60);
/// How long past the requested long-poll a request may take before we give up on the server.
const REQUEST_SLACK: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lower bound on the spacing of wait requests, so a server that answers a long poll early (an
/// older one, or one behind a proxy that drops the query) is not hammered in a tight loop.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The flags every client subcommand takes: which server, with what token, printing how. Global,
/// so they may come anywhere after the subcommand's name.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientOpts {
    /// Server URL
    #[arg(long, env = "KILN_URL", default_value_t = cli::default_url(), global = true)]
    pub url: String,
    #[command(flatten)]
    pub format: Format,
    /// API token, for a server that requires one (`kiln token create`)
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Submit a file as a job
    Submit {
        /// The program to run; its contents are sent as the job's code
        file: PathBuf,
        /// Runtime to run it with [default: from the extension: .py → python, .sh → bash]
        #[arg(long)]
        runtime: Option<String>,
        /// File whose contents are fed to the job's standard input
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// Wait for the job to finish and show its result
        #[arg(long)]
        wait: bool,
        /// Submitting again with the same key returns the first job instead of a new one
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Argument passed to the program (repeat for several)
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
        /// Wall-clock limit in milliseconds
        #[arg(long)]
        wall_ms: Option<u64>,
        /// CPU-time limit in milliseconds
        #[arg(long)]
        cpu_ms: Option<u64>,
        /// Memory limit in MiB
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Limit on each of stdout and stderr, in bytes
        #[arg(long)]
        output_bytes: Option<u64>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a job and its result
    Status {
        id: String,
        /// Wait up to this many seconds for the job to finish
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a job's events, or the global feed
    Events {
        /// Job whose events to show; without it, the global feed
        id: Option<String>,
        /// Global feed: only events after this event id
        #[arg(long, conflicts_with = "id")]
        after: Option<i64>,
        /// Global feed: at most this many events
        #[arg(long, default_value_t = 100, conflicts_with = "id")]
        limit: u32,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Follow a job live until it ends: its output on stdout and stderr as it is written, its
    /// events and progress on stderr; exits like `status` with the final state. Given a batch
    /// id, follow the batch: each case's verdict as it ends, then the summary; exits like
    /// `batch --wait`
    Watch {
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Cancel a queued or running job
    Cancel {
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Submit a test suite: a JSON file in the shape of POST /v1/batches (README: "Test suites")
    Batch {
        /// The suite file
        suite: PathBuf,
        /// Follow the batch with a progress bar, print a summary, and exit 0 only if every
        /// case passed
        #[arg(long)]
        wait: bool,
        /// Write the JUnit XML report to this file once the batch is done (implies --wait)
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Submitting again with the same key returns the first batch instead of a new one
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Everything that can stop a client command. `main` prints it and exits 2; the variants separate
/// "you asked for something impossible" from "the server could not be reached" from "the server
/// said no", should a caller want to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line asks for something we cannot do (unknown runtime, malformed URL, ...).
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {}: {source}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    /// No answer: connection refused, DNS failure, timeout. `detail` holds reqwest's whole cause
    /// chain, since its top-level message alone ("error sending request") says nothing useful.
    #[error("cannot reach the kiln server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The server answered with an HTTP error.
    #[error("{}", api_message(*.status, .code.as_deref(), .message))]
    Api {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    /// The server answered 2xx with something that is not the JSON we expect.
    #[error("unexpected answer from {url}: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

fn api_message(status: StatusCode, code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("server answered {status}: {message} ({code})"),
        None => format!("server answered {status}: {message}"),
    }
}

impl ClientCommand {
    fn opts(&self) -> &ClientOpts {
        use ClientCommand::*;
        match self {
            Submit { opts, .. }
            | Status { opts, .. }
            | Events { opts, .. }
            | Watch { opts, .. }
            | Cancel { opts, .. }
            | Batch { opts, .. } => opts,
        }
    }
}

/// Runs one client subcommand and returns what it concluded (see the module doc).
pub async fn run(cmd: ClientCommand) -> Result<Conclusion, ClientError> {
    let opts = cmd.opts();
    let api = Api::new(&opts.url, opts.token.as_deref())?;
    let json = opts.format.json;
    match cmd {
        ClientCommand::Submit {
            file,
            runtime,
            stdin,
            wait,
            idempotency_key,
            args,
            wall_ms,
            cpu_ms,
            memory_mb,
            output_bytes,
            ..
        } => {
            let runtime = match runtime {
                Some(runtime) => runtime,
                None => runtime_for(&file)?.to_owned(),
            };
            let submission = Submission {
                runtime,
                code: read_text(&file)?,
                stdin: stdin.as_deref().map(read_text).transpose()?,
                args,
                limits: Limits {
                    wall_ms,
                    cpu_ms,
                    memory_mb,
                    output_bytes,
                },
            };
            let accepted = api.submit(&submission, idempotency_key.as_deref()).await?;
            if !wait {
                if json {
                    print_json(&accepted)?;
                } else {
                    let id = job_id(&accepted, &api.base)?;
                    print_stdout(|out| writeln!(out, "{id}"))?;
                }
                return Ok(Conclusion::Success);
            }
            let id = job_id(&accepted, &api.base)?;
            let job = match api.poll_job(id, None).await {
                Ok(job) => job,
                Err(err) => {
                    // The job is queued and will run regardless; without its id the user could not
                    // find the result.
                    note(&format!(
                        "job {id} was submitted; see it with `kiln status {id}`"
                    ));
                    return Err(err);
                }
            };
            show_job(&job, json)?;
            Ok(conclusion(&job))
        }
        ClientCommand::Status { id, wait, .. } => {
            let job = match wait {
                None | Some(0) => api.get_job(&id, None).await?,
                Some(secs) => {
                    let deadline = Instant::now() + Duration::from_secs(secs);
                    api.poll_job(&id, Some(deadline)).await?
                }
            };
            show_job(&job, json)?;
            Ok(conclusion(&job))
        }
        ClientCommand::Events {
            id, after, limit, ..
        } => {
            let feed = match &id {
                Some(id) => api.job_events(id).await?,
                None => api.global_events(after, limit).await?,
            };
            if json {
                print_json(&feed)?;
                return Ok(Conclusion::Success);
            }
            let events = feed
                .get("events")
                .and_then(Value::as_array)
                .ok_or_else(|| ClientError::BadResponse {
                    url: api.base.to_string(),
                    detail: "no \"events\" list in the answer".to_owned(),
                })?;
            // The global feed mixes jobs, so it needs the job column that a job's own list does not.
            let with_job = id.is_none();
            print_stdout(|out| {
                for event in events {
                    writeln!(out, "{}", event_line(event, with_job))?;
                }
                Ok(())
            })?;
            if with_job
                && events.len() >= limit as usize
                && let Some(next) = feed.get("next_after").and_then(Value::as_i64)
            {
                note(&format!("more events may follow: use --after {next}"));
            }
            Ok(Conclusion::Success)
        }
        ClientCommand::Watch { id, .. } => watch(&api, &id, json).await,
        ClientCommand::Batch {
            suite,
            wait,
            junit,
            idempotency_key,
            ..
        } => {
            batch::run(
                &api,
                json,
                &suite,
                wait,
                junit.as_deref(),
                idempotency_key.as_deref(),
            )
            .await
        }
        ClientCommand::Cancel { id, .. } => {
            let job = api.cancel(&id).await?;
            if json {
                print_json(&job)?;
            } else {
                print_stdout(|out| writeln!(out, "{}", job_line(&job)))?;
            }
            Ok(Conclusion::Success)
        }
    }
}

/// The body of `POST /v1/jobs`. Absent options are left out rather than sent as null, so the
/// server's own defaults apply.
#[derive(Debug, Serialize)]
struct Submission {
    runtime: String,
    code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdin: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(skip_serializing_if = "Limits::is_empty")]
    limits: Limits,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    wall_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_bytes: Option<u64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// The v1 API of one server.
struct Api {
    http: reqwest::Client,
    base: Url,
}

impl Api {
    fn new(base: &str, token: Option<&str>) -> Result<Api, ClientError> {
        let base = Url::parse(base)
            .map_err(|err| ClientError::Usage(format!("invalid server URL {base:?}: {err}")))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::Usage(format!(
                "invalid server URL {base}: expected something like http://127.0.0.1:8000"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Usage("the token must be printable ASCII".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|err| ClientError::Unreachable {
                url: base.to_string(),
                detail: error_chain(&err),
            })?;
        Ok(Api { http, base })
    }

    /// Builds `base/v1/<segments>`, percent-encoding each segment so an odd job id cannot escape
    /// its place in the path, and keeping any path prefix the server is mounted under.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    async fn submit(
        &self,
        submission: &Submission,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(self.url(&["jobs"]))
            .timeout(REQUEST_SLACK)
            .json(submission);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        send(request).await
    }

    /// One `GET /v1/jobs/{id}`, long-polling for `wait` seconds if given.
    async fn get_job(&self, id: &str, wait: Option<u64>) -> Result<Value, ClientError> {
        let mut request = self.http.request(Method::GET, self.url(&["jobs", id]));
        request = match wait {
            Some(secs) => request
                .query(&[("wait", secs)])
                .timeout(Duration::from_secs(secs) + REQUEST_SLACK),
            None => request.timeout(REQUEST_SLACK),
        };
        send(request).await
    }

    /// Long-polls a job until it is terminal or `deadline` passes (never, if `None`), and returns
    /// the last state seen.
    async fn poll_job(&self, id: &str, deadline: Option<Instant>) -> Result<Value, ClientError> {
        loop {
            let chunk = match deadline {
                None => SERVER_MAX_WAIT,
                Some(deadline) => deadline
                    .saturating_duration_since(Instant::now())
                    .min(SERVER_MAX_WAIT),
            };
            let started = Instant::now();
            let job = self.get_job(id, Some(ceil_secs(chunk))).await?;
            // The server counts whole seconds, so less than one left means the wait is used up.
            let expired = deadline.is_some_and(|deadline| {
                deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(1)
            });
            if is_terminal(&job) || expired {
                return Ok(job);
            }
            if let Some(rest) = MIN_POLL_INTERVAL.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    async fn job_events(&self, id: &str) -> Result<Value, ClientError> {
        let request = self
            .http
            .get(self.url(&["jobs", id, "events"]))
            .timeout(REQUEST_SLACK);
        send(request).await
    }

    async fn global_events(&self, after: Option<i64>, limit: u32) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .get(self.url(&["events"]))
            .query(&[("limit", limit)])
            .timeout(REQUEST_SLACK);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        send(request).await
    }

    async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        let request = self
            .http
            .post(self.url(&["jobs", id, "cancel"]))
            .timeout(REQUEST_SLACK);
        send(request).await
    }
}

/// Follows a job, or else a batch, with this id to its end. Job and batch ids look alike, so
/// the server is asked: a job's stream first, and a batch's if there is no such job.
async fn watch(api: &Api, id: &str, json: bool) -> Result<Conclusion, ClientError> {
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
fn print_stream_json(message: &stream::SseMessage, data: &Value) -> Result<(), ClientError> {
    let line = serde_json::json!({"id": message.id, "event": message.event, "data": data});
    print_stdout(|out| writeln!(out, "{line}"))
}

/// True if the server said there is no such thing, with this error code.
fn is_not_found(err: &ClientError, code: &str) -> bool {
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

/// Sends a request and decodes a 2xx JSON answer; anything else becomes the matching error.
async fn send(request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
    let response = request.send().await.map_err(transport_error)?;
    let url = response.url().to_string();
    let status = response.status();
    let body = response.bytes().await.map_err(transport_error)?;
    if !status.is_success() {
        return Err(api_error(status, &body));
    }
    serde_json::from_slice(&body).map_err(|err| ClientError::BadResponse {
        url,
        detail: format!("{status} with a body that is not JSON: {err}"),
    })
}

fn transport_error(err: reqwest::Error) -> ClientError {
    let url = err.url().map_or_else(String::new, |url| {
        // Only scheme, host and port: the path and query are ours, not what the user configured.
        url.origin().ascii_serialization()
    });
    ClientError::Unreachable {
        url,
        detail: error_chain(&err),
    }
}

/// reqwest's errors keep the useful part ("Connection refused", "operation timed out") several
/// sources deep, under a top level ("error sending request for url (...)") that only repeats the
/// URL we already show; so show the causes, and the top level only when there are none.
fn error_chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and the OS often repeat the same words one level down.
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

/// Reads the server's `{"error":{"code","message"}}`; a body in another shape (a proxy's HTML
/// page, say) is shown as it is, since it is still the best explanation available.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|value| value.get("error"));
    let field = |name: &str| {
        error
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body).trim().to_owned();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no details").to_owned()
        } else {
            text
        }
    });
    ClientError::Api {
        status,
        code: field("code"),
        message,
    }
}

fn job_id<'a>(job: &'a Value, base: &Url) -> Result<&'a str, ClientError> {
    job.get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::BadResponse {
            url: base.to_string(),
            detail: "the accepted job has no \"id\"".to_owned(),
        })
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A job whose status we cannot read is treated as finished: waiting on it would never end.
fn is_terminal(job: &Value) -> bool {
    !matches!(
        job.get("status").and_then(Value::as_str),
        Some("queued" | "running")
    )
}

fn conclusion(job: &Value) -> Conclusion {
    if job.get("status").and_then(Value::as_str) == Some("succeeded") {
        Conclusion::Success
    } else {
        Conclusion::Failure
    }
}

/// Picks the runtime from the file's extension, for the runtimes whose extension is unambiguous.
fn runtime_for(file: &Path) -> Result<&'static str, ClientError> {
    match file.extension().and_then(|ext| ext.to_str()) {
        Some("py") => Ok("python"),
        Some("sh") => Ok("bash"),
        _ => Err(ClientError::Usage(format!(
            "cannot tell the runtime of {} from its extension; pass --runtime",
            file.display()
        ))),
    }
}

/// Code and stdin travel as JSON strings, so they must be UTF-8 text.
fn read_text(path: &Path) -> Result<String, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| {
        ClientError::Usage(format!(
            "{} is not UTF-8 text, which is all kiln can send",
            path.display()
        ))
    })
}

/// `<id>  <status> (<outcome>)  exit <code>  <wall> ms  <runtime>`, leaving out what the job does
/// not have yet (a queued job has no outcome, exit code or time).
fn job_line(job: &Value) -> String {
    let text = |name: &str| job.get(name).and_then(Value::as_str);
    let number = |name: &str| job.get(name).and_then(Value::as_i64);
    let mut parts = vec![text("id").unwrap_or("?").to_owned()];
    let status = text("status").unwrap_or("?");
    parts.push(match text("outcome") {
        Some(outcome) => format!("{status} ({outcome})"),
        None => status.to_owned(),
    });
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
    parts.join("  ")
}

/// `<event id>  [<job id>]  <at>  <type>  attempt <n>  <data>`.
fn event_line(event: &Value, with_job: bool) -> String {
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

fn show_job(job: &Value, json: bool) -> Result<(), ClientError> {
    if json {
        return print_json(job);
    }
    print_stdout(|out| writeln!(out, "{}", job_line(job)))?;
    show_output(job)
}

/// The job's stored error, stdout and stderr, and whether they were cut at the limit.
fn show_output(job: &Value) -> Result<(), ClientError> {
    let text = |name: &str| {
        job.get(name)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    };
    print_stdout(|out| {
        if let Some(error) = text("error") {
            writeln!(out, "error: {error}")?;
        }
        if let Some(stdout) = text("stdout") {
            out.write_all(stdout.as_bytes())?;
        }
        Ok(())
    })?;
    if let Some(stderr) = text("stderr") {
        // Nowhere better to report a failing stderr, so the write is best effort.
        let _ = io::stderr().lock().write_all(stderr.as_bytes());
    }
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

fn print_json(value: &Value) -> Result<(), ClientError> {
    print_stdout(|out| {
        serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
        writeln!(out)
    })
}

/// [`cli::print`], failing with this layer's error.
fn print_stdout(
    write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> Result<(), ClientError> {
    cli::print(write).map_err(ClientError::Output)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    #[test]
    fn runtime_comes_from_the_extension() {
        assert_eq!(runtime_for(Path::new("a/b.py")).ok(), Some("python"));
        assert_eq!(runtime_for(Path::new("run.sh")).ok(), Some("bash"));
        for path in ["main.rb", "Makefile", "x.PY.txt"] {
            let err = runtime_for(Path::new(path))
                .err()
                .map(|err| err.to_string());
            assert!(
                err.as_deref().is_some_and(|err| err.contains("--runtime")),
                "{path}: {err:?}"
            );
        }
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

    #[test]
    fn exit_code_and_terminality_follow_the_status() {
        for (status, terminal, success) in [
            ("queued", false, false),
            ("running", false, false),
            ("succeeded", true, true),
            ("failed", true, false),
            ("timed_out", true, false),
            ("cancelled", true, false),
            ("error", true, false),
        ] {
            let job = json!({ "status": status });
            assert_eq!(is_terminal(&job), terminal, "{status}");
            let expected = if success {
                Conclusion::Success
            } else {
                Conclusion::Failure
            };
            assert_eq!(conclusion(&job), expected, "{status}");
        }
    }

    #[test]
    fn api_errors_show_the_servers_message() {
        let body = br#"{"error":{"code":"conflict","message":"job already finished"}}"#;
        let err = api_error(StatusCode::CONFLICT, body);
        assert_eq!(
            err.to_string(),
            "server answered 409 Conflict: job already finished (conflict)"
        );
        let err = api_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(
            err.to_string(),
            "server answered 502 Bad Gateway: Bad Gateway"
        );
        let err = api_error(StatusCode::NOT_FOUND, b"no such page\n");
        assert_eq!(
            err.to_string(),
            "server answered 404 Not Found: no such page"
        );
    }

    #[test]
    fn submission_leaves_out_what_was_not_given() {
        let bare = Submission {
            runtime: "python".to_owned(),
            code: "print(1)".to_owned(),
            stdin: None,
            args: Vec::new(),
            limits: Limits::default(),
        };
        assert_eq!(
            serde_json::to_value(&bare).ok(),
            Some(json!({"runtime": "python", "code": "print(1)"}))
        );
        let full = Submission {
            stdin: Some("in".to_owned()),
            args: vec!["-v".to_owned()],
            limits: Limits {
                wall_ms: Some(500),
                ..Limits::default()
            },
            ..bare
        };
        assert_eq!(
            serde_json::to_value(&full).ok(),
            Some(
                json!({"runtime": "python", "code": "print(1)", "stdin": "in",
                "args": ["-v"], "limits": {"wall_ms": 500}})
            )
        );
    }

    #[test]
    fn urls_keep_a_mount_prefix_and_escape_ids() {
        let api = Api::new("http://h:1/kiln/", None).map_err(|err| err.to_string());
        let url = api.map(|api| api.url(&["jobs", "a/b?c", "events"]).to_string());
        assert_eq!(
            url.as_deref(),
            Ok("http://h:1/kiln/v1/jobs/a%2Fb%3Fc/events")
        );
        assert!(matches!(
            Api::new("not a url", None),
            Err(ClientError::Usage(_))
        ));
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "kiln",
            "submit",
            "x.py",
            "--arg",
            "-n",
            "--arg",
            "2",
            "--wall-ms",
            "500",
            "--wait",
            "--json",
        ]);
        match cli.map(|cli| (cli.cmd.opts().format.json, cli.cmd)) {
            Ok((
                true,
                ClientCommand::Submit {
                    args,
                    wall_ms,
                    wait,
                    ..
                },
            )) => {
                assert_eq!(args, ["-n", "2"]);
                assert_eq!(wall_ms, Some(500));
                assert!(wait);
            }
            other => panic!("{other:?}"),
        }
        // The default --limit must not count as given alongside a job id.
        assert!(Cli::try_parse_from(["kiln", "events", "j1"]).is_ok());
        assert!(Cli::try_parse_from(["kiln", "events", "j1", "--after", "3"]).is_err());
    }
}
