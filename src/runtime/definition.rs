//! The runtime definition format: one TOML table per runtime (`[runtimes.NAME]`), the same for
//! the built-in definitions compiled into kiln (`runtimes/builtin.toml`) and an operator's file.
//! This module owns reading it and every rule a definition must meet before anything of the
//! host is looked at, so that a malformed file stops the server with the line (or the key) and
//! the reason, not a job that fails later.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::job::validate::LimitsRequest;

/// The words a command, an environment value or a source file name may hold besides plain text.
pub(super) const PLACEHOLDERS: &[&str] = &["{source}", "{name}", "{args}", "{memory_mb}", "{work}"];

/// A whole definitions file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    runtimes: BTreeMap<String, Definition>,
}

/// One runtime as written. What each field means is documented in `docs/runtimes.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub display: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub source_file: String,
    pub name_from: Option<String>,
    pub name_default: Option<String>,
    #[serde(default)]
    pub extensions: Vec<String>,
    pub compile: Option<Vec<String>>,
    pub artifact: Option<String>,
    #[serde(default)]
    pub run: Vec<String>,
    pub version: Option<Vec<String>>,
    #[serde(default)]
    pub binds: Vec<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub compile_limits: LimitsRequest,
    #[serde(default)]
    pub judge0: Vec<u32>,
    #[serde(default)]
    pub piston: Vec<String>,
    pub hello: Option<String>,
    /// The Debian package that installs its tools, for `kiln doctor`'s advice.
    pub package: Option<String>,
    /// Withdraws a runtime of the same name (a built-in one) instead of defining it.
    #[serde(default)]
    pub disabled: bool,
}

/// Why a definitions file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// Not TOML, or not of this form (an unknown key, a wrong type): the message names the line.
    #[error("{0}")]
    Syntax(String),
    #[error("runtimes.{runtime}: {reason}")]
    Invalid { runtime: String, reason: String },
}

/// The definitions of `text`, in name order, each checked.
pub fn parse(text: &str) -> Result<BTreeMap<String, Definition>, DefinitionError> {
    let file: File = toml::from_str(text).map_err(|e| DefinitionError::Syntax(e.to_string()))?;
    for (name, definition) in &file.runtimes {
        check(name, definition).map_err(|reason| DefinitionError::Invalid {
            runtime: name.clone(),
            reason,
        })?;
    }
    Ok(file.runtimes)
}

/// A runtime's name or alias: what a job names, a path component nowhere.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+#._-".contains(&b));
    if plain && (1..=64).contains(&name.len()) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a runtime name (1 to 64 of letters, digits and + # . _ -)"
        ))
    }
}

fn check(name: &str, d: &Definition) -> Result<(), String> {
    check_name(name)?;
    if d.disabled {
        return Ok(());
    }
    for alias in &d.aliases {
        check_name(alias).map_err(|e| format!("aliases: {e}"))?;
    }
    check_source_file(d)?;
    if let Some(pattern) = &d.name_from {
        let regex = regex::Regex::new(pattern).map_err(|e| format!("name_from: {e}"))?;
        if regex.captures_len() < 2 {
            return Err("name_from: the pattern needs a group that captures the name".into());
        }
    }
    if let Some(default) = &d.name_default {
        plain_component(default).map_err(|e| format!("name_default: {e}"))?;
    }
    for extension in &d.extensions {
        if !extension.starts_with('.') || extension.len() < 2 || extension.contains('/') {
            return Err(format!(
                "extensions: {extension:?} is not an extension like \".py\""
            ));
        }
    }
    match (&d.compile, &d.artifact) {
        (Some(compile), Some(artifact)) => {
            check_command("compile", compile, false, false)?;
            check_relative(artifact).map_err(|e| format!("artifact: {e}"))?;
        }
        (Some(_), None) => {
            return Err("compile: a compiled runtime names its artifact (what the build leaves for the run)".into());
        }
        (None, Some(_)) => return Err("artifact: only a runtime that compiles has one".into()),
        (None, None) => {}
    }
    check_command("run", &d.run, true, d.compile.is_some())?;
    if let Some(version) = &d.version {
        check_command("version", version, false, false)?;
        if let Some(word) = version.iter().find(|w| w.contains('{')) {
            return Err(format!(
                "version: {word:?}: the version command takes no placeholders"
            ));
        }
    }
    for bind in &d.binds {
        if !bind.is_absolute() {
            return Err(format!("binds: {} is not an absolute path", bind.display()));
        }
        let parent_glob = bind
            .parent()
            .is_some_and(|p| p.to_string_lossy().contains('*'));
        if parent_glob {
            return Err(format!(
                "binds: {}: only the last component may hold a *",
                bind.display()
            ));
        }
    }
    for (key, value) in &d.env {
        let plain = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !key.as_bytes()[0].is_ascii_digit();
        if !plain {
            return Err(format!("env: {key:?} is not a variable name"));
        }
        check_words(&format!("env.{key}"), std::slice::from_ref(value), false)?;
    }
    check_limits("limits", &d.limits)?;
    check_limits("compile_limits", &d.compile_limits)?;
    if d.compile.is_none() && d.compile_limits != LimitsRequest::default() {
        return Err("compile_limits: only a runtime that compiles has them".into());
    }
    for piston in &d.piston {
        check_name(piston).map_err(|e| format!("piston: {e}"))?;
    }
    Ok(())
}

