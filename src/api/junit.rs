//! A batch as JUnit XML, the report format CI systems ingest: one `<testcase>` per case, in suite
//! order. A case that passed is bare; a wrong answer, crash, limit or compile error is a
//! `<failure>` quoting expected and actual output; kiln's own errors are `<error>`; cancelled and
//! unfinished cases are `<skipped>`.
//!
//! Everything a program printed goes through [`escape`], which also replaces the characters XML
//! 1.0 cannot carry at all (most control characters), so any output yields a well-formed file.

use std::fmt::Write;

use crate::job::Status;
use crate::job::batch::{Batch, CaseReport};
use crate::job::verdict::Verdict;

pub fn render(batch: &Batch, cases: &[CaseReport]) -> String {
    let (mut failures, mut errors, mut skipped) = (0, 0, 0);
    for case in cases {
        match kind(case) {
            Kind::Passed => {}
            Kind::Failure => failures += 1,
            Kind::Error => errors += 1,
            Kind::Skipped => skipped += 1,
        }
    }
    let time = seconds(
        batch
            .started_at
            .zip(batch.finished_at)
            .map_or(0, |(start, end)| end - start),
    );
    let totals = format!(
        r#"tests="{}" failures="{failures}" errors="{errors}" skipped="{skipped}" time="{time}""#,
        cases.len()
    );
    let mut xml = String::with_capacity(256 + cases.len() * 256);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(xml, r#"<testsuites name="kiln" {totals}>"#);
    let _ = writeln!(
        xml,
        r#"  <testsuite name="{}" {totals} timestamp="{}">"#,
        escape(&format!("kiln batch {}", batch.id)),
        escape(&crate::job::time::rfc3339(batch.created_at))
    );
    xml.push_str("    <properties>\n");
    let mut properties = vec![("batch_id".to_owned(), batch.id.to_string())];
    if let Some(runtime) = &batch.runtime {
        properties.push(("runtime".to_owned(), runtime.clone()));
    }
    properties.push(("compare".to_owned(), batch.compare.as_str().to_owned()));
    if let Some(groups) = &batch.groups {
        properties.push(("groups".to_owned(), groups.groups.to_string()));
        for (k, value) in &groups.pass_at_k.0 {
            let value = value.map_or_else(|| "undefined".to_owned(), |v| format!("{v:.6}"));
            properties.push((format!("pass@{k}"), value));
        }
    }
    for (name, value) in properties {
        let _ = writeln!(
            xml,
            r#"      <property name="{}" value="{}"/>"#,
            escape(&name),
            escape(&value)
        );
    }
    xml.push_str("    </properties>\n");
    // Test tools group test cases by class: a case's group (its problem) is that class.
    let suite_class = batch
        .runtime
        .as_ref()
        .map_or_else(|| "kiln".to_owned(), |runtime| format!("kiln.{runtime}"));
    for case in cases {
        let c = &case.case;
        let classname = escape(c.group.as_deref().unwrap_or(&suite_class));
        let _ = write!(
            xml,
            r#"    <testcase name="{}" classname="{classname}" time="{}""#,
            escape(&c.name),
            seconds(
                c.wall_ms
                    .map_or(0, |ms| i64::try_from(ms).unwrap_or(i64::MAX))
            )
        );
        let verdict = c.verdict.map_or("not finished", Verdict::as_str);
        let message = escape(c.detail.as_deref().unwrap_or(verdict));
        match kind(case) {
            Kind::Passed => xml.push_str("/>\n"),
            Kind::Skipped => {
                let why = match c.verdict {
                    Some(_) => message,
                    None => format!("not finished: {}", c.status.as_str()),
                };
                let _ = writeln!(
                    xml,
                    ">\n      <skipped message=\"{why}\"/>\n    </testcase>"
                );
            }
            Kind::Error => {
                let _ = writeln!(
                    xml,
                    ">\n      <error type=\"{verdict}\" message=\"{message}\"/>\n    </testcase>"
                );
            }
            Kind::Failure => {
                let _ = write!(
                    xml,
                    ">\n      <failure type=\"{verdict}\" message=\"{message}\">"
                );
                if let Some(expected) = &case.expected_output {
                    let _ = write!(
                        xml,
                        "expected:\n{}\nactual:\n{}",
                        escape_text(expected),
                        escape_text(&case.stdout)
                    );
                }
                xml.push_str("</failure>\n");
                if !case.stdout.is_empty() {
                    let _ = writeln!(
                        xml,
                        "      <system-out>{}</system-out>",
                        escape_text(&case.stdout)
                    );
                }
                if !case.stderr.is_empty() {
                    let _ = writeln!(
                        xml,
                        "      <system-err>{}</system-err>",
                        escape_text(&case.stderr)
                    );
                }
                xml.push_str("    </testcase>\n");
            }
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Passed,
    /// The program's fault.
    Failure,
    /// kiln's fault.
    Error,
    Skipped,
}

fn kind(case: &CaseReport) -> Kind {
    match case.case.verdict {
        Some(Verdict::Passed) => Kind::Passed,
        Some(Verdict::Error) => Kind::Error,
        Some(Verdict::Cancelled) | None => Kind::Skipped,
        Some(_) if case.case.status == Status::Cancelled => Kind::Skipped,
        Some(_) => Kind::Failure,
    }
}

/// Milliseconds as JUnit's seconds.
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Text safe in double-quoted attributes: line breaks and tabs as references, as a literal one
/// would be read back as a space.
pub fn escape(text: &str) -> String {
    escape_with(text, true)
}

/// Text safe in element content.
pub fn escape_text(text: &str) -> String {
    escape_with(text, false)
}

/// Characters XML 1.0 forbids even as references (control characters other than tab, newline
/// and carriage return, U+FFFE and U+FFFF) become U+FFFD.
fn escape_with(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // A parser turns a literal carriage return into a newline.
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' | '\t' => out.push(c),
            '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            c if u32::from(c) < 0x20 => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_quotes_and_forbidden_characters_are_escaped() {
        assert_eq!(
            escape("a<b>&\"c\" 'd'\u{0}\u{1b}[0m\ttab\nnl"),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;\u{FFFD}\u{FFFD}[0m&#9;tab&#10;nl"
        );
        assert_eq!(escape_text("a\tb\nc\r\n"), "a\tb\nc&#13;\n");
        assert_eq!(escape("ünïcødé ✓"), "ünïcødé ✓");
    }

    #[test]
    fn times_are_seconds_with_milliseconds() {
        assert_eq!(seconds(0), "0.000");
        assert_eq!(seconds(1234), "1.234");
        assert_eq!(seconds(56), "0.056");
    }
}
