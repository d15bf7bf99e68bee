//! What `kiln submit` sends: the body of `POST /v1/jobs` made from a file (or stdin), the
//! runtime its shebang line or extension names among those the server offers, the files put
//! beside it, and the limits, priority and callback given on the command line.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::ClientError;
use crate::job::content::Content;

/// The body of `POST /v1/jobs`. Absent options are left out rather than sent as null, so the
/// server's own defaults apply.
#[derive(Debug, Serialize)]
pub(super) struct Submission {
    pub(super) runtime: String,
    pub(super) code: Content,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stdin: Option<Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) files: BTreeMap<String, Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) outputs: Vec<String>,
    #[serde(skip_serializing_if = "Limits::is_empty")]
    pub(super) limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) callback_url: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub(super) struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) wall_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cpu_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) memory_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) processes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) file_bytes: Option<u64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// Picks the runtime for `file` among those the server lists (`GET /v1/runtimes`): the one its
/// shebang line names (`#!/usr/bin/env python3`, `#!/bin/bash`: the interpreter's name, by
/// runtime name or alias), else the one its extension belongs to; where several claim the
/// extension (`.sh`), the first listed.
pub(super) fn runtime_for(file: &Path, code: &str, listing: &Value) -> Result<String, ClientError> {
    let runtimes = listing
        .get("runtimes")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let names = |runtime: &Value| -> Vec<String> {
        let name = runtime
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let aliases = runtime
            .get("aliases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned));
        name.into_iter().chain(aliases).collect()
    };
    let first_name = |runtime: &Value| names(runtime).into_iter().next();
    if let Some(interpreter) = shebang_interpreter(code) {
        return runtimes
            .iter()
            .find(|r| names(r).contains(&interpreter))
            .and_then(first_name)
            .ok_or_else(|| {
                ClientError::Usage(format!(
                    "{} starts with #! naming {interpreter}, which is no runtime of this server                      (kiln runtimes lists them); pass --runtime",
                    file.display()
                ))
            });
    }
    let extension = file
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.rfind('.').filter(|&i| i > 0).map(|i| &name[i..]));
    let claims = |runtime: &&Value| {
        runtime
            .get("extensions")
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().any(|e| e.as_str() == extension))
    };
    match extension.and_then(|_| runtimes.iter().find(claims)) {
        Some(runtime) => first_name(runtime)
            .ok_or_else(|| ClientError::Usage("the server listed a runtime without a name".into())),
        None => Err(ClientError::Usage(format!(
            "cannot tell the runtime of {} from a #! line or its extension (kiln runtimes lists              what this server offers); pass --runtime",
            file.display()
        ))),
    }
}

/// The interpreter a `#!` line names: its program's file name, or for `env` the program env
/// runs (past its options, `-S` included).
fn shebang_interpreter(code: &str) -> Option<String> {
    let line = code.strip_prefix("#!")?.lines().next()?;
    let mut words = line.split_whitespace();
    let program = words.next()?;
    let name = program.rsplit('/').next()?;
    if name != "env" {
        return Some(name.to_owned());
    }
    words
        .find(|w| !w.starts_with('-') && !w.contains('='))
        .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
}

