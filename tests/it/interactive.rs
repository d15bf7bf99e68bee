//! Interactive stdin through kiln's own API: a job submitted with `interactive: true` keeps its
//! stdin open, `POST /v1/jobs/{id}/stdin` appends bytes to it while it runs (or before, while it
//! is queued), and `?close=true` gives the program EOF. The job is otherwise an ordinary one.

use reqwest::StatusCode;
use serde_json::json;

use crate::util::Server;

#[tokio::test]
async fn bytes_written_while_an_interactive_job_runs_reach_its_stdin_and_close_gives_eof() {
    let server = Server::start().await;
    let id = server
        .submit(json!({
            "runtime": "python",
            "code": "import sys\nprint(input().upper(), flush=True)\nprint(sys.stdin.read()[::-1])",
            "stdin": "given ",
            "interactive": true,
        }))
        .await;
    let (status, written) = server
        .post_raw(&format!("/v1/jobs/{id}/stdin"), b"first\n".to_vec(), &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written["written"], 6);
    assert_eq!(written["closed"], false);
    // The first line is answered while the job still waits for the rest.
    let mut answered = false;
    for _ in 0..200 {
        let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
        if job["status"] == "running" {
            let mut watch = reqwest::Client::new()
                .get(format!("{}/v1/jobs/{id}/events", server.url))
                .header("accept", "text/event-stream")
                .send()
                .await
                .expect("stream");
            let mut seen = String::new();
            while let Ok(Some(chunk)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), watch.chunk())
                    .await
                    .expect("output within 10 s")
            {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains("GIVEN FIRST") {
                    answered = true;
                    break;
                }
            }
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        answered,
        "the running program answered the line written to it"
    );
    let (status, _) = server
        .post_raw(
            &format!("/v1/jobs/{id}/stdin?close=true"),
            b"olleh".to_vec(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "GIVEN FIRST\nhello\n");
}

#[tokio::test]
async fn stdin_is_refused_to_a_job_that_is_not_interactive_has_ended_or_was_closed() {
    let server = Server::start().await;
    let plain = server
        .submit(json!({"runtime": "sh", "code": "sleep 1"}))
        .await;
    let (status, refused) = server
        .post_raw(&format!("/v1/jobs/{plain}/stdin"), b"x".to_vec(), &[])
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"]["code"], "not_interactive");
    let (status, refused) = server
        .post_raw(
            &format!("/v1/jobs/{plain}/stdin"),
            vec![b'x'; (1 << 20) + 1],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert_eq!(refused["error"]["code"], "too_large");

    let id = server
        .submit(json!({"runtime": "sh", "code": "cat", "interactive": true}))
        .await;
    let (status, _) = server
        .post_raw(
            &format!("/v1/jobs/{id}/stdin?close=true"),
            b"bye".to_vec(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = server
        .post_raw(&format!("/v1/jobs/{id}/stdin"), b"more".to_vec(), &[])
        .await;
    // Closed, or by now ended: either way nothing more goes in.
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let code = refused["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        code == "stdin_closed" || code == "already_finished",
        "{refused}"
    );
    let job = server.finished(&id).await;
    assert_eq!(job["stdout"], "bye");
    let (status, refused) = server
        .post_raw(&format!("/v1/jobs/{id}/stdin"), b"late".to_vec(), &[])
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"]["code"], "already_finished");

    let (status, refused) = server
        .post_raw(
            "/v1/jobs/00000000-0000-7000-8000-000000000000/stdin",
            b"x".to_vec(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
}

#[tokio::test]
async fn another_tenants_job_has_no_stdin_to_write_to() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let acme = crate::auth::create_token(dir.path(), "acme", false);
    let globex = crate::auth::create_token(dir.path(), "globex", false);
    let server = Server::start_in(dir, &[]).await;
    let http = reqwest::Client::new();
    let submitted: serde_json::Value = http
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth(&acme)
        .json(&json!({"runtime": "sh", "code": "cat", "interactive": true}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let id = submitted["id"].as_str().expect("an id");
    let write = |token: &str, body: &'static [u8]| {
        http.post(format!("{}/v1/jobs/{id}/stdin?close=true", server.url))
            .bearer_auth(token)
            .body(body)
            .send()
    };
    let refused = write(&globex, b"intruder").await.expect("POST");
    assert_eq!(
        refused.status(),
        StatusCode::NOT_FOUND,
        "as if it did not exist"
    );
    let accepted = write(&acme, b"owner").await.expect("POST");
    assert_eq!(accepted.status(), StatusCode::OK);
    let job: serde_json::Value = http
        .get(format!("{}/v1/jobs/{id}?wait=30", server.url))
        .bearer_auth(&acme)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(job["stdout"], "owner");
}
