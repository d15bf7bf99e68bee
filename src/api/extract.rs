//! Request extractors that fail with [`ApiError`] instead of axum's plain-text rejections, so a
//! malformed body, query or path gets the same JSON error shape as everything else; and the
//! deadline on reading a request's body, which those extractors turn into `408`.

use std::time::Duration;

use axum::body::HttpBody;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::auth::Principal;
use crate::job::names::shown;
use crate::job::{BatchId, JobId};
use crate::store::Visibility;

/// A JSON body. The content type is not insisted on (`curl -d` sends a form type by default);
/// the bytes must be JSON. Syntax errors are 400, well-formed JSON of the wrong shape is 422.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if let Some(late) = timed_out(&e) {
                    late
                } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::TooLarge,
                        e.body_text(),
                    )
                } else {
                    ApiError::bad_request(ErrorCode::InvalidBody, e.body_text())
                }
            })?;
        parse_json(&bytes).map(Json)
    }
}

/// `408` if reading a body failed because [`body_deadline`] passed.
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let late = cause::<BodyTimedOut>(error)?;
    Some(ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::BodyTimeout,
        late.to_string(),
    ))
}

/// The first error of type `E` in `error`'s chain of causes.
fn cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

/// Middleware: the whole body must arrive within `limit` of the headers. One deadline for all
/// of it rather than one per chunk, so a client cannot hold a request open by sending a byte
/// now and then. A late body fails the read; [`Json`] answers it with `408` and closes the
/// connection, as the rest of the body may still be on its way.
pub async fn body_deadline(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = Instant::now() + limit;
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let chunks =
        futures_util::stream::unfold(Some(body.into_data_stream()), move |chunks| async move {
            let mut chunks = chunks?;
            match tokio::time::timeout_at(deadline, chunks.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(chunks))),
                Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), None)),
                Ok(None) => None,
                Err(_) => Some((Err(BodyTimedOut(limit).into()), None)),
            }
        });
    let mut response = next
        .run(Request::from_parts(parts, Body::from_stream(chunks)))
        .await;
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
            e.to_string(),
        ),
        _ => ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        ),
    })
}

/// Query parameters.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidQuery, e.body_text()))
    }
}

/// A job id from the path, of a job the caller may see: another tenant's job is `404`, as one
/// that does not exist is. Every handler of a job's path takes its id this way, so none can
/// forget the check.
pub struct PathId(pub JobId);

impl FromRequestParts<AppState> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let id = uuid_in_path(parts, state, "job").await?;
        let who = Principal::from_request_parts(parts, state)
            .await?
            .visibility();
        if who != Visibility::All && !state.store.job_visible(id, who).await? {
            return Err(ApiError::job_not_found());
        }
        Ok(PathId(id))
    }
}

/// A batch id from the path, of a batch the caller may see (else `404`).
pub struct BatchPath(pub BatchId);

impl FromRequestParts<AppState> for BatchPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let id = uuid_in_path(parts, state, "batch").await?;
        let who = Principal::from_request_parts(parts, state)
            .await?
            .visibility();
        if who != Visibility::All && !state.store.batch_visible(id, who).await? {
            return Err(ApiError::batch_not_found());
        }
        Ok(BatchPath(id))
    }
}

/// The file path of `/v1/jobs/{id}/files/{*path}`, as given (the store finds it or not).
pub struct FileInPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for FileInPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_param(parts, state, "path").await.map(FileInPath)
    }
}

/// The path parameter `name`, of a route that may have others.
async fn path_param<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    name: &str,
) -> Result<String, ApiError> {
    let axum::extract::Path(params) =
        axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidPath, e.body_text()))?;
    params
        .into_iter()
        .find_map(|(key, value)| (key == name).then_some(value))
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidPath, format!("no {name} in the path"))
        })
}

async fn uuid_in_path<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    what: &str,
) -> Result<uuid::Uuid, ApiError> {
    let raw = path_param(parts, state, "id").await?;
    uuid::Uuid::parse_str(&raw).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidId,
            format!("{} is not a {what} id", shown(&raw)),
        )
    })
}
