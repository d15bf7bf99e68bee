//! Judge0 CE's API under `/judge0`, driven by Judge0's own official Python SDK (`judge0==0.0.8`,
//! installed from PyPI into a venv of its own under the target directory) and by plain HTTP for
//! each route and each of Judge0's error shapes. A submission is an ordinary kiln job, seen
//! through `/v1` too; one that is refused stores nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::auth::create_token;
use crate::util::{Server, skip};
use crate::webhooks::{Receiver, webhook_events};

/// The SDK's Python: a venv under the target directory with `judge0==0.0.8` in it, made by the
/// first test that needs it. `None` if this host cannot make it (no `python3 -m venv`, no PyPI).
fn sdk_python() -> Result<PathBuf, String> {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("judge0-sdk-0.0.8");
    let python = venv.join("bin/python");
    let has_sdk = |python: &Path| {
        Command::new(python)
            .args(["-c", "import judge0"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if has_sdk(&python) {
        return Ok(python);
    }
    let run = |command: &mut Command| -> Result<(), String> {
        let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "{command:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    };
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", "judge0==0.0.8"]))?;
    match has_sdk(&python) {
        true => Ok(python),
        false => Err("judge0 does not import after pip install".into()),
    }
}

/// What the SDK does against kiln, as `judge0.run` is documented to be used, reported as JSON.
const SDK_SCRIPT: &str = r#"
import json
import sys

import judge0

client = judge0.Client(sys.argv[1], headers=json.loads(sys.argv[2]))
report = {}


def statuses(results):
    return [int(r.status) for r in results]


cases = judge0.run(
    client=client,
    source_code="print(input())",
    language=71,
    test_cases=[("kiln", "kiln"), ("kiln", "judge0")],
)
report["test_cases"] = statuses(cases)
report["test_case_stdout"] = cases[0].stdout
report["test_case_given"] = [cases[1].source_code, cases[1].stdin, cases[1].expected_output]

size = client.config.max_submission_batch_size
many = judge0.run(
    client=client,
    source_code="print(int(input()) * 2)",
    language=71,
    test_cases=[(str(i), str(2 * i)) for i in range(size + 5)],
)
report["batch_size"] = size
report["batch"] = statuses(many)

text = "".join(chr(c) for c in range(1, 128)) + "é✓\n"
shown = judge0.run(
    client=client,
    source_code="import sys; sys.stdout.write(sys.stdin.read())",
    stdin=text,
    language=71,
)
report["output_round_trip"] = shown.stdout == text

broken = judge0.run(client=client, source_code="int main( {", language=50)
report["compile_error"] = [int(broken.status), bool(broken.compile_output)]

spin = judge0.run(
    client=client, source_code="while True: pass", language=71, cpu_time_limit=1
)
report["time_limit"] = int(spin.status)

exits = judge0.run(client=client, source_code="import sys; sys.exit(3)", language=71)
report["nonzero_exit"] = [int(exits.status), exits.exit_code]

crash = judge0.run(
    client=client,
    source_code="int main(void) { volatile int *p = 0; *p = 1; return 0; }",
    language=50,
)
report["sigsegv"] = [int(crash.status), crash.exit_signal]
report["token"] = str(crash.token)

binary = judge0.run(
    client=client,
    source_code="import sys; sys.stdout.buffer.write(bytes([0, 255, 254, 10]))",
    language=71,
)
report["binary_output"] = binary.stdout == "\x00\\xff\\xfe\n"

beside = judge0.run(
    client=client,
    source_code="print(open('data.txt').read().upper())",
    language=71,
    additional_files=judge0.Filesystem(content=[judge0.File(name="data.txt", content="beside")]),
)
report["additional_files"] = beside.stdout

called = judge0.run(
    client=client, source_code="print('called')", language=71, callback_url=sys.argv[3]
)
report["callback_token"] = str(called.token)
print(json.dumps(report))
"#;

#[tokio::test]
async fn the_official_judge0_sdk_runs_programs_on_kiln_with_judge0s_verdicts() {
    let python = match sdk_python() {
        Ok(python) => python,
        Err(why) => return skip("judge0 sdk", &why),
    };
    let dir = TempDir::new().expect("temp dir");
    let acme = create_token(dir.path(), "acme", false);
    let admin = create_token(dir.path(), "ops", true);
    let server = Server::start_in(dir, &[]).await;
    let script = server.dir.path().join("sdk.py");
    std::fs::write(&script, SDK_SCRIPT).expect("write the script");
    let headers = json!({"X-Auth-Token": acme}).to_string();
    let endpoint = format!("{}/judge0", server.url);
    let receiver = Receiver::start().await;
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&endpoint, &headers, &receiver.url()])
        .output()
        .await
        .expect("run the SDK");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("the script's report");
    assert_eq!(
        report["test_cases"],
        json!([3, 4]),
        "Accepted, Wrong Answer"
    );
    assert_eq!(report["test_case_stdout"], "kiln\n");
    assert_eq!(
        report["test_case_given"],
        json!(["print(input())", "kiln", "judge0"]),
        "read back as given"
    );
    let size = report["batch_size"].as_u64().expect("a batch size");
    let batch = report["batch"].as_array().expect("the batch's statuses");
    assert_eq!(
        batch.len() as u64,
        size + 5,
        "more than one of the SDK's batches"
    );
    assert!(batch.iter().all(|s| s == 3), "{batch:?}");
    assert_eq!(
        report["output_round_trip"], true,
        "through base64 both ways"
    );
    assert_eq!(report["compile_error"], json!([6, true]));
    assert_eq!(report["time_limit"], 5);
    assert_eq!(report["nonzero_exit"], json!([11, 3]));
    assert_eq!(report["sigsegv"], json!([7, 11]));
    assert_eq!(
        report["binary_output"], true,
        "bytes that are not UTF-8 reach the SDK exactly, which shows them escaped"
    );
    assert_eq!(report["additional_files"], "BESIDE\n");
    let called = report["callback_token"].as_str().expect("a token");
    let calls = receiver.wait_for_calls(1).await;
    assert_eq!(calls[0].method, reqwest::Method::PUT);
    let body = calls[0].json();
    assert_eq!(body["token"], called, "{body}");
    assert_eq!(body["stdout"], "Y2FsbGVkCg==\n", "always base64");

    // The SDK's submissions are the acme tenant's ordinary jobs.
    let token = report["token"].as_str().expect("a token");
    let job = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{token}", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    assert_eq!(job.status(), StatusCode::OK);
    let job: Value = job.json().await.expect("a job");
    assert_eq!(job["outcome"], "signal");
    assert_eq!(job["runtime"], "c");
}

/// Requests to `/judge0` with or without an `X-Auth-Token`.
struct Judge0<'a> {
    server: &'a Server,
    token: Option<String>,
    http: reqwest::Client,
}

impl<'a> Judge0<'a> {
    fn new(server: &'a Server, token: Option<&str>) -> Judge0<'a> {
        Judge0 {
            server,
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> (StatusCode, String) {
        let mut request = self
            .http
            .request(method, format!("{}/judge0{path}", self.server.url));
        if let Some(token) = &self.token {
            request = request.header("X-Auth-Token", token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.text().await.expect("a body"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, text) = self.send(reqwest::Method::GET, path, None).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let bytes = body.to_string().into_bytes();
        let (status, text) = self.send(reqwest::Method::POST, path, Some(&bytes)).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn jobs_stored(server: &Server) -> i64 {
    server.count("SELECT count(*) FROM jobs")
}

#[tokio::test]
async fn a_submission_is_a_kiln_job_read_back_in_judge0_fields_units_and_encoding() {
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let (status, created) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print('hi')", "language_id": 71}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().expect("a token").to_owned();
    assert_eq!(
        created.as_object().map(|o| o.len()),
        Some(1),
        "only the token: {created}"
    );

    let waited = judge0
        .post(
            "/submissions?wait=true",
            &json!({"source_code": "print('hi')", "language_id": 71, "expected_output": "hi  \n\n"}),
        )
        .await
        .1;
    assert_eq!(
        waited["status"],
        json!({"id": 3, "description": "Accepted"}),
        "right-trimmed as Judge0 compares: {waited}"
    );
    let keys: Vec<&str> = waited
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut default = vec![
        "token",
        "time",
        "memory",
        "stdout",
        "stderr",
        "compile_output",
        "message",
        "status",
    ];
    default.sort_unstable();
    assert_eq!(keys, default, "the default fields");
    assert_eq!(waited["stdout"], "hi\n");
    let (_, given) = judge0
        .get(&format!(
            "/submissions/{}?fields=source_code,stdin,expected_output",
            waited["token"].as_str().expect("a token")
        ))
        .await;
    assert_eq!(
        given,
        json!({"source_code": "print('hi')", "stdin": null, "expected_output": "hi  \n\n"})
    );
    let time = waited["time"].as_str().expect("time is a decimal string");
    assert!(time.parse::<f64>().is_ok() && time.contains('.'), "{time}");

    // The same job through kiln's own API.
    let (status, job) = server.get(&format!("/v1/jobs/{token}?wait=30")).await;
    assert_eq!(
        (status, job["status"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );

    let (_, all) = judge0
        .get(&format!(
            "/submissions/{token}?fields=*&base64_encoded=true"
        ))
        .await;
    let all = all.as_object().expect("an object");
    assert_eq!(all.len(), 35, "v1.13.1's fields, no more: {all:?}");
    assert_eq!(all["stdout"], "aGkK\n", "base64 as Ruby writes it");
    assert_eq!(
        all["source_code"], "cHJpbnQoJ2hpJyk=\n",
        "what it was given, encoded too"
    );
    assert_eq!(
        (&all["stdin"], &all["expected_output"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(
        all["language"],
        json!({"id": 71, "name": all["language"]["name"]})
    );
    let created_at = all["created_at"].as_str().expect("a timestamp");
    assert!(
        created_at.len() == 24 && created_at.ends_with('Z') && created_at.as_bytes()[19] == b'.',
        "%Y-%m-%dT%H:%M:%S.%fZ: {created_at}"
    );
    let (_, few) = judge0
        .get(&format!("/submissions/{token}?fields=stdout,exit_code"))
        .await;
    assert_eq!(few, json!({"stdout": "hi\n", "exit_code": 0}));

    let (status, batch) = judge0
        .get(&format!("/submissions/batch?tokens={token},00000000-0000-0000-0000-000000000000&fields=status_id"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch, json!({"submissions": [{"status_id": 3}, null]}));
}

#[tokio::test]
async fn bytes_that_are_not_utf_8_pass_through_in_base64_and_are_refused_as_text_as_judge0_does() {
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    // stdin 0xff 0x00 'k' '\n', echoed back by cat: exact bytes both ways.
    let body = json!({"source_code": "Y2F0Cg==", "language_id": 46, "stdin": "/wBrCg=="});
    let (status, waited) = judge0
        .post("/submissions?base64_encoded=true&wait=true", &body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{waited}");
    assert_eq!(
        waited["stdout"], "/wBrCg==\n",
        "the bytes, unchanged: {waited}"
    );
    assert_eq!(waited["status"]["id"], 3);
    let token = waited["token"].as_str().expect("a token").to_owned();

    let (status, refused) = judge0.get(&format!("/submissions/{token}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused,
        json!({"error": "some attributes for this submission cannot be converted to UTF-8, \
                         use base64_encoded=true query parameter"})
    );
    let (status, fine) = judge0
        .get(&format!("/submissions/{token}?fields=status_id,time"))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "fields without text are shown: {fine}"
    );
    let (status, batch) = judge0
        .get(&format!("/submissions/batch?tokens={token}"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        batch["error"]
            .as_str()
            .is_some_and(|e| e.contains("one or more submissions")),
        "{batch}"
    );
    let (_, given) = judge0
        .get(&format!(
            "/submissions/{token}?fields=stdin&base64_encoded=true"
        ))
        .await;
    assert_eq!(
        given,
        json!({"stdin": "/wBrCg==\n"}),
        "the input kept as bytes"
    );

    // Waiting without base64 still answers 201, with the token to ask again in base64.
    let (status, waited) = judge0
        .post(
            "/submissions?wait=true",
            &json!({"source_code": "printf '\\377'", "language_id": 46}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(waited["token"].is_string(), "{waited}");
    assert!(
        waited["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be converted to UTF-8")),
        "{waited}"
    );
    let (_, job) = server
        .get(&format!(
            "/v1/jobs/{}",
            waited["token"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(
        (&job["stdout"], &job["stdout_encoding"]),
        (&json!("/w=="), &json!("base64")),
        "kiln's own API shows the same byte: {job}"
    );
}

#[tokio::test]
async fn bad_input_gets_judge0s_error_shapes_and_nothing_is_stored() {
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let (status, body) = judge0
        .post(
            "/submissions",
            &json!({"language_id": 71, "wall_time_limit": 30, "memory_limit": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({
            "source_code": ["can't be blank"],
            "wall_time_limit": ["must be less than or equal to 20"],
            "memory_limit": ["must be greater than or equal to 2048"],
        })
    );
    let (status, body) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "x", "language_id": 4242}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"language_id": ["language with id 4242 doesn't exist"]})
    );
    let huge = "x".repeat(2 << 20);
    let (status, body) = judge0
        .post(
            "/submissions",
            &json!({"source_code": huge, "language_id": 71}),
        )
        .await;
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY && body["source_code"].is_array()
            || status == StatusCode::PAYLOAD_TOO_LARGE && body["error"].is_string(),
        "{status} {body}"
    );
    let (status, body) = judge0
        .post(
            "/submissions?base64_encoded=true",
            &json!({"source_code": "%%%", "language_id": 71}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"source_code": ["is not valid base64"]})
        )
    );
    let (status, body) = judge0
        .post(
            "/submissions?fields=stdout,queue_host",
            &json!({"source_code": "print(1)", "language_id": 71}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid fields: [queue_host]"})
        )
    );
    let (status, body) = judge0
        .send(reqwest::Method::POST, "/submissions", Some(b"{not json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let good = json!({"source_code": "print(1)", "language_id": 71});
    let (status, body) = judge0
        .post(
            "/submissions/batch?wait=true",
            &json!({"submissions": [good]}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "wait not allowed"})
        )
    );
    let (status, body) = judge0
        .post("/submissions/batch", &json!({"submissions": []}))
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "there should be at least one submission in a batch"})
        )
    );
    let (status, body) = judge0
        .post(
            "/submissions/batch",
            &json!({"submissions": vec![good.clone(); 21]}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "number of submissions in a batch should be less than or equal to 20"})
        )
    );
    let (status, body) = judge0
        .post(
            "/submissions/batch",
            &json!({"submissions": [good, {"source_code": "x"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!([{}, {"language_id": ["can't be blank"]}]),
        "a batch is stored whole or not at all"
    );

    let (status, body) = judge0.get("/submissions/not-a-token").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "submission not found"})
        )
    );
    let (status, _) = judge0
        .get(&format!("/submissions/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = judge0.get("/submissions/batch").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = judge0.get("/languages/4242").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "language not found"})
        )
    );
    assert_eq!(jobs_stored(&server), 0, "nothing refused was stored");
}

#[tokio::test]
async fn a_full_queue_is_judge0s_503_queue_is_full() {
    let server = Server::start_with(&["--workers", "0", "--max-queued-jobs", "1"]).await;
    let judge0 = Judge0::new(&server, None);
    let program = json!({"source_code": "print(1)", "language_id": 71});
    let (status, _) = judge0.post("/submissions", &program).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = judge0.post("/submissions", &program).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "queue is full"})
        )
    );
    let (status, body) = judge0
        .post(
            "/submissions/batch",
            &json!({"submissions": [program.clone(), program]}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "queue is full"})
        )
    );
    assert_eq!(jobs_stored(&server), 1);
    let (_, workers) = judge0.get("/workers").await;
    assert_eq!(workers[0]["size"], 1, "{workers}");
}

#[tokio::test]
async fn an_x_auth_token_is_a_kiln_token_and_each_tenant_sees_only_its_own_submissions() {
    let dir = TempDir::new().expect("temp dir");
    let acme = create_token(dir.path(), "acme", false);
    let globex = create_token(dir.path(), "globex", false);
    let admin = create_token(dir.path(), "ops", true);
    let server = Server::start_in(dir, &[]).await;
    let (status, body) = Judge0::new(&server, None)
        .send(reqwest::Method::GET, "/languages", None)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNAUTHORIZED, ""),
        "Judge0's bare 401"
    );
    let (status, _) = Judge0::new(&server, Some("wrong")).get("/languages").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let as_acme = Judge0::new(&server, Some(&acme));
    let (status, created) = as_acme
        .post(
            "/submissions",
            &json!({"source_code": "print(1)", "language_id": 71}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().expect("a token");
    let (status, _) = as_acme.get(&format!("/submissions/{token}")).await;
    assert_eq!(status, StatusCode::OK);
    let as_globex = Judge0::new(&server, Some(&globex));
    let (status, _) = as_globex.get(&format!("/submissions/{token}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's token is unknown to it"
    );
    let (_, batch) = as_globex
        .get(&format!("/submissions/batch?tokens={token}"))
        .await;
    assert_eq!(batch, json!({"submissions": [null]}));

    let as_admin = Judge0::new(&server, Some(&admin));
    let (status, _) = as_acme
        .send(reqwest::Method::POST, "/authenticate", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = as_acme
        .send(reqwest::Method::POST, "/authorize", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only an admin is authorized");
    let (status, _) = as_admin
        .send(reqwest::Method::POST, "/authorize", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = as_acme.get("/submissions").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "listing every submission is for an admin"
    );
    as_globex
        .post(
            "/submissions",
            &json!({"source_code": "print(2)", "language_id": 71}),
        )
        .await;
    let (status, listed) = as_admin.get("/submissions?per_page=1&fields=token").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        listed["meta"],
        json!({"current_page": 1, "next_page": 2, "prev_page": null, "total_pages": 2, "total_count": 2})
    );
    assert_eq!(listed["submissions"].as_array().map(Vec::len), Some(1));
    let (_, second) = as_admin
        .get("/submissions?page=2&per_page=1&fields=token")
        .await;
    assert_eq!(
        second["submissions"],
        json!([{"token": token}]),
        "newest first"
    );
    let (status, body) = as_admin.get("/submissions?page=0").await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, json!({"error": "invalid page: 0"}))
    );
    let path = format!("/submissions/{token}");
    let (status, _) = as_acme.send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = as_admin.send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, r#"{"error":"delete not allowed"}"#)
    );
}

#[tokio::test]
async fn languages_statuses_and_the_info_routes_answer_as_judge0_does() {
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let (_, languages) = judge0.get("/languages").await;
    let ids: Vec<u64> = languages
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    assert!(ids.contains(&71) && ids.contains(&50), "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "by id: {ids:?}");
    let (_, all) = judge0.get("/languages/all").await;
    assert_eq!(all[0]["is_archived"], false);
    let (status, python) = judge0.get("/languages/71").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(python["source_file"], "main.py");
    assert!(
        python["run_cmd"]
            .as_str()
            .is_some_and(|c| c.contains("python")),
        "{python}"
    );
    let (_, c) = judge0.get("/languages/50").await;
    assert!(c["compile_cmd"].is_string(), "{c}");

    let (_, statuses) = judge0.get("/statuses").await;
    assert_eq!(statuses.as_array().map(Vec::len), Some(14));
    assert_eq!(
        statuses[6],
        json!({"id": 7, "description": "Runtime Error (SIGSEGV)"})
    );
    let (_, about) = judge0.get("/about").await;
    assert_eq!(
        about["version"], "1.13.1",
        "a version the SDK maps language aliases for"
    );
    let (_, version) = judge0.get("/version").await;
    assert_eq!(version, "1.13.1");
    let (_, config) = judge0.get("/config_info").await;
    let config = config.as_object().expect("an object");
    assert_eq!(config.len(), 39, "every key of v1.13.1's config_info");
    assert_eq!(config["max_submission_batch_size"], 20);
    assert_eq!(config["enable_callbacks"], true, "kiln's webhooks are on");
    assert_eq!(config["callbacks_max_tries"], 3);
    let (status, info) = judge0.get("/system_info").await;
    assert_eq!(status, StatusCode::OK);
    assert!(info["CPU(s)"].is_string(), "{info}");
    let (_, statistics) = judge0.get("/statistics").await;
    assert_eq!(statistics["submissions"]["total"], 0);
    let (_, workers) = judge0.get("/workers").await;
    assert_eq!(workers[0]["available"], 2, "{workers}");
    let (status, body) = judge0.get("/no_such_route").await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"error": "route not found"}))
    );
}

