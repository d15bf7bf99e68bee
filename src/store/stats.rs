//! The figures an overview reads: jobs by status now, the oldest queued job, and per step of
//! time the jobs that ended by outcome with percentiles of their queue wait and run time.
//!
//! They come from the tables `schema/0012_stats.sql` keeps with triggers in each job's own
//! transaction, so reading them costs a few rows whatever the number of jobs; this module only
//! sums them for the caller's tenant (or every tenant) and turns the latency histograms into
//! percentiles.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{StoreError, Visibility};
use crate::job::Status;

/// Jobs by status right now, every status present, and when the oldest queued job was
/// submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub by_status: BTreeMap<String, i64>,
    pub oldest_queued_at: Option<i64>,
}

pub(super) fn counts(conn: &Connection, who: &Visibility) -> Result<Counts, StoreError> {
    let mut by_status: BTreeMap<String, i64> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let tenant = who.tenant();
    let mut stmt = conn.prepare_cached(
        "SELECT status, sum(jobs) FROM job_counts WHERE ?1 IS NULL OR tenant = ?1 GROUP BY status",
    )?;
    let rows = stmt.query_map([tenant], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (status, jobs) = row?;
        by_status.insert(status, jobs);
    }
    // The claim index's order is the queue's, and ids sort by submission: its first queued
    // row of the tenant is the oldest.
    let oldest_queued_at = conn
        .prepare_cached(
            "SELECT created_at FROM jobs WHERE status = 'queued' AND (?1 IS NULL OR tenant = ?1) \
             ORDER BY id LIMIT 1",
        )?
        .query_row([tenant], |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(Counts {
        by_status,
        oldest_queued_at,
    })
}

/// Three percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One step of a series: the jobs that ended in it, by outcome, and how long they waited and
/// ran (`None` where none of them started).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub start_ms: i64,
    pub ended: BTreeMap<String, i64>,
    pub wait_ms: Option<Percentiles>,
    pub run_ms: Option<Percentiles>,
}

/// `steps` steps of `step_minutes` each, the first starting at minute `from_minute`, with every
/// step present (empty ones too), oldest first.
pub(super) fn series(
    conn: &Connection,
    who: &Visibility,
    from_minute: i64,
    step_minutes: i64,
    steps: i64,
) -> Result<Vec<Step>, StoreError> {
    let tenant = who.tenant();
    let until = from_minute + step_minutes * steps;
    let index = |minute: i64| usize::try_from((minute - from_minute) / step_minutes).ok();
    let mut ended: Vec<BTreeMap<String, i64>> = vec![BTreeMap::new(); to_len(steps)];
    let mut stmt = conn.prepare_cached(
        "SELECT minute, outcome, jobs FROM jobs_ended \
         WHERE minute >= ?1 AND minute < ?2 AND (?3 IS NULL OR tenant = ?3)",
    )?;
    let rows = stmt.query_map(params![from_minute, until, tenant], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (minute, outcome, jobs) = row?;
        if let Some(step) = index(minute).and_then(|i| ended.get_mut(i)) {
            *step.entry(outcome).or_default() += jobs;
        }
    }
    let mut wait: Vec<Histogram> = vec![BTreeMap::new(); to_len(steps)];
    let mut run = wait.clone();
    let mut stmt = conn.prepare_cached(
        "SELECT minute, kind, le, \
                coalesce((SELECT max(b.le) FROM latency_buckets b WHERE b.le < l.le), 0), jobs \
         FROM job_latency l WHERE minute >= ?1 AND minute < ?2 AND (?3 IS NULL OR tenant = ?3)",
    )?;
    let rows = stmt.query_map(params![from_minute, until, tenant], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (minute, kind, le, lower, jobs) = row?;
        let histograms = if kind == "wait" { &mut wait } else { &mut run };
        if let Some(step) = index(minute).and_then(|i| histograms.get_mut(i)) {
            step.entry(le).or_insert((lower, 0)).1 += jobs;
        }
    }
    Ok(ended
        .into_iter()
        .zip(wait.iter().zip(&run))
        .zip(0..)
        .map(|((ended, (wait, run)), i)| Step {
            start_ms: (from_minute + i * step_minutes) * 60_000,
            ended,
            wait_ms: percentiles(wait),
            run_ms: percentiles(run),
        })
        .collect())
}

fn to_len(steps: i64) -> usize {
    usize::try_from(steps).unwrap_or(0)
}

/// The longest bound a percentile may name: the last bucket holds everything past a day, and
/// is reported as a day rather than as the integer's maximum.
const LONGEST_MS: i64 = 86_400_000;

/// A latency histogram: each bucket's upper bound in ms → its lower bound and its jobs.
pub(super) type Histogram = BTreeMap<i64, (i64, i64)>;

/// Percentiles of a histogram, each interpolated linearly inside the bucket it falls in,
/// between its bounds: exact to the bucket's width (about a third of a decade), as a chart
/// needs.
pub(super) fn percentiles(histogram: &Histogram) -> Option<Percentiles> {
    let total: i64 = histogram.values().map(|(_, jobs)| jobs).sum();
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let rank = q * total as f64;
        let mut below = 0_i64;
        let mut last = 0_i64;
        for (&le, &(lower, jobs)) in histogram {
            let (lower, upper) = (lower.min(LONGEST_MS), le.min(LONGEST_MS));
            if (below + jobs) as f64 >= rank {
                let within = (rank - below as f64) / jobs as f64;
                return lower as f64 + within * (upper - lower) as f64;
            }
            below += jobs;
            last = upper;
        }
        last as f64
    };
    // A tenth of a millisecond is finer than any bucket: more digits would only be noise.
    let rounded = |q: f64| (at(q) * 10.0).round() / 10.0;
    Some(Percentiles {
        p50: rounded(0.50),
        p95: rounded(0.95),
        p99: rounded(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_fall_inside_the_bucket_that_holds_them() {
        // 100 jobs: 50 of 7 to 10 ms, 45 of 70 to 100, 5 of 700 to 1000.
        let histogram = BTreeMap::from([(10, (7, 50)), (100, (70, 45)), (1000, (700, 5))]);
        let p = percentiles(&histogram).expect("jobs");
        assert_eq!(p.p50, 10.0, "the 50th job is the last of the first bucket");
        assert_eq!(p.p95, 100.0, "the 95th is the last of the second");
        assert!((700.0..=1000.0).contains(&p.p99), "{p:?}");
        assert!(p.p50 <= p.p95 && p.p95 <= p.p99);
    }

    #[test]
    fn no_jobs_have_no_percentiles_and_the_last_bucket_reads_as_a_day() {
        assert_eq!(percentiles(&BTreeMap::new()), None);
        let p = percentiles(&BTreeMap::from([(i64::MAX, (86_400_000, 3))])).expect("jobs");
        assert_eq!(p.p99, LONGEST_MS as f64);
    }
}
