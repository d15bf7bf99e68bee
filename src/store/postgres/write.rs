//! The SQL of state changes on PostgreSQL. Each function runs inside the caller's transaction
//! and writes the change and its event together; none of them commits.
//!
//! Events are written last in every transaction. Inserting one takes the lock that keeps
//! events in commit order (see `events_in_commit_order` in `schema/postgres/0001_init.sql`),
//! held until the transaction ends: a row lock taken after it could wait on a transaction that
//! waits for the lock, a deadlock, and would lengthen the part of every write that is serialized.

use deadpool_postgres::GenericClient;
use serde_json::json;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::PgError;
use super::read;
use crate::job::content::Content;
use crate::job::outputs::Collected;
use crate::job::{EventKind, Finish, JobId, JobSpec, Status};
use crate::store::{Admission, ClaimedJob, Full, Submitted};

pub(super) async fn submit(
    tx: &impl GenericClient,
    spec: &JobSpec,
    admission: &Admission,
    now: i64,
) -> Result<Submitted, PgError> {
    if let Some(found) = same_key(tx, spec, admission).await? {
        return Ok(found);
    }
    // Locked, not just read: the admission holds for the whole cluster however many nodes
    // submit at once. Storing the job updates this row anyway (the counters_jobs trigger), so
    // taking its lock first adds no waiting.
    let queued: i64 = tx
        .query_one(
            "SELECT value FROM counters WHERE name = 'queued_jobs' FOR UPDATE",
            &[],
        )
        .await?
        .try_get(0)?;
    let queued = u64::try_from(queued).unwrap_or(0);
    if queued.saturating_add(1) > admission.max_queued_jobs {
        return Ok(Submitted::Full(Full::Queue {
            queued,
            max: admission.max_queued_jobs,
        }));
    }
    let id = JobId::now_v7();
    let inserted = tx
        .query_opt(
            "INSERT INTO jobs (id, runtime, code, stdin, args, files, limits, priority,
                               max_attempts, idempotency_key, created_at, callback_url, tenant,
                               outputs, callback_shape, interactive)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT ((coalesce(tenant, '')), idempotency_key)
                 WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
            &[
                &id,
                &spec.runtime,
                &spec.code.as_bytes(),
                &spec.stdin.as_bytes(),
                &Json(&spec.args),
                &Json(&spec.files),
                &Json(&spec.limits),
                &spec.priority,
                &sql_i32(spec.max_attempts)?,
                &spec.idempotency_key,
                &now,
                &spec.callback_url,
                &admission.tenant,
                &Json(&spec.outputs),
                &spec.callback_shape.as_str(),
                &spec.interactive,
            ],
        )
        .await?;
    if inserted.is_none() {
        // Another node stored a job with this key between the lookup and the insert; the
        // insert waited for it to commit, so this statement's fresh snapshot sees it.
        return same_key(tx, spec, admission).await?.ok_or_else(|| {
            PgError::Corrupt("an idempotency key conflicted with no visible job".into())
        });
    }
    let data = json!({"runtime": spec.runtime, "priority": spec.priority});
    insert_event(
        tx,
        id,
        now,
        EventKind::Queued,
        None,
        &data,
        admission.tenant.as_deref(),
    )
    .await?;
    Ok(Submitted::Created(id))
}

