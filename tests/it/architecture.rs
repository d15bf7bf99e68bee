//! The module graph, read from the source: kiln's top-level modules use one another without a
//! cycle, and the domain (`src/job/`) uses nothing of kiln outside itself, so that it stays at
//! the bottom where config, store, api, runner and the rest can all build on it.
//!
//! Every `src/**/*.rs` file is read with its comments and its test code removed (items under
//! `#[cfg(test)]`, and the files only such a `mod` declaration brings in). What is left is
//! searched for `crate::`, `super::` and `kiln::` paths, inside `use` groups and expressions
//! alike, and in string literals too (serde's `serialize_with = "crate::…"` is a use). A doc
//! link is not a dependency and is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module that must use nothing of kiln outside itself.
const DOMAIN: &str = "job";

#[test]
fn kiln_modules_use_one_another_without_a_cycle() {
    let graph = Graph::of_crate();
    if let Some(cycle) = graph.cycle() {
        panic!(
            "the top-level modules form a cycle:\n{}",
            graph.describe(&cycle)
        );
    }
}

#[test]
fn the_domain_uses_nothing_of_kiln_outside_src_job() {
    let graph = Graph::of_crate();
    let outside: Vec<String> = graph
        .uses_of(DOMAIN)
        .map(|(to, at)| format!("{DOMAIN} -> {to} ({at})"))
        .collect();
    assert!(
        outside.is_empty(),
        "src/{DOMAIN}/ must not use other kiln modules:\n{}",
        outside.join("\n")
    );
    assert!(
        graph.modules.contains(DOMAIN),
        "no module {DOMAIN}: the check would hold nothing"
    );
}

#[test]
fn the_reader_sees_every_kind_of_path_and_skips_tests_and_comments() {
    let source = r##"
        //! Mentions crate::in_a_doc_comment, which is no use.
        use std::fmt;
        use crate::{alpha::{A, B}, beta, self as _};
        use super::gamma::G; /* crate::in_a_block_comment */
        use super::super::delta;

        #[derive(serde::Serialize)]
        struct S {
            #[serde(serialize_with = "crate::epsilon::render")]
            at: i64,
            url: &'static str,
        }

        fn f(c: char) -> u64 {
            let _quote = '"';
            let _url = "http://crate::not_after_a_slash_comment";
            let _raw = r#"a "raw" string"#;
            crate::zeta::now() + kiln::eta::x() + c as u64
        }

        mod inner {
            use super::theta;
            fn g() { super::super::super::iota::run(); }
        }

        #[cfg(test)]
        mod tests {
            use crate::only_in_tests;
        }

        #[cfg(test)]
        mod test_helpers;
    "##;
    let file = File::parse(&["top".into(), "file".into()], source);
    let used: BTreeSet<&str> = file.uses.iter().map(|(name, _)| name.as_str()).collect();
    // `super::` from top::file stays in `top`, as does `super::theta` from top::file::inner;
    // `super::super::` from top::file leaves it, and from inside `inner` it takes one more.
    assert_eq!(
        used,
        BTreeSet::from([
            "alpha",
            "beta",
            "delta",
            "epsilon",
            "eta",
            "iota",
            "not_after_a_slash_comment",
            "top",
            "zeta",
        ])
    );
    assert_eq!(file.test_only, vec![vec!["top", "file", "test_helpers"]]);
}

#[test]
fn a_cycle_is_found_and_shown_with_where_each_use_is() {
    let mut graph = Graph::default();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph.add(from, to, format!("src/{from}.rs:1"));
    }
    let cycle = graph.cycle().expect("a -> b -> c -> a");
    assert_eq!(cycle, ["a", "b", "c", "a"]);
    assert_eq!(
        graph.describe(&cycle),
        "  a -> b (src/a.rs:1)\n  b -> c (src/b.rs:1)\n  c -> a (src/c.rs:1)"
    );
    graph.edges.get_mut("c").expect("c").remove("a");
    assert_eq!(graph.cycle(), None);
}

