//! What `kiln submit` sends: the body of `POST /v1/jobs` made from a file, the runtime its
//! extension names, and the limits given on the command line.

use std::path::Path;

use serde::Serialize;

use super::ClientError;

/// The body of `POST /v1/jobs`. Absent options are left out rather than sent as null, so the
/// server's own defaults apply.
#[derive(Debug, Serialize)]
pub(super) struct Submission {
    pub(super) runtime: String,
    pub(super) code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) stdin: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) args: Vec<String>,
    #[serde(skip_serializing_if = "Limits::is_empty")]
    pub(super) limits: Limits,
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
    pub(super) output_bytes: Option<u64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// Picks the runtime from the file's extension, for the runtimes whose extension is unambiguous.
pub(super) fn runtime_for(file: &Path) -> Result<&'static str, ClientError> {
    match file.extension().and_then(|ext| ext.to_str()) {
        Some("py") => Ok("python"),
        Some("sh") => Ok("bash"),
        _ => Err(ClientError::Usage(format!(
            "cannot tell the runtime of {} from its extension; pass --runtime",
            file.display()
        ))),
    }
}

/// Code and stdin travel as JSON strings, so they must be UTF-8 text.
pub(super) fn read_text(path: &Path) -> Result<String, ClientError> {
    let bytes = std::fs::read(path).map_err(|source| ClientError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| {
        ClientError::Usage(format!(
            "{} is not UTF-8 text, which is all kiln can send",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn runtime_comes_from_the_extension() {
        assert_eq!(runtime_for(Path::new("a/b.py")).ok(), Some("python"));
        assert_eq!(runtime_for(Path::new("run.sh")).ok(), Some("bash"));
        for path in ["main.rb", "Makefile", "x.PY.txt"] {
            let err = runtime_for(Path::new(path))
                .err()
                .map(|err| err.to_string());
            assert!(
                err.as_deref().is_some_and(|err| err.contains("--runtime")),
                "{path}: {err:?}"
            );
        }
    }
    #[test]
    fn submission_leaves_out_what_was_not_given() {
        let bare = Submission {
            runtime: "python".to_owned(),
            code: "print(1)".to_owned(),
            stdin: None,
            args: Vec::new(),
            limits: Limits::default(),
        };
        assert_eq!(
            serde_json::to_value(&bare).ok(),
            Some(json!({"runtime": "python", "code": "print(1)"}))
        );
        let full = Submission {
            stdin: Some("in".to_owned()),
            args: vec!["-v".to_owned()],
            limits: Limits {
                wall_ms: Some(500),
                ..Limits::default()
            },
            ..bare
        };
        assert_eq!(
            serde_json::to_value(&full).ok(),
            Some(
                json!({"runtime": "python", "code": "print(1)", "stdin": "in",
                "args": ["-v"], "limits": {"wall_ms": 500}})
            )
        );
    }
}
