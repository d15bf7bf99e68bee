//! Live streams: the event endpoints as Server-Sent Events, a running job's output and progress.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Server, assert_valid_history, sh};

/// One thing read from an event stream.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Message {
        id: Option<i64>,
        event: String,
        data: String,
    },
    Comment(String),
}

impl Item {
    pub(crate) fn event(&self) -> Option<&str> {
        match self {
            Item::Message { event, .. } => Some(event),
            Item::Comment(_) => None,
        }
    }

    pub(crate) fn id(&self) -> Option<i64> {
        match self {
            Item::Message { id, .. } => *id,
            Item::Comment(_) => None,
        }
    }

    pub(crate) fn json(&self) -> Value {
        match self {
            Item::Message { data, .. } => serde_json::from_str(data).expect("JSON data"),
            Item::Comment(_) => Value::Null,
        }
    }
}

/// A client of one event stream, parsing messages as they arrive (also used by `batch_streams`).
pub(crate) struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    pub(crate) async fn open(server: &Server, path: &str, headers: &[(&str, &str)]) -> Sse {
        let response = Sse::request(server, path, headers).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path}"
        );
        Sse {
            response,
            buffer: String::new(),
        }
    }

    pub(crate) async fn request(
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(format!("{}{path}", server.url))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("GET stream")
    }

    /// The next message or comment; `None` once the server ended the stream.
    pub(crate) async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("the stream went silent for 20 s")
                .expect("stream read");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8")),
                None => {
                    assert!(
                        self.buffer.is_empty(),
                        "a partial message: {:?}",
                        self.buffer
                    );
                    return None;
                }
            }
        }
    }

    /// Messages (not comments) until the stream ends.
    pub(crate) async fn rest(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            if item.event().is_some() {
                items.push(item);
            }
        }
        items
    }

    /// Messages until (and including) the first one `stop` accepts.
    pub(crate) async fn until(&mut self, stop: impl Fn(&Item) -> bool) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            if item.event().is_none() {
                continue;
            }
            let done = stop(&item);
            items.push(item);
            if done {
                return items;
            }
        }
        panic!("the stream ended before the awaited message: {items:?}");
    }
}

fn parse(block: &str) -> Item {
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    for line in block.lines().filter(|line| !line.is_empty()) {
        if let Some(comment) = line.strip_prefix(':') {
            return Item::Comment(comment.trim().to_owned());
        }
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => id = Some(value.parse().expect("numeric id")),
            "event" => event = value.to_owned(),
            "data" => data.push_str(value),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    Item::Message { id, event, data }
}

pub(crate) fn ids(items: &[Item]) -> Vec<i64> {
    items.iter().filter_map(Item::id).collect()
}

pub(crate) fn events_of(items: &[Item]) -> Vec<&str> {
    items.iter().filter_map(Item::event).collect()
}

fn stored_ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn a_job_stream_sends_the_history_then_live_events_and_ends_after_the_terminal_one() {
    let server = Server::start().await;
    let id = server.submit(sh("sleep 1; echo done")).await;
    server.running(&id).await;

    let mut stream = Sse::open(&server, &format!("/v1/jobs/{id}/events"), &[]).await;
    let history = stream.until(|m| m.event() == Some("job.started")).await;
    assert_eq!(events_of(&history), ["job.queued", "job.started"]);
    let job = server.get(&format!("/v1/jobs/{id}")).await.1;
    assert_eq!(job["status"], "running", "the rest is yet to happen: {job}");

    let live = stream.rest().await;
    let stored: Vec<Item> = live.iter().filter(|m| m.id().is_some()).cloned().collect();
    assert_eq!(events_of(&stored), ["job.succeeded"], "{live:?}");
    assert_eq!(stored[0].json()["data"]["exit_code"], 0);

    let events = server.events(&id).await;
    assert_valid_history(&events);
    let sent: Vec<i64> = ids(&history).into_iter().chain(ids(&live)).collect();
    assert_eq!(
        sent,
        stored_ids(&events),
        "every stored event once, in order"
    );
    assert_eq!(
        history[0].json(),
        events[0],
        "the same event as the JSON answer"
    );
}

#[tokio::test]
async fn a_finished_job_streams_its_history_and_ends_and_once_all_is_seen_answers_204() {
    let server = Server::start().await;
    let id = server.submit(sh("exit 3")).await;
    server.finished(&id).await;
    let path = format!("/v1/jobs/{id}/events");

    let items = Sse::open(&server, &path, &[]).await.rest().await;
    assert_eq!(
        events_of(&items),
        ["job.queued", "job.started", "job.failed"]
    );
    let last = ids(&items).last().copied().expect("ids").to_string();
    let resumed = Sse::request(&server, &path, &[("last-event-id", &last)]).await;
    assert_eq!(
        resumed.status(),
        StatusCode::NO_CONTENT,
        "nothing left: an EventSource stops reconnecting"
    );
}

#[tokio::test]
async fn resuming_the_feed_from_last_event_id_loses_and_repeats_nothing() {
    let server = Server::start().await;
    for _ in 0..3 {
        let id = server.submit(sh("true")).await;
        server.finished(&id).await;
    }
    let mut first = Sse::open(&server, "/v1/events", &[]).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next().await.expect("a message"));
    }
    drop(first);

    // Committed while no stream was open.
    let late = server.submit(sh("true")).await;
    server.finished(&late).await;
    let last = ids(&seen).last().copied().expect("ids").to_string();
    let mut resumed = Sse::open(&server, "/v1/events", &[("last-event-id", &last)]).await;
    let feed = server.get("/v1/events?after=0&limit=1000").await.1;
    let stored = stored_ids(feed["events"].as_array().expect("events"));
    while ids(&seen).len() < stored.len() {
        seen.push(resumed.next().await.expect("a message"));
    }
    assert_eq!(ids(&seen), stored, "no gap, no duplicate");

    // `?after=` is the same resume point for clients that cannot set headers.
    let mut by_query = Sse::open(&server, &format!("/v1/events?after={last}"), &[]).await;
    let next = by_query.next().await.expect("a message");
    assert_eq!(next.id(), ids(&seen).get(4).copied());
}

