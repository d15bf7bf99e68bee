//! The documentation is true where a test can tell: the `sqlite3` queries of `docs/history.md`
//! (the operators' cookbook) run against a real database, as do the Python verifier and outbox
//! queries of `docs/webhooks.md` (in `webhooks.rs`); every relative link of the README and of
//! `docs/` leads to a file, and to a heading, that exists; and the README stays a front page.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::util::{Server, sh};

/// The operators' query cookbook.
pub const HISTORY: &str = include_str!("../../docs/history.md");
/// The webhooks page: its signature verifier and outbox queries are run by `webhooks.rs`.
pub const WEBHOOKS: &str = include_str!("../../docs/webhooks.md");

/// The `sqlite3 kiln.db ...` command lines of a page of the docs.
pub fn sqlite3_commands(page: &str) -> Vec<String> {
    let mut queries = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if let Some(start) = line.strip_prefix("sqlite3 ") {
            // A query may continue over lines ending in a backslash.
            let mut command = format!("sqlite3 {start}");
            while command.ends_with('\\') {
                command.pop();
                command.push('\n');
                command.push_str(lines.next().unwrap_or_default());
            }
            queries.push(command);
        }
    }
    queries
}

/// Runs `query` (a `sqlite3 kiln.db` command line) in `dir`, asserting it succeeds and prints
/// something.
pub fn run_query(query: &str, dir: &std::path::Path) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(query)
        .current_dir(dir)
        .output()
        .expect("run sqlite3 (apt-get install sqlite3)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{query}\n{stderr}"
    );
    assert!(!out.stdout.is_empty(), "{query} printed nothing");
}

#[tokio::test]
async fn the_history_cookbook_queries_run_against_a_real_database() {
    let queries = sqlite3_commands(HISTORY);
    assert!(queries.len() >= 4, "{queries:?}");
    let server = Server::start().await;
    let ok = server
        .submit(
            json!({"runtime": "sh", "code": "echo hi; echo '{}' > report.json",
                       "outputs": ["report.json"]}),
        )
        .await;
    let bad = server.submit(sh("exit 2")).await;
    let binary = server.submit(sh("printf '\\377'")).await;
    server.finished(&ok).await;
    server.finished(&bad).await;
    server.finished(&binary).await;
    let suite = json!({"runtime": "sh", "code": "cat", "cases": [
        {"group": "p", "stdin": "a", "expected_output": "a"},
        {"group": "p", "stdin": "b", "expected_output": "c"}]});
    let (status, batch) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, 202, "{batch}");
    let batch = batch["id"].as_str().expect("batch id").to_owned();
    let (_, done) = server.get(&format!("/v1/batches/{batch}?wait=30")).await;
    assert_eq!(done["done"], true, "{done}");
    for query in queries {
        let query = query.replace("JOB_ID", &ok).replace("BATCH_ID", &batch);
        run_query(&query, server.dir.path());
    }
}

/// The README and every page of `docs/`, by path relative to the repository, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![PathBuf::from("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("a docs/ directory");
    let mut pages: Vec<PathBuf> = docs
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(root).expect("under the root").to_owned())
        .collect();
    pages.sort();
    paths.extend(pages);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(root.join(&path)).expect("read the page");
            (path, text)
        })
        .collect()
}

/// The page outside fenced code blocks, with inline code spans (which may go on over a line
/// break) blanked out: what a reader sees as prose, where links live.
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut in_code = false;
    let mut shown = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            for c in line.chars() {
                if c == '`' {
                    in_code = !in_code;
                } else if !in_code {
                    shown.push(c);
                }
            }
        }
        shown.push('\n');
    }
    shown
}

/// The targets of the page's Markdown links, `[text](target)`.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text).lines() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    targets
}

/// The anchors GitHub gives the page's headings: lowercased, punctuation dropped, spaces as
/// hyphens, and `-1`, `-2`, ... after a repeat.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    // Code spans are part of a heading's anchor, so headings are read from the raw lines.
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let Some(title) = line.trim_start_matches('#').strip_prefix(' ') else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.push(match *count {
            0 => slug,
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

#[test]
fn every_relative_link_in_the_readme_and_docs_leads_to_a_file_and_heading_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = pages();
    let by_path: HashMap<PathBuf, &str> = pages
        .iter()
        .map(|(path, text)| (path.clone(), text.as_str()))
        .collect();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, text) in &pages {
        let dir = page.parent().unwrap_or(Path::new(""));
        for target in links(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.clone()
            } else {
                normalize(&dir.join(file))
            };
            if !root.join(&linked).exists() {
                broken.push(format!(
                    "{}: {target}: no file {}",
                    page.display(),
                    linked.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                match by_path.get(&linked) {
                    Some(text) if anchors(text).iter().any(|a| a == anchor) => {}
                    Some(_) => broken.push(format!(
                        "{}: {target}: no heading #{anchor} in {}",
                        page.display(),
                        linked.display()
                    )),
                    None => broken.push(format!(
                        "{}: {target}: an anchor into a file that is not a page of the docs",
                        page.display()
                    )),
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `a/../b` as `b`: the docs link up out of `docs/` with `..`.
fn normalize(path: &Path) -> PathBuf {
    let mut parts: Vec<std::path::Component> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir if !parts.is_empty() => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            other => parts.push(other),
        }
    }
    parts.iter().collect()
}

#[test]
fn every_docs_page_says_what_it_covers_links_back_and_is_in_the_readme_contents() {
    let pages = pages();
    let readme_links = links(&pages[0].1);
    for (page, text) in &pages[1..] {
        let opening: Vec<&str> = text.lines().take(8).collect();
        assert!(
            opening[0].starts_with("# "),
            "{}: opens with a title",
            page.display()
        );
        let first = opening[1..].iter().find(|line| !line.is_empty());
        assert!(
            first.is_some_and(|line| !line.starts_with(['#', '|', '`', '-'])),
            "{}: a sentence under its title says what it covers",
            page.display()
        );
        assert!(
            opening.iter().any(|line| line.contains("](../README.md")),
            "{}: its opening lines link back to the README",
            page.display()
        );
        let name = page.to_str().expect("a UTF-8 path");
        assert!(
            readme_links.iter().any(|link| link == name),
            "the README's contents list {name}"
        );
    }
}

#[test]
fn the_readme_stays_a_front_page() {
    let lines = pages()[0].1.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: move reference material into docs/"
    );
}

/// The names a `kiln ... --help` lists under "Commands:", but `help`.
fn subcommands(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run kiln --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn docs_cli_md_shows_every_command_with_an_example() {
    let page = std::fs::read_to_string("docs/cli.md").expect("docs/cli.md");
    let examples: Vec<&str> = page
        .lines()
        .filter(|line| line.trim_start().starts_with("kiln ") || line.contains("$(kiln "))
        .collect();
    let mut commands: Vec<String> = Vec::new();
    for top in subcommands(&[]) {
        let nested = subcommands(&[&top]);
        if nested.is_empty() || top == "batch" {
            commands.push(top.clone());
        }
        commands.extend(nested.into_iter().map(|sub| format!("{top} {sub}")));
    }
    assert!(commands.len() >= 15, "{commands:?}");
    for command in &commands {
        let shown = examples.iter().any(|line| {
            line.contains(&format!("kiln {command} ")) || line.ends_with(&format!("kiln {command}"))
        });
        assert!(shown, "no example of `kiln {command}` in docs/cli.md");
    }
}
