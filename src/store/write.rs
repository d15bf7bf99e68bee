//! The SQL of every state change. Each function runs inside the writer's transaction and writes
//! the status change and its event together; none of them commits.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use super::bytes::Stored;
use super::tenants::{self, Admission, Full};
use super::{StoreError, batch};
use crate::bus::Notice;
use crate::job::batch::CaseCheck;
use crate::job::content::Content;
use crate::job::outputs::Collected;
use crate::job::verdict::{Judgement, Verdict};
use crate::job::{
    BatchId, EventKind, Finish, JobId, JobSpec, Limits, Outcome, Progress, RunResult, Status,
};

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job was stored.
    Created(JobId),
    /// The idempotency key was seen before with the same request: this is that job.
    Replayed(JobId),
    /// The idempotency key was seen before with a different request.
    KeyReused(JobId),
    /// Not stored: the queue is at its limit.
    Full(Full),
}

/// A job a worker now holds, with everything needed to run it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub attempt: u32,
    pub runtime: String,
    pub code: Content,
    pub stdin: Content,
    pub args: Vec<String>,
    pub files: BTreeMap<String, Content>,
    /// The files to keep after the run (none for a case of a batch).
    pub outputs: Vec<String>,
    pub limits: Limits,
    /// Its stdin stays open for what is written to it while it runs ([`crate::stdin`]).
    pub interactive: bool,
    /// Set when the job is a case of a batch: how to judge its output.
    pub case: Option<CaseCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    /// Cancelled. If it was running, `running_attempt` names the run to stop.
    Cancelled {
        running_attempt: Option<u32>,
    },
    /// It had already ended with this status.
    AlreadyFinished(Status),
    NotFound,
}

/// A running attempt to requeue or end: (id, attempt, max_attempts).
pub(super) type RunningRow = (JobId, u32, u32);

pub(super) fn submit(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    spec: &JobSpec,
    admission: &Admission,
    now: i64,
) -> Result<Submitted, StoreError> {
    let args = to_json(&spec.args)?;
    let files = to_json(&spec.files)?;
    let limits = to_json(&spec.limits)?;
    let outputs = to_json(&spec.outputs)?;
    if let Some(key) = &spec.idempotency_key {
        let existing = conn
            .prepare_cached(
                "SELECT id, runtime, code, stdin, args, files, limits, priority, max_attempts,
                        callback_url, outputs, callback_shape, interactive
                 FROM jobs WHERE coalesce(tenant, '') = coalesce(?2, '') AND idempotency_key = ?1",
            )?
            .query_row(params![key, admission.tenant], |r| {
                let same = r.get::<_, String>(1)? == spec.runtime
                    && r.get::<_, Content>(2)? == spec.code
                    && r.get::<_, Content>(3)? == spec.stdin
                    && r.get::<_, String>(4)? == args
                    && r.get::<_, String>(5)? == files
                    && r.get::<_, String>(6)? == limits
                    && r.get::<_, i32>(7)? == spec.priority
                    && r.get::<_, u32>(8)? == spec.max_attempts
                    && r.get::<_, Option<String>>(9)? == spec.callback_url
                    && r.get::<_, String>(10)? == outputs
                    && r.get::<_, String>(11)? == spec.callback_shape.as_str()
                    && r.get::<_, bool>(12)? == spec.interactive;
                Ok((r.get::<_, String>(0)?, same))
            })
            .optional()?;
        if let Some((id, same)) = existing {
            let id = parse_id(&id)?;
            return Ok(if same {
                Submitted::Replayed(id)
            } else {
                Submitted::KeyReused(id)
            });
        }
    }
    if let Some(full) = tenants::admit(conn, admission, 1, false)? {
        return Ok(Submitted::Full(full));
    }
    let id = JobId::now_v7();
    conn.prepare_cached(
        "INSERT INTO jobs (id, runtime, code, stdin, args, files, limits, priority, max_attempts,
                           idempotency_key, created_at, callback_url, tenant, outputs,
                           callback_shape, interactive)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        id.to_string(),
        spec.runtime,
        spec.code,
        spec.stdin,
        args,
        files,
        limits,
        spec.priority,
        spec.max_attempts,
        spec.idempotency_key,
        now,
        spec.callback_url,
        admission.tenant,
        outputs,
        spec.callback_shape.as_str(),
        spec.interactive,
    ])?;
    let data = json!({"runtime": spec.runtime, "priority": spec.priority});
    append_event(conn, notices, id, None, now, EventKind::Queued, None, &data)?;
    Ok(Submitted::Created(id))
}

