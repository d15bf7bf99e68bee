//! The HTTP API: what is accepted, what is refused and how, and the compatibility endpoints.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::util::{Server, assert_valid_history, sh, skip};

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test]
async fn a_python_job_prints_hello_and_succeeds() {
    let server = Server::start().await;
    let (status, body) = server
        .post(
            "/v1/jobs",
            &json!({"runtime": "python", "code": "print('hello')"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["id"].as_str().unwrap();
    let job = server.finished(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["outcome"], "success");
    assert_eq!(job["stdout"], "hello\n");
    assert_eq!(job["exit_code"], 0);
    assert_eq!(job["attempt"], 1);
    assert!(
        job["wall_ms"].as_u64().is_some() && job["started_at"].is_string(),
        "{job}"
    );
    assert_eq!(
        job["limits"]["wall_ms"], 10_000,
        "defaults are recorded: {job}"
    );
    assert_valid_history(&server.events(id).await);
}

#[tokio::test]
async fn the_accepted_answer_points_at_the_job() {
    let server = Server::start().await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .json(&sh("true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", body["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn a_failing_program_ends_failed_with_its_exit_code_and_stderr() {
    let server = Server::start().await;
    let id = server.submit(sh("echo oops >&2; exit 3")).await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["outcome"], "nonzero_exit");
    assert_eq!(job["exit_code"], 3);
    assert_eq!(job["stderr"], "oops\n");
}

#[tokio::test]
async fn stdin_args_and_files_reach_the_program() {
    let server = Server::start().await;
    let id = server
        .submit(json!({
            "runtime": "bash",
            "code": "read line; echo \"$line $1 $2\"; cat data/in.txt",
            "stdin": "from-stdin\n",
            "args": ["a1", "a2"],
            "files": {"data/in.txt": "from-file"},
        }))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["stdout"], "from-stdin a1 a2\nfrom-file", "{job}");
}

#[tokio::test]
async fn submitting_without_code_is_rejected_with_422() {
    let server = Server::start().await;
    let (status, body) = server.post("/v1/jobs", &json!({"runtime": "python"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&body), "invalid_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("code"),
        "{body}"
    );
    let (status, _) = server
        .post("/v1/jobs", &json!({"runtime": "sh", "code": "  "}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn each_kind_of_bad_submission_gets_its_own_status_and_nothing_is_stored() {
    let server = Server::start_with(&["--max-wall-ms", "60000"]).await;
    let big_code = "x".repeat((1 << 20) + 1);
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (b"".to_vec(), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            vec![b'"', 0xff, 0xfe, b'"'],
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            format!(
                "{{\"runtime\": {}1{}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!([1, 2]).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "cobol", "code": "x"})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": 5}).to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "colour": 1})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": big_code})
                .to_string()
                .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            json!({"runtime": "sh", "code": "x", "limits": {"wall_ms": 60001}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "limits": {"memory_mb": 0}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "limits": {"cpu_ms": -1}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "limits": {"wall_ms": 1e300}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "max_attempts": 0})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "files": {"../escape": "x"}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "files": {"/etc/passwd": "x"}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x", "files": {"main.sh": "x"}})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            json!({"runtime": "sh", "code": "x\u{0}y"})
                .to_string()
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    for (body, expected, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (status, answer) = server.post_raw("/v1/jobs", body, &[]).await;
        assert_eq!(status, expected, "{shown} → {answer}");
        assert_eq!(error_code(&answer), code, "{shown} → {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let over_body_limit = vec![b' '; (32 << 20) + 1];
    let (status, answer) = server.post_raw("/v1/jobs", over_body_limit, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(error_code(&answer), "too_large");

    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing half-written");
}

// Each of these once passed validation, then failed every attempt to set its run up.
#[tokio::test]
async fn files_and_args_the_kernel_would_refuse_at_the_run_are_refused_at_submit() {
    let server = Server::start().await;
    let with = |extra: Value| {
        let mut job = json!({"runtime": "sh", "code": "true"});
        for (key, value) in extra.as_object().expect("fields") {
            job[key] = value.clone();
        }
        job
    };
    let cases = [
        (
            json!({"files": {"a": "", "a/b": ""}}),
            "cannot both be given",
        ),
        (
            json!({"files": {"main.sh/x": ""}}),
            "which the runtime writes itself",
        ),
        (
            json!({"files": {"data/in": "", "d\u{430}ta": ""}}),
            "looks like",
        ),
        (json!({"files": {"n".repeat(256): ""}}), "1 to 255 bytes"),
        (
            json!({"args": ["x".repeat(128 << 10)]}),
            "args[0] is 131072 bytes",
        ),
        (
            json!({"args": vec!["y".repeat(1000); 100]}),
            "args take 100900 bytes",
        ),
    ];
    for (extra, why) in cases {
        let (status, body) = server.post("/v1/jobs", &with(extra.clone())).await;
        let shown: String = extra.to_string().chars().take(80).collect();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{shown}: {body}");
        assert_eq!(error_code(&body), "invalid_request", "{shown}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{shown}: {message}");
    }
    let twice = br#"{"runtime": "sh", "code": "true", "files": {"a": "1", "a": "2"}}"#;
    let (status, body) = server.post_raw("/v1/jobs", twice.to_vec(), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid_request");
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing stored");

    // What is close to those but fine runs, and its args reach the program whole.
    let fine = with(json!({
        "code": "cat a/b; printf ' %s' \"${#1}\" \"$#\"",
        "files": {"a/b": "b", "ab": ""},
        "args": ["x".repeat(60 << 10), "second"],
    }));
    let id = server.submit(fine).await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "b 61440 2");
}

#[tokio::test]
async fn unknown_ids_are_404_and_malformed_ids_are_400() {
    let server = Server::start().await;
    let missing = "0190f2a4-0000-7000-8000-000000000000";
    for path in [
        format!("/v1/jobs/{missing}"),
        format!("/v1/jobs/{missing}/events"),
        format!("/eval-status/{missing}"),
    ] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&body), "job_not_found");
    }
    let (status, body) = server
        .post(&format!("/v1/jobs/{missing}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "job_not_found");
    let (status, body) = server.get("/v1/jobs/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_id");
    let (status, body) = server.get("/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = server.get("/v1/jobs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "invalid_query");
    let (status, body) = server.get(&format!("/v1/jobs/{missing}?wait=-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_retried_submit_with_the_same_idempotency_key_returns_the_same_job() {
    let server = Server::start().await;
    let body = sh("echo once").to_string().into_bytes();
    let key = [("idempotency-key", "order-42")];
    let (first, a) = server.post_raw("/v1/jobs", body.clone(), &key).await;
    let (second, b) = server.post_raw("/v1/jobs", body, &key).await;
    assert_eq!(
        (first, second),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_eq!(a["id"], b["id"], "{a} {b}");
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);

    let other = sh("echo twice").to_string().into_bytes();
    let (status, conflict) = server.post_raw("/v1/jobs", other, &key).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&conflict), "idempotency_key_reused");
}

#[tokio::test]
async fn the_old_synchronous_eval_is_gone_and_names_the_async_endpoints() {
    let server = Server::start().await;
    let (status, body) = server.post("/eval", &json!({"code": "print(1)"})).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(error_code(&body), "gone");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/eval-async") && message.contains("/v1/jobs"),
        "{message}"
    );
}

#[tokio::test]
async fn eval_async_and_eval_status_are_aliases_of_the_v1_api() {
    let server = Server::start().await;
    let (status, body) = server
        .post("/eval-async", &json!({"code": "print(6 * 7)"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["eval_id"].as_str().unwrap().to_owned();
    let (status, result) = server.get(&format!("/eval-status/{id}?wait=30")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["eval_id"], id.as_str());
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["output"], "42\n");
    assert_eq!(result["error"], Value::Null);

    let (_, failed) = server
        .post(
            "/eval-async",
            &json!({"code": "echo bad >&2; exit 1", "language": "bash"}),
        )
        .await;
    let failed_id = failed["eval_id"].as_str().unwrap();
    let (_, result) = server
        .get(&format!("/eval-status/{failed_id}?wait=30"))
        .await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"], "bad\n");

    // The same job through the v1 API, and the old global feed.
    let (status, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!((status, &job["stdout"]), (StatusCode::OK, &json!("42\n")));
    let (status, feed) = server.get("/events").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["job_id"] == id.as_str())
    );
}

#[tokio::test]
async fn the_global_feed_pages_through_every_event_by_cursor() {
    let server = Server::start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(server.submit(sh("true")).await);
    }
    for id in &ids {
        server.finished(id).await;
    }
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (status, page) = server
            .get(&format!("/v1/events?after={after}&limit=4"))
            .await;
        assert_eq!(status, StatusCode::OK);
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            assert_eq!(page["next_after"], after);
            break;
        }
        after = page["next_after"].as_i64().unwrap();
        seen.extend(events);
    }
    assert_eq!(
        seen.len(),
        15,
        "queued, started, succeeded for each of 5 jobs"
    );
    let cursors: Vec<i64> = seen.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {cursors:?}"
    );
}

#[tokio::test]
async fn jobs_can_be_listed_by_status_in_pages() {
    let server = Server::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(server.submit(sh(&format!("exit {}", i % 2))).await);
    }
    for id in &ids {
        server.finished(id).await;
    }
    let (_, page) = server.get("/v1/jobs?status=succeeded&limit=2").await;
    let first: Vec<_> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(first, vec![json!(ids[0]), json!(ids[2])]);
    let next = page["next_after"].as_str().unwrap();
    let (_, page) = server
        .get(&format!("/v1/jobs?status=succeeded&limit=2&after={next}"))
        .await;
    let rest: Vec<_> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(rest, vec![json!(ids[4])]);
    assert_eq!(page["next_after"], Value::Null);
    let (status, body) = server.get("/v1/jobs?status=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn runtimes_health_and_readiness_are_reported() {
    let server = Server::start().await;
    let (status, body) = server.get("/v1/runtimes").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for name in ["python", "bash", "sh"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let python = body["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "python")
        .unwrap();
    assert!(
        python["program"].as_str().unwrap().starts_with("/usr/"),
        "a real interpreter, not a shim: {python}"
    );
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn a_job_with_a_quota_of_half_a_core_gets_about_half_of_one() {
    let server = Server::start().await;
    let (_, ready) = server.get("/readyz").await;
    if ready["sandbox"]["cgroups"]["cpu"] != true {
        return skip(
            "a_job_with_a_quota_of_half_a_core_gets_about_half_of_one",
            "this host has no CPU controller for kiln",
        );
    }
    let busy = json!({
        "runtime": "sh", "code": "while :; do :; done",
        "limits": {"wall_ms": 2000, "cpu_percent": 50},
    });
    let id = server.submit(busy).await;
    let job = server.finished(&id).await;
    assert_eq!(job["outcome"], "wall_time_limit", "{job}");
    assert_eq!(job["limits"]["cpu_percent"], 50, "{job}");
    let (cpu, wall) = (job["cpu_ms"].as_f64(), job["wall_ms"].as_f64());
    let held = cpu
        .zip(wall)
        .map(|(cpu, wall)| cpu / wall)
        .expect("measured");
    eprintln!("a busy loop got {held:.2} of a core with a quota of half of one");
    // Generous below: other tests share the host's cores, and a run without a quota can get less
    // than half of one while they run.
    assert!((0.2..=0.65).contains(&held), "{held:.2} of a core: {job}");
}

fn ids_of(page: &Value, list: &str) -> Vec<String> {
    page[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {page}"))
        .iter()
        .map(|row| row["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn jobs_list_newest_first_by_runtime_and_batch_paging_before_the_last_id() {
    let server = Server::start().await;
    let mut ids = Vec::new();
    for runtime in ["sh", "bash", "sh"] {
        ids.push(
            server
                .submit(json!({"runtime": runtime, "code": "true"}))
                .await,
        );
    }
    let (status, batch) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "bash", "code": "true", "cases": [{}, {}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
    let batch_id = batch["id"].as_str().unwrap();
    let cases: Vec<String> = batch["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["job_id"].as_str().unwrap().to_owned())
        .collect();

    let (_, page) = server.get("/v1/jobs?order=newest&runtime=sh&limit=1").await;
    assert_eq!(ids_of(&page, "jobs"), [ids[2].clone()]);
    let next = page["next_before"]
        .as_str()
        .expect("a cursor on a full page");
    let (_, page) = server
        .get(&format!("/v1/jobs?runtime=sh&limit=1&before={next}"))
        .await;
    assert_eq!(
        ids_of(&page, "jobs"),
        [ids[0].clone()],
        "before= pages newest first"
    );
    let (_, page) = server.get(&format!("/v1/jobs?batch={batch_id}")).await;
    assert_eq!(
        ids_of(&page, "jobs"),
        cases,
        "a batch's cases, oldest first by default"
    );
    assert_eq!(page["jobs"][0]["batch_id"], batch_id);
    assert_eq!(page["next_after"], Value::Null);
    let (_, page) = server.get("/v1/jobs?order=newest").await;
    let all = ids_of(&page, "jobs");
    assert_eq!(all.len(), 5);
    let python = server
        .submit(json!({"runtime": "python3", "code": "pass"}))
        .await;
    let (_, page) = server.get("/v1/jobs?runtime=python3").await;
    assert_eq!(
        ids_of(&page, "jobs"),
        [python],
        "an alias finds its runtime's jobs"
    );
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");

    for bad in [
        "/v1/jobs?order=sideways",
        "/v1/jobs?order=newest&after=01900000-0000-7000-8000-000000000000",
        "/v1/jobs?before=x",
        "/v1/jobs?batch=nope",
    ] {
        let (status, body) = server.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_query", "{bad}");
    }
}

#[tokio::test]
async fn batches_are_listed_newest_first_in_pages() {
    let server = Server::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, batch) = server
            .post(
                "/v1/batches",
                &json!({"runtime": "sh", "code": "true", "cases": [{}]}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
        ids.push(batch["id"].as_str().unwrap().to_owned());
    }
    let (status, page) = server.get("/v1/batches?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids_of(&page, "batches"), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(page["batches"][0]["progress"]["total"], 1);
    let next = page["next_before"].as_str().expect("cursor");
    let (_, page) = server
        .get(&format!("/v1/batches?limit=2&before={next}"))
        .await;
    assert_eq!(ids_of(&page, "batches"), [ids[0].clone()]);
    assert_eq!(page["next_before"], Value::Null);
    let (_, page) = server.get("/v1/batches?order=oldest").await;
    assert_eq!(ids_of(&page, "batches"), ids);
}

#[tokio::test]
async fn the_feed_pages_back_from_its_newest_event() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    let (_, oldest) = server.get("/v1/events?limit=1000").await;
    let all: Vec<i64> = oldest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(all.len() >= 3, "{oldest}");
    let (status, newest) = server.get("/v1/events?order=newest&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{newest}");
    let ids: Vec<i64> = newest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [all[all.len() - 1], all[all.len() - 2]]);
    let before = newest["next_before"].as_i64().expect("a cursor");
    let (_, next) = server
        .get(&format!("/v1/events?before={before}&limit=1"))
        .await;
    assert_eq!(next["events"][0]["id"], all[all.len() - 3]);
    let (status, body) = server.get("/v1/events?after=1&before=9").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn eval_async_takes_language_not_runtime_as_docs_api_md_says() {
    let server = Server::start().await;
    for refused in [
        json!({"code": "true", "runtime": "sh"}),
        json!({"code": "true", "language": "sh", "limits": {"wall_ms": 100}}),
        json!({"code": "true", "language": "sh", "args": ["x"]}),
    ] {
        let (status, body) = server.post("/eval-async", &refused).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused}: {body}"
        );
    }
    let (status, body) = server
        .post(
            "/eval-async",
            &json!({"code": "cat", "language": "sh", "stdin": "in"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["eval_id"].as_str().unwrap();
    let (_, result) = server.get(&format!("/eval-status/{id}?wait=30")).await;
    assert_eq!(result["output"], "in", "{result}");
}

#[tokio::test]
async fn a_jobs_input_reads_back_as_a_submission_that_runs_it_again() {
    let server = Server::start().await;
    let job = json!({
        "runtime": "sh",
        "code": "cat data.bin | od -An -tx1 | tr -d ' \\n'; echo \" $1\"; cat",
        "stdin": {"base64": "/wA="},
        "args": ["first"],
        "files": {"data.bin": {"base64": "AP8B"}, "note.txt": "plain"},
        "limits": {"wall_ms": 5000},
        "priority": 3,
    });
    let id = server.submit(job).await;
    let first = server.finished(&id).await;
    let (status, input) = server.get(&format!("/v1/jobs/{id}/input")).await;
    assert_eq!(status, StatusCode::OK, "{input}");
    assert_eq!(
        input["code"],
        "cat data.bin | od -An -tx1 | tr -d ' \\n'; echo \" $1\"; cat"
    );
    assert_eq!(
        input["stdin"],
        json!({"base64": "/wA="}),
        "bytes come back as they went"
    );
    assert_eq!(input["args"], json!(["first"]));
    assert_eq!(
        input["files"],
        json!({"data.bin": {"base64": "AP8B"}, "note.txt": "plain"}),
        "bytes that are not UTF-8 come back in base64, text as text"
    );
    assert_eq!(input["limits"]["wall_ms"], 5000);
    assert_eq!(input["limits"], first["limits"], "the limits it ran under");
    assert_eq!(input["priority"], 3);
    assert!(input.get("expected_output").is_none(), "{input}");

    let again = server.submit(input).await;
    let second = server.finished(&again).await;
    assert_eq!(second["stdout"], first["stdout"], "{second}");
    assert_eq!(
        first["stdout_encoding"], "base64",
        "the stdin's 0xff is in the output"
    );

    let (_, suite) = server
        .post(
            "/v1/batches",
            &json!({
                "runtime": "sh",
                "code": "cat shared.txt own.txt",
                "files": {"shared.txt": "s"},
                "cases": [{"name": "c", "files": {"own.txt": "o"}, "expected_output": "so"}],
            }),
        )
        .await;
    let case = suite["cases"][0]["job_id"].as_str().expect("case id");
    let (_, input) = server.get(&format!("/v1/jobs/{case}/input")).await;
    assert_eq!(
        input["code"], "cat shared.txt own.txt",
        "the suite's code: {input}"
    );
    assert_eq!(input["files"], json!({"own.txt": "o", "shared.txt": "s"}));
    assert_eq!(input["expected_output"], "so");

    let (status, body) = server
        .get(&format!("/v1/jobs/{}/input", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
