//! The languages this host can run, as data: each runtime is a [`Definition`] —
//! the source file's name, an optional build command and what it leaves, the run command, the
//! environment, limits — built into kiln (`runtimes/builtin.toml`) or given by the operator
//! (`--runtimes FILE`, `--runtime NAME=PATH`), which adds to or replaces the built-in ones.
//!
//! Loading resolves each definition against this host once, at startup: a command's program is
//! an absolute path or a bare name looked up in a fixed list of directories, never the server's
//! `PATH` (the first `python3` there may be a slow pyenv shim, or missing under a service
//! manager). A built-in runtime whose tools are missing is simply not offered (and `kiln doctor`
//! says which file is missing); one the operator asked for stops the server instead, with the
//! reason. So `GET /v1/runtimes` lists only what really works here. Each runtime's version is
//! asked of its tool after the start, in the sandbox like a job, so that a start does not wait
//! for a dozen JVMs and compilers and no tool ever runs with the server's privileges.

mod definition;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use regex::Regex;

pub use definition::{Definition, DefinitionError};

use crate::job::validate::{LimitsRequest, RuntimeTerms};

/// The built-in definitions.
pub(crate) const BUILTIN: &str = include_str!("../../runtimes/builtin.toml");

/// Where a command's bare program name is looked for, in order.
pub const SEARCH_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// One way to run code, resolved on this host.
#[derive(Debug)]
pub struct Runtime {
    pub name: String,
    /// A human name ("Java (OpenJDK)"), for listings.
    pub display: String,
    pub aliases: Vec<String>,
    /// May hold `{name}`, see [`Runtime::source_file`].
    source_file: String,
    name_from: Option<Regex>,
    name_default: String,
    /// File extensions of its programs, the source file's own first.
    pub extensions: Vec<String>,
    pub compile: Option<Compile>,
    pub run: Command,
    env: Vec<(String, String)>,
    /// Host paths its tools need inside the sandbox besides the usual system directories.
    pub binds: Vec<PathBuf>,
    /// Its default limits, where they differ from the server's.
    pub limits: LimitsRequest,
    /// The Judge0 language ids and Piston names it answers to.
    pub judge0: Vec<u32>,
    pub piston: Vec<String>,
    /// A program that prints `ok`, which `kiln doctor` runs to prove the runtime works.
    pub hello: Option<String>,
    version_command: Option<Command>,
    version: Arc<OnceLock<Option<String>>>,
    /// Defined by the operator rather than built in.
    pub operator: bool,
}

/// A compiled runtime's build step.
#[derive(Debug)]
pub struct Compile {
    pub command: Command,
    /// What the build leaves in the work directory for the run: a file or a directory.
    pub artifact: String,
    /// Limits of the build where they differ from the server's build limits.
    pub limits: LimitsRequest,
}

/// A command line: a program and its words, placeholders not yet filled in.
#[derive(Clone, Debug)]
pub struct Command {
    pub program: Program,
    words: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A tool of the host, by absolute path.
    Host(PathBuf),
    /// A program in the run's work directory (a build's artifact), by relative path.
    Work(String),
}

/// What a command's placeholders stand for in one run.
#[derive(Clone, Copy, Debug)]
pub struct Expansion<'a> {
    pub source: &'a str,
    pub name: &'a str,
    pub memory_mb: u64,
    /// The work directory as the run sees it (`/work` in the sandbox).
    pub work: &'a str,
    pub args: &'a [String],
}

impl Command {
    /// The program to start, for a run whose work directory is `work`.
    pub fn program(&self, work: &Path) -> PathBuf {
        match &self.program {
            Program::Host(path) => path.clone(),
            Program::Work(relative) => work.join(relative),
        }
    }

    /// The words after the program's own name, filled in.
    pub fn argv(&self, expansion: &Expansion<'_>) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.words.len() + expansion.args.len());
        for word in &self.words {
            if word == "{args}" {
                argv.extend(expansion.args.iter().cloned());
            } else {
                argv.push(expand(word, expansion));
            }
        }
        argv
    }

