//! `GET /v1/stats` and `GET /v1/stats/series`: the queue at a glance and its recent history, as
//! an overview page or a monitor reads them. Both are the caller's: a tenant's token sees its
//! own jobs, an admin every tenant's. They read the figures the store keeps as jobs change
//! ([`crate::store::Counts`], [`crate::store::Step`]), never the jobs themselves, so they answer
//! in a few rows however many jobs the database holds.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::Query;
use crate::auth::Principal;
use crate::job::time::now_ms;
use crate::store::Percentiles;

/// The queue now: jobs by status, how long the oldest queued job has waited, this server's
/// workers and its sandbox.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// When these figures were read.
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    at: i64,
    /// Every status, with how many of the caller's jobs are in it.
    #[schema(value_type = BTreeMap<String, u64>)]
    jobs: BTreeMap<String, i64>,
    /// When the oldest queued job was submitted; `null` with none queued.
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    oldest_queued_at: Option<i64>,
    /// How long it has waited so far, in milliseconds.
    oldest_queued_ms: Option<i64>,
    /// This server's workers: how many it runs and how many are running a job now.
    workers: Workers,
    /// The isolation this server's sandbox gives (`full`, or what the host lacks), as `/readyz`
    /// reports it in detail.
    sandbox: String,
}

#[derive(Serialize, ToSchema)]
pub struct Workers {
    total: usize,
    busy: usize,
}

/// The caller's jobs by status, the age of the oldest queued one, and this server's workers.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "stats",
    operation_id = "get_stats",
    responses((status = 200, description = "The queue now", body = Stats))
)]
pub(super) async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Stats>, ApiError> {
    let counts = state.store.counts(principal.visibility()).await?;
    let at = now_ms();
    Ok(Json(Stats {
        at,
        jobs: counts.by_status,
        oldest_queued_at: counts.oldest_queued_at,
        oldest_queued_ms: counts.oldest_queued_at.map(|t| (at - t).max(0)),
        workers: Workers {
            total: state.config.workers,
            busy: state.running.len(),
        },
        sandbox: state.sandbox["level"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
    }))
}

/// The longest series: a week.
const MAX_WINDOW_S: u32 = 7 * 24 * 3600;
/// The most steps a series may have: a day by the minute.
const MAX_STEPS: u32 = 1440;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SeriesQuery {
    /// How far back the series goes, in seconds: a whole number of minutes (default 3600, at
    /// most a week).
    #[param(minimum = 60, maximum = 604800, multiple_of = 60)]
    window: Option<u32>,
    /// Each step's length, in seconds: a whole number of minutes, making at most 1440 steps
    /// (default: the shortest length that divides the window into at most 60). The window is
    /// extended back to a whole number of steps.
    #[param(minimum = 60, maximum = 604800, multiple_of = 60)]
    step: Option<u32>,
}

/// The jobs that ended in each step of the window, oldest step first, every step present.
#[derive(Serialize, ToSchema)]
pub struct Series {
    /// The first step's start and the last one's end.
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    from: i64,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    to: i64,
    /// Each step's length, in seconds.
    step: u32,
    steps: Vec<SeriesStep>,
}

#[derive(Serialize, ToSchema)]
pub struct SeriesStep {
    /// When the step starts.
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    at: i64,
    /// The jobs that ended in it, by outcome (outcomes with none left out).
    #[schema(value_type = BTreeMap<String, u64>)]
    ended: BTreeMap<String, i64>,
    /// From submit to the start of the last attempt, over the jobs that ended in the step and
    /// had started; `null` if none had. Estimated from histograms, to about a third of a decade.
    wait_ms: Option<Percentiles>,
    /// The last attempt's wall time, over the same jobs.
    run_ms: Option<Percentiles>,
}

/// How many of the caller's jobs ended in each step of the last `window` seconds, by outcome,
/// and percentiles of how long they waited in the queue and ran.
#[utoipa::path(
    get,
    path = "/v1/stats/series",
    tag = "stats",
    operation_id = "get_stats_series",
    params(SeriesQuery),
    responses(
        (status = 200, description = "The series, oldest step first", body = Series),
        (status = 400, description = "A window or step that is not whole minutes, or more than 1440 steps", body = ErrorBody),
    )
)]
pub(super) async fn series(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<SeriesQuery>,
) -> Result<Json<Series>, ApiError> {
    let (window, step) = shape(query.window, query.step)?;
    let step_minutes = i64::from(step / 60);
    let steps = i64::from(window / step);
    // The last step is the one the current minute is in, so the newest jobs are counted.
    let now_minute = now_ms().div_euclid(60_000);
    let from_minute = now_minute + 1 - step_minutes * steps;
    let rows = state
        .store
        .series(principal.visibility(), from_minute, step_minutes, steps)
        .await?;
    Ok(Json(Series {
        from: from_minute * 60_000,
        to: (now_minute + 1) * 60_000,
        step,
        steps: rows
            .into_iter()
            .map(|s| SeriesStep {
                at: s.start_ms,
                ended: s.ended,
                wait_ms: s.wait_ms,
                run_ms: s.run_ms,
            })
            .collect(),
    }))
}

