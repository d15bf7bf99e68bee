//! Test suites (batches) over the real server: one transaction per suite, a verdict per case,
//! totals, JUnit reports, compile-once for compiled runtimes, cancel, limits, and the CLI.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::db::Cell;
use crate::util::Server;

/// Adds two numbers; `slow` sleeps past any limit, `fail` exits 3.
const ADDER: &str = r#"read a b
case "$a" in
  slow) sleep 10 ;;
  fail) echo boom >&2; exit 3 ;;
esac
echo $((a + b))"#;

/// Submits a suite, asserting the 202, and returns the answer.
pub(crate) async fn submit(server: &Server, suite: &Value) -> Value {
    let (status, body) = server.post("/v1/batches", suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

/// Long-polls until the batch is done.
pub(crate) async fn finished(server: &Server, id: &str) -> Value {
    for _ in 0..12 {
        let (status, batch) = server.get(&format!("/v1/batches/{id}?wait=10")).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        if batch["done"] == true {
            return batch;
        }
    }
    panic!("batch {id} did not finish in 2 minutes");
}

/// Every case, following the cursor `limit` at a time.
pub(crate) async fn all_cases(server: &Server, id: &str, limit: u32) -> Vec<Value> {
    let mut cases = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = server
            .get(&format!("/v1/batches/{id}/cases?limit={limit}{cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        cases.extend(page["cases"].as_array().expect("cases").iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => cursor = format!("&after={next}"),
            None => return cases,
        }
    }
}

pub(crate) async fn report(server: &Server, id: &str) -> String {
    let response = reqwest::get(format!(
        "{}/v1/batches/{id}/report?format=junit",
        server.url
    ))
    .await
    .expect("GET report");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/xml")),
        "{:?}",
        response.headers()
    );
    response.text().await.expect("report body")
}

/// A JUnit file as a strict XML parser reads it: the `<testcase>`s with their names and the kind
/// of their first child (`failure`, `error`, `skipped`), and the root's attributes.
pub(crate) struct Junit {
    pub(crate) root: HashMap<String, String>,
    pub(crate) cases: Vec<(String, Option<String>)>,
    pub(crate) failure_texts: Vec<String>,
}

pub(crate) fn parse_junit(xml: &str) -> Junit {
    use quick_xml::events::{BytesStart, Event};
    fn attributes(e: &BytesStart) -> HashMap<String, String> {
        e.attributes()
            .map(|a| {
                let a = a.expect("well-formed attribute");
                let key = a.key.as_ref().to_owned();
                let value = a
                    .normalized_value(quick_xml::XmlVersion::Explicit1_0)
                    .expect("attribute value unescapes");
                (key, value.into_owned())
            })
            .collect()
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut junit = Junit {
        root: HashMap::new(),
        cases: Vec::new(),
        failure_texts: Vec::new(),
    };
    let mut in_failure = false;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) => match e.name().into_inner() {
                "testsuites" => junit.root = attributes(&e),
                "testcase" => {
                    let name = attributes(&e).remove("name").expect("testcase name");
                    junit.cases.push((name, None));
                }
                kind @ ("failure" | "error" | "skipped") => {
                    in_failure = kind == "failure";
                    let case = junit.cases.last_mut().expect("inside a testcase");
                    case.1.get_or_insert(kind.to_owned());
                    if in_failure {
                        junit.failure_texts.push(String::new());
                    }
                }
                _ => {}
            },
            Event::Text(text) if in_failure => {
                let text = text.xml10_content();
                junit
                    .failure_texts
                    .last_mut()
                    .expect("failure")
                    .push_str(&text);
            }
            Event::GeneralRef(r) if in_failure => {
                let c = match r.resolve_char_ref().expect("character reference") {
                    Some(c) => c,
                    None => match r.xml10_content().as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "quot" => '"',
                        "apos" => '\'',
                        other => panic!("unknown entity {other}"),
                    },
                };
                junit.failure_texts.last_mut().expect("failure").push(c);
            }
            Event::End(e) if e.name().into_inner() == "failure" => in_failure = false,
            Event::Eof => return junit,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_200_case_suite_gets_a_verdict_per_case_totals_and_a_junit_report_that_parses() {
    let server = Server::start().await;
    // Every 20th case expects a wrong sum; one case times out, one crashes.
    let cases: Vec<Value> = (0..200)
        .map(|i| match i {
            100 => json!({"name": "slow", "stdin": "slow 0", "expected_output": "0",
                          "limits": {"wall_ms": 300}}),
            150 => json!({"name": "crash", "stdin": "fail 0", "expected_output": "0"}),
            i => {
                let sum = 2 * i + 1 + u32::from(i % 20 == 7);
                json!({"name": format!("add {i} <{}>", i + 1), "stdin": format!("{i} {}\n", i + 1),
                       "expected_output": format!("{sum}\n")})
            }
        })
        .collect();
    let accepted = submit(
        &server,
        &json!({"runtime": "sh", "code": ADDER, "limits": {"wall_ms": 5000}, "cases": cases}),
    )
    .await;
    let id = accepted["id"].as_str().expect("batch id").to_owned();
    let ids = accepted["cases"].as_array().expect("case ids");
    assert_eq!(ids.len(), 200);
    assert_eq!(ids[3]["name"], "add 3 <4>");

    let batch = finished(&server, &id).await;
    assert_eq!(batch["progress"], json!({"done": 200, "total": 200}));
    assert_eq!(
        (batch["passed"].as_u64(), batch["failed"].as_u64()),
        (Some(188), Some(12))
    );
    let verdicts = &batch["by_verdict"];
    assert_eq!(verdicts["passed"], 188, "{batch}");
    assert_eq!(verdicts["wrong_answer"], 10, "{batch}");
    assert_eq!(verdicts["timed_out"], 1, "{batch}");
    assert_eq!(verdicts["runtime_error"], 1, "{batch}");
    assert_eq!(batch["by_status"]["succeeded"], 198, "{batch}");
    assert!(
        batch["started_at"].is_string() && batch["finished_at"].is_string(),
        "{batch}"
    );

    let cases = all_cases(&server, &id, 64).await;
    assert_eq!(cases.len(), 200);
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(case["index"], i);
        assert_eq!(case["job_id"], ids[i]["job_id"]);
        let expected = match i {
            100 => "timed_out",
            150 => "runtime_error",
            i if i % 20 == 7 => "wrong_answer",
            _ => "passed",
        };
        assert_eq!(case["verdict"], expected, "{case}");
    }
    let wrong = &cases[27];
    let (sum, wanted) = (2 * 27 + 1, 2 * 27 + 2);
    assert_eq!(
        wrong["detail"],
        format!("line 1, column 2: expected \"{wanted}\", got \"{sum}\""),
        "the first difference, quoted: {wrong}"
    );
    assert_eq!(
        cases[150]["detail"], "exit code 3: boom",
        "its stderr says why"
    );
    // Each case is a job, which knows its batch and verdict.
    let (_, job) = server
        .get(&format!("/v1/jobs/{}", wrong["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (&job["batch_id"], &job["case_name"], &job["verdict"]),
        (&json!(id), &json!("add 27 <28>"), &json!("wrong_answer")),
        "{job}"
    );
    assert_eq!(job["stdout"], format!("{sum}\n"));

    let junit = parse_junit(&report(&server, &id).await);
    assert_eq!(junit.root["tests"], "200");
    assert_eq!(junit.root["failures"], "12");
    assert_eq!(junit.root["errors"], "0");
    assert_eq!(junit.cases.len(), 200);
    assert_eq!(junit.cases[3].0, "add 3 <4>", "names survive escaping");
    let failed: Vec<usize> = (0..200).filter(|&i| junit.cases[i].1.is_some()).collect();
    let mut expected_failed: Vec<usize> = (0..200).filter(|i| i % 20 == 7).collect();
    expected_failed.extend([100, 150]);
    expected_failed.sort_unstable();
    assert_eq!(failed, expected_failed);
    assert!(
        junit.failure_texts[1].contains(&format!("expected:\n{wanted}\n"))
            && junit.failure_texts[1].contains(&format!("actual:\n{sum}\n")),
        "{:?}",
        junit.failure_texts[1]
    );

    // Operators see the same in SQL, and the completion came with the last case's end.
    let summary = server.rows(&format!(
        "SELECT cases, done, passed FROM batch_summary WHERE id = '{id}'"
    ));
    let counts: Vec<i64> = summary[0].iter().map(Cell::int).collect();
    assert_eq!(counts, [200, 200, 188]);
    let completions = server.rows(&format!(
        "SELECT id, data FROM events WHERE batch_id = '{id}' AND type = 'batch.completed'"
    ));
    assert_eq!(completions.len(), 1);
    let (completed_at, data) = (completions[0][0].int(), completions[0][1].json());
    assert_eq!(
        (data["passed"].as_u64(), data["failed"].as_u64()),
        (Some(188), Some(12))
    );
    let last_case_end = server.count(&format!(
        "SELECT max(id) FROM events WHERE batch_id = '{id}' AND job_id IS NOT NULL"
    ));
    assert_eq!(
        completed_at,
        last_case_end + 1,
        "written right after the last case's end"
    );
}

#[tokio::test]
async fn an_invalid_case_rejects_the_whole_suite_and_nothing_is_stored() {
    let server = Server::start().await;
    let good = json!({"name": "fine", "stdin": "1 2", "expected_output": "3"});
    let bad = json!({"name": "greedy", "stdin": "1 2", "limits": {"wall_ms": 999_999_999}});
    let (status, body) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "sh", "code": ADDER, "cases": [good, {"stdin": "2 2"}, bad]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("case 3 (\"greedy\"): limits.wall_ms"),
        "{message}"
    );

    // The duplicate name is refused too, and a runtime this host lacks.
    let (status, body) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "sh", "code": ADDER, "cases": [good, good]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same name")
    );
    let (status, body) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "cobol", "code": "x", "cases": [{}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    let (_, events) = server.get("/v1/events").await;
    assert_eq!(events["events"], json!([]));
    for table in ["batches", "jobs", "events"] {
        let rows = server.count(&format!("SELECT count(*) FROM {table}"));
        assert_eq!(rows, 0, "{table} holds nothing");
    }
}

#[tokio::test]
async fn a_case_or_shared_files_the_kernel_would_refuse_reject_the_whole_suite_unstored() {
    let server = Server::start().await;
    let long_args = json!({"name": "long args", "args": vec!["y".repeat(1000); 100]});
    let refused = [
        (
            json!({"runtime": "sh", "code": ADDER, "cases": [{"name": "fine"}, long_args]}),
            "case 2 (\"long args\"): args take",
        ),
        (
            json!({"runtime": "sh", "code": ADDER, "files": {"a": "", "a/b": ""}, "cases": [{}]}),
            "cannot both be given",
        ),
    ];
    for (suite, why) in refused {
        let (status, body) = server.post("/v1/batches", &suite).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{message}");
    }
    for table in ["batches", "jobs", "events"] {
        let rows = server.count(&format!("SELECT count(*) FROM {table}"));
        assert_eq!(rows, 0, "{table} holds nothing");
    }
}

#[tokio::test]
async fn more_cases_than_the_configured_maximum_is_refused_with_413() {
    let server = Server::start_with(&["--max-batch-cases", "5"]).await;
    let suite = |n: usize| json!({"runtime": "sh", "code": "true", "cases": vec![json!({}); n]});
    let (status, body) = server.post("/v1/batches", &suite(6)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 5")
    );
    let accepted = submit(&server, &suite(5)).await;
    assert_eq!(accepted["cases"].as_array().map(Vec::len), Some(5));
}

/// The events that ended each case, as `(verdict, build)`.
pub(crate) fn case_ends(server: &Server, batch: &str) -> Vec<(String, String)> {
    let ends = server.rows(&format!(
        "SELECT data FROM events WHERE batch_id = '{batch}'
         AND type IN ('job.succeeded', 'job.failed', 'job.timed_out') ORDER BY id"
    ));
    ends.iter()
        .map(|row| {
            let data = row[0].json();
            let field = |name: &str| match data[name].as_str() {
                Some(value) => value.to_owned(),
                None => panic!("no {name} in {data}"),
            };
            (field("verdict"), field("build"))
        })
        .collect()
}

/// Build directories and binaries left in the server's cache.
fn builds_left(server: &Server) -> Vec<String> {
    std::fs::read_dir(server.dir.path().join("work/.builds"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn builds_are_removed(server: &Server) {
    for _ in 0..100 {
        if builds_left(server).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("builds left behind: {:?}", builds_left(server));
}

#[tokio::test]
async fn a_c_suite_compiles_once_and_every_case_runs_that_binary() {
    let server = Server::start().await;
    let code = r#"#include <stdio.h>
int main(void) {
    long a, b;
    if (scanf("%ld %ld", &a, &b) != 2) return 2;
    printf("%ld\n", a * b);
    return 0;
}"#;
    let cases: Vec<Value> = (1..=8)
        .map(|i| json!({"stdin": format!("{i} {i}"), "expected_output": (i * i).to_string()}))
        .collect();
    let accepted = submit(
        &server,
        &json!({"runtime": "c", "code": code, "cases": cases}),
    )
    .await;
    let id = accepted["id"].as_str().unwrap();
    let batch = finished(&server, id).await;
    assert_eq!(batch["passed"], 8, "{batch}");
    let ends = case_ends(&server, id);
    let compiled = ends.iter().filter(|(_, build)| build == "compiled").count();
    let shared = ends.iter().filter(|(_, build)| build == "shared").count();
    assert_eq!((compiled, shared), (1, 7), "{ends:?}");
    builds_are_removed(&server).await;

    // A compile error is compiled once too, and every case reports it with the compiler's words.
    let broken = json!({"runtime": "c", "code": "int main(void) { return missing; }",
                        "cases": [{}, {}, {}, {}]});
    let accepted = submit(&server, &broken).await;
    let id = accepted["id"].as_str().unwrap();
    let batch = finished(&server, id).await;
    assert_eq!(batch["by_verdict"]["compile_error"], 4, "{batch}");
    let ends = case_ends(&server, id);
    assert_eq!(
        ends.iter().filter(|(_, build)| build == "compiled").count(),
        1,
        "{ends:?}"
    );
    for case in all_cases(&server, id, 100).await {
        assert!(
            case["detail"]
                .as_str()
                .is_some_and(|d| d.contains("missing")),
            "{case}"
        );
        let (_, job) = server
            .get(&format!("/v1/jobs/{}", case["job_id"].as_str().unwrap()))
            .await;
        assert!(job["stderr"].as_str().unwrap().contains("error"), "{job}");
    }
    builds_are_removed(&server).await;
}

#[tokio::test]
async fn cancelling_a_batch_ends_its_unfinished_cases_and_completes_it() {
    let server = Server::start().await;
    let cases = vec![json!({"expected_output": ""}); 6];
    let accepted = submit(
        &server,
        &json!({"runtime": "sh", "code": "sleep 30", "cases": cases}),
    )
    .await;
    let id = accepted["id"].as_str().unwrap();
    let first = accepted["cases"][0]["job_id"].as_str().unwrap();
    server.running(first).await;

    let (status, batch) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["done"], true, "{batch}");
    assert_eq!(batch["by_verdict"]["cancelled"], 6, "{batch}");
    assert_eq!(batch["by_status"]["cancelled"], 6, "{batch}");
    // The running case was stopped, not left to sleep out its 30 seconds.
    let job = server.finished(first).await;
    assert_eq!(job["status"], "cancelled");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let (_, ready) = server.get("/readyz").await;
                if ready["running"] == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok(),
        "the running case's process was not stopped"
    );

    let (status, body) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = server
        .post(
            "/v1/batches/01a208ab-0000-7000-8000-000000000000/cancel",
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let junit = parse_junit(&report(&server, id).await);
    assert_eq!(junit.root["skipped"], "6");
}

#[tokio::test]
async fn a_retried_submit_with_the_same_idempotency_key_returns_the_first_batch() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let suite = json!({"runtime": "sh", "code": "cat", "cases": [{"stdin": "a"}, {"stdin": "b"}]});
    let body = suite.to_string().into_bytes();
    let key = [("idempotency-key", "suite-1")];
    let (status, first) = server.post_raw("/v1/batches", body.clone(), &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = server.post_raw("/v1/batches", body, &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        (&again["id"], &again["cases"]),
        (&first["id"], &first["cases"])
    );

    let mut other = suite.clone();
    other["cases"][1]["stdin"] = json!("c");
    let (status, body) = server
        .post_raw("/v1/batches", other.to_string().into_bytes(), &key)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(2),
        "one batch's cases"
    );
}

#[tokio::test]
async fn a_case_cannot_be_ended_without_a_verdict() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let accepted = submit(
        &server,
        &json!({"runtime": "sh", "code": "true", "cases": [{}]}),
    )
    .await;
    let job = accepted["cases"][0]["job_id"].as_str().unwrap();
    let conn = Connection::open(server.db_path()).unwrap();
    let err = conn
        .execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = 1 WHERE id = ?1",
            [job],
        )
        .expect_err("CHECK constraint");
    assert!(err.to_string().contains("CHECK"), "{err}");
}

#[tokio::test]
async fn kiln_batch_wait_exits_by_whether_every_case_passed_and_writes_junit() {
    let server = Server::start().await;
    let dir = server.dir.path();
    std::fs::write(dir.join("add.sh"), ADDER).unwrap();
    let suite = |cases: Value| json!({"runtime": "sh", "code_file": "add.sh", "cases": cases});
    std::fs::write(
        dir.join("good.json"),
        suite(
            json!([{"name": "one", "stdin": "1 1", "expected_output": "2"},
                     {"name": "two", "stdin": "2 2", "expected_output": "4"}]),
        )
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.json"),
        suite(
            json!([{"name": "one", "stdin": "1 1", "expected_output": "2"},
                     {"name": "off by one", "stdin": "2 2", "expected_output": "5"}]),
        )
        .to_string(),
    )
    .unwrap();

    let good = server.kiln(&["batch", "good.json", "--wait", "--junit", "good.xml"]);
    assert!(good.status.success(), "{good:?}");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(stdout.contains("2 of 2 passed"), "{stdout}");
    let junit = parse_junit(&std::fs::read_to_string(dir.join("good.xml")).unwrap());
    assert_eq!(junit.root["tests"], "2");
    assert_eq!(junit.root["failures"], "0");

    let bad = server.kiln(&["batch", "bad.json", "--junit", "bad.xml"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(
        stdout.contains("1 of 2 passed")
            && stdout.contains("off by one  wrong_answer")
            && stdout.contains("expected \"5\", got \"4\""),
        "{stdout}"
    );
    let junit = parse_junit(&std::fs::read_to_string(dir.join("bad.xml")).unwrap());
    assert_eq!(
        junit.cases[1],
        ("off by one".to_owned(), Some("failure".to_owned()))
    );

    // Without --wait it prints the id, for scripts.
    let submitted = server.kiln(&["batch", "good.json"]);
    assert!(submitted.status.success(), "{submitted:?}");
    let id = String::from_utf8(submitted.stdout).unwrap();
    let (status, _) = server.get(&format!("/v1/batches/{}", id.trim())).await;
    assert_eq!(status, StatusCode::OK);

    let missing = server.kiln(&["batch", "nowhere.json", "--wait"]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
}

#[tokio::test]
async fn the_example_suite_in_examples_passes() {
    let server = Server::start().await;
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sum/suite.json");
    let out = server.kiln(&["batch", suite, "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{out:?}");
    assert!(stdout.contains("5 of 5 passed"), "{stdout}");
}
