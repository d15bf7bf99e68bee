//! The SQL of reads on PostgreSQL: a job as the API shows it (whole, its status, its input, its
//! kept files), its events, the feed of every event a caller may see, the job listing and the
//! queue's depth. Each is one
//! statement (or a few) on whichever connection the caller holds, a transaction's included, so
//! a write can read back what it has just written (the webhook payload of a job's end).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::PgError;
use super::write::parse_status;
use crate::job::content::Content;
use crate::job::outputs::{Omission, OmittedFile, OutputFile};
use crate::job::verdict::Verdict;
use std::collections::BTreeMap;

use crate::job::{Event, Job, JobId, Outcome, Progress, Status};
use crate::store::{JobFilter, JobInput, JobSummary, Order, Page, Visibility};

pub(super) async fn job(client: &impl GenericClient, id: JobId) -> Result<Option<Job>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT id, status, outcome, runtime, attempt, max_attempts, priority, created_at,
                    started_at, finished_at, exit_code, signal, stdout, stderr,
                    stdout_truncated, stderr_truncated, wall_ms, cpu_ms, memory_kb, limits, error,
                    batch_id, case_name, verdict, verdict_detail, outputs
             FROM jobs WHERE id = $1",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let mut job = job_row(&row)?;
    job.progress = latest_progress(client, id).await?;
    if !job.outputs.is_empty() && job.status.is_terminal() {
        let (kept, omitted) = files_of(client, id).await?;
        job.files_out = Some(kept);
        job.files_omitted = omitted;
    }
    Ok(Some(job))
}

/// The job's status, or `None` if there is no such job.
pub(super) async fn job_status(
    client: &impl GenericClient,
    id: JobId,
) -> Result<Option<Status>, PgError> {
    let row = client
        .query_opt("SELECT status FROM jobs WHERE id = $1", &[&id])
        .await?;
    row.map(|r| parse_status(r.try_get(0)?)).transpose()
}

/// Where the job is in its life, and whether its stdin stays open while it runs.
pub(super) async fn job_stdin(
    client: &impl GenericClient,
    id: JobId,
) -> Result<Option<(Status, bool)>, PgError> {
    let row = client
        .query_opt("SELECT status, interactive FROM jobs WHERE id = $1", &[&id])
        .await?;
    row.map(|r| Ok((parse_status(r.try_get(0)?)?, r.try_get(1)?)))
        .transpose()
}

