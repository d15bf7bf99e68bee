//! The SQL of every read. These run on the read-only pool, never on the writer, so pollers do
//! not queue behind writes (WAL lets readers and the writer proceed at once).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::StoreError;
use super::tenants::Visibility;
use super::write::{from_json, parse_id, parse_status};
use crate::job::content::Content;
use crate::job::outputs::{Omission, OmittedFile, OutputFile};
use crate::job::verdict::Verdict;
use crate::job::{BatchId, Event, Job, JobId, Outcome, Progress, Status};

/// Which way a listing runs. Ids are UUIDv7, so id order is submission order, and a page's
/// cursor is the last id it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

impl Order {
    /// The comparison with the cursor, the SQL direction, and a cursor that comes before every
    /// id in this order (for the first page).
    pub(super) fn sql(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Order::OldestFirst => (">", "ASC", ""),
            // '~' sorts after every hex digit and dash.
            Order::NewestFirst => ("<", "DESC", "~"),
        }
    }
}

/// A page of a listing: in which order, after which id, how many.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub order: Order,
    pub cursor: Option<uuid::Uuid>,
    pub limit: u32,
}

impl Page {
    /// The comparison with the cursor, the SQL direction, and the cursor as bound: the page's own,
    /// or one before every id in its order for the first page.
    pub(super) fn sql(&self) -> (&'static str, &'static str, String) {
        let (compare, direction, start) = self.order.sql();
        let cursor = self
            .cursor
            .map_or_else(|| start.to_owned(), |id| id.to_string());
        (compare, direction, cursor)
    }
}

/// What a job listing keeps; each filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<Status>,
    pub outcome: Option<Outcome>,
    pub runtime: Option<String>,
    pub batch: Option<BatchId>,
    /// Submitted at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Submitted before this time.
    pub until: Option<i64>,
}

/// The least id a job submitted at `ms` can have, as text: a UUIDv7 starts with its time in
/// milliseconds, so ids of jobs submitted before `ms` sort below it and the rest above, and a
/// time range is a range of the primary key (or of any index that ends in `id`).
fn first_id_at(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// A job in a listing: its state, without code, input or output.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    #[schema(value_type = String, format = "uuid")]
    pub id: JobId,
    pub status: Status,
    pub outcome: Option<Outcome>,
    pub runtime: String,
    pub attempt: u32,
    pub priority: i32,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    /// For a case of a batch: the batch (left out otherwise, as in the whole job).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub batch_id: Option<BatchId>,
}

pub(super) fn job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, status, outcome, runtime, attempt, max_attempts, priority, created_at,
                    started_at, finished_at, exit_code, signal, stdout, stderr,
                    stdout_truncated, stderr_truncated, wall_ms, cpu_ms, memory_kb, limits, error,
                    batch_id, case_name, verdict, verdict_detail, outputs
             FROM jobs WHERE id = ?1",
        )?
        .query_row([id.to_string()], |r| Ok(job_row(r)))
        .optional()?;
    let Some(mut job) = row.transpose()? else {
        return Ok(None);
    };
    job.progress = latest_progress(conn, id)?;
    if !job.outputs.is_empty() && job.status.is_terminal() {
        let (kept, omitted) = files_of(conn, id)?;
        job.files_out = Some(kept);
        job.files_omitted = omitted;
    }
    Ok(Some(job))
}

/// The files a job kept, and those it left out, in path order, without their bytes.
fn files_of(
    conn: &Connection,
    id: JobId,
) -> Result<(Vec<OutputFile>, Vec<OmittedFile>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, size, content_type, omitted FROM job_files WHERE job_id = ?1 ORDER BY path",
    )?;
    let mut rows = stmt.query([id.to_string()])?;
    let (mut kept, mut omitted) = (Vec::new(), Vec::new());
    while let Some(r) = rows.next()? {
        let path: String = r.get(0)?;
        let size = opt_u64(r, 1)?;
        let content_type: Option<String> = r.get(2)?;
        let reason: Option<String> = r.get(3)?;
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
                    .ok_or_else(|| StoreError::Corrupt(format!("omission {reason:?}")))?,
            }),
            (None, None) => {
                return Err(StoreError::Corrupt(format!(
                    "file {path:?} has no content type"
                )));
            }
        }
    }
    Ok((kept, omitted))
}

/// A file a job kept: its content type and bytes.
pub(super) fn job_file(
    conn: &Connection,
    id: JobId,
    path: &str,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let found = conn
        .prepare_cached(
            "SELECT content_type, content FROM job_files
             WHERE job_id = ?1 AND path = ?2 AND omitted IS NULL",
        )?
        .query_row(params![id.to_string(), path], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(found)
}

/// What a job was given to run: its code and files (a suite's case has its batch's code unless
/// it brought its own, and its batch's files with its own added, as it ran), its stdin and
/// arguments, and for a case its expected output.
#[derive(Debug, Clone)]
pub struct JobInput {
    pub code: Content,
    pub stdin: Content,
    pub args: Vec<String>,
    pub files: BTreeMap<String, Content>,
    pub expected_output: Option<Content>,
}

pub(super) fn job_input(conn: &Connection, id: JobId) -> Result<Option<JobInput>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT CASE WHEN j.code = '' THEN coalesce(b.code, '') ELSE j.code END,
                    j.stdin, j.expected_output, j.args, coalesce(b.files, '{}'), j.files
             FROM jobs j LEFT JOIN batches b ON b.id = j.batch_id
             WHERE j.id = ?1",
        )?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    let Some((code, stdin, expected_output, args, shared, own)) = row else {
        return Ok(None);
    };
    let mut files: BTreeMap<String, Content> = from_json(&shared)?;
    files.extend(from_json::<BTreeMap<String, Content>>(&own)?);
    Ok(Some(JobInput {
        code,
        stdin,
        args: from_json(&args)?,
        files,
        expected_output,
    }))
}

