//! Bytes that are not text: binary stdin, code and files sent in base64, output that is not
//! UTF-8 kept exactly, suites judged on bytes, and every malformed value refused with nothing
//! stored. Through the real server, in the real sandbox, and the real `kiln` client.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::db::Cell;
use crate::ndjson::post_ndjson;
use crate::streams::{Item, Sse};
use crate::util::Server;

fn b64(bytes: &[u8]) -> Value {
    json!({"base64": STANDARD.encode(bytes)})
}

/// The exact bytes of one of a job's streams, by the encoding the job gives it.
fn stream(job: &Value, name: &str) -> Vec<u8> {
    let text = job[name].as_str().expect("a stream");
    match job[format!("{name}_encoding")].as_str() {
        Some("utf-8") => text.as_bytes().to_vec(),
        Some("base64") => STANDARD.decode(text).expect("base64"),
        other => panic!("{name}_encoding is {other:?}"),
    }
}

#[tokio::test]
async fn binary_stdin_reaches_the_program_and_comes_back_byte_for_byte() {
    let server = Server::start().await;
    let every_byte: Vec<u8> = (0..=255).collect();
    let id = server
        .submit(json!({"runtime": "sh", "code": "cat", "stdin": b64(&every_byte)}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout_encoding"], "base64", "not UTF-8, so not text");
    assert_eq!(stream(&job, "stdout"), every_byte);
}

#[tokio::test]
async fn output_that_is_not_utf8_is_kept_exactly_and_given_in_base64_on_request() {
    let server = Server::start().await;
    // Invalid UTF-8 that a lossy decoding would have turned into U+FFFD, and a NUL.
    let id = server
        .submit(json!({"runtime": "sh", "code": "printf 'a\\377\\000b'; printf 'fine' >&2"}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["stdout_encoding"], "base64", "{job}");
    assert_eq!(stream(&job, "stdout"), b"a\xff\x00b");
    assert_eq!(job["stderr_encoding"], "utf-8");
    assert_eq!(job["stderr"], "fine");

    let (status, both) = server.get(&format!("/v1/jobs/{id}?encoding=base64")).await;
    assert_eq!(status, StatusCode::OK, "{both}");
    assert_eq!(both["stdout"], STANDARD.encode(b"a\xff\x00b"));
    assert_eq!(both["stderr_encoding"], "base64");
    assert_eq!(both["stderr"], STANDARD.encode("fine"));
    let (status, body) = server.get(&format!("/v1/jobs/{id}?encoding=hex")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, legacy) = server.get(&format!("/eval-status/{id}")).await;
    assert_eq!(legacy["output"], STANDARD.encode(b"a\xff\x00b"), "{legacy}");
    assert_eq!(legacy["output_encoding"], "base64");

    // The database holds the bytes themselves, as its operators can see.
    let stored = server.rows(&format!(
        "SELECT j.stdout, o.stdout_encoding FROM jobs j
         JOIN job_output o ON o.job_id = j.id WHERE j.id = '{id}'"
    ));
    assert_eq!(
        stored[0],
        [
            Cell::Bytes(b"a\xff\x00b".to_vec()),
            Cell::Text("base64".into())
        ]
    );
}

#[tokio::test]
async fn code_and_files_in_base64_are_written_as_their_bytes() {
    let server = Server::start().await;
    let id = server
        .submit(json!({
            "runtime": "sh",
            "code": b64(b"od -An -tx1 data.bin | tr -s ' '\n"),
            "files": {"data.bin": b64(b"\x00\xff\x80"), "note.txt": "text stays text"},
        }))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], " 00 ff 80\n");
}

#[tokio::test]
async fn a_value_in_an_unknown_encoding_or_bad_base64_is_refused_naming_it_and_nothing_is_stored() {
    let server = Server::start().await;
    let refused = [
        (
            json!({"runtime": "sh", "code": "cat", "stdin": {"hex": "00"}}),
            "stdin: unknown encoding \"hex\"",
        ),
        (
            json!({"runtime": "sh", "code": {"base64": "not base64!"}}),
            "code: invalid base64",
        ),
        (
            json!({"runtime": "sh", "code": "cat", "files": {"in.bin": {"base64": "AA", "x": 1}}}),
            "files[\"in.bin\"]: unknown encoding \"x\"",
        ),
        (
            json!({"runtime": "sh", "code": "cat", "files": {"in.bin": {"base64": "@@@@"}}}),
            "files[\"in.bin\"]: invalid base64",
        ),
    ];
    for (job, message) in refused {
        let (status, body) = server.post("/v1/jobs", &job).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{job}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let said = body["error"]["message"].as_str().unwrap_or_default();
        assert!(said.starts_with(message), "{said:?} for {job}");
    }
    let suite = json!({"runtime": "sh", "code": "cat", "cases": [
        {"name": "fine", "stdin": b64(b"\x00")},
        {"name": "bad", "expected_output": {"base64": "%%"}},
    ]});
    let (status, body) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("case 2 (\"bad\"): expected_output: invalid base64"),
        "{said}"
    );
    let lines = concat!(
        r#"{"runtime": "sh", "code": "cat"}"#,
        "\n",
        r#"{"name": "bad", "stdin": {"utf16": ""}}"#,
        "\n"
    );
    let (status, body, _) = post_ndjson(&server, lines.to_owned(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let said = body["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains("stdin: unknown encoding \"utf16\""), "{said}");

    let stored =
        server.count("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM batches)");
    assert_eq!(stored, 0, "nothing of a refused submission is stored");
}

#[tokio::test]
async fn a_suite_compares_binary_output_with_its_expected_bytes() {
    let server = Server::start().await;
    let suite = json!({"runtime": "sh", "code": "cat", "compare": "exact", "cases": [
        {"name": "same", "stdin": b64(b"\xff\x00\n"), "expected_output": b64(b"\xff\x00\n")},
        // Alike only once decoded lossily: both would be U+FFFD.
        {"name": "other", "stdin": b64(b"\xfe"), "expected_output": b64(b"\xff")},
    ]});
    let (status, body) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch = body["id"].as_str().expect("batch id");
    let (_, done) = server.get(&format!("/v1/batches/{batch}?wait=30")).await;
    assert_eq!(done["done"], true, "{done}");
    let (_, cases) = server.get(&format!("/v1/batches/{batch}/cases")).await;
    let cases = cases["cases"].as_array().expect("cases");
    assert_eq!(cases[0]["verdict"], "passed", "{cases:?}");
    assert_eq!(cases[1]["verdict"], "wrong_answer", "{cases:?}");
    assert_eq!(
        cases[1]["detail"],
        "byte 1 (not UTF-8, compared as bytes): expected bytes ff, got bytes fe"
    );
}

#[tokio::test]
async fn kiln_submit_sends_a_binary_file_and_kiln_status_prints_the_raw_bytes() {
    let server = Server::start().await;
    let dir = server.dir.path();
    std::fs::write(dir.join("echo.sh"), "cat; printf '\\376'").expect("program");
    std::fs::write(dir.join("input.bin"), b"\x00\x01\xff").expect("input");
    let out = server.kiln(&["submit", "echo.sh", "--stdin", "input.bin", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.ends_with(b"\x00\x01\xff\xfe"),
        "the raw bytes end the output: {:?}",
        out.stdout
    );
    let (_, list) = server.get("/v1/jobs").await;
    let id = list["jobs"][0]["id"].as_str().expect("the job").to_owned();
    let status = server.kiln(&["status", &id]);
    assert!(status.status.success(), "{status:?}");
    assert!(status.stdout.ends_with(b"\x00\x01\xff\xfe"), "{status:?}");
}

#[tokio::test]
async fn live_output_that_is_not_utf8_comes_in_base64_and_says_so() {
    let server = Server::start().await;
    let id = server
        .submit(
            json!({"runtime": "sh", "code": "printf 'text\\n'; sleep 0.5; printf '\\377\\376'"}),
        )
        .await;
    let mut stream = Sse::open(&server, &format!("/v1/jobs/{id}/events"), &[]).await;
    let outputs: Vec<Value> = stream
        .rest()
        .await
        .iter()
        .filter(|m| m.event() == Some("output"))
        .map(Item::json)
        .collect();
    assert_eq!(
        outputs,
        [
            json!({"job_id": id, "attempt": 1, "stream": "stdout", "data": "text\n"}),
            json!({"job_id": id, "attempt": 1, "stream": "stdout", "data": "//4=", "encoding": "base64"}),
        ]
    );
}

#[tokio::test]
async fn kiln_watch_writes_binary_output_as_the_raw_bytes() {
    let server = Server::start().await;
    let id = server
        .submit(json!({"runtime": "sh", "code": "printf 'a\\n'; sleep 0.5; printf '\\377\\000z'"}))
        .await;
    let out = server.kiln(&["watch", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout, b"a\n\xff\x00z",
        "stdout holds the output and nothing else"
    );
}
