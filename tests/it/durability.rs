//! A `202` is a promise: the job survives `kill -9` of the server, reaches exactly one terminal
//! state, and never runs twice at the same time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{Server, assert_valid_history, on_postgres, sh};

#[tokio::test]
async fn every_accepted_job_survives_kill_9_and_ends_exactly_once() {
    let server = Server::start_with(&["--workers", "2"]).await;
    let url = server.url.clone();
    // One job is sure to be mid-run at the kill: the short ones may all have committed their
    // ends, which a PostgreSQL server finishes even after its client died.
    let long = server.submit(sh("sleep 4; echo long")).await;
    server.running(&long).await;
    let accepted = Arc::new(Mutex::new(vec![(long, "long\n".to_owned())]));

    // Clients keep submitting while the server is killed; only 202s count.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (url, accepted) = (url.clone(), Arc::clone(&accepted));
        clients.spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..50 {
                let code = format!("sleep 0.0{}; echo {c}-{i}", i % 10);
                let sent = http
                    .post(format!("{url}/v1/jobs"))
                    .json(&sh(&code))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() == 202 {
                    let body: serde_json::Value = response.json().await.unwrap();
                    let id = body["id"].as_str().unwrap().to_owned();
                    accepted.lock().unwrap().push((id, format!("{c}-{i}\n")));
                }
            }
        });
    }
    // Kill once jobs are queued and running.
    loop {
        let ready = server.get("/readyz").await.1;
        if ready["running"].as_u64() >= Some(1) && accepted.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = server.kill9();
    while clients.join_next().await.is_some() {}
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 40, "{}", accepted.len());

    let server = Server::start_in(dir, &["--workers", "2"]).await;
    let mut retried = 0;
    for (id, expected) in &accepted {
        let job = server.finished(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(&job["stdout"], expected.as_str());
        let events = server.events(id).await;
        assert_valid_history(&events);
        if events.iter().any(|e| e["type"] == "job.retrying") {
            retried += 1;
        }
    }
    assert!(
        retried >= 1,
        "some job was running at the kill and was rescued"
    );

    // Nothing beyond the accepted jobs, and no job twice.
    let (_, list) = server.get("/v1/jobs?limit=1000").await;
    let stored: HashSet<_> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let accepted_ids: HashSet<_> = accepted.iter().map(|(id, _)| id.clone()).collect();
    assert!(accepted_ids.is_subset(&stored));
    if on_postgres() {
        return;
    }
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[tokio::test]
async fn a_job_whose_lease_expires_is_rescued_by_another_server_on_the_same_file() {
    // The first server dies mid-run; the second has another node id, so it must wait for the
    // lease to run out instead of rescuing at once.
    let server = Server::start_with(&["--lease-secs", "2", "--node-id", "first"]).await;
    let id = server.submit(sh("sleep 1; echo finally")).await;
    server.running(&id).await;
    let dir = server.kill9();
    let server = Server::start_in(dir, &["--lease-secs", "2", "--node-id", "second"]).await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    let events = server.events(&id).await;
    assert_valid_history(&events);
    let retry = events
        .iter()
        .find(|e| e["type"] == "job.retrying")
        .expect("a retry event");
    assert!(
        retry["data"]["reason"].as_str().unwrap().contains("lease"),
        "{retry}"
    );
}

#[tokio::test]
async fn a_job_out_of_attempts_ends_as_error_with_the_reason() {
    let server = Server::start().await;
    let id = server
        .submit(serde_json::json!({"runtime": "sh", "code": "sleep 60", "max_attempts": 1}))
        .await;
    server.running(&id).await;
    let dir = server.kill9();
    let server = Server::start_in(dir, &[]).await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "error", "{job}");
    assert_eq!(job["outcome"], "lease_expired");
    assert!(job["error"].as_str().unwrap().contains("stopped"), "{job}");
    assert_valid_history(&server.events(&id).await);
}
