//! The HTTP front-end: JSON over axum. It decodes and validates requests, hands them to the store
//! and reads results back; it holds no job state of its own. `POST /v1/jobs` answers `202` only
//! after the job is committed to disk.
//!
//! Routes: `jobs` (the v1 API), `batches` (test suites, with their `junit` reports, and
//! `ndjson` for suites sent as a stream of lines), `streams`
//! (the event endpoints as Server-Sent Events), `stdin` (writes to an interactive job's stdin),
//! `compat` (the replaced synchronous design's endpoints), `judge0` (Judge0 CE's API under
//! `/judge0`), `piston` (Piston's v2 API under `/api/v2`), `metrics` (Prometheus), and the
//! health checks here.

mod access;
mod batches;
mod compat;
mod dashboard;
mod error;
mod extract;
#[cfg(test)]
mod fuzz;
mod jobs;
mod judge0;
mod junit;
mod metrics;
mod ndjson;
mod openapi;
mod piston;
mod stats;
mod stdin;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorCode};
pub use judge0::callbacks as judge0_callbacks;
pub use openapi::document as openapi;

use crate::auth::{Guard, Principal};
use crate::config::Config;
use crate::job::Limits;
use crate::live::Live;
use crate::runner::Runner;
use crate::runtime::Runtimes;
use crate::store::{Pragmas, Store};
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
        .merge(v1().split_for_parts().0)
        .route("/eval", post(compat::eval_gone))
        .route("/eval-async", post(compat::submit))
        .route("/eval-status/{id}", get(compat::status))
        .route("/events", get(jobs::feed))
        .route("/", get(dashboard::page))
        .route("/ui/{file}", get(dashboard::asset))
        .nest(access::JUDGE0, judge0::routes())
        .nest(access::PISTON, piston::routes())
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

/// The routes the OpenAPI document describes, each mounted with its description: `/v1`, the
/// operations endpoints and the document itself. The compatibility APIs are not in it.
fn v1() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::Frame::openapi())
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::events))
        .routes(routes!(jobs::cancel))
        .routes(routes!(stdin::write))
        .routes(routes!(jobs::file))
        .routes(routes!(jobs::input))
        .routes(routes!(batches::submit, batches::list))
        .routes(routes!(batches::get))
        .routes(routes!(batches::cases))
        .routes(routes!(batches::groups))
        .routes(routes!(batches::events))
        .routes(routes!(batches::report))
        .routes(routes!(batches::cancel))
        .routes(routes!(jobs::feed))
        .routes(routes!(runtimes))
        .routes(routes!(tenant))
        .routes(routes!(stats::stats))
        .routes(routes!(stats::series))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::serve))
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

/// The runtimes this server offers.
#[derive(Serialize, ToSchema)]
pub struct RuntimeList {
    runtimes: Vec<RuntimeInfo>,
}

/// A runtime as listed: what it is called and answers to, how it runs, and its limits.
#[derive(Serialize, ToSchema)]
pub struct RuntimeInfo {
    name: String,
    display: String,
    aliases: Vec<String>,
    /// As its tool reports it; `null` when that cannot be known.
    version: Option<String>,
    compiled: bool,
    /// The interpreter or compiler it runs.
    #[schema(value_type = String)]
    program: PathBuf,
    source_file: String,
    extensions: Vec<String>,
    limits: RuntimeLimits,
    /// For a compiled runtime: the limits of its compile step.
    #[serde(skip_serializing_if = "Option::is_none")]
    compile_limits: Option<Limits>,
    judge0_ids: Vec<u32>,
    piston_names: Vec<String>,
}

/// The limits a runtime's jobs get when they ask for none, and the most they may ask.
#[derive(Serialize, ToSchema)]
pub struct RuntimeLimits {
    default: Limits,
    max: Limits,
}

/// Asks each runtime's tool for its version (each ask starts the tool in a sandbox), once per
/// server, the first time a listing needs them: `GET /v1/runtimes`, Piston's runtimes and
/// execute.
pub(super) async fn versions_known(state: &AppState) {
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
}

