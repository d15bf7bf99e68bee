//! Validation of a submission: the requests as decoded from the wire ([`JobRequest`],
//! [`BatchRequest`]) checked against the deployment's [`Policy`] into a [`JobSpec`] or a
//! [`BatchSpec`], or refused with a [`Rejection`]. Every entry point (the v1 API, the
//! compatibility aliases, suites) applies these same rules; a suite is checked whole, every case
//! before anything is stored, so it is accepted whole or not at all. The bytes of code, stdin,
//! files and expected output are decoded here from their wire form ([`super::content`]), so a
//! malformed one is refused naming its field, like any other rule broken.
//!
//! What is the submitter's doing is refused here, not found out by a run: besides the policy's
//! sizes, every way the request's files and args could keep the kernel from setting the run up.
//! Files must make a tree that can be built (no name both a file and another's directory, none
//! on or under what the runtime writes itself, [`RuntimeTerms`]), within NAME_MAX and PATH_MAX
//! by their length; args must be what `execve` passes (no NUL, none over MAX_ARG_STRLEN, all
//! together within [`Policy::max_args_bytes`], well under the kernel's least ARG_MAX). The
//! environment is kiln's own and stdin goes through a pipe, so neither can fail a run's start.
//! File names are bytes to the kernel (no case folding, no Unicode normalisation on the
//! tmpfs a run gets), so two names that differ only so are different files; that they could
//! be mistaken for each other is refused all the same ([`LookAlikes`]), directories included.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::batch::{BatchSpec, CaseSpec, SuiteSpec};
use super::content::{Content, Encoded, decode_files};
use super::names::{LookAlikes, hidden_character, shown};
use super::outputs::{MAX_OUTPUT_PATTERNS, check_pattern};
use super::policy::Policy;
use super::verdict::CompareMode;
use super::{CallbackShape, JobSpec, Limits};

/// The longest case name accepted.
const MAX_CASE_NAME_BYTES: usize = 200;

/// The longest file name accepted, in bytes. Being the kernel's NAME_MAX, no component of it is
/// over NAME_MAX, and `/work/` and it are far within PATH_MAX (4096).
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// The longest single argument `execve` passes, its NUL included (MAX_ARG_STRLEN: 32 pages, of
/// 4 KiB at least).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// What one argument costs `execve` besides its bytes: its NUL and its pointer in `argv`.
pub const ARG_OVERHEAD_BYTES: usize = 1 + 8;

/// What validation needs to know of a runtime for one program: its name (a job may name it by
/// an alias), what it writes into a run's work directory itself beside the submitted files (the
/// file the code is written to and, for a compiled runtime, what its build leaves there, which
/// submitted files must leave free), and its own default limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeTerms {
    pub name: String,
    pub source_file: String,
    pub binary: Option<String>,
    /// Defaults of this runtime's jobs where they differ from the deployment's; held to its
    /// maxima like those.
    pub limits: LimitsRequest,
}

/// Limits as a submitter states them: any may be left out and then takes the configured default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    #[schema(minimum = 1)]
    pub wall_ms: Option<u64>,
    #[schema(minimum = 1)]
    pub cpu_ms: Option<u64>,
    #[schema(minimum = 1)]
    pub memory_mb: Option<u64>,
    #[schema(minimum = 1)]
    pub processes: Option<u64>,
    #[schema(minimum = 1)]
    pub output_bytes: Option<u64>,
    #[schema(minimum = 1)]
    pub file_bytes: Option<u64>,
    /// Left out of a stored suite's JSON when not given, so a suite stored before it was a
    /// limit still compares equal when its submit is replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub cpu_percent: Option<u64>,
}

/// A job to run: a program in a runtime, with its input, files and limits.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A name or alias that `GET /v1/runtimes` lists.
    #[schema(example = "python")]
    pub runtime: String,
    #[schema(example = "print(input())")]
    pub code: Encoded,
    #[serde(default)]
    pub stdin: Encoded,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "unique_names")]
    pub files: BTreeMap<String, Encoded>,
    /// Paths or globs, relative to the work directory, of files the run writes that are kept:
    /// listed in the job's `files_out` and served by `GET /v1/jobs/{id}/files/{path}`.
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub priority: i32,
    #[schema(minimum = 1)]
    pub max_attempts: Option<u32>,
    /// Where to POST the job, signed, when it ends; retried until it is delivered.
    pub callback_url: Option<String>,
    /// Set by the API a job came through, never read from the request.
    #[serde(skip)]
    pub callback_shape: CallbackShape,
    /// Keep stdin open after `stdin` for what is written to it while the job runs.
    #[serde(default)]
    pub interactive: bool,
}

/// A suite of test cases. Its program (runtime, code, files) is
/// the default of every case; a case may bring its own.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub runtime: Option<String>,
    pub code: Option<Encoded>,
    /// Every case's files; a case's own files are added to them, replacing any of the same name.
    #[serde(default, deserialize_with = "unique_names")]
    pub files: BTreeMap<String, Encoded>,
    /// Defaults for every case; a case's own limits override them one by one.
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub compare: CompareMode,
    /// The `k` of each pass@k to report, per group and over all groups.
    #[serde(default)]
    pub pass_at_k: Vec<u32>,
    /// Where to POST the batch, signed, when its last case ends; retried until it is delivered.
    pub callback_url: Option<String>,
    /// Also POST each case's end to `callback_url`, as a job's end is.
    #[serde(default)]
    pub callback_each_case: bool,
    /// Set by the API a suite came through, never read from the request.
    #[serde(skip)]
    pub callback_shape: CallbackShape,
    pub cases: Vec<CaseRequest>,
}

