//! The one error type of the HTTP layer. Every failure a client can see has the same JSON shape,
//! `{"error": {"code": "...", "message": "..."}}`, with a stable machine-readable [`ErrorCode`].
//! Client errors explain themselves; server errors are logged in full and shown generically.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::job::text::text_enum;
use crate::job::validate::{MAX_IDEMPOTENCY_KEY_BYTES, Rejection};
use crate::store::{StoreError, Unavailable};

text_enum! {
    /// The machine-readable half of an error answer. Clients branch on it, so a code once
    /// answered stays; the message beside it is for people and may be reworded.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ErrorCode {
        AlreadyFinished => "already_finished",
        BatchNotFound => "batch_not_found",
        BodyTimeout => "body_timeout",
        DatabaseUnavailable => "database_unavailable",
        FileNotFound => "file_not_found",
        Forbidden => "forbidden",
        Gone => "gone",
        IdempotencyKeyReused => "idempotency_key_reused",
        Internal => "internal",
        InvalidBody => "invalid_body",
        InvalidHeader => "invalid_header",
        InvalidId => "invalid_id",
        InvalidJson => "invalid_json",
        InvalidPath => "invalid_path",
        InvalidQuery => "invalid_query",
        InvalidRequest => "invalid_request",
        JobNotFound => "job_not_found",
        MethodNotAllowed => "method_not_allowed",
        NoRuntimes => "no_runtimes",
        NotFound => "not_found",
        NotInteractive => "not_interactive",
        QueueFull => "queue_full",
        RateLimited => "rate_limited",
        StdinClosed => "stdin_closed",
        StdinFull => "stdin_full",
        Stopping => "stopping",
        Timeout => "timeout",
        TooLarge => "too_large",
        TooManyStreams => "too_many_streams",
        Unauthorized => "unauthorized",
    }
}

/// The schema of [`ErrorCode`]: one of its words.
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl ToSchema for ErrorCode {}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; may be reworded.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for 429/503 answers: when trying again makes sense.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn job_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::JobNotFound,
            "no job with this id",
        )
    }

    pub fn batch_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BatchNotFound,
            "no batch with this id",
        )
    }

    /// A failure on the server's side. The caller logs what happened; the client learns only
    /// that it was not its fault, never the details.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; the server log has the details",
        )
    }

    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
}

/// A refused submission: `413` when something is too large, `422` for anything else wrong.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::TooLarge(message) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message)
            }
            Rejection::Invalid(message) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidRequest,
                message,
            ),
            // The domain says what is wrong; where to look and which header is meant are HTTP's.
            Rejection::UnknownRuntime { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidRequest,
                format!("{rejection}; GET /v1/runtimes lists the available ones"),
            ),
            Rejection::IdempotencyKey => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidRequest,
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
            tracing::error!(error = %e, "the database cannot be reached, read or written");
        } else {
            tracing::warn!(error = %e, "database unavailable");
        }
        // A lock usually goes within a second; a full disk or a stuck reader needs someone to act.
        let (why, retry_after) = match cause {
            Unavailable::Busy => ("another process holds the database lock", 1),
            Unavailable::Pool => ("every database connection is busy", 1),
            Unavailable::DiskFull => ("the disk holding the database is full", 10),
            Unavailable::ReadOnly => ("the database has become read-only", 10),
            Unavailable::Io => ("the database cannot be reached, read or written", 10),
            Unavailable::WalFull => (
                "the database's write-ahead log is at its limit while a reader holds it",
                5,
            ),
        };
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::DatabaseUnavailable,
                format!("{why}; nothing was written, try again later"),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
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
        let unknown = ApiError::from(Rejection::UnknownRuntime {
            name: "cobol".into(),
            case: None,
        });
        assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            unknown.message,
            "unknown runtime \"cobol\"; GET /v1/runtimes lists the available ones"
        );
        let key = ApiError::from(Rejection::IdempotencyKey);
        assert_eq!(key.code, ErrorCode::InvalidRequest);
        assert_eq!(key.message, "Idempotency-Key must be 1 to 255 characters");
    }

    #[test]
    fn error_codes_are_distinct_snake_case_words() {
        let codes: std::collections::BTreeSet<&str> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        for code in codes {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert_eq!(ErrorCode::parse(code).map(ErrorCode::as_str), Some(code));
        }
    }
}