/// Judge0's callback body: the default fields, text in base64 as Ruby writes it.
const CALLBACK_FIELDS: [&str; 8] = [
    "compile_output",
    "memory",
    "message",
    "status",
    "stderr",
    "stdout",
    "time",
    "token",
];

#[tokio::test]
async fn a_callback_url_gets_judge0s_put_of_the_submission_in_base64_retried_after_a_failure() {
    let receiver = Receiver::failing_first(1).await;
    let server = Server::start_with(&["--webhook-retry-base-ms", "50"]).await;
    let judge0 = Judge0::new(&server, None);
    let (status, created) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print('hi')", "language_id": 71, "callback_url": receiver.url()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().expect("a token");

    let calls = receiver.wait_for_calls(2).await;
    let events = webhook_events(&server, token, 2, true).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["webhook.failed", "webhook.delivered"]);
    assert_eq!(events[0]["data"]["status_code"], 500);
    for call in &calls {
        assert_eq!(call.method, reqwest::Method::PUT, "Judge0 PUTs");
        assert_eq!(call.header("content-type"), "application/json");
        assert_eq!(call.body, calls[0].body, "the retry sends the same bytes");
    }
    let body = calls[1].json();
    let fields: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, CALLBACK_FIELDS, "Judge0's default fields: {body}");
    assert_eq!(body["token"], token);
    assert_eq!(body["stdout"], "aGkK\n", "always base64, as Ruby writes it");
    assert_eq!(body["stderr"], Value::Null);
    assert_eq!(body["status"], json!({"id": 3, "description": "Accepted"}));
    assert!(body["time"].is_string(), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.calls().len(), 2, "no call after the delivered one");
}

