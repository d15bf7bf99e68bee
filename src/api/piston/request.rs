//! A Piston execute request read into a kiln job: the runtime its `language` and `version`
//! select, its files (the entry file as the job's code, the others as its files), its stdin and
//! args, and its limits from Piston's units (ms, bytes) into kiln's. Each check is Piston's own
//! (`get_job` of `api/src/api/v2.js`), in its order and its words, with the operator's caps as
//! Piston's configured limits.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};

use super::runtimes::{Offered, matching};
use crate::job::Limits;
use crate::job::content::Encoded;
use crate::job::validate::{JobRequest, LimitsRequest};

const MIB: u64 = 1 << 20;

/// What a request is run as: the job, and the runtime's Piston language and version it answers
/// with.
#[derive(Debug)]
pub struct Execution {
    pub job: JobRequest,
    pub language: String,
    pub version: String,
    pub compiled: bool,
}

/// The most a request may ask of each stage, as Piston's configured limits: the operator's caps
/// for the run, the build's limits for the compile step.
pub struct Caps {
    pub run: Limits,
    pub compile: Limits,
}

/// A refusal, in Piston's words.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(message.into()))
}

/// Reads a request. `interactive` is the WebSocket's: its stdin is what is written to it as it
/// runs, and the request's `stdin` is ignored, as Piston ignores it there.
pub fn read(
    body: &Value,
    offered: &[Offered<'_>],
    caps: &Caps,
    interactive: bool,
) -> Result<Execution, Refused> {
    let Some(fields) = body.as_object() else {
        return refuse("language is required as a string");
    };
    let Some(language) = non_empty_text(fields, "language") else {
        return refuse("language is required as a string");
    };
    let Some(version) = non_empty_text(fields, "version") else {
        return refuse("version is required as a string");
    };
    let Some(Value::Array(files)) = fields.get("files") else {
        return refuse("files is required as an array");
    };
    for (i, file) in files.iter().enumerate() {
        if !file.get("content").is_some_and(Value::is_string) {
            return refuse(format!("files[{i}].content is required as a string"));
        }
    }
    let Some(runtime) = matching(offered, language, version) else {
        return refuse(format!("{language}-{version} runtime is unknown"));
    };
    let files = decoded_files(files)?;
    let Some(entry) = files.iter().position(|file| file.utf8) else {
        return refuse("files must include at least one utf8 encoded file");
    };
    let limits = read_limits(fields, caps)?;
    let args = match fields.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(args)) => args
            .iter()
            .map(|arg| arg.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map_or_else(|| refuse("args must be an array of strings"), Ok)?,
        Some(_) => return refuse("args must be an array of strings"),
    };
    let stdin = match fields.get("stdin") {
        _ if interactive => String::new(),
        None | Some(Value::Null) => "\n".to_owned(),
        // Piston ends what it is given with a newline.
        Some(Value::String(stdin)) if stdin.ends_with('\n') => stdin.clone(),
        Some(Value::String(stdin)) => format!("{stdin}\n"),
        Some(_) => return refuse("stdin must be a string"),
    };
    let mut code = None;
    let mut others = BTreeMap::new();
    for (i, file) in files.into_iter().enumerate() {
        match i == entry {
            true => code = Some(file.content),
            false => {
                others.insert(file.name, file.content);
            }
        }
    }
    let job = JobRequest {
        runtime: runtime.runtime.name.clone(),
        code: code.unwrap_or_default(),
        stdin: Encoded::from(crate::job::content::Content::from(stdin)),
        args,
        files: others,
        outputs: Vec::new(),
        limits,
        priority: 0,
        max_attempts: None,
        interactive,
        callback_url: None,
        callback_shape: Default::default(),
    };
    Ok(Execution {
        job,
        language: runtime.language.to_owned(),
        version: runtime.version.to_string(),
        compiled: runtime.runtime.compile.is_some(),
    })
}

fn non_empty_text<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields
        .get(name)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

struct File {
    name: String,
    content: Encoded,
    utf8: bool,
}

/// Each file's bytes by its `encoding` (anything but `base64` and `hex` is `utf8`, as Piston
/// has it), named `file{i}.code` when it has no name, as Piston names it.
fn decoded_files(files: &[Value]) -> Result<Vec<File>, Refused> {
    let mut decoded = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let content = file.get("content").and_then(Value::as_str).unwrap_or("");
        let name = match file.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => format!("file{i}.code"),
        };
        let (bytes, utf8) = match file.get("encoding").and_then(Value::as_str) {
            Some("base64") => (
                base64::engine::general_purpose::STANDARD
                    .decode(content.trim())
                    .map_err(|_| Refused(format!("files[{i}].content is not valid base64")))?,
                false,
            ),
            Some("hex") => (
                hex(content)
                    .ok_or_else(|| Refused(format!("files[{i}].content is not valid hex")))?,
                false,
            ),
            _ => (content.as_bytes().to_vec(), true),
        };
        decoded.push(File {
            name,
            content: Encoded::from(crate::job::content::Content(bytes)),
            utf8,
        });
    }
    Ok(decoded)
}

