//! Judge0 CE, v1.13.1, under `/judge0`: the routes, fields, units, status ids and error shapes of
//! Judge0's API, so that its clients (the official SDKs, online judges, IDE plugins) work against
//! kiln by changing one URL. It translates and owns nothing: a submission is an ordinary kiln job,
//! or, when it has an `expected_output` to be judged by, a suite of one case; a batch of
//! submissions is one suite. Both are validated and stored through the same paths as the v1
//! API's (so tenants, backpressure and limits apply, and they are in the history, the CLI and
//! `/v1`), and a token is the job's id.
//!
//! `submission` reads a body in Judge0's terms, `files` unpacks its `additional_files`, `render`
//! shows a job as a submission, `error` holds Judge0's error shapes. `docs/compat.md` lists every route and field, and what kiln does
//! not do of them and why.

mod error;
mod files;
mod render;
mod submission;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use self::error::{FieldErrors, Judge0Error};
use self::render::NotUtf8;
use self::submission::{Maxima, Submission};
use super::AppState;
use super::jobs::{admission, wait_for_end};
use crate::auth::Principal;
use crate::job::batch::BatchSpec;
use crate::job::validate::{BatchRequest, RuntimeTerms};
use crate::job::verdict::CompareMode;
use crate::job::{CallbackShape, Job, JobId, JobSpec};
use crate::runtime::Runtime;
use crate::store::{Admission, BatchSubmitted, Submitted, Visibility};
use crate::webhook::Shaped;

/// The Judge0 version `/about` reports: the one whose API this is, and one the official Python
/// SDK maps language aliases for.
const VERSION: &str = "1.13.1";

/// Judge0's own most submissions in one batch (`MAX_SUBMISSION_BATCH_SIZE`).
const MAX_BATCH: usize = 20;

/// Judge0's attempts at a callback (`CALLBACKS_MAX_TRIES`), and each one's limit in seconds
/// (`CALLBACKS_TIMEOUT`).
const CALLBACKS_MAX_TRIES: u32 = 3;
const CALLBACKS_TIMEOUT_SECS: u64 = 5;

/// How the webhook deliverer makes a Judge0 submission's callback: a PUT of the submission,
/// at most Judge0's tries, each under its timeout.
pub fn callbacks() -> Shaped {
    Shaped {
        method: reqwest::Method::PUT,
        max_attempts: CALLBACKS_MAX_TRIES,
        timeout: std::time::Duration::from_secs(CALLBACKS_TIMEOUT_SECS),
        render: Box::new(render::callback),
    }
}

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/submissions", post(create).get(index))
        .route("/submissions/batch", post(batch_create).get(batch_show))
        .route("/submissions/{token}", get(show).delete(destroy))
        .route("/languages", get(languages))
        .route("/languages/all", get(all_languages))
        .route("/languages/{id}", get(language))
        .route("/statuses", get(statuses))
        .route("/about", get(about))
        .route("/version", get(version))
        .route("/config_info", get(config_info))
        .route("/system_info", get(system_info))
        .route("/statistics", get(statistics))
        .route("/workers", get(workers))
        .route("/authenticate", post(authenticate))
        .route("/authorize", post(authorize))
        .fallback(not_found)
}

async fn not_found() -> Judge0Error {
    Judge0Error::not_found("route")
}

/// The query parameters Judge0 reads; any other is ignored, as Rails ignores it.
#[derive(Default)]
struct Params {
    base64: bool,
    wait: Option<String>,
    fields: Option<String>,
    tokens: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

impl Params {
    fn parse(query: Option<String>) -> Params {
        let mut params = Params::default();
        let query = query.unwrap_or_default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "base64_encoded" => params.base64 = value == "true",
                "wait" => params.wait = Some(value.into_owned()),
                "fields" => params.fields = Some(value.into_owned()),
                "tokens" => params.tokens = Some(value.into_owned()),
                "page" => params.page = Some(value.into_owned()),
                "per_page" => params.per_page = Some(value.into_owned()),
                _ => {}
            }
        }
        params
    }

    fn wait(&self) -> bool {
        self.wait.as_deref() == Some("true")
    }
}

