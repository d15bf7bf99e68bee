//! The languages this host can run: which interpreter runs a job's code, with which arguments, and
//! under which source file name. Detected once at startup from fixed absolute paths, so a job never
//! depends on the server's `PATH` (the first `python3` there may be a slow pyenv shim, or missing
//! under a service manager) and `GET /v1/runtimes` lists only what really works on this host.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::job::validate::RuntimeFiles;

/// One way to run code. Interpreted: `program args... source_file job-args...` inside the work
/// directory. Compiled: `program args...` (the compiler, whose arguments name the source file)
/// produces [`Compile::binary`], which then runs as `binary job-args...`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Runtime {
    pub name: String,
    /// Always absolute, so spawning never searches `PATH` nor resolves against the work directory.
    pub program: PathBuf,
    /// Interpreter flags placed before the source file, or the compiler's whole argument list; an
    /// implementation detail, not listed.
    #[serde(skip)]
    pub args: Vec<String>,
    /// The name the code is written under in the work directory.
    pub source_file: String,
    /// Set for compiled languages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile: Option<Compile>,
}

impl Runtime {
    /// What this runtime writes into a run's work directory itself, which submitted files must
    /// leave free.
    pub fn own_files(&self) -> RuntimeFiles {
        RuntimeFiles {
            source_file: self.source_file.clone(),
            binary: self.compile.as_ref().map(|c| c.binary.clone()),
        }
    }
}

/// How a compiled runtime's build step ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compile {
    /// What the compiler writes in the work directory, and what then runs.
    pub binary: String,
}

/// The runtimes offered on this host, by name.
#[derive(Clone, Debug, Default)]
pub struct Runtimes {
    by_name: BTreeMap<String, Runtime>,
}

struct Builtin {
    name: &'static str,
    /// Tried in order; the first executable one wins.
    candidates: &'static [&'static str],
    args: &'static [&'static str],
    source_file: &'static str,
    /// For compiled languages: the binary the compiler produces.
    binary: Option<&'static str>,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "python",
        candidates: &["/usr/bin/python3", "/usr/local/bin/python3"],
        // -E ignores PYTHON* variables and -s the user site directory, so the job sees the same
        // interpreter whoever runs the server; -B keeps it from writing .pyc files. Not -I: it
        // would drop the script's directory from sys.path, and jobs import their own files.
        args: &["-E", "-s", "-B"],
        source_file: "main.py",
        binary: None,
    },
    Builtin {
        name: "bash",
        candidates: &["/bin/bash", "/usr/bin/bash"],
        args: &[],
        source_file: "main.sh",
        binary: None,
    },
    Builtin {
        name: "sh",
        candidates: &["/bin/sh"],
        args: &[],
        source_file: "main.sh",
        binary: None,
    },
    Builtin {
        name: "c",
        candidates: &["/usr/bin/gcc"],
        // Optimised as judges do; -lm last, where the linker looks for what main.c needs.
        args: &["-O2", "-pipe", "-std=gnu17", "-o", "main", "main.c", "-lm"],
        source_file: "main.c",
        binary: Some("main"),
    },
];

/// What an operator-configured runtime names its source file: the interpreter is arbitrary, so no
/// extension can be assumed.
const EXTRA_SOURCE_FILE: &str = "main";

