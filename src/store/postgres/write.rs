//! The SQL of state changes on PostgreSQL. Each function runs inside the caller's transaction
//! and writes the change and its event together; none of them commits. A case's end (a run's
//! finish, a cancel, a rescue with no attempt left) also writes its verdict, which the schema
//! requires of every ended case, and counts it into its batch (`batch::settle`).
//!
//! Every transaction takes its locks in one order, so that writers on many nodes never each
//! hold what another waits for: jobs' rows (in id order when several; claims and rescues skip
//! those held), then what their change of status updates through the schema's triggers (the
//! `counters`, then the figures of `0002_stats.sql`, one statement per transaction), then
//! batches' rows (in id order when several), then new rows of the outbox, and the events last.
//!
//! Events are written last in every transaction. Inserting one takes the lock that keeps
//! events in commit order (see `events_in_commit_order` in `schema/postgres/0001_init.sql`),
//! held until the transaction ends: a row lock taken after it could wait on a transaction that
//! waits for the lock, a deadlock, and would lengthen the part of every write that is serialized.
//!
//! An event's foreign key takes one row lock after that lock all the same: the check of
//! `events.job_id` locks the job's row `FOR KEY SHARE`. So kiln locks jobs' rows only as
//! strongly as an update of their non-key columns does, `FOR NO KEY UPDATE`, which that
//! share lock does not wait for; with `FOR UPDATE`, a claim holding a job and waiting for
//! the event lock, and a writer holding the event lock and checking an event of that job,
//! would wait for each other. The same holds of `events.batch_id` and a batch's row, which
//! kiln only ever updates in its non-key columns.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use serde_json::json;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::PgError;
use super::{batch, read};
use crate::job::batch::CaseCheck;
use crate::job::content::Content;
use crate::job::outputs::Collected;
use crate::job::verdict::{Judgement, Verdict};
use crate::job::{
    BatchId, EventKind, Finish, JobId, JobSpec, Outcome, Progress, RunResult, Status,
};
use crate::store::{Admission, CancelResult, ClaimedJob, Full, Submitted};

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
    let queued = NewEvent {
        job: Some(id),
        batch: None,
        tenant: admission.tenant.clone(),
        kind: EventKind::Queued,
        attempt: None,
        data: json!({"runtime": spec.runtime, "priority": spec.priority}),
    };
    insert_events(tx, now, &[queued]).await?;
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
/// claimers on every node proceed at once and never take the same job. `NO KEY`: the lock the
/// update takes anyway, which an event's foreign key check does not wait for (module doc).
const CLAIM_SQL: &str = "UPDATE jobs
     SET status = 'running', attempt = attempt + 1, lease_owner = $1,
         lease_expires_at = $2, started_at = $3
     WHERE id = (SELECT id FROM jobs WHERE status = 'queued'
                 ORDER BY priority DESC, id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)
     RETURNING id, attempt, runtime, code, stdin, args, files, limits, outputs, interactive,
               tenant, batch_id, expected_output";

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
    let mut job = claimed_job(&row)?;
    let tenant: Option<String> = row.try_get(10)?;
    let batch_id: Option<BatchId> = row.try_get(11)?;
    if let Some(batch_id) = batch_id {
        // What a case shares with its suite is stored once, with the batch: the case runs the
        // suite's code unless it brings its own, and adds its own files to the suite's.
        let shared = batch::shared(tx, batch_id, now).await?;
        if job.code.is_empty() {
            job.code = shared.code;
        }
        let own = std::mem::replace(&mut job.files, shared.files);
        job.files.extend(own);
        let expected: Option<Vec<u8>> = row.try_get(12)?;
        job.case = Some(CaseCheck {
            batch_id,
            expected_output: expected.map(Content),
            compare: shared.compare,
        });
    }
    let started = NewEvent {
        job: Some(job.id),
        batch: batch_id,
        tenant,
        kind: EventKind::Started,
        attempt: Some(job.attempt),
        data: json!({"worker": owner}),
    };
    insert_events(tx, now, &[started]).await?;
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
/// A case gets its verdict in the same statement (`end.judged`, or the one that follows from
/// the outcome), and its batch counts the end in the same transaction, completing if it was
/// the last case.
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
        ref judged,
    } = *end;
    let status = outcome.status();
    let judged = judged.clone().unwrap_or_else(|| Judgement {
        verdict: Verdict::of_outcome(outcome),
        detail: error.clone(),
    });
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs
             SET status = $1, outcome = $2, finished_at = $3, exit_code = $4, signal = $5,
                 error = $6, stdout = $7, stderr = $8, stdout_truncated = $9,
                 stderr_truncated = $10, wall_ms = $11, cpu_ms = $12, memory_kb = $13,
                 lease_owner = NULL, lease_expires_at = NULL,
                 verdict = CASE WHEN batch_id IS NULL THEN NULL ELSE $16 END,
                 verdict_detail = CASE WHEN batch_id IS NULL THEN NULL ELSE $17 END
             WHERE id = $14 AND attempt = $15 AND status = 'running'
             RETURNING callback_url, tenant, batch_id",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 17] = [
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
        &judged.verdict.as_str(),
        &judged.detail,
    ];
    let Some(row) = tx.query_opt(&stmt, &params).await? else {
        return Ok(false);
    };
    let callback_url: Option<String> = row.try_get(0)?;
    let tenant: Option<String> = row.try_get(1)?;
    let batch_id: Option<BatchId> = row.try_get(2)?;
    store_files(tx, id, &result.files).await?;
    let mut data = crate::store::write::ended_data(outcome, result, error.as_deref());
    if batch_id.is_some() {
        data["verdict"] = json!(judged.verdict);
        data["verdict_detail"] = json!(judged.detail);
    }
    let kind = EventKind::terminal(status)
        .ok_or_else(|| PgError::Corrupt(format!("{} is not a terminal status", status.as_str())))?;
    if let Some(url) = callback_url {
        job_ended(tx, id, kind, &url, now).await?;
    }
    let mut events = vec![NewEvent {
        job: Some(id),
        batch: batch_id,
        tenant,
        kind,
        attempt: Some(attempt),
        data,
    }];
    if let Some(batch_id) = batch_id {
        let passed = u32::from(judged.verdict == Verdict::Passed);
        events.extend(batch::settle(tx, batch_id, 1, passed, now).await?);
    }
    insert_events(tx, now, &events).await?;
    Ok(true)
}

