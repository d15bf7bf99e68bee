//! `kiln serve --config FILE` (or `KILN_CONFIG`): the server's settings in a TOML file, and
//! `--print-config`, which shows the settings in effect as such a file.
//!
//! A key of the file is a flag of `kiln serve` without its dashes (`max-wall-ms = 60000`,
//! `webhook-allow-host = ["hooks.example.com"]`, `insecure = true`), so there is one list of
//! settings, with one parser and one default each: the flags'. The file lies between the
//! defaults and the environment: each key it sets is handed to clap as if given on the command
//! line, unless that setting already came from a flag or an environment variable, which win.
//! Every key is checked alone first, so that an unknown key or a bad value stops the start with
//! the file's line and clap's own reason.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};

use super::ServeArgs;

/// Settings that are not for the file: where it is, and what to do instead of serving.
const NOT_IN_FILE: &[&str] = &["config", "print-config", "help"];

/// Why the file could not be taken: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based, where the trouble has one.
    pub line: Option<usize>,
    pub message: String,
}

/// `kiln serve`'s settings, from its defaults, the file, the environment and its flags.
pub struct Settled {
    pub args: ServeArgs,
    matches: ArgMatches,
    /// The settings the file gave (by clap id).
    from_file: BTreeSet<String>,
    file: Option<PathBuf>,
}

/// The `kiln serve` command alone, as clap sees it.
fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true))
}

impl Settled {
    /// Lays the file named by `given` (the matches of `kiln serve`'s own flags) under what was
    /// given by flag or environment.
    pub fn from_matches(given: &ArgMatches) -> Result<Settled, ConfigError> {
        let command = serve_command();
        let Some(path) = given.get_one::<PathBuf>("config").cloned() else {
            return settle(&command, given.clone(), BTreeSet::new(), None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            path: path.clone(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        let mut argv = command_line(&command, given);
        let mut from_file = BTreeSet::new();
        for (key, value, line) in entries(&path, &text)? {
            let at = |message: String| ConfigError {
                path: path.clone(),
                line: Some(line),
                message,
            };
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(key.as_str()))
                .filter(|_| !NOT_IN_FILE.contains(&key.as_str()))
                .ok_or_else(|| {
                    at(format!(
                        "unknown key `{key}`: the keys are kiln serve's flags without their \
                         dashes (kiln serve --help lists them)"
                    ))
                })?;
            let flags = as_flags(arg, &key, &value).map_err(at)?;
            // Alone, so that a bad value is reported with its line.
            command
                .clone()
                .try_get_matches_from(&flags)
                .map_err(|e| at(clap_reason(&e)))?;
            let id = arg.get_id().as_str();
            let overridden = matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !overridden {
                argv.extend(flags);
                from_file.insert(id.to_owned());
            }
        }
        let matches = command
            .clone()
            .try_get_matches_from(argv)
            .map_err(|e| ConfigError {
                path: path.clone(),
                line: None,
                message: clap_reason(&e),
            })?;
        settle(&command, matches, from_file, Some(path))
    }

    /// The settings in effect, as a file `--config` takes, each line saying where its value came
    /// from. A setting without a value (one whose default is decided at start, such as
    /// `workers`) is shown as a comment, and so is a secret.
    pub fn render(&self) -> String {
        let command = serve_command();
        let mut out = String::from(
            "# kiln serve's settings in effect: defaults, under the config file, under \
             environment variables, under flags.\n",
        );
        if let Some(file) = &self.file {
            out.push_str(&format!("# config file: {}\n", file.display()));
        }
        for arg in command.get_arguments() {
            let Some(key) = arg.get_long().filter(|key| !NOT_IN_FILE.contains(key)) else {
                continue;
            };
            let id = arg.get_id().as_str();
            let source = match self.matches.value_source(id) {
                _ if self.from_file.contains(id) => "config file".to_owned(),
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => {
                    arg.get_env().map_or("environment".into(), |env| {
                        env.to_string_lossy().into_owned()
                    })
                }
                _ => "default".to_owned(),
            };
            let values: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let line = if arg.is_hide_env_values_set() {
                match values.is_empty() {
                    true => format!("# {key}: not set"),
                    false => format!("# {key}: set ({source}), not shown"),
                }
            } else if is_list(arg) {
                let items: Vec<String> = values.iter().map(|v| literal(arg, v)).collect();
                format!("{key} = [{}]  # {source}", items.join(", "))
            } else {
                match values.first() {
                    Some(value) => format!("{key} = {}  # {source}", literal(arg, value)),
                    None => format!("# {key}: not set{}", default_in_help(arg)),
                }
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Whether `--print-config` asked for [`Settled::render`] instead of a server.
    pub fn print_only(&self) -> bool {
        self.args.print_config
    }
}

fn settle(
    command: &clap::Command,
    matches: ArgMatches,
    from_file: BTreeSet<String>,
    file: Option<PathBuf>,
) -> Result<Settled, ConfigError> {
    let args = ServeArgs::from_arg_matches(&matches).map_err(|e| ConfigError {
        path: file.clone().unwrap_or_default(),
        line: None,
        message: clap_reason(&e.with_cmd(command)),
    })?;
    Ok(Settled {
        args,
        matches,
        from_file,
        file,
    })
}

/// The flags given on the command line again, as clap would take them: what the file may not
/// override.
fn command_line(command: &clap::Command, given: &ArgMatches) -> Vec<OsString> {
    let mut argv = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        if given.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => argv.push(format!("--{long}").into()),
            _ => {
                for value in given.get_raw(id).into_iter().flatten() {
                    argv.push(format!("--{long}").into());
                    argv.push(value.to_owned());
                }
            }
        }
    }
    argv
}

/// The file's keys, their values and the line of each. Only top-level keys: a table
/// (`[section]`) is no flag.
fn entries(path: &Path, text: &str) -> Result<Vec<(String, toml::Value, usize)>, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: e.span().map(|span| line_of(text, span.start)),
        message: e.message().to_owned(),
    })?;
    let mut found: Vec<_> = table
        .into_iter()
        .map(|(key, value)| {
            let line = key_line(text, &key);
            (key, value, line)
        })
        .collect();
    found.sort_by_key(|(_, _, line)| *line);
    Ok(found)
}