impl BatchRequest {
    /// The suite's own fields and its cases apart.
    pub fn into_parts(self) -> (SuiteRequest, Vec<CaseRequest>) {
        let suite = SuiteRequest {
            runtime: self.runtime,
            code: self.code,
            files: self.files,
            limits: self.limits,
            compare: self.compare,
            pass_at_k: self.pass_at_k,
            callback_url: self.callback_url,
            callback_each_case: self.callback_each_case,
            callback_shape: self.callback_shape,
        };
        (suite, self.cases)
    }
}

/// A suite's own fields, every one of a [`BatchRequest`] but its cases: the first line of a
/// suite sent as a stream, whose cases follow a line each. Written out again rather than
/// `#[serde(flatten)]`ed into `BatchRequest`, because serde cannot refuse unknown fields through
/// a flattened struct, and both forms must refuse them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRequest {
    pub runtime: Option<String>,
    pub code: Option<Encoded>,
    #[serde(default, deserialize_with = "unique_names")]
    pub files: BTreeMap<String, Encoded>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub compare: CompareMode,
    #[serde(default)]
    pub pass_at_k: Vec<u32>,
    pub callback_url: Option<String>,
    #[serde(default)]
    pub callback_each_case: bool,
    #[serde(skip)]
    pub callback_shape: CallbackShape,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// Unique within the suite; `case N` (counting from 1) if left out.
    pub name: Option<String>,
    /// The problem this case is a sample or a test of: pass@k is counted per group.
    pub group: Option<String>,
    /// The case's own program, where it is not the suite's.
    pub runtime: Option<String>,
    pub code: Option<Encoded>,
    #[serde(default, deserialize_with = "unique_names")]
    pub files: BTreeMap<String, Encoded>,
    #[serde(default)]
    pub stdin: Encoded,
    #[serde(default)]
    pub args: Vec<String>,
    /// What stdout must be; without it a case passes when the program exits 0.
    pub expected_output: Option<Encoded>,
    #[serde(default)]
    pub limits: LimitsRequest,
}

/// `files` as decoded, refusing a name given twice: a JSON object may repeat a key, and a map
/// would keep the last and lose the other without a word.
fn unique_names<'de, D: serde::Deserializer<'de>, V: Deserialize<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, V>, D::Error> {
    struct Files<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Files<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of file names and contents")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut files = BTreeMap::new();
            while let Some((name, contents)) = map.next_entry::<String, V>()? {
                match files.entry(name) {
                    Entry::Vacant(slot) => {
                        slot.insert(contents);
                    }
                    Entry::Occupied(taken) => {
                        let name = shown(taken.key());
                        let message = format!("files gives the file name {name} twice");
                        return Err(serde::de::Error::custom(message));
                    }
                }
            }
            Ok(files)
        }
    }
    deserializer.deserialize_map(Files(std::marker::PhantomData))
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
    /// No runtime of this name is offered here; `case` names the suite's case that asked.
    #[error("{}unknown runtime {}", .case.as_ref().map(|c| format!("{c}: ")).unwrap_or_default(), shown(.name))]
    UnknownRuntime { name: String, case: Option<String> },
    /// The idempotency key is empty or longer than [`MAX_IDEMPOTENCY_KEY_BYTES`].
    #[error("the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} characters")]
    IdempotencyKey,
}

impl Rejection {
    /// The same refusal, said of `place` (a suite's case, the line it came on).
    pub fn at(self, place: &str) -> Rejection {
        match self {
            Rejection::TooLarge(m) => Rejection::TooLarge(format!("{place}: {m}")),
            Rejection::Invalid(m) => Rejection::Invalid(format!("{place}: {m}")),
            Rejection::UnknownRuntime { name, .. } => Rejection::UnknownRuntime {
                name,
                case: Some(place.to_owned()),
            },
            Rejection::IdempotencyKey => Rejection::IdempotencyKey,
        }
    }
}

impl JobSpec {
    /// Checks a request against the deployment's policy and fills in defaults. `runtime_files`
    /// names what a runtime writes into the work directory itself, or `None` for a runtime not
    /// offered here.
    pub fn validate(
        request: JobRequest,
        idempotency_key: Option<String>,
        policy: &Policy,
        runtime_files: impl Fn(&str, &str) -> Option<RuntimeTerms>,
    ) -> Result<JobSpec, Rejection> {
        let code = decoded("code", request.code)?;
        let stdin = decoded("stdin", request.stdin)?;
        let files = decoded_files(request.files)?;
        let (program_bytes, terms) =
            check_program(&request.runtime, &code, &files, policy, &runtime_files)?;
        check_input(&stdin, &request.args, policy)?;
        check_outputs(&request.outputs)?;
        let max_attempts = check_max_attempts(request.max_attempts, policy)?;
        check_key(idempotency_key.as_deref())?;
        check_callback(request.callback_url.as_deref(), policy)?;
        let limits = resolve_limits(request.limits, terms.limits, policy)?;
        check_fits_memory(program_bytes, &limits)?;
        Ok(JobSpec {
            runtime: terms.name,
            code,
            stdin,
            args: request.args,
            files,
            outputs: request.outputs,
            limits,
            priority: request.priority,
            max_attempts,
            idempotency_key,
            callback_url: request.callback_url,
            callback_shape: request.callback_shape,
            interactive: request.interactive,
        })
    }
}

