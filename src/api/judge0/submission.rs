//! A Judge0 submission's body read into what kiln runs: the runtime its `language_id` names, the
//! program, its input, and its limits from Judge0's units (seconds, kilobytes) into kiln's,
//! checked against Judge0 v1.13.1's own bounds and then held to the operator's caps. Every field
//! is read from the JSON object by hand, as Rails reads a form, so that each wrong field gets its
//! own message in Judge0's words and the fields Judge0 does not permit are ignored as it ignores
//! them.
//!
//! What kiln cannot do as Judge0 does is refused by field, as a Judge0 whose operator turned the
//! feature off refuses it: compiler options, the network (kiln's sandbox has none to give), and
//! stderr merged into stdout; so are callbacks when the operator turned them off. A
//! `callback_url` is otherwise a kiln webhook of Judge0's shape (a PUT of the submission), held
//! to kiln's callback host policy; `additional_files` become the job's files (`files`). `number_of_runs`, `cpu_extra_time`, `stack_limit` and the two
//! per-process flags are checked and then have no effect: kiln runs a program once, kills it at
//! its CPU limit, and leaves its stack to its memory limit.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};

use super::error::FieldErrors;
use super::files::{self, MULTI_FILE, PROJECT_DRIVER};
use crate::job::content::{Content, Encoded};
use crate::job::validate::{CaseRequest, JobRequest, LimitsRequest, Rejection};
use crate::job::{CallbackShape, Limits};

/// A numeric field's bounds in Judge0 v1.13.1 (`app/models/submission.rb`, defaults of
/// `config.rb`): the least allowed, whether the least itself is allowed, the most.
struct Bounds {
    least: f64,
    least_allowed: bool,
    most: f64,
}

const CPU_TIME_LIMIT: Bounds = Bounds::from(0.0, 15.0);
const CPU_EXTRA_TIME: Bounds = Bounds::from(0.0, 5.0);
const WALL_TIME_LIMIT: Bounds = Bounds::from(1.0, 20.0);
const MEMORY_LIMIT: Bounds = Bounds::from(2048.0, 512_000.0);
const STACK_LIMIT: Bounds = Bounds::from(0.0, 128_000.0);
const MAX_PROCESSES: Bounds = Bounds::above(0.0, 120.0);
const MAX_FILE_SIZE: Bounds = Bounds::from(0.0, 4096.0);
const NUMBER_OF_RUNS: Bounds = Bounds::above(0.0, 20.0);
/// The longest `compiler_options` and `command_line_arguments`, in characters.
const MAX_OPTIONS_CHARS: usize = 512;

impl Bounds {
    const fn from(least: f64, most: f64) -> Bounds {
        Bounds {
            least,
            least_allowed: true,
            most,
        }
    }

    const fn above(least: f64, most: f64) -> Bounds {
        Bounds {
            least,
            least_allowed: false,
            most,
        }
    }
}

/// The maxima Judge0 v1.13.1 allows, in its units, for `/config_info`.
pub struct Maxima;

impl Maxima {
    pub const CPU_TIME_LIMIT: f64 = CPU_TIME_LIMIT.most;
    pub const CPU_EXTRA_TIME: f64 = CPU_EXTRA_TIME.most;
    pub const WALL_TIME_LIMIT: f64 = WALL_TIME_LIMIT.most;
    pub const MEMORY_LIMIT: f64 = MEMORY_LIMIT.most;
    pub const STACK_LIMIT: f64 = STACK_LIMIT.most;
    pub const MAX_PROCESSES: f64 = MAX_PROCESSES.most;
    pub const MAX_FILE_SIZE: f64 = MAX_FILE_SIZE.most;
    pub const NUMBER_OF_RUNS: f64 = NUMBER_OF_RUNS.most;
}

/// A submission as kiln will run it.
#[derive(Clone, Debug)]
pub struct Submission {
    pub runtime: String,
    pub code: Content,
    pub stdin: Content,
    pub expected_output: Option<Content>,
    pub args: Vec<String>,
    /// Unpacked from `additional_files`.
    pub files: BTreeMap<String, Content>,
    pub limits: LimitsRequest,
    pub callback_url: Option<String>,
}

