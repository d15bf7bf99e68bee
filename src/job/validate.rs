//! Validation of a submission: the requests as decoded from the wire ([`JobRequest`],
//! [`BatchRequest`]) checked against the deployment's [`Policy`] into a [`JobSpec`] or a
//! [`BatchSpec`], or refused with a [`Rejection`]. Every entry point (the v1 API, the
//! compatibility aliases, suites) applies these same rules; a suite is checked whole, every case
//! before anything is stored, so it is accepted whole or not at all.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::batch::{BatchSpec, CaseSpec};
use super::names::{LookAlikes, hidden_character, shown};
use super::policy::Policy;
use super::verdict::CompareMode;
use super::{JobSpec, Limits};

/// The longest case name accepted.
const MAX_CASE_NAME_BYTES: usize = 200;

/// Limits as a submitter states them: any may be left out and then takes the configured default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub wall_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub processes: Option<u64>,
    pub output_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
}

/// A submission as decoded from the wire, before validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub runtime: String,
    pub code: String,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub priority: i32,
    pub max_attempts: Option<u32>,
    /// Where to POST the result when the job ends (see [`crate::webhook`]).
    pub callback_url: Option<String>,
}

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

/// The longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Why a submission was refused. Each says what is wrong in the submission's own terms; how to
/// put it to a client (a status, the name of the header a key came in) is the caller's to add.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Something is bigger than the policy allows.
    #[error("{0}")]
    TooLarge(String),
    /// Something breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No runtime of this name is offered here.
    #[error("unknown runtime {}", shown(.0))]
    UnknownRuntime(String),
    /// The idempotency key is empty or longer than [`MAX_IDEMPOTENCY_KEY_BYTES`].
    #[error("the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} characters")]
    IdempotencyKey,
}

impl JobSpec {
    /// Checks a request against the deployment's policy and fills in defaults. `source_file_of`
    /// names the file a runtime's code is written to, or `None` for a runtime not offered here.
    pub fn validate(
        request: JobRequest,
        idempotency_key: Option<String>,
        policy: &Policy,
        source_file_of: impl Fn(&str) -> Option<String>,
    ) -> Result<JobSpec, Rejection> {
        let Some(source_file) = source_file_of(&request.runtime) else {
            return Err(Rejection::UnknownRuntime(request.runtime));
        };
        if request.files.contains_key(&source_file) {
            return Err(Rejection::Invalid(format!(
                "files must not contain {source_file:?}: the code is written there"
            )));
        }
        if request.code.trim().is_empty() {
            return Err(Rejection::Invalid("code must not be empty".into()));
        }
        check_size("code", request.code.len(), policy.max_code_bytes)?;
        let files_bytes: usize = request.files.iter().map(|(n, c)| n.len() + c.len()).sum();
        check_size("files", files_bytes, policy.max_files_bytes)?;
        if request.files.len() > policy.max_files {
            return Err(Rejection::TooLarge(format!(
                "{} files given, at most {} allowed",
                request.files.len(),
                policy.max_files
            )));
        }
        let mut look_alikes = LookAlikes::with_capacity(request.files.len() + 1);
        look_alikes.check(&source_file);
        for name in request.files.keys() {
            check_file_name(name)?;
            if let Some(other) = look_alikes.check(name) {
                return Err(Rejection::Invalid(format!(
                    "file name {} looks like {}: use names a reader can tell apart",
                    shown(name),
                    shown(other)
                )));
            }
        }
        check_input(&request.stdin, &request.args, policy)?;
        if request.code.contains('\0') {
            return Err(Rejection::Invalid(
                "code, stdin and args must not contain NUL bytes".into(),
            ));
        }
        let max_attempts = request.max_attempts.unwrap_or(policy.default_max_attempts);
        if max_attempts == 0 || max_attempts > policy.max_max_attempts {
            return Err(Rejection::Invalid(format!(
                "max_attempts must be between 1 and {}",
                policy.max_max_attempts
            )));
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return Err(Rejection::IdempotencyKey);
        }
        if let Some(url) = &request.callback_url {
            policy
                .callbacks
                .check_url(url)
                .map_err(Rejection::Invalid)?;
        }
        let limits = resolve_limits(request.limits, policy)?;
        check_fits_memory(request.code.len() + files_bytes, &limits)?;
        Ok(JobSpec {
            runtime: request.runtime,
            code: request.code,
            stdin: request.stdin,
            args: request.args,
            files: request.files,
            limits,
            priority: request.priority,
            max_attempts,
            idempotency_key,
            callback_url: request.callback_url,
        })
    }
}