/// A JSON body, refused in Judge0's shape.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, Judge0Error> {
    let bytes = body.map_err(|e| {
        if let Some(late) = super::extract::timed_out(&e) {
            return Judge0Error::from(late);
        }
        Judge0Error::plain(e.status(), e.body_text())
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Judge0Error::bad_request(format!("the body is not valid JSON: {e}")))
}

/// The runtime of each Judge0 language id this host offers, lowest id first; an id two
/// definitions claim is the first's.
fn languages_offered(state: &AppState) -> Vec<(u32, &Runtime)> {
    let mut ids: Vec<(u32, &Runtime)> = Vec::new();
    for runtime in state.runtimes.iter() {
        for &id in &runtime.judge0 {
            if !ids.iter().any(|(taken, _)| *taken == id) {
                ids.push((id, runtime));
            }
        }
    }
    ids.sort_by_key(|(id, _)| *id);
    ids
}

/// A runtime's name as Judge0 shows a language's: with its version once the tool has told it.
fn language_name(runtime: &Runtime) -> String {
    match runtime.version().flatten() {
        Some(version) => format!("{} ({version})", runtime.display),
        None => runtime.display.clone(),
    }
}

/// The Judge0 language a job's runtime answers to: its first id. A job of a runtime with none
/// (one submitted through `/v1`) shows id 0.
fn language_of(state: &AppState, job: &Job) -> (u32, String) {
    match state.runtimes.get(&job.runtime) {
        Some(runtime) => (
            runtime.judge0.first().copied().unwrap_or(0),
            language_name(runtime),
        ),
        None => (0, job.runtime.clone()),
    }
}

/// Judge0's refusal of a submission whose text is not UTF-8 when base64 was not asked for.
const NOT_UTF8: &str = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true \
     query parameter";
/// The same, of a list of submissions.
const SOME_NOT_UTF8: &str = "some attributes for one or more submissions cannot be converted to \
                             UTF-8, use base64_encoded=true query parameter";

/// A job as the submission `fields` show, reading what it was given only if they show it; the
/// inner error is a field that cannot be shown as text.
async fn shown(
    state: &AppState,
    job: &Job,
    fields: &[&str],
    base64: bool,
) -> Result<Result<Value, NotUtf8>, Judge0Error> {
    let input = match render::needs_input(fields) {
        true => state.store.job_input(job.id).await?,
        false => None,
    };
    let language = language_of(state, job);
    Ok(render::submission(
        job,
        input.as_ref(),
        (language.0, &language.1),
        fields,
        base64,
    ))
}

/// The runtime a Judge0 language id runs on here; a multi-file program runs on Bash's.
fn runtime_of(state: &AppState, id: u64) -> Option<String> {
    let id = match id {
        files::MULTI_FILE => BASH,
        id => id,
    };
    languages_offered(state)
        .into_iter()
        .find(|(offered, _)| u64::from(*offered) == id)
        .map(|(_, runtime)| runtime.name.clone())
}

/// Judge0's id of Bash, whose runtime runs the scripts of a multi-file program.
const BASH: u64 = 46;

/// The name Judge0 gives language 89.
const MULTI_FILE_NAME: &str = "Multi-file program";

/// Whether a multi-file program can run here: Bash is offered.
fn multi_file_offered(state: &AppState) -> bool {
    runtime_of(state, BASH).is_some()
}

/// What `additional_files` may unpack to: as many files as a job may have, and no more bytes
/// than Judge0's `MAX_EXTRACT_SIZE` or a job's files may hold.
fn extract_bounds(state: &AppState) -> files::Bounds {
    let policy = &state.config.policy;
    files::Bounds {
        max_files: policy.max_files,
        max_bytes: (files::MAX_EXTRACT_KB * 1024).min(policy.max_files_bytes as u64),
    }
}