fn check_source_file(d: &Definition) -> Result<(), String> {
    let file = &d.source_file;
    let literal = file.replace("{name}", "x");
    plain_component(&literal).map_err(|e| format!("source_file: {e}"))?;
    if literal.contains(['{', '}']) {
        return Err(format!(
            "source_file: {file:?}: only {{name}} may stand in a source file name"
        ));
    }
    if file.contains("{name}") && d.name_from.is_none() && d.name_default.is_none() {
        return Err("source_file: {name} needs name_from or name_default".into());
    }
    Ok(())
}

/// A command: a program, then its words. `args` allows `{args}`; `in_work` a program in the work
/// directory (`./…`), which only the run of a compiled runtime has.
fn check_command(field: &str, command: &[String], args: bool, in_work: bool) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Err(format!("{field}: the command is empty"));
    };
    if program.contains('{') {
        return Err(format!(
            "{field}: the program {program:?} cannot be a placeholder"
        ));
    }
    if let Some(relative) = program.strip_prefix("./") {
        if !in_work {
            return Err(format!(
                "{field}: {program:?}: only a compiled runtime's run starts a program of its work directory"
            ));
        }
        check_relative(relative).map_err(|e| format!("{field}: {e}"))?;
    } else if !program.starts_with('/') && program.contains('/') {
        return Err(format!(
            "{field}: {program:?} is neither absolute, a bare name nor ./ in the work directory"
        ));
    }
    check_words(field, &command[1..], args)
}

fn check_words(field: &str, words: &[String], args: bool) -> Result<(), String> {
    for word in words {
        if word == "{args}" {
            if !args {
                return Err(format!("{field}: {{args}} belongs in the run command only"));
            }
            continue;
        }
        let mut rest = word.replace("{{", "").replace("}}", "");
        for placeholder in PLACEHOLDERS.iter().filter(|p| **p != "{args}") {
            rest = rest.replace(placeholder, "");
        }
        if rest.contains("{args}") {
            return Err(format!(
                "{field}: {word:?}: {{args}} must be a word of its own"
            ));
        }
        if let Some(start) = rest.find('{') {
            let unknown: String = rest[start..].chars().take_while(|c| *c != '}').collect();
            return Err(format!(
                "{field}: {word:?}: unknown placeholder {unknown}}} (known: {})",
                PLACEHOLDERS.join(" ")
            ));
        }
    }
    Ok(())
}

fn check_limits(field: &str, limits: &LimitsRequest) -> Result<(), String> {
    let values = [
        ("wall_ms", limits.wall_ms),
        ("cpu_ms", limits.cpu_ms),
        ("memory_mb", limits.memory_mb),
        ("processes", limits.processes),
        ("output_bytes", limits.output_bytes),
        ("file_bytes", limits.file_bytes),
        ("cpu_percent", limits.cpu_percent),
    ];
    match values.iter().find(|(_, v)| *v == Some(0)) {
        Some((name, _)) => Err(format!("{field}.{name} must be positive")),
        None => Ok(()),
    }
}

fn plain_component(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("{name:?} is not a plain file name"));
    }
    Ok(())
}