/// The output events of `messages`, as (stream, text).
fn outputs_of(messages: &[Item]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter(|m| m.event() == Some("output"))
        .map(|m| {
            let data = m.json();
            let text = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
            (text("stream"), text("data"))
        })
        .collect()
}

#[tokio::test]
async fn a_watcher_who_joins_late_gets_the_output_from_the_run_s_start() {
    let server = Server::start().await;
    let id = server
        .submit(sh("echo early; echo warned >&2; sleep 1; echo late"))
        .await;
    let path = format!("/v1/jobs/{id}/events");
    let mut first = Sse::open(&server, &path, &[]).await;
    let mut seen = Vec::new();
    while outputs_of(&seen).len() < 2 {
        seen.push(first.next().await.expect("a message"));
    }

    // The run has written both lines by now: this watcher joins after them.
    let late = Sse::open(&server, &path, &[]).await.rest().await;
    let whole = [
        outputs_of(&seen),
        vec![("stdout".to_owned(), "late\n".to_owned())],
    ]
    .concat();
    assert_eq!(
        outputs_of(&late),
        whole,
        "the same output, in the same order"
    );
    assert_eq!(events_of(&late).last(), Some(&"job.succeeded"));
    let first_rest = first.rest().await;
    assert_eq!(
        [outputs_of(&seen), outputs_of(&first_rest)].concat(),
        whole,
        "the first watcher got each line once"
    );
}

#[tokio::test]
async fn a_stream_resumed_after_the_run_started_still_carries_its_output() {
    let server = Server::start().await;
    let id = server.submit(sh("sleep 0.5; echo after; sleep 0.5")).await;
    server.running(&id).await;
    let events = server.events(&id).await;
    let started = events
        .iter()
        .find(|e| e["type"] == "job.started")
        .and_then(|e| e["id"].as_i64())
        .expect("a job.started event");
    let path = format!("/v1/jobs/{id}/events");
    let after = started.to_string();
    let rest = Sse::open(&server, &path, &[("last-event-id", &after)])
        .await
        .rest()
        .await;
    assert_eq!(
        outputs_of(&rest),
        [("stdout".to_owned(), "after\n".to_owned())]
    );
    assert_eq!(
        events_of(&rest),
        ["output", "job.succeeded"],
        "nothing it had again"
    );
}

#[tokio::test]
async fn live_output_arrives_while_the_job_still_runs() {
    let server = Server::start().await;
    let id = server
        .submit(sh(
            "echo first; sleep 2; echo second >&2; sleep 0.3; echo third",
        ))
        .await;
    let mut stream = Sse::open(&server, &format!("/v1/jobs/{id}/events"), &[]).await;

    let until_first = stream.until(|m| m.event() == Some("output")).await;
    let first = until_first.last().expect("output").json();
    assert_eq!(
        first,
        json!({"job_id": id, "attempt": 1, "stream": "stdout", "data": "first\n"})
    );
    assert_eq!(
        events_of(&until_first),
        ["job.queued", "job.started", "output"],
        "output follows its run's start"
    );
    assert_eq!(
        until_first.last().and_then(Item::id),
        None,
        "output is not resumable"
    );
    let job = server.get(&format!("/v1/jobs/{id}")).await.1;
    assert_eq!(job["status"], "running", "{job}");

    let rest = stream.rest().await;
    let outputs: Vec<(String, String)> = rest
        .iter()
        .filter(|m| m.event() == Some("output"))
        .map(|m| {
            let data = m.json();
            (data["stream"].to_string(), data["data"].to_string())
        })
        .collect();
    assert_eq!(
        outputs,
        [
            ("\"stderr\"".to_owned(), "\"second\\n\"".to_owned()),
            ("\"stdout\"".to_owned(), "\"third\\n\"".to_owned())
        ]
    );
    assert_eq!(events_of(&rest).last(), Some(&"job.succeeded"));
    let job = server.finished(&id).await;
    assert_eq!(
        job["stdout"], "first\nthird\n",
        "the stored output is whole"
    );
}

