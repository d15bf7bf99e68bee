//! Judging a test case: its [`Verdict`] from how its run ended and, for a clean exit, from
//! comparing its stdout with the expected output under a [`CompareMode`]. A wrong answer comes
//! with a short excerpt of the first difference, so a failing case explains itself in one line.
//!
//! Pure functions over text, kept apart from the store that records the verdict and the worker
//! that calls them, so every rule here is tested directly.

use serde::{Deserialize, Serialize};

use super::failure::{self, clip};
use super::text::text_enum;
use super::{Outcome, RunResult};

text_enum! {
    /// How stdout is compared with the expected output.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum CompareMode {
        /// Byte for byte.
        Exact => "exact",
        /// Trailing white space of every line, and empty lines at the end, do not count.
        #[default]
        Trim => "trim",
        /// Only the sequence of white-space separated tokens counts.
        Tokens => "tokens",
    }
}

text_enum! {
    /// What a case's run amounts to, as a judge reports it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Verdict {
        /// Exited 0 and, if an output was expected, printed it.
        Passed => "passed",
        /// Exited 0 with other output than expected.
        WrongAnswer => "wrong_answer",
        /// The compiler refused the code.
        CompileError => "compile_error",
        /// Exited non-zero or was killed by a signal.
        RuntimeError => "runtime_error",
        /// Ran out of wall-clock or CPU time.
        TimedOut => "timed_out",
        MemoryLimit => "memory_limit",
        OutputLimit => "output_limit",
        Cancelled => "cancelled",
        /// kiln could not run it (runtime missing, setup failed, lost with no attempts left), or
        /// could not run it as the case asked (`invalid_request`).
        Error => "error",
    }
}

impl Verdict {
    /// The verdict of a run that did not end cleanly, or of a case that ended without running
    /// to the end (cancelled, lost). `Success` alone needs the output compared, see [`judge`].
    pub fn of_outcome(outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Success => Verdict::Passed,
            Outcome::NonzeroExit | Outcome::Signal => Verdict::RuntimeError,
            Outcome::WallTimeLimit | Outcome::CpuTimeLimit => Verdict::TimedOut,
            Outcome::MemoryLimit => Verdict::MemoryLimit,
            Outcome::OutputLimit => Verdict::OutputLimit,
            Outcome::CompileError => Verdict::CompileError,
            Outcome::Cancelled => Verdict::Cancelled,
            // The case could not be run as it asked: nothing of the code was judged.
            Outcome::InvalidRequest
            | Outcome::LeaseExpired
            | Outcome::Shutdown
            | Outcome::RunnerError => Verdict::Error,
        }
    }
}

/// A verdict and the line that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub detail: Option<String>,
}

/// Judges a finished run of a case.
pub fn judge(
    outcome: Outcome,
    result: &RunResult,
    expected: Option<&[u8]>,
    mode: CompareMode,
) -> Judgement {
    let verdict = Verdict::of_outcome(outcome);
    // What the program said of its failure is only read for an explanation.
    let stderr = String::from_utf8_lossy(&result.stderr);
    let detail = match outcome {
        Outcome::Success => {
            return match expected.and_then(|e| first_byte_difference(e, &result.stdout, mode)) {
                Some(difference) => Judgement {
                    verdict: Verdict::WrongAnswer,
                    detail: Some(difference),
                },
                None => Judgement {
                    verdict,
                    detail: None,
                },
            };
        }
        Outcome::NonzeroExit | Outcome::Signal => {
            let how = match (result.exit_code, result.signal) {
                (Some(code), _) => Some(format!("exit code {code}")),
                (None, Some(signal)) => Some(match failure::signal_name(signal) {
                    Some(name) => format!("killed by signal {signal} ({name})"),
                    None => format!("killed by signal {signal}"),
                }),
                (None, None) => None,
            };
            explained(how, failure::error_line(&stderr))
        }
        // Said by the runtime rather than seen by the kernel: its message tells how it allocated.
        Outcome::MemoryLimit if failure::out_of_memory(&stderr) => explained(
            Some("memory limit".to_owned()),
            failure::error_line(&stderr),
        ),
        Outcome::CompileError => {
            let stdout = String::from_utf8_lossy(&result.stdout);
            let mut lines = stderr.lines().chain(stdout.lines());
            // gcc and clang open with context ("In function ..."); the first error says more.
            let first_error = lines.clone().find(|line| line.contains("error"));
            first_error
                .or_else(|| lines.find(|line| !line.trim().is_empty()))
                .map(|line| clip(line, failure::ERROR_LINE_CHARS))
        }
        other => Some(other.as_str().replace('_', " ")),
    };
    Judgement { verdict, detail }
}

