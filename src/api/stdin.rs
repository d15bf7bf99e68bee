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
        (status = 413, description = "More bytes than `--max-stdin-bytes`", body = ErrorBody),
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
    let max = state.config.policy.max_stdin_bytes;
    if bytes.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("a write to stdin may hold at most {max} bytes"),
        ));
    }
    writable(&state, id).await?;
    let written = bytes.len();
    let stdins = state.live.stdins();
    match tokio::time::timeout(ROOM_WAIT, stdins.write(id, bytes, query.close)).await {
        Ok(Ok(())) => {}
        Ok(Err(closed)) => return Err(stdin_closed(closed)),
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
        return Err(stdin_closed(crate::stdin::WriteError::Closed));
    }
    Ok(())
}

fn stdin_closed(closed: crate::stdin::WriteError) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::StdinClosed,
        closed.to_string(),
    )
}