/// The checks on what one run is given besides the code: its stdin and arguments.
fn check_input(stdin: &str, args: &[String], policy: &Policy) -> Result<(), Rejection> {
    check_size("stdin", stdin.len(), policy.max_stdin_bytes)?;
    if args.len() > policy.max_args {
        return Err(Rejection::TooLarge(format!(
            "{} args given, at most {} allowed",
            args.len(),
            policy.max_args
        )));
    }
    if args
        .iter()
        .map(String::as_str)
        .chain([stdin])
        .any(|s| s.contains('\0'))
    {
        return Err(Rejection::Invalid(
            "code, stdin and args must not contain NUL bytes".into(),
        ));
    }
    Ok(())
}

fn check_size(what: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        return Err(Rejection::TooLarge(format!(
            "{what} is {len} bytes, at most {max} allowed"
        )));
    }
    Ok(())
}

/// A run's code and files are in its memory (the sandbox's `/work` is a tmpfs) and count
/// against its memory limit: more than the limit holds could never run.
fn check_fits_memory(bytes: usize, limits: &Limits) -> Result<(), Rejection> {
    let memory = limits.memory_mb.saturating_mul(1 << 20);
    if bytes as u64 > memory {
        return Err(Rejection::Invalid(format!(
            "code and files are {bytes} bytes, more than limits.memory_mb ({} MiB) holds: \
             they are in the run's memory",
            limits.memory_mb
        )));
    }
    Ok(())
}

/// File names are relative paths inside the work directory: no absolute paths, no `..`, no empty or
/// `.` components, no backslashes, and nothing [`hidden_character`] refuses. The runner
/// trusts names that passed this check.
pub fn check_file_name(name: &str) -> Result<(), Rejection> {
    let invalid = |why: &str| {
        Err(Rejection::Invalid(format!(
            "file name {} {why}",
            shown(name)
        )))
    };
    if name.is_empty() || name.len() > 255 {
        return invalid("must be 1 to 255 bytes");
    }
    if name.starts_with('/') {
        return invalid("must be relative");
    }
    if let Some(why) = hidden_character(name) {
        return invalid(why);
    }
    if name.contains('\\') {
        return invalid("must not contain backslashes");
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return invalid("must not contain empty, '.' or '..' components");
    }
    Ok(())
}

fn resolve_limits(request: LimitsRequest, policy: &Policy) -> Result<Limits, Rejection> {
    let (default, max) = (&policy.default_limits, &policy.max_limits);
    let pick = |name: &str, asked: Option<u64>, default: u64, max: u64| match asked {
        Some(0) => Err(Rejection::Invalid(format!(
            "limits.{name} must be positive"
        ))),
        Some(v) if v > max => Err(Rejection::Invalid(format!(
            "limits.{name} is {v}, at most {max} allowed"
        ))),
        Some(v) => Ok(v),
        None => Ok(default.min(max)),
    };
    Ok(Limits {
        wall_ms: pick("wall_ms", request.wall_ms, default.wall_ms, max.wall_ms)?,
        cpu_ms: pick("cpu_ms", request.cpu_ms, default.cpu_ms, max.cpu_ms)?,
        memory_mb: pick(
            "memory_mb",
            request.memory_mb,
            default.memory_mb,
            max.memory_mb,
        )?,
        processes: pick(
            "processes",
            request.processes,
            default.processes,
            max.processes,
        )?,
        output_bytes: pick(
            "output_bytes",
            request.output_bytes,
            default.output_bytes,
            max.output_bytes,
        )?,
        file_bytes: pick(
            "file_bytes",
            request.file_bytes,
            default.file_bytes,
            max.file_bytes,
        )?,
    })
}