/// The output patterns: few enough, and none that could reach out of the work directory.
fn check_outputs(patterns: &[String]) -> Result<(), Rejection> {
    if patterns.len() > MAX_OUTPUT_PATTERNS {
        return Err(Rejection::Invalid(format!(
            "outputs names {} patterns, at most {MAX_OUTPUT_PATTERNS} allowed",
            patterns.len()
        )));
    }
    for (index, pattern) in patterns.iter().enumerate() {
        check_pattern(pattern)
            .map_err(|why| Rejection::Invalid(format!("outputs[{index}]: {why}")))?;
    }
    Ok(())
}

/// `value` decoded, or refused naming `field`, the place it came in.
fn decoded(field: &str, value: Encoded) -> Result<Content, Rejection> {
    value
        .decode()
        .map_err(|why| Rejection::Invalid(format!("{field}: {why}")))
}

/// The contents of every file decoded, or refused naming the file.
fn decoded_files(files: BTreeMap<String, Encoded>) -> Result<BTreeMap<String, Content>, Rejection> {
    decode_files(files)
        .map_err(|(name, why)| Rejection::Invalid(format!("files[{}]: {why}", shown(&name))))
}

/// Checks what a run executes by the rules every run's program meets: a runtime offered here,
/// code, and files that make a tree the kernel can build beside what the runtime writes. Returns
/// the bytes of code and files, which the run's memory holds, and the runtime's terms.
fn check_program(
    runtime: &str,
    code: &Content,
    files: &BTreeMap<String, Content>,
    policy: &Policy,
    runtime_files: impl Fn(&str, &str) -> Option<RuntimeTerms>,
) -> Result<(usize, RuntimeTerms), Rejection> {
    // A runtime may read its terms from the code (Java's class name): only from its text.
    let Some(own) = runtime_files(runtime, &code.lossy_text()) else {
        return Err(Rejection::UnknownRuntime {
            name: runtime.to_owned(),
            case: None,
        });
    };
    let source_file = &own.source_file;
    if files.contains_key(source_file) {
        return Err(Rejection::Invalid(format!(
            "files must not contain {source_file:?}: the code is written there"
        )));
    }
    if let Some(binary) = own.binary.as_ref().filter(|b| files.contains_key(*b)) {
        return Err(Rejection::Invalid(format!(
            "files must not contain {binary:?}: the compiled program is written there"
        )));
    }
    check_code(code, policy)?;
    let files_bytes: usize = files.iter().map(|(n, c)| n.len() + c.len()).sum();
    check_size("files", files_bytes, policy.max_files_bytes)?;
    if files.len() > policy.max_files {
        return Err(Rejection::TooLarge(format!(
            "{} files given, at most {} allowed",
            files.len(),
            policy.max_files
        )));
    }
    for name in files.keys() {
        check_file_name(name)?;
    }
    let dirs = check_tree(files, &own, policy)?;
    let mut look_alikes = LookAlikes::with_capacity(files.len() + dirs.len() + 2);
    look_alikes.check(source_file);
    if let Some(binary) = &own.binary {
        look_alikes.check(binary);
    }
    let names = files.keys().map(|name| ("file name", name.as_str()));
    for (what, name) in names.chain(dirs.iter().map(|dir| ("directory", *dir))) {
        if let Some(other) = look_alikes.check(name) {
            return Err(Rejection::Invalid(format!(
                "{what} {} looks like {}: use names a reader can tell apart",
                shown(name),
                shown(other)
            )));
        }
    }
    Ok((code.len() + files_bytes, own))
}

fn check_code(code: &Content, policy: &Policy) -> Result<(), Rejection> {
    if code.lossy_text().trim().is_empty() {
        return Err(Rejection::Invalid("code must not be empty".into()));
    }
    check_size("code", code.len(), policy.max_code_bytes)?;
    if code.as_bytes().contains(&0) {
        return Err(Rejection::Invalid(
            "code and args must not contain NUL bytes".into(),
        ));
    }
    Ok(())
}

fn check_max_attempts(asked: Option<u32>, policy: &Policy) -> Result<u32, Rejection> {
    let max_attempts = asked.unwrap_or(policy.default_max_attempts);
    if max_attempts == 0 || max_attempts > policy.max_max_attempts {
        return Err(Rejection::Invalid(format!(
            "max_attempts must be between 1 and {}",
            policy.max_max_attempts
        )));
    }
    Ok(max_attempts)
}

fn check_key(key: Option<&str>) -> Result<(), Rejection> {
    match key {
        Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
            Err(Rejection::IdempotencyKey)
        }
        _ => Ok(()),
    }
}

fn check_callback(url: Option<&str>, policy: &Policy) -> Result<(), Rejection> {
    match url {
        Some(url) => policy.callbacks.check_url(url).map_err(Rejection::Invalid),
        None => Ok(()),
    }
}