/// The job an earlier submit of this tenant stored under the spec's idempotency key, if any:
/// replayed if that submit asked for the same, the key reused if not.
async fn same_key(
    tx: &impl GenericClient,
    spec: &JobSpec,
    admission: &Admission,
) -> Result<Option<Submitted>, PgError> {
    let Some(key) = &spec.idempotency_key else {
        return Ok(None);
    };
    // json keeps the text kiln wrote, and serde writes a value the same way every time, so the
    // text compares the request exactly, as SQLite's TEXT column does.
    let row = tx
        .query_opt(
            "SELECT id,
                    runtime = $3 AND code = $4 AND stdin = $5 AND args::text = $6
                    AND files::text = $7 AND limits::text = $8 AND priority = $9
                    AND max_attempts = $10 AND callback_url IS NOT DISTINCT FROM $11
                    AND outputs::text = $12 AND callback_shape = $13 AND interactive = $14
             FROM jobs WHERE coalesce(tenant, '') = coalesce($2, '') AND idempotency_key = $1",
            &[
                key,
                &admission.tenant,
                &spec.runtime,
                &spec.code.as_bytes(),
                &spec.stdin.as_bytes(),
                &to_json(&spec.args)?,
                &to_json(&spec.files)?,
                &to_json(&spec.limits)?,
                &spec.priority,
                &sql_i32(spec.max_attempts)?,
                &spec.callback_url,
                &to_json(&spec.outputs)?,
                &spec.callback_shape.as_str(),
                &spec.interactive,
            ],
        )
        .await?;
    row.map(|r| -> Result<Submitted, PgError> {
        let id: JobId = r.try_get(0)?;
        Ok(if r.try_get(1)? {
            Submitted::Replayed(id)
        } else {
            Submitted::KeyReused(id)
        })
    })
    .transpose()
}

