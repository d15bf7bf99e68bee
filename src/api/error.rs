//! The one error type of the HTTP layer. Every failure a client can see has the same JSON shape,
//! `{"error": {"code": "...", "message": "..."}}`, with a stable machine-readable code. Client
//! errors explain themselves; server errors are logged in full and shown generically.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::job::validate::{MAX_IDEMPOTENCY_KEY_BYTES, Rejection};
use crate::store::{StoreError, Unavailable};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429/503 answers: when trying again makes sense.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn job_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            "no job with this id",
        )
    }

    pub fn batch_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "batch_not_found",
            "no batch with this id",
        )
    }

    /// A failure on the server's side. The caller logs what happened; the client learns only
    /// that it was not its fault, never the details.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::TooLarge(message) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            Rejection::Invalid(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            }
            // The domain says what is wrong; where to look and which header is meant are HTTP's.
            Rejection::UnknownRuntime(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("{rejection}; GET /v1/runtimes lists the available ones"),
            ),
            Rejection::IdempotencyKey => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} characters"),
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let Some(cause) = e.unavailable() else {
            tracing::error!(error = %e, "store error");
            return ApiError::internal();
        };
        if cause == Unavailable::Io {
            tracing::error!(error = %e, "the database file cannot be read or written");
        } else {
            tracing::warn!(error = %e, "database unavailable");
        }
        // A lock usually goes within a second; a full disk or a stuck reader needs someone to act.
        let (why, retry_after) = match cause {
            Unavailable::Busy => ("another process holds the database lock", 1),
            Unavailable::Pool => ("every database connection is busy", 1),
            Unavailable::DiskFull => ("the disk holding the database is full", 10),
            Unavailable::ReadOnly => ("the database has become read-only", 10),
            Unavailable::Io => ("the database file cannot be read or written", 10),
            Unavailable::WalFull => (
                "the database's write-ahead log is at its limit while a reader holds it",
                5,
            ),
        };
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("{why}; nothing was written, try again later"),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_the_domain_words_plainly_get_their_http_wording_here() {
        let unknown = ApiError::from(Rejection::UnknownRuntime("cobol".into()));
        assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            unknown.message,
            "unknown runtime \"cobol\"; GET /v1/runtimes lists the available ones"
        );
        let key = ApiError::from(Rejection::IdempotencyKey);
        assert_eq!(key.code, "invalid_request");
        assert_eq!(key.message, "Idempotency-Key must be 1 to 255 characters");
    }
}