/// The line on which `key` is set: the first that begins with it, followed by `=`.
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| line.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|rest| rest.trim_start().starts_with('='))
                || line.trim_end() == format!("[{key}]")
        })
        .map_or(1, |i| i + 1)
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

fn is_list(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// `--KEY VALUE`... for one key of the file, or why its value cannot be one.
fn as_flags(arg: &clap::Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{key}");
    let one = |value: &toml::Value| match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => Err(format!(
            "`{key}` takes a string or a number, not {}",
            value.type_str()
        )),
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(true)) => Ok(vec![flag.into()]),
        (ArgAction::SetTrue, toml::Value::Boolean(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, other) => Err(format!(
            "`{key}` is true or false, not {}",
            other.type_str()
        )),
        (ArgAction::Append, toml::Value::Array(items)) => {
            let mut flags = Vec::new();
            for item in items {
                flags.push(flag.clone().into());
                flags.push(one(item)?.into());
            }
            Ok(flags)
        }
        (_, toml::Value::Table(_)) => Err(format!(
            "`{key}` is the flag --{key}: give it a value, not a table"
        )),
        (_, toml::Value::Array(_)) => Err(format!("`{key}` takes one value, not a list")),
        (_, value) => Ok(vec![flag.into(), one(value)?.into()]),
    }
}

