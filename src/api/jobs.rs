//! The v1 job endpoints: submit, read back (optionally waiting for the end), list, follow events,
//! cancel.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{self, FileInPath, PathId, Query};
use super::streams;
use super::{AppState, access};
use crate::auth::{Principal, is_tenant_name};

use crate::job::content::{Content, Encoded, Encoding};
use crate::job::names::shown;
use crate::job::validate::JobRequest;
use crate::job::{BatchId, Event, Job, JobId, JobSpec, Limits, Outcome, Status};
use crate::store::{
    Admission, CancelResult, JobFilter, JobSummary, Order, Page, Submitted, Visibility,
};

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

/// Submit a job. It is committed to disk before the `202`: it survives a crash of the server
/// from then on. With an `Idempotency-Key`, the same request sent again answers the same job.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "submit_job",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
         pattern = "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$", description = "1 to 255 visible ASCII \
         characters: a retry with the same key and body answers the job the first created"),
    ),
    request_body = JobRequest,
    responses(
        (status = 202, description = "Stored; queued to run", body = JobAccepted,
            headers(
                ("Location" = String, description = "The job's URL"),
                ("Idempotent-Replayed" = Option<String>, description = "`true` when an earlier \
                 request with this key created the job"),
            ),
            links(
                ("get_job" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("cancel_job" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/id")))),
                ("job_events" = (operation_id = "job_events", parameters(("id" = "$response.body#/id")))),
            )
        ),
        (status = 400, description = "Not JSON, or a header that is not valid", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with another request", body = ErrorBody),
        (status = 413, description = "The body, the code, stdin or the files are too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "Well-formed, but not a job this server can run", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    extract::Json(request): extract::Json<JobRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let (id, replayed) = accept(&state, &principal, request, key).await?;
    if !replayed {
        // Built from what was just committed: reading it back would double the cost of a submit.
        let accepted = JobAccepted {
            id,
            status: Status::Queued,
        };
        return Ok(accepted_response(id, Json(accepted)));
    }
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    // Through a `Value`, whose keys are sorted: a replay has always answered in that order, unlike
    // `GET /v1/jobs/{id}` (the job's field order).
    let body = serde_json::to_value(&job).map_err(|e| {
        tracing::error!(error = %e, job = %id, "cannot render a job as JSON");
        ApiError::internal()
    })?;
    let mut response = accepted_response(id, Json(body));
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}

/// Validates and stores a job; true in the second place if an earlier identical request with the
/// same idempotency key had already created it.
pub(super) async fn accept(
    state: &AppState,
    principal: &Principal,
    request: JobRequest,
    key: Option<String>,
) -> Result<(JobId, bool), ApiError> {
    let spec = JobSpec::validate(request, key, &state.config.policy, |name, code| {
        state.runtimes.get(name).map(|runtime| runtime.terms(code))
    })?;
    match state
        .store
        .submit(spec, admission(state, principal))
        .await?
    {
        Submitted::Created(id) => Ok((id, false)),
        Submitted::Replayed(id) => Ok((id, true)),
        Submitted::Full(full) => Err(access::full(full)),
        Submitted::KeyReused(id) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::IdempotencyKeyReused,
            format!("this Idempotency-Key was already used for job {id} with a different request"),
        )),
    }
}

/// What a submit by `principal` may add, and whose it is.
pub(super) fn admission(state: &AppState, principal: &Principal) -> Admission {
    Admission {
        tenant: principal.tenant().map(str::to_owned),
        max_queued_jobs: state.config.max_queued_jobs,
        max_batches_in_flight: state.config.max_batches_in_flight,
    }
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            // `to_str` lets a tab through; a key is compared and shown, so no control characters.
            v.to_str()
                .ok()
                .filter(|key| !key.contains('\t'))
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidHeader,
                        "Idempotency-Key must be visible ASCII",
                    )
                })
        })
        .transpose()
}

/// What `POST /v1/jobs` answers: the new job's id and status. A replay answers the whole job
/// as it now is, which has these two fields too.
#[derive(Serialize, ToSchema)]
pub struct JobAccepted {
    #[schema(value_type = String, format = "uuid")]
    id: JobId,
    status: Status,
}

