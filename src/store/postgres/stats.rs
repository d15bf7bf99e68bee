//! The figures an overview reads on PostgreSQL (`GET /v1/stats`, its series, the dashboard):
//! jobs by status now, the oldest queued job, and per step of time the jobs that ended by
//! outcome with percentiles of their queue wait and run time, as SQLite's `store::stats` gives
//! them.
//!
//! They come from the tables `schema/postgres/0002_stats.sql` keeps with triggers in each
//! job's own transaction, so they are exact per tenant on any number of nodes and a read costs a
//! few rows whatever the number of jobs. This module sums them for the caller's tenant (or every
//! tenant); the histograms become percentiles by SQLite's own code, so that both backends
//! interpolate alike.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::PgError;
use crate::job::Status;
use crate::store::stats::{Histogram, percentiles};
use crate::store::{Counts, Step, Visibility};

pub(super) async fn counts(
    client: &impl GenericClient,
    who: &Visibility,
) -> Result<Counts, PgError> {
    let mut by_status: BTreeMap<String, i64> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    // A statement for each, rather than one with an optional tenant, as in `read`: each gets a
    // plan of its own. The oldest queued job is the first queued id (ids sort by submission),
    // found on `jobs_status`, which holds the queued ids in order.
    let (rows, oldest) = match who.tenant() {
        None => {
            let sums = client
                .prepare_cached("SELECT status, sum(jobs)::bigint FROM job_counts GROUP BY status")
                .await?;
            let oldest = client
                .prepare_cached(
                    "SELECT created_at FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1",
                )
                .await?;
            (
                client.query(&sums, &[]).await?,
                client.query_opt(&oldest, &[]).await?,
            )
        }
        Some(tenant) => {
            let sums = client
                .prepare_cached(
                    "SELECT status, sum(jobs)::bigint FROM job_counts WHERE tenant = $1
                     GROUP BY status",
                )
                .await?;
            let oldest = client
                .prepare_cached(
                    "SELECT created_at FROM jobs WHERE status = 'queued' AND tenant = $1
                     ORDER BY id LIMIT 1",
                )
                .await?;
            (
                client.query(&sums, &[&tenant]).await?,
                client.query_opt(&oldest, &[&tenant]).await?,
            )
        }
    };
    for r in rows {
        by_status.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(Counts {
        by_status,
        oldest_queued_at: oldest.map(|r| r.try_get(0)).transpose()?,
    })
}

/// `steps` steps of `step_minutes` each, the first starting at minute `from_minute`, with every
/// step present (empty ones too), oldest first.
pub(super) async fn series(
    client: &impl GenericClient,
    who: &Visibility,
    from_minute: i64,
    step_minutes: i64,
    steps: i64,
) -> Result<Vec<Step>, PgError> {
    let until = from_minute.saturating_add(step_minutes.saturating_mul(steps));
    let len = usize::try_from(steps).unwrap_or(0);
    let index = |minute: i64| {
        (minute - from_minute)
            .checked_div(step_minutes)
            .and_then(|i| usize::try_from(i).ok())
    };
    // Summed over tenants here rather than row by row in Rust: every tenant's figures of a
    // minute are one row each, and an admin's overview would read them all.
    let tenant = who.tenant();
    let by_tenant = if tenant.is_some() {
        "AND tenant = $3"
    } else {
        ""
    };
    let ended_sql = format!(
        "SELECT minute, outcome, sum(jobs)::bigint FROM jobs_ended
         WHERE minute >= $1 AND minute < $2 {by_tenant} GROUP BY minute, outcome"
    );
    // Each bucket with the bound below it, which the interpolation needs.
    let latency_sql = format!(
        "SELECT l.minute, l.kind, l.le, b.lower, sum(l.jobs)::bigint
         FROM job_latency l
         JOIN (SELECT le, coalesce(lag(le) OVER (ORDER BY le), 0) AS lower
               FROM latency_buckets) b ON b.le = l.le
         WHERE l.minute >= $1 AND l.minute < $2 {by_tenant}
         GROUP BY l.minute, l.kind, l.le, b.lower"
    );
    let ended_stmt = client.prepare_cached(&ended_sql).await?;
    let latency_stmt = client.prepare_cached(&latency_sql).await?;
    let (ended_rows, latency_rows) = match tenant {
        None => (
            client.query(&ended_stmt, &[&from_minute, &until]).await?,
            client.query(&latency_stmt, &[&from_minute, &until]).await?,
        ),
        Some(tenant) => (
            client
                .query(&ended_stmt, &[&from_minute, &until, &tenant])
                .await?,
            client
                .query(&latency_stmt, &[&from_minute, &until, &tenant])
                .await?,
        ),
    };
    let mut ended: Vec<BTreeMap<String, i64>> = vec![BTreeMap::new(); len];
    for r in ended_rows {
        let (minute, outcome, jobs): (i64, String, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if let Some(step) = index(minute).and_then(|i| ended.get_mut(i)) {
            *step.entry(outcome).or_default() += jobs;
        }
    }
    let mut wait: Vec<Histogram> = vec![BTreeMap::new(); len];
    let mut run = wait.clone();
    for r in latency_rows {
        let (minute, kind, le, lower, jobs): (i64, String, i64, i64, i64) = (
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        );
        let histograms = if kind == "wait" { &mut wait } else { &mut run };
        if let Some(step) = index(minute).and_then(|i| histograms.get_mut(i)) {
            step.entry(le).or_insert((lower, 0)).1 += jobs;
        }
    }
    Ok(ended
        .into_iter()
        .zip(wait.iter().zip(&run))
        .zip(0_i64..)
        .map(|((ended, (wait, run)), i)| Step {
            start_ms: from_minute
                .saturating_add(i.saturating_mul(step_minutes))
                .saturating_mul(60_000),
            ended,
            wait_ms: percentiles(wait),
            run_ms: percentiles(run),
        })
        .collect())
}