/// `how` the run ended, then the program's own `why` where it wrote one.
fn explained(how: Option<String>, why: Option<String>) -> Option<String> {
    match (how, why) {
        (Some(how), Some(why)) => Some(format!("{how}: {why}")),
        (how, why) => how.or(why),
    }
}

/// Characters of context shown on each side of the first difference.
const BEFORE: usize = 16;
const AFTER: usize = 24;

/// Where the bytes `actual` first depart from `expected` under `mode`: as text (by line and
/// column) when both are UTF-8, else as bytes, the mode's white space being ASCII's. Never
/// through a lossy decoding, which would make different output look the same.
pub fn first_byte_difference(expected: &[u8], actual: &[u8], mode: CompareMode) -> Option<String> {
    if let (Ok(expected), Ok(actual)) = (std::str::from_utf8(expected), std::str::from_utf8(actual))
    {
        return first_difference(expected, actual, mode);
    }
    let normal = |bytes: &[u8]| -> Vec<u8> {
        match mode {
            CompareMode::Exact => bytes.to_vec(),
            CompareMode::Trim => {
                let mut lines: Vec<&[u8]> = bytes
                    .split(|&b| b == b'\n')
                    .map(<[u8]>::trim_ascii_end)
                    .collect();
                while lines.last().is_some_and(|line| line.is_empty()) {
                    lines.pop();
                }
                lines.join(&b'\n')
            }
            CompareMode::Tokens => bytes
                .split(u8::is_ascii_whitespace)
                .filter(|token| !token.is_empty())
                .collect::<Vec<_>>()
                .join(&b' '),
        }
    };
    let (expected, actual) = (normal(expected), normal(actual));
    let at = expected.iter().zip(&actual).position(|(e, a)| e != a);
    let at = match at {
        Some(at) => at,
        None if expected.len() == actual.len() => return None,
        None => expected.len().min(actual.len()),
    };
    let show = |bytes: &[u8]| match bytes.get(at..).filter(|rest| !rest.is_empty()) {
        Some(rest) => {
            let hex: Vec<String> = rest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("bytes {}", hex.join(" "))
        }
        None => "end of output".to_owned(),
    };
    let compared = match mode {
        CompareMode::Exact => "",
        CompareMode::Trim => " of the trimmed lines",
        CompareMode::Tokens => " of the tokens",
    };
    Some(format!(
        "byte {}{compared} (not UTF-8, compared as bytes): expected {}, got {}",
        at + 1,
        show(&expected),
        show(&actual)
    ))
}

/// Where `actual` first departs from `expected` under `mode`, as a one-line explanation;
/// `None` if they match.
pub fn first_difference(expected: &str, actual: &str, mode: CompareMode) -> Option<String> {
    match mode {
        CompareMode::Exact => exact_difference(expected, actual),
        CompareMode::Trim => trim_difference(expected, actual),
        CompareMode::Tokens => token_difference(expected, actual),
    }
}

fn exact_difference(expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    // The first differing character; equal up to there, so its byte offset is the same in both.
    let at = expected
        .char_indices()
        .zip(actual.chars())
        .find(|((_, e), a)| e != a)
        .map_or_else(|| expected.len().min(actual.len()), |((i, _), _)| i);
    let (line, column) = position(expected, at);
    Some(format!(
        "line {line}, column {column}: expected {}, got {}",
        excerpt(expected, at, true),
        excerpt(actual, at, true)
    ))
}

fn trim_difference(expected: &str, actual: &str) -> Option<String> {
    let (expected, actual) = (trimmed_lines(expected), trimmed_lines(actual));
    let line = (0..expected.len().max(actual.len())).find(|&i| expected.get(i) != actual.get(i))?;
    let (e, a) = (expected.get(line), actual.get(line));
    let at = match (e, a) {
        (Some(e), Some(a)) => e
            .char_indices()
            .zip(a.chars())
            .find(|((_, ec), ac)| ec != ac)
            .map_or_else(|| e.len().min(a.len()), |((i, _), _)| i),
        _ => 0,
    };
    let column = e.or(a).map_or(1, |text| text[..at].chars().count() + 1);
    let show = |text: Option<&&str>| match text {
        Some(text) => excerpt(text, at, false),
        None => "end of output".to_owned(),
    };
    Some(format!(
        "line {}, column {column}: expected {}, got {}",
        line + 1,
        show(e),
        show(a)
    ))
}

/// Lines without trailing white space, trailing empty lines dropped.
fn trimmed_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines
}