fn accepted_response(id: JobId, body: impl IntoResponse) -> Response {
    let mut response = (StatusCode::ACCEPTED, body).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to hold the request until it ends (at most the server's longest wait).
    #[param(minimum = 0)]
    pub(super) wait: Option<f64>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Seconds to hold the request until the job ends (at most the server's longest wait).
    #[param(minimum = 0)]
    wait: Option<f64>,
    /// `base64` has both streams in base64 whatever they hold; `utf-8` (the default) has each
    /// as text where it is UTF-8.
    #[serde(default)]
    #[param(inline)]
    encoding: Encoding,
}

/// A job with its result; with `wait`, held until the job ends or the wait passes.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    operation_id = "get_job",
    params(("id" = String, Path, format = "uuid", description = "The job's id"), JobQuery),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 400, description = "An id or a query that is not valid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<JobQuery>,
) -> Result<Json<Job>, ApiError> {
    let wait = wait_duration(&state, query.wait)?;
    let job = wait_for_end(&state, id, wait).await?;
    Ok(Json(match query.encoding {
        Encoding::Base64 => job.with_base64_output(),
        Encoding::Utf8 => job,
    }))
}

/// What a job was given to run, in the shape a submission takes: each content as text where it
/// is UTF-8, else `{"base64": ...}`. Without `expected_output`, it submits as it is to run the
/// job again.
#[derive(Serialize, ToSchema)]
pub struct JobInputBody {
    runtime: String,
    #[schema(value_type = Encoded)]
    code: Content,
    #[schema(value_type = Encoded)]
    stdin: Content,
    args: Vec<String>,
    #[schema(value_type = BTreeMap<String, Encoded>)]
    files: BTreeMap<String, Content>,
    outputs: Vec<String>,
    /// The limits it ran under, every default filled in.
    limits: Limits,
    priority: i32,
    max_attempts: u32,
    /// For a suite's case: what its stdout is compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Encoded>)]
    expected_output: Option<Content>,
}

/// What the job was given: its code, stdin, arguments, files and limits (a suite's case with
/// what it shares with its suite), as a submission would send them.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/input",
    tag = "jobs",
    operation_id = "get_job_input",
    params(("id" = String, Path, format = "uuid", description = "The job's id")),
    responses(
        (status = 200, description = "What the job was given", body = JobInputBody),
        (status = 400, description = "An id that is not valid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn input(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<JobInputBody>, ApiError> {
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    let input = state
        .store
        .job_input(id)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    Ok(Json(JobInputBody {
        runtime: job.runtime,
        code: input.code,
        stdin: input.stdin,
        args: input.args,
        files: input.files,
        outputs: job.outputs,
        limits: job.limits,
        priority: job.priority,
        max_attempts: job.max_attempts,
        expected_output: input.expected_output,
    }))
}

/// A file the job kept from its run, with its content type. Served as a download to be read
/// by a program, never rendered: what a job writes is as hostile as its code.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/files/{*path}",
    tag = "jobs",
    operation_id = "get_job_file",
    params(("id" = String, Path, format = "uuid", description = "The job's id"), ("path" = String, Path, description = "The file's path in the run's work directory")),
    responses(
        (status = 200, description = "The file's bytes, as a download, typed by its name's extension (`application/octet-stream` when it says nothing)", content_type = "*/*"),
        (status = 400, description = "An id or path that is not valid", body = ErrorBody),
        (status = 404, description = "No such job, or it kept no such file", body = ErrorBody),
    )
)]
pub async fn file(
    State(state): State<AppState>,
    PathId(id): PathId,
    FileInPath(path): FileInPath,
) -> Result<Response, ApiError> {
    let Some((content_type, contents)) = state.store.job_file(id, path.clone()).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::FileNotFound,
            format!("job {id} kept no file {}", shown(&path)),
        ));
    };
    let content_type = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        ),
    ];
    Ok((headers, contents).into_response())
}

pub(super) fn wait_duration(state: &AppState, wait: Option<f64>) -> Result<Duration, ApiError> {
    wait_within(wait, state.config.max_wait)
}

/// `?wait=` seconds as a duration of at most `max`.
pub(super) fn wait_within(wait: Option<f64>, max: Duration) -> Result<Duration, ApiError> {
    match wait {
        None => Ok(Duration::ZERO),
        Some(s) if s.is_finite() && s >= 0.0 => {
            Ok(Duration::from_secs_f64(s.min(max.as_secs_f64())))
        }
        Some(_) => Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "wait must be a non-negative number of seconds",
        )),
    }
}

