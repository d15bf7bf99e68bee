//! Piston v2's API under `/api/v2`, driven by a Piston client written by others (the
//! `piston_rs` crate, pointed at kiln with `Client::with_url`) for runtimes and execute, by a
//! WebSocket client library (`tokio-tungstenite`) for the interactive `/api/v2/connect`, and by
//! plain HTTP for each of Piston's error shapes. An execution is an ordinary kiln job, seen
//! through `/v1` too; one that is refused stores nothing.

use futures_util::{SinkExt, StreamExt};
use piston_rs::{Client, Executor, File};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::create_token;
use crate::util::Server;

fn piston(server: &Server) -> Client {
    Client::with_url(&format!("{}/api/v2", server.url))
}

fn jobs_stored(server: &Server) -> i64 {
    server.count("SELECT count(*) FROM jobs")
}

/// The one job the server holds, read through `/v1`.
async fn only_job(server: &Server) -> Value {
    let (_, listed) = server.get("/v1/jobs").await;
    let id = listed["jobs"][0]["id"].as_str().expect("a job");
    server.finished(id).await
}

fn executor(language: &str, code: &str) -> Executor {
    Executor::new()
        .set_language(language)
        .set_version("*")
        .add_file(File::default().set_content(code))
}

/// `/execute` as raw JSON, for the fields `piston_rs` does not read.
async fn execute_raw(server: &Server, body: &Value) -> (StatusCode, Value) {
    server.post("/api/v2/execute", body).await
}

#[tokio::test]
async fn piston_rs_lists_each_runtime_with_its_tools_version_and_aliases() {
    let server = Server::start().await;
    let runtimes = piston(&server).fetch_runtimes().await.expect("runtimes");
    let python = runtimes
        .iter()
        .find(|r| r.language == "python")
        .unwrap_or_else(|| panic!("python is offered: {runtimes:?}"));
    assert_eq!(python.aliases, ["python3", "py"]);
    let version = semver_parts(&python.version);
    assert!(
        version[0] >= 3,
        "the tool's own version: {}",
        python.version
    );
    let (_, listed) = server.get("/v1/runtimes").await;
    let reported = listed["runtimes"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == "python"))
        .and_then(|r| r["version"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        reported.contains(&python.version),
        "{reported:?} is what the tool said, {} read from it",
        python.version
    );
}

fn semver_parts(version: &str) -> Vec<u64> {
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().expect("a number"))
        .collect();
    assert_eq!(parts.len(), 3, "{version} is a semver");
    parts
}

#[tokio::test]
async fn piston_rs_executes_with_stdin_and_args_as_an_ordinary_kiln_job() {
    let server = Server::start().await;
    // The pauses let the answer's watch of the live output begin before the program writes,
    // and each write be read before the next, however busy the host: an answer that joins
    // after the run has stdout then stderr.
    let code = "import sys, time\ntime.sleep(1)\nprint('oops', file=sys.stderr, flush=True)\n\
                time.sleep(1)\nprint(input(), *sys.argv[1:])\n";
    let run = executor("py", code)
        .set_stdin("kiln")
        .add_args(vec!["a", "b c"]);
    let response = piston(&server).execute(&run).await.expect("executes");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.language, "python");
    assert_eq!(semver_parts(&response.version).len(), 3);
    assert!(response.compile.is_none(), "python has no compile stage");
    let result = &response.run;
    assert_eq!(result.stdout, "kiln a b c\n");
    assert_eq!(result.stderr, "oops\n");
    assert_eq!(
        result.output, "oops\nkiln a b c\n",
        "interleaved as written, not stdout then stderr"
    );
    assert_eq!((result.code, result.signal.as_deref()), (Some(0), None));

    // The same run through kiln's own API: one job, ended, with its output.
    assert_eq!(jobs_stored(&server), 1);
    let job = only_job(&server).await;
    assert_eq!(job["runtime"], "python");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["stdout"], "kiln a b c\n");
}

