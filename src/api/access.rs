//! Access control at the door: every request but the health checks passes the [`Guard`]
//! (`crate::auth`) before any handler runs or any body is read. The principal it finds rides
//! in the request's extensions; handlers take it as an extractor, and the path extractors of
//! job and batch ids use it to answer `404` for another tenant's ids, exactly as for ids that
//! do not exist, so nothing tells a tenant what others have.
//!
//! Under [`JUDGE0`] the token may come as Judge0's clients send it, in an `X-Auth-Token` header,
//! and a refused one is Judge0's bare `401`. Under [`PISTON`] it may come as Piston's clients
//! send a key, bare in `Authorization`, and a refusal is Piston's `{"message"}`.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::auth::{Principal, Refusal};
use crate::store::Full;

/// Paths anyone may ask: a load balancer's probes carry no token, and the API's description is
/// no secret.
const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Where Judge0's API is served.
pub(super) const JUDGE0: &str = "/judge0";

/// Where Piston's API is served.
pub(super) const PISTON: &str = "/api/v2";

/// Whether `path` is under `prefix`.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(super) async fn check(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // The dashboard's page and assets hold no data: the page asks for a token itself.
    if PUBLIC.contains(&path) || path == "/" || path.starts_with(super::dashboard::ASSETS) {
        return next.run(request).await;
    }
    let judge0 = under(request.uri().path(), JUDGE0);
    let piston = under(request.uri().path(), PISTON);
    let headers = request.headers();
    let bearer = match headers.get(header::AUTHORIZATION) {
        // Piston's clients send the key itself, without a scheme.
        Some(key) if piston && !key.as_bytes().contains(&b' ') => {
            Some([b"Bearer ".as_slice(), key.as_bytes()].concat())
        }
        Some(authorization) => Some(authorization.as_bytes().to_vec()),
        None if judge0 => headers
            .get("x-auth-token")
            .map(|token| [b"Bearer ".as_slice(), token.as_bytes()].concat()),
        None => None,
    };
    match state.guard.check(bearer.as_deref()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(Refusal::Missing | Refusal::Invalid) if judge0 => {
            StatusCode::UNAUTHORIZED.into_response()
        }
        Err(refusal) if piston => {
            let status = match refusal {
                Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            (
                status,
                axum::Json(serde_json::json!({"message": refusal.to_string()})),
            )
                .into_response()
        }
        Err(refusal) => refused(&refusal),
    }
}

fn refused(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::Missing | Refusal::Invalid => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                refusal.to_string(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Refusal::RateLimited { retry_after } => ApiError {
            retry_after: Some(*retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                refusal.to_string(),
            )
        }
        .into_response(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Only a route the door did not guard lacks one; refuse rather than guess.
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                Refusal::Missing.to_string(),
            )
        })
    }
}

/// A submit the queue has no room for: 429, to come back once workers have made room.
pub(super) fn full(full: Full) -> ApiError {
    let message = match full {
        Full::Queue { queued, max } => {
            format!("the queue is full ({queued} jobs queued, at most {max}); try again later")
        }
        Full::Batches { max } => {
            format!("{max} batches are already running, the most allowed; try again later")
        }
    };
    ApiError {
        retry_after: Some(2),
        ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull, message)
    }
}
