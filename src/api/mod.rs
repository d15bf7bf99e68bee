//! The HTTP front-end: JSON over axum. It decodes and validates requests, hands them to the store
//! and reads results back; it holds no job state of its own. `POST /v1/jobs` answers `202` only
//! after the job is committed to disk.
//!
//! Routes: `jobs` (the v1 API), `batches` (test suites, with their `junit` reports, and
//! `ndjson` for suites sent as a stream of lines), `streams`
//! (the event endpoints as Server-Sent Events), `compat` (the replaced synchronous design's
//! endpoints), `judge0` (Judge0 CE's API under `/judge0`), `metrics` (Prometheus), and the
//! health checks here.

mod access;
mod batches;
mod compat;
mod error;
mod extract;
#[cfg(test)]
mod fuzz;
mod jobs;
mod judge0;
mod junit;
mod metrics;
mod ndjson;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ErrorCode};

use crate::auth::{Guard, Principal};
use crate::config::Config;
use crate::live::Live;
use crate::runner::Runner;
use crate::runtime::Runtimes;
use crate::store::Store;
use crate::worker::{Running, Workers};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub runtimes: Arc<Runtimes>,
    pub running: Running,
    /// Committed events and running jobs' output, for live streams.
    pub live: Live,
    /// One permit per open live stream (`sse_max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    pub config: Arc<Config>,
    /// Cancelled when the server begins to shut down: long-polls answer at once.
    pub stopping: CancellationToken,
    /// What the sandbox found this host supports, for `/readyz`.
    pub sandbox: Arc<serde_json::Value>,
    /// Who may ask, and how fast.
    pub guard: Arc<Guard>,
    /// What runs jobs, which also asks the runtimes' tools for their versions.
    pub workers: Arc<Workers<Runner>>,
    /// Set once those versions have been asked: on the first listing, not at every start.
    pub versions_asked: Arc<tokio::sync::OnceCell<()>>,
}

pub fn router(state: AppState) -> Router {
    let timeout = state.config.request_timeout + state.config.max_wait;
    let body_limit = state.config.max_request_bytes;
    Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/files/{*path}", get(jobs::file))
        .route("/v1/batches", post(batches::submit).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cases", get(batches::cases))
        .route("/v1/batches/{id}/groups", get(batches::groups))
        .route("/v1/batches/{id}/events", get(batches::events))
        .route("/v1/batches/{id}/report", get(batches::report))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/events", get(jobs::feed))
        .route("/v1/runtimes", get(runtimes))
        .route("/v1/tenant", get(tenant))
        .route("/eval", post(compat::eval_gone))
        .route("/eval-async", post(compat::submit))
        .route("/eval-status/{id}", get(compat::status))
        .route("/events", get(jobs::feed))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .nest(access::JUDGE0, judge0::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), access::check))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.config.http.body_read_timeout,
            extract::body_deadline,
        ))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::unavailable(ErrorCode::Timeout, "the request took too long").into_response()
        }
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal().into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such endpoint",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method",
    )
}

/// Each runtime with its version as its tool reports it, whether it compiles, its aliases and
/// the limits its jobs get by default and at most. The versions are asked of the tools (in the
/// sandbox, all at once) by the first listing; one that cannot be known is `null`.
async fn runtimes(State(state): State<AppState>) -> Json<Value> {
    state
        .versions_asked
        .get_or_init(|| async {
            let workers = &state.workers;
            let asks = workers.runtimes.iter().map(|runtime| async move {
                runtime.set_version(workers.runner.version_of(runtime).await);
            });
            futures_util::future::join_all(asks).await;
        })
        .await;
    let policy = &state.config.policy;
    let build = state.config.build_limits();
    let runtimes: Vec<Value> = state
        .runtimes
        .iter()
        .map(|runtime| {
            let defaults = runtime
                .limits
                .over(&policy.default_limits)
                .within(&policy.max_limits);
            let mut listed = json!({
                "name": runtime.name,
                "display": runtime.display,
                "aliases": runtime.aliases,
                "version": runtime.version().flatten(),
                "compiled": runtime.compile.is_some(),
                "program": runtime.program(),
                "source_file": runtime.source_file(""),
                "extensions": runtime.extensions,
                "limits": {"default": defaults, "max": policy.max_limits},
                "judge0_ids": runtime.judge0,
                "piston_names": runtime.piston,
            });
            if let Some(compile) = &runtime.compile {
                listed["compile_limits"] =
                    json!(compile.limits.over(&build).within(&policy.max_limits));
            }
            listed
        })
        .collect();
    Json(json!({ "runtimes": runtimes }))
}

/// Whom the caller's token acts for, and the key its tenant's webhook calls are signed with.
async fn tenant(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let Principal::Token { tenant, admin, .. } = principal else {
        return Ok(Json(json!({"tenant": null, "admin": true})));
    };
    let initial = crate::auth::random_hex(32).map_err(|e| {
        tracing::error!(error = %e, "cannot generate a webhook signing key");
        ApiError::internal()
    })?;
    let secret = state.store.tenant_secret(tenant.clone(), initial).await?;
    Ok(Json(
        json!({"tenant": tenant, "admin": admin, "webhook_secret": secret}),
    ))
}

/// Alive: the process answers HTTP.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready: the writer is alive and holds the write lock on the database, and at least one runtime
/// can run. Reports the pragmas in force so operators can check durability settings.
async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if state.stopping.is_cancelled() {
        return Err(ApiError::unavailable(
            ErrorCode::Stopping,
            "the server is shutting down",
        ));
    }
    let pragmas = state.store.pragmas().await?;
    if state.runtimes.is_empty() {
        return Err(ApiError::unavailable(
            ErrorCode::NoRuntimes,
            "no runtime is available on this host",
        ));
    }
    let names: Vec<_> = state.runtimes.iter().map(|r| r.name.as_str()).collect();
    Ok(Json(json!({
        "status": "ready",
        "database": pragmas,
        "runtimes": names,
        "sandbox": *state.sandbox,
        "workers": state.config.workers,
        "running": state.running.len(),
    })))
}
