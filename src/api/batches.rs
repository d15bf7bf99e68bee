//! The v1 batch endpoints: submit a test suite, read its progress and totals (optionally waiting
//! for its end), list its cases and its groups with their pass@k, render its JUnit report,
//! cancel what has not finished.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{self, BatchPath, Query};
use super::jobs::{
    Cursor, PageQuery, WaitQuery, admission, idempotency_key, next_page, page_size, wait_duration,
};
use super::junit;
use super::ndjson;
use super::streams;
use super::{AppState, access};
use crate::auth::Principal;
use crate::job::batch::{Batch, BatchSpec, Case, Group};
use crate::job::names::shown;
use crate::job::validate::BatchRequest;
use crate::job::{BatchId, Event, EventKind, JobId};
use crate::store::{BatchCancel, BatchSubmitted, BatchSummary, Order};

/// Batches the caller may see, newest first unless asked otherwise (`order=`, `after=` and
/// `before=` as for jobs).
#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batches",
    operation_id = "list_batches",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of batches", body = BatchPage),
        (status = 400, description = "A query that is not valid", body = ErrorBody),
        (status = 403, description = "Another tenant's batches, asked by a tenant's token", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (who, page) = query.resolve(&principal, Order::NewestFirst)?;
    let batches = state.store.list_batches(who, page).await?;
    let next = next_page(page, batches.len(), batches.last().map(|b| b.id));
    Ok(Json(BatchPage { batches, next }))
}

/// A page of batches, without their per-status and per-verdict totals.
#[derive(Serialize, ToSchema)]
pub struct BatchPage {
    batches: Vec<BatchSummary>,
    #[serde(flatten)]
    next: Cursor,
}

/// What `POST /v1/batches` answers: the batch's id and each case's job.
#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    #[schema(value_type = String, format = "uuid")]
    id: BatchId,
    done: bool,
    cases: Vec<CaseJob>,
}

/// A case's name and the job that runs it.
#[derive(Serialize, ToSchema)]
pub struct CaseJob {
    name: String,
    #[schema(value_type = String, format = "uuid")]
    job_id: JobId,
}

/// Characters of each case's expected output, stdout and stderr a report quotes.
const REPORT_EXCERPT: u32 = 4096;

