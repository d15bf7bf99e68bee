//! Suites on PostgreSQL: storing a whole suite in one transaction (all of it or nothing, under
//! the queue's and the batches' limits, replayed by its idempotency key), what a case shares
//! with its suite when it is claimed, counting each case's end into its batch in the
//! transaction of that end (the last completes the batch, with its `batch.completed` event and
//! webhook), cancelling what is left of a suite, and reading batches and their cases back, all
//! as SQLite's store does (`store::batch`), with the same events.
//!
//! Locks follow the order of `write` (its module doc): a suite's cases are locked before its
//! batch's row, never after, and events are appended last. Ending a case and counting it into
//! its batch are one transaction whichever node does it, and the batch's row lock makes the
//! counts of cases ending at once on several nodes add up: exactly one of them sees the last
//! case end and completes the batch.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::PgError;
use super::read::{self, u32_of};
use super::write::{self, NewEvent, parse_status, sql_i32, to_json};
use crate::job::batch::{
    Batch, Case, CaseReport, CaseSpec, Group, GroupsSummary, SuiteSpec, Tally, status_counts,
    verdict_counts,
};
use crate::job::content::Content;
use crate::job::verdict::{CompareMode, Verdict};
use crate::job::{BatchId, CallbackShape, Event, EventKind, JobId, Status};
use crate::store::{
    Admission, BatchCancel, BatchSubmitted, BatchSummary, Full, Order, Page, StoreError, Visibility,
};

/// The cases of a suite, as they are read (from the request, or from the spool a suite sent as
/// a stream waits in), a few at a time.
pub(super) type Cases = mpsc::Receiver<Result<CaseSpec, StoreError>>;

/// What a case's run needs from its batch.
pub(super) struct Shared {
    pub code: Content,
    pub files: BTreeMap<String, Content>,
    pub compare: CompareMode,
}

/// At most this many cases go in one INSERT, and about this many bytes of their code, input
/// and files: a suite of thousands is stored in a few statements, each a message of modest
/// size, with only one statement's cases in memory.
const CHUNK_CASES: usize = 256;
const CHUNK_BYTES: usize = 8 << 20;

/// Stores the suite and the `count` cases `cases` gives, or answers a replay of it: the one
/// routine behind a suite sent whole and one sent as a stream. A case `cases` cannot give, or a
/// count other than `count`, fails the whole write.
pub(super) async fn submit(
    tx: &impl GenericClient,
    suite: &SuiteSpec,
    count: usize,
    mut cases: Cases,
    admission: &Admission,
    now: i64,
) -> Result<BatchSubmitted, PgError> {
    let stored_count = i32::try_from(count)
        .map_err(|_| PgError::Suite(format!("{count} cases are more than a batch can hold")))?;
    if let Some(found) = same_key(tx, suite, stored_count, &mut cases, admission).await? {
        return Ok(found);
    }
    if let Some(full) = admit(tx, admission, count).await? {
        return Ok(BatchSubmitted::Full(full));
    }
    let id = BatchId::now_v7();
    let inserted = tx
        .query_opt(
            "INSERT INTO batches (id, runtime, code, files, limits, compare, cases, created_at,
                                  idempotency_key, callback_url, callback_each_case, tenant,
                                  pass_at_k, callback_shape)
             VALUES ($1, $2, $3, $4::text::json, $5::text::json, $6, $7, $8, $9, $10, $11, $12,
                     $13::text::json, $14)
             ON CONFLICT ((coalesce(tenant, '')), idempotency_key)
                 WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
            &[
                &id,
                &suite.runtime.as_deref().unwrap_or_default(),
                &stored_code(suite.code.as_ref()),
                &to_json(&suite.files)?,
                &to_json(&suite.limits)?,
                &suite.compare.as_str(),
                &stored_count,
                &now,
                &suite.idempotency_key,
                &suite.callback_url,
                &suite.callback_each_case,
                &admission.tenant,
                &to_json(&suite.pass_at_k)?,
                &suite.callback_shape.as_str(),
            ],
        )
        .await?;
    if inserted.is_none() {
        // Another node stored a suite with this key between the lookup and the insert; the
        // insert waited for it to commit, so a fresh statement sees it.
        return same_key(tx, suite, stored_count, &mut cases, admission)
            .await?
            .ok_or_else(|| {
                PgError::Corrupt("an idempotency key conflicted with no visible batch".into())
            });
    }
    let mut chunk = Chunk::default();
    let mut stored = Vec::with_capacity(count);
    let mut events = Vec::with_capacity(count + 1);
    while let Some(case) = cases.recv().await {
        let case = case.map_err(|e| PgError::Suite(e.to_string()))?;
        let job = JobId::now_v7();
        let index = i32::try_from(stored.len())
            .map_err(|_| PgError::Suite(format!("a suite of {count} cases gave more")))?;
        events.push(NewEvent {
            job: Some(job),
            batch: Some(id),
            tenant: admission.tenant.clone(),
            kind: EventKind::Queued,
            attempt: None,
            data: json!({"runtime": case.runtime, "priority": 0, "batch_id": id}),
        });
        stored.push((case.name.clone(), job));
        if chunk.add(job, index, case)? {
            chunk.insert(tx, id, suite, admission, now).await?;
        }
    }
    chunk.insert(tx, id, suite, admission, now).await?;
    if stored.len() != count {
        return Err(PgError::Suite(format!(
            "a suite of {count} cases gave {} to store",
            stored.len()
        )));
    }
    events.push(NewEvent {
        job: None,
        batch: Some(id),
        tenant: admission.tenant.clone(),
        kind: EventKind::BatchQueued,
        attempt: None,
        data: json!({
            "runtime": suite.runtime,
            "compare": suite.compare,
            "cases": count,
            "pass_at_k": suite.pass_at_k,
        }),
    });
    write::insert_events(tx, now, &events).await?;
    Ok(BatchSubmitted::Created { id, cases: stored })
}

