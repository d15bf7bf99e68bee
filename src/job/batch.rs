//! Test suites: one program run against many cases, each judged against its expected output.
//! This module owns the suite once validated ([`BatchSpec`]; the checks are in
//! [`super::validate`]) and the batch as read back, with its totals. Plain data like the job: the
//! verdicts and the output comparison live in [`super::verdict`], the SQL in the store.

use std::collections::BTreeMap;

use serde::Serialize;

use super::validate::LimitsRequest;
use super::verdict::{CompareMode, Verdict};
use super::{BatchId, JobId, Limits, Outcome, Status};

/// A validated suite, ready to be stored in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    pub runtime: String,
    pub code: String,
    pub files: BTreeMap<String, String>,
    /// The suite's limits as submitted, kept to answer a replayed submission.
    pub limits: LimitsRequest,
    pub compare: CompareMode,
    pub max_attempts: u32,
    pub cases: Vec<CaseSpec>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    /// Each case's end is reported to `callback_url` too; never set without it.
    pub callback_each_case: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseSpec {
    pub name: String,
    pub stdin: String,
    pub args: Vec<String>,
    pub expected_output: Option<String>,
    /// The suite's limits with the case's overrides and the server's defaults filled in.
    pub limits: Limits,
}

/// What the store needs to judge a case when its run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseCheck {
    pub batch_id: BatchId,
    pub expected_output: Option<String>,
    pub compare: CompareMode,
}

/// A batch as read back: where it stands and its totals.
#[derive(Clone, Debug, Serialize)]
pub struct Batch {
    pub id: BatchId,
    pub runtime: String,
    pub compare: CompareMode,
    /// True once every case is terminal.
    pub done: bool,
    /// How many cases have ended, of how many.
    pub progress: Tally,
    /// Cases whose verdict is `passed`, and those that ended otherwise.
    pub passed: u32,
    pub failed: u32,
    /// Cases by status; every status is listed, with 0 where none.
    pub by_status: BTreeMap<&'static str, u32>,
    /// Finished cases by verdict; every verdict is listed, with 0 where none.
    pub by_verdict: BTreeMap<&'static str, u32>,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    pub finished_at: Option<i64>,
}

/// Cases ended and cases in all. Not a job's [`super::Progress`], which is what a running
/// program reports of itself.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tally {
    pub done: u32,
    pub total: u32,
}

/// Every status with its count, 0 where none: the shape of `by_status`.
pub fn status_counts(statuses: &[(Status, u32)]) -> BTreeMap<&'static str, u32> {
    let mut counts: BTreeMap<&'static str, u32> =
        Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for (status, n) in statuses {
        counts.insert(status.as_str(), *n);
    }
    counts
}

/// Every verdict with its count, 0 where none: the shape of `by_verdict` and of the totals in a
/// `batch.completed` event.
pub fn verdict_counts(verdicts: &[(Verdict, u32)]) -> BTreeMap<&'static str, u32> {
    let mut counts: BTreeMap<&'static str, u32> =
        Verdict::ALL.iter().map(|v| (v.as_str(), 0)).collect();
    for (verdict, n) in verdicts {
        counts.insert(verdict.as_str(), *n);
    }
    counts
}

/// One case in a listing.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub index: u32,
    pub name: String,
    pub job_id: JobId,
    pub status: Status,
    pub outcome: Option<Outcome>,
    pub verdict: Option<Verdict>,
    /// Why, in a line: the first difference for a wrong answer, else the exit code, limit, error.
    pub detail: Option<String>,
    pub wall_ms: Option<u64>,
}

/// A case with the excerpts a report shows: what was expected and what came out.
#[derive(Clone, Debug)]
pub struct CaseReport {
    pub case: Case,
    pub expected_output: Option<String>,
    pub stdout: String,
    pub stderr: String,
}
