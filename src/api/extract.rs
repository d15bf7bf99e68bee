//! Request extractors that fail with [`ApiError`] instead of axum's plain-text rejections, so a
//! malformed body, query or path gets the same JSON error shape as everything else.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::batch::BatchId;
use crate::job::JobId;
use crate::names::shown;

/// A JSON body. The content type is not insisted on (`curl -d` sends a form type by default);
/// the bytes must be JSON. Syntax errors are 400, well-formed JSON of the wrong shape is 422.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
                } else {
                    ApiError::bad_request("invalid_body", e.body_text())
                }
            })?;
        parse_json(&bytes).map(Json)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            e.to_string(),
        ),
        _ => ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")),
    })
}

/// Query parameters.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A job id from the path.
pub struct PathId(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        uuid_in_path(parts, state, "job").await.map(PathId)
    }
}

/// A batch id from the path.
pub struct BatchPath(pub BatchId);

impl<S: Send + Sync> FromRequestParts<S> for BatchPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        uuid_in_path(parts, state, "batch").await.map(BatchPath)
    }
}

async fn uuid_in_path<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    what: &str,
) -> Result<uuid::Uuid, ApiError> {
    let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    uuid::Uuid::parse_str(&raw).map_err(|_| {
        ApiError::bad_request("invalid_id", format!("{} is not a {what} id", shown(&raw)))
    })
}