impl Runtimes {
    /// The built-ins whose interpreter exists here, plus `extra` runtimes (name, interpreter path),
    /// which add to or replace the built-ins. An extra runtime whose interpreter is missing is not
    /// offered at all, rather than silently falling back to a built-in of the same name.
    pub fn detect(extra: &[(String, PathBuf)]) -> Runtimes {
        let mut by_name = BTreeMap::new();
        for builtin in BUILTINS {
            let found = builtin
                .candidates
                .iter()
                .map(Path::new)
                .find(|p| is_executable(p));
            if let Some(program) = found {
                let runtime = Runtime {
                    name: builtin.name.to_owned(),
                    program: program.to_owned(),
                    args: builtin.args.iter().map(|&a| a.to_owned()).collect(),
                    source_file: builtin.source_file.to_owned(),
                    compile: builtin.binary.map(|binary| Compile {
                        binary: binary.to_owned(),
                    }),
                };
                by_name.insert(runtime.name.clone(), runtime);
            }
        }
        for (name, path) in extra {
            by_name.remove(name);
            // Made absolute against the server's directory now: a relative program would otherwise
            // be resolved against the job's work directory, where the job controls what it finds.
            // Not canonicalized, so a multi-call binary (busybox) keeps the name it dispatches on.
            let program = match std::path::absolute(path) {
                Ok(program) if is_executable(&program) => program,
                _ => {
                    tracing::warn!(runtime = %name, path = %path.display(),
                        "runtime interpreter is missing or not executable; runtime not offered");
                    continue;
                }
            };
            let runtime = Runtime {
                name: name.clone(),
                program,
                args: Vec::new(),
                source_file: EXTRA_SOURCE_FILE.to_owned(),
                compile: None,
            };
            by_name.insert(name.clone(), runtime);
        }
        Runtimes { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Runtime> {
        self.by_name.get(name)
    }

    /// Withdraws the runtimes whose interpreter `visible` says jobs cannot reach (outside what the
    /// sandbox binds), naming each in the log.
    pub fn retain_visible(&mut self, visible: impl Fn(&Path) -> bool) {
        self.by_name.retain(|name, runtime| {
            let keep = visible(&runtime.program);
            if !keep {
                tracing::warn!(runtime = %name, program = %runtime.program.display(),
                    "interpreter not visible inside the sandbox; runtime not offered");
            }
            keep
        });
    }

    /// In name order, so listings are stable.
    pub fn iter(&self) -> impl Iterator<Item = &Runtime> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The built-in runtimes by name, with the interpreters looked for (first found wins).
pub fn builtins() -> impl Iterator<Item = (&'static str, &'static [&'static str])> {
    BUILTINS.iter().map(|b| (b.name, b.candidates))
}

/// An extra runtime as given on the command line: `NAME=PATH`, PATH absolute.
pub fn parse_extra(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
    if name.is_empty() || !PathBuf::from(path).is_absolute() {
        return Err("the runtime needs a name and an absolute interpreter path".into());
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_use_absolute_interpreter_paths() {
        let runtimes = Runtimes::detect(&[]);
        let sh = runtimes.get("sh").expect("every Linux host has /bin/sh");
        assert_eq!(sh.program, Path::new("/bin/sh"));
        assert_eq!(sh.source_file, "main.sh");
        for runtime in runtimes.iter() {
            assert!(runtime.program.is_absolute(), "{runtime:?}");
        }
        if let Some(python) = runtimes.get("python") {
            assert_eq!(python.args, ["-E", "-s", "-B"]);
            assert_eq!(python.source_file, "main.py");
        }
    }

    #[test]
    fn an_extra_runtime_adds_a_name_and_runs_its_source_as_main() {
        let runtimes = Runtimes::detect(&[("dash".into(), "/bin/sh".into())]);
        let dash = runtimes.get("dash").expect("extra runtime offered");
        assert_eq!(dash.program, Path::new("/bin/sh"));
        assert!(dash.args.is_empty());
        assert_eq!(dash.source_file, "main");
        assert!(runtimes.get("sh").is_some());
    }

    #[test]
    fn an_extra_runtime_replaces_a_built_in_of_the_same_name() {
        let runtimes = Runtimes::detect(&[("sh".into(), "/bin/bash".into())]);
        let sh = runtimes.get("sh").expect("replaced runtime offered");
        assert_eq!(sh.program, Path::new("/bin/bash"));
        assert_eq!(sh.source_file, "main");
    }

    #[test]
    fn an_extra_runtime_without_an_executable_interpreter_is_not_offered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let not_executable = dir.path().join("interp");
        std::fs::write(&not_executable, "").expect("write");
        let runtimes = Runtimes::detect(&[
            ("gone".into(), "/nonexistent/interp".into()),
            ("plain".into(), not_executable),
            ("sh".into(), "/nonexistent/sh".into()),
        ]);
        assert!(runtimes.get("gone").is_none());
        assert!(runtimes.get("plain").is_none());
        assert!(
            runtimes.get("sh").is_none(),
            "a broken override must not fall back"
        );
        assert!(!runtimes.is_empty());
    }

    #[test]
    fn a_runtime_serializes_without_its_interpreter_flags() {
        let runtime = Runtime {
            name: "python".into(),
            program: "/usr/bin/python3".into(),
            args: vec!["-I".into()],
            source_file: "main.py".into(),
            compile: None,
        };
        let json = serde_json::to_value(&runtime).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "name": "python",
                "program": "/usr/bin/python3",
                "source_file": "main.py",
            })
        );
    }
}