/// The directories the files make in the work directory, once it is known that the kernel can
/// make them: no name is both a file and the directory of another (`a` and `a/b`), none puts a
/// directory where the runtime writes a file of its own, and there are at most
/// `policy.max_dirs` of them. Identical names cannot occur: one given twice is refused as it is
/// decoded ([`unique_names`]), and [`check_file_name`] refuses every other way to write one path
/// twice (`a//b`, `./a`, `a/`).
fn check_tree<'a>(
    files: &'a BTreeMap<String, Content>,
    own: &RuntimeTerms,
    policy: &Policy,
) -> Result<BTreeSet<&'a str>, Rejection> {
    let is_own = |dir: &str| dir == own.source_file || own.binary.as_deref() == Some(dir);
    let mut dirs = BTreeSet::new();
    for name in files.keys() {
        for (end, _) in name.match_indices('/') {
            let dir = &name[..end];
            if files.contains_key(dir) {
                return Err(Rejection::Invalid(format!(
                    "files {} and {} cannot both be given: {} would be a file and a directory",
                    shown(dir),
                    shown(name),
                    shown(dir)
                )));
            }
            if is_own(dir) {
                return Err(Rejection::Invalid(format!(
                    "file name {} makes a directory of {}, which the runtime writes itself",
                    shown(name),
                    shown(dir)
                )));
            }
            dirs.insert(dir);
        }
    }
    if dirs.len() > policy.max_dirs {
        return Err(Rejection::Invalid(format!(
            "files make {} directories, at most {} allowed",
            dirs.len(),
            policy.max_dirs
        )));
    }
    Ok(dirs)
}

