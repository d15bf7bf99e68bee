//! Colour for a person at a terminal: a status or verdict in green when it went well, red when
//! it did not, yellow while it is pending. Only when stdout is a terminal and `NO_COLOR` is not
//! set (no-color.org), so a pipe, a log file or a script never gets escape codes.

use std::io::IsTerminal;

/// Whether output to stdout may be coloured.
pub(super) fn enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in the colour of `word` (a status, outcome or verdict) if [`enabled`].
pub(super) fn verdict(word: &str, text: &str) -> String {
    with(enabled(), word, text)
}

/// `text` in the colour of `word` if `on`.
pub(super) fn with(on: bool, word: &str, text: &str) -> String {
    match colour_of(word) {
        Some(code) if on => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

/// SGR codes: green, yellow, dim, red.
fn colour_of(word: &str) -> Option<&'static str> {
    match word {
        "passed" | "succeeded" | "success" => Some("32"),
        "queued" | "running" => Some("33"),
        "cancelled" => Some("2"),
        "" | "-" => None,
        _ => Some("31"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_green_or_red_and_nothing_is_coloured_when_off() {
        assert_eq!(with(true, "passed", "passed"), "\x1b[32mpassed\x1b[0m");
        assert_eq!(
            with(true, "wrong_answer", "wrong_answer  "),
            "\x1b[31mwrong_answer  \x1b[0m"
        );
        assert_eq!(with(false, "passed", "passed"), "passed");
    }
}