/// Which top-level module uses which, with the first place each use is written.
#[derive(Default)]
struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

impl Graph {
    fn of_crate() -> Graph {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for path in rust_files(&src) {
            let relative = path.strip_prefix(&src).expect("under src");
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let parsed = File::parse(&module_path(relative), &text);
            files.push((relative.display().to_string(), parsed));
        }
        let test_only: Vec<Vec<String>> = files
            .iter()
            .flat_map(|(_, f)| f.test_only.clone())
            .collect();
        let mut graph = Graph::default();
        // The crate root declares the modules; what it declares only for tests is stripped.
        let (_, root) = files
            .iter()
            .find(|(_, f)| f.module.is_empty())
            .expect("src/lib.rs");
        graph.modules = root.declared.iter().cloned().collect();
        for (path, file) in &files {
            let Some(top) = file.module.first() else {
                continue;
            };
            if test_only.iter().any(|t| file.module.starts_with(t)) {
                continue;
            }
            for (used, line) in &file.uses {
                if used != top && graph.modules.contains(used) {
                    graph.add(top, used, format!("src/{path}:{line}"));
                }
            }
        }
        graph
    }

    fn add(&mut self, from: &str, to: &str, at: String) {
        self.modules.extend([from.to_owned(), to.to_owned()]);
        self.edges
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_insert(at);
    }

    /// The modules `from` uses, each with where.
    fn uses_of(&self, from: &str) -> impl Iterator<Item = (&String, &String)> {
        self.edges.get(from).into_iter().flatten()
    }

    /// One cycle, as the modules along it with the first repeated at the end.
    fn cycle(&self) -> Option<Vec<String>> {
        let mut done = BTreeSet::new();
        for start in &self.modules {
            let mut path = Vec::new();
            if let Some(cycle) = self.cycle_from(start, &mut path, &mut done) {
                return Some(cycle);
            }
        }
        None
    }

