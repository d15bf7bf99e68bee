//! Operators query the database with `sqlite3`: the README's examples must work on a real file.

use std::process::Command;

use serde_json::json;

use crate::util::{Server, sh};

/// The `sqlite3 kiln.db ...` command lines of the README's section `title`.
pub fn readme_queries(title: &str) -> Vec<String> {
    let section = readme_section(title);
    let mut queries = Vec::new();
    let mut lines = section.lines();
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

/// The README's section `title`, up to the next section.
pub fn readme_section(title: &str) -> &'static str {
    let readme = include_str!("../../README.md");
    let section = readme
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has a '{title}' section"));
    section.split("\n## ").next().unwrap_or(section)
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
async fn the_readme_queries_run_against_a_real_database() {
    let queries = readme_queries("Querying the history");
    assert!(queries.len() >= 4, "{queries:?}");
    let server = Server::start().await;
    let ok = server.submit(sh("echo hi")).await;
    let bad = server.submit(sh("exit 2")).await;
    server.finished(&ok).await;
    server.finished(&bad).await;
    let suite = json!({"runtime": "sh", "code": "cat", "cases": [
        {"stdin": "a", "expected_output": "a"}, {"stdin": "b", "expected_output": "c"}]});
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