fn hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

/// The six constraints, each held to its configured limit in Piston's words. Only the run's
/// become the job's limits: kiln builds a compiled runtime under the operator's build limits,
/// so the compile constraints are checked and then have no effect.
fn read_limits(fields: &Map<String, Value>, caps: &Caps) -> Result<LimitsRequest, Refused> {
    let mut limits = LimitsRequest::default();
    for constraint in ["memory_limit", "timeout", "cpu_time"] {
        for stage in ["compile", "run"] {
            let name = format!("{stage}_{constraint}");
            let Some(value) = fields.get(&name) else {
                continue;
            };
            // Piston skips a constraint that is falsy: absent, null, 0, false or "".
            let falsy = match value {
                Value::Null => true,
                Value::Bool(b) => !b,
                Value::Number(n) => n.as_f64() == Some(0.0),
                Value::String(s) => s.is_empty(),
                _ => false,
            };
            if falsy {
                continue;
            }
            let Some(value) = value.as_f64() else {
                return refuse(format!("If specified, {name} must be a number"));
            };
            // -1 is Piston's "no limit" for memory, which every client sends by default: here,
            // the runtime's default limit.
            if constraint == "memory_limit" && value == -1.0 {
                continue;
            }
            let stage_caps = match stage {
                "run" => &caps.run,
                _ => &caps.compile,
            };
            let configured = match constraint {
                "memory_limit" => stage_caps.memory_mb * MIB,
                "timeout" => stage_caps.wall_ms,
                _ => stage_caps.cpu_ms,
            };
            if value > configured as f64 {
                return refuse(format!(
                    "{name} cannot exceed the configured limit of {configured}"
                ));
            }
            if value < 0.0 {
                return refuse(format!("{name} must be non-negative"));
            }
            if stage == "run" {
                let ms = (value.ceil() as u64).max(1);
                match constraint {
                    "memory_limit" => {
                        limits.memory_mb = Some(((value / MIB as f64).ceil() as u64).max(1));
                    }
                    "timeout" => limits.wall_ms = Some(ms),
                    _ => limits.cpu_ms = Some(ms),
                }
            }
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        let limits = Limits {
            wall_ms: 10_000,
            cpu_ms: 5_000,
            memory_mb: 256,
            processes: 64,
            output_bytes: 1 << 20,
            file_bytes: 1 << 20,
            cpu_percent: None,
        };
        Caps {
            run: limits,
            compile: limits,
        }
    }

    #[test]
    fn constraints_are_held_to_the_configured_limits_in_pistons_words() {
        let fields = |body: Value| body.as_object().cloned().expect("object");
        let read = |body| read_limits(&fields(body), &caps());
        assert_eq!(
            read(serde_json::json!({"run_timeout": 10_001})),
            Err(Refused(
                "run_timeout cannot exceed the configured limit of 10000".into()
            ))
        );
        assert_eq!(
            read(serde_json::json!({"compile_cpu_time": "1"})),
            Err(Refused(
                "If specified, compile_cpu_time must be a number".into()
            ))
        );
        assert_eq!(
            read(serde_json::json!({"run_cpu_time": -5})),
            Err(Refused("run_cpu_time must be non-negative".into()))
        );
        let limits = read(serde_json::json!({
            "run_timeout": 2500, "run_cpu_time": 0, "run_memory_limit": 100_000_000,
            "compile_memory_limit": -1, "compile_timeout": 10_000,
        }))
        .expect("within the limits");
        assert_eq!(limits.wall_ms, Some(2500));
        assert_eq!(limits.cpu_ms, None, "0 is no constraint");
        assert_eq!(limits.memory_mb, Some(96), "bytes, rounded up to MiB");
    }

    #[test]
    fn files_are_decoded_by_their_encoding_and_named_as_piston_names_them() {
        let files = serde_json::json!([
            {"content": "print(1)"},
            {"name": "data.bin", "content": "AAE=", "encoding": "base64"},
            {"name": "x.hex", "content": "ff00", "encoding": "hex"},
            {"content": "odd", "encoding": "latin1"},
        ]);
        let decoded = decoded_files(files.as_array().expect("array")).expect("decoded");
        let names: Vec<&str> = decoded.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["file0.code", "data.bin", "x.hex", "file3.code"]);
        let utf8: Vec<bool> = decoded.iter().map(|f| f.utf8).collect();
        assert_eq!(utf8, [true, false, false, true]);
        assert_eq!(hex("ff00"), Some(vec![0xff, 0]));
        assert_eq!(hex("f"), None);
        let bad = serde_json::json!([{"content": "!!", "encoding": "base64"}]);
        assert!(decoded_files(bad.as_array().expect("array")).is_err());
    }
}