#[tokio::test]
async fn a_compiled_language_answers_a_compile_stage_and_a_compile_error_is_both_stages() {
    let server = Server::start().await;
    let client = piston(&server);
    let ok = executor(
        "c",
        "#include <stdio.h>\nint main(void) { puts(\"compiled\"); return 0; }\n",
    );
    let response = client.execute(&ok).await.expect("executes");
    let compile = response.compile.as_ref().expect("a compile stage");
    assert_eq!(compile.code, Some(0));
    assert_eq!(response.run.stdout, "compiled\n");

    let broken = executor("gcc", "int main(void) { return missing; }\n");
    let response = client.execute(&broken).await.expect("executes");
    let compile = response.compile.as_ref().expect("a compile stage");
    assert_ne!(compile.code, Some(0), "{compile:?}");
    assert!(compile.stderr.contains("missing"), "{compile:?}");
    assert_eq!(
        (&response.run.stderr, response.run.code),
        (&compile.stderr, compile.code),
        "run is a copy of compile, as Piston answers"
    );
}

#[tokio::test]
async fn a_runtime_error_a_signal_and_a_timeout_are_reported_as_piston_reports_them() {
    let server = Server::start().await;
    let client = piston(&server);
    let exited = client
        .execute(&executor("python", "raise SystemExit(3)"))
        .await
        .expect("executes");
    assert_eq!((exited.run.code, exited.run.signal), (Some(3), None));

    let crashed = client
        .execute(&executor(
            "python",
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
        ))
        .await
        .expect("executes");
    assert_eq!(
        (crashed.run.code, crashed.run.signal.as_deref()),
        (None, Some("SIGSEGV"))
    );

    let (status, slow) = execute_raw(
        &server,
        &json!({"language": "python", "version": "3.x", "run_timeout": 500,
                "files": [{"content": "while True: pass"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{slow}");
    let run = &slow["run"];
    assert_eq!(
        (&run["status"], &run["signal"], &run["code"]),
        (&json!("TO"), &json!("SIGKILL"), &Value::Null),
        "{run}"
    );
    let wall = run["wall_time"].as_u64().expect("wall_time in ms");
    assert!((500..5000).contains(&wall), "{run}");
    assert!(
        run["memory"].as_u64().is_some_and(|b| b > 0),
        "bytes: {run}"
    );
}

#[tokio::test]
async fn files_come_in_their_encodings_and_the_first_is_the_entry() {
    let server = Server::start().await;
    let (status, body) = execute_raw(
        &server,
        &json!({"language": "python", "version": "*", "files": [
            {"name": "main.py", "content": "import helper\nprint(helper.X, open('data.bin','rb').read())"},
            {"name": "helper.py", "content": "X = 42\n"},
            {"name": "data.bin", "content": "AP8=", "encoding": "base64"},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["run"]["stdout"], "42 b'\\x00\\xff'\n", "{body}");
}

#[tokio::test]
async fn bad_input_gets_pistons_status_and_message_and_stores_nothing() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let untyped = http
        .post(format!("{}/api/v2/execute", server.url))
        .body(r#"{"language":"python","version":"*","files":[{"content":"print(1)"}]}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(untyped.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        untyped.json::<Value>().await.expect("JSON"),
        json!({"message": "requests must be of type application/json"})
    );
    let refused = [
        (
            json!({"version": "*", "files": []}),
            "language is required as a string",
        ),
        (
            json!({"language": "python", "files": []}),
            "version is required as a string",
        ),
        (
            json!({"language": "python", "version": "*", "files": "x"}),
            "files is required as an array",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"name": "a"}]}),
            "files[0].content is required as a string",
        ),
        (
            json!({"language": "cobol", "version": "*", "files": [{"content": "x"}]}),
            "cobol-* runtime is unknown",
        ),
        (
            json!({"language": "python", "version": "1.0.0", "files": [{"content": "x"}]}),
            "python-1.0.0 runtime is unknown",
        ),
        (
            json!({"language": "python", "version": "*",
                   "files": [{"content": "eA==", "encoding": "base64"}]}),
            "files must include at least one utf8 encoded file",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x"}],
                   "run_timeout": 10_000_000}),
            "run_timeout cannot exceed the configured limit of",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x"}],
                   "run_memory_limit": "lots"}),
            "If specified, run_memory_limit must be a number",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x"}],
                   "compile_cpu_time": -3}),
            "compile_cpu_time must be non-negative",
        ),
    ];
    for (body, message) in refused {
        let (status, answer) = execute_raw(&server, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} answered {answer}");
        let said = answer["message"].as_str().unwrap_or_default();
        assert!(said.starts_with(message), "{body}: {said:?}");
        assert_eq!(answer.as_object().map(|o| o.len()), Some(1), "{answer}");
    }
    // kiln's own checks, in Piston's shape.
    let (status, answer) = execute_raw(
        &server,
        &json!({"language": "python", "version": "*",
                "files": [{"content": "x"}, {"name": "../escape", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["message"].is_string(), "{answer}");

    // And as piston_rs shows a refusal: a result with the status and body in stderr.
    let response = piston(&server)
        .execute(&executor("cobol", "x"))
        .await
        .expect("answered");
    assert_eq!(response.status, 400);
    assert!(
        response.run.stderr.contains("cobol-* runtime is unknown"),
        "{response:?}"
    );
    assert_eq!(jobs_stored(&server), 0, "nothing refused was stored");
}

#[tokio::test]
async fn a_piston_key_in_authorization_is_a_kiln_token_and_without_one_piston_is_refused() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let token = create_token(dir.path(), "acme", false);
    let server = Server::start_in(dir, &[]).await;
    let keyed = Client::with_url_and_key(&format!("{}/api/v2", server.url), &token);
    let response = keyed
        .execute(&executor("python", "print('acme')"))
        .await
        .expect("executes");
    assert_eq!(response.run.stdout, "acme\n");

    let anonymous = piston(&server).fetch_runtimes().await;
    assert!(anonymous.is_err(), "a 401 is not a list of runtimes");
    let (status, refused) = server.get("/api/v2/runtimes").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(refused["message"].is_string(), "{refused}");

    // The job is acme's own.
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/v1/jobs", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["jobs"][0]["runtime"], "python");
}

/// What a WebSocket client receives next: a message, or the close frame's code.
#[derive(Debug, PartialEq)]
enum Received {
    Json(Value),
    Closed(u16),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(server: &Server) -> Socket {
    let url = format!("{}/api/v2/connect", server.url.replacen("http", "ws", 1));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    socket
}

async fn receive(socket: &mut Socket) -> Received {
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .expect("a message within 30 s");
        match next {
            Some(Ok(Message::Text(text))) => {
                return Received::Json(serde_json::from_str(&text).expect("JSON"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Received::Closed(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("sent");
}

fn init(language: &str, code: &str) -> Value {
    json!({"type": "init", "language": language, "version": "*", "files": [{"content": code}]})
}

/// Receives until the close, collecting the output of `stream`.
async fn rest(socket: &mut Socket) -> (Vec<Value>, u16) {
    let mut messages = Vec::new();
    loop {
        match receive(socket).await {
            Received::Json(message) => messages.push(message),
            Received::Closed(code) => return (messages, code),
        }
    }
}

#[tokio::test]
async fn an_interactive_program_reads_a_line_from_the_websocket_and_answers_it() {
    let server = Server::start().await;
    let mut socket = connect(&server).await;
    send(
        &mut socket,
        init(
            "python",
            "name = input()\nprint('hello ' + name, flush=True)\nprint(input().upper())",
        ),
    )
    .await;
    let Received::Json(runtime) = receive(&mut socket).await else {
        panic!("a runtime message first");
    };
    assert_eq!(runtime["type"], "runtime");
    assert_eq!(runtime["language"], "python");
    assert_eq!(
        receive(&mut socket).await,
        Received::Json(json!({"type": "stage", "stage": "run"}))
    );
    send(
        &mut socket,
        json!({"type": "data", "stream": "stdin", "data": "kiln\n"}),
    )
    .await;
    assert_eq!(
        receive(&mut socket).await,
        Received::Json(json!({"type": "data", "stream": "stdout", "data": "hello kiln\n"})),
        "answered while it still runs"
    );
    send(
        &mut socket,
        json!({"type": "data", "stream": "stdin", "data": "again\n"}),
    )
    .await;
    let (messages, code) = rest(&mut socket).await;
    assert_eq!(code, 4999, "Job Completed: {messages:?}");
    assert_eq!(
        messages,
        [
            json!({"type": "data", "stream": "stdout", "data": "AGAIN\n"}),
            json!({"type": "exit", "stage": "run", "code": 0, "signal": null}),
        ]
    );

    // An ordinary durable job, its conversation in its output.
    let job = only_job(&server).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["stdout"], "hello kiln\nAGAIN\n");
    let id = job["id"].as_str().expect("an id");
    let kinds: Vec<String> = server
        .events(id)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["job.queued", "job.started", "job.succeeded"]);
}

#[tokio::test]
async fn a_signal_kills_the_running_program_and_ends_its_job_cancelled() {
    let server = Server::start().await;
    let mut socket = connect(&server).await;
    send(
        &mut socket,
        init(
            "python",
            "import time\nprint('up', flush=True)\ntime.sleep(60)",
        ),
    )
    .await;
    loop {
        if let Received::Json(message) = receive(&mut socket).await
            && message["type"] == "data"
        {
            assert_eq!(message["data"], "up\n");
            break;
        }
    }
    send(&mut socket, json!({"type": "signal", "signal": "SIGKILL"})).await;
    let (messages, code) = rest(&mut socket).await;
    assert_eq!(code, 4999, "{messages:?}");
    assert_eq!(
        messages.last(),
        Some(&json!({"type": "exit", "stage": "run", "code": null, "signal": "SIGKILL"}))
    );
    assert_eq!(only_job(&server).await["status"], "cancelled");
}

#[tokio::test]
async fn a_socket_not_initialized_within_a_second_is_closed_4001() {
    let server = Server::start().await;
    let mut socket = connect(&server).await;
    let started = std::time::Instant::now();
    assert_eq!(receive(&mut socket).await, Received::Closed(4001));
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900) && waited.as_secs() < 5,
        "{waited:?}"
    );
}

#[tokio::test]
async fn bad_messages_close_the_socket_with_pistons_codes_and_a_bad_init_stores_nothing() {
    let server = Server::start().await;
    let sleeper = "import time\ntime.sleep(30)";
    let cases: [(Vec<Value>, u16); 4] = [
        (
            vec![json!({"type": "data", "stream": "stdin", "data": "x"})],
            4003,
        ),
        (vec![init("python", sleeper), init("python", sleeper)], 4000),
        (
            vec![
                init("python", sleeper),
                json!({"type": "data", "stream": "stdout", "data": "x"}),
            ],
            4004,
        ),
        (
            vec![
                init("python", sleeper),
                json!({"type": "signal", "signal": "SIGFOO"}),
            ],
            4005,
        ),
    ];
    for (messages, expected) in cases {
        let mut socket = connect(&server).await;
        for message in &messages {
            send(&mut socket, message.clone()).await;
        }
        let (_, code) = rest(&mut socket).await;
        assert_eq!(code, expected, "{messages:?}");
    }
    let stored = jobs_stored(&server);
    assert_eq!(stored, 3, "one job for each socket that was initialized");

    for (message, error) in [
        ("not json".to_owned(), "expected ident"),
        (init("cobol", "x").to_string(), "cobol-* runtime is unknown"),
    ] {
        let mut socket = connect(&server).await;
        socket
            .send(Message::Text(message.into()))
            .await
            .expect("sent");
        let (messages, code) = rest(&mut socket).await;
        assert_eq!(code, 4002, "Notified Error");
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["type"], "error");
        let said = messages[0]["message"].as_str().unwrap_or_default();
        assert!(said.contains(error), "{said:?}");
    }
    assert_eq!(jobs_stored(&server), stored, "a bad init stores nothing");
}

#[tokio::test]
async fn a_socket_takes_a_live_streams_place_and_none_is_opened_past_the_limit() {
    let server = Server::start_with(&["--sse-max-streams", "1"]).await;
    let mut first = connect(&server).await;
    let url = format!("{}/api/v2/connect", server.url.replacen("http", "ws", 1));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        other => panic!("a second socket is refused: {other:?}"),
    }
    assert_eq!(receive(&mut first).await, Received::Closed(4001));
    // The first socket's place is free again once it closed.
    for _ in 0..100 {
        if tokio_tungstenite::connect_async(url.as_str()).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the place was never given back");
}

#[tokio::test]
async fn a_program_that_ends_at_once_still_sends_all_its_output_before_its_exit() {
    let server = Server::start().await;
    let mut socket = connect(&server).await;
    send(&mut socket, init("bash", "echo out; echo err >&2; exit 3")).await;
    let (messages, code) = rest(&mut socket).await;
    assert_eq!(code, 4999, "{messages:?}");
    let data = |stream: &str| -> String {
        messages
            .iter()
            .filter(|m| m["type"] == "data" && m["stream"] == stream)
            .filter_map(|m| m["data"].as_str())
            .collect()
    };
    assert_eq!(
        (data("stdout"), data("stderr")),
        ("out\n".into(), "err\n".into())
    );
    assert_eq!(
        messages.last(),
        Some(&json!({"type": "exit", "stage": "run", "code": 3, "signal": null}))
    );
}
