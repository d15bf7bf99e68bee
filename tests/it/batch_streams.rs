//! A batch's event stream: its own events and its cases', as JSON pages or live over Server-Sent
//! Events until `batch.completed`; and the client commands that follow it (`kiln batch --wait`,
//! `kiln watch BATCH_ID`).

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::streams::{Item, Sse, events_of, ids};
use crate::util::{Server, sh};

/// Echoes its first word; `slow` first sleeps 2 s, long enough to watch the batch while it runs.
const ECHO: &str = r#"read w; [ "$w" = slow ] && sleep 2; echo "$w""#;

/// Submits a suite of ECHO over these `(name, stdin, expected)` cases; returns the batch id and
/// the case job ids.
async fn submit(server: &Server, cases: &[(&str, &str, &str)]) -> (String, Vec<String>) {
    let cases: Vec<Value> = cases
        .iter()
        .map(|(name, stdin, expected)| {
            json!({"name": name, "stdin": stdin, "expected_output": expected})
        })
        .collect();
    let (status, body) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "sh", "code": ECHO, "cases": cases}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let jobs = body["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["job_id"].as_str().expect("job id").to_owned())
        .collect();
    (body["id"].as_str().expect("id").to_owned(), jobs)
}

/// The batch's event ids as operators would read them.
fn stored_ids(server: &Server, batch: &str) -> Vec<i64> {
    server
        .rows(&format!(
            "SELECT id FROM events WHERE batch_id = '{batch}' ORDER BY id"
        ))
        .iter()
        .map(|row| row[0].int())
        .collect()
}

async fn batch_done(server: &Server, id: &str) -> bool {
    let (status, batch) = server.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    batch["done"] == true
}

fn is_end_of(job: &str) -> impl Fn(&Item) -> bool + '_ {
    move |item| {
        item.id().is_some()
            && item.json()["job_id"] == job
            && matches!(item.event(), Some("job.succeeded" | "job.failed"))
    }
}

#[tokio::test]
async fn a_batch_stream_sends_the_history_then_live_events_of_the_batch_only_and_ends_after_batch_completed()
 {
    let server = Server::start().await;
    let (id, jobs) = submit(
        &server,
        &[
            ("quick", "quick", "quick"),
            ("slow", "slow", "slow"),
            ("wrong", "wrong", "right"),
        ],
    )
    .await;
    server.finished(&jobs[0]).await;

    let mut stream = Sse::open(&server, &format!("/v1/batches/{id}/events"), &[]).await;
    let history = stream.until(is_end_of(&jobs[0])).await;
    assert_eq!(
        &events_of(&history)[..4],
        ["job.queued", "job.queued", "job.queued", "batch.queued"],
        "{history:?}"
    );
    assert!(
        !batch_done(&server, &id).await,
        "the slow case still runs: the rest is yet to happen"
    );
    // Committed while the stream is live, and not the batch's.
    let other = server.submit(sh("true")).await;
    server.finished(&other).await;

    let live = stream.rest().await;
    let end = live.last().expect("the stream's last message");
    assert_eq!(end.event(), Some("batch.completed"), "{live:?}");
    assert_eq!(end.json()["data"]["passed"], 2);
    assert_eq!(end.json()["data"]["failed"], 1);
    assert!(
        live.iter()
            .any(|m| m.json()["job_id"] == jobs[1] && m.event() == Some("job.succeeded")),
        "the slow case's end came live: {live:?}"
    );

    let sent: Vec<Item> = history.into_iter().chain(live).collect();
    assert_eq!(
        ids(&sent),
        stored_ids(&server, &id),
        "every event of the batch once, in order, and nothing else"
    );
    for message in &sent {
        assert_eq!(message.json()["batch_id"], id.as_str(), "{message:?}");
        assert_ne!(message.json()["job_id"], other.as_str());
    }
}