/// The job's latest `job.progress` event: a short walk back along `events_job`, as a job stores
/// only a bounded number of them.
fn latest_progress(conn: &Connection, id: JobId) -> Result<Option<Progress>, StoreError> {
    let data: Option<String> = conn
        .prepare_cached(
            "SELECT data FROM events WHERE job_id = ?1 AND type = 'job.progress'
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?;
    data.as_deref().map(from_json).transpose()
}

pub(super) fn job_stdin(
    conn: &Connection,
    id: JobId,
) -> Result<Option<(Status, bool)>, StoreError> {
    let row: Option<(String, bool)> = conn
        .prepare_cached("SELECT status, interactive FROM jobs WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(status, interactive)| Ok((parse_status(&status)?, interactive)))
        .transpose()
}

fn job_row(r: &Row) -> Result<Job, StoreError> {
    let id: String = r.get(0)?;
    let status: String = r.get(1)?;
    let outcome: Option<String> = r.get(2)?;
    let limits: String = r.get(19)?;
    let batch_id: Option<String> = r.get(21)?;
    let verdict: Option<String> = r.get(23)?;
    let outputs: String = r.get(25)?;
    let (stdout, stdout_encoding) = r.get::<_, Content>(12)?.shown(false);
    let (stderr, stderr_encoding) = r.get::<_, Content>(13)?.shown(false);
    Ok(Job {
        id: parse_id(&id)?,
        status: parse_status(&status)?,
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        runtime: r.get(3)?,
        attempt: r.get(4)?,
        max_attempts: r.get(5)?,
        priority: r.get(6)?,
        created_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        exit_code: r.get(10)?,
        signal: r.get(11)?,
        stdout,
        stdout_encoding,
        stderr,
        stderr_encoding,
        stdout_truncated: r.get(14)?,
        stderr_truncated: r.get(15)?,
        wall_ms: opt_u64(r, 16)?,
        cpu_ms: opt_u64(r, 17)?,
        memory_kb: opt_u64(r, 18)?,
        limits: from_json(&limits)?,
        error: r.get(20)?,
        progress: None,
        batch_id: batch_id.as_deref().map(parse_id).transpose()?,
        case_name: r.get(22)?,
        verdict: verdict.as_deref().map(parse_verdict).transpose()?,
        verdict_detail: r.get(24)?,
        outputs: from_json(&outputs)?,
        files_out: None,
        files_omitted: Vec::new(),
    })
}

pub(super) fn job_events(
    conn: &Connection,
    id: JobId,
    after: i64,
) -> Result<Option<Vec<Event>>, StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .exists([id.to_string()])?;
    if !exists {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, job_id, at, type, attempt, data, batch_id, tenant FROM events
         WHERE job_id = ?1 AND id > ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![id.to_string(), after], |r| Ok(event_row(r)))?;
    collect(rows).map(Some)
}

/// The job's status, or `None` if there is no such job.
pub(super) fn job_status(conn: &Connection, id: JobId) -> Result<Option<Status>, StoreError> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?;
    status.as_deref().map(parse_status).transpose()
}

/// The newest event id, 0 for an empty history.
pub(super) fn last_event_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM events")?
        .query_row([], |r| r.get(0))?)
}

pub(super) fn events_after(
    conn: &Connection,
    who: &Visibility,
    after: i64,
    limit: u32,
) -> Result<Vec<Event>, StoreError> {
    match who {
        Visibility::All => {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, at, type, attempt, data, batch_id, tenant FROM events
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            collect(stmt.query_map(params![after, limit], |r| Ok(event_row(r)))?)
        }
        Visibility::Tenant(tenant) => {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, at, type, attempt, data, batch_id, tenant FROM events
                 WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            collect(stmt.query_map(params![tenant, after, limit], |r| Ok(event_row(r)))?)
        }
    }
}