fn token_difference(expected: &str, actual: &str) -> Option<String> {
    let expected: Vec<&str> = expected.split_whitespace().collect();
    let mut actual_tokens = tokens_at(actual);
    let mut index = 0;
    loop {
        let e = expected.get(index).copied();
        let a = actual_tokens.next();
        match (e, a) {
            (None, None) => return None,
            (Some(e), Some((a, _))) if e == a => index += 1,
            (e, a) => {
                let show = |token: Option<&str>| match token {
                    Some(token) => format!("{:?}", clip(token, AFTER)),
                    None => "end of output".to_owned(),
                };
                let place = match a {
                    Some((_, at)) => {
                        let (line, column) = position(actual, at);
                        format!(" (line {line}, column {column})")
                    }
                    None => String::new(),
                };
                return Some(format!(
                    "token {}{place}: expected {}, got {}",
                    index + 1,
                    show(e),
                    show(a.map(|(token, _)| token))
                ));
            }
        }
    }
}

/// The white-space separated tokens of `text` with their byte offsets.
fn tokens_at(text: &str) -> impl Iterator<Item = (&str, usize)> {
    text.split_whitespace().map(move |token| {
        // split_whitespace yields slices of `text`, so the pointer difference is the offset.
        (token, token.as_ptr() as usize - text.as_ptr() as usize)
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..at].chars().count() + 1)
}

