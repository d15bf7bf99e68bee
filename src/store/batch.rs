//! The SQL of test suites: storing a whole suite in one transaction, settling a batch as each of
//! its cases ends (in the transaction of that end), cancelling what is left, and reading batches
//! and their cases back.

use std::collections::BTreeMap;

use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;

use super::StoreError;
use super::bytes::Stored;
use super::read::{Page, collect, event_row, opt_u64, parse_outcome, parse_verdict};
use super::tenants::{self, Admission, Full, Visibility};
use super::write::{self, from_json, parse_id, parse_status, to_json};
use crate::bus::Notice;
use crate::job::batch::{
    Batch, Case, CaseReport, CaseSpec, Group, GroupsSummary, SuiteSpec, Tally, status_counts,
    verdict_counts,
};
use crate::job::content::Content;
use crate::job::verdict::{CompareMode, Verdict};
use crate::job::{BatchId, Event, EventKind, JobId, Status};

/// What storing a suite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchSubmitted {
    /// A new batch was stored, with the names and job ids of its cases in suite order.
    Created {
        id: BatchId,
        cases: Vec<(String, JobId)>,
    },
    /// The idempotency key was seen before with the same suite: this is that batch.
    Replayed(BatchId),
    /// The idempotency key was seen before with a different suite.
    KeyReused(BatchId),
    /// Not stored: its cases would overfill the queue, or too many batches are in flight.
    Full(Full),
}

/// What cancelling a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchCancel {
    /// The unfinished cases were cancelled; those that were running, with their attempt, must
    /// also be stopped.
    Cancelled {
        running: Vec<(JobId, u32)>,
    },
    AlreadyDone,
    NotFound,
}

/// What a case's run needs from its batch.
pub(super) struct Shared {
    pub code: Content,
    pub files: BTreeMap<String, Content>,
    pub compare: CompareMode,
}

/// Stores a suite of `count` cases, taken one at a time from `cases` (which must give that
/// many), or answers a replay of it: the one routine behind a suite sent whole and one sent as a
/// stream. A case that `cases` cannot give fails the whole write.
pub(super) fn submit(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    suite: &SuiteSpec,
    count: usize,
    cases: impl IntoIterator<Item = Result<CaseSpec, StoreError>>,
    admission: &Admission,
    now: i64,
) -> Result<BatchSubmitted, StoreError> {
    let files = to_json(&suite.files)?;
    let limits = to_json(&suite.limits)?;
    let pass_at_k = to_json(&suite.pass_at_k)?;
    let stored_count = i64::try_from(count).unwrap_or(i64::MAX);
    if let Some(key) = &suite.idempotency_key {
        let existing: Option<String> = conn
            .prepare_cached(
                "SELECT id FROM batches
                 WHERE coalesce(tenant, '') = coalesce(?2, '') AND idempotency_key = ?1",
            )?
            .query_row(params![key, admission.tenant], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            let json = [files.as_str(), &limits, &pass_at_k];
            let same = same_suite(conn, &id, suite, stored_count, cases, json)?;
            let id = parse_id(&id)?;
            return Ok(if same {
                BatchSubmitted::Replayed(id)
            } else {
                BatchSubmitted::KeyReused(id)
            });
        }
    }
    if let Some(full) = tenants::admit(
        conn,
        admission,
        u64::try_from(count).unwrap_or(u64::MAX),
        true,
    )? {
        return Ok(BatchSubmitted::Full(full));
    }
    let id = BatchId::now_v7();
    let batch = id.to_string();
    conn.prepare_cached(
        "INSERT INTO batches (id, runtime, code, files, limits, compare, cases, created_at,
                              idempotency_key, callback_url, callback_each_case, tenant, pass_at_k,
                              callback_shape)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        batch,
        suite.runtime.as_deref().unwrap_or_default(),
        stored_code(suite.code.as_ref()),
        files,
        limits,
        suite.compare.as_str(),
        stored_count,
        now,
        suite.idempotency_key,
        suite.callback_url,
        suite.callback_each_case,
        admission.tenant,
        pass_at_k,
        suite.callback_shape.as_str(),
    ])?;
    // A case that is to be reported on carries the URL itself, so its end writes its outbox row
    // exactly as a job's does.
    let case_callback = suite
        .callback_url
        .as_deref()
        .filter(|_| suite.callback_each_case);
    let shared = CaseColumns {
        batch_id: id,
        batch: &batch,
        max_attempts: suite.max_attempts,
        now,
        callback_url: case_callback,
        tenant: admission.tenant.as_deref(),
        callback_shape: suite.callback_shape.as_str(),
    };
    let mut stored = Vec::with_capacity(count);
    let mut cases = cases.into_iter();
    let mut chunk = Vec::with_capacity(CASES_PER_INSERT);
    loop {
        chunk.clear();
        for case in cases.by_ref().take(CASES_PER_INSERT) {
            chunk.push(case?);
        }
        if chunk.is_empty() {
            break;
        }
        insert_cases(conn, notices, &shared, &mut chunk, &mut stored)?;
    }
    if stored.len() != count {
        return Err(StoreError::Task(format!(
            "a suite of {count} cases gave {} to store",
            stored.len()
        )));
    }
    let data = json!({
        "runtime": suite.runtime,
        "compare": suite.compare,
        "cases": count,
        "pass_at_k": suite.pass_at_k,
    });
    write::insert_batch_event(conn, notices, id, now, EventKind::BatchQueued, &data)?;
    Ok(BatchSubmitted::Created { id, cases: stored })
}