/// The window and step asked for, checked, in seconds.
fn shape(window: Option<u32>, step: Option<u32>) -> Result<(u32, u32), ApiError> {
    let invalid = |message: String| ApiError::bad_request(ErrorCode::InvalidQuery, message);
    let window = window.unwrap_or(3600);
    if !window.is_multiple_of(60) || !(60..=MAX_WINDOW_S).contains(&window) {
        return Err(invalid(format!(
            "window={window} is not a whole number of minutes from 60 to {MAX_WINDOW_S} seconds"
        )));
    }
    // By default about sixty steps: the shortest whole number of minutes that divides the
    // window into at most sixty.
    let minutes = window / 60;
    let step = step.unwrap_or_else(|| {
        let shortest = minutes.div_ceil(60);
        (shortest..=minutes)
            .find(|m| minutes.is_multiple_of(*m))
            .unwrap_or(minutes)
            * 60
    });
    if !step.is_multiple_of(60) || !(60..=MAX_WINDOW_S).contains(&step) {
        return Err(invalid(format!(
            "step={step} is not a whole number of minutes from 60 to {MAX_WINDOW_S} seconds"
        )));
    }
    let steps = window.div_ceil(step);
    if steps > MAX_STEPS {
        return Err(invalid(format!(
            "window={window} in steps of {step} s makes {steps} steps; at most {MAX_STEPS}"
        )));
    }
    Ok((steps * step, step))
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn a_series_is_whole_minutes_that_the_step_divides_into_at_most_a_day_of_minutes() {
        assert_eq!(shape(None, None).ok(), Some((3600, 60)));
        assert_eq!(shape(Some(86_400), None).ok(), Some((86_400, 1440)));
        assert_eq!(shape(Some(604_800), None).ok(), Some((604_800, 10_080)));
        assert_eq!(shape(Some(600), Some(120)).ok(), Some((600, 120)));
        assert_eq!(
            shape(Some(5400), None).ok(),
            Some((5400, 120)),
            "45 steps of 2 minutes"
        );
        assert_eq!(
            shape(Some(7260), None).ok(),
            Some((7260, 660)),
            "121 minutes: 11 of 11"
        );
        assert_eq!(
            shape(Some(600), Some(420)).ok(),
            Some((840, 420)),
            "the window grows to whole steps"
        );
        assert_eq!(
            shape(Some(60), Some(604_800)).ok(),
            Some((604_800, 604_800))
        );
        for (window, step) in [
            (Some(90), None),
            (Some(30), None),
            (Some(604_860), None),
            (Some(600), Some(90)),
            (Some(600), Some(0)),
            (Some(604_800), Some(60)),
        ] {
            assert!(shape(window, step).is_err(), "{window:?} {step:?}");
        }
    }
}