/// Refuses `cases` more queued jobs and one more batch in flight beyond the limits. Both
/// counters are locked, not just read, so the limits hold across the cluster however many
/// nodes submit at once; storing the suite updates both rows anyway (the counters' triggers).
///
/// This takes `batches_in_flight` before the jobs' figures (`job_counts`), where a case's end
/// takes them the other way round; no cycle can come of it: the only figures a suite's insert
/// locks are its tenant's queued ones, and every other writer of those (a submit, a claim, a
/// cancel or rescue of a queued job) locks `queued_jobs` first, which this holds already.
async fn admit(
    tx: &impl GenericClient,
    admission: &Admission,
    cases: usize,
) -> Result<Option<Full>, PgError> {
    let queued = counter(tx, "queued_jobs").await?;
    let in_flight = counter(tx, "batches_in_flight").await?;
    let cases = u64::try_from(cases).unwrap_or(u64::MAX);
    if queued.saturating_add(cases) > admission.max_queued_jobs {
        return Ok(Some(Full::Queue {
            queued,
            max: admission.max_queued_jobs,
        }));
    }
    if in_flight >= admission.max_batches_in_flight {
        return Ok(Some(Full::Batches {
            max: admission.max_batches_in_flight,
        }));
    }
    Ok(None)
}

/// The counter `name`, locked until the transaction ends.
async fn counter(tx: &impl GenericClient, name: &str) -> Result<u64, PgError> {
    let stmt = tx
        .prepare_cached("SELECT value FROM counters WHERE name = $1 FOR UPDATE")
        .await?;
    let value: i64 = tx.query_one(&stmt, &[&name]).await?.try_get(0)?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Cases gathered for one INSERT, column by column, as `unnest` takes them.
#[derive(Default)]
struct Chunk {
    ids: Vec<JobId>,
    indexes: Vec<i32>,
    names: Vec<String>,
    groups: Vec<Option<String>>,
    runtimes: Vec<String>,
    codes: Vec<Vec<u8>>,
    files: Vec<String>,
    stdins: Vec<Vec<u8>>,
    args: Vec<String>,
    limits: Vec<String>,
    expected: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

impl Chunk {
    /// Adds a case; true once the chunk is full enough to be inserted.
    fn add(&mut self, id: JobId, index: i32, case: CaseSpec) -> Result<bool, PgError> {
        let files = to_json(&case.files)?;
        // '' runs the suite's code: a case's own code is never empty.
        let code = case.code.map(|c| c.0).unwrap_or_default();
        let expected = case.expected_output.map(|e| e.0);
        self.bytes +=
            code.len() + files.len() + case.stdin.len() + expected.as_ref().map_or(0, Vec::len);
        self.ids.push(id);
        self.indexes.push(index);
        self.names.push(case.name);
        self.groups.push(case.group);
        self.runtimes.push(case.runtime);
        self.codes.push(code);
        self.files.push(files);
        self.stdins.push(case.stdin.0);
        self.args.push(to_json(&case.args)?);
        self.limits.push(to_json(&case.limits)?);
        self.expected.push(expected);
        Ok(self.ids.len() >= CHUNK_CASES || self.bytes >= CHUNK_BYTES)
    }

    /// Inserts the cases gathered, if any, and empties the chunk.
    async fn insert(
        &mut self,
        tx: &impl GenericClient,
        batch: BatchId,
        suite: &SuiteSpec,
        admission: &Admission,
        now: i64,
    ) -> Result<(), PgError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        // A case that is to be reported on carries the URL itself, so its end writes its
        // outbox row exactly as a job's does.
        let case_callback = suite
            .callback_url
            .as_deref()
            .filter(|_| suite.callback_each_case);
        let stmt = tx
            .prepare_cached(
                "INSERT INTO jobs (id, case_index, case_name, case_group, runtime, code, files,
                                   stdin, args, limits, expected_output, max_attempts,
                                   created_at, batch_id, callback_url, tenant, callback_shape)
                 SELECT c.id, c.case_index, c.case_name, c.case_group, c.runtime, c.code,
                        c.files::json, c.stdin, c.args::json, c.limits::json,
                        c.expected_output, $12, $13, $14, $15, $16, $17
                 FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::text[],
                             $6::bytea[], $7::text[], $8::bytea[], $9::text[], $10::text[],
                             $11::bytea[])
                      AS c (id, case_index, case_name, case_group, runtime, code, files, stdin,
                            args, limits, expected_output)",
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 17] = [
            &self.ids,
            &self.indexes,
            &self.names,
            &self.groups,
            &self.runtimes,
            &self.codes,
            &self.files,
            &self.stdins,
            &self.args,
            &self.limits,
            &self.expected,
            &sql_i32(suite.max_attempts)?,
            &now,
            &batch,
            &case_callback,
            &admission.tenant,
            &suite.callback_shape.as_str(),
        ];
        tx.execute(&stmt, &params).await?;
        *self = Chunk::default();
        Ok(())
    }
}