/// Cases stored by one `INSERT` of their jobs and one of their events. A statement that may fail
/// halfway keeps a journal of the pages it changes, so that it can be undone alone, and each
/// index's last page is in it again at every statement: one row a statement, the journal and the
/// statement's own start and end were a fifth of the time of storing a suite of 10,000 cases.
/// Also what the writer holds of a suite at once: this many cases, with their code.
const CASES_PER_INSERT: usize = 32;

/// A case's columns that are the same for every case of the suite.
struct CaseColumns<'a> {
    batch_id: BatchId,
    batch: &'a str,
    max_attempts: u32,
    now: i64,
    callback_url: Option<&'a str>,
    tenant: Option<&'a str>,
    callback_shape: &'a str,
}

/// Stores `chunk`, the cases that follow those in `stored`, with a `job.queued` event each, and
/// adds their names and job ids to `stored`.
fn insert_cases(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    shared: &CaseColumns,
    chunk: &mut Vec<CaseSpec>,
    stored: &mut Vec<(String, JobId)>,
) -> Result<(), StoreError> {
    let jobs: Vec<JobId> = chunk.iter().map(|_| JobId::now_v7()).collect();
    let ids: Vec<String> = jobs.iter().map(JobId::to_string).collect();
    let mut json = Vec::with_capacity(chunk.len());
    for case in chunk.iter() {
        let queued = json!({"runtime": case.runtime, "priority": 0, "batch_id": shared.batch});
        json.push([
            to_json(&case.files)?,
            to_json(&case.args)?,
            to_json(&case.limits)?,
            queued.to_string(),
        ]);
    }
    let first = stored.len();
    let indexes: Vec<i64> = (first..first + chunk.len())
        .map(|index| i64::try_from(index).unwrap_or(i64::MAX))
        .collect();
    // The code column of a case that runs the batch's code.
    let no_code = Content::default();
    let queued_type = EventKind::Queued.as_str();
    let mut job_params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 17);
    let mut event_params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 6);
    for (i, case) in chunk.iter().enumerate() {
        let [files, args, limits, queued] = &json[i];
        job_params.extend_from_slice(&[
            &ids[i],
            &case.runtime,
            // '' runs the batch's code: a case's own code is never empty.
            case.code.as_ref().unwrap_or(&no_code),
            files,
            &case.stdin,
            args,
            limits,
            &shared.max_attempts,
            &shared.now,
            &shared.batch,
            &indexes[i],
            &case.name,
            &case.expected_output,
            &shared.callback_url,
            &shared.tenant,
            &case.group,
            &shared.callback_shape,
        ]);
        event_params.extend_from_slice(&[
            &ids[i],
            &shared.batch,
            &shared.now,
            &queued_type,
            queued,
            &shared.tenant,
        ]);
    }
    conn.prepare_cached(&values(
        "INSERT INTO jobs (id, runtime, code, files, stdin, args, limits, max_attempts, created_at,
                           batch_id, case_index, case_name, expected_output, callback_url, tenant,
                           case_group, callback_shape)
         VALUES ",
        17,
        chunk.len(),
    ))?
    .execute(job_params.as_slice())?;
    // The events of a queued case, written directly: its batch and tenant are known here, and
    // a queued job has no webhook due.
    conn.prepare_cached(&values(
        "INSERT INTO events (job_id, batch_id, at, type, data, tenant) VALUES ",
        6,
        chunk.len(),
    ))?
    .execute(event_params.as_slice())?;
    // The rows of one INSERT take consecutive ids: AUTOINCREMENT gives each the largest id so
    // far plus one, and this connection is the only writer.
    let last = conn.last_insert_rowid();
    let first_event = last - i64::try_from(chunk.len()).unwrap_or(i64::MAX) + 1;
    for (event_id, (job, case)) in (first_event..).zip(jobs.into_iter().zip(chunk.drain(..))) {
        notices.push(Notice {
            event_id,
            job_id: Some(job),
            batch_id: Some(shared.batch_id),
            kind: EventKind::Queued,
        });
        stored.push((case.name, job));
    }
    Ok(())
}