pub(super) fn claim(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<ClaimedJob>, StoreError> {
    let claimed = conn
        .prepare_cached(CLAIM_SQL)?
        .query_row(params![owner, lease_until, now], claimed_job)
        .optional()?;
    let Some(job) = claimed else {
        return Ok(None);
    };
    let (mut job, case) = job?;
    if let Some((batch_id, expected_output)) = case {
        // What a case shares with its batch is stored once, with the batch.
        let shared = batch::shared(conn, batch_id, now)?;
        if job.code.is_empty() {
            job.code = shared.code;
        }
        let own = std::mem::replace(&mut job.files, shared.files);
        job.files.extend(own);
        job.case = Some(CaseCheck {
            batch_id,
            expected_output,
            compare: shared.compare,
        });
    }
    let data = json!({"worker": owner});
    let batch_id = job.case.as_ref().map(|case| case.batch_id);
    append_event(
        conn,
        notices,
        job.id,
        batch_id,
        now,
        EventKind::Started,
        Some(job.attempt),
        &data,
    )?;
    Ok(Some(job))
}

/// Takes the next job in one statement. The subquery walks the `jobs_claim` index in order and
/// stops at the first row; public so a test can check its query plan never sorts the queue.
pub const CLAIM_SQL: &str = "UPDATE jobs
     SET status = 'running', attempt = attempt + 1, lease_owner = ?1,
         lease_expires_at = ?2, started_at = ?3
     WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY priority DESC, id LIMIT 1)
     RETURNING id, attempt, runtime, code, stdin, args, files, limits, batch_id, expected_output,
               outputs, interactive";

/// A claimed job, and for a case its batch and expected output.
type ClaimedRow = (ClaimedJob, Option<(BatchId, Option<Content>)>);

fn claimed_job(r: &Row) -> rusqlite::Result<Result<ClaimedRow, StoreError>> {
    let id: String = r.get(0)?;
    let args: String = r.get(5)?;
    let files: String = r.get(6)?;
    let limits: String = r.get(7)?;
    let batch_id: Option<String> = r.get(8)?;
    let expected_output: Option<Content> = r.get(9)?;
    let outputs: String = r.get(10)?;
    let interactive: bool = r.get(11)?;
    let (attempt, runtime, code, stdin) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    Ok((|| {
        let job = ClaimedJob {
            id: parse_id(&id)?,
            attempt,
            runtime,
            code,
            stdin,
            args: from_json(&args)?,
            files: from_json(&files)?,
            outputs: from_json(&outputs)?,
            limits: from_json(&limits)?,
            interactive,
            case: None,
        };
        let case = batch_id
            .map(|b| parse_id(&b).map(|b| (b, expected_output)))
            .transpose()?;
        Ok((job, case))
    })())
}

pub(super) fn renew(
    conn: &Connection,
    id: JobId,
    attempt: u32,
    owner: &str,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE jobs SET lease_expires_at = ?1
             WHERE id = ?2 AND attempt = ?3 AND status = 'running' AND lease_owner = ?4",
        )?
        .execute(params![lease_until, id.to_string(), attempt, owner])?;
    Ok(n == 1)
}

/// The data of a run's terminal event, the same on every backend: its outcome and figures, the
/// error, and the build it used.
pub(super) fn ended_data(outcome: Outcome, result: &RunResult, error: Option<&str>) -> Value {
    let mut data = json!({
        "outcome": outcome.as_str(),
        "exit_code": result.exit_code,
        "signal": result.signal,
        "wall_ms": result.wall_ms,
        "cpu_ms": result.cpu_ms,
        "memory_kb": result.memory_kb,
        "error": error,
    });
    if let Some(build) = result.build {
        data["build"] = json!(build);
    }
    data
}

