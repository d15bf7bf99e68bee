//! Test suites: many cases, each a run judged against its expected output. A suite gives a
//! program (runtime, code, files) its cases run unless they bring their own, so it is one
//! submission tried on many inputs (a judge), or many programs each with its tests (evaluating
//! generated code, where cases name the `group`, the problem, they are samples of).
//! This module owns the suite once validated ([`BatchSpec`]; the checks are in
//! [`super::validate`]), the batch as read back with its totals, and its groups with their
//! pass@k ([`pass_at_k`]). Plain data like the job: the verdicts and the output comparison live
//! in [`super::verdict`], the SQL in the store.

use std::collections::BTreeMap;

use serde::Serialize;

use super::content::Content;
use super::validate::LimitsRequest;
use super::verdict::{CompareMode, Verdict};
use super::{BatchId, CallbackShape, JobId, Limits, Outcome, Status};

/// A validated suite, ready to be stored in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    pub suite: SuiteSpec,
    pub cases: Vec<CaseSpec>,
}

/// A validated suite's own fields: all of it but its cases, which a suite sent as a stream
/// holds apart from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteSpec {
    /// The program of every case that does not bring its own; either may be absent when every
    /// case gives it.
    pub runtime: Option<String>,
    pub code: Option<Content>,
    pub files: BTreeMap<String, Content>,
    /// The suite's limits as submitted, kept to answer a replayed submission.
    pub limits: LimitsRequest,
    pub compare: CompareMode,
    /// The `k` of each pass@k reported, as asked.
    pub pass_at_k: Vec<u32>,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
    /// Each case's end is reported to `callback_url` too; never set without it.
    pub callback_each_case: bool,
    /// The shape of every call to `callback_url`. A Judge0-shaped suite's calls are its cases'
    /// only: a Judge0 client has no use for the suite's own.
    pub callback_shape: CallbackShape,
}

/// One case, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseSpec {
    pub name: String,
    pub group: Option<String>,
    /// The runtime the case runs: its own or the suite's.
    pub runtime: String,
    /// The case's own code, where it does not run the suite's.
    pub code: Option<Content>,
    /// The case's own files, added to the suite's.
    pub files: BTreeMap<String, Content>,
    pub stdin: Content,
    pub args: Vec<String>,
    pub expected_output: Option<Content>,
    /// The suite's limits with the case's overrides and the server's defaults filled in.
    pub limits: Limits,
}

/// What the store needs to judge a case when its run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseCheck {
    pub batch_id: BatchId,
    pub expected_output: Option<Content>,
    pub compare: CompareMode,
}

/// A batch as read back: where it stands and its totals.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Batch {
    #[schema(value_type = String, format = "uuid")]
    pub id: BatchId,
    /// The suite's runtime; `None` when each case names its own.
    pub runtime: Option<String>,
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
    /// The suite's groups and their pass@k, when it names groups or asks for pass@k.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupsSummary>,
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

/// Cases ended and cases in all (not the progress a running program reports of itself).
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Case {
    pub index: u32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[schema(value_type = String, format = "uuid")]
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

/// One group of a suite: its cases (samples of one problem) and how many of them passed.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Group {
    pub name: String,
    /// Its cases, those ended, and those whose verdict is `passed`.
    pub cases: u32,
    pub done: u32,
    pub passed: u32,
    /// pass@k for each `k` the suite asked, over the group's ended cases: `null` where fewer
    /// than `k` have ended (nothing to estimate from). Keyed by `k` as text, in the order asked.
    pub pass_at_k: PassAtK,
}

/// pass@k by `k`, in the order the suite asked for them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassAtK(pub Vec<(u32, Option<f64>)>);

/// pass@k by `k` as text: a number, or `null` where it cannot be estimated yet.
impl utoipa::PartialSchema for PassAtK {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .additional_properties(Some(
                ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::Number, Type::Null])),
            ))
            .into()
    }
}

impl utoipa::ToSchema for PassAtK {}

impl Serialize for PassAtK {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, value) in &self.0 {
            map.serialize_entry(&k.to_string(), value)?;
        }
        map.end()
    }
}

/// A suite's groups in sum: how many there are, and each pass@k's mean over them (`null`
/// while any group has ended fewer than `k` cases, as the estimator is then undefined for it).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GroupsSummary {
    pub groups: u32,
    pub pass_at_k: PassAtK,
}

impl Group {
    /// A group with its pass@k for `ks`, from its counts.
    pub fn new(name: String, cases: u32, done: u32, passed: u32, ks: &[u32]) -> Group {
        let pass_at_k = PassAtK(
            ks.iter()
                .map(|&k| (k, pass_at_k(done, passed, k)))
                .collect(),
        );
        Group {
            name,
            cases,
            done,
            passed,
            pass_at_k,
        }
    }
}

