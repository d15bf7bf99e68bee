//! Suites of many programs over the real server: every case may bring its own runtime, code and
//! files (the suite's are the default), a compiled program is built once per distinct program,
//! and cases that name a group (the problem they are samples of) are counted per group with the
//! pass@k the suite asks for.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::batches::{
    all_cases, builds_are_removed, case_ends, finished, parse_junit, report, submit,
};
use crate::util::Server;

/// The verdict of each case, by name.
async fn verdicts(server: &Server, id: &str) -> Vec<(String, String)> {
    all_cases(server, id, 100)
        .await
        .iter()
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("name"), text("verdict"))
        })
        .collect()
}

#[tokio::test]
async fn each_case_may_run_its_own_program_across_runtimes_and_the_suite_s_is_the_default() {
    let server = Server::start().await;
    let c = "#include <stdio.h>\nint main(void) { puts(\"from c\"); return 0; }";
    let suite = json!({
        "runtime": "python",
        "code": "print(input())",
        "files": {"data.txt": "the suite's", "shared.txt": "shared"},
        "cases": [
            {"name": "default", "stdin": "echoed", "expected_output": "echoed"},
            {"name": "own code", "code": "print(6 * 7)", "expected_output": "42"},
            {"name": "own runtime", "runtime": "sh", "code": "echo from sh",
             "expected_output": "from sh"},
            {"name": "compiled", "runtime": "c", "code": c, "expected_output": "from c"},
            {"name": "own file", "code": "print(open('data.txt').read())",
             "files": {"data.txt": "the case's"}, "expected_output": "the case's"},
            {"name": "added file", "runtime": "sh", "code": "cat shared.txt extra.txt",
             "files": {"extra.txt": "+extra"}, "expected_output": "shared+extra"},
            {"name": "suite file", "code": "print(open('data.txt').read())",
             "expected_output": "the suite's"},
        ],
    });
    let accepted = submit(&server, &suite).await;
    let id = accepted["id"].as_str().unwrap();
    let batch = finished(&server, id).await;
    assert_eq!(
        verdicts(&server, id)
            .await
            .iter()
            .filter(|(_, v)| v != "passed")
            .collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "{batch}"
    );
    assert_eq!(batch["runtime"], "python");

    // A suite may leave the program to its cases entirely.
    let programs = json!({"cases": [
        {"runtime": "sh", "code": "echo 1", "expected_output": "1"},
        {"runtime": "python", "code": "print(2)", "expected_output": "2"},
    ]});
    let accepted = submit(&server, &programs).await;
    let id = accepted["id"].as_str().unwrap();
    let batch = finished(&server, id).await;
    assert_eq!(batch["passed"], 2, "{batch}");
    assert_eq!(batch["runtime"], Value::Null, "no suite runtime");

    // Operators see where each case's program is: '' runs the batch's code.
    let stored: Vec<(String, String)> = server
        .rows(&format!(
            "SELECT runtime, code FROM jobs WHERE batch_id = '{id}' ORDER BY case_index"
        ))
        .iter()
        .map(|r| (r[0].text().to_owned(), r[1].text().to_owned()))
        .collect();
    assert_eq!(
        stored,
        [
            ("sh".to_owned(), "echo 1".to_owned()),
            ("python".to_owned(), "print(2)".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_case_without_a_program_or_with_an_unknown_runtime_refuses_the_suite_unstored() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let refusals = [
        (
            json!({"runtime": "sh", "cases": [{"code": "true"}, {}]}),
            "case 2 (\"case 2\"): no code",
        ),
        (
            json!({"code": "true", "cases": [{"runtime": "sh"}, {}]}),
            "case 2 (\"case 2\"): no runtime",
        ),
        (
            json!({"runtime": "sh", "code": "true",
                   "cases": [{}, {"name": "x", "runtime": "cobol"}]}),
            "case 2 (\"x\"): unknown runtime \"cobol\"",
        ),
        (
            json!({"runtime": "python", "code": "pass",
                   "cases": [{"code": "pass", "files": {"main.py": "shadow"}}]}),
            "case 1 (\"case 1\"): files must not contain \"main.py\"",
        ),
        (
            json!({"runtime": "sh", "code": "true", "cases": [{"group": ""}]}),
            "case 1 (\"case 1\"): group must be 1 to 200 bytes",
        ),
        (
            json!({"runtime": "sh", "code": "true", "pass_at_k": [1, 1], "cases": [{}]}),
            "pass_at_k gives 1 twice",
        ),
        (
            json!({"runtime": "sh", "code": "true", "pass_at_k": [0], "cases": [{}]}),
            "pass_at_k: 0 is not a k",
        ),
    ];
    for (suite, expected) in refusals {
        let (status, body) = server.post("/v1/batches", &suite).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{suite}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(expected), "{message:?} for {suite}");
    }
    let stored = server.count("SELECT count(*) FROM batches");
    assert_eq!(stored, 0, "nothing half-written");
}

#[tokio::test]
async fn identical_programs_share_one_compile_and_different_ones_build_their_own() {
    let server = Server::start().await;
    let program = |answer: u32| {
        format!(
            "#include <stdio.h>\n#include \"extra.h\"\nint main(void) {{ printf(\"%d\\n\", {answer} + EXTRA); return 0; }}"
        )
    };
    let header = |n: u32| json!({"extra.h": format!("#define EXTRA {n}\n")});
    let suite = json!({
        "runtime": "c",
        "files": header(0),
        "cases": [
            {"name": "a1", "code": program(1), "expected_output": "1"},
            {"name": "a2", "code": program(1), "expected_output": "1"},
            {"name": "a3", "code": program(1), "expected_output": "1"},
            {"name": "b1", "code": program(2), "expected_output": "2"},
            {"name": "b2", "code": program(2), "expected_output": "2"},
            // The same code with another header is another build.
            {"name": "a-other-header", "code": program(1), "files": header(10),
             "expected_output": "11"},
        ],
    });
    let accepted = submit(&server, &suite).await;
    let id = accepted["id"].as_str().unwrap();
    let batch = finished(&server, id).await;
    assert_eq!(batch["passed"], 6, "{batch}");
    let ends = case_ends(&server, id);
    let compiled = ends.iter().filter(|(_, b)| b == "compiled").count();
    let shared = ends.iter().filter(|(_, b)| b == "shared").count();
    assert_eq!((compiled, shared), (3, 3), "{ends:?}");
    builds_are_removed(&server).await;
}

/// A case of `group` that passes (exits 0) or fails.
fn sample(group: &str, index: usize, passes: bool) -> Value {
    let code = if passes {
        "exit 0"
    } else {
        "echo 'AssertionError' >&2; exit 1"
    };
    json!({"name": format!("{group}/{index}"), "group": group, "code": code})
}

fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-9)
}