/// The checks on what one run is given besides the code: its stdin and arguments. Stdin goes
/// through a pipe, so it may hold any bytes, NUL too.
fn check_input(stdin: &Content, args: &[String], policy: &Policy) -> Result<(), Rejection> {
    check_size("stdin", stdin.len(), policy.max_stdin_bytes)?;
    if args.len() > policy.max_args {
        return Err(Rejection::TooLarge(format!(
            "{} args given, at most {} allowed",
            args.len(),
            policy.max_args
        )));
    }
    if let Some((index, arg)) = args
        .iter()
        .enumerate()
        .find(|(_, arg)| arg.len() >= MAX_ARG_STRLEN)
    {
        return Err(Rejection::Invalid(format!(
            "args[{index}] is {} bytes, at most {} allowed: the kernel passes no longer argument",
            arg.len(),
            MAX_ARG_STRLEN - 1
        )));
    }
    let args_bytes: usize = args.iter().map(|a| a.len() + ARG_OVERHEAD_BYTES).sum();
    if args_bytes > policy.max_args_bytes {
        return Err(Rejection::Invalid(format!(
            "args take {args_bytes} bytes to pass to the program (each its length plus \
             {ARG_OVERHEAD_BYTES}), at most {} allowed",
            policy.max_args_bytes
        )));
    }
    if args.iter().any(|arg| arg.contains('\0')) {
        return Err(Rejection::Invalid(
            "code and args must not contain NUL bytes".into(),
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
    if name.is_empty() || name.len() > MAX_FILE_NAME_BYTES {
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

/// The limits a run gets: what the request asks for, else the runtime's own default, else the
/// deployment's; none above the deployment's maxima (a default above one is held to it, a request
/// above one refused).
fn resolve_limits(
    request: LimitsRequest,
    runtime: LimitsRequest,
    policy: &Policy,
) -> Result<Limits, Rejection> {
    let default = &runtime.over(&policy.default_limits);
    let max = &policy.max_limits;
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
        cpu_percent: match (request.cpu_percent, max.cpu_percent) {
            (Some(0), _) => {
                return Err(Rejection::Invalid(
                    "limits.cpu_percent must be positive".into(),
                ));
            }
            (Some(v), Some(max)) if v > max => {
                return Err(Rejection::Invalid(format!(
                    "limits.cpu_percent is {v}, at most {max} allowed"
                )));
            }
            (Some(v), _) => Some(v),
            (None, None) => default.cpu_percent,
            (None, Some(max)) => Some(default.cpu_percent.map_or(max, |d| d.min(max))),
        },
    })
}

/// The most `k` values a suite may ask pass@k for.
const MAX_PASS_AT_K: usize = 16;

impl BatchSpec {
    /// Checks a suite against the deployment's policy, whole: more cases than
    /// `policy.max_batch_cases` is `TooLarge`, none is `Invalid`, and then the suite's own
    /// fields and each case are checked as a [`SuiteCheck`] checks them.
    pub fn validate(
        request: BatchRequest,
        idempotency_key: Option<String>,
        policy: &Policy,
        runtime_files: impl Fn(&str, &str) -> Option<RuntimeTerms>,
    ) -> Result<BatchSpec, Rejection> {
        let (suite, requests) = request.into_parts();
        if requests.len() > policy.max_batch_cases {
            return Err(Rejection::TooLarge(format!(
                "{} cases given, at most {} allowed",
                requests.len(),
                policy.max_batch_cases
            )));
        }
        if requests.is_empty() {
            return Err(no_cases());
        }
        let mut check = SuiteCheck::new(suite, idempotency_key, policy, runtime_files)?;
        let mut cases = Vec::with_capacity(requests.len());
        for case in requests {
            cases.push(check.case(case, None)?);
        }
        let suite = check.finish()?;
        Ok(BatchSpec { suite, cases })
    }
}

/// A suite checked a case at a time, as its cases arrive: the suite's own fields when it is
/// made, each case as it is given, and at the end that there was one. What it keeps between
/// cases is their names (unique, and unlike one another) and whether the suite's own program
/// has been checked, so it needs no case once checked and holds no case's code.
pub struct SuiteCheck<'p, F> {
    suite: SuiteSpec,
    policy: &'p Policy,
    runtime_files: F,
    /// The bytes of the suite's own program and its runtime's terms, once a case running it
    /// unchanged had it checked.
    suite_program: Option<(usize, RuntimeTerms)>,
    taken: HashSet<String>,
    look_alikes: LookAlikes,
    cases: usize,
}

impl<'p, F: Fn(&str, &str) -> Option<RuntimeTerms>> SuiteCheck<'p, F> {
    /// Checks the suite's own fields: its callback, its pass@k, its runtime and code (its files
    /// wait for the first case that runs them, as they are checked with that case's runtime).
    pub fn new(
        request: SuiteRequest,
        idempotency_key: Option<String>,
        policy: &'p Policy,
        runtime_files: F,
    ) -> Result<SuiteCheck<'p, F>, Rejection> {
        if request.callback_each_case && request.callback_url.is_none() {
            return Err(Rejection::Invalid(
                "callback_each_case needs a callback_url to call".into(),
            ));
        }
        check_key(idempotency_key.as_deref())?;
        check_callback(request.callback_url.as_deref(), policy)?;
        let max_attempts = check_max_attempts(None, policy)?;
        check_pass_at_k(&request.pass_at_k, policy)?;
        let mut request = request;
        let code = request
            .code
            .take()
            .map(|code| decoded("code", code))
            .transpose()?;
        if let Some(runtime) = &request.runtime {
            let text = code.as_ref().map(Content::lossy_text);
            let Some(terms) = runtime_files(runtime, text.as_deref().unwrap_or_default()) else {
                return Err(Rejection::UnknownRuntime {
                    name: runtime.clone(),
                    case: None,
                });
            };
            request.runtime = Some(terms.name);
        }
        if let Some(code) = &code {
            check_code(code, policy)?;
        }
        let suite = SuiteSpec {
            runtime: request.runtime,
            code,
            files: decoded_files(request.files)?,
            limits: request.limits,
            compare: request.compare,
            pass_at_k: request.pass_at_k,
            max_attempts,
            idempotency_key,
            callback_url: request.callback_url,
            callback_each_case: request.callback_each_case,
            callback_shape: request.callback_shape,
        };
        Ok(SuiteCheck {
            suite,
            policy,
            runtime_files,
            suite_program: None,
            taken: HashSet::new(),
            look_alikes: LookAlikes::with_capacity(0),
            cases: 0,
        })
    }

    /// Checks the next case: its program (its own runtime, code and files where it gives them,
    /// the suite's elsewhere) by the same rules as a job's, the suite's own once for all the
    /// cases that run it unchanged; then its input and limits. A refusal names the case, and
    /// the line it came on where `line` says. One case more than `policy.max_batch_cases` is
    /// `TooLarge`.
    pub fn case(&mut self, case: CaseRequest, line: Option<u64>) -> Result<CaseSpec, Rejection> {
        self.cases += 1;
        let number = self.cases;
        let name = case.name.unwrap_or_else(|| format!("case {number}"));
        let label = match line {
            Some(line) => format!("line {line} (case {number}, {})", shown(&name)),
            None => format!("case {number} ({})", shown(&name)),
        };
        let in_case = |rejection: Rejection| rejection.at(&label);
        let (policy, suite) = (self.policy, &self.suite);
        if number > policy.max_batch_cases {
            return Err(in_case(Rejection::TooLarge(format!(
                "more cases than the {} allowed",
                policy.max_batch_cases
            ))));
        }
        check_label("name", &name).map_err(in_case)?;
        if !self.taken.insert(name.clone()) {
            return Err(in_case(Rejection::Invalid(
                "another case has the same name".into(),
            )));
        }
        if let Some(other) = self.look_alikes.check(&name) {
            return Err(in_case(Rejection::Invalid(format!(
                "the name looks like another case's, {}: use names a reader can tell apart",
                shown(other)
            ))));
        }
        if let Some(group) = &case.group {
            check_label("group", group).map_err(in_case)?;
        }
        let own_code = case.code.map(|code| decoded("code", code)).transpose();
        let own_code = own_code.map_err(in_case)?;
        let own_files = decoded_files(case.files).map_err(in_case)?;
        let stdin = decoded("stdin", case.stdin).map_err(in_case)?;
        let expected_output = case
            .expected_output
            .map(|expected| decoded("expected_output", expected))
            .transpose()
            .map_err(in_case)?;
        let Some(runtime) = case.runtime.as_ref().or(suite.runtime.as_ref()) else {
            return Err(in_case(Rejection::Invalid(
                "no runtime: give one for the suite or for the case".into(),
            )));
        };
        let Some(code) = own_code.as_ref().or(suite.code.as_ref()) else {
            return Err(in_case(Rejection::Invalid(
                "no code: give it for the suite or for the case".into(),
            )));
        };
        let own_program = case.runtime.is_some() || own_code.is_some() || !own_files.is_empty();
        let (program_bytes, terms) = if own_program {
            let files = with_own_files(&suite.files, &own_files);
            check_program(runtime, code, &files, policy, &self.runtime_files).map_err(in_case)?
        } else if let Some(checked) = &self.suite_program {
            checked.clone()
        } else {
            // Found out at the first case that runs it; where the suite came as lines, that
            // case's line is the one a reader can be pointed to.
            let checked = check_program(runtime, code, &suite.files, policy, &self.runtime_files)
                .map_err(|rejection| match line {
                Some(_) => in_case(rejection),
                None => rejection,
            })?;
            self.suite_program.insert(checked).clone()
        };
        check_input(&stdin, &case.args, policy).map_err(in_case)?;
        if let Some(expected) = &expected_output {
            let max = usize::try_from(policy.max_limits.output_bytes).unwrap_or(usize::MAX);
            check_size("expected_output", expected.len(), max).map_err(in_case)?;
        }
        let limits = resolve_limits(overlay(case.limits, suite.limits), terms.limits, policy)
            .map_err(in_case)?;
        check_fits_memory(program_bytes, &limits).map_err(in_case)?;
        Ok(CaseSpec {
            name,
            group: case.group,
            runtime: terms.name,
            code: own_code,
            files: own_files,
            stdin,
            args: case.args,
            expected_output,
            limits,
        })
    }

    /// How many cases have been checked.
    pub fn cases(&self) -> usize {
        self.cases
    }

    /// The suite's own fields, once its last case is checked: a suite of no case is refused.
    pub fn finish(self) -> Result<SuiteSpec, Rejection> {
        if self.cases == 0 {
            return Err(no_cases());
        }
        Ok(self.suite)
    }
}

fn no_cases() -> Rejection {
    Rejection::Invalid("cases must not be empty".into())
}

/// A case's files: the suite's, with the case's own added (replacing any of the same name).
fn with_own_files<'a>(
    suite: &'a BTreeMap<String, Content>,
    own: &BTreeMap<String, Content>,
) -> Cow<'a, BTreeMap<String, Content>> {
    if own.is_empty() {
        return Cow::Borrowed(suite);
    }
    let mut files = suite.clone();
    files.extend(own.iter().map(|(n, c)| (n.clone(), c.clone())));
    Cow::Owned(files)
}