/// What the operator lets a submission ask for, of what Judge0's operators may switch off.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    pub callbacks: bool,
    /// What `additional_files` may unpack to.
    pub extract: files::Bounds,
}

/// Reads one submission. `runtime_of` names the kiln runtime of a Judge0 language id offered
/// here; `caps` are the operator's maxima, which a limit asked above is held to.
pub fn read(
    body: &Value,
    base64: bool,
    runtime_of: impl Fn(u64) -> Option<String>,
    caps: &Limits,
    allowed: Allowed,
) -> Result<Submission, FieldErrors> {
    let mut errors = FieldErrors::new();
    let Some(fields) = body.as_object() else {
        errors.insert("base", vec!["a submission must be a JSON object".into()]);
        return Err(errors);
    };
    let mut reader = Reader {
        fields,
        errors: &mut errors,
    };
    let language_id = reader.number("language_id");
    let project = language_id == Some(MULTI_FILE as f64);
    let code = reader.bytes("source_code", base64);
    let blank = code.as_ref().is_none_or(Content::is_empty);
    let code = match project {
        // A multi-file program is its archive's scripts, which the driver runs.
        true if !blank => {
            reader.fail("source_code", "must be blank");
            None
        }
        true => Some(Content::from(PROJECT_DRIVER)),
        false => code,
    };
    if !project && blank && !reader.errors.contains_key("source_code") {
        reader.fail("source_code", "can't be blank");
    }
    // Always base64, whatever the query says, as Judge0 reads it.
    let files = match reader.text("additional_files").filter(|f| !f.is_empty()) {
        None if project => {
            reader.fail("additional_files", "can't be blank");
            BTreeMap::new()
        }
        None => BTreeMap::new(),
        Some(encoded) => match decode(&encoded) {
            Err(()) => {
                reader.fail("additional_files", "is not valid base64");
                BTreeMap::new()
            }
            Ok(archive) => files::unpack(&archive, allowed.extract).unwrap_or_else(|why| {
                reader.fail("additional_files", why);
                BTreeMap::new()
            }),
        },
    };
    let runtime = match language_id {
        None => {
            reader.fail("language_id", "can't be blank");
            None
        }
        Some(id) => {
            let known = (id.fract() == 0.0 && id >= 0.0)
                .then(|| runtime_of(id as u64))
                .flatten();
            if known.is_none() {
                reader.fail(
                    "language_id",
                    format!("language with id {} doesn't exist", shown_number(id)),
                );
            }
            known
        }
    };
    let stdin = reader.bytes("stdin", base64).unwrap_or_default();
    let expected_output = reader.bytes("expected_output", base64);
    let args = match reader.text("command_line_arguments") {
        Some(line) if line.chars().count() > MAX_OPTIONS_CHARS => {
            reader.fail(
                "command_line_arguments",
                format!("is too long (maximum is {MAX_OPTIONS_CHARS} characters)"),
            );
            Vec::new()
        }
        Some(line) => shell_words(&line).unwrap_or_else(|why| {
            reader.fail("command_line_arguments", why);
            Vec::new()
        }),
        None => Vec::new(),
    };
    if reader
        .text("compiler_options")
        .is_some_and(|o| !o.is_empty())
    {
        reader.fail(
            "compiler_options",
            "setting compiler options is not allowed",
        );
    }
    let callback_url = reader.text("callback_url").filter(|u| !u.is_empty());
    if callback_url.is_some() && !allowed.callbacks {
        reader.fail("callback_url", "setting callback is not allowed");
    }
    if reader.flag("enable_network") == Some(true) {
        reader.fail("enable_network", "enabling network is not allowed");
    }
    if reader.flag("redirect_stderr_to_stdout") == Some(true) {
        reader.fail(
            "redirect_stderr_to_stdout",
            "redirecting stderr to stdout is not allowed",
        );
    }
    for flag in [
        "enable_per_process_and_thread_time_limit",
        "enable_per_process_and_thread_memory_limit",
    ] {
        if reader.flag(flag) == Some(true) {
            reader.fail(flag, "this option cannot be enabled");
        }
    }
    reader.bounded("number_of_runs", &NUMBER_OF_RUNS);
    reader.bounded("cpu_extra_time", &CPU_EXTRA_TIME);
    reader.bounded("stack_limit", &STACK_LIMIT);
    let seconds = |s: f64| (s * 1000.0).ceil() as u64;
    let kilobytes_to_mb = |kb: f64| (kb / 1024.0).ceil() as u64;
    // A Judge0 limit of 0 is "none at all", which kiln has not: the least kiln can give.
    let limits = LimitsRequest {
        cpu_ms: reader
            .bounded("cpu_time_limit", &CPU_TIME_LIMIT)
            .map(|s| seconds(s).clamp(1, caps.cpu_ms)),
        wall_ms: reader
            .bounded("wall_time_limit", &WALL_TIME_LIMIT)
            .map(|s| seconds(s).clamp(1, caps.wall_ms)),
        memory_mb: reader
            .bounded("memory_limit", &MEMORY_LIMIT)
            .map(|kb| kilobytes_to_mb(kb).clamp(1, caps.memory_mb)),
        processes: reader
            .bounded("max_processes_and_or_threads", &MAX_PROCESSES)
            .map(|n| (n.ceil() as u64).clamp(1, caps.processes)),
        file_bytes: reader
            .bounded("max_file_size", &MAX_FILE_SIZE)
            .map(|kb| ((kb * 1024.0).ceil() as u64).clamp(1, caps.file_bytes)),
        output_bytes: None,
        cpu_percent: None,
    };
    match (errors.is_empty(), runtime, code) {
        (true, Some(runtime), Some(code)) => Ok(Submission {
            runtime,
            code,
            stdin,
            expected_output,
            args,
            files,
            limits,
            callback_url,
        }),
        _ => Err(errors),
    }
}

