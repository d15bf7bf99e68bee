//! Suites sent as a stream of lines (`Content-Type: application/x-ndjson`) over the real server:
//! the same suite as its JSON form, judged the same; a bad line anywhere refuses it whole, naming
//! the line, with nothing stored; 10,000 cases stored in one piece; the caps on cases, on a line
//! and on the whole stream; and an idempotent replay.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::batches::{all_cases, finished, submit};
use crate::util::{Server, decode};

/// The suite as NDJSON: its own fields on the first line, then a case a line.
fn lines(suite: &Value, cases: &[Value]) -> String {
    let mut body = format!("{suite}\n");
    for case in cases {
        body.push_str(&format!("{case}\n"));
    }
    body
}

pub(crate) async fn post_ndjson(
    server: &Server,
    body: String,
    key: Option<&str>,
) -> (StatusCode, Value, HeaderMap) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/batches", server.url))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("POST");
    let headers = response.headers().clone();
    let (status, value) = decode(response).await;
    (status, value, headers)
}

fn rows(server: &Server, table: &str) -> i64 {
    server.count(&format!("SELECT count(*) FROM {table}"))
}

async fn nothing_is_stored(server: &Server) {
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    let (_, events) = server.get("/v1/events").await;
    assert_eq!(events["events"], json!([]));
    for table in ["batches", "jobs", "events"] {
        assert_eq!(rows(server, table), 0, "{table} holds nothing");
    }
}

/// The verdict of each case and the groups' pass@k.
async fn judged(server: &Server, id: &str) -> (Vec<(Value, Value)>, Value) {
    finished(server, id).await;
    let cases = all_cases(server, id, 100).await;
    let verdicts = cases
        .iter()
        .map(|c| (c["name"].clone(), c["verdict"].clone()))
        .collect();
    let (status, groups) = server.get(&format!("/v1/batches/{id}/groups")).await;
    assert_eq!(status, StatusCode::OK, "{groups}");
    (verdicts, groups["groups"].clone())
}