    /// What goes into a build from this command, for the build cache's key.
    pub fn identity(&self) -> impl Iterator<Item = &[u8]> {
        let program = match &self.program {
            Program::Host(path) => path.as_os_str().as_encoded_bytes(),
            Program::Work(relative) => relative.as_bytes(),
        };
        std::iter::once(program).chain(self.words.iter().map(String::as_bytes))
    }
}

fn expand(word: &str, e: &Expansion<'_>) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(start) = rest.find(['{', '}']) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("{{") {
            out.push('{');
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("}}") {
            out.push('}');
            rest = after;
            continue;
        }
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        match &rest[..end] {
            "{source}" => out.push_str(e.source),
            "{name}" => out.push_str(e.name),
            "{memory_mb}" => out.push_str(&e.memory_mb.to_string()),
            "{work}" => out.push_str(e.work),
            // Checked when the definition was read: nothing else gets here.
            other => out.push_str(other),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl Runtime {
    /// What `{name}` stands for with this code: the first match of `name_from`, else the
    /// default (Java's public class, which names the file).
    pub fn program_name(&self, code: &str) -> String {
        self.name_from
            .as_ref()
            .and_then(|pattern| pattern.captures(code))
            .and_then(|found| found.get(1))
            .map_or_else(|| self.name_default.clone(), |m| m.as_str().to_owned())
    }

    /// The name the code is written under in the work directory.
    pub fn source_file(&self, code: &str) -> String {
        if self.source_file.contains("{name}") {
            self.source_file.replace("{name}", &self.program_name(code))
        } else {
            self.source_file.clone()
        }
    }

    /// The runtime's own environment variables, filled in, added to what every job gets.
    pub fn env(&self, expansion: &Expansion<'_>) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(key, value)| (key.clone(), expand(value, expansion)))
            .collect()
    }

    /// What validation needs to know of it for a job with `code`.
    pub fn terms(&self, code: &str) -> RuntimeTerms {
        RuntimeTerms {
            name: self.name.clone(),
            source_file: self.source_file(code),
            binary: self.compile.as_ref().map(|c| artifact_top(&c.artifact)),
            limits: self.limits,
        }
    }

    /// The version its tool reported; `None` until asked (see [`Runtime::version_command`]),
    /// `Some(None)` if it said nothing.
    pub fn version(&self) -> Option<Option<&str>> {
        self.version.get().map(Option::as_deref)
    }

    /// The command that prints its version. It is run like a job (in the sandbox, never as the
    /// server's user), by whoever runs jobs: see `Runner::version_of`.
    pub fn version_command(&self) -> Option<&Command> {
        self.version_command.as_ref()
    }

    /// Records what the version command said; the first answer stays.
    pub fn set_version(&self, version: Option<String>) {
        let _ = self.version.set(version);
    }

    /// The host programs a job of it starts (its build's and its run's), which the sandbox must
    /// be able to see.
    pub fn host_programs(&self) -> impl Iterator<Item = &Path> {
        let compile = self.compile.as_ref().map(|c| &c.command.program);
        compile
            .into_iter()
            .chain(std::iter::once(&self.run.program))
            .filter_map(|program| match program {
                Program::Host(path) => Some(path.as_path()),
                Program::Work(_) => None,
            })
    }

    /// Where a listing says it runs: its run's host program, or its compiler.
    pub fn program(&self) -> &Path {
        self.host_programs().last().unwrap_or(Path::new("/"))
    }
}

/// The first component of an artifact: what the submitted files must leave free.
fn artifact_top(artifact: &str) -> String {
    artifact.split('/').next().unwrap_or(artifact).to_owned()
}

/// Where the definitions come from besides the built-in ones.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--runtimes FILE`.
    pub file: Option<PathBuf>,
    /// `--runtime NAME=PATH`: an interpreter run on the code in a file named `main`.
    pub extra: Vec<(String, PathBuf)>,
}

/// Why the runtimes cannot be loaded: the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read the runtimes file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Definition {
        origin: String,
        source: DefinitionError,
    },
    #[error(
        "runtime {runtime} (from {origin}) cannot be offered: {missing}; install it or correct \
         the definition"
    )]
    Missing {
        runtime: String,
        origin: String,
        missing: String,
    },
}