/// Extends the lease of a run, if it is still this owner's under this attempt.
pub(super) async fn renew(
    tx: &impl GenericClient,
    id: JobId,
    attempt: u32,
    owner: &str,
    lease_until: i64,
) -> Result<bool, PgError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs SET lease_expires_at = $1
             WHERE id = $2 AND attempt = $3 AND status = 'running' AND lease_owner = $4",
        )
        .await?;
    let n = tx
        .execute(&stmt, &[&lease_until, &id, &sql_i32(attempt)?, &owner])
        .await?;
    Ok(n == 1)
}

/// Records a `job.progress` event, if the job is still running under this attempt.
pub(super) async fn progress(
    tx: &impl GenericClient,
    id: JobId,
    attempt: u32,
    progress: &Progress,
    now: i64,
) -> Result<bool, PgError> {
    // Locked (shared, as other progress reports may be), so that an end or a cancel cannot
    // commit between this check and the event, which would then follow the job's end.
    let running = tx
        .query_opt(
            "SELECT tenant, batch_id FROM jobs
             WHERE id = $1 AND attempt = $2 AND status = 'running'
             FOR SHARE",
            &[&id, &sql_i32(attempt)?],
        )
        .await?;
    let Some(row) = running else {
        return Ok(false);
    };
    let reported = NewEvent {
        job: Some(id),
        batch: row.try_get(1)?,
        tenant: row.try_get(0)?,
        kind: EventKind::Progress,
        attempt: Some(attempt),
        data: json!({"percent": progress.percent, "message": progress.message}),
    };
    insert_events(tx, now, &[reported]).await?;
    Ok(true)
}

