//! Webhooks: a job with a `callback_url` is POSTed, signed, to that URL when it ends; failed calls
//! are retried, survive a crash of the server, never hold up workers or other calls, and never
//! go to hosts the policy denies. The receivers here are small HTTP servers inside the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use hmac::{Hmac, Mac};
use reqwest::StatusCode as Status;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;

use crate::db::Cell;
use crate::util::Server;

/// One call a receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) method: Method,
    headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Call {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct Script {
    calls: Mutex<Vec<Call>>,
    /// This many calls from now on are answered 500.
    failing: AtomicUsize,
    /// Calls wait for this to be true before they are answered, if set.
    hold: Option<watch::Receiver<bool>>,
}

/// A webhook receiver on a loopback port, answering as the test says.
pub(crate) struct Receiver {
    port: u16,
    script: Arc<Script>,
    release: Option<watch::Sender<bool>>,
}

impl Receiver {
    /// Answers every call with 200.
    pub(crate) async fn start() -> Receiver {
        Receiver::with(Script::default(), None).await
    }

    /// Answers the first `n` calls with 500, then 200.
    pub(crate) async fn failing_first(n: usize) -> Receiver {
        let script = Script {
            failing: AtomicUsize::new(n),
            ..Script::default()
        };
        Receiver::with(script, None).await
    }

    /// Takes every call but answers none until [`Receiver::release`].
    async fn holding() -> Receiver {
        let (release, hold) = watch::channel(false);
        let script = Script {
            hold: Some(hold),
            ..Script::default()
        };
        Receiver::with(script, Some(release)).await
    }

    async fn with(script: Script, release: Option<watch::Sender<bool>>) -> Receiver {
        let script = Arc::new(script);
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            port,
            script,
            release,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/kiln", self.port)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.script.calls.lock().unwrap().clone()
    }

    pub(crate) fn fail_next(&self, n: usize) {
        self.script.failing.store(n, Ordering::SeqCst);
    }

    fn release(&self) {
        if let Some(release) = &self.release {
            release.send_replace(true);
        }
    }

    /// Waits until at least `n` calls have come in.
    pub(crate) async fn wait_for_calls(&self, n: usize) -> Vec<Call> {
        for _ in 0..1500 {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{n} calls did not come in 30 s: {:?}", self.calls());
    }
}

async fn receive(
    State(script): State<Arc<Script>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    script.calls.lock().unwrap().push(Call {
        method,
        headers,
        body,
    });
    if let Some(hold) = &script.hold {
        let _ = hold.clone().wait_for(|released| *released).await;
    }
    let fail = script
        .failing
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// The recipe of docs/webhooks.md: HMAC-SHA256 over `<t>.<body>` under the secret, compared with `v1`, and
/// `t` no further than five minutes from now.
fn verify_signature(call: &Call, secret: &str) {
    let header = call.header("kiln-signature");
    let field = |key: &str| {
        header
            .split(',')
            .find_map(|part| part.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {header:?}"))
    };
    let t: u64 = field("t=").parse().expect("t is a number");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&call.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(field("v1="), expected, "signature of {header:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t) <= 300, "t={t} is not recent (now {now})");
}

fn with_callback(code: &str, url: &str) -> Value {
    json!({"runtime": "sh", "code": code, "callback_url": url})
}

/// The job's `webhook.*` events, waiting until there are at least `n` and the last one
/// settles the call (delivered, or failed with no retry) if `settled`.
pub(crate) async fn webhook_events(
    server: &Server,
    id: &str,
    n: usize,
    settled: bool,
) -> Vec<Value> {
    settled_webhook_events(&format!("job {id}"), n, settled, || server.events(id)).await
}

/// The `webhook.*` events among what `fetch` returns, waiting as [`webhook_events`] says.
async fn settled_webhook_events<F, Fut>(what: &str, n: usize, settled: bool, fetch: F) -> Vec<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Value>>,
{
    for _ in 0..1500 {
        let events: Vec<Value> = fetch()
            .await
            .into_iter()
            .filter(|e| e["type"].as_str().unwrap_or("").starts_with("webhook."))
            .collect();
        let done = events
            .last()
            .is_some_and(|e| e["type"] == "webhook.delivered" || e["data"]["retry"] == false);
        if events.len() >= n && (done || !settled) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not get {n} webhook events in 30 s");
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn stored_secret(server: &Server) -> String {
    let stored = server.rows("SELECT value FROM settings WHERE name = 'webhook_secret'");
    let secret = stored.first().expect("a generated secret is stored");
    secret[0].text().to_owned()
}

#[tokio::test]
async fn a_receiver_failing_twice_with_500_gets_the_third_call_signed_and_each_attempt_is_an_event()
{
    let receiver = Receiver::failing_first(2).await;
    let server = Server::start_with(&[
        "--webhook-secret",
        "test-secret",
        "--webhook-retry-base-ms",
        "50",
    ])
    .await;
    let id = server
        .submit(with_callback("echo hello", &receiver.url()))
        .await;
    let job = server.finished(&id).await;

    let events = webhook_events(&server, &id, 3, true).await;
    assert_eq!(
        types(&events),
        ["webhook.failed", "webhook.failed", "webhook.delivered"]
    );
    for (n, event) in events.iter().enumerate() {
        let data = &event["data"];
        assert_eq!(data["attempt"], n as u64 + 1, "{event}");
        assert_eq!(data["url"], receiver.url());
        if n < 2 {
            assert_eq!(data["status_code"], 500, "{event}");
            assert_eq!(data["retry"], true, "{event}");
            assert!(data["next_attempt_at"].is_string(), "{event}");
        } else {
            assert_eq!(data["status_code"], 200, "{event}");
        }
    }

    let calls = receiver.calls();
    assert_eq!(calls.len(), 3, "no call after the delivered one");
    for call in &calls {
        verify_signature(call, "test-secret");
        assert_eq!(call.header("kiln-event"), "job.succeeded");
        assert_eq!(call.header("content-type"), "application/json");
        assert_eq!(
            call.header("kiln-delivery"),
            calls[0].header("kiln-delivery"),
            "retries carry the same delivery id"
        );
        assert_eq!(call.body, calls[0].body, "retries send the same bytes");
    }
    let body = calls[2].json();
    assert_eq!(body["event"], "job.succeeded");
    assert_eq!(body["job"], job, "the job as GET /v1/jobs/{{id}} shows it");
    assert_eq!(body["job"]["stdout"], "hello\n");

    // Operators see the same in the outbox.
    let outbox = server.rows(&format!(
        "SELECT status, attempts, last_status FROM webhook_deliveries WHERE job_id = '{id}'"
    ));
    assert_eq!(
        (outbox[0][0].text(), outbox[0][1].int(), outbox[0][2].int()),
        ("delivered", 3, 200)
    );
}

#[tokio::test]
async fn a_delivery_pending_at_kill_9_is_made_after_restart_signed_with_the_stored_secret() {
    let receiver = Receiver::failing_first(usize::MAX).await;
    let args = [
        "--webhook-retry-base-ms",
        "50",
        "--webhook-timeout-secs",
        "1",
    ];
    let server = Server::start_with(&args).await;
    let id = server
        .submit(with_callback("echo survived", &receiver.url()))
        .await;
    server.finished(&id).await;
    webhook_events(&server, &id, 1, false).await;
    let secret = stored_secret(&server);
    let dir = server.kill9();

    receiver.fail_next(0);
    let before = receiver.calls().len();
    let server = Server::start_in(dir, &args).await;
    let events = webhook_events(&server, &id, 2, true).await;
    assert_eq!(
        types(&events).last(),
        Some(&"webhook.delivered"),
        "{events:?}"
    );
    assert!(
        types(&events[..events.len() - 1])
            .iter()
            .all(|t| *t == "webhook.failed"),
        "{events:?}"
    );

    let calls = receiver.calls();
    assert!(calls.len() > before, "the restarted server called");
    assert_eq!(stored_secret(&server), secret, "the key outlives restarts");
    verify_signature(&calls[0], &secret);
    verify_signature(calls.last().unwrap(), &secret);
    assert_eq!(calls.last().unwrap().json()["job"]["stdout"], "survived\n");
}

#[tokio::test]
async fn a_slow_receiver_holds_up_neither_other_deliveries_nor_workers() {
    let slow = Receiver::holding().await;
    let fast = Receiver::start().await;
    let server = Server::start_with(&["--webhook-timeout-secs", "120"]).await;

    let held = server.submit(with_callback("echo slow", &slow.url())).await;
    slow.wait_for_calls(1).await;

    // While that call hangs, another job runs and another receiver is called.
    let other = server.submit(with_callback("echo fast", &fast.url())).await;
    let plain = server.submit(crate::util::sh("echo plain")).await;
    let calls = fast.wait_for_calls(1).await;
    assert_eq!(calls[0].json()["job"]["id"], other.as_str());
    assert_eq!(server.finished(&plain).await["status"], "succeeded");
    let held_events = server.events(&held).await;
    assert!(
        !held_events.iter().any(|e| e["type"] == "webhook.delivered"),
        "the slow call is still unanswered: {held_events:?}"
    );

    slow.release();
    let events = webhook_events(&server, &held, 1, true).await;
    assert_eq!(types(&events), ["webhook.delivered"]);
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_given_up_on_after_the_timeout_and_retried() {
    let silent = Receiver::holding().await;
    let server = Server::start_with(&["--webhook-timeout-secs", "1"]).await;
    let id = server.submit(with_callback("true", &silent.url())).await;
    let events = webhook_events(&server, &id, 1, false).await;
    let data = &events[0]["data"];
    assert_eq!(events[0]["type"], "webhook.failed");
    assert_eq!(data["status_code"], Value::Null, "{data}");
    assert!(
        data["error"].as_str().unwrap().contains("no answer within"),
        "{data}"
    );
    assert_eq!(data["retry"], true, "{data}");
}

#[tokio::test]
async fn callback_urls_that_are_malformed_or_denied_are_refused_with_422_and_nothing_is_stored() {
    let server = Server::start_with(&[
        "--webhook-deny-host",
        "*.internal.example",
        "--webhook-deny-host",
        "10.0.0.0/8",
    ])
    .await;
    let long = format!("http://127.0.0.1/{}", "a".repeat(2100));
    for url in [
        "http://hooks.internal.example/x",
        "http://10.20.30.40:8080/",
        "ftp://127.0.0.1/",
        "not a url",
        "http://user:password@127.0.0.1/",
        long.as_str(),
    ] {
        let (status, body) = server.post("/v1/jobs", &with_callback("true", url)).await;
        assert_eq!(status, Status::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("callback_url"),
            "{body}"
        );
    }
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn cloud_metadata_addresses_are_refused_by_default() {
    let server = Server::start().await;
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2852039166/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.100.100.200/latest/meta-data/",
    ] {
        let (status, body) = server.post("/v1/jobs", &with_callback("true", url)).await;
        assert_eq!(status, Status::UNPROCESSABLE_ENTITY, "{url}: {body}");
    }
}

#[tokio::test]
async fn a_name_that_resolves_to_a_denied_address_is_never_called() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&[
        "--webhook-deny-host",
        "127.0.0.0/8",
        "--webhook-deny-host",
        "::1",
    ])
    .await;
    // The literal address is refused at once; the name is only known to be bad once resolved.
    let (status, _) = server
        .post("/v1/jobs", &with_callback("true", &receiver.url()))
        .await;
    assert_eq!(status, Status::UNPROCESSABLE_ENTITY);
    let by_name = format!("http://localhost:{}/hooks/kiln", receiver.port);
    let id = server.submit(with_callback("true", &by_name)).await;

    let events = webhook_events(&server, &id, 1, true).await;
    assert_eq!(types(&events), ["webhook.failed"]);
    let data = &events[0]["data"];
    assert_eq!(data["retry"], false, "a denied host is not retried: {data}");
    assert!(data["error"].as_str().unwrap().contains("denied"), "{data}");
    assert!(receiver.calls().is_empty(), "the receiver was never called");
}

#[tokio::test]
async fn with_an_allow_list_only_the_listed_hosts_are_called() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&["--webhook-allow-host", "127.0.0.1"]).await;
    let (status, _) = server
        .post("/v1/jobs", &with_callback("true", "http://[::1]:9/"))
        .await;
    assert_eq!(status, Status::UNPROCESSABLE_ENTITY);
    let id = server.submit(with_callback("true", &receiver.url())).await;
    let events = webhook_events(&server, &id, 1, true).await;
    assert_eq!(types(&events), ["webhook.delivered"]);
    assert_eq!(receiver.calls().len(), 1);
}

#[tokio::test]
async fn every_way_a_job_ends_calls_back_with_its_terminal_event() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&["--lease-secs", "2"]).await;
    let failed = server
        .submit(with_callback("exit 3", &receiver.url()))
        .await;
    let cancelled = server
        .submit(with_callback("sleep 60", &receiver.url()))
        .await;
    server.running(&cancelled).await;
    let (status, _) = server
        .post(&format!("/v1/jobs/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(status, Status::OK);
    let lost = server
        .submit(json!({
            "runtime": "sh", "code": "sleep 60", "max_attempts": 1,
            "callback_url": receiver.url(),
        }))
        .await;
    server.running(&lost).await;
    let dir = server.kill9();
    let server = Server::start_in(dir, &["--lease-secs", "2"]).await;

    for (id, event) in [
        (&failed, "job.failed"),
        (&cancelled, "job.cancelled"),
        (&lost, "job.error"),
    ] {
        webhook_events(&server, id, 1, true).await;
        let call = receiver
            .calls()
            .into_iter()
            .find(|c| c.json()["job"]["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no call for {event}"));
        assert_eq!(call.header("kiln-event"), event);
        assert_eq!(
            call.json()["job"]["status"],
            event.trim_start_matches("job.")
        );
    }
}

#[tokio::test]
async fn the_documented_verifier_accepts_kiln_signatures_and_its_outbox_queries_run() {
    let delivered = Receiver::start().await;
    let refusing = Receiver::failing_first(usize::MAX).await;
    let server = Server::start_with(&["--webhook-max-attempts", "1"]).await;
    let ok = server.submit(with_callback("true", &delivered.url())).await;
    let given_up = server.submit(with_callback("true", &refusing.url())).await;
    webhook_events(&server, &ok, 1, true).await;
    webhook_events(&server, &given_up, 1, true).await;

    // The Python snippet, run as documented on the call as received, then on a tampered body.
    let snippet = crate::docs::WEBHOOKS
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a Python snippet in docs/webhooks.md");
    let call = &delivered.calls()[0];
    let check = format!(
        "{snippet}\nimport sys\nsecret, signature = sys.argv[1], sys.argv[2]\n\
         body = sys.stdin.buffer.read()\n\
         print(verify(secret, signature, body), verify(secret, signature, body + b' '))\n"
    );
    let mut python = std::process::Command::new("python3")
        .args([
            "-c",
            &check,
            &stored_secret(&server),
            call.header("kiln-signature"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    python.stdin.take().unwrap().write_all(&call.body).unwrap();
    let out = python.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True False\n");

    let queries = crate::docs::sqlite3_commands(crate::docs::WEBHOOKS);
    assert!(queries.len() >= 3, "{queries:?}");
    for query in queries {
        crate::docs::run_query(&query, server.dir.path());
    }
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_callback_url_is_a_conflict() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let first = with_callback("true", "http://127.0.0.1:9/a");
    let key = [("idempotency-key", "hook-1")];
    let submit = |job: &Value| server.post_raw("/v1/jobs", job.to_string().into_bytes(), &key);
    let (status, created) = submit(&first).await;
    assert_eq!(status, Status::ACCEPTED, "{created}");
    let (status, replayed) = submit(&first).await;
    assert_eq!(status, Status::ACCEPTED, "{replayed}");
    assert_eq!(replayed["id"], created["id"]);
    let (status, body) = submit(&with_callback("true", "http://127.0.0.1:9/b")).await;
    assert_eq!(status, Status::CONFLICT, "{body}");
}

/// Adds the two numbers on its stdin.
const ADDER: &str = "read a b; echo $((a + b))";

/// A suite of the adder whose completion is called back to `url`: `cases` are (stdin, expected).
fn suite_with_callback(url: &str, cases: &[(&str, &str)]) -> Value {
    let cases: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(n, (stdin, expected))| {
            json!({"name": format!("sum {n}"), "stdin": stdin, "expected_output": expected})
        })
        .collect();
    json!({"runtime": "sh", "code": ADDER, "callback_url": url, "cases": cases})
}

async fn submit_batch(server: &Server, suite: &Value) -> String {
    let (status, body) = server.post("/v1/batches", suite).await;
    assert_eq!(status, Status::ACCEPTED, "{body}");
    body["id"].as_str().expect("batch id").to_owned()
}

async fn batch_done(server: &Server, id: &str) -> Value {
    for _ in 0..12 {
        let (status, batch) = server.get(&format!("/v1/batches/{id}?wait=10")).await;
        assert_eq!(status, Status::OK, "{batch}");
        if batch["done"] == true {
            return batch;
        }
    }
    panic!("batch {id} did not finish in 2 minutes");
}

/// The batch's own events (not its cases') from the global feed, oldest first.
async fn batch_events(server: &Server, id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = server
            .get(&format!("/v1/events?after={after}&limit=1000"))
            .await;
        assert_eq!(status, Status::OK, "{page}");
        let page_events = page["events"].as_array().expect("events");
        if page_events.is_empty() {
            return events;
        }
        after = page["next_after"].as_i64().expect("next_after");
        events.extend(
            page_events
                .iter()
                .filter(|e| e["batch_id"] == id && e["job_id"].is_null())
                .cloned(),
        );
    }
}

/// The batch's own `webhook.*` events, waiting as [`webhook_events`] does for a job's.
async fn batch_webhook_events(server: &Server, id: &str, n: usize, settled: bool) -> Vec<Value> {
    settled_webhook_events(&format!("batch {id}"), n, settled, || {
        batch_events(server, id)
    })
    .await
}

#[tokio::test]
async fn a_batch_with_a_callback_gets_exactly_one_signed_call_after_its_last_case_with_the_totals()
{
    let receiver = Receiver::start().await;
    let server = Server::start_with(&["--webhook-secret", "suite-secret"]).await;
    let suite = suite_with_callback(&receiver.url(), &[("1 2", "3"), ("2 2", "4"), ("2 2", "5")]);
    let id = submit_batch(&server, &suite).await;
    let batch = batch_done(&server, &id).await;

    let events = batch_webhook_events(&server, &id, 1, true).await;
    assert_eq!(types(&events), ["webhook.delivered"]);
    assert_eq!(events[0]["job_id"], Value::Null, "{}", events[0]);
    assert_eq!(events[0]["data"]["url"], receiver.url());
    let history = batch_events(&server, &id).await;
    assert_eq!(
        types(&history),
        ["batch.queued", "batch.completed", "webhook.delivered"],
        "the call follows the batch's completion"
    );

    let calls = receiver.calls();
    assert_eq!(
        calls.len(),
        1,
        "one call for the whole batch, none per case"
    );
    let call = &calls[0];
    verify_signature(call, "suite-secret");
    assert_eq!(call.header("kiln-event"), "batch.completed");
    let body = call.json();
    assert_eq!(body["event"], "batch.completed");
    assert_eq!(
        body["batch"], batch,
        "the batch as GET /v1/batches/{{id}} shows it"
    );
    assert_eq!(body["batch"]["done"], true);
    assert_eq!(body["batch"]["progress"], json!({"done": 3, "total": 3}));
    assert_eq!(
        (&body["batch"]["passed"], &body["batch"]["failed"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(body["batch"]["by_verdict"]["wrong_answer"], 1);

    // The outbox holds that one call, written by the transaction that completed the batch.
    let outbox = server.rows(
        "SELECT w.job_id, w.status, w.created_at = b.finished_at
         FROM webhooks w LEFT JOIN batches b ON b.id = w.batch_id",
    );
    assert_eq!(
        outbox,
        [vec![
            Cell::Null,
            Cell::Text("delivered".into()),
            Cell::Int(1)
        ]]
    );
    let listed = server.rows("SELECT batch_id FROM webhook_deliveries WHERE job_id IS NULL");
    assert_eq!(listed[0][0].text(), id);
}

#[tokio::test]
async fn with_callback_each_case_a_batch_of_n_cases_makes_n_plus_one_calls() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&["--webhook-secret", "suite-secret"]).await;
    let mut suite =
        suite_with_callback(&receiver.url(), &[("1 1", "2"), ("2 2", "4"), ("3 3", "7")]);
    suite["callback_each_case"] = json!(true);
    let (status, submitted) = server.post("/v1/batches", &suite).await;
    assert_eq!(status, Status::ACCEPTED, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();
    batch_done(&server, &id).await;

    batch_webhook_events(&server, &id, 1, true).await;
    for case in submitted["cases"].as_array().unwrap() {
        let job = case["job_id"].as_str().unwrap();
        let events = webhook_events(&server, job, 1, true).await;
        assert_eq!(types(&events), ["webhook.delivered"]);
        assert_eq!(events[0]["batch_id"], id.as_str(), "{}", events[0]);
        crate::util::assert_valid_history(&server.events(job).await);
    }

    let calls = receiver.calls();
    assert_eq!(calls.len(), 4, "three cases and the batch");
    let mut case_calls: Vec<(String, String, String)> = Vec::new();
    for call in &calls {
        verify_signature(call, "suite-secret");
        let body = call.json();
        assert_eq!(call.header("kiln-event"), body["event"]);
        if body["event"] == "batch.completed" {
            assert_eq!(body["batch"]["id"], id.as_str());
            assert_eq!(body["batch"]["passed"], 2);
            continue;
        }
        let job = &body["job"];
        assert_eq!(job["batch_id"], id.as_str(), "{body}");
        case_calls.push((
            job["case_name"].as_str().unwrap().to_owned(),
            body["event"].as_str().unwrap().to_owned(),
            job["verdict"].as_str().unwrap().to_owned(),
        ));
    }
    case_calls.sort();
    let expected = [
        ("sum 0", "job.succeeded", "passed"),
        ("sum 1", "job.succeeded", "passed"),
        ("sum 2", "job.succeeded", "wrong_answer"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(case_calls, expected, "one call per case, with its verdict");
}

#[tokio::test]
async fn a_batch_delivery_pending_at_kill_9_is_made_after_restart() {
    let receiver = Receiver::failing_first(usize::MAX).await;
    let args = [
        "--webhook-retry-base-ms",
        "50",
        "--webhook-timeout-secs",
        "1",
    ];
    let server = Server::start_with(&args).await;
    let id = submit_batch(
        &server,
        &suite_with_callback(&receiver.url(), &[("1 2", "3"), ("5 5", "10")]),
    )
    .await;
    batch_done(&server, &id).await;
    batch_webhook_events(&server, &id, 1, false).await;
    let secret = stored_secret(&server);
    let dir = server.kill9();

    receiver.fail_next(0);
    let before = receiver.calls().len();
    let server = Server::start_in(dir, &args).await;
    let events = batch_webhook_events(&server, &id, 2, true).await;
    let (last, earlier) = types(&events)
        .split_last()
        .map(|(l, e)| (*l, e.to_vec()))
        .unwrap();
    assert_eq!(last, "webhook.delivered", "{events:?}");
    assert!(earlier.iter().all(|t| *t == "webhook.failed"), "{events:?}");

    let calls = receiver.calls();
    assert!(calls.len() > before, "the restarted server called");
    let call = calls.last().unwrap();
    verify_signature(call, &secret);
    assert_eq!(call.header("kiln-event"), "batch.completed");
    assert_eq!(call.json()["batch"]["id"], id.as_str());
    assert_eq!(call.json()["batch"]["passed"], 2);
}

#[tokio::test]
async fn a_bad_batch_callback_url_is_refused_with_422_and_nothing_is_stored() {
    let server = Server::start_with(&["--webhook-deny-host", "10.0.0.0/8"]).await;
    let cases = [("1 2", "3")];
    let mut without_url = suite_with_callback("http://127.0.0.1:9/", &cases);
    without_url["callback_url"] = Value::Null;
    without_url["callback_each_case"] = json!(true);
    let mut refused: Vec<Value> = [
        "http://10.20.30.40:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "ftp://127.0.0.1/",
        "not a url",
        "http://user:password@127.0.0.1/",
    ]
    .iter()
    .map(|url| suite_with_callback(url, &cases))
    .collect();
    refused.push(without_url);
    for suite in refused {
        let (status, body) = server.post("/v1/batches", &suite).await;
        assert_eq!(status, Status::UNPROCESSABLE_ENTITY, "{suite}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("callback_url"),
            "{body}"
        );
    }
    let stored = server.count(
        "SELECT (SELECT count(*) FROM batches) + (SELECT count(*) FROM jobs)
                + (SELECT count(*) FROM events)",
    );
    assert_eq!(stored, 0, "nothing was stored");
}

#[tokio::test]
async fn a_batch_idempotency_key_reused_with_another_callback_is_a_conflict() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let first = suite_with_callback("http://127.0.0.1:9/a", &[("1 2", "3")]);
    let key = [("idempotency-key", "suite-hook-1")];
    let submit =
        |suite: &Value| server.post_raw("/v1/batches", suite.to_string().into_bytes(), &key);
    let (status, created) = submit(&first).await;
    assert_eq!(status, Status::ACCEPTED, "{created}");
    let (status, replayed) = submit(&first).await;
    assert_eq!(status, Status::ACCEPTED, "{replayed}");
    assert_eq!(replayed["id"], created["id"]);

    let other_url = suite_with_callback("http://127.0.0.1:9/b", &[("1 2", "3")]);
    let mut each_case = first.clone();
    each_case["callback_each_case"] = json!(true);
    let mut no_callback = first.clone();
    no_callback["callback_url"] = Value::Null;
    for suite in [other_url, each_case, no_callback] {
        let (status, body) = submit(&suite).await;
        assert_eq!(status, Status::CONFLICT, "{suite}: {body}");
    }
}

#[tokio::test]
async fn a_cancelled_batch_is_called_back_as_completed_with_its_cases_cancelled() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&["--workers", "0"]).await;
    let id = submit_batch(
        &server,
        &suite_with_callback(&receiver.url(), &[("1 2", "3"), ("2 2", "4")]),
    )
    .await;
    let (status, body) = server
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, Status::OK, "{body}");

    let calls = receiver.wait_for_calls(1).await;
    assert_eq!(calls[0].header("kiln-event"), "batch.completed");
    let batch = &calls[0].json()["batch"];
    assert_eq!(batch["id"], id.as_str());
    assert_eq!(batch["done"], true);
    assert_eq!(batch["by_verdict"]["cancelled"], 2, "{batch}");
}
