//! What a name may look like. Names (case names, file names, runtime names) are shown to people:
//! in listings, JUnit reports, logs and work directories. A name that hides characters can pose
//! as another (`test_ok` with a zero-width space in it), and a bidi override reverses what
//! follows it on screen (`report\u{202E}txt.sh` displays as `reporths.txt`). So names refuse
//! control characters, characters that display as nothing or as a blank other than the space,
//! and Unicode format characters; everything else, any script included, is allowed.
//!
//! Two names of one submission (two file names, a file name and the code's file, two case
//! names) must also not be *confusable*: different, yet alike once each character is replaced
//! by its prototype in Unicode's confusables data (UTS #39 skeletons: Cyrillic `а` and Latin
//! `a`, `1` and `l`, `rn` and `m`). A reader could not tell which one a report or listing means.
//!
//! Content is different: code, stdin, args and expected output may hold any text, bidi
//! characters too (a program may print them), except NUL where the operating system cannot pass
//! it on (argv, and the code file kiln writes); [`super::validate`] applies those rules.
//!
//! Error messages quote what was refused through [`shown`], which cuts it short, so a megabyte
//! of name is not echoed back in the answer.

/// Why `name` may not be a name, if it may not.
pub fn hidden_character(name: &str) -> Option<&'static str> {
    name.chars().find_map(|c| {
        if c.is_control() {
            Some("must not contain control characters")
        } else if is_format(c) {
            Some("must not contain invisible or bidirectional formatting characters")
        } else if c != ' ' && (c.is_whitespace() || is_blank_letter(c)) {
            Some("must not contain white space other than the plain space")
        } else {
            None
        }
    })
}

/// Unicode's format characters (general category Cf: zero-width spaces and joiners, bidi
/// embeddings, overrides, marks and isolates, the byte order mark, invisible operators, tags),
/// the combining grapheme joiner, and the line and paragraph separators.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{34F}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}'
        | '\u{890}'..='\u{891}' | '\u{8E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// Letters that render as blank space (the Hangul fillers, the blank Braille pattern).
fn is_blank_letter(c: char) -> bool {
    matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}'
    )
}

/// Finds names that look alike: remembers each name it is given and answers, for a name
/// different from every earlier one but confusable with one of them, that earlier name.
#[derive(Default)]
pub struct LookAlikes {
    by_skeleton: HashMap<String, String>,
}

impl LookAlikes {
    pub fn with_capacity(n: usize) -> LookAlikes {
        LookAlikes {
            by_skeleton: HashMap::with_capacity(n),
        }
    }

    /// The earlier name `name` can be mistaken for, if any; an identical name is not one (the
    /// callers refuse duplicates in their own words).
    pub fn check(&mut self, name: &str) -> Option<&str> {
        match self.by_skeleton.entry(skeleton(name).collect()) {
            Entry::Occupied(earlier) if earlier.get() != name => Some(earlier.into_mut()),
            Entry::Occupied(_) => None,
            Entry::Vacant(slot) => {
                slot.insert(name.to_owned());
                None
            }
        }
    }
}

/// Characters of a refused value quoted in an error message.
const SHOWN_CHARS: usize = 64;

/// `value` quoted for an error message (escaped as Rust's `Debug` does), cut after
/// `SHOWN_CHARS` characters.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
    }
}

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use unicode_security::skeleton;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_in_any_script_with_plain_spaces_are_fine() {
        for name in [
            "case 1",
            "données.txt",
            "テスト",
            "src/main.rs",
            "Ünïcödé ✓",
        ] {
            assert_eq!(hidden_character(name), None, "{name}");
        }
    }

    #[test]
    fn hidden_and_reordering_characters_are_refused() {
        for name in [
            "evil\u{202E}txt.sh",
            "test\u{200B}ok",
            "\u{FEFF}main.py",
            "a\u{2066}b\u{2069}",
            "tab\there",
            "nul\0",
            "no\u{A0}break",
            "filler\u{3164}",
            "line\u{2028}sep",
            "tag\u{E0041}",
        ] {
            assert!(hidden_character(name).is_some(), "{name:?}");
        }
    }

    #[test]
    fn names_that_only_look_alike_are_found() {
        let mut seen = LookAlikes::default();
        assert_eq!(seen.check("main.py"), None);
        assert_eq!(seen.check("m\u{430}in.py"), Some("main.py"), "Cyrillic a");
        assert_eq!(
            seen.check("main.py"),
            None,
            "the same name is not a look-alike"
        );
        assert_eq!(seen.check("test1"), None);
        assert_eq!(seen.check("testl"), Some("test1"));
        assert_eq!(seen.check("données"), None);
        assert_eq!(
            seen.check("donne\u{301}es"),
            Some("données"),
            "decomposed é"
        );
        assert_eq!(seen.check("case 2"), None, "different names stay apart");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        assert_eq!(shown("abc"), "\"abc\"");
        let long = "x".repeat(10_000);
        let quoted = shown(&long);
        assert!(quoted.len() < 100, "{quoted}");
        assert!(quoted.ends_with("(10000 bytes)"), "{quoted}");
    }

    proptest! {
        #[test]
        fn shown_never_panics_and_stays_short(value in any::<String>()) {
            let quoted = shown(&value);
            // Each char escapes to at most 10 bytes (\u{10FFFF}), plus quotes and the suffix.
            prop_assert!(quoted.len() <= SHOWN_CHARS * 10 + 40);
        }

        #[test]
        fn a_name_with_a_format_character_anywhere_is_refused(
            before in "[a-z]{0,8}",
            after in "[a-z]{0,8}",
            c in prop::sample::select(vec!['\u{200B}', '\u{200D}', '\u{202A}', '\u{202E}',
                                           '\u{2067}', '\u{FEFF}', '\u{2060}', '\u{E007F}']),
        ) {
            let name = format!("{before}{c}{after}");
            prop_assert!(hidden_character(&name).is_some(), "{:?}", name);
        }
    }
}