/// A quoted piece of `text` around byte offset `at`: a little before it on the same line, more
/// after it. With `across_lines`, the piece may run past a line end (shown as `\n`), which is what
/// tells a missing newline apart in exact mode.
fn excerpt(text: &str, at: usize, across_lines: bool) -> String {
    if across_lines && at >= text.len() {
        return "end of output".to_owned();
    }
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let start = text[line_start..at]
        .char_indices()
        .rev()
        .nth(BEFORE - 1)
        .map_or(line_start, |(i, _)| line_start + i);
    let rest = &text[at..];
    let rest = if across_lines {
        rest
    } else {
        rest.split('\n').next().unwrap_or_default()
    };
    let prefix = if start > line_start { "…" } else { "" };
    let piece = format!("{prefix}{}{}", &text[start..at], clip(rest, AFTER));
    format!("{piece:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(expected: &str, actual: &str, mode: CompareMode) -> Option<String> {
        first_difference(expected, actual, mode)
    }

    #[test]
    fn trim_ignores_trailing_white_space_and_trailing_empty_lines_only() {
        use CompareMode::Trim;
        assert_eq!(diff("1 2\n3\n", "1 2  \n3\t\n\n\n", Trim), None);
        assert_eq!(diff("a\r\nb", "a\nb\n", Trim), None);
        assert_eq!(
            diff("1 2\n3\n", " 1 2\n3\n", Trim).as_deref(),
            Some(r#"line 1, column 1: expected "1 2", got " 1 2""#)
        );
        assert_eq!(
            diff("1\n2\n3\n", "1\n2\n", Trim).as_deref(),
            Some(r#"line 3, column 1: expected "3", got end of output"#)
        );
        assert_eq!(
            diff("1\n", "1\n\nextra\n", Trim).as_deref(),
            Some(r#"line 2, column 1: expected end of output, got """#)
        );
    }

    #[test]
    fn the_first_difference_shows_its_line_column_and_a_little_context() {
        let expected = "header\nthe answer is 42 and more text follows here\n";
        let actual = "header\nthe answer is 41 and more text follows here\n";
        assert_eq!(
            diff(expected, actual, CompareMode::Trim).as_deref(),
            Some(
                r#"line 2, column 16: expected "the answer is 42 and more text follows …", got "the answer is 41 and more text follows …""#
            )
        );
    }

    #[test]
    fn exact_tells_a_missing_newline_apart() {
        assert_eq!(diff("42\n", "42\n", CompareMode::Exact), None);
        assert_eq!(
            diff("42\n", "42", CompareMode::Exact).as_deref(),
            Some(r#"line 1, column 3: expected "42\n", got end of output"#)
        );
        assert_eq!(
            diff("42\n", "42 \n", CompareMode::Exact).as_deref(),
            Some(r#"line 1, column 3: expected "42\n", got "42 \n""#)
        );
    }

    #[test]
    fn tokens_ignore_all_white_space_and_point_into_the_output() {
        use CompareMode::Tokens;
        assert_eq!(diff("1 2 3", "1\n2   3\n\n", Tokens), None);
        assert_eq!(
            diff("1 2 3", "1\n  7 3", Tokens).as_deref(),
            Some(r#"token 2 (line 2, column 3): expected "2", got "7""#)
        );
        assert_eq!(
            diff("1 2", "1", Tokens).as_deref(),
            Some(r#"token 2: expected "2", got end of output"#)
        );
    }

    #[test]
    fn a_clean_exit_is_judged_by_its_output_and_anything_else_by_its_outcome() {
        let result = |stdout: &str| RunResult {
            stdout: stdout.as_bytes().to_vec(),
            exit_code: Some(0),
            ..RunResult::default()
        };
        let mode = CompareMode::Trim;
        let passed = judge(Outcome::Success, &result("4\n"), Some(b"4"), mode);
        assert_eq!(passed.verdict, Verdict::Passed);
        let wrong = judge(Outcome::Success, &result("5\n"), Some(b"4"), mode);
        assert_eq!(wrong.verdict, Verdict::WrongAnswer);
        assert!(wrong.detail.is_some_and(|d| d.contains("expected \"4\"")));
        let unchecked = judge(Outcome::Success, &result("anything"), None, mode);
        assert_eq!(unchecked.verdict, Verdict::Passed);
        let crashed = RunResult {
            exit_code: Some(3),
            ..result("4\n")
        };
        let crashed = judge(Outcome::NonzeroExit, &crashed, Some(b"4"), mode);
        assert_eq!(crashed.verdict, Verdict::RuntimeError);
        assert_eq!(crashed.detail.as_deref(), Some("exit code 3"));
        let traceback = RunResult {
            exit_code: Some(1),
            stderr: "Traceback (most recent call last):\n  File \"/work/main.py\", line 1\n\
                     AssertionError: expected 3\n"
                .as_bytes()
                .to_vec(),
            ..result("")
        };
        let failed = judge(Outcome::NonzeroExit, &traceback, None, mode);
        assert_eq!(
            failed.detail.as_deref(),
            Some("exit code 1: AssertionError: expected 3")
        );
        let aborted = RunResult {
            exit_code: None,
            signal: Some(libc::SIGABRT),
            stderr: "main: main.c:3: main: Assertion `0' failed.\n"
                .as_bytes()
                .to_vec(),
            ..result("")
        };
        let aborted = judge(Outcome::Signal, &aborted, None, mode);
        assert_eq!(
            aborted.detail.as_deref(),
            Some("killed by signal 6 (SIGABRT): main: main.c:3: main: Assertion `0' failed.")
        );
        let said = RunResult {
            exit_code: Some(1),
            stderr: "Traceback (most recent call last):\n  File \"x\", line 1\nMemoryError\n"
                .as_bytes()
                .to_vec(),
            ..result("")
        };
        let said = judge(Outcome::MemoryLimit, &said, None, mode);
        assert_eq!(said.verdict, Verdict::MemoryLimit);
        assert_eq!(said.detail.as_deref(), Some("memory limit: MemoryError"));
        let killed = RunResult {
            signal: Some(libc::SIGKILL),
            stderr: "allocating\n".as_bytes().to_vec(),
            ..result("")
        };
        let killed = judge(Outcome::MemoryLimit, &killed, None, mode);
        assert_eq!(killed.detail.as_deref(), Some("memory limit"));
        let slow = judge(Outcome::WallTimeLimit, &result(""), Some(b"4"), mode);
        assert_eq!(slow.verdict, Verdict::TimedOut);
        assert_eq!(slow.detail.as_deref(), Some("wall time limit"));
    }

    #[test]
    fn output_that_is_not_utf8_is_compared_as_bytes_never_as_a_lossy_decoding() {
        let (nul_ff, fffd) = (b"\xff\n".as_slice(), "\u{fffd}\n".as_bytes());
        let differs = first_byte_difference(fffd, nul_ff, CompareMode::Exact);
        assert_eq!(
            differs.as_deref(),
            Some(
                "byte 1 (not UTF-8, compared as bytes): expected bytes ef bf bd 0a, got bytes ff 0a"
            )
        );
        assert_eq!(
            first_byte_difference(nul_ff, nul_ff, CompareMode::Exact),
            None
        );
        let trimmed = first_byte_difference(b"\xff\x00", b"\xff\x00  \n\n", CompareMode::Trim);
        assert_eq!(trimmed, None);
        assert_eq!(
            first_byte_difference(b"\xff 1", b"\xff\n\t1\n", CompareMode::Tokens),
            None
        );
        let short = first_byte_difference(b"\xff\x01", b"\xff", CompareMode::Exact);
        assert_eq!(
            short.as_deref(),
            Some("byte 2 (not UTF-8, compared as bytes): expected bytes 01, got end of output")
        );
    }

    #[test]
    fn excerpts_are_cut_short_and_keep_multibyte_characters_whole() {
        let long = format!("{}é{}", "x".repeat(30), "y".repeat(100));
        let other = format!("{}e{}", "x".repeat(30), "y".repeat(100));
        let found = diff(&long, &other, CompareMode::Exact).unwrap_or_default();
        assert!(
            found.starts_with("line 1, column 31: expected \"…xxxxxxxxxxxxxxxxé"),
            "{found}"
        );
        assert!(found.len() < 200, "{found}");
    }
}