#[tokio::test]
async fn a_callback_is_tried_at_most_judge0s_three_times() {
    let receiver = Receiver::failing_first(10).await;
    let server = Server::start_with(&["--webhook-retry-base-ms", "20"]).await;
    let judge0 = Judge0::new(&server, None);
    let (_, created) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print(1)", "language_id": 71, "callback_url": receiver.url()}),
        )
        .await;
    let token = created["token"].as_str().expect("a token");
    let events = webhook_events(&server, token, 3, true).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2]["data"]["retry"], false, "given up after three");
    assert_eq!(receiver.calls().len(), 3);
}

#[tokio::test]
async fn a_judged_submission_calls_back_once_with_its_verdict_and_never_for_its_suite() {
    let receiver = Receiver::start().await;
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let (_, created) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print('no')", "language_id": 71, "expected_output": "yes",
                    "callback_url": receiver.url()}),
        )
        .await;
    let token = created["token"].as_str().expect("a token");
    let calls = receiver.wait_for_calls(1).await;
    let body = calls[0].json();
    assert_eq!(body["token"], token);
    assert_eq!(
        body["status"],
        json!({"id": 4, "description": "Wrong Answer"})
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        receiver.calls().len(),
        1,
        "the suite itself is not called back"
    );

    // A batch's submissions share one callback, or it is refused before anything is stored.
    let stored = jobs_stored(&server);
    let other = format!("{}/other", receiver.url());
    let (status, errors) = judge0
        .post(
            "/submissions/batch",
            &json!({"submissions": [
                {"source_code": "print(1)", "language_id": 71, "callback_url": receiver.url()},
                {"source_code": "print(2)", "language_id": 71, "callback_url": other},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        errors,
        json!([{}, {"callback_url": ["must be the same for every submission of a batch"]}])
    );
    assert_eq!(jobs_stored(&server), stored);
}

#[tokio::test]
async fn callbacks_switched_off_or_to_a_denied_host_are_refused_in_judge0s_shape() {
    let server = Server::start_with(&["--no-judge0-callbacks"]).await;
    let judge0 = Judge0::new(&server, None);
    let (_, config) = judge0.get("/config_info").await;
    assert_eq!(config["enable_callbacks"], false);
    let (status, errors) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print(1)", "language_id": 71,
                    "callback_url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        errors,
        json!({"callback_url": ["setting callback is not allowed"]})
    );

    let server = Server::start_with(&["--webhook-deny-host", "127.0.0.0/8"]).await;
    let judge0 = Judge0::new(&server, None);
    let (status, errors) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print(1)", "language_id": 71,
                    "callback_url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{errors}");
    let message = errors["callback_url"][0].as_str().expect("a message");
    assert!(message.contains("127.0.0.1"), "{message}");
    assert_eq!(jobs_stored(&server), 0);
}