/// Records a run's end. For a case, `end.judged` is its verdict (absent, it follows from the
/// outcome); it is written by the same statement, and the batch is settled in the same
/// transaction.
pub(super) fn finish(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    id: JobId,
    attempt: u32,
    end: &Finish,
    now: i64,
) -> Result<bool, StoreError> {
    let Finish {
        outcome,
        ref result,
        ref error,
        ref judged,
    } = *end;
    let error = error.as_deref();
    let status = outcome.status();
    let judged = judged.clone().unwrap_or_else(|| Judgement {
        verdict: Verdict::of_outcome(outcome),
        detail: error.map(str::to_owned),
    });
    let id_text = id.to_string();
    // No RETURNING: SQLite gathers returned rows in a temporary table of their own, which costs
    // more than reading the two columns back by primary key.
    let updated = conn
        .prepare_cached(
            "UPDATE jobs
             SET status = ?1, outcome = ?2, finished_at = ?3, exit_code = ?4, signal = ?5,
                 error = ?6, stdout = ?7, stderr = ?8, stdout_truncated = ?9,
                 stderr_truncated = ?10, wall_ms = ?11, cpu_ms = ?12, memory_kb = ?13,
                 lease_owner = NULL, lease_expires_at = NULL,
                 verdict = CASE WHEN batch_id IS NULL THEN NULL ELSE ?16 END,
                 verdict_detail = CASE WHEN batch_id IS NULL THEN NULL ELSE ?17 END
             WHERE id = ?14 AND attempt = ?15 AND status = 'running'",
        )?
        .execute(params![
            status.as_str(),
            outcome.as_str(),
            now,
            result.exit_code,
            result.signal,
            error,
            Stored(&result.stdout),
            Stored(&result.stderr),
            result.stdout_truncated,
            result.stderr_truncated,
            sql_int(result.wall_ms),
            sql_int(result.cpu_ms),
            sql_int(result.memory_kb),
            id_text,
            attempt,
            judged.verdict.as_str(),
            judged.detail,
        ])?;
    if updated == 0 {
        return Ok(false);
    }
    store_files(conn, &id_text, &result.files)?;
    let (batch_id, callback_url) = batch_and_callback(conn, &id_text)?;
    let mut data = ended_data(outcome, result, error);
    if batch_id.is_some() {
        data["verdict"] = json!(judged.verdict);
        data["verdict_detail"] = json!(judged.detail);
    }
    let kind = terminal_event(status)?;
    let batch = batch_id.as_deref().map(parse_id).transpose()?;
    append_event(conn, notices, id, batch, now, kind, Some(attempt), &data)?;
    if let Some(url) = callback_url {
        super::webhooks::job_ended(conn, id, kind, &url, now)?;
    }
    if let Some(batch_id) = batch_id {
        batch::settle_case(conn, notices, &batch_id, judged.verdict, now)?;
    }
    Ok(true)
}

