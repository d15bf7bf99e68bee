//! Hostile and malformed requests, sent as raw bytes over a real socket: clients that send their
//! headers or body too slowly, headers too large, more connections than allowed, and requests
//! that are broken in every way a decoder can be. Each gets a 4xx (with the JSON error shape
//! wherever kiln's code gets to answer) or is cut off, never a 5xx, and nothing is stored.
//!
//! The last test is a fuzzer: generated requests thrown at the server, `KILN_FUZZ_CASES` of
//! them (300 by default; set it higher to run longer).

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::util::Server;

// ---------------------------------------------------------------------------------------------
// Raw HTTP

async fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

/// An answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// A 4xx whose body has the JSON error shape, with a short message.
    fn assert_json_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what} → {self:?}");
        assert_eq!(self.code(), code, "{what} → {self:?}");
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{what} → {self:?}");
        assert!(message.len() < 1000, "{what}: the message is kept short");
    }
}

/// Reads until the server closes the connection or `limit` passes; the bytes, and whether it
/// closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

fn parse_answer(bytes: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = serde_json::from_str(body).unwrap_or_else(|_| json!({"raw": body}));
    Answer {
        status,
        head: head.to_owned(),
        body,
    }
}

/// Sends `request` as is on a fresh connection and reads the whole answer (the request says
/// `Connection: close` unless it is malformed before that).
async fn raw(server: &Server, request: &[u8]) -> Answer {
    let mut stream = connect(server).await;
    stream.write_all(request).await.expect("send");
    let (bytes, closed) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "answered and closed within 10 s: {bytes:?}");
    parse_answer(&bytes)
}

fn request(method: &str, target: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {target} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if method == "POST" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    request("POST", path, &[("Content-Type", b"application/json")], body)
}

/// Open descriptors of the server process.
fn open_fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("the server's fds")
        .count()
}

async fn nothing_stored(server: &Server) {
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing half-written");
}

// ---------------------------------------------------------------------------------------------
// Slow and greedy clients

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_off_at_the_header_timeout() {
    let server = Server::start_with(&["--header-timeout-ms", "500"]).await;
    let mut stream = connect(&server).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
        .await
        .expect("send");
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a client sending a header byte every 50 ms is still connected after 10 s"
        );
        if stream.write_all(b"x").await.is_err() {
            break started.elapsed();
        }
        let (_, closed) = read_to_close(&mut stream, Duration::from_millis(50)).await;
        if closed {
            break started.elapsed();
        }
    };
    assert!(
        closed_after >= Duration::from_millis(450),
        "not before the timeout: {closed_after:?}"
    );
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200, "everyone else is still served");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let server = Server::start_with(&["--header-timeout-ms", "500"]).await;
    let mut stream = connect(&server).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .expect("send");
    let started = Instant::now();
    let (bytes, closed) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the idle connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "kept alive until the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(parse_answer(&bytes).status, 200, "the request was answered");
}

#[tokio::test]
async fn a_client_dribbling_its_body_gets_408_and_is_disconnected() {
    let server = Server::start_with(&["--body-timeout-ms", "500"]).await;
    let mut stream = connect(&server).await;
    let body = json!({"runtime": "sh", "code": "echo slow"}).to_string();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len() + 1000
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let started = Instant::now();
    let mut answer = Vec::new();
    for byte in body.bytes().chain(std::iter::repeat(b' ')) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a body dribbled a byte every 50 ms is still being read after 10 s"
        );
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        let (got, closed) = read_to_close(&mut stream, Duration::from_millis(50)).await;
        answer.extend(got);
        if closed {
            break;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(450));
    let answer = parse_answer(&answer);
    answer.assert_json_error(408, "body_timeout", "a dribbled body");
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.head
    );
    nothing_stored(&server).await;
}

