//! The v1 batch endpoints: submit a test suite, read its progress and totals (optionally waiting
//! for its end), list its cases and its groups with their pass@k, render its JUnit report,
//! cancel what has not finished.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::error::{ApiError, ErrorCode};
use super::extract::{self, BatchPath, Query};
use super::jobs::{
    PageQuery, WaitQuery, admission, idempotency_key, next_page, page_size, wait_duration,
};
use super::junit;
use super::ndjson;
use super::streams;
use super::{AppState, access};
use crate::auth::Principal;
use crate::job::batch::{Batch, BatchSpec};
use crate::job::names::shown;
use crate::job::validate::BatchRequest;
use crate::job::{BatchId, EventKind};
use crate::store::{BatchCancel, BatchSubmitted, Order};

/// Batches the caller may see, newest first unless asked otherwise (`order=`, `after=` and
/// `before=` as for jobs).
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (who, page) = query.resolve(&principal, Order::NewestFirst)?;
    let batches = state.store.list_batches(who, page).await?;
    let (cursor, next) = next_page(page, batches.len(), batches.last().map(|b| b.id));
    let mut body = json!({ "batches": batches });
    body[cursor] = json!(next);
    Ok(Json(body))
}

/// Characters of each case's expected output, stdout and stderr a report quotes.
const REPORT_EXCERPT: u32 = 4096;

/// Stores a suite sent whole (a JSON body) or as a stream of lines ([`ndjson`]), and answers
/// its batch's id and its cases' job ids.
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
                .map(|(name, job_id)| json!({"name": name, "job_id": job_id}))
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
                .map(|c| json!({"name": c.name, "job_id": c.job_id}))
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
    let body = json!({"id": id, "done": false, "cases": cases});
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// The batch's own events and every event of its cases, oldest first, a page at a time (pass
/// `next_after` back as `after`); asked for `text/event-stream`, live until the batch completes.
pub async fn events(
    State(state): State<AppState>,
    BatchPath(id): BatchPath,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    if streams::wanted(&headers) {
        let after = streams::resume_point(&headers, query.after)?;
        return streams::batch(state, id, after).await;
    }
    let after = query.after.unwrap_or(0);
    let limit = page_size(query.limit)?;
    let events = state
        .store
        .batch_events(id, after, limit)
        .await?
        .ok_or_else(ApiError::batch_not_found)?;
    let next_after = events.last().map_or(after, |e| e.id);
    Ok(Json(json!({"events": events, "next_after": next_after})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesQuery {
    /// The `index` of the last case seen: the page starts after it.
    after: Option<u32>,
    limit: Option<u32>,
}

/// The cases in suite order, a page at a time: pass `next_after` back as `after`.
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
    Ok(Json(json!({"cases": cases, "next_after": next_after})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsQuery {
    /// The `name` of the last group seen: the page starts after it.
    after: Option<String>,
    limit: Option<u32>,
}

/// The batch's groups in name order, each with its cases, those ended and passed, and its
/// pass@k, a page at a time: pass `next_after` back as `after`.
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
    Ok(Json(json!({"groups": groups, "next_after": next_after})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    format: Option<String>,
}

/// The batch as a JUnit XML report, the format CI systems ingest.
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
