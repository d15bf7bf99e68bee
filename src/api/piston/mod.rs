//! Piston v2, under `/api/v2`: the routes, fields, units and error shapes of Piston's API
//! (engineer-man/piston `api/src/api/v2.js`), so that its clients (chat bots, IDE plugins, the
//! SDKs) work against kiln by changing one URL. Like the Judge0 layer it translates and owns
//! nothing: an execution is an ordinary kiln job, validated and stored through the same paths
//! as `/v1`'s (tenants, backpressure and limits apply; it is in the history, the CLI and `/v1`),
//! and waited for through kiln's own wake-ups.
//!
//! `runtimes` says which kiln runtimes Piston's languages and versions name, `request` reads a
//! request into a job, `stages` shows a finished job as Piston's stages, and `connect` is the
//! interactive WebSocket, whose stdin is the job's interactive stdin ([`crate::stdin`]).
//! `docs/compat.md` lists every route and field, and what kiln does not do of them and why.

mod connect;
mod request;
mod runtimes;
mod stages;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use self::request::{Caps, Execution, Refused};
use self::stages::Interleaved;
use super::AppState;
use super::error::ApiError;
use super::jobs::{admission, wait_for_end};
use crate::auth::Principal;
use crate::job::{JobId, JobSpec};
use crate::store::Submitted;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/runtimes", get(list_runtimes))
        .route("/execute", post(execute))
        .route("/connect", get(connect::upgrade))
        .fallback(not_found)
        .layer(middleware::from_fn(json_only))
}

/// An error as Piston answers one: `{"message"}` with its status.
#[derive(Debug)]
pub struct PistonError {
    status: StatusCode,
    message: String,
}

impl PistonError {
    fn bad_request(message: impl Into<String>) -> PistonError {
        PistonError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for PistonError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"message": self.message}))).into_response()
    }
}

impl From<ApiError> for PistonError {
    fn from(error: ApiError) -> PistonError {
        PistonError {
            status: error.status,
            message: error.message,
        }
    }
}

impl From<crate::store::StoreError> for PistonError {
    fn from(error: crate::store::StoreError) -> PistonError {
        PistonError::from(ApiError::from(error))
    }
}

impl From<Refused> for PistonError {
    fn from(Refused(message): Refused) -> PistonError {
        PistonError::bad_request(message)
    }
}

async fn not_found() -> PistonError {
    PistonError {
        status: StatusCode::NOT_FOUND,
        message: "Not Found".into(),
    }
}

/// Piston's door: every request but GET, HEAD and OPTIONS must say it is JSON.
async fn json_only(request: Request, next: Next) -> Response {
    let exempt = [Method::GET, Method::HEAD, Method::OPTIONS].contains(request.method());
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if exempt || json {
        return next.run(request).await;
    }
    PistonError {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        message: "requests must be of type application/json".into(),
    }
    .into_response()
}

/// Piston's configured limits: the operator's caps for a run, the build limits for a compile.
fn caps(state: &AppState) -> Caps {
    Caps {
        run: state.config.policy.max_limits,
        compile: state.config.build_limits(),
    }
}

/// `GET /api/v2/runtimes`.
async fn list_runtimes(State(state): State<AppState>) -> Json<Value> {
    super::versions_known(&state).await;
    let offered = runtimes::offered(state.runtimes.iter());
    Json(json!(runtimes::listed(&offered)))
}

/// A request body as JSON, refused in Piston's shape.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, PistonError> {
    let bytes = body.map_err(|e| match super::extract::timed_out(&e) {
        Some(late) => PistonError::from(late),
        None => PistonError {
            status: e.status(),
            message: e.body_text(),
        },
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PistonError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Reads a request against the runtimes offered here and stores it as a job.
async fn submit(
    state: &AppState,
    principal: &Principal,
    body: &Value,
    interactive: bool,
) -> Result<(JobId, Execution), PistonError> {
    super::versions_known(state).await;
    let offered = runtimes::offered(state.runtimes.iter());
    let execution = request::read(body, &offered, &caps(state), interactive)?;
    let spec = JobSpec::validate(
        execution.job.clone(),
        None,
        &state.config.policy,
        |name, code| state.runtimes.get(name).map(|runtime| runtime.terms(code)),
    )
    .map_err(|rejection| PistonError::bad_request(rejection.to_string()))?;
    match state
        .store
        .submit(spec, admission(state, principal))
        .await?
    {
        Submitted::Created(id) | Submitted::Replayed(id) => Ok((id, execution)),
        Submitted::Full(full) => Err(PistonError::from(super::access::full(full))),
        // Only a submit with an idempotency key can meet one, and these have none.
        Submitted::KeyReused(_) => Err(PistonError::from(ApiError::internal())),
    }
}

/// `POST /api/v2/execute`: runs the request as a job and answers once it ended (at most kiln's
/// longest wait, `max_wait`), its output interleaved from the live stream meanwhile.
async fn execute(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, PistonError> {
    let body = json_body(body)?;
    let (id, execution) = submit(&state, &principal, &body, false).await?;
    let mut interleaved = Interleaved::new(state.live.watch_output(id));
    let ended = wait_for_end(&state, id, state.config.max_wait);
    tokio::pin!(ended);
    let job = loop {
        tokio::select! {
            job = &mut ended => break job?,
            () = interleaved.next() => {}
        }
    };
    interleaved.gather();
    if !job.status.is_terminal() {
        return Err(PistonError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "job {id} did not end within {} s; it goes on, see /v1/jobs/{id}",
                state.config.max_wait.as_secs()
            ),
        });
    }
    Ok(Json(stages::result(
        &job,
        &execution.language,
        &execution.version,
        execution.compiled,
        Some(&interleaved),
    )))
}