/// Each runtime with its version as its tool reports it, whether it compiles, its aliases and
/// the limits its jobs get by default and at most. The versions are asked of the tools (in the
/// sandbox, all at once) by the first listing; one that cannot be known is `null`.
#[utoipa::path(
    get,
    path = "/v1/runtimes",
    tag = "runtimes",
    operation_id = "list_runtimes",
    responses(
        (status = 200, description = "The runtimes offered here", body = RuntimeList),
    )
)]
async fn runtimes(State(state): State<AppState>) -> Json<RuntimeList> {
    versions_known(&state).await;
    let policy = &state.config.policy;
    let build = state.config.build_limits();
    let runtimes = state
        .runtimes
        .iter()
        .map(|runtime| RuntimeInfo {
            name: runtime.name.clone(),
            display: runtime.display.clone(),
            aliases: runtime.aliases.clone(),
            version: runtime.version().flatten().map(str::to_owned),
            compiled: runtime.compile.is_some(),
            program: runtime.program().to_path_buf(),
            source_file: runtime.source_file(""),
            extensions: runtime.extensions.clone(),
            limits: RuntimeLimits {
                default: runtime
                    .limits
                    .over(&policy.default_limits)
                    .within(&policy.max_limits),
                max: policy.max_limits,
            },
            compile_limits: runtime
                .compile
                .as_ref()
                .map(|compile| compile.limits.over(&build).within(&policy.max_limits)),
            judge0_ids: runtime.judge0.clone(),
            piston_names: runtime.piston.clone(),
        })
        .collect();
    Json(RuntimeList { runtimes })
}

/// Whom a token acts for. Without tokens configured, every caller is an admin of no tenant.
#[derive(Serialize, ToSchema)]
pub struct TenantInfo {
    tenant: Option<String>,
    admin: bool,
    /// The key the tenant's webhook calls are signed with (absent on an open server).
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_secret: Option<String>,
}

/// Whom the caller's token acts for, and the key its tenant's webhook calls are signed with.
#[utoipa::path(
    get,
    path = "/v1/tenant",
    tag = "tenants",
    operation_id = "get_tenant",
    responses(
        (status = 200, description = "Whom the token acts for", body = TenantInfo),
    )
)]
async fn tenant(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<TenantInfo>, ApiError> {
    let Principal::Token { tenant, admin, .. } = principal else {
        return Ok(Json(TenantInfo {
            tenant: None,
            admin: true,
            webhook_secret: None,
        }));
    };
    let initial = crate::auth::random_hex(32).map_err(|e| {
        tracing::error!(error = %e, "cannot generate a webhook signing key");
        ApiError::internal()
    })?;
    let secret = state.store.tenant_secret(tenant.clone(), initial).await?;
    Ok(Json(TenantInfo {
        tenant: Some(tenant),
        admin,
        webhook_secret: Some(secret),
    }))
}

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub struct Alive {
    #[schema(pattern = "^ok$")]
    status: &'static str,
}

/// Alive: the process answers HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "The process answers", body = Alive))
)]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// What a ready server reports of itself.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(pattern = "^ready$")]
    status: &'static str,
    /// Which database holds the queue: `sqlite` or `postgres`.
    #[schema(pattern = "^(sqlite|postgres)$")]
    backend: &'static str,
    /// On SQLite, the pragmas in force on the write connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<Pragmas>,
    runtimes: Vec<String>,
    /// What the sandbox found this host supports.
    #[schema(value_type = Object)]
    sandbox: Value,
    workers: usize,
    running: usize,
}

/// Ready: the database answers (on SQLite, the writer is alive and holds the write lock), and at
/// least one runtime can run. On SQLite, reports the pragmas in force so operators can check
/// durability settings.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    security(()),
    responses(
        (status = 200, description = "Ready to take jobs", body = Ready),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
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
    Ok(Json(Ready {
        status: "ready",
        backend: state.store.backend(),
        database: pragmas,
        runtimes: state.runtimes.iter().map(|r| r.name.clone()).collect(),
        sandbox: (*state.sandbox).clone(),
        workers: state.config.workers,
        running: state.running.len(),
    }))
}
