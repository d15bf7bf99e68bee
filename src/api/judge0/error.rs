//! The one error type of the Judge0 layer, answered in Judge0's shapes rather than kiln's: a
//! refused submission is `422` with an array of messages per field (`{"language_id": ["can't be
//! blank"]}`), a refused batch `422` with one such object per submission, and everything else
//! `{"error": "..."}` with Judge0's status. Judge0's clients branch on these, so kiln's own
//! errors met on the way (a store that cannot be written, a request that took too long) are
//! said in the same shape.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::ApiError;

/// What is wrong with one submission: its fields' messages, by field.
pub type FieldErrors = BTreeMap<&'static str, Vec<String>>;

#[derive(Debug)]
pub enum Judge0Error {
    /// One submission refused, field by field.
    Invalid(FieldErrors),
    /// A batch refused: for each submission, in order, what is wrong with it (`{}` if nothing).
    InvalidBatch(Vec<FieldErrors>),
    /// `{"error": message}` with this status.
    Plain {
        status: StatusCode,
        message: String,
        retry_after: Option<u32>,
    },
    /// A status with no body at all, as Judge0 refuses a token (`401`, `403`).
    Bare(StatusCode),
}

impl Judge0Error {
    pub fn plain(status: StatusCode, message: impl Into<String>) -> Judge0Error {
        Judge0Error::Plain {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Judge0Error {
        Judge0Error::plain(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(what: &str) -> Judge0Error {
        Judge0Error::plain(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    /// Judge0's answer when a submit finds no room in the queue.
    pub fn queue_full() -> Judge0Error {
        Judge0Error::Plain {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "queue is full".into(),
            retry_after: Some(2),
        }
    }
}

/// kiln's own refusal (from the store, a wait, the domain) in Judge0's plain shape, its status
/// and message kept.
impl From<ApiError> for Judge0Error {
    fn from(e: ApiError) -> Self {
        Judge0Error::Plain {
            status: e.status,
            message: e.message,
            retry_after: e.retry_after,
        }
    }
}

impl From<crate::store::StoreError> for Judge0Error {
    fn from(e: crate::store::StoreError) -> Self {
        Judge0Error::from(ApiError::from(e))
    }
}

fn fields_json(errors: &FieldErrors) -> Value {
    json!(errors)
}

impl IntoResponse for Judge0Error {
    fn into_response(self) -> Response {
        match self {
            Judge0Error::Invalid(errors) => {
                (StatusCode::UNPROCESSABLE_ENTITY, Json(fields_json(&errors))).into_response()
            }
            Judge0Error::InvalidBatch(each) => {
                let body: Vec<Value> = each.iter().map(fields_json).collect();
                (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
            Judge0Error::Plain {
                status,
                message,
                retry_after,
            } => {
                let mut response = (status, Json(json!({"error": message}))).into_response();
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
            Judge0Error::Bare(status) => status.into_response(),
        }
    }
}
