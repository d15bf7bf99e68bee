//! `POST /v1/jobs/{id}/stdin`: bytes for the stdin of an interactive job, appended to what its
//! run reads ([`crate::stdin`]), and `?close=true` to give it EOF. The body is the bytes as they
//! are, in any content type, so any bytes can be sent. Only a job submitted with
//! `interactive: true` has a stdin to write to, and only until it ends or its stdin is closed.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{PathId, Query};
use crate::job::JobId;
use crate::stdin::{BUFFER_BYTES, WriteError};

/// How long a write waits for the program to read what was written before it; past this the
/// program is taken not to be reading, and the write is refused rather than held.
const ROOM_WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StdinQuery {
    /// Close the stdin after these bytes: the program reads EOF once it has read them.
    #[serde(default)]
    close: bool,
}

/// What a write answers.
#[derive(Serialize, ToSchema)]
pub struct StdinWritten {
    #[schema(value_type = String, format = "uuid")]
    id: JobId,
    /// Bytes appended.
    written: usize,
    /// Whether the stdin is now closed.
    closed: bool,
}

/// Append bytes to an interactive job's stdin while it runs (or before, while it is queued).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/stdin",
    tag = "jobs",
    operation_id = "write_job_stdin",
    params(("id" = String, Path, format = "uuid", description = "The job's id"), StdinQuery),
    request_body(content = String, content_type = "application/octet-stream",
        description = "The bytes, as they are"),
    responses(
        (status = 200, description = "Appended", body = StdinWritten),
        (status = 400, description = "An id or a query that is not valid", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not interactive, has ended, or its stdin is closed", body = ErrorBody),
        (status = 413, description = "More than 1 MiB in one write", body = ErrorBody),
        (status = 503, description = "The program has not read what was written before", body = ErrorBody),
    )
)]
pub async fn write(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<StdinQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StdinWritten>, ApiError> {
    let bytes = body.map_err(|e| match super::extract::timed_out(&e) {
        Some(late) => late,
        None => ApiError::new(e.status(), ErrorCode::InvalidBody, e.body_text()),
    })?;
    if bytes.len() > BUFFER_BYTES {
        return Err(refused(WriteError::TooLarge));
    }
    writable(&state, id).await?;
    let written = bytes.len();
    let stdins = state.live.stdins();
    if stdins.open(id) {
        // A job that ends before it runs here (cancelled while queued) is never run, so its
        // worker never forgets its stdin: this does, once it ended.
        tokio::spawn(forget_when_ended(state.clone(), id));
    }
    match tokio::time::timeout(ROOM_WAIT, stdins.write(id, bytes, query.close)).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(refused(why)),
        Err(_) => {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StdinFull,
                    "the program has not read what was written to its stdin before; try again later",
                )
            });
        }
    }
    // It may have ended meanwhile: then nobody will read this, and it is not kept.
    if state
        .store
        .job_stdin(id)
        .await?
        .is_none_or(|(status, _)| status.is_terminal())
    {
        stdins.forget(id);
    }
    Ok(Json(StdinWritten {
        id,
        written,
        closed: query.close,
    }))
}

/// Forgets `id`'s stdin once the job ended (or the server stops).
async fn forget_when_ended(state: AppState, id: JobId) {
    loop {
        match super::jobs::wait_for_end(&state, id, Duration::from_secs(3600)).await {
            Ok(job) if !job.status.is_terminal() && !state.stopping.is_cancelled() => {}
            _ => break,
        }
    }
    state.live.stdins().forget(id);
}

/// Refuses a write to a job that has no open stdin: not interactive, ended, or closed.
pub(super) async fn writable(state: &AppState, id: JobId) -> Result<(), ApiError> {
    let (status, interactive) = state
        .store
        .job_stdin(id)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    if !interactive {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotInteractive,
            "the job was not submitted with interactive: true, so its stdin is what it was given",
        ));
    }
    if status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AlreadyFinished,
            format!("the job already ended with status {}", status.as_str()),
        ));
    }
    if state.live.stdins().is_closed(id) {
        return Err(refused(WriteError::Closed));
    }
    Ok(())
}

fn refused(why: WriteError) -> ApiError {
    let (status, code) = match why {
        WriteError::Closed => (StatusCode::CONFLICT, ErrorCode::StdinClosed),
        WriteError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
    };
    ApiError::new(status, code, why.to_string())
}