/// `insert` followed by `rows` groups of `columns` parameters.
fn values(insert: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    let mut sql = String::with_capacity(insert.len() + rows * (row.len() + 2));
    sql.push_str(insert);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
    }
    sql
}

/// True if the stored batch `id` is what `suite` and its `count` cases ask for, case by case.
/// `json` is the suite's files, limits and pass@k as stored.
fn same_suite(
    conn: &Connection,
    id: &str,
    suite: &SuiteSpec,
    count: i64,
    cases: impl IntoIterator<Item = Result<CaseSpec, StoreError>>,
    json: [&str; 3],
) -> Result<bool, StoreError> {
    let [files, limits, pass_at_k] = json;
    let same_batch = conn
        .prepare_cached(
            "SELECT runtime = ?2 AND code = ?3 AND files = ?4 AND limits = ?5 AND compare = ?6
                    AND cases = ?7 AND callback_url IS ?8 AND callback_each_case = ?9
                    AND pass_at_k = ?10 AND callback_shape = ?11
             FROM batches WHERE id = ?1",
        )?
        .query_row(
            params![
                id,
                suite.runtime.as_deref().unwrap_or_default(),
                stored_code(suite.code.as_ref()),
                files,
                limits,
                suite.compare.as_str(),
                count,
                suite.callback_url,
                suite.callback_each_case,
                pass_at_k,
                suite.callback_shape.as_str(),
            ],
            |r| r.get::<_, bool>(0),
        )?;
    if !same_batch {
        return Ok(false);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT case_name, stdin, args, limits, expected_output, case_group, runtime, code, files
         FROM jobs WHERE batch_id = ?1 ORDER BY case_index",
    )?;
    let mut rows = stmt.query([id])?;
    for case in cases {
        let case = case?;
        let Some(row) = rows.next()? else {
            return Ok(false);
        };
        let same = row.get::<_, String>(0)? == case.name
            && row.get::<_, Content>(1)? == case.stdin
            && row.get::<_, String>(2)? == to_json(&case.args)?
            && row.get::<_, String>(3)? == to_json(&case.limits)?
            && row.get::<_, Option<Content>>(4)? == case.expected_output
            && row.get::<_, Option<String>>(5)? == case.group
            && row.get::<_, String>(6)? == case.runtime
            && row.get::<_, Content>(7)? == case.code.clone().unwrap_or_default()
            && row.get::<_, String>(8)? == to_json(&case.files)?;
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The batch's code, files and comparison for a case being claimed (the case runs the code
/// unless it brings its own, and adds its own files to the files); notes the batch's start at
/// its first claim.
pub(super) fn shared(conn: &Connection, id: BatchId, now: i64) -> Result<Shared, StoreError> {
    let (code, files, compare): (Content, String, String) = conn
        .prepare_cached(
            "UPDATE batches SET started_at = coalesce(started_at, ?2) WHERE id = ?1
             RETURNING code, files, compare",
        )?
        .query_row(params![id.to_string(), now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(Shared {
        code,
        files: from_json(&files)?,
        compare: parse_compare(&compare)?,
    })
}

/// Counts a case's end into its batch; the end of the last case completes the batch, with a
/// `batch.completed` event holding the totals. Runs in the transaction that ended the case.
pub(super) fn settle_case(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    batch_id: &str,
    verdict: Verdict,
    now: i64,
) -> Result<(), StoreError> {
    let (done, cases, created_at, started_at): (i64, i64, i64, Option<i64>) = conn
        .prepare_cached(
            "UPDATE batches
             SET done = done + 1, passed = passed + ?2,
                 finished_at = CASE WHEN done + 1 = cases THEN ?3 END
             WHERE id = ?1
             RETURNING done, cases, created_at, started_at",
        )?
        .query_row(params![batch_id, verdict == Verdict::Passed, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    if done < cases {
        return Ok(());
    }
    let verdicts = verdict_totals(conn, batch_id)?;
    let passed = verdicts
        .iter()
        .find(|(v, _)| *v == Verdict::Passed)
        .map_or(0, |(_, n)| *n);
    let mut data = json!({
        "cases": cases,
        "passed": passed,
        "failed": cases - i64::from(passed),
        "by_verdict": verdict_counts(&verdicts),
        "total_ms": now - created_at,
        "run_ms": started_at.map(|started| now - started),
    });
    if let Some(summary) = groups_summary(conn, batch_id)? {
        data["groups"] =
            serde_json::to_value(summary).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    }
    let id = parse_id(batch_id)?;
    write::insert_batch_event(conn, notices, id, now, EventKind::BatchCompleted, &data)?;
    super::webhooks::batch_completed(conn, id, now)
}

/// Cancels every case of the batch that has not ended, each as a job cancel would (its event, its
/// verdict), so the last one completes the batch.
pub(super) fn cancel(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    id: BatchId,
    now: i64,
) -> Result<BatchCancel, StoreError> {
    let found: Option<(i64, i64)> = conn
        .prepare_cached("SELECT done, cases FROM batches WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((done, cases)) = found else {
        return Ok(BatchCancel::NotFound);
    };
    if done == cases {
        return Ok(BatchCancel::AlreadyDone);
    }
    let unfinished: Vec<String> = {
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM jobs
             WHERE batch_id = ?1 AND status IN ('queued', 'running') ORDER BY case_index",
        )?;
        stmt.query_map([id.to_string()], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut running = Vec::new();
    for job in unfinished {
        let job = parse_id(&job)?;
        if let write::CancelResult::Cancelled {
            running_attempt: Some(attempt),
        } = write::cancel(conn, notices, job, now)?
        {
            running.push((job, attempt));
        }
    }
    Ok(BatchCancel::Cancelled { running })
}

fn verdict_totals(conn: &Connection, batch_id: &str) -> Result<Vec<(Verdict, u32)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT verdict, count(*) FROM jobs
         WHERE batch_id = ?1 AND verdict IS NOT NULL GROUP BY verdict",
    )?;
    let rows = stmt.query_map([batch_id], |r| {
        let verdict: String = r.get(0)?;
        let n: u32 = r.get(1)?;
        Ok(parse_verdict(&verdict).map(|v| (v, n)))
    })?;
    collect(rows)
}

fn status_totals(conn: &Connection, batch_id: &str) -> Result<Vec<(Status, u32)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT status, count(*) FROM jobs WHERE batch_id = ?1 GROUP BY status")?;
    let rows = stmt.query_map([batch_id], |r| {
        let status: String = r.get(0)?;
        let n: u32 = r.get(1)?;
        Ok(parse_status(&status).map(|s| (s, n)))
    })?;
    collect(rows)
}

pub(super) fn batch(conn: &Connection, id: BatchId) -> Result<Option<Batch>, StoreError> {
    let key = id.to_string();
    let row = conn
        .prepare_cached(
            "SELECT nullif(runtime, ''), compare, done, cases, passed, created_at, started_at,
                    finished_at
             FROM batches WHERE id = ?1",
        )?
        .query_row([&key], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                (
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, u32>(4)?,
                ),
                (r.get(5)?, r.get(6)?, r.get(7)?),
            ))
        })
        .optional()?;
    let Some((runtime, compare, (done, total, passed), (created_at, started_at, finished_at))) =
        row
    else {
        return Ok(None);
    };
    Ok(Some(Batch {
        id,
        runtime,
        compare: parse_compare(&compare)?,
        done: done == total,
        progress: Tally { done, total },
        passed,
        failed: done.saturating_sub(passed),
        by_status: status_counts(&status_totals(conn, &key)?),
        by_verdict: verdict_counts(&verdict_totals(conn, &key)?),
        groups: groups_summary(conn, &key)?,
        created_at,
        started_at,
        finished_at,
    }))
}

/// A batch in a listing: how far along it is, without its per-status and per-verdict totals.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BatchSummary {
    #[schema(value_type = String, format = "uuid")]
    pub id: BatchId,
    /// The suite's runtime; `None` when each case names its own.
    pub runtime: Option<String>,
    pub done: bool,
    pub progress: Tally,
    pub passed: u32,
    pub failed: u32,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
}

