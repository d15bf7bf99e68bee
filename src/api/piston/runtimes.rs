//! The runtimes Piston's API offers: every kiln runtime with `piston` names in its definition,
//! the first as its language and the rest as aliases, at the version its tool reports, read as
//! SemVer; and how a request's `language` and `version` selector pick one.

use semver::{Version, VersionReq};
use serde_json::{Value, json};

use crate::runtime::Runtime;

/// A runtime as Piston shows it.
#[derive(Clone, Debug)]
pub struct Offered<'a> {
    pub runtime: &'a Runtime,
    pub language: &'a str,
    pub aliases: &'a [String],
    pub version: Version,
}

/// The runtimes with Piston names, their versions read from what their tools report (asked
/// before, see [`super::super::versions_known`]).
pub fn offered<'a>(runtimes: impl Iterator<Item = &'a Runtime>) -> Vec<Offered<'a>> {
    runtimes
        .filter_map(|runtime| {
            let (language, aliases) = runtime.piston.split_first()?;
            Some(Offered {
                runtime,
                language,
                aliases,
                version: semver_in(runtime.version().flatten().unwrap_or_default()),
            })
        })
        .collect()
}

/// The first version number in a tool's words (`Python 3.11.2`, `go version go1.22.1`,
/// `v20.10.0`), its missing parts 0; `0.0.0` when it says none.
pub fn semver_in(reported: &str) -> Version {
    let Some(start) = reported.find(|c: char| c.is_ascii_digit()) else {
        return Version::new(0, 0, 0);
    };
    let mut parts = reported[start..]
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .take(3);
    let mut next = || parts.next().flatten();
    let major = next().unwrap_or(0);
    let minor = next().unwrap_or(0);
    let patch = next().unwrap_or(0);
    Version::new(major, minor, patch)
}

/// A selector in node-semver's syntax as `semver` reads one: `||` between alternatives, spaces
/// between the comparators of one, and a bare version meaning that version (`3.10` is 3.10.x),
/// not `^` as `semver` would have it. `None` for one that cannot be read.
fn selector(text: &str) -> Option<Vec<VersionReq>> {
    text.split("||")
        .map(|alternative| {
            let comparators: Vec<String> = alternative
                .split_whitespace()
                .map(|c| match c.starts_with(|ch: char| ch.is_ascii_digit()) {
                    true if !c.contains(['x', 'X', '*']) => format!("={c}"),
                    _ => c.to_owned(),
                })
                .collect();
            match comparators.is_empty() {
                true => Some(VersionReq::STAR),
                false => VersionReq::parse(&comparators.join(", ")).ok(),
            }
        })
        .collect()
}

/// The newest offered runtime answering to `language` (its language or an alias) whose version
/// satisfies `version`.
pub fn matching<'a, 'b>(
    offered: &'b [Offered<'a>],
    language: &str,
    version: &str,
) -> Option<&'b Offered<'a>> {
    let alternatives = selector(version)?;
    offered
        .iter()
        .filter(|o| o.language == language || o.aliases.iter().any(|a| a == language))
        .filter(|o| alternatives.iter().any(|req| req.matches(&o.version)))
        .max_by(|a, b| a.version.cmp(&b.version))
}

/// `GET /api/v2/runtimes`'s list: `runtime` (the kiln runtime's name) only where two kiln
/// runtimes answer to one language, as Piston names a language's alternative runtimes.
pub fn listed(offered: &[Offered<'_>]) -> Vec<Value> {
    offered
        .iter()
        .map(|o| {
            let mut shown = json!({
                "language": o.language,
                "version": o.version.to_string(),
                "aliases": o.aliases,
            });
            if offered.iter().filter(|p| p.language == o.language).count() > 1 {
                shown["runtime"] = json!(o.runtime.name);
            }
            shown
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tools_words_are_read_as_a_semver() {
        assert_eq!(semver_in("Python 3.11.2"), Version::new(3, 11, 2));
        assert_eq!(
            semver_in("go version go1.22.1 linux/amd64"),
            Version::new(1, 22, 1)
        );
        assert_eq!(semver_in("v20.10.0"), Version::new(20, 10, 0));
        assert_eq!(
            semver_in("GNU bash, version 5.2.15(1)-release"),
            Version::new(5, 2, 15)
        );
        assert_eq!(semver_in("openjdk 17"), Version::new(17, 0, 0));
        assert_eq!(semver_in(""), Version::new(0, 0, 0));
    }

    #[test]
    fn selectors_read_as_node_semver_reads_them() {
        let matches = |text: &str, version: Version| {
            selector(text).is_some_and(|alts| alts.iter().any(|r| r.matches(&version)))
        };
        let v = Version::new(3, 11, 2);
        assert!(matches("*", v.clone()));
        assert!(matches("3.11.2", v.clone()));
        assert!(
            !matches("3.11.1", v.clone()),
            "a bare version is that version"
        );
        assert!(matches("3.11", v.clone()));
        assert!(!matches("3", Version::new(4, 0, 0)));
        assert!(matches("3.x", v.clone()));
        assert!(matches(">=3.8 <4", v.clone()));
        assert!(matches("^3.10.0", v.clone()));
        assert!(matches("2.7 || 3.11.x", v.clone()));
        assert!(!matches("<3", v));
        assert!(selector("not a version").is_none());
    }
}
