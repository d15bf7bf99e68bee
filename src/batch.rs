//! Test suites: one program run against many cases, each judged against its expected output. This
//! module owns what a suite submission looks like ([`BatchRequest`]), its validation into a
//! [`BatchSpec`] (every case checked before anything is stored, so a suite is accepted whole or
//! not at all), and the batch as read back. Plain data like [`crate::job`]: the verdicts and the
//! output comparison live in [`crate::verdict`], the SQL in the store.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::Policy;
use crate::job::{
    JobId, JobRequest, JobSpec, Limits, LimitsRequest, Outcome, Rejection, Status, check_input,
    check_size, resolve_limits,
};
use crate::names::{self, shown};
use crate::verdict::{CompareMode, Verdict};

/// Batch ids are UUIDv7, like job ids.
pub type BatchId = uuid::Uuid;

/// The longest case name accepted.
const MAX_NAME_BYTES: usize = 200;

/// A suite as decoded from the wire, before validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub runtime: String,
    pub code: String,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Defaults for every case; a case's own limits override them one by one.
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub compare: CompareMode,
    /// Where to POST the batch when its last case ends (see [`crate::webhook`]).
    pub callback_url: Option<String>,
    /// Also POST each case's end to `callback_url`, as a job's end is.
    #[serde(default)]
    pub callback_each_case: bool,
    pub cases: Vec<CaseRequest>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// Unique within the suite; `case N` (counting from 1) if left out.
    pub name: Option<String>,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// What stdout must be; without it a case passes when the program exits 0.
    pub expected_output: Option<String>,
    #[serde(default)]
    pub limits: LimitsRequest,
}

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

impl BatchSpec {
    /// Checks a suite against the deployment's policy. The shared part (runtime, code, files,
    /// suite limits) is checked once with the same rules as a job; then each case, and a refusal
    /// names the case. More cases than `policy.max_batch_cases` is `TooLarge` (413).
    pub fn validate(
        request: BatchRequest,
        idempotency_key: Option<String>,
        policy: &Policy,
        source_file_of: impl Fn(&str) -> Option<String>,
    ) -> Result<BatchSpec, Rejection> {
        if request.cases.len() > policy.max_batch_cases {
            return Err(Rejection::TooLarge(format!(
                "{} cases given, at most {} allowed",
                request.cases.len(),
                policy.max_batch_cases
            )));
        }
        if request.cases.is_empty() {
            return Err(Rejection::Invalid("cases must not be empty".into()));
        }
        if request.callback_each_case && request.callback_url.is_none() {
            return Err(Rejection::Invalid(
                "callback_each_case needs a callback_url to call".into(),
            ));
        }
        let shared = JobSpec::validate(
            JobRequest {
                runtime: request.runtime,
                code: request.code,
                stdin: String::new(),
                args: Vec::new(),
                files: request.files,
                limits: request.limits,
                priority: 0,
                max_attempts: None,
                // Checked by the same rules as a job's.
                callback_url: request.callback_url,
            },
            idempotency_key,
            policy,
            source_file_of,
        )?;
        let mut taken = HashSet::with_capacity(request.cases.len());
        let mut look_alikes = names::LookAlikes::with_capacity(request.cases.len());
        let mut cases = Vec::with_capacity(request.cases.len());
        for (index, case) in request.cases.into_iter().enumerate() {
            let name = case.name.unwrap_or_else(|| format!("case {}", index + 1));
            let in_case = |rejection: Rejection| {
                let label = format!("case {} ({})", index + 1, shown(&name));
                match rejection {
                    Rejection::TooLarge(m) => Rejection::TooLarge(format!("{label}: {m}")),
                    Rejection::Invalid(m) => Rejection::Invalid(format!("{label}: {m}")),
                }
            };
            check_name(&name).map_err(in_case)?;
            if !taken.insert(name.clone()) {
                return Err(in_case(Rejection::Invalid(
                    "another case has the same name".into(),
                )));
            }
            if let Some(other) = look_alikes.check(&name) {
                return Err(in_case(Rejection::Invalid(format!(
                    "the name looks like another case's, {}: use names a reader can tell apart",
                    shown(other)
                ))));
            }
            check_input(&case.stdin, &case.args, policy).map_err(in_case)?;
            if let Some(expected) = &case.expected_output {
                let max = usize::try_from(policy.max_limits.output_bytes).unwrap_or(usize::MAX);
                check_size("expected_output", expected.len(), max).map_err(in_case)?;
            }
            let limits =
                resolve_limits(overlay(case.limits, request.limits), policy).map_err(in_case)?;
            cases.push(CaseSpec {
                name,
                stdin: case.stdin,
                args: case.args,
                expected_output: case.expected_output,
                limits,
            });
        }
        Ok(BatchSpec {
            runtime: shared.runtime,
            code: shared.code,
            files: shared.files,
            limits: request.limits,
            compare: request.compare,
            max_attempts: shared.max_attempts,
            cases,
            idempotency_key: shared.idempotency_key,
            callback_url: shared.callback_url,
            callback_each_case: request.callback_each_case,
        })
    }
}