/// Reads the job; if it is not finished, holds on until it is, `wait` passes, or the server
/// begins to stop. Woken by the commit of the job's terminal event, not by polling.
pub(super) async fn wait_for_end(
    state: &AppState,
    id: JobId,
    wait: Duration,
) -> Result<Job, ApiError> {
    // Subscribed before the first read, so an end committed in between is not missed.
    let mut notices = state.store.bus().subscribe();
    let deadline = Instant::now() + wait;
    loop {
        let job = state
            .store
            .job(id)
            .await?
            .ok_or_else(ApiError::job_not_found)?;
        if job.status.is_terminal() || Instant::now() >= deadline {
            return Ok(job);
        }
        let ended = async {
            loop {
                match notices.recv().await {
                    Ok(n) if n.job_id == Some(id) && n.kind.is_terminal() => return,
                    Ok(_) => {}
                    // Missed some notices: read the job again to be sure.
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.stopping.cancelled() => return Ok(job),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The id of the last event seen: only later ones are answered.
    after: Option<i64>,
}

/// A job's events, oldest first.
#[derive(Serialize, ToSchema)]
pub struct EventList {
    events: Vec<Event>,
}

/// The job's events (after `?after=`), as JSON or, asked for `text/event-stream`, live.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "events",
    operation_id = "job_events",
    params(
        ("id" = String, Path, format = "uuid", description = "The job's id"),
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "The id of the last \
         event received, to resume after it (what an EventSource sends when it reconnects); it \
         takes the place of `after`"),
    ),
    responses(
        (status = 200, description = "The job's events; live as Server-Sent Events when \
         `Accept: text/event-stream` (events `job.*` with the stored event as data, `output` \
         with what the job writes, `output.lost`, comments as keep-alives)",
            content(
                (EventList = "application/json"),
                (String = "text/event-stream"),
            )
        ),
        (status = 400, description = "An id, query or Last-Event-ID that is not valid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    // Last-Event-ID resumes a JSON read as it resumes a stream, so a client may switch between them.
    let after = streams::resume_point(&headers, query.after)?;
    if streams::wanted(&headers) {
        return streams::job(state, id, after).await;
    }
    let events = state
        .store
        .job_events(id, after)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    Ok(Json(EventList { events }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Oldest first: the id of the last event seen.
    after: Option<i64>,
    /// Newest first: the id of the oldest event seen.
    before: Option<i64>,
    /// `oldest` (the default) or `newest`.
    #[param(pattern = "^(oldest|newest)$")]
    order: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of the feed: oldest first it has `next_after`, the id to pass back as `after` (the
/// same `after` when there is nothing new); newest first `next_before`, `null` at the oldest.
#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    events: Vec<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, required = false)]
    next_before: Option<Option<i64>>,
}

/// The global feed, for pollers: `?after=` the last event id seen. `order=newest` (or
/// `?before=`) pages back from the newest, for a person catching up. Asked for
/// `text/event-stream`, it follows live instead of returning a page.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "event_feed",
    params(
        FeedQuery,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "The id of the last \
         event received, to resume after it (what an EventSource sends when it reconnects); it \
         takes the place of `after`"),
    ),
    responses(
        (status = 200, description = "A page of the history the caller may see; live as \
         Server-Sent Events when `Accept: text/event-stream`",
            content(
                (FeedPage = "application/json"),
                (String = "text/event-stream"),
            )
        ),
        (status = 400, description = "A query or Last-Event-ID that is not valid", body = ErrorBody),
    )
)]
pub async fn feed(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    // A tenant's feed holds its own events only; the whole feed is for admins.
    let who = principal.visibility();
    let resumed = streams::resume_point(&headers, query.after)?;
    if streams::wanted(&headers) {
        return streams::feed(state, who, resumed).await;
    }
    let limit = page_size(query.limit)?;
    let after = if headers.contains_key("last-event-id") {
        Some(resumed)
    } else {
        query.after
    };
    let newest = match (query.order.as_deref(), after, query.before) {
        (_, Some(_), Some(_)) | (Some("newest"), Some(_), _) | (Some("oldest"), _, Some(_)) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "after= pages order=oldest, before= pages order=newest; give one",
            ));
        }
        (Some("newest"), ..) | (None, None, Some(_)) => true,
        (Some("oldest") | None, ..) => false,
        (Some(other), ..) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("order={} is not oldest or newest", shown(other)),
            ));
        }
    };
    if newest {
        let events = state.store.events_before(who, query.before, limit).await?;
        let next_before = (events.len() == limit as usize)
            .then(|| events.last().map(|e| e.id))
            .flatten();
        let page = FeedPage {
            events,
            next_after: None,
            next_before: Some(next_before),
        };
        return Ok(Json(page).into_response());
    }
    let after = after.unwrap_or(0);
    let events = state.store.events_after(who, after, limit).await?;
    let next_after = events.last().map_or(after, |e| e.id);
    let page = FeedPage {
        events,
        next_after: Some(next_after),
        next_before: None,
    };
    Ok(Json(page).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Only jobs that ended for this reason.
    #[param(value_type = Option<Outcome>)]
    outcome: Option<String>,
    /// Only jobs submitted at or after this time (RFC 3339, UTC: `2026-12-03T06:00:00Z`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only jobs submitted before this time (RFC 3339, UTC).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Only jobs of this runtime (a name or an alias).
    runtime: Option<String>,
    /// Only the cases of this batch.
    #[param(format = "uuid")]
    batch: Option<String>,
    /// `oldest` (the default) or `newest`.
    #[param(pattern = "^(oldest|newest)$")]
    order: Option<String>,
    /// Oldest first: the id of the last job seen.
    #[param(format = "uuid")]
    after: Option<String>,
    /// Newest first: the id of the oldest job seen.
    #[param(format = "uuid")]
    before: Option<String>,
    /// For an admin: only this tenant's jobs (a tenant's token may name only its own).
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    tenant: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Where the next page of a listing starts, named for its order: `next_after` oldest first,
/// `next_before` newest first; `null` on the last page. A page has one of them.
#[derive(Serialize, ToSchema)]
pub struct Cursor {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid", required = false)]
    next_after: Option<Option<JobId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid", required = false)]
    next_before: Option<Option<JobId>>,
}

/// A page of jobs, without their code, input or output.
#[derive(Serialize, ToSchema)]
pub struct JobPage {
    jobs: Vec<JobSummary>,
    #[serde(flatten)]
    next: Cursor,
}

/// How a listing pages, shared by jobs and batches: `order=oldest` continues `after=` the last
/// id of a page (`next_after`), `order=newest` continues `before=` it (`next_before`). Giving a
/// cursor names its order; `tenant=` narrows an admin's listing to one tenant.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// `oldest` or `newest` (the default of each listing is its own).
    #[param(pattern = "^(oldest|newest)$")]
    order: Option<String>,
    /// Oldest first: the id of the last row seen.
    #[param(format = "uuid")]
    after: Option<String>,
    /// Newest first: the id of the oldest row seen.
    #[param(format = "uuid")]
    before: Option<String>,
    /// For an admin: only this tenant's rows (a tenant's token may name only its own).
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    tenant: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl PageQuery {
    /// Whose rows, and which page of them; `default` is the order without `order=` or a cursor.
    pub(super) fn resolve(
        self,
        principal: &Principal,
        default: Order,
    ) -> Result<(Visibility, Page), ApiError> {
        let invalid = |message: String| ApiError::bad_request(ErrorCode::InvalidQuery, message);
        let asked = match self.order.as_deref() {
            None => None,
            Some("oldest") => Some(Order::OldestFirst),
            Some("newest") => Some(Order::NewestFirst),
            Some(other) => {
                return Err(invalid(format!(
                    "order={} is not oldest or newest",
                    shown(other)
                )));
            }
        };
        let order = match (asked, &self.after, &self.before) {
            (_, Some(_), Some(_)) => {
                return Err(invalid("give after= or before=, not both".to_owned()));
            }
            (Some(Order::NewestFirst), Some(_), None)
            | (Some(Order::OldestFirst), None, Some(_)) => {
                return Err(invalid(
                    "after= pages order=oldest, before= pages order=newest".to_owned(),
                ));
            }
            (_, Some(_), None) => Order::OldestFirst,
            (_, None, Some(_)) => Order::NewestFirst,
            (Some(order), None, None) => order,
            (None, None, None) => default,
        };
        let cursor = self
            .after
            .or(self.before)
            .map(|id| {
                JobId::parse_str(&id).map_err(|_| invalid(format!("{} is not an id", shown(&id))))
            })
            .transpose()?;
        if let Some(tenant) = self.tenant.as_deref().filter(|t| !is_tenant_name(t)) {
            return Err(invalid(format!(
                "tenant={} is not a tenant's name: 1 to 64 letters, digits, '.', '_' or '-'",
                shown(tenant)
            )));
        }
        let who = match (principal.visibility(), self.tenant) {
            (who, None) => who,
            (Visibility::All, Some(tenant)) => Visibility::Tenant(tenant),
            (Visibility::Tenant(own), Some(tenant)) if own == tenant => Visibility::Tenant(own),
            (Visibility::Tenant(_), Some(_)) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    "only an admin token may list another tenant's rows",
                ));
            }
        };
        let limit = page_size(self.limit)?;
        Ok((
            who,
            Page {
                order,
                cursor,
                limit,
            },
        ))
    }
}