impl GroupsSummary {
    /// The mean of each pass@k over `groups`, each given as (ended cases, passed).
    pub fn of(groups: impl IntoIterator<Item = (u32, u32)>, ks: &[u32]) -> GroupsSummary {
        let counts: Vec<(u32, u32)> = groups.into_iter().collect();
        let mean = |k: u32| {
            let values: Option<Vec<f64>> = counts
                .iter()
                .map(|&(done, passed)| pass_at_k(done, passed, k))
                .collect();
            values
                .filter(|v| !v.is_empty())
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        };
        GroupsSummary {
            groups: u32::try_from(counts.len()).unwrap_or(u32::MAX),
            pass_at_k: PassAtK(ks.iter().map(|&k| (k, mean(k))).collect()),
        }
    }
}

/// The unbiased estimator of pass@k (Chen et al. 2021, "Evaluating Large Language Models
/// Trained on Code"): of `n` samples of which `c` passed, the chance that at least one of `k`
/// drawn without replacement passes, 1 − C(n−c, k) / C(n, k). Computed as the product
/// 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which never forms a binomial coefficient and so stays exact
/// in floating point for any `n`. `None` for `k > n`, where it is undefined.
pub fn pass_at_k(n: u32, c: u32, k: u32) -> Option<f64> {
    if k == 0 || k > n {
        return None;
    }
    let c = c.min(n);
    if n - c < k {
        return Some(1.0);
    }
    let k = f64::from(k);
    let missed: f64 = (n - c + 1..=n).map(|i| 1.0 - k / f64::from(i)).product();
    Some(1.0 - missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C(n, k) in exact integers, for checking the estimator by its definition.
    fn choose(n: u64, k: u64) -> u128 {
        if k > n {
            return 0;
        }
        (0..k).fold(1u128, |acc, i| acc * u128::from(n - i) / u128::from(i + 1))
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimator_worked_by_hand() {
        // 1 sample that passed: certain; that failed: never.
        assert_eq!(pass_at_k(1, 1, 1), Some(1.0));
        assert_eq!(pass_at_k(1, 0, 1), Some(0.0));
        // pass@1 is the fraction passed.
        assert!((pass_at_k(10, 3, 1).unwrap_or(0.0) - 0.3).abs() < 1e-12);
        // n = 5, c = 2, k = 2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!((pass_at_k(5, 2, 2).unwrap_or(0.0) - 0.7).abs() < 1e-12);
        // Fewer failures than k: some drawn sample must pass.
        assert_eq!(pass_at_k(5, 4, 2), Some(1.0));
        // k > n is undefined, k = n is "did any pass".
        assert_eq!(pass_at_k(3, 3, 4), None);
        assert_eq!(pass_at_k(3, 1, 3), Some(1.0));
        assert_eq!(pass_at_k(3, 0, 3), Some(0.0));
    }

    #[test]
    fn pass_at_k_matches_the_binomial_definition_and_stays_exact_for_large_n() {
        for n in 1..=40u32 {
            for c in 0..=n {
                for k in 1..=n {
                    let exact = 1.0
                        - choose(u64::from(n - c), u64::from(k)) as f64
                            / choose(u64::from(n), u64::from(k)) as f64;
                    let estimate = pass_at_k(n, c, k).unwrap_or(f64::NAN);
                    assert!((estimate - exact).abs() < 1e-9, "n={n} c={c} k={k}");
                }
            }
        }
        // Where C(n, k) overflows every float, the product still answers.
        let large = pass_at_k(100_000, 1_000, 100).unwrap_or(f64::NAN);
        assert!(large > 0.63 && large < 0.64, "{large}");
    }

    #[test]
    fn a_summary_averages_over_groups_and_is_undefined_while_one_group_is_too_small() {
        let summary = GroupsSummary::of([(2, 1), (2, 2), (1, 0)], &[1, 2]);
        assert_eq!(summary.groups, 3);
        let PassAtK(values) = &summary.pass_at_k;
        assert_eq!(values[0].0, 1);
        assert!((values[0].1.unwrap_or(0.0) - 0.5).abs() < 1e-12);
        assert_eq!(values[1], (2, None), "the third group has one sample");
        assert_eq!(
            serde_json::to_value(&summary).ok(),
            Some(serde_json::json!({"groups": 3, "pass_at_k": {"1": 0.5, "2": null}}))
        );
    }
}