/// Which running attempts [`requeue_or_end`] takes away from their workers.
pub(super) enum Running<'a> {
    /// One attempt, given back by its own worker: waits for a statement holding the row.
    Attempt(JobId, u32),
    /// Every run whose lease ran out before this time.
    ExpiredBefore(i64),
    /// Every run leased by an instance of this node (owner starting with the first) but
    /// this one (the second).
    OfNode(&'a str, &'a str),
}

/// Takes running attempts away from their workers, as SQLite's store does: back to `queued`
/// with a `job.retrying` event while attempts remain, else ended as `error` with `outcome`,
/// `reason` as its error, its `job.error` event and the webhook it asked for. Returns how many.
///
/// One statement changes every row. Rescue skips rows another transaction holds locked (a
/// worker finishing or renewing that very job, another node's rescue): it never waits behind
/// them, two rescuers cannot deadlock by locking the same rows in different orders, and a
/// skipped job whose lease is still out is taken at the next pass.
pub(super) async fn requeue_or_end(
    tx: &impl GenericClient,
    which: Running<'_>,
    outcome: Outcome,
    reason: &str,
    now: i64,
) -> Result<usize, PgError> {
    let (selection, params): (&str, Vec<Box<dyn ToSql + Sync + Send>>) = match which {
        Running::Attempt(id, attempt) => (
            "id = $4 AND attempt = $5 AND status = 'running'",
            vec![Box::new(id), Box::new(sql_i32(attempt)?)],
        ),
        Running::ExpiredBefore(before) => (
            "id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < $4
                    ORDER BY id FOR NO KEY UPDATE SKIP LOCKED)",
            vec![Box::new(before)],
        ),
        Running::OfNode(node, current) => (
            "id IN (SELECT id FROM jobs WHERE status = 'running'
                      AND starts_with(lease_owner, $4) AND NOT starts_with(lease_owner, $5)
                    ORDER BY id FOR NO KEY UPDATE SKIP LOCKED)",
            vec![Box::new(node.to_owned()), Box::new(current.to_owned())],
        ),
    };
    // A case that ends gets its verdict, `error`, in the same statement, as the schema asks.
    let sql = format!(
        "UPDATE jobs
         SET status = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'error' END,
             outcome = CASE WHEN attempt < max_attempts THEN NULL ELSE $1 END,
             error = CASE WHEN attempt < max_attempts THEN error ELSE $2 END,
             finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE $3::bigint END,
             verdict = CASE WHEN attempt < max_attempts OR batch_id IS NULL THEN NULL
                            ELSE 'error' END,
             verdict_detail = CASE WHEN attempt < max_attempts OR batch_id IS NULL THEN NULL
                                   ELSE $2 END,
             lease_owner = NULL, lease_expires_at = NULL
         WHERE {selection}
         RETURNING id, attempt, status, tenant, callback_url, batch_id"
    );
    let stmt = tx.prepare_cached(&sql).await?;
    let outcome_text = outcome.as_str();
    let mut all: Vec<&(dyn ToSql + Sync)> = vec![&outcome_text, &reason, &now];
    all.extend(params.iter().map(|p| -> &(dyn ToSql + Sync) { p.as_ref() }));
    let rows = tx.query(&stmt, &all).await?;
    let mut taken = Vec::with_capacity(rows.len());
    // How many cases of each batch ended here. A BTreeMap: the batches are settled in id
    // order, the order in which every writer locks batches, so two rescues ending cases of the
    // same batches cannot each hold one the other waits for.
    let mut ended_cases: BTreeMap<BatchId, u32> = BTreeMap::new();
    for row in &rows {
        let id: JobId = row.try_get(0)?;
        let attempt = read::u32_of(row, 1)?;
        let status: String = row.try_get(2)?;
        let tenant: Option<String> = row.try_get(3)?;
        let callback_url: Option<String> = row.try_get(4)?;
        let batch_id: Option<BatchId> = row.try_get(5)?;
        let ended = parse_status(&status)? == Status::Error;
        if ended && let Some(url) = &callback_url {
            job_ended(tx, id, EventKind::Error, url, now).await?;
        }
        if ended && let Some(batch_id) = batch_id {
            *ended_cases.entry(batch_id).or_default() += 1;
        }
        taken.push((id, attempt, ended, tenant, batch_id));
    }
    let mut completions = BTreeMap::new();
    for (&batch_id, &cases) in &ended_cases {
        if let Some(completed) = batch::settle(tx, batch_id, cases, 0, now).await? {
            completions.insert(batch_id, completed);
        }
    }
    // Only now the events: every row lock this transaction takes is taken. A batch's
    // completion follows the end of its last case, as SQLite's store writes it.
    let count = taken.len();
    let mut events = Vec::with_capacity(count + completions.len());
    for (id, attempt, ended, tenant, batch_id) in taken {
        let (kind, data) = if ended {
            let data = json!({"outcome": outcome.as_str(), "error": reason});
            (EventKind::Error, data)
        } else {
            let data = json!({"reason": reason, "next_attempt": attempt + 1});
            (EventKind::Retrying, data)
        };
        events.push(NewEvent {
            job: Some(id),
            batch: batch_id,
            tenant,
            kind,
            attempt: Some(attempt),
            data,
        });
        if ended
            && let Some(batch_id) = batch_id
            && let Some(left) = ended_cases.get_mut(&batch_id)
        {
            *left -= 1;
            if *left == 0 {
                events.extend(completions.remove(&batch_id));
            }
        }
    }
    insert_events(tx, now, &events).await?;
    Ok(count)
}