/// The files a run kept and those it left out, with the result that lists them.
fn store_files(conn: &Connection, id: &str, files: &Collected) -> Result<(), StoreError> {
    if files.files.is_empty() && files.omitted.is_empty() {
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO job_files (job_id, path, size, content_type, content, omitted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for file in &files.files {
        let size = sql_int(file.size);
        let content_type = Some(file.content_type.as_str());
        let none: Option<&str> = None;
        insert.execute(params![
            id,
            file.path,
            size,
            content_type,
            file.contents,
            none
        ])?;
    }
    for file in &files.omitted {
        let size = file.size.map(sql_int);
        let (content_type, contents): (Option<&str>, Option<&[u8]>) = (None, None);
        let reason = file.reason.as_str();
        insert.execute(params![id, file.path, size, content_type, contents, reason])?;
    }
    Ok(())
}

/// The job's batch and callback URL, which decide what else its events write.
fn batch_and_callback(
    conn: &Connection,
    id: &str,
) -> Result<(Option<String>, Option<String>), StoreError> {
    let found = conn
        .prepare_cached("SELECT batch_id, callback_url FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(found.unwrap_or_default())
}

/// Records a `job.progress` event, if the job is still running under this attempt.
pub(super) fn progress(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    id: JobId,
    attempt: u32,
    progress: &Progress,
    now: i64,
) -> Result<bool, StoreError> {
    if running_attempt(conn, id, attempt)?.is_empty() {
        return Ok(false);
    }
    let data = json!({"percent": progress.percent, "message": progress.message});
    insert_event(
        conn,
        notices,
        id,
        now,
        EventKind::Progress,
        Some(attempt),
        &data,
    )?;
    Ok(true)
}

pub(super) fn cancel(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    id: JobId,
    now: i64,
) -> Result<CancelResult, StoreError> {
    let found: Option<(String, u32)> = conn
        .prepare_cached("SELECT status, attempt FROM jobs WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((status, attempt)) = found else {
        return Ok(CancelResult::NotFound);
    };
    let status = parse_status(&status)?;
    if status.is_terminal() {
        return Ok(CancelResult::AlreadyFinished(status));
    }
    let batch_id: Option<String> = conn
        .prepare_cached(
            "UPDATE jobs SET status = 'cancelled', outcome = 'cancelled', finished_at = ?1,
                             lease_owner = NULL, lease_expires_at = NULL,
                             verdict = CASE WHEN batch_id IS NULL THEN NULL ELSE 'cancelled' END
             WHERE id = ?2
             RETURNING batch_id",
        )?
        .query_row(params![now, id.to_string()], |r| r.get(0))?;
    let running = status == Status::Running;
    let event_attempt = running.then_some(attempt);
    let data = json!({"outcome": "cancelled", "from": status.as_str()});
    insert_event(
        conn,
        notices,
        id,
        now,
        EventKind::Cancelled,
        event_attempt,
        &data,
    )?;
    if let Some(batch_id) = batch_id {
        batch::settle_case(conn, notices, &batch_id, Verdict::Cancelled, now)?;
    }
    Ok(CancelResult::Cancelled {
        running_attempt: event_attempt,
    })
}

/// Keeps what a run cancelled while it ran produced: its output, usage and files, as a
/// timed-out run's are kept. Only on the job that cancel ended during this very attempt (its `job.cancelled`
/// event names the attempt, and only one run has an attempt): the cancel itself wrote the
/// status, the outcome and the event, and this adds nothing to the history. False if there was
/// nothing to keep it on.
pub(super) fn keep_cancelled_run(
    conn: &Connection,
    id: JobId,
    attempt: u32,
    result: &RunResult,
) -> Result<bool, StoreError> {
    let updated = conn
        .prepare_cached(
            "UPDATE jobs
             SET exit_code = ?1, signal = ?2, stdout = ?3, stderr = ?4, stdout_truncated = ?5,
                 stderr_truncated = ?6, wall_ms = ?7, cpu_ms = ?8, memory_kb = ?9
             WHERE id = ?10 AND attempt = ?11 AND status = 'cancelled'
               AND EXISTS (SELECT 1 FROM events
                           WHERE job_id = ?10 AND type = 'job.cancelled' AND attempt = ?11)",
        )?
        .execute(params![
            result.exit_code,
            result.signal,
            Stored(&result.stdout),
            Stored(&result.stderr),
            result.stdout_truncated,
            result.stderr_truncated,
            sql_int(result.wall_ms),
            sql_int(result.cpu_ms),
            sql_int(result.memory_kb),
            id.to_string(),
            attempt,
        ])?;
    if updated == 1 {
        store_files(conn, &id.to_string(), &result.files)?;
    }
    Ok(updated == 1)
}

pub(super) fn running_attempt(
    conn: &Connection,
    id: JobId,
    attempt: u32,
) -> Result<Vec<RunningRow>, StoreError> {
    select_running(
        conn,
        "SELECT id, attempt, max_attempts FROM jobs
         WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
        params![id.to_string(), attempt],
    )
}

pub(super) fn expired_leases(conn: &Connection, now: i64) -> Result<Vec<RunningRow>, StoreError> {
    select_running(
        conn,
        "SELECT id, attempt, max_attempts FROM jobs
         WHERE status = 'running' AND lease_expires_at < ?1",
        params![now],
    )
}

/// Running jobs leased by `node_prefix` (any instance of this node) but not by `current`.
pub(super) fn leases_of_node(
    conn: &Connection,
    node_prefix: &str,
    current: &str,
) -> Result<Vec<RunningRow>, StoreError> {
    select_running(
        conn,
        "SELECT id, attempt, max_attempts FROM jobs
         WHERE status = 'running'
           AND substr(lease_owner, 1, length(?1)) = ?1
           AND substr(lease_owner, 1, length(?2)) <> ?2",
        params![node_prefix, current],
    )
}

fn select_running(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RunningRow>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, attempt, max_attempts) = row?;
        out.push((parse_id(&id)?, attempt, max_attempts));
    }
    Ok(out)
}

/// Takes running attempts away from their workers: back to `queued` with a `job.retrying`
/// event while attempts remain, else ended as `error` with `outcome` and `reason`.
pub(super) fn requeue_or_end(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    rows: &[RunningRow],
    outcome: Outcome,
    reason: &str,
    now: i64,
) -> Result<usize, StoreError> {
    for &(id, attempt, max_attempts) in rows {
        if attempt < max_attempts {
            conn.prepare_cached(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND attempt = ?2 AND status = 'running'",
            )?
            .execute(params![id.to_string(), attempt])?;
            let data = json!({"reason": reason, "next_attempt": attempt + 1});
            insert_event(
                conn,
                notices,
                id,
                now,
                EventKind::Retrying,
                Some(attempt),
                &data,
            )?;
        } else {
            let batch_id: Option<String> = conn
                .prepare_cached(
                    "UPDATE jobs SET status = 'error', outcome = ?1, error = ?2, finished_at = ?3,
                                     lease_owner = NULL, lease_expires_at = NULL,
                                     verdict = CASE WHEN batch_id IS NULL THEN NULL ELSE 'error' END,
                                     verdict_detail = CASE WHEN batch_id IS NULL THEN NULL ELSE ?2 END
                     WHERE id = ?4 AND attempt = ?5 AND status = 'running'
                     RETURNING batch_id",
                )?
                .query_row(
                    params![outcome.as_str(), reason, now, id.to_string(), attempt],
                    |r| r.get(0),
                )?;
            let data = json!({"outcome": outcome.as_str(), "error": reason});
            insert_event(
                conn,
                notices,
                id,
                now,
                EventKind::Error,
                Some(attempt),
                &data,
            )?;
            if let Some(batch_id) = batch_id {
                batch::settle_case(conn, notices, &batch_id, Verdict::Error, now)?;
            }
        }
    }
    Ok(rows.len())
}

/// Appends a job's event; a case's events carry its batch id too, so a batch's whole history is
/// one indexed query. A job's terminal event also writes the webhook it asked for, here, so that
/// no way of ending a job can forget it. The paths every job takes (submit, claim, finish) know
/// the job's batch and call [`append_event`] directly instead.
pub(super) fn insert_event(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    job_id: JobId,
    at: i64,
    kind: EventKind,
    attempt: Option<u32>,
    data: &serde_json::Value,
) -> Result<(), StoreError> {
    let (batch_id, callback_url) = batch_and_callback(conn, &job_id.to_string())?;
    let batch = batch_id.as_deref().map(parse_id).transpose()?;
    append_event(conn, notices, job_id, batch, at, kind, attempt, data)?;
    if kind.is_terminal()
        && let Some(url) = callback_url
    {
        super::webhooks::job_ended(conn, job_id, kind, &url, at)?;
    }
    Ok(())
}

/// Appends a job's event and nothing else: the caller names the job's batch and writes a
/// terminal event's webhook. A plain insert, as `RETURNING` would cost a temporary table.
#[allow(clippy::too_many_arguments)]
fn append_event(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    job_id: JobId,
    batch_id: Option<BatchId>,
    at: i64,
    kind: EventKind,
    attempt: Option<u32>,
    data: &serde_json::Value,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (job_id, batch_id, at, type, attempt, data, tenant)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT tenant FROM jobs WHERE id = ?1))",
    )?
    .execute(params![
        job_id.to_string(),
        batch_id.map(|b| b.to_string()),
        at,
        kind.as_str(),
        attempt,
        data.to_string()
    ])?;
    notices.push(Notice {
        event_id: conn.last_insert_rowid(),
        job_id: Some(job_id),
        batch_id,
        kind,
    });
    Ok(())
}