fn terms(state: &AppState) -> impl Fn(&str, &str) -> Option<RuntimeTerms> + '_ {
    |name, code| state.runtimes.get(name).map(|runtime| runtime.terms(code))
}

/// Reads every submission, then holds each to kiln's own rules, so that what is wrong with any
/// of them is said of each in Judge0's shape before anything is stored.
fn read_all(
    state: &AppState,
    bodies: &[Value],
    base64: bool,
) -> Result<Vec<Submission>, Vec<FieldErrors>> {
    let caps = &state.config.policy.max_limits;
    let mut read = Vec::with_capacity(bodies.len());
    let mut errors = Vec::with_capacity(bodies.len());
    for body in bodies {
        let allowed = submission::Allowed {
            callbacks: state.config.judge0_callbacks,
            extract: extract_bounds(state),
        };
        let checked = submission::read(body, base64, |id| runtime_of(state, id), caps, allowed)
            .and_then(|submission| {
                JobSpec::validate(
                    submission.clone().job_request(),
                    None,
                    &state.config.policy,
                    terms(state),
                )
                .map(|_| submission)
                .map_err(|rejection| submission::rejected(&rejection))
            });
        match checked {
            Ok(submission) => {
                read.push(submission);
                errors.push(FieldErrors::new());
            }
            Err(wrong) => errors.push(wrong),
        }
    }
    match read.len() == bodies.len() {
        true => Ok(read),
        false => Err(errors),
    }
}

/// Stores one submission: a job, or a suite of one case when it has an output to be judged by.
async fn store_one(
    state: &AppState,
    admission: Admission,
    submission: Submission,
) -> Result<JobId, Judge0Error> {
    if submission.expected_output.is_some() {
        let tokens = store_suite(state, admission, vec![submission]).await?;
        return tokens
            .into_iter()
            .next()
            .ok_or_else(|| Judge0Error::from(super::ApiError::internal()));
    }
    let spec = JobSpec::validate(
        submission.job_request(),
        None,
        &state.config.policy,
        terms(state),
    )
    .map_err(|rejection| Judge0Error::Invalid(submission::rejected(&rejection)))?;
    match state.store.submit(spec, admission).await? {
        Submitted::Created(id) | Submitted::Replayed(id) => Ok(id),
        Submitted::Full(_) => Err(Judge0Error::queue_full()),
        // Only a submit with an idempotency key can meet one, and these have none.
        Submitted::KeyReused(_) => Err(Judge0Error::from(super::ApiError::internal())),
    }
}

/// Stores submissions as one suite, each its own case judged against its expected output the
/// way Judge0 compares (right-trimmed lines); their tokens in order.
async fn store_suite(
    state: &AppState,
    admission: Admission,
    submissions: Vec<Submission>,
) -> Result<Vec<JobId>, Judge0Error> {
    let callback_url = one_callback(&submissions)?;
    let cases = submissions
        .into_iter()
        .enumerate()
        .map(|(i, submission)| submission.case_request((i + 1).to_string()))
        .collect();
    let request = BatchRequest {
        runtime: None,
        code: None,
        files: Default::default(),
        limits: Default::default(),
        compare: CompareMode::Trim,
        pass_at_k: Vec::new(),
        callback_each_case: callback_url.is_some(),
        callback_url,
        callback_shape: CallbackShape::Judge0,
        cases,
    };
    let spec = BatchSpec::validate(request, None, &state.config.policy, terms(state))
        .map_err(|rejection| Judge0Error::Invalid(submission::rejected(&rejection)))?;
    match state.store.submit_batch(spec, admission).await? {
        BatchSubmitted::Created { cases, .. } => Ok(cases.into_iter().map(|(_, id)| id).collect()),
        BatchSubmitted::Full(_) => Err(Judge0Error::queue_full()),
        BatchSubmitted::Replayed(_) | BatchSubmitted::KeyReused(_) => {
            Err(Judge0Error::from(super::ApiError::internal()))
        }
    }
}