/// A file the job kept: its content type and bytes.
pub(super) async fn job_file(
    client: &impl GenericClient,
    id: JobId,
    path: &str,
) -> Result<Option<(String, Vec<u8>)>, PgError> {
    let row = client
        .query_opt(
            "SELECT content_type, content FROM job_files
             WHERE job_id = $1 AND path = $2 AND omitted IS NULL",
            &[&id, &path],
        )
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// What the job was given to run, as SQLite's store gives it: a case's code is its batch's
/// unless it brought its own, and its files are its batch's with its own added.
pub(super) async fn job_input(
    client: &impl GenericClient,
    id: JobId,
) -> Result<Option<JobInput>, PgError> {
    let row = client
        .query_opt(
            "SELECT CASE WHEN j.code = '' THEN coalesce(b.code, '') ELSE j.code END,
                    j.stdin, j.expected_output, j.args, coalesce(b.files, '{}'), j.files
             FROM jobs j LEFT JOIN batches b ON b.id = j.batch_id
             WHERE j.id = $1",
            &[&id],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let Json(args) = r.try_get(3)?;
    let Json(mut files): Json<BTreeMap<String, Content>> = r.try_get(4)?;
    let Json(own): Json<BTreeMap<String, Content>> = r.try_get(5)?;
    files.extend(own);
    Ok(Some(JobInput {
        code: Content(r.try_get(0)?),
        stdin: Content(r.try_get(1)?),
        args,
        files,
        expected_output: r.try_get::<_, Option<Vec<u8>>>(2)?.map(Content),
    }))
}

/// Every tenant's jobs by page, newest first, as Judge0 lists submissions: `per_page` jobs
/// after the newest `skip`, and how many there are in all (from `job_counts`, not a count of
/// the jobs, which reads every row).
pub(super) async fn jobs_page(
    client: &impl GenericClient,
    skip: i64,
    per_page: i64,
) -> Result<(Vec<Job>, i64), PgError> {
    let total: i64 = client
        .query_one("SELECT coalesce(sum(jobs), 0)::bigint FROM job_counts", &[])
        .await?
        .try_get(0)?;
    let ids = client
        .query(
            "SELECT id FROM jobs ORDER BY id DESC LIMIT $1 OFFSET $2",
            &[&per_page, &skip],
        )
        .await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for row in ids {
        jobs.extend(job(client, row.try_get(0)?).await?);
    }
    Ok((jobs, total))
}

/// How many jobs are in each status, every status present (0 for none), from the figures the
/// triggers keep, so that a scrape reads a few rows however many jobs there are.
pub(super) async fn queue_depth(
    client: &impl GenericClient,
) -> Result<BTreeMap<String, i64>, PgError> {
    let mut depth: BTreeMap<String, i64> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let rows = client
        .query(
            "SELECT status, sum(jobs)::bigint FROM job_counts GROUP BY status",
            &[],
        )
        .await?;
    for r in rows {
        depth.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(depth)
}

fn job_row(r: &Row) -> Result<Job, PgError> {
    let status: String = r.try_get(1)?;
    let outcome: Option<String> = r.try_get(2)?;
    let verdict: Option<String> = r.try_get(23)?;
    let Json(limits) = r.try_get(19)?;
    let Json(outputs) = r.try_get(25)?;
    let (stdout, stdout_encoding) = Content(r.try_get(12)?).shown(false);
    let (stderr, stderr_encoding) = Content(r.try_get(13)?).shown(false);
    Ok(Job {
        id: r.try_get(0)?,
        status: parse_status(&status)?,
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        runtime: r.try_get(3)?,
        attempt: u32_of(r, 4)?,
        max_attempts: u32_of(r, 5)?,
        priority: r.try_get(6)?,
        created_at: r.try_get(7)?,
        started_at: r.try_get(8)?,
        finished_at: r.try_get(9)?,
        exit_code: r.try_get(10)?,
        signal: r.try_get(11)?,
        stdout,
        stdout_encoding,
        stderr,
        stderr_encoding,
        stdout_truncated: r.try_get(14)?,
        stderr_truncated: r.try_get(15)?,
        wall_ms: opt_u64(r, 16)?,
        cpu_ms: opt_u64(r, 17)?,
        memory_kb: opt_u64(r, 18)?,
        limits,
        error: r.try_get(20)?,
        progress: None,
        batch_id: r.try_get(21)?,
        case_name: r.try_get(22)?,
        verdict: verdict.as_deref().map(parse_verdict).transpose()?,
        verdict_detail: r.try_get(24)?,
        outputs,
        files_out: None,
        files_omitted: Vec::new(),
    })
}

/// The job's latest `job.progress` event: a short walk back along `events_job`.
async fn latest_progress(
    client: &impl GenericClient,
    id: JobId,
) -> Result<Option<Progress>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT data FROM events WHERE job_id = $1 AND type = 'job.progress'
             ORDER BY id DESC LIMIT 1",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    row.map(|r| -> Result<Progress, PgError> {
        let Json(progress) = r.try_get(0)?;
        Ok(progress)
    })
    .transpose()
}

/// The files a job kept, and those it left out, in path order, without their bytes.
async fn files_of(
    client: &impl GenericClient,
    id: JobId,
) -> Result<(Vec<OutputFile>, Vec<OmittedFile>), PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT path, size, content_type, omitted FROM job_files WHERE job_id = $1
             ORDER BY path",
        )
        .await?;
    let (mut kept, mut omitted) = (Vec::new(), Vec::new());
    for r in client.query(&stmt, &[&id]).await? {
        let path: String = r.try_get(0)?;
        let size = opt_u64(&r, 1)?;
        let content_type: Option<String> = r.try_get(2)?;
        let reason: Option<String> = r.try_get(3)?;
        match (reason, content_type) {
            (None, Some(content_type)) => kept.push(OutputFile {
                path,
                size: size.unwrap_or_default(),
                content_type,
                contents: Vec::new(),
            }),
            (Some(reason), _) => omitted.push(OmittedFile {
                path,
                size,
                reason: Omission::parse(&reason)
                    .ok_or_else(|| PgError::Corrupt(format!("omission {reason:?}")))?,
            }),
            (None, None) => {
                return Err(PgError::Corrupt(format!(
                    "file {path:?} has no content type"
                )));
            }
        }
    }
    Ok((kept, omitted))
}