#[tokio::test]
async fn an_ndjson_suite_is_judged_as_the_same_suite_sent_as_json() {
    let server = Server::start().await;
    let suite = json!({"runtime": "sh", "code": "read a; echo $((a * 2))", "pass_at_k": [1, 2]});
    let cases = [
        json!({"name": "double 2", "group": "p", "stdin": "2", "expected_output": "4"}),
        json!({"name": "double 3", "group": "p", "stdin": "3", "expected_output": "7"}),
        json!({"name": "own program", "group": "q", "code": "echo hi", "expected_output": "hi"}),
        json!({"name": "exits 1", "group": "q", "code": "exit 1"}),
    ];
    let (status, streamed, _) = post_ndjson(&server, lines(&suite, &cases), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{streamed}");
    assert_eq!(streamed["cases"][2]["name"], "own program", "{streamed}");
    let mut whole = suite.clone();
    whole["cases"] = json!(cases);
    let sent_whole = submit(&server, &whole).await;

    let streamed = judged(&server, streamed["id"].as_str().expect("id")).await;
    let sent_whole = judged(&server, sent_whole["id"].as_str().expect("id")).await;
    assert_eq!(streamed, sent_whole);
    let verdicts: Vec<&Value> = streamed.0.iter().map(|(_, v)| v).collect();
    assert_eq!(
        verdicts,
        ["passed", "wrong_answer", "passed", "runtime_error"]
    );
    assert_eq!(streamed.1[0]["pass_at_k"]["1"], 0.5, "{}", streamed.1);
}

#[tokio::test]
async fn a_bad_line_in_the_middle_refuses_the_whole_suite_naming_the_line() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let suite = json!({"runtime": "sh", "code": "exit 0"});
    let mut cases: Vec<Value> = (1..=8).map(|i| json!({"name": format!("c{i}")})).collect();
    cases[3] = json!({"name": "c4", "runtime": "cobol", "code": "x"});
    let (status, body, _) = post_ndjson(&server, lines(&suite, &cases), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("line 5 (case 4, \"c4\"): unknown runtime \"cobol\""),
        "{message}"
    );

    // Malformed JSON is 400, as in a suite sent whole; a field no case has is 422.
    let mut body = lines(&suite, &cases[..3]);
    body.push_str("{\"name\": \"c4\",\n");
    body.push_str(&lines(&json!({"name": "c5"}), &cases[5..]));
    let (status, refused, _) = post_ndjson(&server, body, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_json");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("line 5, column "), "{message}");
    cases[3] = json!({"name": "c4", "timeout": 3});
    let (status, refused, _) = post_ndjson(&server, lines(&suite, &cases), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("line 5, column ") && message.contains("unknown field `timeout`"),
        "{message}"
    );

    // The suite's own fields are the first line; and a suite needs a case.
    let (status, refused, _) = post_ndjson(
        &server,
        lines(&json!({"runtime": "sh", "cases": []}), &[]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("line 1, column") && m.contains("`cases`")),
        "{refused}"
    );
    let (status, refused, _) = post_ndjson(&server, lines(&suite, &[]), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["message"], "cases must not be empty");
    nothing_is_stored(&server).await;
}

#[tokio::test]
async fn ten_thousand_cases_are_stored_whole_and_one_more_is_refused_unstored() {
    // Nothing runs: what is checked is what the submit stored.
    let server = Server::start_with(&["--workers", "0"]).await;
    let suite = json!({"runtime": "sh", "code": "exit 0"});
    let cases: Vec<Value> = (0..10_000)
        .map(|i| json!({"name": format!("t{i}"), "group": format!("g{}", i % 100), "stdin": i.to_string()}))
        .collect();
    let (status, accepted, _) = post_ndjson(&server, lines(&suite, &cases), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let answered = accepted["cases"].as_array().expect("cases");
    assert_eq!(answered.len(), 10_000);
    assert_eq!(answered[9_999]["name"], "t9999");
    let id = accepted["id"].as_str().expect("id");
    let (_, batch) = server.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(batch["progress"]["total"], 10_000, "{batch}");
    assert_eq!(batch["groups"]["groups"], 100, "{batch}");
    assert_eq!(rows(&server, "jobs"), 10_000);
    assert_eq!(
        rows(&server, "events"),
        10_001,
        "a job.queued each and batch.queued"
    );
    let last = server.rows("SELECT case_index, stdin FROM jobs WHERE case_name = 't9999'");
    assert_eq!((last[0][0].int(), last[0][1].text()), (9_999, "9999"));

    let mut over = cases;
    over.push(json!({"name": "one too many"}));
    let (status, refused, _) = post_ndjson(&server, lines(&suite, &over), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "line 10002 (case 10001, \"one too many\"): more cases than the 10000 allowed"
    );
    assert_eq!(rows(&server, "batches"), 1);
    assert_eq!(rows(&server, "jobs"), 10_000);
}

#[tokio::test]
async fn a_line_longer_than_any_case_needs_and_a_stream_over_its_cap_are_refused() {
    let server = Server::start_with(&[
        "--workers",
        "0",
        "--max-code-bytes",
        "1000",
        "--max-stdin-bytes",
        "1000",
        "--max-files-bytes",
        "1000",
        "--max-output-bytes",
        "1000",
        "--max-suite-bytes",
        "1000000",
    ])
    .await;
    // A case may take 4000 bytes of those, 1336 each in base64, 64 KiB of args, and 64 KiB of
    // JSON around them.
    let cap = 4 * 1336 + 2 * 65_536;
    let suite = json!({"runtime": "sh", "code": "exit 0"});
    let long = json!({"name": "long", "stdin": "x".repeat(cap)});
    let body = lines(&suite, &[json!({}), long, json!({})]);
    let (status, refused, _) = post_ndjson(&server, body, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(
        refused["error"]["message"],
        format!("line 3 is longer than {cap} bytes, more than any case may need")
    );
    // A stdin within the line but over its own cap is refused by that cap.
    let body = lines(&suite, &[json!({"name": "big", "stdin": "x".repeat(1001)})]);
    let (status, refused, _) = post_ndjson(&server, body, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "line 2 (case 1, \"big\"): stdin is 1001 bytes, at most 1000 allowed"
    );
    let cases: Vec<Value> = (0..2000)
        .map(|i| json!({"name": format!("t{i}"), "stdin": "y".repeat(900)}))
        .collect();
    let (status, refused, _) = post_ndjson(&server, lines(&suite, &cases), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(
        refused["error"]["message"],
        "the suite is more than 1000000 bytes, at most 1000000 allowed"
    );
    nothing_is_stored(&server).await;
}

#[tokio::test]
async fn a_replayed_ndjson_suite_answers_the_first_batch_and_a_different_one_is_a_conflict() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let suite = json!({"runtime": "sh", "code": "cat", "limits": {"wall_ms": 2000}});
    let cases = [
        json!({"name": "a", "stdin": "1", "expected_output": "1"}),
        json!({"name": "b", "code": "echo 2", "group": "g"}),
    ];
    let body = lines(&suite, &cases);
    let (status, first, _) = post_ndjson(&server, body.clone(), Some("suite-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again, headers) = post_ndjson(&server, body, Some("suite-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again, first, "the same batch, the same job ids");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    // The suite sent whole is the same suite.
    let mut whole = suite.clone();
    whole["cases"] = json!(cases);
    let (status, as_json) = server
        .post_raw(
            "/v1/batches",
            whole.to_string().into_bytes(),
            &[("idempotency-key", "suite-1")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{as_json}");
    assert_eq!(as_json["id"], first["id"]);

    let changed = [cases[0].clone(), json!({"name": "b", "code": "echo 3"})];
    let (status, refused, _) = post_ndjson(&server, lines(&suite, &changed), Some("suite-1")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");
    assert_eq!(rows(&server, "batches"), 1);
    assert_eq!(rows(&server, "jobs"), 2);
}

#[tokio::test]
async fn kiln_batch_streams_an_ndjson_file_reading_each_code_file_on_the_way() {
    let server = Server::start().await;
    let dir = server.dir.path();
    std::fs::write(dir.join("double.sh"), "read a; echo $((a * 2))").expect("write");
    std::fs::write(dir.join("hi.sh"), "echo hi").expect("write");
    let suite = json!({"runtime": "sh", "code_file": "double.sh"});
    let cases = [
        json!({"name": "two", "stdin": "2", "expected_output": "4"}),
        json!({"name": "own", "code_file": "hi.sh", "expected_output": "hi"}),
    ];
    std::fs::write(dir.join("suite.ndjson"), lines(&suite, &cases)).expect("write");
    let out = server.kiln(&["batch", "suite.ndjson", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 of 2 passed"), "{stdout}");

    let missing = [
        cases[0].clone(),
        json!({"name": "gone", "code_file": "nowhere.sh"}),
    ];
    std::fs::write(dir.join("missing.jsonl"), lines(&suite, &missing)).expect("write");
    let out = server.kiln(&["batch", "missing.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere.sh"), "{stderr}");
    let (_, batches) = server.get("/v1/jobs").await;
    assert_eq!(
        batches["jobs"].as_array().map(Vec::len),
        Some(2),
        "only the first suite's cases: {batches}"
    );
}
