//! `GET /metrics`: the Prometheus scrape. The figures are kept by [`crate::metrics`]; this adds
//! what is read at scrape time (jobs by status, WAL size, open streams) and answers in the text
//! exposition format. The figures are the whole server's, every tenant's together, so once
//! tokens exist only an admin token may read them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::{ApiError, AppState, ErrorCode};
use crate::auth::Principal;
use crate::metrics::{Gauges, METRICS};
use crate::store::Visibility;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 403, description = "A tenant's token: the metrics are every tenant's", body = super::error::ErrorBody),
    )
)]
pub(super) async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    if !matches!(principal.visibility(), Visibility::All) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the metrics cover every tenant: reading them needs an admin token",
        ));
    }
    let gauges = Gauges {
        jobs: state.store.queue_depth().await?,
        wal_bytes: state.store.wal_bytes(),
        sse_streams: state
            .config
            .sse_max_streams
            .saturating_sub(state.streams.available_permits()),
        running: state.running.len(),
    };
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        METRICS.render(&gauges),
    ))
}