pub(super) fn list(
    conn: &Connection,
    who: &Visibility,
    page: Page,
) -> Result<Vec<BatchSummary>, StoreError> {
    let (compare, direction, cursor) = page.sql();
    let mut sql = format!(
        "SELECT id, nullif(runtime, ''), done, cases, passed, created_at, started_at, finished_at
         FROM batches WHERE id {compare} ?1"
    );
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&cursor];
    if let Visibility::Tenant(tenant) = who {
        args.push(tenant);
        sql.push_str(&format!(" AND tenant = ?{}", args.len()));
    }
    args.push(&page.limit);
    sql.push_str(&format!(" ORDER BY id {direction} LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(&*args, |r| {
        let id: String = r.get(0)?;
        let (done, total, passed): (u32, u32, u32) = (r.get(2)?, r.get(3)?, r.get(4)?);
        Ok((
            id,
            r.get(1)?,
            (done, total, passed),
            (r.get(5)?, r.get(6)?, r.get(7)?),
        ))
    })?;
    collect(rows.map(|row| {
        row.map(
            |(id, runtime, (done, total, passed), (created_at, started_at, finished_at))| {
                Ok(BatchSummary {
                    id: parse_id(&id)?,
                    runtime,
                    done: done == total,
                    progress: Tally { done, total },
                    passed,
                    failed: done.saturating_sub(passed),
                    created_at,
                    started_at,
                    finished_at,
                })
            },
        )
    }))
}