#[tokio::test]
async fn headers_larger_than_the_limit_are_refused_with_431() {
    let server = Server::start_with(&["--max-header-bytes", "4096"]).await;
    let big = vec![b'a'; 8000];
    let answer = raw(
        &server,
        &request("GET", "/healthz", &[("X-Big", &big)], b""),
    )
    .await;
    assert_eq!(answer.status, 431, "{answer:?}");
    let long_path = format!("/v1/jobs/{}", "a".repeat(8000));
    let answer = raw(&server, &request("GET", &long_path, &[], b"")).await;
    assert_eq!(
        answer.status, 431,
        "the request line counts too: {answer:?}"
    );
    let fits = vec![b'a'; 2000];
    let answer = raw(
        &server,
        &request("GET", "/healthz", &[("X-Fits", &fits)], b""),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn connections_past_the_cap_wait_in_the_backlog_without_using_descriptors() {
    let server = Server::start_with(&["--max-connections", "2", "--workers", "0"]).await;
    let holders = [connect(&server).await, connect(&server).await];
    // Let the server accept both before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_at_cap = open_fds(&server);
    let mut waiting = Vec::new();
    for _ in 0..50 {
        waiting.push(connect(&server).await);
    }
    let mut asking = connect(&server).await;
    asking
        .write_all(&request("GET", "/healthz", &[], b""))
        .await
        .expect("send");
    let (early, _) = read_to_close(&mut asking, Duration::from_millis(500)).await;
    assert!(
        early.is_empty(),
        "not served while two connections are open"
    );
    // Some slack for the server's own work; 51 descriptors would be far beyond it.
    assert!(
        open_fds(&server) <= fds_at_cap + 10,
        "51 waiting connections hold no descriptor of the server: {} at the cap, {} now",
        fds_at_cap,
        open_fds(&server)
    );
    drop(waiting);
    drop(holders);
    let (bytes, closed) = read_to_close(&mut asking, Duration::from_secs(10)).await;
    assert!(closed);
    assert_eq!(
        parse_answer(&bytes).status,
        200,
        "served once a slot is free"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed requests

fn job_with(field: &str, value: Value) -> Vec<u8> {
    let mut job = json!({"runtime": "sh", "code": "echo hi"});
    job[field] = value;
    job.to_string().into_bytes()
}

fn batch_with_case(case: Value) -> Vec<u8> {
    json!({"runtime": "sh", "code": "cat", "cases": [case]})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn malformed_bodies_each_get_a_4xx_json_error_and_nothing_is_stored() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let deep_array = "[".repeat(100_000).into_bytes();
    let deep_in_field = format!(
        "{{\"runtime\": \"sh\", \"code\": \"x\", \"limits\": {}",
        "{\"wall_ms\": ".repeat(50_000)
    )
    .into_bytes();
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "deeply nested arrays",
            "/v1/jobs",
            deep_array.clone(),
            422,
            "invalid_request",
        ),
        (
            "deeply nested arrays",
            "/v1/batches",
            deep_array,
            422,
            "invalid_request",
        ),
        (
            "deeply nested objects",
            "/v1/jobs",
            deep_in_field,
            422,
            "invalid_request",
        ),
        (
            "invalid UTF-8 in a string",
            "/v1/jobs",
            b"{\"runtime\": \"sh\", \"code\": \"\xc3\x28\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "a lone surrogate escape",
            "/v1/jobs",
            br#"{"runtime": "sh", "code": "\ud800"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "a NUL in code",
            "/v1/jobs",
            job_with("code", json!("a\u{0}b")),
            422,
            "invalid_request",
        ),
        (
            "a NUL in args",
            "/v1/jobs",
            job_with("args", json!(["\u{0}"])),
            422,
            "invalid_request",
        ),
        (
            "a NUL in runtime",
            "/v1/jobs",
            job_with("runtime", json!("sh\u{0}")),
            422,
            "invalid_request",
        ),
        (
            "a NUL in a file name",
            "/v1/jobs",
            job_with("files", json!({"a\u{0}b": "x"})),
            422,
            "invalid_request",
        ),
        (
            "a bidi override in a file name",
            "/v1/jobs",
            job_with("files", json!({"report\u{202E}txt.sh": "x"})),
            422,
            "invalid_request",
        ),
        (
            "a zero-width space in a file name",
            "/v1/jobs",
            job_with("files", json!({"data\u{200B}.txt": "x"})),
            422,
            "invalid_request",
        ),
        (
            "a byte order mark in a file name",
            "/v1/jobs",
            job_with("files", json!({"\u{FEFF}input": "x"})),
            422,
            "invalid_request",
        ),
        (
            "a bidi isolate in a case name",
            "/v1/batches",
            batch_with_case(json!({"name": "ok\u{2067}evil\u{2069}"})),
            422,
            "invalid_request",
        ),
        (
            "a zero-width joiner in a case name",
            "/v1/batches",
            batch_with_case(json!({"name": "test\u{200D}1"})),
            422,
            "invalid_request",
        ),
        (
            "a file name that looks like the code's file",
            "/v1/jobs",
            job_with("files", json!({"m\u{430}in.sh": "x"})),
            422,
            "invalid_request",
        ),
        (
            "two file names that look alike",
            "/v1/jobs",
            job_with("files", json!({"data1.txt": "x", "datal.txt": "y"})),
            422,
            "invalid_request",
        ),
        (
            "two case names that look alike",
            "/v1/batches",
            json!({"runtime": "sh", "code": "cat", "cases": [{"name": "test_O"}, {"name": "test_0"}]})
                .to_string()
                .into_bytes(),
            422,
            "invalid_request",
        ),
        (
            "a NUL in a case name",
            "/v1/batches",
            batch_with_case(json!({"name": "a\u{0}"})),
            422,
            "invalid_request",
        ),
        (
            "a megabyte case name",
            "/v1/batches",
            batch_with_case(json!({"name": "n".repeat(1 << 20)})),
            422,
            "invalid_request",
        ),
        (
            "a megabyte runtime name",
            "/v1/jobs",
            job_with("runtime", json!("r".repeat(1 << 20))),
            422,
            "invalid_request",
        ),
        (
            "a limit past u64",
            "/v1/jobs",
            br#"{"runtime": "sh", "code": "x", "limits": {"wall_ms": 18446744073709551616}}"#
                .to_vec(),
            422,
            "invalid_request",
        ),
        (
            "the largest u64 as a limit",
            "/v1/jobs",
            job_with("limits", json!({"memory_mb": u64::MAX})),
            422,
            "invalid_request",
        ),
        (
            "a negative limit",
            "/v1/jobs",
            job_with("limits", json!({"processes": -1})),
            422,
            "invalid_request",
        ),
        (
            "a fractional limit",
            "/v1/jobs",
            job_with("limits", json!({"wall_ms": 1.5})),
            422,
            "invalid_request",
        ),
        (
            "a limit as a string",
            "/v1/jobs",
            job_with("limits", json!({"wall_ms": "100"})),
            422,
            "invalid_request",
        ),
        (
            "a priority past i32",
            "/v1/jobs",
            job_with("priority", json!(2_147_483_648_i64)),
            422,
            "invalid_request",
        ),
        (
            "negative max_attempts",
            "/v1/jobs",
            job_with("max_attempts", json!(-1)),
            422,
            "invalid_request",
        ),
        (
            "max_attempts past u32",
            "/v1/jobs",
            job_with("max_attempts", json!(4_294_967_296_u64)),
            422,
            "invalid_request",
        ),
        (
            "a number with a huge exponent",
            "/v1/jobs",
            br#"{"runtime": "sh", "code": "x", "priority": 1e999999}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "a bare string",
            "/v1/jobs",
            br#""job""#.to_vec(),
            422,
            "invalid_request",
        ),
        (
            "null",
            "/v1/batches",
            b"null".to_vec(),
            422,
            "invalid_request",
        ),
        (
            "trailing garbage",
            "/v1/jobs",
            br#"{"runtime": "sh", "code": "x"} {}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "a duplicate field",
            "/v1/jobs",
            br#"{"runtime": "sh", "code": "x", "code": "y"}"#.to_vec(),
            422,
            "invalid_request",
        ),
        (
            "no cases",
            "/v1/batches",
            json!({"runtime": "sh", "code": "x", "cases": []})
                .to_string()
                .into_bytes(),
            422,
            "invalid_request",
        ),
    ];
    for (what, path, body, status, code) in cases {
        let answer = raw(&server, &post(path, &body)).await;
        answer.assert_json_error(status, code, what);
    }
    nothing_stored(&server).await;
}

#[tokio::test]
async fn malformed_headers_queries_and_paths_each_get_a_400_json_error() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let id = server
        .submit(json!({"runtime": "sh", "code": "echo"}))
        .await;
    let job = json!({"runtime": "sh", "code": "echo"})
        .to_string()
        .into_bytes();
    let key = |value: &'static [u8]| {
        request(
            "POST",
            "/v1/jobs",
            &[
                ("Content-Type", b"application/json"),
                ("Idempotency-Key", value),
            ],
            &job,
        )
    };
    let stream = |target: String, last_event_id: &'static [u8]| {
        request(
            "GET",
            &target,
            &[
                ("Accept", b"text/event-stream"),
                ("Last-Event-ID", last_event_id),
            ],
            b"",
        )
    };
    let events = format!("/v1/jobs/{id}/events");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("a key with a tab", key(b"a\tb"), 400, "invalid_header"),
        (
            "a key of non-ASCII bytes",
            key(b"\xff\xfe"),
            400,
            "invalid_header",
        ),
        (
            "a key of UTF-8",
            key("clé".as_bytes()),
            400,
            "invalid_header",
        ),
        ("a key too long", key(&[b'k'; 300]), 422, "invalid_request"),
        (
            "Last-Event-ID not a number",
            stream(events.clone(), b"abc"),
            400,
            "invalid_header",
        ),
        (
            "Last-Event-ID negative",
            stream(events.clone(), b"-1"),
            400,
            "invalid_header",
        ),
        (
            "Last-Event-ID past i64",
            stream(events.clone(), b"99999999999999999999"),
            400,
            "invalid_header",
        ),
        (
            "Last-Event-ID non-ASCII",
            stream(events.clone(), b"1\xff"),
            400,
            "invalid_header",
        ),
        (
            "Last-Event-ID on the feed",
            stream("/v1/events".into(), b"1e3"),
            400,
            "invalid_header",
        ),
        (
            "after not a number",
            request("GET", "/v1/events?after=abc", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "after past i64",
            request("GET", "/v1/events?after=99999999999999999999", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "after twice",
            request("GET", &format!("{events}?after=1&after=2"), &[], b""),
            400,
            "invalid_query",
        ),
        (
            "after not a job id",
            request("GET", "/v1/jobs?after=%FF%FE", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "a negative limit",
            request("GET", "/v1/events?limit=-1", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "a limit past u32",
            request("GET", "/v1/jobs?limit=4294967296", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "an unknown parameter",
            request("GET", "/v1/jobs?colour=red", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "an unknown status",
            request("GET", "/v1/jobs?status=%E2%80%AEdone", &[], b""),
            400,
            "invalid_query",
        ),
        (
            "wait infinite",
            request("GET", &format!("/v1/jobs/{id}?wait=1e999"), &[], b""),
            400,
            "invalid_query",
        ),
        (
            "wait NaN",
            request("GET", &format!("/v1/jobs/{id}?wait=NaN"), &[], b""),
            400,
            "invalid_query",
        ),
        (
            "wait negative",
            request("GET", &format!("/v1/jobs/{id}?wait=-0.5"), &[], b""),
            400,
            "invalid_query",
        ),
        (
            "an id of invalid UTF-8",
            request("GET", "/v1/jobs/%FF%FE", &[], b""),
            400,
            "invalid_path",
        ),
        (
            "an id too long",
            request("GET", &format!("/v1/jobs/{}", "f".repeat(4000)), &[], b""),
            400,
            "invalid_id",
        ),
        (
            "a batch id with a NUL",
            request("GET", "/v1/batches/%00", &[], b""),
            400,
            "invalid_id",
        ),
        (
            "a broken chunked body",
            b"POST /v1/jobs HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\
              Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
            400,
            "invalid_body",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let answer = raw(&server, &bytes).await;
        answer.assert_json_error(status, code, what);
    }
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(
        jobs["jobs"].as_array().map(Vec::len),
        Some(1),
        "only the one job"
    );
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_a_bare_400_and_the_server_goes_on() {
    let server = Server::start().await;
    for bytes in [
        &b"NOT-HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: kiln\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: kiln\r\nX: a\x00b\r\n\r\n",
        b"POST /v1/jobs HTTP/1.1\r\nHost: kiln\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let mut stream = connect(&server).await;
        stream.write_all(bytes).await.expect("send");
        let (answer, closed) = read_to_close(&mut stream, Duration::from_secs(10)).await;
        assert!(closed, "{bytes:?}: closed");
        if !answer.is_empty() {
            let status = parse_answer(&answer).status;
            assert!((400..500).contains(&status), "{bytes:?} → {status}");
        }
    }
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------------
// The fuzzer

/// Strings that exercise decoders: plain, empty, long, control and format characters, NUL,
/// numbers written as text, path tricks.
fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z0-9 ._/-]{0,12}",
        Just(String::new()),
        Just("sh".to_owned()),
        Just("main.sh".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("a\u{0}b".to_owned()),
        Just("x\u{202E}y".to_owned()),
        Just("\u{200B}".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        "\\PC{0,8}",
        any::<String>(),
        (1usize..2000).prop_map(|n| "z".repeat(n)),
    ]
    .boxed()
}

/// Numbers at and past every boundary a field has.
fn nasty_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u32::MAX as u64 + 1)),
        Just(json!(i32::MAX as i64 + 1)),
        (0u64..700_000).prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        nasty_number(),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn limits() -> BoxedStrategy<Value> {
    let field = prop_oneof![
        Just("wall_ms"),
        Just("cpu_ms"),
        Just("memory_mb"),
        Just("processes"),
        Just("output_bytes"),
        Just("file_bytes"),
        Just("bogus")
    ];
    prop::collection::btree_map(field, nasty_number(), 0..4)
        .prop_map(|m| json!(m))
        .boxed()
}

/// A job whose every field may be wrong in a plausible way.
fn job() -> BoxedStrategy<Value> {
    (
        prop_oneof![
            6 => Just(json!("sh")),
            1 => nasty_string().prop_map(Value::String),
            1 => any_json(),
        ],
        prop_oneof![
            6 => Just(json!("echo ok")),
            1 => nasty_string().prop_map(Value::String),
            1 => any_json(),
        ],
        prop::option::weighted(0.3, nasty_string()),
        prop::option::weighted(0.3, prop::collection::vec(nasty_string(), 0..4)),
        prop::option::weighted(
            0.3,
            prop::collection::btree_map(nasty_string(), nasty_string(), 0..4),
        ),
        prop::option::weighted(0.3, prop_oneof![4 => limits(), 1 => any_json()]),
        prop::option::weighted(0.2, nasty_number()),
        prop::option::weighted(0.2, nasty_number()),
        prop::option::weighted(0.1, any_json()),
    )
        .prop_map(
            |(runtime, code, stdin, args, files, limits, priority, attempts, extra)| {
                let mut job = json!({"runtime": runtime, "code": code});
                let mut set = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        job[k] = v;
                    }
                };
                set("stdin", stdin.map(Value::String));
                set("args", args.map(|a| json!(a)));
                set("files", files.map(|f| json!(f)));
                set("limits", limits);
                set("priority", priority);
                set("max_attempts", attempts);
                set("callback_url", extra);
                job
            },
        )
        .boxed()
}

fn batch() -> BoxedStrategy<Value> {
    let case = (
        prop::option::of(nasty_string()),
        prop::option::of(nasty_string()),
        prop::option::of(nasty_string()),
        prop::option::of(limits()),
    )
        .prop_map(|(name, stdin, expected, limits)| {
            let mut case = json!({});
            if let Some(name) = name {
                case["name"] = json!(name);
            }
            if let Some(stdin) = stdin {
                case["stdin"] = json!(stdin);
            }
            if let Some(expected) = expected {
                case["expected_output"] = json!(expected);
            }
            if let Some(limits) = limits {
                case["limits"] = limits;
            }
            case
        });
    (
        job(),
        prop::collection::vec(case, 0..5),
        prop::option::of(prop_oneof![
            Just(json!("exact")),
            Just(json!("tokens")),
            any_json()
        ]),
    )
        .prop_map(|(job, cases, compare)| {
            let mut batch = json!({"runtime": job["runtime"], "code": job["code"], "cases": cases});
            if let Some(compare) = compare {
                batch["compare"] = compare;
            }
            batch
        })
        .boxed()
}

/// The old API's submission, its fields sometimes wrong.
fn eval() -> BoxedStrategy<Value> {
    (
        prop_oneof![4 => Just(json!("print(1)")), 1 => any_json()],
        prop::option::weighted(0.5, prop_oneof![Just(json!("sh")), any_json()]),
        prop::option::weighted(0.3, nasty_string()),
    )
        .prop_map(|(code, language, stdin)| {
            let mut eval = json!({"code": code});
            if let Some(language) = language {
                eval["language"] = language;
            }
            if let Some(stdin) = stdin {
                eval["stdin"] = json!(stdin);
            }
            eval
        })
        .boxed()
}

/// What is sent: to which path, a body meant for it (as JSON text, cut short, with a byte
/// overwritten, or any bytes at all), and which Idempotency-Key.
fn fuzzed_request() -> BoxedStrategy<(String, Vec<u8>, Option<Vec<u8>>)> {
    let meant = prop_oneof![
        Just("/v1/jobs").prop_flat_map(|p| (Just(p), job())),
        Just("/v1/batches").prop_flat_map(|p| (Just(p), batch())),
        Just("/eval-async").prop_flat_map(|p| (Just(p), eval())),
        (
            prop::sample::select(vec!["/v1/jobs", "/v1/batches", "/eval-async"]),
            any_json()
        ),
    ]
    .prop_map(|(path, body)| (path.to_owned(), body.to_string().into_bytes()));
    let sent = prop_oneof![
        4 => meant.clone(),
        1 => (meant.clone(), any::<prop::sample::Index>())
            .prop_map(|((path, b), i)| (path, b[..i.index(b.len() + 1)].to_vec())),
        1 => (meant.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |((path, mut b), i, byte)| {
                if !b.is_empty() {
                    let at = i.index(b.len());
                    b[at] = byte;
                }
                (path, b)
            }
        ),
        1 => (meant, prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|((path, _), bytes)| (path, bytes)),
    ];
    let key = prop::option::weighted(
        0.3,
        prop_oneof![
            "[ -~]{0,300}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..20),
        ],
    );
    (sent, key)
        .prop_map(|((path, body), key)| (path, body, key))
        .boxed()
}

/// Whether a generated header value is one HTTP/1.1 can carry (no control characters but the
/// tab): hyper refuses the others before kiln sees them, with a bare 400.
fn sendable(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[tokio::test]
async fn fuzzed_submissions_are_answered_with_2xx_or_a_4xx_json_error_never_5xx() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let cases = std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let strategy = fuzzed_request();
    let mut answers = std::collections::BTreeMap::<(u16, String), u32>::new();
    for _ in 0..cases {
        let (path, body, key) = strategy.new_tree(&mut runner).expect("generate").current();
        let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", b"application/json")];
        if let Some(key) = key.as_deref().filter(|k| sendable(k)) {
            headers.push(("Idempotency-Key", key));
        }
        let bytes = request("POST", &path, &headers, &body);
        let answer = raw(&server, &bytes).await;
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        *answers
            .entry((answer.status, answer.code().to_owned()))
            .or_default() += 1;
        match answer.status {
            200..=299 => {}
            400..=499 => {
                assert!(
                    !answer.code().is_empty() && answer.body["error"]["message"].is_string(),
                    "{path} {shown} → a 4xx without the JSON error shape: {answer:?}"
                );
            }
            _ => panic!("{path} {shown} → {answer:?}"),
        }
    }
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    eprintln!("fuzzed {cases} submissions, no 5xx; answers by status and code: {answers:?}");
    let accepted: u32 = answers
        .iter()
        .filter(|((status, _), _)| *status < 300)
        .map(|(_, n)| n)
        .sum();
    assert!(
        accepted > 0 && accepted < cases,
        "the generator reaches both the store and the validators: {answers:?}"
    );
}

#[tokio::test]
async fn a_filter_or_cursor_holding_a_nul_finds_what_it_would_without_one() {
    // PostgreSQL's text cannot hold a NUL; no stored name does either.
    let server = Server::start().await;
    let id = server.submit(crate::util::sh("true")).await;
    server.finished(&id).await;
    let (status, page) = server.get("/v1/jobs?runtime=sh%00").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"], json!([]), "no runtime's name holds a NUL");

    let suite = json!({"runtime": "sh", "code": "true", "cases": [
        {"group": "a"}, {"group": "ab"}, {"group": "b"}]});
    let (status, batch) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, 202, "{batch}");
    let batch = batch["id"].as_str().expect("batch id");
    let (status, page) = server
        .get(&format!("/v1/batches/{batch}/groups?after=a%00z"))
        .await;
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["ab", "b"], "after \"a\\0z\": as bytes compare");
}