/// A built-in runtime this host cannot offer, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub name: String,
    /// What is missing: a file, or a program looked for in [`SEARCH_PATH`].
    pub missing: String,
    /// The Debian package its definition says installs it.
    pub package: Option<String>,
}

/// The runtimes offered on this host, by name and alias.
#[derive(Debug, Default)]
pub struct Runtimes {
    by_name: BTreeMap<String, Runtime>,
    aliases: BTreeMap<String, String>,
    unavailable: Vec<Unavailable>,
}

impl Runtimes {
    /// The built-in definitions, then the operator's, resolved on this host.
    pub fn load(sources: &Sources) -> Result<Runtimes, RuntimeError> {
        let builtin = definition::parse(BUILTIN).map_err(|source| RuntimeError::Definition {
            origin: "the built-in runtimes".into(),
            source,
        })?;
        let mut definitions: BTreeMap<String, (Definition, Option<String>)> = builtin
            .into_iter()
            .map(|(name, d)| (name, (d, None)))
            .collect();
        if let Some(path) = &sources.file {
            let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Read {
                path: path.clone(),
                source,
            })?;
            let origin = path.display().to_string();
            let theirs = definition::parse(&text).map_err(|source| RuntimeError::Definition {
                origin: origin.clone(),
                source,
            })?;
            for (name, d) in theirs {
                definitions.insert(name, (d, Some(origin.clone())));
            }
        }
        for (name, interpreter) in &sources.extra {
            definitions.insert(
                name.clone(),
                (interpreter_only(interpreter), Some("--runtime".into())),
            );
        }
        let mut runtimes = Runtimes::default();
        for (name, (d, origin)) in definitions {
            if d.disabled {
                continue;
            }
            match resolve(&name, &d, origin.is_some()) {
                Ok(runtime) => {
                    runtimes.by_name.insert(name, runtime);
                }
                Err(missing) => match origin {
                    Some(origin) => {
                        return Err(RuntimeError::Missing {
                            runtime: name,
                            origin,
                            missing,
                        });
                    }
                    None => runtimes.unavailable.push(Unavailable {
                        name,
                        missing,
                        package: d.package.clone(),
                    }),
                },
            }
        }
        runtimes.index_aliases();
        Ok(runtimes)
    }

    /// Aliases of the runtimes offered. A name always wins over an alias; of two runtimes with
    /// the same alias, the operator's.
    fn index_aliases(&mut self) {
        self.aliases.clear();
        let ordered = self
            .by_name
            .values()
            .filter(|r| !r.operator)
            .chain(self.by_name.values().filter(|r| r.operator));
        for runtime in ordered {
            for alias in &runtime.aliases {
                if !self.by_name.contains_key(alias) {
                    self.aliases.insert(alias.clone(), runtime.name.clone());
                }
            }
        }
    }

    /// The runtime a job names, by its name or an alias.
    pub fn get(&self, name: &str) -> Option<&Runtime> {
        self.by_name
            .get(name)
            .or_else(|| self.aliases.get(name).and_then(|n| self.by_name.get(n)))
    }

    /// Withdraws the runtimes whose programs `visible` says jobs cannot reach (outside what the
    /// sandbox binds), naming each in the log.
    pub fn retain_visible(&mut self, visible: impl Fn(&Path) -> bool) {
        let mut hidden = Vec::new();
        self.by_name.retain(|name, runtime| {
            let unseen = runtime.host_programs().find(|p| !visible(p));
            if let Some(program) = unseen {
                tracing::warn!(runtime = %name, program = %program.display(),
                    "program not visible inside the sandbox; runtime not offered");
                hidden.push(Unavailable {
                    name: name.clone(),
                    missing: format!("{} is outside what the sandbox binds", program.display()),
                    package: None,
                });
            }
            unseen.is_none()
        });
        self.unavailable.extend(hidden);
        self.index_aliases();
    }

    /// In name order, so listings are stable.
    pub fn iter(&self) -> impl Iterator<Item = &Runtime> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The built-in runtimes not offered, and why.
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// What the runtimes offered need bound into every sandbox.
    pub fn binds(&self) -> Vec<PathBuf> {
        let mut binds: Vec<PathBuf> = self.iter().flat_map(|r| r.binds.clone()).collect();
        binds.sort();
        binds.dedup();
        binds
    }
}