/// Cancels a queued or running job: `cancelled` with its `job.cancelled` event (naming the
/// attempt, for a running job, so the output of that run can be kept on it afterwards) and
/// the webhook it asked for; a case with its verdict, `cancelled`, counted into its batch.
pub(super) async fn cancel(
    tx: &impl GenericClient,
    id: JobId,
    now: i64,
) -> Result<CancelResult, PgError> {
    // Locked: a claim or an end committing meanwhile would make the status read stale, and
    // the status decides what the cancel writes.
    let found = tx
        .query_opt(
            "SELECT status, attempt FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
            &[&id],
        )
        .await?;
    let Some(row) = found else {
        return Ok(CancelResult::NotFound);
    };
    let status: String = row.try_get(0)?;
    let status = parse_status(&status)?;
    let attempt = read::u32_of(&row, 1)?;
    if status.is_terminal() {
        return Ok(CancelResult::AlreadyFinished(status));
    }
    let row = tx
        .query_one(
            "UPDATE jobs SET status = 'cancelled', outcome = 'cancelled', finished_at = $1,
                             lease_owner = NULL, lease_expires_at = NULL,
                             verdict = CASE WHEN batch_id IS NULL THEN NULL ELSE 'cancelled' END
             WHERE id = $2
             RETURNING tenant, callback_url, batch_id",
            &[&now, &id],
        )
        .await?;
    let tenant: Option<String> = row.try_get(0)?;
    let callback_url: Option<String> = row.try_get(1)?;
    let batch_id: Option<BatchId> = row.try_get(2)?;
    if let Some(url) = callback_url {
        job_ended(tx, id, EventKind::Cancelled, &url, now).await?;
    }
    let cancelled = cancelled_event(id, batch_id, tenant, status, attempt);
    let running_attempt = cancelled.attempt;
    let mut events = vec![cancelled];
    if let Some(batch_id) = batch_id {
        events.extend(batch::settle(tx, batch_id, 1, 0, now).await?);
    }
    insert_events(tx, now, &events).await?;
    Ok(CancelResult::Cancelled { running_attempt })
}

/// The `job.cancelled` event of a job cancelled in status `from`: a running job's names the
/// attempt that was stopped.
pub(super) fn cancelled_event(
    id: JobId,
    batch: Option<BatchId>,
    tenant: Option<String>,
    from: Status,
    attempt: u32,
) -> NewEvent {
    NewEvent {
        job: Some(id),
        batch,
        tenant,
        kind: EventKind::Cancelled,
        attempt: (from == Status::Running).then_some(attempt),
        data: json!({"outcome": "cancelled", "from": from.as_str()}),
    }
}

