//! The endpoints of the synchronous design kiln replaces, kept so existing clients keep working:
//! `POST /eval` is gone (it held a connection open while code ran); `POST /eval-async` and
//! `GET /eval-status/{id}` are thin aliases of the v1 API with the old field names.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use super::extract::{self, PathId, Query};
use super::jobs::{WaitQuery, accept, wait_duration, wait_for_end};
use crate::auth::Principal;
use crate::job::Status;
use crate::job::content::Encoding;
use crate::job::validate::{JobRequest, LimitsRequest};

pub async fn eval_gone() -> Response {
    let body = json!({
        "error": {
            "code": ErrorCode::Gone.as_str(),
            "message": "POST /eval was removed: submit with POST /eval-async or POST /v1/jobs, \
                        then poll GET /eval-status/{eval_id} or GET /v1/jobs/{id}",
        },
        "endpoints": {
            "submit": ["POST /eval-async", "POST /v1/jobs"],
            "status": ["GET /eval-status/{eval_id}", "GET /v1/jobs/{id}"],
        },
    });
    (StatusCode::GONE, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    code: String,
    /// Defaults to python, as the old endpoint did.
    language: Option<String>,
    #[serde(default)]
    stdin: String,
}

pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    extract::Json(request): extract::Json<EvalRequest>,
) -> Result<Response, ApiError> {
    let request = JobRequest {
        runtime: request.language.unwrap_or_else(|| "python".into()),
        code: request.code.into(),
        stdin: request.stdin.into(),
        args: Vec::new(),
        files: Default::default(),
        outputs: Vec::new(),
        limits: LimitsRequest::default(),
        priority: 0,
        max_attempts: None,
        interactive: false,
        callback_url: None,
        callback_shape: Default::default(),
    };
    let (id, _) = accept(&state, &principal, request, None).await?;
    let body = json!({"eval_id": id, "status": Status::Queued});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub async fn status(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(query): Query<WaitQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let wait = wait_duration(&state, query.wait)?;
    let job = wait_for_end(&state, id, wait).await?;
    // The old API had one `error` string: kiln's reason if it could not run, else what the
    // program wrote to stderr when it did not succeed.
    let (error, error_encoding) = match job.status {
        Status::Succeeded | Status::Queued | Status::Running => (None, Encoding::Utf8),
        Status::Error => (job.error.clone(), Encoding::Utf8),
        _ => (Some(job.stderr.clone()), job.stderr_encoding),
    };
    let mut body = json!({
        "eval_id": job.id,
        "status": job.status,
        "outcome": job.outcome,
        "output": job.stdout,
        "error": error,
        "exit_code": job.exit_code,
        "created_at": crate::job::time::rfc3339(job.created_at),
        "finished_at": job.finished_at.map(crate::job::time::rfc3339),
        "wall_ms": job.wall_ms,
        "progress": job.progress,
    });
    // The old API knew only text: output that is not UTF-8 is in base64, and said to be.
    if job.stdout_encoding == Encoding::Base64 {
        body["output_encoding"] = json!(Encoding::Base64);
    }
    if error_encoding == Encoding::Base64 {
        body["error_encoding"] = json!(Encoding::Base64);
    }
    Ok(Json(body))
}