/// The one `callback_url` of a suite's submissions: a suite calls back each case's end at one
/// URL, so submissions stored together must name the same one, or none.
fn one_callback(submissions: &[Submission]) -> Result<Option<String>, Judge0Error> {
    let first = submissions.first().and_then(|s| s.callback_url.clone());
    if submissions.iter().all(|s| s.callback_url == first) {
        return Ok(first);
    }
    let errors = submissions
        .iter()
        .map(|s| match s.callback_url == first {
            true => FieldErrors::new(),
            false => FieldErrors::from([(
                "callback_url",
                vec!["must be the same for every submission of a batch".to_owned()],
            )]),
        })
        .collect();
    Err(Judge0Error::InvalidBatch(errors))
}

/// `POST /submissions`: `201 {"token"}`, or with `wait=true` the finished submission, woken by
/// the commit of the job's end (at most kiln's longest wait, `max_wait`, after which it answers the
/// submission as it then is).
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Judge0Error> {
    let params = Params::parse(query);
    let fields = render::requested(params.fields.as_deref())?;
    let body = json_body(body)?;
    let mut read = read_all(&state, std::slice::from_ref(&body), params.base64)
        .map_err(|mut errors| Judge0Error::Invalid(errors.pop().unwrap_or_default()))?;
    let Some(submission) = read.pop() else {
        return Err(Judge0Error::from(super::ApiError::internal()));
    };
    let token = store_one(&state, admission(&state, &principal), submission).await?;
    if !params.wait() {
        return Ok((StatusCode::CREATED, Json(json!({"token": token}))).into_response());
    }
    let job = wait_for_end(&state, token, state.config.max_wait).await?;
    // The job exists, so Judge0 still answers 201, with its token for another try in base64.
    let shown = shown(&state, &job, &fields, params.base64)
        .await?
        .unwrap_or_else(|NotUtf8| json!({"token": token, "error": NOT_UTF8}));
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// The most submissions a batch may have here: Judge0's, or fewer if the operator allows fewer
/// cases in a suite.
fn max_batch(state: &AppState) -> usize {
    MAX_BATCH.min(state.config.policy.max_batch_cases)
}

fn batch_size_refused(state: &AppState, count: usize) -> Option<Judge0Error> {
    let max = max_batch(state);
    if count > max {
        Some(Judge0Error::bad_request(format!(
            "number of submissions in a batch should be less than or equal to {max}"
        )))
    } else if count == 0 {
        Some(Judge0Error::bad_request(
            "there should be at least one submission in a batch",
        ))
    } else {
        None
    }
}

/// `POST /submissions/batch`: every submission stored as a case of one suite, `201` with their
/// tokens in order. Unlike Judge0, which stores the valid ones of a batch and reports the others,
/// kiln stores a batch whole or not at all: one wrong submission is `422` with, for each, what is
/// wrong with it (`{}` for the good ones).
async fn batch_create(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Judge0Error> {
    let params = Params::parse(query);
    if params.wait() {
        return Err(Judge0Error::bad_request("wait not allowed"));
    }
    let body = json_body(body)?;
    let bodies = match body.get("submissions") {
        Some(Value::Array(bodies)) => bodies.as_slice(),
        _ => &[],
    };
    if let Some(refused) = batch_size_refused(&state, bodies.len()) {
        return Err(refused);
    }
    let submissions = read_all(&state, bodies, params.base64).map_err(Judge0Error::InvalidBatch)?;
    let tokens = store_suite(&state, admission(&state, &principal), submissions).await?;
    let body: Vec<Value> = tokens.iter().map(|t| json!({"token": t})).collect();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The job of a token, if the caller may see it.
async fn visible_job(
    state: &AppState,
    principal: &Principal,
    token: &str,
) -> Result<Option<Job>, Judge0Error> {
    let Ok(id) = JobId::parse_str(token) else {
        return Ok(None);
    };
    let who = principal.visibility();
    if who != Visibility::All && !state.store.job_visible(id, who).await? {
        return Ok(None);
    }
    Ok(state.store.job(id).await?)
}

/// `GET /submissions/{token}`.
async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(token): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Judge0Error> {
    let params = Params::parse(query);
    let fields = render::requested(params.fields.as_deref())?;
    let job = visible_job(&state, &principal, &token)
        .await?
        .ok_or_else(|| Judge0Error::not_found("submission"))?;
    let shown = shown(&state, &job, &fields, params.base64).await?;
    Ok(Json(
        shown.map_err(|NotUtf8| Judge0Error::bad_request(NOT_UTF8))?,
    ))
}

/// `GET /submissions/batch?tokens=a,b`: each in the order asked, `null` for one that does not
/// exist. The tokens may come in a `tokens` header instead, as Judge0 allows.
async fn batch_show(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Judge0Error> {
    let params = Params::parse(query);
    let fields = render::requested(params.fields.as_deref())?;
    let listed = headers
        .get("tokens")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.tokens.clone())
        .unwrap_or_default();
    let tokens: Vec<&str> = listed.trim().split(',').filter(|t| !t.is_empty()).collect();
    if let Some(refused) = batch_size_refused(&state, tokens.len()) {
        return Err(refused);
    }
    let mut submissions = Vec::with_capacity(tokens.len());
    for token in tokens {
        let submission = match visible_job(&state, &principal, token).await? {
            Some(job) => shown(&state, &job, &fields, params.base64)
                .await?
                .map_err(|NotUtf8| Judge0Error::bad_request(SOME_NOT_UTF8))?,
            None => Value::Null,
        };
        submissions.push(submission);
    }
    Ok(Json(json!({"submissions": submissions})))
}

/// A page number as Rails' `to_i` reads one: its leading digits, 0 for none.
fn leading_number(text: &str) -> i64 {
    let text = text.trim();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse::<i64>().map_or(0, |n| sign * n)
}

/// The most submissions `GET /submissions` shows on a page, where Judge0 has no limit.
const MAX_PER_PAGE: i64 = 1000;

/// `GET /submissions?page=&per_page=`: every submission, newest first, for an authorized caller.
async fn index(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Judge0Error> {
    if !authorized(&principal) {
        return Err(Judge0Error::Bare(StatusCode::FORBIDDEN));
    }
    let params = Params::parse(query);
    let fields = render::requested(params.fields.as_deref())?;
    let page = params.page.as_deref().map_or(1, leading_number);
    let per_page = params.per_page.as_deref().map_or(20, leading_number);
    if page <= 0 {
        return Err(Judge0Error::bad_request(format!("invalid page: {page}")));
    }
    if per_page <= 0 {
        return Err(Judge0Error::bad_request(format!(
            "invalid per_page: {per_page}"
        )));
    }
    let per_page = per_page.min(MAX_PER_PAGE);
    let skip = (page - 1).saturating_mul(per_page);
    let (jobs, total) = state.store.jobs_page(skip, per_page).await?;
    let mut submissions = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let shown = shown(&state, job, &fields, params.base64).await?;
        submissions.push(shown.map_err(|NotUtf8| Judge0Error::bad_request(SOME_NOT_UTF8))?);
    }
    let total_pages = (total + per_page - 1) / per_page;
    Ok(Json(json!({
        "submissions": submissions,
        "meta": {
            "current_page": page,
            "next_page": (page < total_pages).then_some(page + 1),
            "prev_page": (page > 1).then_some(page - 1),
            "total_pages": total_pages,
            "total_count": total,
        },
    })))
}

/// Judge0's authorization: an admin token, or any caller of a server with no tokens.
fn authorized(principal: &Principal) -> bool {
    matches!(
        principal,
        Principal::Open | Principal::Token { admin: true, .. }
    )
}

/// `DELETE /submissions/{token}`: kiln's history is append-only, so deleting is not allowed, as
/// on a Judge0 without `ENABLE_SUBMISSION_DELETE` (which asks for authorization first).
async fn destroy(principal: Principal) -> Judge0Error {
    if !authorized(&principal) {
        return Judge0Error::Bare(StatusCode::FORBIDDEN);
    }
    Judge0Error::bad_request("delete not allowed")
}

/// Every language offered here, by id and name, the multi-file program in its place among them.
fn listed_languages(state: &AppState) -> Vec<(u64, String)> {
    let mut listed: Vec<(u64, String)> = languages_offered(state)
        .into_iter()
        .map(|(id, runtime)| (u64::from(id), language_name(runtime)))
        .collect();
    if multi_file_offered(state) {
        listed.push((files::MULTI_FILE, MULTI_FILE_NAME.to_owned()));
        listed.sort_by_key(|(id, _)| *id);
    }
    listed
}

async fn languages(State(state): State<AppState>) -> Json<Value> {
    let listed: Vec<Value> = listed_languages(&state)
        .into_iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    Json(json!(listed))
}

async fn all_languages(State(state): State<AppState>) -> Json<Value> {
    let listed: Vec<Value> = listed_languages(&state)
        .into_iter()
        .map(|(id, name)| json!({"id": id, "name": name, "is_archived": false}))
        .collect();
    Json(json!(listed))
}

/// A command line as a person would type it.
fn command_line(command: &crate::runtime::Command) -> String {
    command
        .identity()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn language(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Judge0Error> {
    if id == files::MULTI_FILE.to_string() && multi_file_offered(&state) {
        // Judge0's own has no source file or commands: the archive brings its scripts.
        return Ok(Json(json!({
            "id": files::MULTI_FILE,
            "name": MULTI_FILE_NAME,
            "is_archived": false,
            "source_file": null,
            "compile_cmd": null,
            "run_cmd": null,
        })));
    }
    let offered = id.parse::<u32>().ok().and_then(|id| {
        languages_offered(&state)
            .into_iter()
            .find(|(i, _)| *i == id)
    });
    let Some((id, runtime)) = offered else {
        return Err(Judge0Error::not_found("language"));
    };
    Ok(Json(json!({
        "id": id,
        "name": language_name(runtime),
        "is_archived": false,
        "source_file": runtime.source_file(""),
        "compile_cmd": runtime.compile.as_ref().map(|c| command_line(&c.command)),
        "run_cmd": command_line(&runtime.run),
    })))
}

async fn statuses() -> Json<Value> {
    let listed: Vec<Value> = render::STATUSES
        .iter()
        .map(|(id, description)| json!({"id": id, "description": description}))
        .collect();
    Json(json!(listed))
}

async fn about() -> Json<Value> {
    Json(json!({
        "version": VERSION,
        "homepage": "https://github.com/kiln-queue/kiln",
        "source_code": "https://github.com/kiln-queue/kiln",
        "maintainer": format!("kiln {}", env!("CARGO_PKG_VERSION")),
    }))
}

async fn version() -> &'static str {
    VERSION
}

/// Milliseconds as Judge0's seconds.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Every key of Judge0 v1.13.1's `Config.config_info` (the SDK requires all of them), in
/// Judge0's units: kiln's defaults, and the lower of Judge0's maxima and the operator's caps.
async fn config_info(State(state): State<AppState>) -> Json<Value> {
    let policy = &state.config.policy;
    let (default, max) = (&policy.default_limits, &policy.max_limits);
    let kb = |bytes: u64| bytes / 1024;
    Json(json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": false,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": true,
        "enable_submission_delete": false,
        "enable_callbacks": state.config.judge0_callbacks,
        "callbacks_max_tries": CALLBACKS_MAX_TRIES.min(state.config.webhooks.max_attempts),
        "callbacks_timeout": CALLBACKS_TIMEOUT_SECS.min(state.config.webhooks.timeout.as_secs()) as f64,
        "enable_additional_files": true,
        "max_queue_size": state.config.max_queued_jobs,
        "cpu_time_limit": seconds(default.cpu_ms.min(max.cpu_ms)),
        "max_cpu_time_limit": Maxima::CPU_TIME_LIMIT.min(seconds(max.cpu_ms)),
        "cpu_extra_time": 0.0,
        "max_cpu_extra_time": Maxima::CPU_EXTRA_TIME,
        "wall_time_limit": seconds(default.wall_ms.min(max.wall_ms)),
        "max_wall_time_limit": Maxima::WALL_TIME_LIMIT.min(seconds(max.wall_ms)),
        "memory_limit": default.memory_mb.min(max.memory_mb) * 1024,
        "max_memory_limit": (Maxima::MEMORY_LIMIT as u64).min(max.memory_mb * 1024),
        "stack_limit": 64000,
        "max_stack_limit": Maxima::STACK_LIMIT as u64,
        "max_processes_and_or_threads": default.processes.min(max.processes),
        "max_max_processes_and_or_threads": (Maxima::MAX_PROCESSES as u64).min(max.processes),
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": false,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": false,
        "max_file_size": kb(default.file_bytes.min(max.file_bytes)),
        "max_max_file_size": (Maxima::MAX_FILE_SIZE as u64).min(kb(max.file_bytes)),
        "number_of_runs": 1,
        "max_number_of_runs": Maxima::NUMBER_OF_RUNS as u64,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": extract_bounds(&state).max_bytes / 1024,
        "enable_batched_submissions": true,
        "max_submission_batch_size": max_batch(&state),
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": false,
        "allow_enable_network": false,
        "enable_network": false,
    }))
}

async fn system_info(State(state): State<AppState>) -> Json<Value> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Json(json!({
        "Architecture": std::env::consts::ARCH,
        "CPU(s)": cpus.to_string(),
        "Workers": state.config.workers.to_string(),
    }))
}

/// How many jobs there are in each Judge0 status that a count of kiln's statuses can tell:
/// queued and running exactly, the finished ones by kiln's status.
async fn statistics(State(state): State<AppState>) -> Result<Json<Value>, Judge0Error> {
    let depth = state.store.queue_depth().await?;
    let total: i64 = depth.values().sum();
    Ok(Json(json!({
        "now": crate::job::time::rfc3339(crate::job::time::now_ms()),
        "submissions": {"total": total},
        "statuses": depth,
    })))
}

/// One queue, kiln's, with its workers.
async fn workers(State(state): State<AppState>) -> Result<Json<Value>, Judge0Error> {
    let depth = state.store.queue_depth().await?;
    let queued = depth.get("queued").copied().unwrap_or(0);
    let available = state.config.workers;
    let working = state.running.len().min(available);
    Ok(Json(json!([{
        "queue": "kiln",
        "size": queued,
        "available": available,
        "idle": available - working,
        "working": working,
        "paused": 0,
        "failed": 0,
    }])))
}

/// The token was good: the door let the request in.
async fn authenticate() -> StatusCode {
    StatusCode::OK
}

async fn authorize(principal: Principal) -> StatusCode {
    match authorized(&principal) {
        true => StatusCode::OK,
        false => StatusCode::FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_numbers_are_read_as_rails_reads_them() {
        assert_eq!(leading_number("3"), 3);
        assert_eq!(leading_number(" 2abc"), 2);
        assert_eq!(leading_number("abc"), 0);
        assert_eq!(leading_number("-4"), -4);
        assert_eq!(leading_number(""), 0);
    }
}