struct Reader<'a> {
    fields: &'a Map<String, Value>,
    errors: &'a mut FieldErrors,
}

impl Reader<'_> {
    fn fail(&mut self, field: &'static str, message: impl Into<String>) {
        self.errors.entry(field).or_default().push(message.into());
    }

    /// A field of what the program is given, decoded from base64 when asked, which may then be
    /// any bytes; `None` when absent or null.
    fn bytes(&mut self, field: &'static str, base64: bool) -> Option<Content> {
        match self.fields.get(field)? {
            Value::String(encoded) if base64 => match decode(encoded) {
                Ok(bytes) => Some(Content(bytes)),
                Err(()) => {
                    self.fail(field, "is not valid base64");
                    None
                }
            },
            Value::Number(_) if base64 => {
                self.fail(field, "must be a string");
                None
            }
            _ => self.text(field).map(Content::from),
        }
    }

    /// A text field; `None` when absent or null.
    fn text(&mut self, field: &'static str) -> Option<String> {
        match self.fields.get(field)? {
            Value::Null => None,
            Value::String(text) => Some(text.clone()),
            // Rails would take a number for text; so does kiln.
            Value::Number(n) => Some(n.to_string()),
            _ => {
                self.fail(field, "must be a string");
                None
            }
        }
    }

    /// A number, given as a JSON number or a numeric string as a form would send it.
    fn number(&mut self, field: &'static str) -> Option<f64> {
        let parsed = match self.fields.get(field)? {
            Value::Null => return None,
            Value::Number(n) => n.as_f64(),
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            _ => None,
        };
        if parsed.is_none() {
            self.fail(field, "is not a number");
        }
        parsed
    }

    /// A number within Judge0's bounds for it, in Judge0's words when it is not.
    fn bounded(&mut self, field: &'static str, bounds: &Bounds) -> Option<f64> {
        let value = self.number(field)?;
        if bounds.least_allowed && value < bounds.least {
            self.fail(
                field,
                format!(
                    "must be greater than or equal to {}",
                    shown_number(bounds.least)
                ),
            );
            return None;
        }
        if !bounds.least_allowed && value <= bounds.least {
            self.fail(
                field,
                format!("must be greater than {}", shown_number(bounds.least)),
            );
            return None;
        }
        if value > bounds.most {
            self.fail(
                field,
                format!(
                    "must be less than or equal to {}",
                    shown_number(bounds.most)
                ),
            );
            return None;
        }
        Some(value)
    }

    fn flag(&mut self, field: &'static str) -> Option<bool> {
        match self.fields.get(field)? {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" || s.is_empty() => Some(false),
            _ => {
                self.fail(field, "is not included in the list");
                None
            }
        }
    }
}