/// Keeps what a run cancelled while it ran produced (its output, usage and files), on the job
/// that cancel ended during this very attempt, as SQLite's store does: the `job.cancelled`
/// event names the attempt, and only one run has it. Adds nothing to the history. False if
/// there is no such job.
pub(super) async fn keep_cancelled_run(
    tx: &impl GenericClient,
    id: JobId,
    attempt: u32,
    result: &RunResult,
) -> Result<bool, PgError> {
    let params: [&(dyn ToSql + Sync); 11] = [
        &result.exit_code,
        &result.signal,
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
    let updated = tx
        .execute(
            "UPDATE jobs
             SET exit_code = $1, signal = $2, stdout = $3, stderr = $4, stdout_truncated = $5,
                 stderr_truncated = $6, wall_ms = $7, cpu_ms = $8, memory_kb = $9
             WHERE id = $10 AND attempt = $11 AND status = 'cancelled'
               AND EXISTS (SELECT 1 FROM events
                           WHERE job_id = $10 AND type = 'job.cancelled' AND attempt = $11)",
            &params,
        )
        .await?;
    if updated == 1 {
        store_files(tx, id, &result.files).await?;
    }
    Ok(updated == 1)
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
pub(super) async fn job_ended(
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

/// An event to append. Whose it is: its job (none for a batch's own), its batch (a case's
/// events carry their batch, so that a suite's history is one indexed query) and their tenant,
/// which the caller has from the rows it changed.
pub(super) struct NewEvent {
    pub job: Option<JobId>,
    pub batch: Option<BatchId>,
    pub tenant: Option<String>,
    pub kind: EventKind,
    pub attempt: Option<u32>,
    pub data: serde_json::Value,
}

/// Appends events at `at`, their ids in the order given, in one statement however many there
/// are: it takes the commit-order lock (see the module's doc), so it is the last write of every
/// transaction, and one round trip keeps the time that lock is held short.
pub(super) async fn insert_events(
    tx: &impl GenericClient,
    at: i64,
    events: &[NewEvent],
) -> Result<(), PgError> {
    // Even an insert of no rows fires the statement trigger that takes the lock.
    if events.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (job_id, batch_id, at, type, attempt, data, tenant)
             SELECT e.job_id, e.batch_id, $1, e.type, e.attempt, e.data::json, e.tenant
             FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::integer[], $6::text[],
                         $7::text[]) WITH ORDINALITY
                  AS e (job_id, batch_id, type, attempt, data, tenant, n)
             ORDER BY e.n",
        )
        .await?;
    let jobs: Vec<Option<JobId>> = events.iter().map(|e| e.job).collect();
    let batches: Vec<Option<BatchId>> = events.iter().map(|e| e.batch).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let attempts = events
        .iter()
        .map(|e| e.attempt.map(sql_i32).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let data = events
        .iter()
        .map(|e| to_json(&e.data))
        .collect::<Result<Vec<_>, _>>()?;
    let tenants: Vec<Option<&str>> = events.iter().map(|e| e.tenant.as_deref()).collect();
    tx.execute(
        &stmt,
        &[&at, &jobs, &batches, &kinds, &attempts, &data, &tenants],
    )
    .await?;
    super::appended(events.iter().map(|e| e.kind));
    Ok(())
}

/// PostgreSQL's integers are signed; measurements never come near the limit, but saturate
/// rather than wrap.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Attempts are PostgreSQL integers: a count too large for one is a bug, never truncated.
pub(super) fn sql_i32(v: u32) -> Result<i32, PgError> {
    i32::try_from(v).map_err(|_| PgError::Corrupt(format!("{v} does not fit an integer column")))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, PgError> {
    serde_json::to_string(value).map_err(|e| PgError::Corrupt(e.to_string()))
}

/// Why a status read back is not one kiln knows.
pub(super) fn parse_status(s: &str) -> Result<Status, PgError> {
    Status::parse(s).ok_or_else(|| PgError::Corrupt(format!("unknown status {s:?}")))
}