/// Stores a suite sent whole (a JSON body) or as a stream of lines ([`ndjson`]), and answers
/// its batch's id and its cases' job ids.
#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "batches",
    operation_id = "submit_batch",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
         pattern = "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$", description = "As for a job: a retry with \
         the same key and suite answers the batch the first created"),
    ),
    request_body(
        description = "A suite as one JSON object, or as `application/x-ndjson`: the suite's own \
                       fields on the first line and a case on each line after it",
        content(
            (BatchRequest = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 202, description = "Stored, every case with it", body = BatchAccepted,
            headers(
                ("Location" = String, description = "The batch's URL"),
                ("Idempotent-Replayed" = Option<String>, description = "`true` when an earlier \
                 request with this key created the batch"),
            ),
            links(
                ("get_batch" = (operation_id = "get_batch", parameters(("id" = "$response.body#/id")))),
                ("batch_cases" = (operation_id = "batch_cases", parameters(("id" = "$response.body#/id")))),
                ("batch_events" = (operation_id = "batch_events", parameters(("id" = "$response.body#/id")))),
                ("cancel_batch" = (operation_id = "cancel_batch", parameters(("id" = "$response.body#/id")))),
            )
        ),
        (status = 400, description = "Not JSON, a line that is not, or a header that is not valid", body = ErrorBody),
        (status = 408, description = "The body came too slowly", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with another suite", body = ErrorBody),
        (status = 413, description = "The body, a case or the suite is too large", body = ErrorBody),
        (status = 415, description = "Neither JSON nor NDJSON", body = ErrorBody),
        (status = 422, description = "Well-formed, but not a suite this server can run", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let admission = admission(&state, &principal);
    let submitted = if ndjson::wanted(&headers) {
        let key = idempotency_key(&headers)?;
        ndjson::submit(&state, request.into_body(), key, admission).await?
    } else {
        let extract::Json(request) =
            extract::Json::<BatchRequest>::from_request(request, &state).await?;
        let key = idempotency_key(&headers)?;
        let spec = BatchSpec::validate(request, key, &state.config.policy, |name, code| {
            state.runtimes.get(name).map(|runtime| runtime.terms(code))
        })?;
        state.store.submit_batch(spec, admission).await?
    };
    let (id, cases, replayed) = match submitted {
        BatchSubmitted::Created { id, cases } => {
            let cases: Vec<_> = cases
                .into_iter()
                .map(|(name, job_id)| CaseJob { name, job_id })
                .collect();
            (id, cases, false)
        }
        BatchSubmitted::Replayed(id) => {
            let cases = state
                .store
                .batch_cases(id, None, u32::MAX)
                .await?
                .ok_or_else(ApiError::batch_not_found)?;
            let cases = cases
                .into_iter()
                .map(|c| CaseJob {
                    name: c.name,
                    job_id: c.job_id,
                })
                .collect();
            (id, cases, true)
        }
        BatchSubmitted::Full(full) => return Err(access::full(full)),
        BatchSubmitted::KeyReused(id) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "this Idempotency-Key was already used for batch {id} with a different suite"
                ),
            ));
        }
    };
    let body = BatchAccepted {
        id,
        done: false,
        cases,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/batches/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    tag = "batches",
    operation_id = "get_batch",
    params(("id" = String, Path, format = "uuid", description = "The batch's id"), WaitQuery),
    responses(
        (status = 200, description = "The batch and its totals", body = Batch),
        (status = 400, description = "An id or a query that is not valid", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Batch>, ApiError> {
    let wait = wait_duration(&state, query.wait)?;
    Ok(Json(wait_for_batch(&state, id, wait).await?))
}

/// Reads the batch; if it is not done, holds on until it is, `wait` passes, or the server begins
/// to stop. Woken by the commit of its `batch.completed` event.
async fn wait_for_batch(state: &AppState, id: BatchId, wait: Duration) -> Result<Batch, ApiError> {
    // Subscribed before the first read, so a completion committed in between is not missed.
    let mut notices = state.store.bus().subscribe();
    let deadline = Instant::now() + wait;
    loop {
        let batch = state
            .store
            .batch(id)
            .await?
            .ok_or_else(ApiError::batch_not_found)?;
        if batch.done || Instant::now() >= deadline {
            return Ok(batch);
        }
        let completed = async {
            loop {
                match notices.recv().await {
                    Ok(n) if n.batch_id == Some(id) && n.kind == EventKind::BatchCompleted => {
                        return;
                    }
                    Ok(_) => {}
                    // Missed some notices: read the batch again to be sure.
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            () = completed => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = state.stopping.cancelled() => return Ok(batch),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The id of the last event seen.
    after: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of a batch's events: pass `next_after` back as `after` (the same `after` when there
/// is nothing new).
#[derive(Serialize, ToSchema)]
pub struct BatchEventPage {
    events: Vec<Event>,
    next_after: i64,
}

/// The batch's own events and every event of its cases, oldest first, a page at a time (pass
/// `next_after` back as `after`); asked for `text/event-stream`, live until the batch completes.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}/events",
    tag = "events",
    operation_id = "batch_events",
    params(
        ("id" = String, Path, format = "uuid", description = "The batch's id"),
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "The id of the last \
         event received, to resume after it (what an EventSource sends when it reconnects); it \
         takes the place of `after`"),
    ),
    responses(
        (status = 200, description = "The batch's events and its cases'; live as Server-Sent \
         Events when `Accept: text/event-stream`, until the batch completes",
            content(
                (BatchEventPage = "application/json"),
                (String = "text/event-stream"),
            )
        ),
        (status = 400, description = "An id, query or Last-Event-ID that is not valid", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let after = streams::resume_point(&headers, query.after)?;
    if streams::wanted(&headers) {
        return streams::batch(state, id, after).await;
    }
    let limit = page_size(query.limit)?;
    let events = state
        .store
        .batch_events(id, after, limit)
        .await?
        .ok_or_else(ApiError::batch_not_found)?;
    let next_after = events.last().map_or(after, |e| e.id);
    Ok(Json(BatchEventPage { events, next_after }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CasesQuery {
    /// The `index` of the last case seen: the page starts after it.
    after: Option<u32>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of cases: pass `next_after` back as `after`; `null` on the last page.
#[derive(Serialize, ToSchema)]
pub struct CasePage {
    cases: Vec<Case>,
    next_after: Option<u32>,
}

/// The cases in suite order, a page at a time: pass `next_after` back as `after`.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}/cases",
    tag = "batches",
    operation_id = "batch_cases",
    params(("id" = String, Path, format = "uuid", description = "The batch's id"), CasesQuery),
    responses(
        (status = 200, description = "A page of the batch's cases", body = CasePage),
        (status = 400, description = "An id or a query that is not valid", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub async fn cases(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
    Query(query): Query<CasesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page_size(query.limit)?;
    let cases = state
        .store
        .batch_cases(id, query.after, limit)
        .await?
        .ok_or_else(ApiError::batch_not_found)?;
    let next_after = (cases.len() == limit as usize)
        .then(|| cases.last().map(|c| c.index))
        .flatten();
    Ok(Json(CasePage { cases, next_after }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GroupsQuery {
    /// The `name` of the last group seen: the page starts after it.
    after: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of groups: pass `next_after` back as `after`; `null` on the last page.
#[derive(Serialize, ToSchema)]
pub struct GroupPage {
    groups: Vec<Group>,
    next_after: Option<String>,
}

/// The batch's groups in name order, each with its cases, those ended and passed, and its
/// pass@k, a page at a time: pass `next_after` back as `after`.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}/groups",
    tag = "batches",
    operation_id = "batch_groups",
    params(("id" = String, Path, format = "uuid", description = "The batch's id"), GroupsQuery),
    responses(
        (status = 200, description = "A page of the batch's groups", body = GroupPage),
        (status = 400, description = "An id or a query that is not valid", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub async fn groups(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
    Query(query): Query<GroupsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page_size(query.limit)?;
    let groups = state
        .store
        .batch_groups(id, query.after, limit)
        .await?
        .ok_or_else(ApiError::batch_not_found)?;
    let next_after = (groups.len() == limit as usize)
        .then(|| groups.last().map(|g| g.name.clone()))
        .flatten();
    Ok(Json(GroupPage { groups, next_after }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// `junit`, the one format offered.
    #[param(pattern = "^junit$")]
    format: Option<String>,
}

/// The batch as a JUnit XML report, the format CI systems ingest.
#[utoipa::path(
    get,
    path = "/v1/batches/{id}/report",
    tag = "batches",
    operation_id = "batch_report",
    params(("id" = String, Path, format = "uuid", description = "The batch's id"), ReportQuery),
    responses(
        (status = 200, description = "The JUnit XML report", content_type = "application/xml", body = String),
        (status = 400, description = "An id or a format that is not valid", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub async fn report(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    match query.format.as_deref() {
        None | Some("junit") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!(
                    "unknown report format {}; the one offered is junit",
                    shown(other)
                ),
            ));
        }
    }
    let (batch, cases) = state
        .store
        .batch_report(id, REPORT_EXCERPT)
        .await?
        .ok_or_else(ApiError::batch_not_found)?;
    let xml = junit::render(&batch, &cases);
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        xml,
    )
        .into_response())
}

/// Cancels every case that has not finished; running ones are stopped as a job cancel stops them.
#[utoipa::path(
    post,
    path = "/v1/batches/{id}/cancel",
    tag = "batches",
    operation_id = "cancel_batch",
    params(("id" = String, Path, format = "uuid", description = "The batch's id")),
    responses(
        (status = 200, description = "Every case not ended is cancelled: the batch", body = Batch),
        (status = 400, description = "An id that is not valid", body = ErrorBody),
        (status = 404, description = "No such batch", body = ErrorBody),
        (status = 409, description = "Every case had already ended", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
) -> Result<Json<Batch>, ApiError> {
    match state.store.cancel_batch(id).await? {
        BatchCancel::Cancelled { running } => {
            for (job, attempt) in running {
                // If another server runs it, that server notices when its lease renewal fails.
                state.running.stop(job, attempt);
            }
            let batch = state
                .store
                .batch(id)
                .await?
                .ok_or_else(ApiError::batch_not_found)?;
            Ok(Json(batch))
        }
        BatchCancel::AlreadyDone => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AlreadyFinished,
            "every case of the batch has already ended",
        )),
        BatchCancel::NotFound => Err(ApiError::batch_not_found()),
    }
}