    /// Depth first from `module`, with `path` the modules on the way to it.
    fn cycle_from(
        &self,
        module: &String,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.clone());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.clone());
        for (next, _) in self.uses_of(module) {
            if let Some(cycle) = self.cycle_from(next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.clone());
        None
    }

    fn describe(&self, cycle: &[String]) -> String {
        cycle
            .windows(2)
            .map(|pair| {
                let at = &self.edges[&pair[0]][&pair[1]];
                format!("  {} -> {} ({at})", pair[0], pair[1])
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `store/write.rs` is `store::write`, `store/mod.rs` is `store`, `lib.rs` the crate root. The
/// binary's `main.rs` is taken as a module `main`: it uses the library through `kiln::`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|last| last == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

/// What one file uses, once its comments and test code are gone.
struct File {
    module: Vec<String>,
    /// The top-level modules its paths name, each with the line.
    uses: Vec<(String, usize)>,
    /// Modules declared `#[cfg(test)] mod name;`: their files are compiled only for tests.
    test_only: Vec<Vec<String>>,
    /// The names of the modules it declares (outside test code).
    declared: Vec<String>,
}

impl File {
    fn parse(module: &[String], text: &str) -> File {
        let (tokens, test_only_at) = strip_tests(lex(text));
        let mut file = File {
            module: module.to_vec(),
            uses: Vec::new(),
            test_only: test_only_at,
            declared: Vec::new(),
        };
        for path in &mut file.test_only {
            path.splice(0..0, module.iter().cloned());
        }
        // The inline modules around each token: `Some(name)` for `mod name {`, None for any
        // other brace.
        let mut scopes: Vec<Option<String>> = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let ident_at = |k: usize| match tokens.get(k) {
                Some(Token {
                    kind: Kind::Ident(name),
                    ..
                }) => Some(name.as_str()),
                _ => None,
            };
            let kind_at = |k: usize| tokens.get(k).map(|t| &t.kind);
            match &token.kind {
                Kind::Open => scopes.push(mod_opened(&tokens[..i])),
                Kind::Close => {
                    scopes.pop();
                }
                Kind::Semi if i >= 2 && ident_at(i - 2) == Some("mod") => {
                    file.declared.extend(ident_at(i - 1).map(str::to_owned));
                }
                Kind::Str(content) => {
                    for (at, _) in content.match_indices("crate::") {
                        let rest = &content[at + "crate::".len()..];
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            file.uses.push((name, token.line));
                        }
                    }
                }
                Kind::Ident(word) if kind_at(i + 1) == Some(&Kind::PathSep) => {
                    // A path's start, unless it is the tail of a longer one (`a::crate` is not).
                    if i > 0 && kind_at(i - 1) == Some(&Kind::PathSep) {
                        continue;
                    }
                    let mut here: Vec<String> = module.to_vec();
                    here.extend(scopes.iter().flatten().cloned());
                    let (base, next) = match word.as_str() {
                        "crate" | "kiln" => (Vec::new(), i + 2),
                        "super" => {
                            let mut next = i;
                            while ident_at(next) == Some("super")
                                && kind_at(next + 1) == Some(&Kind::PathSep)
                            {
                                if here.pop().is_none() {
                                    break;
                                }
                                next += 2;
                            }
                            (here, next)
                        }
                        _ => continue,
                    };
                    if let Some(top) = base.first() {
                        file.uses.push((top.clone(), token.line));
                    } else {
                        file.uses.extend(
                            first_names(&tokens, next)
                                .into_iter()
                                .map(|name| (name, token.line)),
                        );
                    }
                }
                _ => {}
            }
        }
        file
    }
}

/// The first name of the path at `at`, or of each path in the `{…}` group there.
fn first_names(tokens: &[Token], at: usize) -> Vec<String> {
    match tokens.get(at).map(|t| &t.kind) {
        Some(Kind::Ident(name)) => vec![name.clone()],
        Some(Kind::Open) => {
            let mut names = Vec::new();
            let mut depth = 0;
            let mut entry_start = true;
            for token in &tokens[at..] {
                match &token.kind {
                    Kind::Open => depth += 1,
                    Kind::Close => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Kind::Comma if depth == 1 => entry_start = true,
                    Kind::Ident(name) if depth == 1 && entry_start => {
                        if name != "self" {
                            names.push(name.clone());
                        }
                        entry_start = false;
                    }
                    _ => entry_start = false,
                }
            }
            names
        }
        _ => Vec::new(),
    }
}

#[derive(Debug, PartialEq)]
enum Kind {
    Ident(String),
    /// `::`
    PathSep,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    OpenParen,
    CloseParen,
    Semi,
    Comma,
    Pound,
    /// The text of a string literal, escapes left as written.
    Str(String),
    Other,
}

struct Token {
    kind: Kind,
    line: usize,
}

/// Rust source as the tokens this check needs. Comments are dropped; char literals are told
/// from lifetimes, so that neither `'"'` nor `'a` is taken for the start of a string.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        let mut push = |kind: Kind| {
            tokens.push(Token {
                kind,
                line: start_line,
            })
        };
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if at(i + 1) == '/' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(chars[i] == '\n');
                        i += 1;
                    }
                }
            }
            '"' => {
                let (content, end) = string(&chars, i + 1, false, 0);
                line += content.matches('\n').count();
                push(Kind::Str(content));
                i = end;
            }
            '\'' => {
                if at(i + 1) == '\\' {
                    // Past the backslash and the escaped character, which may be a quote.
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    // A lifetime or a label: its name follows as an identifier.
                    i += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let begin = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[begin..i].iter().collect();
                let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
                let raw = matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"';
                if raw || (matches!(word.as_str(), "b" | "c") && at(i) == '"') {
                    let (content, end) = string(&chars, i + hashes + 1, raw, hashes);
                    line += content.matches('\n').count();
                    push(Kind::Str(content));
                    i = end;
                } else if word == "r" && hashes == 1 {
                    // A raw identifier, `r#type`: the name follows.
                    i += 1;
                } else {
                    push(Kind::Ident(word));
                }
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                push(Kind::Other);
            }
            _ => {
                let kind = match c {
                    ':' if at(i + 1) == ':' => {
                        i += 1;
                        Kind::PathSep
                    }
                    '{' => Kind::Open,
                    '}' => Kind::Close,
                    '[' => Kind::OpenBracket,
                    ']' => Kind::CloseBracket,
                    '(' => Kind::OpenParen,
                    ')' => Kind::CloseParen,
                    ';' => Kind::Semi,
                    ',' => Kind::Comma,
                    '#' => Kind::Pound,
                    _ => Kind::Other,
                };
                push(kind);
                i += 1;
            }
        }
    }
    tokens
}