#[tokio::test]
async fn resuming_a_batch_stream_loses_and_repeats_nothing_and_after_the_end_answers_204() {
    let server = Server::start().await;
    let (id, _) = submit(
        &server,
        &[("a", "a", "a"), ("slow", "slow", "slow"), ("b", "b", "b")],
    )
    .await;
    let path = format!("/v1/batches/{id}/events");

    let mut first = Sse::open(&server, &path, &[]).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(first.next().await.expect("a message"));
    }
    drop(first);

    // Resumed while the batch still runs: history up to now, then live, then the end.
    let last = ids(&seen).last().copied().expect("ids").to_string();
    let mut resumed = Sse::open(&server, &path, &[("last-event-id", &last)]).await;
    seen.extend(resumed.rest().await);
    assert_eq!(
        seen.last().and_then(Item::event),
        Some("batch.completed"),
        "{seen:?}"
    );
    let stored = stored_ids(&server, &id);
    assert_eq!(ids(&seen), stored, "no gap, no duplicate");

    let end = stored.last().copied().expect("events").to_string();
    let after_end = Sse::request(&server, &path, &[("last-event-id", &end)]).await;
    assert_eq!(
        after_end.status(),
        StatusCode::NO_CONTENT,
        "nothing left: an EventSource stops reconnecting"
    );
    let by_query = Sse::request(&server, &format!("{path}?after={end}"), &[]).await;
    assert_eq!(by_query.status(), StatusCode::NO_CONTENT);

    // `?after=` is the same resume point as the header.
    let mut middle = Sse::open(&server, &format!("{path}?after={}", stored[2]), &[]).await;
    assert_eq!(middle.next().await.and_then(|m| m.id()), Some(stored[3]));
}

#[tokio::test]
async fn a_batch_history_longer_than_a_page_streams_whole_and_pages_as_json() {
    let server = Server::start().await;
    // Cancelled at once: 520 cases make over a thousand events without running any.
    let cases: Vec<Value> = (0..520)
        .map(|i| json!({"name": format!("case {i}")}))
        .collect();
    let (status, body) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "sh", "code": "sleep 30", "cases": cases}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let (status, body) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = stored_ids(&server, &id);
    assert!(
        stored.len() > 1000,
        "more than one page of history: {}",
        stored.len()
    );

    let items = Sse::open(&server, &format!("/v1/batches/{id}/events"), &[])
        .await
        .rest()
        .await;
    assert_eq!(ids(&items), stored);
    assert_eq!(events_of(&items).last(), Some(&"batch.completed"));

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = server
            .get(&format!("/v1/batches/{id}/events?after={after}&limit=300"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events = page["events"].as_array().expect("events");
        if events.is_empty() {
            assert_eq!(page["next_after"], after, "an empty page keeps the cursor");
            break;
        }
        assert!(events.len() <= 300);
        paged.extend(events.iter().map(|e| e["id"].as_i64().expect("id")));
        after = page["next_after"].as_i64().expect("next_after");
    }
    assert_eq!(paged, stored, "the JSON pages hold the same events");
}