/// The cursor of the page after this one, named for its order; `null` on the last page.
pub(super) fn next_page(page: Page, count: usize, last: Option<JobId>) -> Cursor {
    let next = Some(last.filter(|_| count == page.limit as usize));
    match page.order {
        Order::OldestFirst => Cursor {
            next_after: next,
            next_before: None,
        },
        Order::NewestFirst => Cursor {
            next_after: None,
            next_before: next,
        },
    }
}

/// Jobs, oldest first unless asked otherwise: the order, and the meaning of `after=`, it has
/// always had.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    operation_id = "list_jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A query that is not valid", body = ErrorBody),
        (status = 403, description = "Another tenant's jobs, asked by a tenant's token", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let status = query
        .status
        .map(|s| {
            Status::parse(&s).ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("unknown status {}", shown(&s)),
                )
            })
        })
        .transpose()?;
    let batch = query
        .batch
        .map(|b| {
            BatchId::parse_str(&b).map_err(|_| {
                ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("batch={} is not a batch id", shown(&b)),
                )
            })
        })
        .transpose()?;
    // Jobs are stored under their runtime's name, whichever alias they were submitted with.
    let runtime = query.runtime.map(|name| {
        state
            .runtimes
            .get(&name)
            .map_or(name, |runtime| runtime.name.clone())
    });
    let outcome = query
        .outcome
        .map(|o| {
            Outcome::parse(&o).ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("unknown outcome {}", shown(&o)),
                )
            })
        })
        .transpose()?;
    let filter = JobFilter {
        status,
        outcome,
        runtime,
        batch,
        since: query
            .since
            .as_deref()
            .map(|t| instant("since", t))
            .transpose()?,
        until: query
            .until
            .as_deref()
            .map(|t| instant("until", t))
            .transpose()?,
    };
    let paging = PageQuery {
        order: query.order,
        after: query.after,
        before: query.before,
        tenant: query.tenant,
        limit: query.limit,
    };
    let (who, page) = paging.resolve(&principal, Order::OldestFirst)?;
    let jobs = state.store.list_jobs(who, filter, page).await?;
    let next = next_page(page, jobs.len(), jobs.last().map(|j| j.id));
    Ok(Json(JobPage { jobs, next }))
}