#[tokio::test]
async fn groups_report_pass_at_k_as_computed_by_hand_and_null_where_k_exceeds_the_samples() {
    let server = Server::start().await;
    // p1: 5 samples, 2 pass. p2: 3 of 3. p3: 1 sample, failed. And one case in no group.
    let mut cases = Vec::new();
    for (i, passes) in [true, false, true, false, false].into_iter().enumerate() {
        cases.push(sample("p1", i, passes));
    }
    for i in 0..3 {
        cases.push(sample("p2", i, true));
    }
    cases.push(sample("p3", 0, false));
    cases.push(json!({"name": "smoke", "code": "exit 0"}));
    let suite = json!({"runtime": "sh", "pass_at_k": [1, 2, 5], "cases": cases});
    let accepted = submit(&server, &suite).await;
    let id = accepted["id"].as_str().unwrap();
    let batch = finished(&server, id).await;

    // pass@k = 1 − C(n−c, k) / C(n, k).
    let (status, page) = server
        .get(&format!("/v1/batches/{id}/groups?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["next_after"], "p2");
    let p1 = &page["groups"][0];
    assert_eq!(
        (&p1["name"], &p1["cases"], &p1["done"], &p1["passed"]),
        (&json!("p1"), &json!(5), &json!(5), &json!(2))
    );
    assert!(close(&p1["pass_at_k"]["1"], 0.4), "{p1}");
    assert!(close(&p1["pass_at_k"]["2"], 1.0 - 3.0 / 10.0), "{p1}");
    assert!(close(&p1["pass_at_k"]["5"], 1.0), "{p1}");
    let p2 = &page["groups"][1];
    assert!(close(&p2["pass_at_k"]["2"], 1.0), "{p2}");
    assert_eq!(p2["pass_at_k"]["5"], Value::Null, "k > n: {p2}");
    let (_, rest) = server
        .get(&format!("/v1/batches/{id}/groups?after=p2"))
        .await;
    assert_eq!(rest["groups"].as_array().map(Vec::len), Some(1), "{rest}");
    assert_eq!(rest["groups"][0]["name"], "p3");
    assert_eq!(rest["next_after"], Value::Null);

    // The mean over groups, undefined for a k some group has fewer samples than.
    let summary = &batch["groups"];
    assert_eq!(
        summary["groups"], 3,
        "the ungrouped case is in none: {batch}"
    );
    assert!(close(&summary["pass_at_k"]["1"], (0.4 + 1.0 + 0.0) / 3.0));
    assert_eq!(summary["pass_at_k"]["2"], Value::Null);

    // The completion event carries the same summary; operators can read the counts in SQL.
    let completed = server.rows(&format!(
        "SELECT data FROM events WHERE batch_id = '{id}' AND type = 'batch.completed'"
    ));
    assert_eq!(completed[0][0].json()["groups"], *summary);
    let counts: Vec<(String, i64, i64)> = server
        .rows(&format!(
            "SELECT case_group, cases, passed FROM group_results WHERE batch_id = '{id}'
             ORDER BY case_group"
        ))
        .iter()
        .map(|r| (r[0].text().to_owned(), r[1].int(), r[2].int()))
        .collect();
    assert_eq!(
        counts,
        [
            ("p1".to_owned(), 5, 2),
            ("p2".to_owned(), 3, 3),
            ("p3".to_owned(), 1, 0)
        ]
    );

    // JUnit names each case's group as its class, and carries the means.
    let xml = report(&server, id).await;
    assert_eq!(xml.matches(r#"classname="p1""#).count(), 5, "{xml}");
    assert_eq!(xml.matches(r#"classname="kiln.sh""#).count(), 1, "{xml}");
    assert!(
        xml.contains(r#"<property name="pass@2" value="undefined"/>"#),
        "{xml}"
    );
    assert_eq!(parse_junit(&xml).root["failures"], "4");
}

#[tokio::test]
async fn a_replayed_submit_matches_case_programs_too() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let suite = json!({"runtime": "sh", "pass_at_k": [1], "cases": [
        {"group": "g", "code": "echo a"},
        {"group": "g", "code": "echo b", "files": {"x": "1"}},
    ]});
    let key = [("idempotency-key", "programs-1")];
    let body = suite.to_string().into_bytes();
    let (status, first) = server.post_raw("/v1/batches", body.clone(), &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = server.post_raw("/v1/batches", body, &key).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["id"], first["id"]);

    for change in [
        ("/cases/1/code", json!("echo c")),
        ("/cases/1/files", json!({"x": "2"})),
        ("/cases/0/group", json!("h")),
        ("/pass_at_k", json!([1, 2])),
    ] {
        let mut other = suite.clone();
        *other.pointer_mut(change.0).unwrap() = change.1.clone();
        let (status, body) = server
            .post_raw("/v1/batches", other.to_string().into_bytes(), &key)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{change:?}: {body}");
    }
}
