//! Files a job produces: the `outputs` it names (paths or globs under its work directory), the
//! caps on what is kept of them ([`OutputCaps`]), and the files as kept ([`OutputFile`]) or left
//! out with the reason ([`OmittedFile`]). Plain data and pure rules: the runner walks the work
//! directory, the store keeps the files, the API serves them.
//!
//! A pattern is a relative path whose components may hold `*` (any run of characters but `/`)
//! and `?` (one character but `/`); a component that is exactly `**` matches any number of
//! directories, none included. Nothing in a pattern can reach outside the work directory: no
//! absolute path, no `.` or `..` component, no empty one, no backslash.

use serde::Serialize;

use super::names::{hidden_character, shown};
use super::text::text_enum;

/// Most patterns one job may name.
pub const MAX_OUTPUT_PATTERNS: usize = 32;

/// The longest pattern accepted, in bytes: a path in the work directory is no longer.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// What is kept of the files a run produced, counted over the whole run. The database holds
/// what is kept, so these bound what one job adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputCaps {
    /// Most files kept.
    pub max_files: usize,
    /// Most bytes kept, all files together.
    pub max_bytes: u64,
}

impl Default for OutputCaps {
    fn default() -> Self {
        OutputCaps {
            max_files: 64,
            max_bytes: 16 << 20,
        }
    }
}

/// A file the run produced that matched a pattern, with its contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OutputFile {
    /// Relative to the work directory.
    pub path: String,
    pub size: u64,
    pub content_type: String,
    #[serde(skip)]
    pub contents: Vec<u8>,
}

text_enum! {
    /// Why a file that matched a pattern was not kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Omission {
        /// More files matched than [`OutputCaps::max_files`].
        TooManyFiles => "too_many_files",
        /// It did not fit in what was left of [`OutputCaps::max_bytes`].
        TooManyBytes => "too_many_bytes",
        /// A symlink, a directory, a FIFO or a device: only regular files are kept, and a
        /// symlink is never followed (it may point out of the work directory).
        NotARegularFile => "not_a_regular_file",
    }
}

/// A file that matched a pattern and was left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OmittedFile {
    pub path: String,
    /// Its size, for a regular file.
    pub size: Option<u64>,
    pub reason: Omission,
}

/// What was kept of a run's files, in path order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub files: Vec<OutputFile>,
    pub omitted: Vec<OmittedFile>,
}

/// Why `pattern` may not be an output pattern, if it may not.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let refused = |why: &str| Err(format!("{} {why}", shown(pattern)));
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
        return refused(&format!("must be 1 to {MAX_PATTERN_BYTES} bytes"));
    }
    if pattern.starts_with('/') {
        return refused("must be relative to the work directory");
    }
    if pattern.contains('\\') {
        return refused("must not contain backslashes");
    }
    if let Some(why) = hidden_character(pattern) {
        return refused(why);
    }
    if pattern
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return refused(
            "must not contain empty, '.' or '..' components: it must stay in the work directory",
        );
    }
    Ok(())
}

/// Whether the relative `path` matches `pattern` (checked by [`check_pattern`]). In time
/// bounded by the product of their lengths, however many stars a pattern has: a job chooses
/// both its patterns and its file names.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    wildcard(
        &pattern,
        &path,
        |part| *part == "**",
        |part, name| component_matches(part.as_bytes(), name.as_bytes()),
    )
}

/// `*` and `?` within one component, by bytes (a `?` is one byte of a multibyte character).
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    wildcard(pattern, name, |&b| b == b'*', |&p, &n| p == b'?' || p == n)
}

/// Whether `text` matches `pattern`, where an element `is_star` matches any run of elements
/// and any other matches one element it is `like`. Greedy with one backtracking point: a later
/// star makes every earlier choice final, so no work is redone past it.
fn wildcard<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    like: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last star seen, and where in `text` its run now ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && like(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if let Some((at, end)) = star {
            // The star takes one element more, and the rest is tried again after it.
            star = Some((at, end + 1));
            p = at + 1;
            t = end + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

/// Whether `path` is a directory some match of `patterns` could lie under, so a walk looks
/// into no more of the work directory than it must.
pub fn may_hold_matches(patterns: &[String], dir: &str) -> bool {
    let dir: Vec<&str> = dir.split('/').collect();
    patterns.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.split('/').collect();
        prefix_matches(&pattern, &dir)
    })
}