/// The feed newest first, before event `before` (`None`: from the newest).
pub(super) fn events_before(
    conn: &Connection,
    who: &Visibility,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<Event>, StoreError> {
    let before = before.unwrap_or(i64::MAX);
    match who {
        Visibility::All => {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, at, type, attempt, data, batch_id, tenant FROM events
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            collect(stmt.query_map(params![before, limit], |r| Ok(event_row(r)))?)
        }
        Visibility::Tenant(tenant) => {
            let mut stmt = conn.prepare_cached(
                "SELECT id, job_id, at, type, attempt, data, batch_id, tenant FROM events
                 WHERE tenant = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            collect(stmt.query_map(params![tenant, before, limit], |r| Ok(event_row(r)))?)
        }
    }
}

/// An event from `SELECT id, job_id, at, type, attempt, data, batch_id, tenant`.
pub(super) fn event_row(r: &Row) -> Result<Event, StoreError> {
    let job_id: Option<String> = r.get(1)?;
    let data: String = r.get(5)?;
    let batch_id: Option<String> = r.get(6)?;
    Ok(Event {
        id: r.get(0)?,
        job_id: job_id.as_deref().map(parse_id).transpose()?,
        batch_id: batch_id.as_deref().map(parse_id).transpose()?,
        at: r.get(2)?,
        kind: r.get(3)?,
        attempt: r.get(4)?,
        data: from_json(&data)?,
        tenant: r.get(7)?,
    })
}

pub(super) fn list_jobs(
    conn: &Connection,
    who: &Visibility,
    filter: &JobFilter,
    page: Page,
) -> Result<Vec<JobSummary>, StoreError> {
    let (compare, direction, cursor) = page.sql();
    let columns = "id, status, outcome, runtime, attempt, priority, created_at, started_at,
                   finished_at, exit_code, batch_id";
    let status = filter.status.map(Status::as_str);
    let outcome = filter.outcome.map(Outcome::as_str);
    let batch = filter.batch.map(|id| id.to_string());
    let since = filter.since.map(first_id_at);
    let until = filter.until.map(first_id_at);
    // Built from the filters given, so each shape walks its own index: `jobs_status` for a
    // status, `jobs_outcome` for an outcome, `jobs_runtime` for a runtime, `jobs_tenant` for a
    // tenant, `jobs_batch_case` for a batch.
    let mut sql = format!("SELECT {columns} FROM jobs WHERE id {compare} ?1");
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&cursor];
    for (bound, value) in [(">=", &since), ("<", &until)] {
        if let Some(value) = value {
            args.push(value);
            sql.push_str(&format!(" AND id {bound} ?{}", args.len()));
        }
    }
    for (column, value) in [
        ("status", status.as_ref().map(|s| s as &dyn rusqlite::ToSql)),
        (
            "outcome",
            outcome.as_ref().map(|o| o as &dyn rusqlite::ToSql),
        ),
        (
            "runtime",
            filter.runtime.as_ref().map(|r| r as &dyn rusqlite::ToSql),
        ),
        (
            "batch_id",
            batch.as_ref().map(|b| b as &dyn rusqlite::ToSql),
        ),
    ] {
        if let Some(value) = value {
            args.push(value);
            sql.push_str(&format!(" AND {column} = ?{}", args.len()));
        }
    }
    if let Visibility::Tenant(tenant) = who {
        args.push(tenant);
        sql.push_str(&format!(" AND tenant = ?{}", args.len()));
    }
    args.push(&page.limit);
    sql.push_str(&format!(" ORDER BY id {direction} LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    collect(stmt.query_map(&*args, |r| Ok(summary_row(r)))?)
}

/// Every tenant's jobs by page, newest first, as Judge0 lists submissions: `per_page` jobs
/// after the newest `skip`, and how many there are in all.
pub(super) fn jobs_page(
    conn: &Connection,
    skip: i64,
    per_page: i64,
) -> Result<(Vec<Job>, i64), StoreError> {
    let total: i64 = conn
        // From the figures kept with every job (schema/0012_stats.sql): counting the jobs
        // themselves reads every row.
        .prepare_cached("SELECT coalesce(sum(jobs), 0) FROM job_counts")?
        .query_row([], |r| r.get(0))?;
    let ids: Vec<String> = conn
        .prepare_cached("SELECT id FROM jobs ORDER BY id DESC LIMIT ?1 OFFSET ?2")?
        .query_map(params![per_page, skip], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        jobs.extend(job(conn, parse_id(&id)?)?);
    }
    Ok((jobs, total))
}

fn summary_row(r: &Row) -> Result<JobSummary, StoreError> {
    let id: String = r.get(0)?;
    let status: String = r.get(1)?;
    let outcome: Option<String> = r.get(2)?;
    Ok(JobSummary {
        id: parse_id(&id)?,
        status: parse_status(&status)?,
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        runtime: r.get(3)?,
        attempt: r.get(4)?,
        priority: r.get(5)?,
        created_at: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        exit_code: r.get(9)?,
        batch_id: r
            .get::<_, Option<String>>(10)?
            .as_deref()
            .map(parse_id)
            .transpose()?,
    })
}

pub(super) fn opt_u64(r: &Row, idx: usize) -> Result<Option<u64>, StoreError> {
    let value: Option<i64> = r.get(idx)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}"))))
        .transpose()
}

pub(super) fn parse_verdict(s: &str) -> Result<Verdict, StoreError> {
    Verdict::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown verdict {s:?}")))
}

pub(super) fn parse_outcome(s: &str) -> Result<Outcome, StoreError> {
    Outcome::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown outcome {s:?}")))
}

pub(super) fn collect<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T, StoreError>>>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}