/// [`read_content`], where `-` is this command's standard input.
pub(super) fn read_input(path: &Path) -> Result<Content, ClientError> {
    if path != Path::new("-") {
        return read_content(path);
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|source| ClientError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    Ok(Content(bytes))
}

/// `--file PATH` or `--file NAME=PATH`, each read in under its name.
pub(super) fn read_files(given: &[String]) -> Result<BTreeMap<String, Content>, ClientError> {
    let mut files = BTreeMap::new();
    for given in given {
        let (name, path) = match given.split_once('=') {
            Some((name, path)) => (name.to_owned(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(given);
                let name = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .ok_or_else(|| {
                        ClientError::Usage(format!("--file {given}: name the file as NAME=PATH"))
                    })?
                    .to_owned();
                (name, path)
            }
        };
        let contents = read_content(&path)?;
        if files.insert(name.clone(), contents).is_some() {
            return Err(ClientError::Usage(format!(
                "--file: two files are named {name:?}"
            )));
        }
    }
    Ok(files)
}

/// Input piped to `kiln submit` is not the job's unless `--stdin -` says so: say it, rather
/// than drop it without a word.
pub(super) fn warn_if_stdin_is_piped() {
    use std::os::unix::fs::FileTypeExt;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return;
    }
    let piped = std::fs::metadata("/dev/stdin")
        .is_ok_and(|meta| meta.file_type().is_fifo() || meta.file_type().is_file());
    if piped {
        super::note("standard input is not sent to the job; pass --stdin - to send it");
    }
}

/// A file to send as it is: as text when it is UTF-8, else in base64 (see [`Content`]).
pub(super) fn read_content(path: &Path) -> Result<Content, ClientError> {
    std::fs::read(path)
        .map(Content)
        .map_err(|source| ClientError::ReadFile {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listing() -> Value {
        json!({"runtimes": [
            {"name": "bash", "aliases": [], "extensions": [".sh"]},
            {"name": "cpp", "aliases": ["c++"], "extensions": [".cpp", ".cc"]},
            {"name": "python", "aliases": ["python3", "py"], "extensions": [".py"]},
            {"name": "sh", "aliases": [], "extensions": [".sh"]},
        ]})
    }

    fn picked(file: &str, code: &str) -> Result<String, String> {
        runtime_for(Path::new(file), code, &listing()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_runtime_comes_from_the_shebang_then_the_extension() {
        assert_eq!(picked("a/b.py", "print(1)"), Ok("python".into()));
        assert_eq!(picked("x.cc", "int main() {}"), Ok("cpp".into()));
        assert_eq!(
            picked("run.sh", "echo"),
            Ok("bash".into()),
            "the first listed"
        );
        assert_eq!(picked("run.sh", "#!/bin/sh\necho"), Ok("sh".into()));
        assert_eq!(
            picked("tool", "#!/usr/bin/env python3\n"),
            Ok("python".into())
        );
        assert_eq!(
            picked("tool", "#!/usr/bin/env -S python3 -u\n"),
            Ok("python".into())
        );
        for (file, code) in [("main.rb", "puts 1"), ("Makefile", "all:"), (".py", "")] {
            let err = picked(file, code).expect_err(file);
            assert!(err.contains("--runtime"), "{file}: {err}");
        }
        let unknown = picked("x.py", "#!/usr/bin/perl\n").expect_err("perl is not listed");
        assert!(unknown.contains("naming perl"), "{unknown}");
    }

    #[test]
    fn submission_leaves_out_what_was_not_given() {
        let bare = Submission {
            runtime: "python".to_owned(),
            code: "print(1)".into(),
            stdin: None,
            args: Vec::new(),
            files: BTreeMap::new(),
            outputs: Vec::new(),
            limits: Limits::default(),
            priority: None,
            max_attempts: None,
            callback_url: None,
        };
        assert_eq!(
            serde_json::to_value(&bare).ok(),
            Some(json!({"runtime": "python", "code": "print(1)"}))
        );
        let full = Submission {
            stdin: Some(Content(b"in\xff".to_vec())),
            args: vec!["-v".to_owned()],
            files: BTreeMap::from([("data.txt".to_owned(), "1 2".into())]),
            outputs: vec!["out/*".to_owned()],
            limits: Limits {
                wall_ms: Some(500),
                ..Limits::default()
            },
            priority: Some(-3),
            callback_url: Some("http://127.0.0.1:9/hook".to_owned()),
            ..bare
        };
        assert_eq!(
            serde_json::to_value(&full).ok(),
            Some(
                json!({"runtime": "python", "code": "print(1)", "stdin": {"base64": "aW7/"},
                "args": ["-v"], "files": {"data.txt": "1 2"}, "outputs": ["out/*"],
                "limits": {"wall_ms": 500}, "priority": -3,
                "callback_url": "http://127.0.0.1:9/hook"})
            )
        );
    }
}