/// A string literal's text from `from` (just past its opening quote) and where it ends. A raw
/// string has no escapes and ends at a `"` followed by its `hashes`.
fn string(chars: &[char], from: usize, raw: bool, hashes: usize) -> (String, usize) {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' if !raw => i += 2,
            '"' if chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes =>
            {
                return (chars[from..i].iter().collect(), i + 1 + hashes);
            }
            _ => i += 1,
        }
    }
    (chars[from..].iter().collect(), chars.len())
}

/// The tokens without the items under `#[cfg(test)]`, and the names of the modules declared
/// `#[cfg(test)] mod name;`, each with the inline modules around it.
fn strip_tests(tokens: Vec<Token>) -> (Vec<Token>, Vec<Vec<String>>) {
    let cfg_test = [
        Kind::Pound,
        Kind::OpenBracket,
        Kind::Ident("cfg".into()),
        Kind::OpenParen,
        Kind::Ident("test".into()),
        Kind::CloseParen,
        Kind::CloseBracket,
    ];
    let mut kept: Vec<Token> = Vec::new();
    let mut test_only = Vec::new();
    let mut scopes: Vec<Option<String>> = Vec::new();
    // Reversed, so that the next token is popped off the end.
    let mut rest: Vec<Token> = tokens.into_iter().rev().collect();
    while !rest.is_empty() {
        let starts_cfg_test = rest.len() >= cfg_test.len()
            && rest.iter().rev().zip(&cfg_test).all(|(t, k)| t.kind == *k);
        if !starts_cfg_test {
            let token = rest.pop().expect("not empty");
            match &token.kind {
                Kind::Open => scopes.push(mod_opened(&kept)),
                Kind::Close => {
                    scopes.pop();
                }
                _ => {}
            }
            kept.push(token);
            continue;
        }
        // Skip the attribute, then the item: to its `;`, or to the end of its first `{…}`.
        rest.truncate(rest.len() - cfg_test.len());
        let mut words: Vec<String> = Vec::new();
        let mut depth = 0usize;
        while let Some(token) = rest.pop() {
            match token.kind {
                Kind::Open | Kind::OpenBracket | Kind::OpenParen => depth += 1,
                Kind::CloseBracket | Kind::CloseParen => depth = depth.saturating_sub(1),
                Kind::Close => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                Kind::Semi if depth == 0 => {
                    // `mod name;`: a file compiled only for tests.
                    if let [.., mod_, name] = words.as_slice()
                        && mod_ == "mod"
                    {
                        let mut path: Vec<String> = scopes.iter().flatten().cloned().collect();
                        path.push(name.clone());
                        test_only.push(path);
                    }
                    break;
                }
                Kind::Ident(word) => words.push(word),
                _ => {}
            }
        }
    }
    (kept, test_only)
}

/// The name of the inline module whose `{` follows `before`, if it is one.
fn mod_opened(before: &[Token]) -> Option<String> {
    match before {
        [
            ..,
            Token {
                kind: Kind::Ident(mod_),
                ..
            },
            Token {
                kind: Kind::Ident(name),
                ..
            },
        ] if mod_ == "mod" => Some(name.clone()),
        _ => None,
    }
}