/// Takes the next queued job in one statement: the subquery reads the `jobs_claim` index in
/// order and locks the first row no other claimer holds, skipping those that are held, so
/// claimers on every node proceed at once and never take the same job.
const CLAIM_SQL: &str = "UPDATE jobs
     SET status = 'running', attempt = attempt + 1, lease_owner = $1,
         lease_expires_at = $2, started_at = $3
     WHERE id = (SELECT id FROM jobs WHERE status = 'queued'
                 ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
     RETURNING id, attempt, runtime, code, stdin, args, files, limits, outputs, interactive,
               tenant";

pub(super) async fn claim(
    tx: &impl GenericClient,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<ClaimedJob>, PgError> {
    let stmt = tx.prepare_cached(CLAIM_SQL).await?;
    let Some(row) = tx.query_opt(&stmt, &[&owner, &lease_until, &now]).await? else {
        return Ok(None);
    };
    let job = claimed_job(&row)?;
    let tenant: Option<String> = row.try_get(10)?;
    let data = json!({"worker": owner});
    insert_event(
        tx,
        job.id,
        now,
        EventKind::Started,
        Some(job.attempt),
        &data,
        tenant.as_deref(),
    )
    .await?;
    Ok(Some(job))
}

fn claimed_job(r: &Row) -> Result<ClaimedJob, PgError> {
    let Json(args) = r.try_get(5)?;
    let Json(files) = r.try_get(6)?;
    let Json(limits) = r.try_get(7)?;
    let Json(outputs) = r.try_get(8)?;
    Ok(ClaimedJob {
        id: r.try_get(0)?,
        attempt: read::u32_of(r, 1)?,
        runtime: r.try_get(2)?,
        code: Content(r.try_get(3)?),
        stdin: Content(r.try_get(4)?),
        args,
        files,
        outputs,
        limits,
        interactive: r.try_get(9)?,
        case: None,
    })
}

/// Records a run's end, its kept files and its terminal event, and the webhook it asked for.
/// A plain job's: a case's verdict (`end.judged`) and its suite's totals come with suites.
pub(super) async fn finish(
    tx: &impl GenericClient,
    id: JobId,
    attempt: u32,
    end: &Finish,
    now: i64,
) -> Result<bool, PgError> {
    let Finish {
        outcome,
        ref result,
        ref error,
        ..
    } = *end;
    let status = outcome.status();
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs
             SET status = $1, outcome = $2, finished_at = $3, exit_code = $4, signal = $5,
                 error = $6, stdout = $7, stderr = $8, stdout_truncated = $9,
                 stderr_truncated = $10, wall_ms = $11, cpu_ms = $12, memory_kb = $13,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $14 AND attempt = $15 AND status = 'running'
             RETURNING callback_url, tenant",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 15] = [
        &status.as_str(),
        &outcome.as_str(),
        &now,
        &result.exit_code,
        &result.signal,
        error,
        &result.stdout,
        &result.stderr,
        &result.stdout_truncated,
        &result.stderr_truncated,
        &sql_int(result.wall_ms),
        &sql_int(result.cpu_ms),
        &sql_int(result.memory_kb),
        &id,
        &sql_i32(attempt)?,
    ];
    let Some(row) = tx.query_opt(&stmt, &params).await? else {
        return Ok(false);
    };
    let callback_url: Option<String> = row.try_get(0)?;
    let tenant: Option<String> = row.try_get(1)?;
    store_files(tx, id, &result.files).await?;
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
    let kind = EventKind::terminal(status)
        .ok_or_else(|| PgError::Corrupt(format!("{} is not a terminal status", status.as_str())))?;
    if let Some(url) = callback_url {
        job_ended(tx, id, kind, &url, now).await?;
    }
    insert_event(tx, id, now, kind, Some(attempt), &data, tenant.as_deref()).await?;
    Ok(true)
}

/// The files a run kept and those it left out, with the result that lists them.
async fn store_files(tx: &impl GenericClient, id: JobId, files: &Collected) -> Result<(), PgError> {
    if files.files.is_empty() && files.omitted.is_empty() {
        return Ok(());
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO job_files (job_id, path, size, content_type, content, omitted)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    let (no_text, no_bytes): (Option<&str>, Option<&[u8]>) = (None, None);
    for file in &files.files {
        let (content_type, contents) = (file.content_type.as_str(), file.contents.as_slice());
        let params: [&(dyn ToSql + Sync); 6] = [
            &id,
            &file.path,
            &sql_int(file.size),
            &Some(content_type),
            &Some(contents),
            &no_text,
        ];
        tx.execute(&insert, &params).await?;
    }
    for file in &files.omitted {
        let params: [&(dyn ToSql + Sync); 6] = [
            &id,
            &file.path,
            &file.size.map(sql_int),
            &no_text,
            &no_bytes,
            &Some(file.reason.as_str()),
        ];
        tx.execute(&insert, &params).await?;
    }
    Ok(())
}

/// Writes the outbox row for a job that has just ended, with the exact body every attempt
/// will send: the job as `GET /v1/jobs/{id}` shows it, read back in this transaction.
async fn job_ended(
    tx: &impl GenericClient,
    id: JobId,
    kind: EventKind,
    url: &str,
    now: i64,
) -> Result<(), PgError> {
    let job = read::job(tx, id)
        .await?
        .ok_or_else(|| PgError::Corrupt(format!("job {id} ended but is not there")))?;
    let payload = to_json(&json!({"event": kind.as_str(), "job": job}))?;
    tx.execute(
        "INSERT INTO webhooks (job_id, event, url, payload, next_attempt_at, created_at,
                               updated_at, tenant, shape)
         SELECT $1, $2, $3, $4::text::json, $5, $5, $5, tenant, callback_shape
         FROM jobs WHERE id = $1",
        &[&id, &kind.as_str(), &url, &payload, &now],
    )
    .await?;
    Ok(())
}

/// Appends a job's event; the caller passes the job's tenant, which it has from the row it
/// changed. The last write of every transaction (see the module's doc).
async fn insert_event(
    tx: &impl GenericClient,
    job_id: JobId,
    at: i64,
    kind: EventKind,
    attempt: Option<u32>,
    data: &serde_json::Value,
    tenant: Option<&str>,
) -> Result<(), PgError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (job_id, at, type, attempt, data, tenant)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    let attempt = attempt.map(sql_i32).transpose()?;
    tx.execute(
        &stmt,
        &[&job_id, &at, &kind.as_str(), &attempt, &Json(data), &tenant],
    )
    .await?;
    Ok(())
}

/// PostgreSQL's integers are signed; measurements never come near the limit, but saturate
/// rather than wrap.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Attempts are PostgreSQL integers: a count too large for one is a bug, never truncated.
fn sql_i32(v: u32) -> Result<i32, PgError> {
    i32::try_from(v).map_err(|_| PgError::Corrupt(format!("{v} does not fit an integer column")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, PgError> {
    serde_json::to_string(value).map_err(|e| PgError::Corrupt(e.to_string()))
}

/// Why a status read back is not one kiln knows.
pub(super) fn parse_status(s: &str) -> Result<Status, PgError> {
    Status::parse(s).ok_or_else(|| PgError::Corrupt(format!("unknown status {s:?}")))
}