/// Polls the JSON events at `path` until one of type `kind` is stored; returns them all.
async fn events_until(server: &Server, path: &str, kind: &str) -> Vec<Value> {
    for _ in 0..200 {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let events = body["events"].as_array().expect("events").clone();
        if events.iter().any(|e| e["type"] == kind) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {kind} event at {path} in 20 s");
}

#[tokio::test]
async fn webhook_attempts_after_the_end_neither_extend_nor_reopen_a_finished_stream() {
    let server = Server::start().await;
    // Nothing listens there: every call fails and is recorded after the end it reports.
    let callback = "http://127.0.0.1:9/hook";
    let (status, body) = server
        .post(
            "/v1/batches",
            &json!({"runtime": "sh", "code": ECHO, "callback_url": callback,
                    "cases": [{"stdin": "a", "expected_output": "a"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch = body["id"].as_str().expect("id").to_owned();
    let mut job = sh("true");
    job["callback_url"] = json!(callback);
    let job = server.submit(job).await;

    for (path, end) in [
        (format!("/v1/batches/{batch}/events"), "batch.completed"),
        (format!("/v1/jobs/{job}/events"), "job.succeeded"),
    ] {
        let stored = events_until(&server, &path, "webhook.failed").await;
        let end_id = stored
            .iter()
            .find(|e| e["type"] == end)
            .and_then(|e| e["id"].as_i64())
            .expect("the end is stored");
        assert!(
            stored.last().and_then(|e| e["id"].as_i64()) > Some(end_id),
            "an attempt follows the end"
        );

        let items = Sse::open(&server, &path, &[]).await.rest().await;
        assert_eq!(events_of(&items).last(), Some(&end), "{path}: {items:?}");
        let resumed = Sse::request(&server, &path, &[("last-event-id", &end_id.to_string())]).await;
        assert_eq!(resumed.status(), StatusCode::NO_CONTENT, "{path}");
    }
}

#[tokio::test]
async fn events_of_an_unknown_batch_are_404_json_and_a_bad_id_is_400() {
    let server = Server::start().await;
    let unknown = "/v1/batches/01900000-0000-7000-8000-000000000000/events";
    let streamed = Sse::request(&server, unknown, &[]).await;
    assert_eq!(streamed.status(), StatusCode::NOT_FOUND);
    let body: Value = streamed.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "batch_not_found");
    let (status, body) = server.get(unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "batch_not_found");

    let (status, body) = server.get("/v1/batches/nope/events").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_id");
    let (id, _) = submit(&server, &[("a", "a", "a")]).await;
    let (status, body) = server
        .get(&format!("/v1/batches/{id}/events?limit=0"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

fn kiln(server: &Server, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .args(args)
        .env("KILN_URL", &server.url)
        .current_dir(server.dir.path())
        .kill_on_drop(true);
    command
}

fn write_suite(server: &Server, name: &str, cases: Value) {
    let suite = json!({"runtime": "sh", "code": ECHO, "cases": cases});
    std::fs::write(server.dir.path().join(name), suite.to_string()).expect("write the suite");
}

#[tokio::test]
async fn kiln_batch_wait_follows_the_stream_and_polls_only_when_the_server_refuses_streams() {
    const REFUSED: &str = "following the batch by polling instead";
    for (flags, streams) in [(&[][..], true), (&["--sse-max-streams", "0"][..], false)] {
        let server = Server::start_with(flags).await;
        write_suite(
            &server,
            "good.json",
            json!([{"name": "one", "stdin": "one", "expected_output": "one"},
                   {"name": "slow", "stdin": "slow", "expected_output": "slow"}]),
        );
        write_suite(
            &server,
            "bad.json",
            json!([{"name": "one", "stdin": "one", "expected_output": "one"},
                   {"name": "off", "stdin": "slow", "expected_output": "fast"}]),
        );

        let good = kiln(&server, &["batch", "good.json", "--wait"])
            .output()
            .await
            .expect("run kiln batch");
        let stdout = String::from_utf8_lossy(&good.stdout);
        let stderr = String::from_utf8_lossy(&good.stderr);
        assert_eq!(good.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(stdout.contains("2 of 2 passed"), "{stdout}");
        assert_eq!(stderr.contains(REFUSED), !streams, "{flags:?}: {stderr}");

        let bad = kiln(&server, &["batch", "bad.json", "--wait"])
            .output()
            .await
            .expect("run kiln batch");
        let stdout = String::from_utf8_lossy(&bad.stdout);
        assert_eq!(bad.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("1 of 2 passed") && stdout.contains("off   wrong_answer"),
            "{stdout}"
        );
    }
}

#[tokio::test]
async fn kiln_watch_follows_a_batch_printing_each_verdict_as_it_ends_then_the_summary() {
    let server = Server::start().await;
    let (id, _) = submit(
        &server,
        &[("quick", "quick", "quick"), ("slow one", "slow", "fast")],
    )
    .await;
    let mut watch = kiln(&server, &["watch", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a verdict within 20 s")
        .expect("read stdout");
    assert_eq!(first.as_deref(), Some("passed          quick"));
    assert!(
        !batch_done(&server, &id).await,
        "the verdict came while the batch still ran"
    );

    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.expect("read stdout") {
        rest.push(line);
    }
    let status = watch.wait().await.expect("kiln watch exits");
    assert_eq!(status.code(), Some(1), "a case failed: {rest:?}");
    assert_eq!(rest[0], "wrong_answer    slow one");
    assert_eq!(rest[1], format!("batch {id}: 1 of 2 passed, 1 failed"));
    assert!(
        rest.iter()
            .any(|l| l.starts_with("slow one") && l.contains("expected \"fast\", got \"slow\"")),
        "the failing case with its detail: {rest:?}"
    );

    let done = kiln(&server, &["watch", &id])
        .output()
        .await
        .expect("run kiln watch");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert_eq!(done.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("passed          quick\nwrong_answer    slow one\n"),
        "a batch that already ended replays its verdicts: {stdout}"
    );

    let unknown = kiln(&server, &["watch", "01900000-0000-7000-8000-000000000000"])
        .output()
        .await
        .expect("run kiln watch");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no job or batch"),
        "{unknown:?}"
    );
}