/// pass@k is asked for `k` from 1 to the most cases a suite may have, each once.
fn check_pass_at_k(ks: &[u32], policy: &Policy) -> Result<(), Rejection> {
    if ks.len() > MAX_PASS_AT_K {
        return Err(Rejection::Invalid(format!(
            "pass_at_k asks for {} values, at most {MAX_PASS_AT_K} allowed",
            ks.len()
        )));
    }
    let max = u32::try_from(policy.max_batch_cases).unwrap_or(u32::MAX);
    let mut seen = BTreeSet::new();
    for &k in ks {
        if k == 0 || k > max {
            return Err(Rejection::Invalid(format!(
                "pass_at_k: {k} is not a k from 1 to {max}"
            )));
        }
        if !seen.insert(k) {
            return Err(Rejection::Invalid(format!("pass_at_k gives {k} twice")));
        }
    }
    Ok(())
}

/// A case's name or group (`what`): 1 to [`MAX_CASE_NAME_BYTES`] bytes, nothing
/// [`hidden_character`] refuses.
fn check_label(what: &str, label: &str) -> Result<(), Rejection> {
    if label.is_empty() || label.len() > MAX_CASE_NAME_BYTES {
        return Err(Rejection::Invalid(format!(
            "{what} must be 1 to {MAX_CASE_NAME_BYTES} bytes"
        )));
    }
    if let Some(why) = hidden_character(label) {
        return Err(Rejection::Invalid(format!("{what} {why}")));
    }
    Ok(())
}

