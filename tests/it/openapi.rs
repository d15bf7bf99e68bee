//! The OpenAPI document is a contract the ecosystem's tools hold kiln to: a real server serves
//! exactly the checked-in `docs/openapi.json`, `openapi-spec-validator` finds it a valid 3.1
//! document, and schemathesis (every phase, every check; `tests/schemathesis/schemathesis.toml`
//! says which checks are narrowed and why) finds no failure against a real server, open and
//! with a tenant's token. Both tools come from PyPI, pinned, into a venv under the target
//! directory; a host that cannot make it skips, which `KILN_TEST_STRICT=1` turns into a failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::auth::{As, create_token};
use crate::util::{Server, skip};

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/schemathesis/schemathesis.toml"
);
const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

/// The venv's `bin/`, made once per test run; why not, if the host cannot.
fn tools() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis-4.32.5");
        let bin = dir.join("bin");
        if !bin.join("schemathesis").exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
                .map_err(|why| format!("python3 -m venv (is python3-venv installed?): {why}"))?;
            run(Command::new(bin.join("pip")).args([
                "install",
                "--quiet",
                "schemathesis==4.32.5",
                "openapi-spec-validator==0.9.0",
            ]))
            .map_err(|why| format!("pip could not install schemathesis: {why}"))?;
        }
        Ok(bin)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

fn run(command: &mut Command) -> Result<Output, String> {
    let out = command.output().map_err(|err| err.to_string())?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn tools_or_skip(test: &str) -> Option<&'static Path> {
    tools().map_or_else(
        |why| {
            skip(test, &why);
            None
        },
        Some,
    )
}

/// A finished job with a kept file, and an ended suite with a group, for the fuzzer to read back:
/// without them every read of one job or suite would only ever be a 404.
async fn data(client: &As) -> (String, String) {
    let job = client
        .submit(json!({
            "runtime": "sh",
            "code": "echo kept > out.txt; echo done",
            "outputs": ["out.txt"],
        }))
        .await;
    client.finished(&job).await;
    let (status, batch) = client
        .post(
            "/v1/batches",
            &json!({
                "runtime": "sh",
                "code": "read x; echo $x",
                "pass_at_k": [1],
                "cases": [
                    {"name": "one", "stdin": "1", "expected_output": "1", "group": "p"},
                    {"name": "two", "stdin": "2", "expected_output": "3", "group": "p"},
                ],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
    let batch = batch["id"].as_str().expect("batch id").to_owned();
    for case in ["one", "two"] {
        let (_, cases) = client.get(&format!("/v1/batches/{batch}/cases")).await;
        let id = cases["cases"]
            .as_array()
            .and_then(|cases| cases.iter().find(|c| c["name"] == case))
            .and_then(|c| c["job_id"].as_str())
            .unwrap_or_else(|| panic!("case {case} in {cases}"))
            .to_owned();
        client.finished(&id).await;
    }
    (job, batch)
}

/// The checked-in config with the real ids offered half the time, the rest generated.
fn config(dir: &Path, job: &str, batch: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(CONFIG).expect("read the schemathesis config");
    write!(
        text,
        r#"
[dictionaries.jobs]
values = ["{job}"]
[dictionaries.batches]
values = ["{batch}"]
[dictionaries.files]
values = ["out.txt"]

[[operations]]
include-path-regex = "^/v1/jobs/\\{{id\\}}"
parameters = {{ "path.id" = {{ dictionary = "jobs", probability = 0.5 }}, "path.path" = {{ dictionary = "files", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/v1/batches/\\{{id\\}}"
parameters = {{ "path.id" = {{ dictionary = "batches", probability = 0.5 }} }}
"#
    )
    .expect("write to a string");
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Runs every phase and check against `server`; the run's whole report if anything failed.
fn schemathesis(bin: &Path, server: &Server, config: &Path, token: Option<&str>) {
    let mut command = Command::new(bin.join("schemathesis"));
    command
        .arg("--config-file")
        .arg(config)
        .args(["--no-color", "run"])
        .arg(format!("{}/openapi.json", server.url))
        .args(["--max-examples", "25", "--report-dir"])
        .arg(server.dir.path().join("reports"))
        .current_dir(server.dir.path());
    if let Some(token) = token {
        command
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"));
    }
    let out = command.output().expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            report.contains(&format!("✅ {phase}")),
            "the {phase} phase did not run and pass:\n{report}"
        );
    }
    assert!(report.contains(" passed"), "{report}");
}

#[tokio::test]
async fn the_server_serves_the_checked_in_document_and_it_is_valid_openapi_3_1() {
    let Some(bin) =
        tools_or_skip("the_server_serves_the_checked_in_document_and_it_is_valid_openapi_3_1")
    else {
        return;
    };
    let server = Server::start().await;
    let response = reqwest::get(format!("{}/openapi.json", server.url))
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.expect("a JSON document");
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string(CHECKED_IN).expect("read docs/openapi.json"))
            .expect("docs/openapi.json is JSON");
    // Not assert_eq: a stale document differs in a line or two, and printing both whole would
    // bury them.
    assert!(
        served == checked_in,
        "docs/openapi.json is stale: run `kiln openapi > docs/openapi.json`"
    );
    assert_eq!(served["openapi"], "3.1.0");
    let validated = run(Command::new(bin.join("openapi-spec-validator")).arg(CHECKED_IN));
    assert!(validated.is_ok(), "{validated:?}");
}

#[tokio::test]
async fn schemathesis_finds_no_failure_against_an_open_server() {
    let Some(bin) = tools_or_skip("schemathesis_finds_no_failure_against_an_open_server") else {
        return;
    };
    let server = Server::start().await;
    let (job, batch) = data(&As::new(&server, None)).await;
    let config = config(server.dir.path(), &job, &batch);
    tokio::task::spawn_blocking(move || schemathesis(bin, &server, &config, None))
        .await
        .expect("schemathesis ran");
}

#[tokio::test]
async fn schemathesis_finds_no_failure_with_a_tenants_token() {
    let Some(bin) = tools_or_skip("schemathesis_finds_no_failure_with_a_tenants_token") else {
        return;
    };
    let dir = TempDir::new().expect("temp dir");
    let token = create_token(dir.path(), "acme", false);
    let server = Server::start_in(dir, &[]).await;
    let (job, batch) = data(&As::new(&server, Some(&token))).await;
    let config = config(server.dir.path(), &job, &batch);
    let (status, _) = server.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "tokens are in force");
    tokio::task::spawn_blocking(move || schemathesis(bin, &server, &config, Some(&token)))
        .await
        .expect("schemathesis ran");
}