/// A number as Ruby shows it in a message: `20`, not `20.0`.
fn shown_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Base64 as Ruby's `Base64.decode64` takes it: line breaks and other white space anywhere,
/// padding optional.
pub fn decode(encoded: &str) -> Result<Vec<u8>, ()> {
    let compact: String = encoded
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).map_err(|_| ())
}

/// Base64 as Ruby's `Base64.encode64` writes it, which is what Judge0 answers: a line break
/// after every 60 characters and at the end.
pub fn encode(bytes: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut lines = String::with_capacity(flat.len() + flat.len() / 60 + 1);
    for chunk in flat.as_bytes().chunks(60) {
        // Base64 is ASCII, so every chunk is whole characters.
        lines.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        lines.push('\n');
    }
    lines
}

/// `command_line_arguments` as Judge0's run script hands them to the shell: words split at
/// white space, with `'…'`, `"…"` and `\` quoting as `sh` reads them. Nothing is expanded.
pub fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err("has an unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err("has an unterminated double quote".into()),
                        },
                        Some(c) => current.push(c),
                        None => return Err("has an unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                if let Some(c) = chars.next() {
                    word.get_or_insert_with(String::new).push(c);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

impl Submission {
    pub fn job_request(self) -> JobRequest {
        JobRequest {
            runtime: self.runtime,
            code: self.code.into(),
            stdin: self.stdin.into(),
            args: self.args,
            files: encoded(self.files),
            outputs: Vec::new(),
            limits: self.limits,
            priority: 0,
            max_attempts: None,
            callback_url: self.callback_url,
            callback_shape: CallbackShape::Judge0,
            interactive: false,
        }
    }

    /// The submission as a case of a suite, named by its place in it.
    pub fn case_request(self, name: String) -> CaseRequest {
        CaseRequest {
            name: Some(name),
            group: None,
            runtime: Some(self.runtime),
            code: Some(self.code.into()),
            files: encoded(self.files),
            stdin: self.stdin.into(),
            args: self.args,
            expected_output: self.expected_output.map(Encoded::from),
            limits: self.limits,
        }
    }
}

fn encoded(files: BTreeMap<String, Content>) -> BTreeMap<String, Encoded> {
    files
        .into_iter()
        .map(|(name, content)| (name, Encoded::from(content)))
        .collect()
}

/// kiln's refusal of a submission Judge0's checks let through (code too large, a limit above
/// a runtime's needs, ...), under the Judge0 field it is about.
pub fn rejected(rejection: &Rejection) -> FieldErrors {
    let message = rejection.to_string();
    let field = [
        ("code", "source_code"),
        ("stdin", "stdin"),
        ("args", "command_line_arguments"),
        ("expected_output", "expected_output"),
        ("limits.wall_ms", "wall_time_limit"),
        ("limits.cpu_ms", "cpu_time_limit"),
        ("limits.memory_mb", "memory_limit"),
        ("limits.processes", "max_processes_and_or_threads"),
        ("limits.file_bytes", "max_file_size"),
        ("callback_url", "callback_url"),
        ("files", "additional_files"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("base", |(_, field)| field);
    FieldErrors::from([(field, vec![message])])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps() -> Limits {
        Limits {
            wall_ms: 10_000,
            cpu_ms: 10_000,
            memory_mb: 256,
            processes: 64,
            output_bytes: 1 << 20,
            file_bytes: 1 << 20,
            cpu_percent: None,
        }
    }

    fn allowed() -> Allowed {
        Allowed {
            callbacks: true,
            extract: files::Bounds {
                max_files: 8,
                max_bytes: 1 << 20,
            },
        }
    }

    fn runtime_of(id: u64) -> Option<String> {
        (id == 71).then(|| "python".to_owned())
    }

    #[test]
    fn judge0_units_become_kiln_limits_held_to_the_operators_caps() {
        let body = json!({
            "source_code": "print(1)", "language_id": 71, "cpu_time_limit": "2.5",
            "wall_time_limit": 20, "memory_limit": 128000, "max_file_size": 1,
            "max_processes_and_or_threads": 120,
        });
        let submission = read(&body, false, runtime_of, &caps(), allowed()).expect("valid");
        assert_eq!(submission.runtime, "python");
        assert_eq!(submission.limits.cpu_ms, Some(2500));
        assert_eq!(submission.limits.wall_ms, Some(10_000), "20 s held to 10 s");
        assert_eq!(submission.limits.memory_mb, Some(125));
        assert_eq!(submission.limits.file_bytes, Some(1024));
        assert_eq!(submission.limits.processes, Some(64));
        assert_eq!(submission.limits.output_bytes, None);
    }

    #[test]
    fn each_wrong_field_gets_its_own_messages_in_judge0_words() {
        let body = json!({
            "wall_time_limit": 21, "memory_limit": 100, "number_of_runs": 0,
            "cpu_time_limit": "fast", "callback_url": "http://x", "enable_network": true,
            "ignored_field": 1,
        });
        let off = Allowed {
            callbacks: false,
            ..allowed()
        };
        let errors = read(&body, false, runtime_of, &caps(), off).expect_err("invalid");
        let expected = FieldErrors::from([
            ("source_code", vec!["can't be blank".to_owned()]),
            ("language_id", vec!["can't be blank".to_owned()]),
            (
                "wall_time_limit",
                vec!["must be less than or equal to 20".to_owned()],
            ),
            (
                "memory_limit",
                vec!["must be greater than or equal to 2048".to_owned()],
            ),
            ("number_of_runs", vec!["must be greater than 0".to_owned()]),
            ("cpu_time_limit", vec!["is not a number".to_owned()]),
            (
                "callback_url",
                vec!["setting callback is not allowed".to_owned()],
            ),
            (
                "enable_network",
                vec!["enabling network is not allowed".to_owned()],
            ),
        ]);
        assert_eq!(errors, expected);
        let unknown = read(
            &json!({"source_code": "x", "language_id": 999}),
            false,
            runtime_of,
            &caps(),
            allowed(),
        );
        assert_eq!(
            unknown.expect_err("unknown language")["language_id"],
            ["language with id 999 doesn't exist"]
        );
    }

    #[test]
    fn base64_is_read_with_line_breaks_and_written_as_ruby_writes_it() {
        assert_eq!(
            decode("aGVsbG8s\nIEp1ZGdlMAo=\n"),
            Ok(b"hello, Judge0\n".to_vec())
        );
        assert_eq!(decode("aGk"), Ok(b"hi".to_vec()), "padding is optional");
        assert_eq!(decode("not base64!"), Err(()));
        assert_eq!(encode(b"hello, Judge0\n"), "aGVsbG8sIEp1ZGdlMAo=\n");
        assert_eq!(encode(b""), "");
        let long = encode(&[0u8; 60]);
        let lines: Vec<&str> = long.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 60);
        assert!(long.ends_with('\n'));
        let body = json!({"source_code": "cHJpbnQoMSk=\n", "language_id": 71, "stdin": "/w=="});
        let read = read(&body, true, runtime_of, &caps(), allowed()).expect("any bytes");
        assert_eq!(
            read.stdin,
            Content(vec![0xff]),
            "bytes that are not UTF-8, kept"
        );
    }

    #[test]
    fn command_line_arguments_are_split_as_sh_splits_them() {
        assert_eq!(
            shell_words(r#"a  'b c' "d \"e\"" f\ g"#),
            Ok(vec![
                "a".into(),
                "b c".into(),
                "d \"e\"".into(),
                "f g".into()
            ])
        );
        assert_eq!(shell_words("''"), Ok(vec![String::new()]));
        assert!(shell_words("'open").is_err());
    }
}