/// Appends a batch's own event (no job).
pub(super) fn insert_batch_event(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    batch_id: BatchId,
    at: i64,
    kind: EventKind,
    data: &serde_json::Value,
) -> Result<(), StoreError> {
    let event_id: i64 = conn
        .prepare_cached(
            "INSERT INTO events (batch_id, tenant, at, type, data)
             SELECT ?1, tenant, ?2, ?3, ?4 FROM batches WHERE id = ?1 RETURNING id",
        )?
        .query_row(
            params![batch_id.to_string(), at, kind.as_str(), data.to_string()],
            |r| r.get(0),
        )?;
    notices.push(Notice {
        event_id,
        job_id: None,
        batch_id: Some(batch_id),
        kind,
    });
    Ok(())
}

/// SQLite integers are signed; measurements never come near the limit, but saturate rather than wrap.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn terminal_event(status: Status) -> Result<EventKind, StoreError> {
    EventKind::terminal(status)
        .ok_or_else(|| StoreError::Corrupt(format!("{} is not a terminal status", status.as_str())))
}

pub(super) fn parse_id(id: &str) -> Result<JobId, StoreError> {
    JobId::parse_str(id).map_err(|_| StoreError::Corrupt(format!("job id {id:?} is not a UUID")))
}

pub(super) fn parse_status(s: &str) -> Result<Status, StoreError> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{e} in {s:?}")))
}