/// The batch an earlier submit of this tenant stored under the suite's idempotency key, if
/// any: replayed if it is this suite, case by case, the key reused if not.
async fn same_key(
    tx: &impl GenericClient,
    suite: &SuiteSpec,
    count: i32,
    cases: &mut Cases,
    admission: &Admission,
) -> Result<Option<BatchSubmitted>, PgError> {
    let Some(key) = &suite.idempotency_key else {
        return Ok(None);
    };
    // json keeps the text kiln wrote, as SQLite's TEXT does, so the text compares the suite.
    let row = tx
        .query_opt(
            "SELECT id,
                    runtime = $3 AND code = $4 AND files::text = $5 AND limits::text = $6
                    AND compare = $7 AND cases = $8
                    AND callback_url IS NOT DISTINCT FROM $9 AND callback_each_case = $10
                    AND pass_at_k::text = $11 AND callback_shape = $12
             FROM batches WHERE coalesce(tenant, '') = coalesce($2, '') AND idempotency_key = $1",
            &[
                key,
                &admission.tenant,
                &suite.runtime.as_deref().unwrap_or_default(),
                &stored_code(suite.code.as_ref()),
                &to_json(&suite.files)?,
                &to_json(&suite.limits)?,
                &suite.compare.as_str(),
                &count,
                &suite.callback_url,
                &suite.callback_each_case,
                &to_json(&suite.pass_at_k)?,
                &suite.callback_shape.as_str(),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: BatchId = row.try_get(0)?;
    let same = row.try_get::<_, bool>(1)? && same_cases(tx, id, cases).await?;
    Ok(Some(if same {
        BatchSubmitted::Replayed(id)
    } else {
        BatchSubmitted::KeyReused(id)
    }))
}

/// True if batch `id` stored exactly the cases `cases` gives, in order. The stored cases are
/// read a page at a time, as the given ones arrive.
async fn same_cases(
    tx: &impl GenericClient,
    id: BatchId,
    cases: &mut Cases,
) -> Result<bool, PgError> {
    let stmt = tx
        .prepare_cached(
            "SELECT case_index, case_name, stdin, args::text, limits::text, expected_output,
                    case_group, runtime, code, files::text
             FROM jobs WHERE batch_id = $1 AND case_index > $2 ORDER BY case_index LIMIT 100",
        )
        .await?;
    let mut after = -1i32;
    let mut page = Vec::new().into_iter();
    while let Some(case) = cases.recv().await {
        let case = case.map_err(|e| PgError::Suite(e.to_string()))?;
        let row = match page.next() {
            Some(row) => row,
            None => {
                page = tx.query(&stmt, &[&id, &after]).await?.into_iter();
                let Some(row) = page.next() else {
                    return Ok(false);
                };
                row
            }
        };
        after = row.try_get(0)?;
        let same = row.try_get::<_, String>(1)? == case.name
            && row.try_get::<_, Vec<u8>>(2)? == case.stdin.0
            && row.try_get::<_, String>(3)? == to_json(&case.args)?
            && row.try_get::<_, String>(4)? == to_json(&case.limits)?
            && row.try_get::<_, Option<Vec<u8>>>(5)? == case.expected_output.map(|e| e.0)
            && row.try_get::<_, Option<String>>(6)? == case.group
            && row.try_get::<_, String>(7)? == case.runtime
            && row.try_get::<_, Vec<u8>>(8)? == case.code.map(|c| c.0).unwrap_or_default()
            && row.try_get::<_, String>(9)? == to_json(&case.files)?;
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A program's code as stored, where empty stands for "the batch's" (code is never empty).
fn stored_code(code: Option<&Content>) -> &[u8] {
    code.map_or(&[], Content::as_bytes)
}

/// The batch's code, files and comparison for a case being claimed; notes the batch's start
/// at its first claim. Only that first claim locks the batch's row: later ones find it started
/// and read it, so claims of a suite's cases do not queue behind the ends counted into it.
pub(super) async fn shared(
    tx: &impl GenericClient,
    id: BatchId,
    now: i64,
) -> Result<Shared, PgError> {
    let stmt = tx
        .prepare_cached(
            "WITH start AS (UPDATE batches SET started_at = $2
                            WHERE id = $1 AND started_at IS NULL)
             SELECT code, files, compare FROM batches WHERE id = $1",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&id, &now]).await?;
    let Json(files) = row.try_get(1)?;
    Ok(Shared {
        code: Content(row.try_get(0)?),
        files,
        compare: parse_compare(row.try_get(2)?)?,
    })
}

/// Counts `ended` more cases of the batch as ended, `passed` of them passed, in the transaction
/// that ended them. If they were its last, completes the batch: its totals, and the outbox row
/// of its callback if it asked for one; returns its `batch.completed` event, for the caller to
/// append after the cases' own.
pub(super) async fn settle(
    tx: &impl GenericClient,
    id: BatchId,
    ended: u32,
    passed: u32,
    now: i64,
) -> Result<Option<NewEvent>, PgError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE batches
             SET done = done + $2, passed = passed + $3,
                 finished_at = CASE WHEN done + $2 = cases THEN $4::bigint END
             WHERE id = $1
             RETURNING done, cases, created_at, started_at, tenant, callback_url,
                       callback_shape",
        )
        .await?;
    let (ended, passed) = (sql_i32(ended)?, sql_i32(passed)?);
    let row = tx.query_one(&stmt, &[&id, &ended, &passed, &now]).await?;
    let done: i32 = row.try_get(0)?;
    let cases: i32 = row.try_get(1)?;
    if done < cases {
        return Ok(None);
    }
    let created_at: i64 = row.try_get(2)?;
    let started_at: Option<i64> = row.try_get(3)?;
    let tenant: Option<String> = row.try_get(4)?;
    let callback_url: Option<String> = row.try_get(5)?;
    let shape: String = row.try_get(6)?;
    let verdicts = verdict_totals(tx, id).await?;
    let passed = verdicts
        .iter()
        .find(|(v, _)| *v == Verdict::Passed)
        .map_or(0, |(_, n)| *n);
    let mut data = json!({
        "cases": cases,
        "passed": passed,
        "failed": i64::from(cases) - i64::from(passed),
        "by_verdict": verdict_counts(&verdicts),
        "total_ms": now - created_at,
        "run_ms": started_at.map(|started| now - started),
    });
    if let Some(summary) = groups_summary(tx, id).await? {
        data["groups"] =
            serde_json::to_value(summary).map_err(|e| PgError::Corrupt(e.to_string()))?;
    }
    // A Judge0-shaped suite reports its cases only: a Judge0 client has no use for its own.
    if let Some(url) = callback_url.filter(|_| shape == CallbackShape::Kiln.as_str()) {
        completed_webhook(tx, id, &url, tenant.as_deref(), now).await?;
    }
    Ok(Some(NewEvent {
        job: None,
        batch: Some(id),
        tenant,
        kind: EventKind::BatchCompleted,
        attempt: None,
        data,
    }))
}

/// The outbox row for a batch that has just completed, with the exact body every attempt will
/// send: the batch as `GET /v1/batches/{id}` shows it, read back in this transaction.
async fn completed_webhook(
    tx: &impl GenericClient,
    id: BatchId,
    url: &str,
    tenant: Option<&str>,
    now: i64,
) -> Result<(), PgError> {
    let batch = batch(tx, id)
        .await?
        .ok_or_else(|| PgError::Corrupt(format!("batch {id} completed but is not there")))?;
    let event = EventKind::BatchCompleted.as_str();
    let payload = to_json(&json!({"event": event, "batch": batch}))?;
    tx.execute(
        "INSERT INTO webhooks (batch_id, event, url, payload, next_attempt_at, created_at,
                               updated_at, tenant)
         VALUES ($1, $2, $3, $4::text::json, $5, $5, $5, $6)",
        &[&id, &event, &url, &payload, &now, &tenant],
    )
    .await?;
    Ok(())
}

/// Cancels every case of the batch that has not ended, as a job's cancel would (its verdict,
/// its event, its webhook), in one statement, and counts them into the batch, which they
/// complete. The cases' rows are locked in id order, before the batch's, as every writer locks
/// them.
pub(super) async fn cancel(
    tx: &impl GenericClient,
    id: BatchId,
    now: i64,
) -> Result<BatchCancel, PgError> {
    let Some(done) = is_done(tx, id).await? else {
        return Ok(BatchCancel::NotFound);
    };
    if done {
        return Ok(BatchCancel::AlreadyDone);
    }
    // The CTE's lock returns each row as it is once locked (a case that ended meanwhile is
    // left out), so its status is the one the cancel changes.
    let rows = tx
        .query(
            "WITH unfinished AS (
                 SELECT id, status FROM jobs
                 WHERE batch_id = $1 AND status IN ('queued', 'running')
                 ORDER BY id FOR NO KEY UPDATE)
             UPDATE jobs j
             SET status = 'cancelled', outcome = 'cancelled', finished_at = $2,
                 lease_owner = NULL, lease_expires_at = NULL, verdict = 'cancelled'
             FROM unfinished u WHERE j.id = u.id
             RETURNING j.id, u.status, j.attempt, j.case_index, j.tenant, j.callback_url",
            &[&id, &now],
        )
        .await?;
    if rows.is_empty() {
        // Every case ended between the look and the lock: the batch completed meanwhile.
        return Ok(BatchCancel::AlreadyDone);
    }
    let mut cancelled = Vec::with_capacity(rows.len());
    for row in &rows {
        let job: JobId = row.try_get(0)?;
        let from = parse_status(row.try_get(1)?)?;
        let attempt = u32_of(row, 2)?;
        let index: i32 = row.try_get(3)?;
        let tenant: Option<String> = row.try_get(4)?;
        let callback_url: Option<String> = row.try_get(5)?;
        cancelled.push((index, job, from, attempt, tenant, callback_url));
    }
    // In suite order, as SQLite's store cancels them.
    cancelled.sort_by_key(|&(index, ..)| index);
    let mut running = Vec::new();
    let mut events = Vec::with_capacity(cancelled.len() + 1);
    for (_, job, from, attempt, tenant, callback_url) in cancelled {
        if let Some(url) = callback_url {
            write::job_ended(tx, job, EventKind::Cancelled, &url, now).await?;
        }
        if from == Status::Running {
            running.push((job, attempt));
        }
        events.push(write::cancelled_event(job, Some(id), tenant, from, attempt));
    }
    let ended = u32::try_from(events.len()).unwrap_or(u32::MAX);
    events.extend(settle(tx, id, ended, 0, now).await?);
    write::insert_events(tx, now, &events).await?;
    Ok(BatchCancel::Cancelled { running })
}