#[tokio::test]
async fn progress_lines_become_throttled_events_and_the_jobs_progress_field() {
    let server = Server::start().await;
    let code = r#"echo "fd $KILN_PROGRESS_FD"
i=0; while [ $i -lt 200 ]; do echo "$((i / 2)) step $i" >&3; i=$((i + 1)); done
echo "not a progress line" >&3
echo "40 halfway" >&3
sleep 1.5
echo "100 finished" >&3"#;
    let id = server.submit(sh(code)).await;

    let mut seen_running = None;
    for _ in 0..300 {
        let job = server.get(&format!("/v1/jobs/{id}")).await.1;
        if job["status"] == "running" && job["progress"]["message"] == "halfway" {
            seen_running = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let running = seen_running.expect("the progress field shows 40% while the job runs");
    assert_eq!(
        running["progress"],
        json!({"percent": 40, "message": "halfway"})
    );

    let job = server.finished(&id).await;
    assert_eq!(job["stdout"], "fd 3\n", "{job}");
    assert_eq!(
        job["progress"],
        json!({"percent": 100, "message": "finished"})
    );
    let events = server.events(&id).await;
    assert_valid_history(&events);
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "job.progress")
        .collect();
    assert!(
        (2..=6).contains(&progress.len()),
        "202 lines in ~1.5 s, stored at most 4 a second plus the last: {progress:?}"
    );
    let last = progress.last().expect("progress events");
    assert_eq!(last["data"], json!({"percent": 100, "message": "finished"}));
    assert_eq!(last["attempt"], 1);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types[types.len() - 2],
        "job.progress",
        "the last before the end"
    );

    let compat = server.get(&format!("/eval-status/{id}")).await.1;
    assert_eq!(compat["progress"], job["progress"]);
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_while_a_reading_one_gets_every_event() {
    // The smallest buffer the server takes, smaller than one output chunk, which then costs
    // all of it: once the slow client's connection takes no more, a chunk fills what is left,
    // or `output.lost` notices eat it (a few dozen; over a hundred chunks come after that
    // point), and the end cannot fit. A larger buffer could keep up to a chunk's worth free,
    // where the end fits at once. Two streams at most: the slow one and the reading one, then
    // the slow one and a holder, so that a probe is admitted only once the slow stream is over.
    let server = Server::start_with(&[
        "--sse-stall-ms",
        "500",
        "--sse-buffer-bytes",
        "4096",
        "--sse-max-streams",
        "2",
    ])
    .await;
    // 12 MB of output at a steady pace: more than the socket buffers of a client that reads
    // nothing can hold. Each 60 kB is one write (cat's buffer is larger), read as one chunk:
    // the reading client's buffer holds one at a time, and gets each whole if the server hands
    // it on before the next, which the pause between them leaves time for on a busy machine.
    let steady_flood = json!({
        "runtime": "bash",
        "code": "head -c 60000 /dev/zero | tr '\\0' x > chunk; sleep 0.5; \
                 for i in $(seq 200); do cat chunk; sleep 0.03; done",
        "limits": {"output_bytes": 16_000_000, "wall_ms": 60_000},
    });
    let id = server.submit(steady_flood).await;
    let path = format!("/v1/jobs/{id}/events");

    // A client that reads nothing, with a small receive window.
    let slow = tokio::net::TcpSocket::new_v4().expect("socket");
    slow.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let addr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut slow = slow.connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: kiln\r\nAccept: text/event-stream\r\n\
         Connection: close\r\n\r\n"
    );
    slow.write_all(request.as_bytes()).await.expect("request");

    let mut reader = Sse::open(&server, &path, &[]).await;
    let (mut output_bytes, mut events) = (0, Vec::new());
    while let Some(item) = reader.next().await {
        match (item.event(), item.id()) {
            (Some("output"), _) => output_bytes += item.json()["data"].as_str().map_or(0, str::len),
            (Some(event), Some(_)) => events.push(event.to_owned()),
            _ => {}
        }
    }
    assert_eq!(
        events,
        ["job.queued", "job.started", "job.succeeded"],
        "the reading client got every event"
    );
    assert!(
        output_bytes > 1_000_000,
        "and the output as it came: {output_bytes} bytes"
    );
    let job = server.finished(&id).await;
    assert_eq!(job["stdout"].as_str().map(str::len), Some(12_000_000));

    // The slow client reads only once its stream is over: reading makes room, and the end,
    // waiting for room, would then fit within the stall (while it reads nothing, the kernel
    // makes none: the server's send queue stays full). A stream is over when its slot is free:
    // with a holder in the reading stream's slot, a probe is admitted only then.
    let admitted = || async {
        for _ in 0..1000 {
            let stream = Sse::request(&server, "/v1/events", &[]).await;
            if stream.status() != StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(stream.status(), StatusCode::OK);
                return Some(stream);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let _holder = admitted()
        .await
        .expect("the reading stream's slot came free");
    let over = admitted().await.is_some();
    assert!(over, "the slow stream ended within 20 s");

    // Only now does the slow client read: its stream was cut short, saying where to resume.
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut bytes))
        .await
        .expect("the server closed the slow stream")
        .expect("read");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("event: job.succeeded"), "the end never fit");
    let at = text
        .find("event: dropped\ndata: ")
        .expect("the slow stream ends with event: dropped");
    let data = text[at..].lines().nth(1).expect("data line");
    let data: Value = serde_json::from_str(data.trim_start_matches("data: ")).expect("JSON");
    let last = data["last_event_id"].as_i64().expect("last_event_id");
    assert!(
        text.contains(&format!("id: {last}\n")),
        "the last id it was sent"
    );

    let resumed = Sse::open(&server, &path, &[("last-event-id", &last.to_string())])
        .await
        .rest()
        .await;
    let resumed_events: Vec<&str> = resumed
        .iter()
        .filter(|m| m.id().is_some())
        .filter_map(Item::event)
        .collect();
    assert_eq!(
        resumed_events,
        ["job.succeeded"],
        "resuming by id recovers the end"
    );
}