pub(super) async fn job_events(
    client: &impl GenericClient,
    id: JobId,
    after: i64,
) -> Result<Option<Vec<Event>>, PgError> {
    let exists = client
        .prepare_cached("SELECT 1 FROM jobs WHERE id = $1")
        .await?;
    if client.query_opt(&exists, &[&id]).await?.is_none() {
        return Ok(None);
    }
    let stmt = client
        .prepare_cached(
            "SELECT id, job_id, batch_id, at, type, attempt, data, tenant FROM events
             WHERE job_id = $1 AND id > $2 ORDER BY id",
        )
        .await?;
    let rows = client.query(&stmt, &[&id, &after]).await?;
    rows.iter()
        .map(event_row)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The newest event's id, 0 for an empty history. Events commit in id order, so every
/// event with a smaller id that will ever be visible is visible already.
pub(super) async fn last_event_id(client: &impl GenericClient) -> Result<i64, PgError> {
    let stmt = client
        .prepare_cached("SELECT coalesce(max(id), 0) FROM events")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
}

/// The events `who` may see with an id greater than `after`, oldest first, at most `limit`.
pub(super) async fn events_after(
    client: &impl GenericClient,
    who: &Visibility,
    after: i64,
    limit: u32,
) -> Result<Vec<Event>, PgError> {
    let limit = i64::from(limit);
    // A statement for each, rather than one with an optional tenant: each has its own plan,
    // on the primary key or on `events_tenant`.
    let rows = match who.tenant() {
        None => {
            let stmt = client
                .prepare_cached(
                    "SELECT id, job_id, batch_id, at, type, attempt, data, tenant FROM events
                     WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .await?;
            client.query(&stmt, &[&after, &limit]).await?
        }
        Some(tenant) => {
            let stmt = client
                .prepare_cached(
                    "SELECT id, job_id, batch_id, at, type, attempt, data, tenant FROM events
                     WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .await?;
            client.query(&stmt, &[&tenant, &after, &limit]).await?
        }
    };
    rows.iter().map(event_row).collect()
}

/// The events `who` may see newest first, with an id less than `before` (`None`: from the
/// newest), at most `limit`.
pub(super) async fn events_before(
    client: &impl GenericClient,
    who: &Visibility,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<Event>, PgError> {
    let (before, limit) = (before.unwrap_or(i64::MAX), i64::from(limit));
    let rows = match who.tenant() {
        None => {
            let stmt = client
                .prepare_cached(
                    "SELECT id, job_id, batch_id, at, type, attempt, data, tenant FROM events
                     WHERE id < $1 ORDER BY id DESC LIMIT $2",
                )
                .await?;
            client.query(&stmt, &[&before, &limit]).await?
        }
        Some(tenant) => {
            let stmt = client
                .prepare_cached(
                    "SELECT id, job_id, batch_id, at, type, attempt, data, tenant FROM events
                     WHERE tenant = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .await?;
            client.query(&stmt, &[&tenant, &before, &limit]).await?
        }
    };
    rows.iter().map(event_row).collect()
}

pub(super) fn event_row(r: &Row) -> Result<Event, PgError> {
    let attempt: Option<i32> = r.try_get(5)?;
    Ok(Event {
        id: r.try_get(0)?,
        job_id: r.try_get(1)?,
        batch_id: r.try_get(2)?,
        at: r.try_get(3)?,
        kind: r.try_get(4)?,
        attempt: attempt.map(|a| non_negative(a, "attempt")).transpose()?,
        data: r.try_get(6)?,
        tenant: r.try_get(7)?,
    })
}

/// A page of the jobs `who` may see that pass every filter given, in id order (submission
/// order, ids being UUIDv7) after the page's cursor, as SQLite's `list_jobs` gives them.
pub(super) async fn list_jobs(
    client: &impl GenericClient,
    who: &Visibility,
    filter: &JobFilter,
    page: Page,
) -> Result<Vec<JobSummary>, PgError> {
    let (compare, direction) = match page.order {
        Order::OldestFirst => (">", "ASC"),
        Order::NewestFirst => ("<", "DESC"),
    };
    let status = filter.status.map(Status::as_str);
    let outcome = filter.outcome.map(Outcome::as_str);
    let since = filter.since.map(first_id_at);
    let until = filter.until.map(first_id_at);
    let tenant = who.tenant();
    // Built from the filters given, so that each shape gets a plan of its own, on the index
    // of its most selective column, rather than one generic plan for every shape.
    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    let given: [(&str, &str, Option<&(dyn ToSql + Sync)>); 8] = [
        ("id", compare, page.cursor.as_ref().map(|c| c as _)),
        ("id", ">=", since.as_ref().map(|s| s as _)),
        ("id", "<", until.as_ref().map(|u| u as _)),
        ("status", "=", status.as_ref().map(|s| s as _)),
        ("outcome", "=", outcome.as_ref().map(|o| o as _)),
        ("runtime", "=", filter.runtime.as_ref().map(|r| r as _)),
        ("batch_id", "=", filter.batch.as_ref().map(|b| b as _)),
        ("tenant", "=", tenant.as_ref().map(|t| t as _)),
    ];
    for (column, op, value) in given {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{column} {op} ${}", params.len()));
        }
    }
    // No runtime's name holds a NUL, which PostgreSQL's text could not even be asked about:
    // such a filter matches nothing, as it does on SQLite.
    if filter.runtime.as_deref().is_some_and(|r| r.contains('\0')) {
        conditions = vec!["FALSE".to_owned()];
        params.clear();
    }
    let limit = i64::from(page.limit);
    params.push(&limit);
    let filters = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT id, status, outcome, runtime, attempt, priority, created_at, started_at,
                finished_at, exit_code, batch_id
         FROM jobs {filters} ORDER BY id {direction} LIMIT ${}",
        params.len()
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    rows.iter().map(summary_row).collect()
}

/// The least id a job submitted at `ms` can have: a UUIDv7 starts with its time in
/// milliseconds, so ids of jobs submitted before `ms` sort below it and the rest at or above,
/// and a time range is a range of the primary key (or of any index that ends in `id`).
pub(super) fn first_id_at(ms: i64) -> JobId {
    let ms = u128::try_from(ms.clamp(0, (1 << 48) - 1)).unwrap_or_default();
    JobId::from_u128(ms << 80)
}

fn summary_row(r: &Row) -> Result<JobSummary, PgError> {
    let status: String = r.try_get(1)?;
    let outcome: Option<String> = r.try_get(2)?;
    Ok(JobSummary {
        id: r.try_get(0)?,
        status: parse_status(&status)?,
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        runtime: r.try_get(3)?,
        attempt: u32_of(r, 4)?,
        priority: r.try_get(5)?,
        created_at: r.try_get(6)?,
        started_at: r.try_get(7)?,
        finished_at: r.try_get(8)?,
        exit_code: r.try_get(9)?,
        batch_id: r.try_get(10)?,
    })
}

/// A counter PostgreSQL keeps as a signed integer, which the schema's CHECKs keep from being
/// negative.
pub(super) fn u32_of(r: &Row, column: usize) -> Result<u32, PgError> {
    non_negative(r.try_get(column)?, r.columns()[column].name())
}

fn non_negative(value: i32, what: &str) -> Result<u32, PgError> {
    u32::try_from(value).map_err(|_| PgError::Corrupt(format!("{what} is {value}")))
}

pub(super) fn opt_u64(r: &Row, column: usize) -> Result<Option<u64>, PgError> {
    let value: Option<i64> = r.try_get(column)?;
    value
        .map(|v| {
            u64::try_from(v)
                .map_err(|_| PgError::Corrupt(format!("{} is {v}", r.columns()[column].name())))
        })
        .transpose()
}

pub(super) fn parse_outcome(s: &str) -> Result<Outcome, PgError> {
    Outcome::parse(s).ok_or_else(|| PgError::Corrupt(format!("unknown outcome {s:?}")))
}

pub(super) fn parse_verdict(s: &str) -> Result<Verdict, PgError> {
    Verdict::parse(s).ok_or_else(|| PgError::Corrupt(format!("unknown verdict {s:?}")))
}