impl LimitsRequest {
    /// These limits where given, `base`'s elsewhere.
    pub fn over(&self, base: &Limits) -> Limits {
        Limits {
            wall_ms: self.wall_ms.unwrap_or(base.wall_ms),
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            processes: self.processes.unwrap_or(base.processes),
            output_bytes: self.output_bytes.unwrap_or(base.output_bytes),
            file_bytes: self.file_bytes.unwrap_or(base.file_bytes),
            cpu_percent: self.cpu_percent.or(base.cpu_percent),
        }
    }
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
        cpu_percent: case.cpu_percent.or(suite.cpu_percent),
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
        BatchSpec::validate(request, None, policy, runtime_files)
    }

    /// `sh`, and `c` with its binary.
    fn runtime_files(runtime: &str, _code: &str) -> Option<RuntimeTerms> {
        let (source_file, binary) = match runtime {
            "sh" => ("main.sh", None),
            "c" => ("main.c", Some("main".to_owned())),
            _ => return None,
        };
        Some(RuntimeTerms {
            name: runtime.to_owned(),
            source_file: source_file.to_owned(),
            binary,
            limits: LimitsRequest::default(),
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
        assert_eq!(spec.suite.compare, CompareMode::Trim, "trim is the default");
    }

    #[test]
    fn a_case_keeps_only_its_own_program_and_is_checked_with_the_suites_files_added() {
        let policy = Policy::default();
        let suite = serde_json::json!({
            "runtime": "sh", "code": "cat", "files": {"lib/a.sh": "a"},
            "cases": [{}, {"runtime": "c", "code": "int main(){}", "files": {"b.h": ""},
                       "group": "p"}],
        });
        let spec =
            validate(serde_json::from_value(suite).expect("request"), &policy).expect("valid");
        let (shared, own) = (&spec.cases[0], &spec.cases[1]);
        assert_eq!(
            (
                shared.runtime.as_str(),
                shared.code.as_ref().map(Content::as_bytes)
            ),
            ("sh", None)
        );
        assert_eq!(
            (
                own.runtime.as_str(),
                own.code.as_ref().map(Content::as_bytes)
            ),
            ("c", Some(b"int main(){}".as_slice()))
        );
        assert_eq!(
            own.files.keys().collect::<Vec<_>>(),
            ["b.h"],
            "the suite's stay the suite's"
        );
        assert_eq!(own.group.as_deref(), Some("p"));

        // The suite's file `lib` directory meets a case's file `lib`: that case's tree is refused.
        let clash = serde_json::json!({
            "runtime": "sh", "code": "cat", "files": {"lib/a.sh": "a"},
            "cases": [{}, {"name": "clash", "files": {"lib": "x"}}],
        });
        let refused = validate(serde_json::from_value(clash).expect("request"), &policy);
        assert!(
            matches!(&refused, Err(Rejection::Invalid(m)) if m.starts_with("case 2 (\"clash\"): files \"lib\" and \"lib/a.sh\"")),
            "{refused:?}"
        );
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
    fn a_suite_checked_line_by_line_names_each_line_and_stops_at_the_case_over_the_maximum() {
        let policy = Policy {
            max_batch_cases: 2,
            ..Policy::default()
        };
        let suite: SuiteRequest =
            serde_json::from_value(serde_json::json!({"runtime": "sh", "code": "cat"}))
                .expect("suite");
        let case = |value: serde_json::Value| -> CaseRequest {
            serde_json::from_value(value).expect("case")
        };
        let mut check = SuiteCheck::new(suite, None, &policy, runtime_files).expect("suite");
        let first = check.case(case(serde_json::json!({})), Some(2));
        assert_eq!(first.map(|c| c.name), Ok("case 1".to_owned()));
        let twice = check.case(case(serde_json::json!({"name": "case 1"})), Some(4));
        assert_eq!(
            twice,
            Err(Rejection::Invalid(
                "line 4 (case 2, \"case 1\"): another case has the same name".into()
            ))
        );
        let over = check.case(case(serde_json::json!({"name": "third"})), Some(5));
        assert!(
            matches!(&over, Err(Rejection::TooLarge(m))
                if m == "line 5 (case 3, \"third\"): more cases than the 2 allowed"),
            "{over:?}"
        );

        // The suite's own program is found out at the first line that runs it.
        let suite: SuiteRequest = serde_json::from_value(
            serde_json::json!({"runtime": "sh", "code": "cat", "files": {"main.sh": ""}}),
        )
        .expect("suite");
        let mut check = SuiteCheck::new(suite, None, &policy, runtime_files).expect("suite");
        let own = check.case(
            case(serde_json::json!({"code": "true", "runtime": "c"})),
            Some(2),
        );
        assert!(own.is_ok(), "{own:?}");
        let shared = check.case(case(serde_json::json!({})), Some(3));
        assert!(
            matches!(&shared, Err(Rejection::Invalid(m))
                if m.starts_with("line 3 (case 2, \"case 2\"): files must not contain \"main.sh\"")),
            "{shared:?}"
        );
    }

    #[test]
    fn a_suite_checked_line_by_line_needs_a_case() {
        let suite: SuiteRequest =
            serde_json::from_value(serde_json::json!({"runtime": "sh", "code": "cat"}))
                .expect("suite");
        let policy = Policy::default();
        let check = SuiteCheck::new(suite, None, &policy, runtime_files).expect("suite");
        assert_eq!(check.finish(), Err(no_cases()));
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
            runtime_files,
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
        assert_eq!(
            unknown,
            Err(Rejection::UnknownRuntime {
                name: "cobol".into(),
                case: None
            })
        );
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

    fn refusal(result: Result<JobSpec, Rejection>) -> String {
        match result {
            Err(Rejection::Invalid(message)) => message,
            other => panic!("not refused as invalid: {other:?}"),
        }
    }

    fn with_files(runtime: &str, files: serde_json::Value) -> Result<JobSpec, Rejection> {
        job(
            serde_json::json!({"runtime": runtime, "code": "x", "files": files}),
            None,
        )
    }

    // Each of these passed validation once and then failed every attempt to set its run up.
    #[test]
    fn a_name_that_is_both_a_file_and_a_directory_is_refused() {
        for files in [
            serde_json::json!({"a": "", "a/b": ""}),
            serde_json::json!({"x/a": "", "x/a/b/c": "", "y": ""}),
        ] {
            let message = refusal(with_files("sh", files.clone()));
            assert!(
                message.contains("cannot both be given")
                    && message.contains("a file and a directory"),
                "{files}: {message}"
            );
        }
        let siblings = with_files("sh", serde_json::json!({"a/b": "", "a/c": "", "ab": ""}));
        assert!(siblings.is_ok(), "{siblings:?}");
    }

    #[test]
    fn files_leave_the_runtimes_own_files_free() {
        let under_code = refusal(with_files("sh", serde_json::json!({"main.sh/x": ""})));
        assert!(
            under_code.contains("makes a directory of \"main.sh\""),
            "{under_code}"
        );
        let on_binary = refusal(with_files("c", serde_json::json!({"main": ""})));
        assert!(
            on_binary.contains("the compiled program is written there"),
            "{on_binary}"
        );
        let under_binary = refusal(with_files("c", serde_json::json!({"main/x.h": ""})));
        assert!(
            under_binary.contains("which the runtime writes itself"),
            "{under_binary}"
        );
        let a_header = with_files("c", serde_json::json!({"lib/main.h": "", "main.h": ""}));
        assert!(a_header.is_ok(), "{a_header:?}");
    }

    #[test]
    fn more_directories_than_allowed_are_refused() {
        let max_dirs = Policy::default().max_dirs;
        // Two directories each, within the number of files allowed.
        let files = |n: usize| -> serde_json::Value {
            let files: serde_json::Map<_, _> = (0..n)
                .map(|i| (format!("p{i}/q/f"), serde_json::Value::from("")))
                .collect();
            files.into()
        };
        assert!(with_files("sh", files(max_dirs / 2)).is_ok());
        let message = refusal(with_files("sh", files(max_dirs / 2 + 1)));
        assert_eq!(
            message,
            format!(
                "files make {} directories, at most {max_dirs} allowed",
                max_dirs + 2
            )
        );
    }

    #[test]
    fn a_directory_that_looks_like_a_file_is_refused_as_files_are() {
        let message = refusal(with_files(
            "sh",
            serde_json::json!({"data/in.txt": "", "d\u{430}ta": ""}),
        ));
        assert!(message.contains("looks like"), "{message}");
        // Names are bytes to the kernel: names that only differ in case are two files.
        let cased = with_files("sh", serde_json::json!({"Makefile": "", "makefile": ""}));
        assert!(cased.is_ok(), "{cased:?}");
    }

    #[test]
    fn the_longest_file_name_keeps_within_name_max_and_path_max() {
        let longest = "n".repeat(MAX_FILE_NAME_BYTES);
        assert!(with_files("sh", serde_json::json!({ longest.clone(): "" })).is_ok());
        let message = refusal(with_files(
            "sh",
            serde_json::json!({ format!("{longest}n"): "" }),
        ));
        assert!(message.contains("must be 1 to 255 bytes"), "{message}");
    }

    #[test]
    fn args_execve_would_refuse_are_refused() {
        let with_args = |args: Vec<String>| {
            job(
                serde_json::json!({"runtime": "sh", "code": "x", "args": args}),
                None,
            )
        };
        let max = Policy::default().max_args_bytes;
        let message = refusal(with_args(vec!["a".into(), "x".repeat(MAX_ARG_STRLEN)]));
        assert!(
            message.starts_with("args[1] is 131072 bytes, at most 131071"),
            "{message}"
        );
        let exactly = vec!["y".repeat(max - ARG_OVERHEAD_BYTES)];
        assert!(with_args(exactly).is_ok());
        let over = vec!["y".repeat(max - ARG_OVERHEAD_BYTES), String::new()];
        let message = refusal(with_args(over));
        assert!(
            message.starts_with(&format!("args take {} bytes", max + ARG_OVERHEAD_BYTES)),
            "{message}"
        );
        // Many short ones count their NULs and pointers too.
        let many = vec!["z".repeat(max / 256 - ARG_OVERHEAD_BYTES + 1); 256];
        assert!(refusal(with_args(many)).starts_with("args take"));
    }

    #[test]
    fn a_case_whose_args_execve_would_refuse_is_named() {
        let long = "x".repeat(Policy::default().max_args_bytes);
        let err = validate(
            request(serde_json::json!([{"name": "fine"}, {"name": "long", "args": [long]}])),
            &Policy::default(),
        );
        let Err(Rejection::Invalid(message)) = err else {
            panic!("{err:?}")
        };
        assert!(
            message.starts_with("case 2 (\"long\"): args take"),
            "{message}"
        );
    }

    #[test]
    fn a_suites_shared_files_are_checked_as_a_jobs() {
        let mut suite = request(serde_json::json!([{}]));
        suite.files = BTreeMap::from([
            ("a".to_owned(), Encoded::default()),
            ("a/b".to_owned(), Encoded::default()),
        ]);
        let err = validate(suite, &Policy::default());
        assert!(
            matches!(&err, Err(Rejection::Invalid(m)) if m.contains("cannot both be given")),
            "{err:?}"
        );
    }

    #[test]
    fn a_cpu_quota_is_optional_and_held_to_the_maximum_where_there_is_one() {
        let asking = |percent: Option<u64>, policy: &Policy| {
            let request = LimitsRequest {
                cpu_percent: percent,
                ..LimitsRequest::default()
            };
            resolve_limits(request, LimitsRequest::default(), policy)
                .map(|limits| limits.cpu_percent)
        };
        let open = Policy::default();
        assert_eq!(asking(None, &open), Ok(None), "no quota unless asked");
        assert_eq!(asking(Some(50), &open), Ok(Some(50)));
        assert_eq!(
            asking(Some(400), &open),
            Ok(Some(400)),
            "no maximum by default"
        );
        assert!(matches!(asking(Some(0), &open), Err(Rejection::Invalid(_))));
        let mut capped = Policy::default();
        capped.max_limits.cpu_percent = Some(100);
        assert_eq!(
            asking(None, &capped),
            Ok(Some(100)),
            "the cap holds the unasking too"
        );
        assert_eq!(
            asking(Some(101), &capped),
            Err(Rejection::Invalid(
                "limits.cpu_percent is 101, at most 100 allowed".into()
            ))
        );
        capped.default_limits.cpu_percent = Some(25);
        assert_eq!(asking(None, &capped), Ok(Some(25)));
    }

    #[test]
    fn a_file_name_given_twice_is_refused_not_one_of_the_two_lost() {
        let twice = r#"{"runtime": "sh", "code": "x", "files": {"a": "1", "b": "", "a": "2"}}"#;
        let job = serde_json::from_str::<JobRequest>(twice).expect_err("refused");
        assert!(
            job.to_string()
                .contains("files gives the file name \"a\" twice"),
            "{job}"
        );
        let suite = r#"{"runtime": "sh", "code": "x", "files": {"a": "", "a": ""}, "cases": [{}]}"#;
        let suite = serde_json::from_str::<BatchRequest>(suite).expect_err("refused");
        assert!(suite.to_string().contains("twice"), "{suite}");
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
                files: BTreeMap::from([("data".to_owned(), "x".repeat(2 << 20).into())]),
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