async fn verdict_totals(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Vec<(Verdict, u32)>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT verdict, count(*) FROM jobs
             WHERE batch_id = $1 AND verdict IS NOT NULL GROUP BY verdict",
        )
        .await?;
    let rows = client.query(&stmt, &[&id]).await?;
    rows.iter()
        .map(|r| Ok((read::parse_verdict(r.try_get(0)?)?, count_of(r, 1)?)))
        .collect()
}

async fn status_totals(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Vec<(Status, u32)>, PgError> {
    let stmt = client
        .prepare_cached("SELECT status, count(*) FROM jobs WHERE batch_id = $1 GROUP BY status")
        .await?;
    let rows = client.query(&stmt, &[&id]).await?;
    rows.iter()
        .map(|r| Ok((parse_status(r.try_get(0)?)?, count_of(r, 1)?)))
        .collect()
}

/// A `count(*)`, a bigint, as the u32 the domain counts cases in.
fn count_of(r: &Row, column: usize) -> Result<u32, PgError> {
    let n: i64 = r.try_get(column)?;
    u32::try_from(n).map_err(|_| PgError::Corrupt(format!("a count of {n} cases")))
}

pub(super) async fn batch(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Option<Batch>, PgError> {
    let stmt = client
        .prepare_cached(
            "SELECT nullif(runtime, ''), compare, done, cases, passed, created_at, started_at,
                    finished_at
             FROM batches WHERE id = $1",
        )
        .await?;
    let Some(r) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let (done, total, passed) = (u32_of(&r, 2)?, u32_of(&r, 3)?, u32_of(&r, 4)?);
    Ok(Some(Batch {
        id,
        runtime: r.try_get(0)?,
        compare: parse_compare(r.try_get(1)?)?,
        done: done == total,
        progress: Tally { done, total },
        passed,
        failed: done.saturating_sub(passed),
        by_status: status_counts(&status_totals(client, id).await?),
        by_verdict: verdict_counts(&verdict_totals(client, id).await?),
        groups: groups_summary(client, id).await?,
        created_at: r.try_get(5)?,
        started_at: r.try_get(6)?,
        finished_at: r.try_get(7)?,
    }))
}

/// The batches `who` may see, a page at a time in id order (submission order) after the
/// page's cursor.
pub(super) async fn list(
    client: &impl GenericClient,
    who: &Visibility,
    page: Page,
) -> Result<Vec<BatchSummary>, PgError> {
    let (compare, direction) = match page.order {
        Order::OldestFirst => (">", "ASC"),
        Order::NewestFirst => ("<", "DESC"),
    };
    let tenant = who.tenant();
    let mut conditions = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(cursor) = &page.cursor {
        params.push(cursor);
        conditions.push(format!("id {compare} ${}", params.len()));
    }
    if let Some(tenant) = &tenant {
        params.push(tenant);
        conditions.push(format!("tenant = ${}", params.len()));
    }
    let limit = i64::from(page.limit);
    params.push(&limit);
    let filters = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT id, nullif(runtime, ''), done, cases, passed, created_at, started_at, finished_at
         FROM batches {filters} ORDER BY id {direction} LIMIT ${}",
        params.len()
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    rows.iter()
        .map(|r| {
            let (done, total, passed) = (u32_of(r, 2)?, u32_of(r, 3)?, u32_of(r, 4)?);
            Ok(BatchSummary {
                id: r.try_get(0)?,
                runtime: r.try_get(1)?,
                done: done == total,
                progress: Tally { done, total },
                passed,
                failed: done.saturating_sub(passed),
                created_at: r.try_get(5)?,
                started_at: r.try_get(6)?,
                finished_at: r.try_get(7)?,
            })
        })
        .collect()
}

/// Whether every case of the batch has ended; `None` if there is no such batch.
pub(super) async fn is_done(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Option<bool>, PgError> {
    let stmt = client
        .prepare_cached("SELECT done = cases FROM batches WHERE id = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

const CASE_COLUMNS: &str =
    "case_index, case_name, id, status, outcome, verdict, verdict_detail, wall_ms, case_group";

/// Cases in suite order after position `after` (-1: from the start), at most `limit`; `None` if
/// there is no such batch.
pub(super) async fn cases(
    client: &impl GenericClient,
    id: BatchId,
    after: i64,
    limit: u32,
) -> Result<Option<Vec<Case>>, PgError> {
    if is_done(client, id).await?.is_none() {
        return Ok(None);
    }
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {CASE_COLUMNS} FROM jobs
             WHERE batch_id = $1 AND case_index > $2::bigint ORDER BY case_index LIMIT $3"
        ))
        .await?;
    let rows = client
        .query(&stmt, &[&id, &after, &i64::from(limit)])
        .await?;
    rows.iter()
        .map(case_row)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Every case with excerpts of its expected output, stdout and stderr (at most `excerpt`
/// characters each), for a report.
pub(super) async fn report(
    client: &impl GenericClient,
    id: BatchId,
    excerpt: u32,
) -> Result<Option<(Batch, Vec<CaseReport>)>, PgError> {
    let Some(batch) = batch(client, id).await? else {
        return Ok(None);
    };
    // Enough bytes for `excerpt` characters, whatever their width in UTF-8; whether each
    // whole value is UTF-8 decides, as SQLite's TEXT or BLOB does, what an excerpt counts.
    let prefix = i32::try_from(u64::from(excerpt) * 4).unwrap_or(i32::MAX);
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {CASE_COLUMNS},
                    substring(expected_output FROM 1 FOR $2), kiln_is_utf8(expected_output),
                    substring(stdout FROM 1 FOR $2), kiln_is_utf8(stdout),
                    substring(stderr FROM 1 FOR $2), kiln_is_utf8(stderr)
             FROM jobs WHERE batch_id = $1 ORDER BY case_index"
        ))
        .await?;
    let rows = client.query(&stmt, &[&id, &prefix]).await?;
    let chars = usize::try_from(excerpt).unwrap_or(usize::MAX);
    let shown = |r: &Row, column: usize| -> Result<Option<String>, PgError> {
        let bytes: Option<Vec<u8>> = r.try_get(column)?;
        let utf8: Option<bool> = r.try_get(column + 1)?;
        Ok(bytes.map(|b| shown_excerpt(&b, utf8.unwrap_or(false), chars)))
    };
    let cases = rows
        .iter()
        .map(|r| {
            Ok(CaseReport {
                case: case_row(r)?,
                expected_output: shown(r, 9)?,
                stdout: shown(r, 11)?.unwrap_or_default(),
                stderr: shown(r, 13)?.unwrap_or_default(),
            })
        })
        .collect::<Result<_, PgError>>()?;
    Ok(Some((batch, cases)))
}

/// The excerpt SQLite's `substr(value, 1, chars)` gives of a value that starts with `prefix`:
/// of text (a value that is UTF-8 throughout), `chars` characters, ending at a NUL as SQLite's
/// string functions do; of bytes, `chars` bytes. Shown as text either way, bytes that are not
/// UTF-8 as U+FFFD (a report is read by people; the job itself has the exact bytes).
fn shown_excerpt(prefix: &[u8], utf8: bool, chars: usize) -> String {
    if utf8 {
        // A character the prefix cuts short is past the first `chars`, so its replacement
        // character is never taken.
        String::from_utf8_lossy(prefix)
            .chars()
            .take_while(|&c| c != '\0')
            .take(chars)
            .collect()
    } else {
        String::from_utf8_lossy(prefix.get(..chars).unwrap_or(prefix)).into_owned()
    }
}

fn case_row(r: &Row) -> Result<Case, PgError> {
    let outcome: Option<&str> = r.try_get(4)?;
    let verdict: Option<&str> = r.try_get(5)?;
    Ok(Case {
        index: u32_of(r, 0)?,
        name: r.try_get(1)?,
        job_id: r.try_get(2)?,
        status: parse_status(r.try_get(3)?)?,
        outcome: outcome.map(read::parse_outcome).transpose()?,
        verdict: verdict.map(read::parse_verdict).transpose()?,
        detail: r.try_get(6)?,
        wall_ms: read::opt_u64(r, 7)?,
        group: r.try_get(8)?,
    })
}

/// The k values the batch asked pass@k for; `None` if there is no such batch.
async fn pass_at_k_asked(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Option<Vec<u32>>, PgError> {
    let stmt = client
        .prepare_cached("SELECT pass_at_k FROM batches WHERE id = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    row.map(|r| -> Result<Vec<u32>, PgError> {
        let Json(ks) = r.try_get(0)?;
        Ok(ks)
    })
    .transpose()
}

/// The batch's groups in sum, if it names groups or asks for pass@k. The groups in name
/// order, byte by byte (`COLLATE "C"`, SQLite's order whatever the database's collation), so
/// that the means add up in the same order, to the same last bit, as on SQLite.
async fn groups_summary(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Option<GroupsSummary>, PgError> {
    let ks = pass_at_k_asked(client, id).await?.unwrap_or_default();
    let stmt = client
        .prepare_cached(
            "SELECT count(verdict), count(*) FILTER (WHERE verdict = 'passed') FROM jobs
             WHERE batch_id = $1 AND case_group IS NOT NULL
             GROUP BY case_group ORDER BY case_group COLLATE \"C\"",
        )
        .await?;
    let counts = client
        .query(&stmt, &[&id])
        .await?
        .iter()
        .map(|r| Ok((count_of(r, 0)?, count_of(r, 1)?)))
        .collect::<Result<Vec<_>, PgError>>()?;
    if counts.is_empty() && ks.is_empty() {
        return Ok(None);
    }
    Ok(Some(GroupsSummary::of(counts, &ks)))
}

/// The batch's groups in name order (byte by byte, as SQLite compares text) after `after`
/// (from the first if `None`), at most `limit`, each with its pass@k; `None` if there is no
/// such batch.
pub(super) async fn groups(
    client: &impl GenericClient,
    id: BatchId,
    after: Option<&str>,
    limit: u32,
) -> Result<Option<Vec<Group>>, PgError> {
    let Some(ks) = pass_at_k_asked(client, id).await? else {
        return Ok(None);
    };
    // PostgreSQL's text cannot hold a NUL, which no group name holds either (names refuse
    // control characters): cut at its first NUL, a cursor has every name after it that it had
    // whole, byte by byte.
    let after = after.map(|after| after.split('\0').next().unwrap_or_default());
    let stmt = client
        .prepare_cached(
            "SELECT case_group, count(*), count(verdict),
                    count(*) FILTER (WHERE verdict = 'passed')
             FROM jobs
             WHERE batch_id = $1 AND case_group IS NOT NULL
               AND ($2::text IS NULL OR case_group COLLATE \"C\" > $2)
             GROUP BY case_group ORDER BY case_group COLLATE \"C\" LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&id, &after, &i64::from(limit)])
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Group::new(
                r.try_get(0)?,
                count_of(r, 1)?,
                count_of(r, 2)?,
                count_of(r, 3)?,
                &ks,
            ))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn parse_compare(s: &str) -> Result<CompareMode, PgError> {
    CompareMode::parse(s).ok_or_else(|| PgError::Corrupt(format!("unknown compare mode {s:?}")))
}

/// The batch's events (its own and its cases') with an id greater than `after`, oldest first,
/// at most `limit`; `None` if there is no such batch.
pub(super) async fn events(
    client: &impl GenericClient,
    id: BatchId,
    after: i64,
    limit: u32,
) -> Result<Option<Vec<Event>>, PgError> {
    if is_done(client, id).await?.is_none() {
        return Ok(None);
    }
    let stmt = client
        .prepare_cached(
            "SELECT id, job_id, batch_id, at, type, attempt, data, tenant FROM events
             WHERE batch_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&id, &after, &i64::from(limit)])
        .await?;
    rows.iter()
        .map(read::event_row)
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The id of the batch's `batch.completed` event, if it has completed; `None` if there is no
/// such batch.
pub(super) async fn completed_event(
    client: &impl GenericClient,
    id: BatchId,
) -> Result<Option<Option<i64>>, PgError> {
    if is_done(client, id).await?.is_none() {
        return Ok(None);
    }
    // Walks the batch's events from the newest, where the completion almost always is.
    let stmt = client
        .prepare_cached(
            "SELECT id FROM events WHERE batch_id = $1 AND type = $2 ORDER BY id DESC LIMIT 1",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&id, &EventKind::BatchCompleted.as_str()])
        .await?;
    Ok(Some(row.map(|r| r.try_get(0)).transpose()?))
}
