//! Backpressure over the real server: a full queue, too many batches in flight and a token over
//! its rate are each refused with 429, a JSON error and `Retry-After`, with nothing stored; room
//! made by cancelling or running jobs admits submits again.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::auth::{As, create_token};
use crate::util::{Server, sh};

/// The 429's JSON error code and its `Retry-After` in seconds.
async fn refused(response: reqwest::Response) -> (String, u64) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    let body: Value = response.json().await.expect("a JSON error");
    let code = body["error"]["code"].as_str().expect("an error code");
    assert!(body["error"]["message"].is_string(), "{body}");
    (code.to_owned(), retry_after)
}

async fn post(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .json(body)
        .send()
        .await
        .expect("POST")
}

fn count(server: &Server, sql: &str) -> i64 {
    server.count(sql)
}

#[tokio::test]
async fn submits_beyond_the_queue_limit_are_refused_with_429_until_room_is_made() {
    let server = Server::start_with(&["--workers", "0", "--max-queued-jobs", "3"]).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(server.submit(sh("true")).await);
    }
    let (code, retry_after) = refused(post(&server, "/v1/jobs", &sh("true")).await).await;
    assert_eq!(code, "queue_full");
    assert!(retry_after >= 1);
    // A batch whose cases do not all fit is refused whole.
    let suite = json!({"runtime": "sh", "code": "true", "cases": [{}, {}]});
    let (code, _) = refused(post(&server, "/v1/batches", &suite).await).await;
    assert_eq!(code, "queue_full");
    assert_eq!(
        count(&server, "SELECT count(*) FROM jobs"),
        3,
        "nothing stored"
    );
    assert_eq!(count(&server, "SELECT count(*) FROM batches"), 0);

    let (status, _) = server
        .post(&format!("/v1/jobs/{}/cancel", queued[0]), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.submit(sh("true")).await;
    let (code, _) = refused(post(&server, "/v1/jobs", &sh("true")).await).await;
    assert_eq!(code, "queue_full", "full again");
}

#[tokio::test]
async fn the_queued_count_admission_reads_agrees_with_the_queue_through_every_change() {
    let server = Server::start_with(&["--max-queued-jobs", "1000"]).await;
    let ran = server.submit(sh("echo ran")).await;
    let slow = server.submit(sh("sleep 30")).await;
    let suite = json!({"runtime": "sh", "code": "true", "cases": [{}, {}, {}]});
    let (status, batch) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
    server.finished(&ran).await;
    server.running(&slow).await;
    server
        .post(&format!("/v1/jobs/{slow}/cancel"), &json!({}))
        .await;
    let batch_id = batch["id"].as_str().unwrap();
    server.get(&format!("/v1/batches/{batch_id}?wait=30")).await;
    let queued = "SELECT count(*) FROM jobs WHERE status = 'queued'";
    let counted = "SELECT value FROM counters WHERE name = 'queued_jobs'";
    assert_eq!(count(&server, counted), count(&server, queued));
    assert_eq!(
        count(
            &server,
            "SELECT value FROM counters WHERE name = 'batches_in_flight'"
        ),
        0
    );
}

#[tokio::test]
async fn batches_beyond_the_in_flight_limit_are_refused_with_429_until_one_completes() {
    let server = Server::start_with(&["--workers", "0", "--max-batches-in-flight", "1"]).await;
    let suite = json!({"runtime": "sh", "code": "true", "cases": [{"name": "a"}]});
    let (status, first) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (code, _) = refused(post(&server, "/v1/batches", &suite).await).await;
    assert_eq!(code, "queue_full");
    server.submit(sh("true")).await;

    let id = first["id"].as_str().unwrap();
    let (status, _) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, second) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
}

#[tokio::test]
async fn a_token_over_its_rate_is_refused_with_429_and_others_are_not_held_back() {
    let dir = tempfile::TempDir::new().unwrap();
    let acme = create_token(dir.path(), "acme", false);
    let globex = create_token(dir.path(), "globex", false);
    let server = Server::start_in(dir, &["--token-rate", "0.2", "--token-burst", "3"]).await;
    let (acme, globex) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
    );
    for _ in 0..3 {
        assert_eq!(acme.get("/v1/jobs").await.0, StatusCode::OK);
    }
    let response = acme
        .post_with(
            "/v1/jobs",
            &sh("true"),
            ("idempotency-key", "over-the-rate"),
        )
        .await;
    let (code, retry_after) = refused(response).await;
    assert_eq!(code, "rate_limited");
    assert!(
        (1..=5).contains(&retry_after),
        "one request's worth: {retry_after}"
    );
    assert_eq!(count(&server, "SELECT count(*) FROM jobs"), 0);
    assert_eq!(globex.get("/v1/jobs").await.0, StatusCode::OK);
}