/// Whether every case of the batch has ended; `None` if there is no such batch.
pub(super) fn is_done(conn: &Connection, id: BatchId) -> Result<Option<bool>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT done = cases FROM batches WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?)
}

const CASE_COLUMNS: &str =
    "case_index, case_name, id, status, outcome, verdict, verdict_detail, wall_ms, case_group";

/// Cases in suite order after position `after` (-1: from the start); `None` if there is no such
/// batch.
pub(super) fn cases(
    conn: &Connection,
    id: BatchId,
    after: i64,
    limit: u32,
) -> Result<Option<Vec<Case>>, StoreError> {
    if is_done(conn, id)?.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CASE_COLUMNS} FROM jobs
         WHERE batch_id = ?1 AND case_index > ?2 ORDER BY case_index LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![id.to_string(), after, limit], |r| Ok(case_row(r)))?;
    collect(rows).map(Some)
}

/// Every case with excerpts of its expected output, stdout and stderr (at most `excerpt`
/// characters each), for a report.
pub(super) fn report(
    conn: &Connection,
    id: BatchId,
    excerpt: u32,
) -> Result<Option<(Batch, Vec<CaseReport>)>, StoreError> {
    let Some(batch) = batch(conn, id)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CASE_COLUMNS}, substr(expected_output, 1, ?2), substr(stdout, 1, ?2),
                substr(stderr, 1, ?2)
         FROM jobs WHERE batch_id = ?1 ORDER BY case_index"
    ))?;
    let rows = stmt.query_map(params![id.to_string(), excerpt], |r| {
        Ok(case_row(r).and_then(|case| {
            Ok(CaseReport {
                case,
                expected_output: r.get::<_, Option<Content>>(9)?.map(|e| shown_excerpt(&e)),
                stdout: shown_excerpt(&r.get(10)?),
                stderr: shown_excerpt(&r.get(11)?),
            })
        }))
    })?;
    Ok(Some((batch, collect(rows)?)))
}

/// An excerpt as a report shows it: text, bytes that are not UTF-8 shown as U+FFFD (a report
/// is read by people; the job itself has the exact bytes).
fn shown_excerpt(stored: &Content) -> String {
    String::from_utf8_lossy(stored.as_bytes()).into_owned()
}