/// A query's time: RFC 3339 in UTC (`2026-12-03T06:00:00Z`, fractions of a second allowed).
fn instant(name: &str, text: &str) -> Result<i64, ApiError> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("{name}={} is not an RFC 3339 time", shown(text)),
            )
        })
}

pub(super) fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        0 => Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "limit must be positive",
        )),
        n if n > MAX_PAGE => Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("limit must be at most {MAX_PAGE}"),
        )),
        n => Ok(n),
    }
}

/// How long a cancel's answer waits for the cancelled run's output to be stored: a killed run
/// ends in milliseconds; past this the answer goes without it (it is stored all the same).
const CANCEL_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Cancel a job: a queued one never runs, a running one is killed with its whole process tree.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    tag = "jobs",
    operation_id = "cancel_job",
    params(("id" = String, Path, format = "uuid", description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled: the job as it ended", body = Job),
        (status = 400, description = "An id that is not valid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job had already ended", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Job>, ApiError> {
    match state.store.cancel(id).await? {
        CancelResult::Cancelled { running_attempt } => {
            // If another server runs it, that server notices when its lease renewal fails, and
            // keeps the run's output on the job a moment later.
            let settled = running_attempt.and_then(|attempt| state.running.stop(id, attempt));
            if let Some(settled) = settled {
                // Run here: the answer waits (briefly) for the output and usage it produced.
                let _ = tokio::time::timeout(CANCEL_SETTLE, settled.cancelled()).await;
            }
            let job = state
                .store
                .job(id)
                .await?
                .ok_or_else(ApiError::job_not_found)?;
            Ok(Json(job))
        }
        CancelResult::AlreadyFinished(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AlreadyFinished,
            format!("the job already ended with status {}", status.as_str()),
        )),
        CancelResult::NotFound => Err(ApiError::job_not_found()),
    }
}