impl BatchSpec {
    /// Checks a suite against the deployment's policy. The shared part (runtime, code, files,
    /// suite limits) is checked once with the same rules as a job; then each case, and a refusal
    /// names the case. More cases than `policy.max_batch_cases` is `TooLarge`.
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
        let shared_bytes = shared.code.len()
            + shared
                .files
                .iter()
                .map(|(n, c)| n.len() + c.len())
                .sum::<usize>();
        let mut taken = HashSet::with_capacity(request.cases.len());
        let mut look_alikes = LookAlikes::with_capacity(request.cases.len());
        let mut cases = Vec::with_capacity(request.cases.len());
        for (index, case) in request.cases.into_iter().enumerate() {
            let name = case.name.unwrap_or_else(|| format!("case {}", index + 1));
            let in_case = |rejection: Rejection| {
                let label = format!("case {} ({})", index + 1, shown(&name));
                match rejection {
                    Rejection::TooLarge(m) => Rejection::TooLarge(format!("{label}: {m}")),
                    Rejection::Invalid(m) => Rejection::Invalid(format!("{label}: {m}")),
                    // Only the shared part names a runtime or carries the key.
                    other => other,
                }
            };
            check_case_name(&name).map_err(in_case)?;
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
            check_fits_memory(shared_bytes, &limits).map_err(in_case)?;
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

/// A case name: 1 to [`MAX_CASE_NAME_BYTES`] bytes, nothing [`hidden_character`] refuses.
fn check_case_name(name: &str) -> Result<(), Rejection> {
    if name.is_empty() || name.len() > MAX_CASE_NAME_BYTES {
        return Err(Rejection::Invalid(format!(
            "name must be 1 to {MAX_CASE_NAME_BYTES} bytes"
        )));
    }
    if let Some(why) = hidden_character(name) {
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

    fn job(request: serde_json::Value, key: Option<&str>) -> Result<JobSpec, Rejection> {
        let request: JobRequest = serde_json::from_value(request).expect("request");
        JobSpec::validate(
            request,
            key.map(str::to_owned),
            &Policy::default(),
            |runtime| (runtime == "sh").then(|| "main.sh".to_owned()),
        )
    }

    #[test]
    fn a_job_takes_the_default_limits_and_attempts_for_what_it_leaves_out() {
        let spec = job(serde_json::json!({"runtime": "sh", "code": "echo"}), None).expect("valid");
        assert_eq!(spec.limits, Policy::default().default_limits);
        assert_eq!(spec.max_attempts, Policy::default().default_max_attempts);
    }

    #[test]
    fn an_unknown_runtime_and_a_bad_key_are_refused_in_the_domains_own_words() {
        let unknown = job(serde_json::json!({"runtime": "cobol", "code": "x"}), None);
        assert_eq!(unknown, Err(Rejection::UnknownRuntime("cobol".into())));
        assert_eq!(
            unknown.expect_err("refused").to_string(),
            "unknown runtime \"cobol\""
        );
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        for key in ["", long.as_str()] {
            let refused = job(serde_json::json!({"runtime": "sh", "code": "x"}), Some(key));
            assert_eq!(refused, Err(Rejection::IdempotencyKey));
        }
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
        let accepted = job(
            serde_json::json!({"runtime": "sh", "code": "x"}),
            Some(&longest),
        );
        assert!(accepted.is_ok(), "{accepted:?}");
    }

    #[test]
    fn files_may_not_take_the_codes_place_or_look_like_it() {
        let taken = job(
            serde_json::json!({"runtime": "sh", "code": "x", "files": {"main.sh": ""}}),
            None,
        );
        assert!(
            matches!(&taken, Err(Rejection::Invalid(m)) if m.contains("the code is written there")),
            "{taken:?}"
        );
        let look_alike = job(
            serde_json::json!({"runtime": "sh", "code": "x", "files": {"m\u{430}in.sh": ""}}),
            None,
        );
        assert!(
            matches!(&look_alike, Err(Rejection::Invalid(m)) if m.contains("looks like \"main.sh\"")),
            "{look_alike:?}"
        );
    }

    #[test]
    fn a_limit_above_the_maximum_is_refused_never_clamped() {
        let max = Policy::default().max_limits.wall_ms;
        let refused = job(
            serde_json::json!({"runtime": "sh", "code": "x", "limits": {"wall_ms": max + 1}}),
            None,
        );
        assert_eq!(
            refused,
            Err(Rejection::Invalid(format!(
                "limits.wall_ms is {}, at most {max} allowed",
                max + 1
            )))
        );
    }

    #[test]
    fn code_and_files_the_memory_limit_cannot_hold_are_refused() {
        let files = serde_json::json!({"data": "x".repeat(2 << 20)});
        let refused = job(
            serde_json::json!({"runtime": "sh", "code": "x", "files": files,
                "limits": {"memory_mb": 1}}),
            None,
        );
        assert!(
            matches!(&refused, Err(Rejection::Invalid(m)) if m.contains("memory_mb")),
            "{refused:?}"
        );
        let held = job(
            serde_json::json!({"runtime": "sh", "code": "x", "files": files,
                "limits": {"memory_mb": 3}}),
            None,
        );
        assert!(held.is_ok(), "{held:?}");
        let case = validate(
            BatchRequest {
                files: BTreeMap::from([("data".to_owned(), "x".repeat(2 << 20))]),
                ..request(serde_json::json!([{}, {"limits": {"memory_mb": 1}}]))
            },
            &Policy::default(),
        );
        assert!(
            matches!(&case, Err(Rejection::Invalid(m)) if m.starts_with("case 2")),
            "{case:?}"
        );
    }
}