fn check_name(name: &str) -> Result<(), Rejection> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Rejection::Invalid(format!(
            "name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if let Some(why) = names::hidden_character(name) {
        return Err(Rejection::Invalid(format!("name {why}")));
    }
    Ok(())
}

/// The case's own limits where it gives them, the suite's elsewhere.
fn overlay(case: LimitsRequest, suite: LimitsRequest) -> LimitsRequest {
    LimitsRequest {
        wall_ms: case.wall_ms.or(suite.wall_ms),
        cpu_ms: case.cpu_ms.or(suite.cpu_ms),
        memory_mb: case.memory_mb.or(suite.memory_mb),
        processes: case.processes.or(suite.processes),
        output_bytes: case.output_bytes.or(suite.output_bytes),
        file_bytes: case.file_bytes.or(suite.file_bytes),
    }
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
    pub progress: Progress,
    /// Cases whose verdict is `passed`, and those that ended otherwise.
    pub passed: u32,
    pub failed: u32,
    /// Cases by status; every status is listed, with 0 where none.
    pub by_status: BTreeMap<&'static str, u32>,
    /// Finished cases by verdict; every verdict is listed, with 0 where none.
    pub by_verdict: BTreeMap<&'static str, u32>,
    #[serde(serialize_with = "crate::time::serialize_ms")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::serialize_opt_ms")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "crate::time::serialize_opt_ms")]
    pub finished_at: Option<i64>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Progress {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cases: serde_json::Value) -> BatchRequest {
        serde_json::from_value(serde_json::json!({
            "runtime": "sh", "code": "cat", "limits": {"wall_ms": 2000}, "cases": cases,
        }))
        .expect("request")
    }

    fn validate(request: BatchRequest, policy: &Policy) -> Result<BatchSpec, Rejection> {
        BatchSpec::validate(request, None, policy, |runtime| {
            (runtime == "sh").then(|| "main.sh".to_owned())
        })
    }

    #[test]
    fn cases_inherit_the_suite_limits_and_may_override_them() {
        let spec = validate(
            request(serde_json::json!([
                {"name": "a"},
                {"name": "b", "limits": {"wall_ms": 500, "memory_mb": 64}},
            ])),
            &Policy::default(),
        )
        .expect("valid");
        assert_eq!(spec.cases[0].limits.wall_ms, 2000);
        assert_eq!(spec.cases[1].limits.wall_ms, 500);
        assert_eq!(spec.cases[1].limits.memory_mb, 64);
        assert_eq!(
            spec.cases[0].limits.memory_mb,
            Policy::default().default_limits.memory_mb
        );
        assert_eq!(spec.compare, CompareMode::Trim, "trim is the default");
    }

    #[test]
    fn an_invalid_case_is_named_in_the_refusal() {
        let err = validate(
            request(serde_json::json!([
                {"name": "fine"},
                {"name": "greedy", "limits": {"wall_ms": 99_999_999}},
            ])),
            &Policy::default(),
        );
        let Err(Rejection::Invalid(message)) = err else {
            panic!("{err:?}")
        };
        assert!(
            message.starts_with("case 2 (\"greedy\"): limits.wall_ms"),
            "{message}"
        );
    }

    #[test]
    fn names_default_to_the_position_and_must_be_unique() {
        let spec =
            validate(request(serde_json::json!([{}, {}])), &Policy::default()).expect("valid");
        assert_eq!(spec.cases[1].name, "case 2");
        let err = validate(
            request(serde_json::json!([{"name": "x"}, {"name": "x"}])),
            &Policy::default(),
        );
        assert!(
            matches!(&err, Err(Rejection::Invalid(m)) if m.contains("same name")),
            "{err:?}"
        );
    }

    #[test]
    fn more_cases_than_allowed_is_too_large() {
        let policy = Policy {
            max_batch_cases: 2,
            ..Policy::default()
        };
        let err = validate(request(serde_json::json!([{}, {}, {}])), &policy);
        assert!(matches!(err, Err(Rejection::TooLarge(_))), "{err:?}");
    }
}