/// The definition `--runtime NAME=PATH` stands for.
fn interpreter_only(interpreter: &Path) -> Definition {
    Definition {
        display: None,
        aliases: Vec::new(),
        source_file: "main".into(),
        name_from: None,
        name_default: None,
        extensions: Vec::new(),
        compile: None,
        artifact: None,
        run: vec![
            interpreter.display().to_string(),
            "{source}".into(),
            "{args}".into(),
        ],
        version: None,
        binds: Vec::new(),
        env: BTreeMap::new(),
        limits: LimitsRequest::default(),
        compile_limits: LimitsRequest::default(),
        judge0: Vec::new(),
        piston: Vec::new(),
        hello: None,
        package: None,
        disabled: false,
    }
}

/// A checked definition on this host; `Err` says what is missing.
fn resolve(name: &str, d: &Definition, operator: bool) -> Result<Runtime, String> {
    let compile = match (&d.compile, &d.artifact) {
        (Some(command), Some(artifact)) => Some(Compile {
            command: command_of(command)?,
            artifact: artifact.clone(),
            limits: d.compile_limits,
        }),
        _ => None,
    };
    let run = command_of(&d.run)?;
    let mut binds = Vec::new();
    for bind in &d.binds {
        binds.extend(expand_bind(bind)?);
    }
    let name_from = match &d.name_from {
        Some(pattern) => Some(Regex::new(pattern).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut extensions = Vec::new();
    if let Some((_, extension)) = d.source_file.rsplit_once('.') {
        extensions.push(format!(".{extension}"));
    }
    for extension in &d.extensions {
        if !extensions.contains(extension) {
            extensions.push(extension.clone());
        }
    }
    let version = Arc::new(OnceLock::new());
    let version_command = match &d.version {
        Some(command) => Some(command_of(command)?),
        None => {
            let _ = version.set(None);
            None
        }
    };
    Ok(Runtime {
        name: name.to_owned(),
        display: d.display.clone().unwrap_or_else(|| name.to_owned()),
        aliases: d.aliases.clone(),
        source_file: d.source_file.clone(),
        name_from,
        name_default: d.name_default.clone().unwrap_or_else(|| "main".into()),
        extensions,
        compile,
        run,
        env: d.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        binds,
        limits: d.limits,
        judge0: d.judge0.clone(),
        piston: d.piston.clone(),
        hello: d.hello.clone(),
        version_command,
        version,
        operator,
    })
}

fn command_of(words: &[String]) -> Result<Command, String> {
    let (first, rest) = words.split_first().ok_or("an empty command")?;
    let program = match first.strip_prefix("./") {
        Some(relative) => Program::Work(relative.to_owned()),
        None => Program::Host(find_program(first)?),
    };
    Ok(Command {
        program,
        words: rest.to_vec(),
    })
}

/// An absolute program as it is, or a bare name in [`SEARCH_PATH`]; it must be an executable file.
fn find_program(program: &str) -> Result<PathBuf, String> {
    if program.starts_with('/') {
        let path = PathBuf::from(program);
        return match is_executable(&path) {
            true => Ok(path),
            false => Err(format!("{program} is missing or not executable")),
        };
    }
    SEARCH_PATH
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| is_executable(path))
        .ok_or_else(|| format!("{program} is not in {}", SEARCH_PATH.join(", ")))
}

/// A bind as written: a path that must exist, or one whose last component holds `*`, standing
/// for whatever matches (possibly nothing).
fn expand_bind(bind: &Path) -> Result<Vec<PathBuf>, String> {
    let last = bind.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(pattern) = last.filter(|n| n.contains('*')) else {
        return match bind.exists() {
            true => Ok(vec![bind.to_owned()]),
            false => Err(format!("{} does not exist", bind.display())),
        };
    };
    let parent = bind.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| glob_matches(&pattern, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

/// `*` matches any run of characters; everything else itself.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// An extra runtime as given on the command line: `NAME=PATH`, PATH absolute.
pub fn parse_extra(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
    definition::check_name(name)?;
    if !PathBuf::from(path).is_absolute() {
        return Err("the runtime needs a name and an absolute interpreter path".into());
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