/// A zip archive of `entries`, deflated as zip tools write them, in base64 as Judge0 takes it.
fn zipped(entries: &[(&str, &str)]) -> String {
    use std::io::Write;
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, contents) in entries {
        zip.start_file(*name, options).expect("start an entry");
        zip.write_all(contents.as_bytes()).expect("write an entry");
    }
    let bytes = zip.finish().expect("finish the archive").into_inner();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

#[tokio::test]
async fn a_multi_file_c_program_is_built_by_its_compile_script_and_run_by_its_run_script() {
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let (_, languages) = judge0.get("/languages").await;
    let names: Vec<&str> = languages
        .as_array()
        .expect("a list")
        .iter()
        .filter(|l| l["id"] == 50 || l["id"] == 89)
        .filter_map(|l| l["name"].as_str())
        .collect();
    if names.len() < 2 {
        return skip(
            "judge0 multi-file",
            "the server offers no c runtime (no gcc)",
        );
    }
    assert!(names.contains(&"Multi-file program"), "{names:?}");
    let (status, language) = judge0.get("/languages/89").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        language["run_cmd"],
        Value::Null,
        "the archive brings its own"
    );

    let project = zipped(&[
        (
            "main.c",
            "#include \"greet.h\"\nint main(void) { return greet(); }\n",
        ),
        ("greet.h", "int greet(void);\n"),
        (
            "lib/greet.c",
            "#include <stdio.h>\nint greet(void) { char name[16]; if (scanf(\"%15s\", name) != 1) return 2; printf(\"hello, %s\\n\", name); return 0; }\n",
        ),
        ("compile", "gcc -O2 -I. -o main main.c lib/greet.c\n"),
        ("run", "./main\n"),
    ]);
    let (status, done) = judge0
        .post(
            "/submissions?wait=true&fields=status,stdout,stderr",
            &json!({"language_id": 89, "additional_files": project, "stdin": "kiln",
                    "expected_output": "hello, kiln"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    assert_eq!(
        done["status"],
        json!({"id": 3, "description": "Accepted"}),
        "{done}"
    );
    assert_eq!(
        done["stdout"], "hello, kiln\n",
        "the compiler says nothing on stdout"
    );

    // A compile script that fails ends the run, its messages on stderr.
    let broken = zipped(&[
        ("main.c", "int main( {\n"),
        ("compile", "gcc -o main main.c\n"),
        ("run", "./main\n"),
    ]);
    let (_, failed) = judge0
        .post(
            "/submissions?wait=true&fields=status,stdout,stderr",
            &json!({"language_id": 89, "additional_files": broken}),
        )
        .await;
    assert_eq!(failed["status"]["id"], 11, "{failed}");
    assert_eq!(failed["stdout"], Value::Null);
    assert!(
        failed["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("main.c")),
        "{failed}"
    );
}

#[tokio::test]
async fn additional_files_are_unpacked_beside_a_python_program() {
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let files = zipped(&[
        ("data/words.txt", "kiln judge0\n"),
        ("helper.py", "def shout(s):\n    return s.upper()\n"),
    ]);
    let code = "import helper\nprint(helper.shout(open('data/words.txt').read().strip()))";
    let (status, done) = judge0
        .post(
            "/submissions?wait=true",
            &json!({"source_code": code, "language_id": 71, "additional_files": files}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    assert_eq!(done["status"]["id"], 3, "{done}");
    assert_eq!(done["stdout"], "KILN JUDGE0\n");
    // Judged too: the files go with the suite's case.
    let (_, judged) = judge0
        .post(
            "/submissions?wait=true",
            &json!({"source_code": code, "language_id": 71, "additional_files": files,
                    "expected_output": "KILN JUDGE0"}),
        )
        .await;
    assert_eq!(
        judged["status"],
        json!({"id": 3, "description": "Accepted"}),
        "{judged}"
    );
    let (_, config) = judge0.get("/config_info").await;
    assert_eq!(config["enable_additional_files"], true);
    assert_eq!(config["max_extract_size"], 10240);
}

#[tokio::test]
async fn each_bad_archive_is_refused_on_additional_files_and_nothing_is_stored() {
    use std::io::Write;
    let server = Server::start().await;
    let judge0 = Judge0::new(&server, None);
    let b64 =
        |bytes: Vec<u8>| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
    let with_symlink = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        zip.add_symlink("passwd", "/etc/passwd", options)
            .expect("a symlink");
        zip.start_file("run", options).expect("start");
        zip.write_all(b"cat passwd\n").expect("write");
        b64(zip.finish().expect("finish").into_inner())
    };
    let big = "x".repeat(11 << 20);
    let names: Vec<String> = (0..257).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let cases = [
        (
            "zip-slip",
            zipped(&[("../../escaped", "x")]),
            "leads out of the work directory",
        ),
        (
            "absolute",
            zipped(&[("/etc/cron.d/x", "x")]),
            "absolute path",
        ),
        ("symlink", with_symlink, "symlink"),
        ("too many files", zipped(&many), "more than 256 files"),
        ("too large", zipped(&[("big", &big)]), "more than 10240 KB"),
        (
            "not a zip",
            b64(b"plain text".to_vec()),
            "is not a zip archive",
        ),
        ("not base64", "%%%".to_owned(), "is not valid base64"),
        (
            "the source file",
            zipped(&[("main.py", "print(2)")]),
            "files must not contain \"main.py\"",
        ),
    ];
    for (what, archive, message) in cases {
        let (status, errors) = judge0
            .post(
                "/submissions",
                &json!({"source_code": "print(1)", "language_id": 71, "additional_files": archive}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {errors}");
        let said = errors["additional_files"][0].as_str().unwrap_or_default();
        assert!(said.contains(message), "{what}: {errors}");
        assert_eq!(
            errors.as_object().map(|o| o.len()),
            Some(1),
            "{what}: {errors}"
        );
    }
    let (status, errors) = judge0
        .post("/submissions", &json!({"language_id": 89}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(errors, json!({"additional_files": ["can't be blank"]}));
    let (_, errors) = judge0
        .post(
            "/submissions",
            &json!({"language_id": 89, "source_code": "echo hi", "additional_files": zipped(&[("run", "echo hi")])}),
        )
        .await;
    assert_eq!(errors, json!({"source_code": ["must be blank"]}));
    assert_eq!(jobs_stored(&server), 0);
}

#[tokio::test]
async fn a_callback_pending_at_kill_9_is_put_in_judge0s_shape_after_restart() {
    let receiver = Receiver::failing_first(usize::MAX).await;
    let args = ["--webhook-retry-base-ms", "1500"];
    let server = Server::start_with(&args).await;
    let judge0 = Judge0::new(&server, None);
    let (_, created) = judge0
        .post(
            "/submissions",
            &json!({"source_code": "print('survived')", "language_id": 71,
                    "callback_url": receiver.url()}),
        )
        .await;
    let token = created["token"].as_str().expect("a token").to_owned();
    webhook_events(&server, &token, 1, false).await;
    let dir = server.kill9();

    receiver.fail_next(0);
    let server = Server::start_in(dir, &args).await;
    let events = webhook_events(&server, &token, 2, true).await;
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(json!("webhook.delivered")),
        "{events:?}"
    );
    let calls = receiver.calls();
    let last = calls.last().expect("a call");
    assert_eq!(
        last.method,
        reqwest::Method::PUT,
        "the shape outlives the restart"
    );
    assert_eq!(last.json()["stdout"], "c3Vydml2ZWQK\n");
}