fn check_relative(path: &str) -> Result<(), String> {
    let inside = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if inside {
        Ok(())
    } else {
        Err(format!("{path:?} is not a path inside the work directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        match parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn the_built_in_definitions_are_valid() {
        let builtin = parse(super::super::BUILTIN).expect("builtin.toml");
        for name in ["python", "bash", "sh", "c", "cpp", "java", "go", "rust"] {
            assert!(builtin.contains_key(name), "{name}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let text = "[runtimes.x]\nsource_file = \"main\"\nrun = [\"sh\"]\ncolour = \"red\"\n";
        let error = invalid(text);
        assert!(error.contains("line 4"), "{error}");
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let error = invalid("[runtimes.x]\nsource_file = \"main\nrun = []\n");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn an_unknown_placeholder_is_refused_and_the_known_ones_listed() {
        let error = invalid("[runtimes.x]\nsource_file = \"main\"\nrun = [\"sh\", \"{file}\"]\n");
        assert!(error.contains("runtimes.x: run"), "{error}");
        assert!(error.contains("unknown placeholder {file}"), "{error}");
        assert!(error.contains("{source}"), "{error}");
    }

    #[test]
    fn args_must_be_a_word_of_its_own_and_only_in_the_run() {
        let glued = invalid("[runtimes.x]\nsource_file = \"m\"\nrun = [\"sh\", \"-{args}\"]\n");
        assert!(glued.contains("a word of its own"), "{glued}");
        let compile = "[runtimes.x]\nsource_file = \"m\"\ncompile = [\"cc\", \"{args}\"]\n\
                       artifact = \"a\"\nrun = [\"./a\"]\n";
        assert!(invalid(compile).contains("run command only"));
    }

    #[test]
    fn a_compiled_runtime_names_its_artifact_and_only_it_runs_from_the_work_directory() {
        let no_artifact =
            "[runtimes.x]\nsource_file = \"m\"\ncompile = [\"cc\"]\nrun = [\"./a\"]\n";
        assert!(invalid(no_artifact).contains("names its artifact"));
        let interpreted = "[runtimes.x]\nsource_file = \"m\"\nrun = [\"./a\"]\n";
        assert!(invalid(interpreted).contains("only a compiled runtime"));
        let escaping = "[runtimes.x]\nsource_file = \"m\"\ncompile = [\"cc\"]\n\
                        artifact = \"../a\"\nrun = [\"./a\"]\n";
        assert!(invalid(escaping).contains("not a path inside the work directory"));
    }

    #[test]
    fn a_source_file_is_one_plain_name() {
        let nested = invalid("[runtimes.x]\nsource_file = \"a/main\"\nrun = [\"sh\"]\n");
        assert!(nested.contains("not a plain file name"), "{nested}");
        let unnamed = invalid("[runtimes.x]\nsource_file = \"{name}.java\"\nrun = [\"sh\"]\n");
        assert!(unnamed.contains("needs name_from"), "{unnamed}");
    }

    #[test]
    fn a_name_pattern_must_compile_and_capture() {
        let bad = "[runtimes.x]\nsource_file = \"{name}.j\"\nname_from = \"(\"\nrun = [\"sh\"]\n";
        assert!(invalid(bad).contains("name_from"));
        let nothing =
            "[runtimes.x]\nsource_file = \"{name}.j\"\nname_from = \"class\"\nrun = [\"sh\"]\n";
        assert!(invalid(nothing).contains("captures the name"));
    }

    #[test]
    fn limits_must_be_positive_and_compile_limits_need_a_compile() {
        let zero = "[runtimes.x]\nsource_file = \"m\"\nrun = [\"sh\"]\n[runtimes.x.limits]\nmemory_mb = 0\n";
        assert!(invalid(zero).contains("limits.memory_mb must be positive"));
        let stray = "[runtimes.x]\nsource_file = \"m\"\nrun = [\"sh\"]\n\
                     [runtimes.x.compile_limits]\nwall_ms = 5\n";
        assert!(invalid(stray).contains("only a runtime that compiles"));
        let unknown =
            "[runtimes.x]\nsource_file = \"m\"\nrun = [\"sh\"]\n[runtimes.x.limits]\nram = 5\n";
        assert!(invalid(unknown).contains("ram"));
    }

    #[test]
    fn a_disabled_runtime_needs_nothing_else() {
        let runtimes = parse("[runtimes.php]\ndisabled = true\n").expect("a withdrawal");
        assert!(runtimes["php"].disabled);
    }
}