fn prefix_matches(pattern: &[&str], dir: &[&str]) -> bool {
    match (pattern.split_first(), dir.split_first()) {
        (_, None) => !pattern.is_empty(),
        (None, Some(_)) => false,
        (Some((&"**", _)), Some(_)) => true,
        (Some((first, rest)), Some((name, dir_rest))) => {
            component_matches(first.as_bytes(), name.as_bytes()) && prefix_matches(rest, dir_rest)
        }
    }
}

/// The content type a file is served with: by its extension for the common kinds, else text
/// when it is UTF-8 and bytes when not.
pub fn content_type(path: &str, contents: &[u8]) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    let known = match extension.as_deref() {
        Some("json") => Some("application/json"),
        Some("csv") => Some("text/csv; charset=utf-8"),
        Some("html" | "htm") => Some("text/html; charset=utf-8"),
        Some("xml") => Some("application/xml"),
        Some("png") => Some("image/png"),
        Some("jpg" | "jpeg") => Some("image/jpeg"),
        Some("gif") => Some("image/gif"),
        Some("svg") => Some("image/svg+xml"),
        Some("pdf") => Some("application/pdf"),
        Some("zip") => Some("application/zip"),
        Some("gz") => Some("application/gzip"),
        _ => None,
    };
    known.unwrap_or(if std::str::from_utf8(contents).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_could_leave_the_work_directory_are_refused() {
        for escaping in [
            "/etc/passwd",
            "../x",
            "a/../../b",
            "./a",
            "a//b",
            "a/",
            "a\\b",
            "",
        ] {
            assert!(check_pattern(escaping).is_err(), "{escaping:?}");
        }
        for fine in ["out.txt", "*.png", "results/**/*.json", "a?c", "**"] {
            assert_eq!(check_pattern(fine), Ok(()), "{fine:?}");
        }
    }

    #[test]
    fn a_star_stays_in_its_component_and_a_double_star_crosses_directories() {
        assert!(matches("*.txt", "a.txt"));
        assert!(!matches("*.txt", "d/a.txt"));
        assert!(matches("d/*.txt", "d/a.txt"));
        assert!(matches("**/*.txt", "a.txt"));
        assert!(matches("**/*.txt", "x/y/a.txt"));
        assert!(matches("out/**", "out/a/b"));
        assert!(!matches("out/**", "other/a"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("report.json", "report.json"));
        assert!(!matches("report.json", "report.jsonl"));
        assert!(matches("a/**/b/**/c", "a/x/b/y/z/c"));
        assert!(!matches("a/**/b/**/c", "a/x/c/y/b"));
        assert!(matches("*.tar.*", "x.tar.gz"));
    }

    #[test]
    fn a_pattern_of_many_stars_is_matched_in_time_against_a_name_that_almost_fits() {
        let stars = "*a".repeat(400) + "*b";
        let name = "a".repeat(255);
        let started = std::time::Instant::now();
        assert!(!matches(&stars, &name));
        let deep = "**/".repeat(60) + "x";
        let path = vec!["d"; 64].join("/");
        assert!(!matches(&deep, &path));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_walk_enters_only_directories_a_pattern_reaches_into() {
        let patterns = ["out/*.txt".to_owned(), "deep/**".to_owned()];
        assert!(may_hold_matches(&patterns, "out"));
        assert!(!may_hold_matches(&patterns, "out/sub"));
        assert!(may_hold_matches(&patterns, "deep/a/b"));
        assert!(!may_hold_matches(&patterns, "tmp"));
    }

    #[test]
    fn content_types_follow_the_extension_then_the_bytes() {
        assert_eq!(content_type("a.PNG", b"\x89PNG"), "image/png");
        assert_eq!(content_type("notes", b"hello"), "text/plain; charset=utf-8");
        assert_eq!(
            content_type("blob.bin", b"\xff"),
            "application/octet-stream"
        );
    }
}