#[tokio::test]
async fn a_quiet_stream_sends_keep_alive_comments() {
    let server = Server::start_with(&["--sse-keepalive-ms", "100"]).await;
    let mut stream = Sse::open(&server, "/v1/events", &[]).await;
    let started = std::time::Instant::now();
    let first = stream.next().await.expect("something");
    assert!(
        matches!(&first, Item::Comment(text) if text == "keep-alive"),
        "{first:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(stream.next().await, Some(Item::Comment(_))));
}

#[tokio::test]
async fn streams_of_unknown_jobs_and_bad_resume_points_are_refused_with_json() {
    let server = Server::start().await;
    let unknown = Sse::request(
        &server,
        "/v1/jobs/01900000-0000-7000-8000-000000000000/events",
        &[],
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "job_not_found");

    let bad = Sse::request(&server, "/v1/events", &[("last-event-id", "yesterday")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "invalid_header");

    let (status, body) = server.get("/v1/events?after=0").await;
    assert_eq!(status, StatusCode::OK, "JSON stays the default: {body}");
    assert!(body["events"].is_array());
}

#[tokio::test]
async fn kiln_watch_follows_a_job_live_and_exits_like_status() {
    let server = Server::start().await;
    let watch = |id: String| {
        let url = server.url.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(["watch", &id])
                .env("KILN_URL", url)
                .output()
                .expect("run kiln watch")
        })
    };
    // Live output is what is written while someone watches (docs/streams.md), and jobs
    // start within milliseconds: the job gives `kiln watch` a second to connect first.
    let id = server
        .submit(sh(
            "sleep 1; echo hello; sleep 0.5; echo '50 half way' >&3; echo oops >&2; sleep 0.3; echo bye",
        ))
        .await;
    let watched = watch(id.clone()).await.expect("kiln watch");
    let stdout = String::from_utf8_lossy(&watched.stdout);
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert_eq!(watched.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "hello\nbye\n", "stdout holds the job's output only");
    assert!(
        stderr.contains(&format!("{id}  succeeded (success)")),
        "the end on stderr: {stderr}"
    );
    for expected in [
        "job.started",
        "progress 50% half way",
        "oops",
        "job.succeeded",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }

    let failed = server.submit(sh("echo late; exit 4")).await;
    server.finished(&failed).await;
    let watched = watch(failed).await.expect("kiln watch");
    assert_eq!(watched.status.code(), Some(1), "a failed job exits 1");
    let stdout = String::from_utf8_lossy(&watched.stdout);
    assert!(
        stdout.contains("late\n"),
        "a job that ended before it was watched shows its stored output: {stdout}"
    );
}