/// A program's code as stored, where `''` stands for "the batch's" (code is never empty).
fn stored_code(code: Option<&Content>) -> Stored<'_> {
    Stored(code.map_or(&[], Content::as_bytes))
}

fn case_row(r: &Row) -> Result<Case, StoreError> {
    let job_id: String = r.get(2)?;
    let status: String = r.get(3)?;
    let outcome: Option<String> = r.get(4)?;
    let verdict: Option<String> = r.get(5)?;
    Ok(Case {
        index: r.get(0)?,
        name: r.get(1)?,
        job_id: parse_id(&job_id)?,
        status: parse_status(&status)?,
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        verdict: verdict.as_deref().map(parse_verdict).transpose()?,
        detail: r.get(6)?,
        wall_ms: opt_u64(r, 7)?,
        group: r.get(8)?,
    })
}

/// The k values the batch asked pass@k for; `None` if there is no such batch.
fn pass_at_k_asked(conn: &Connection, batch_id: &str) -> Result<Option<Vec<u32>>, StoreError> {
    let asked: Option<String> = conn
        .prepare_cached("SELECT pass_at_k FROM batches WHERE id = ?1")?
        .query_row([batch_id], |r| r.get(0))
        .optional()?;
    asked.as_deref().map(from_json).transpose()
}

/// The batch's groups in sum, if it names groups or asks for pass@k: one pass over its cases.
fn groups_summary(conn: &Connection, batch_id: &str) -> Result<Option<GroupsSummary>, StoreError> {
    let ks = pass_at_k_asked(conn, batch_id)?.unwrap_or_default();
    let mut stmt = conn.prepare_cached(
        "SELECT count(verdict), count(*) FILTER (WHERE verdict = 'passed') FROM jobs
         WHERE batch_id = ?1 AND case_group IS NOT NULL GROUP BY case_group",
    )?;
    let counts = stmt
        .query_map([batch_id], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if counts.is_empty() && ks.is_empty() {
        return Ok(None);
    }
    Ok(Some(GroupsSummary::of(counts, &ks)))
}

/// The batch's groups in name order after `after` (from the first if `None`), at most `limit`,
/// each with its pass@k; `None` if there is no such batch.
pub(super) fn groups(
    conn: &Connection,
    id: BatchId,
    after: Option<&str>,
    limit: u32,
) -> Result<Option<Vec<Group>>, StoreError> {
    let key = id.to_string();
    let Some(ks) = pass_at_k_asked(conn, &key)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT case_group, count(*), count(verdict), count(*) FILTER (WHERE verdict = 'passed')
         FROM jobs
         WHERE batch_id = ?1 AND case_group IS NOT NULL AND (?2 IS NULL OR case_group > ?2)
         GROUP BY case_group ORDER BY case_group LIMIT ?3",
    )?;
    let groups = stmt
        .query_map(params![key, after, limit], |r| {
            Ok(Group::new(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, &ks))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(groups))
}

fn parse_compare(s: &str) -> Result<CompareMode, StoreError> {
    CompareMode::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown compare mode {s:?}")))
}

/// The batch's events (its own and its cases') with an id greater than `after`, oldest first, at
/// most `limit`; `None` if there is no such batch.
pub(super) fn events(
    conn: &Connection,
    id: BatchId,
    after: i64,
    limit: u32,
) -> Result<Option<Vec<Event>>, StoreError> {
    if is_done(conn, id)?.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, job_id, at, type, attempt, data, batch_id, tenant FROM events
         WHERE batch_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![id.to_string(), after, limit], |r| Ok(event_row(r)))?;
    collect(rows).map(Some)
}

/// The id of the batch's `batch.completed` event, if it has completed; `None` if there is no
/// such batch.
pub(super) fn completed_event(
    conn: &Connection,
    id: BatchId,
) -> Result<Option<Option<i64>>, StoreError> {
    if is_done(conn, id)?.is_none() {
        return Ok(None);
    }
    // Walks the batch's events from the newest, where the completion almost always is.
    let event = conn
        .prepare_cached(
            "SELECT id FROM events WHERE batch_id = ?1 AND type = ?2 ORDER BY id DESC LIMIT 1",
        )?
        .query_row(
            params![id.to_string(), EventKind::BatchCompleted.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Some(event))
}