/// A value as the file would have it: a number or a boolean bare, anything else a string.
fn literal(arg: &clap::Arg, value: &str) -> String {
    let bare = matches!(arg.get_action(), ArgAction::SetTrue)
        || value.parse::<i64>().is_ok()
        || (value.contains('.') && value.parse::<f64>().is_ok_and(f64::is_finite));
    match bare {
        true => value.to_owned(),
        false => toml::Value::String(value.to_owned()).to_string(),
    }
}

/// ` (default: ...)`, from a help text that names a default decided at start.
fn default_in_help(arg: &clap::Arg) -> String {
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    help.split_once("[default: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or_else(
            || ": kiln's own default applies".to_owned(),
            |(default, _)| format!(" (default: {default})"),
        )
}

/// clap's reason, without its `error:` and its advice to try `--help`.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(flags: &[&str]) -> ArgMatches {
        match serve_command().try_get_matches_from(flags) {
            Ok(matches) => matches,
            Err(e) => panic!("{e}"),
        }
    }

    fn file(text: &str) -> (tempfile::NamedTempFile, String) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        let path = file.path().to_str().expect("utf-8").to_owned();
        (file, path)
    }

    #[test]
    fn the_file_sets_what_no_flag_sets_and_a_flag_wins() {
        let (_file, path) = file(
            "workers = 3\nmax-wall-ms = 60000\ninsecure = true\n\
             webhook-allow-host = [\"a.example\", \"10.0.0.0/8\"]\n",
        );
        let settled =
            Settled::from_matches(&given(&["--config", &path, "--workers", "5"])).expect("settled");
        let config = settled.args.config();
        assert_eq!(config.workers, 5, "the flag wins");
        assert_eq!(config.policy.max_limits.wall_ms, 60_000);
        assert!(config.insecure);
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_names_its_line() {
        for (text, line, reason) in [
            (
                "workers = 2\nmax-wal-ms = 5\n",
                2,
                "unknown key `max-wal-ms`",
            ),
            (
                "# a comment\n\nsse-keepalive-ms = 0\n",
                3,
                "invalid value '0'",
            ),
            ("listen = \"nowhere:80\"\n", 1, "invalid value 'nowhere:80'"),
            ("workers = [1]\n", 1, "takes one value, not a list"),
            ("insecure = \"yes\"\n", 1, "is true or false"),
            ("config = \"other.toml\"\n", 1, "unknown key `config`"),
            ("[sandbox]\nlevel = 1\n", 1, "give it a value, not a table"),
            ("[extra]\npython = 1\n", 1, "unknown key `extra`"),
            ("workers = \n", 1, ""),
        ] {
            let (_file, path) = file(text);
            let error = Settled::from_matches(&given(&["--config", &path]))
                .err()
                .unwrap_or_else(|| panic!("{text:?} was taken"));
            assert_eq!(error.line, Some(line), "{text:?}: {error}");
            assert!(error.to_string().contains(reason), "{text:?}: {error}");
            assert!(
                error.to_string().starts_with(&format!("{path}:{line}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn the_printed_settings_read_back_as_the_same_settings() {
        let (_file, path) = file("workers = 3\ntoken-rate = 0.5\nsandbox-bind = [\"/opt\"]\n");
        let settled =
            Settled::from_matches(&given(&["--config", &path, "--lease-secs", "9"])).expect("ok");
        let printed = settled.render();
        assert!(printed.contains("workers = 3  # config file"), "{printed}");
        assert!(printed.contains("lease-secs = 9  # flag"), "{printed}");
        assert!(
            printed.contains("listen = \"127.0.0.1:8000\"  # default"),
            "{printed}"
        );
        assert!(
            printed.contains("sandbox-bind = [\"/opt\"]  # config file"),
            "{printed}"
        );
        assert!(
            printed.contains("# node-id: not set (default: the host name)"),
            "{printed}"
        );
        let (_again, again) = file(&printed);
        let back = Settled::from_matches(&given(&["--config", &again])).expect("reads back");
        let (first, second) = (settled.args.config(), back.args.config());
        assert_eq!(format!("{first:?}"), format!("{second:?}"));
    }
}
