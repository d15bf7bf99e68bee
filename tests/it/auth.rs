//! API tokens and tenants over the real server: with no token a loopback server is open; once a
//! token exists every request needs one; a tenant sees and cancels only its own jobs, batches,
//! events and streams (another tenant's id answers 404, exactly as an unknown one), an admin
//! sees all; a server on another address refuses to start without tokens unless `--insecure`.

use std::process::Command;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;

use crate::util::{Server, decode, sh};

/// A client that sends one token (or none).
pub struct As {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl As {
    pub fn new(server: &Server, token: Option<&str>) -> As {
        As {
            url: server.url.clone(),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        decode(
            self.request(reqwest::Method::GET, path)
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = self.request(reqwest::Method::POST, path).json(body);
        decode(request.send().await.expect("POST")).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        body: &Value,
        header: (&str, &str),
    ) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .header(header.0, header.1)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn submit(&self, job: Value) -> String {
        let (status, body) = self.post("/v1/jobs", &job).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// Waits (long-poll) until the job is terminal and returns it.
    pub async fn finished(&self, id: &str) -> Value {
        for _ in 0..12 {
            let (status, job) = self.get(&format!("/v1/jobs/{id}?wait=10")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if crate::util::is_terminal(&job["status"]) {
                return job;
            }
        }
        panic!("job {id} did not finish in 2 minutes");
    }

    /// An event stream's status and, if it is 200, what it sent within `listen`.
    async fn stream(&self, path: &str, listen: Duration) -> (StatusCode, String) {
        let mut response = self
            .request(reqwest::Method::GET, path)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET stream");
        let status = response.status();
        let mut text = String::new();
        if status == StatusCode::OK {
            let deadline = tokio::time::Instant::now() + listen;
            while let Ok(Ok(Some(chunk))) =
                tokio::time::timeout_at(deadline, response.chunk()).await
            {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        (status, text)
    }
}

/// `kiln token ...` on the database in `dir`.
pub fn kiln_token(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("token")
        .args(args)
        .arg("--db")
        .arg(crate::util::db_arg_in(dir))
        .output()
        .expect("run kiln token")
}

/// Makes a token and returns it. Where `dir` holds no database yet, a first start of a server
/// makes it first, as an operator's does: `kiln token` never creates one.
pub fn create_token(dir: &std::path::Path, tenant: &str, admin: bool) -> String {
    if !crate::util::on_postgres() && !dir.join("kiln.db").exists() {
        serve_on(dir, "127.0.0.1:0", &[]).expect("a first start makes the database");
    }
    let mut args = vec!["create", "--tenant", tenant];
    if admin {
        args.push("--admin");
    }
    let out = kiln_token(dir, &args);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).expect("utf-8");
    token.trim().to_owned()
}

/// A server whose database already holds tokens for tenants `acme` and `globex` and an admin.
async fn server_with_tokens() -> (Server, String, String, String) {
    let dir = TempDir::new().expect("temp dir");
    let acme = create_token(dir.path(), "acme", false);
    let globex = create_token(dir.path(), "globex", false);
    let admin = create_token(dir.path(), "ops", true);
    (Server::start_in(dir, &[]).await, acme, globex, admin)
}

fn not_found(status: StatusCode, body: &Value, code: &str) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn with_no_token_a_loopback_server_is_open_to_requests_without_one() {
    let server = Server::start().await;
    let open = As::new(&server, None);
    let id = open.submit(sh("echo open")).await;
    assert_eq!(server.finished(&id).await["stdout"], "open\n");
    let (status, me) = open.get("/v1/tenant").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"tenant": null, "admin": true}));
}

#[tokio::test]
async fn once_a_token_exists_requests_without_a_valid_one_are_refused_with_401() {
    let (server, acme, _, _) = server_with_tokens().await;
    for token in [None, Some("kiln_0000"), Some(&acme[..acme.len() - 1])] {
        let response = reqwest::Client::new().get(format!("{}/v1/jobs", server.url));
        let response = match token {
            Some(t) => response.bearer_auth(t),
            None => response,
        }
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    // A refused submit stores nothing.
    let (status, _) = As::new(&server, None).post("/v1/jobs", &sh("true")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.count("SELECT count(*) FROM jobs"), 0);
    // Probes need no token.
    let (status, _) = As::new(&server, None).get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, me) = As::new(&server, Some(&acme)).get("/v1/tenant").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["admin"], false);
}

#[tokio::test]
async fn the_metrics_cover_every_tenant_so_only_an_admin_token_reads_them() {
    let (server, acme, _, admin) = server_with_tokens().await;
    let scrape = |token: Option<String>| {
        let request = reqwest::Client::new().get(format!("{}/metrics", server.url));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.expect("GET /metrics") }
    };
    assert_eq!(scrape(None).await.status(), StatusCode::UNAUTHORIZED);
    let tenant = scrape(Some(acme)).await;
    assert_eq!(tenant.status(), StatusCode::FORBIDDEN);
    let body: Value = tenant.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let admin = scrape(Some(admin)).await;
    assert_eq!(admin.status(), StatusCode::OK);
    let text = admin.text().await.expect("text");
    assert!(text.contains("kiln_jobs{"), "{text}");
}

#[tokio::test]
async fn a_tenant_sees_and_cancels_only_its_own_jobs_and_another_tenants_ids_answer_404() {
    let (server, acme, globex, admin) = server_with_tokens().await;
    let (acme, globex, admin) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
        As::new(&server, Some(&admin)),
    );
    let theirs = acme.submit(sh("sleep 30")).await;
    let mine = globex.submit(sh("echo mine")).await;
    globex.finished(&mine).await;

    // Every way to name acme's job answers globex as if it did not exist.
    let unknown = "01900000-0000-7000-8000-000000000000";
    for path in [
        "/v1/jobs/{}",
        "/v1/jobs/{}?wait=1",
        "/v1/jobs/{}/events",
        "/eval-status/{}",
    ] {
        let (status, body) = globex.get(&path.replace("{}", &theirs)).await;
        not_found(status, &body, "job_not_found");
        let (_, of_unknown) = globex.get(&path.replace("{}", unknown)).await;
        assert_eq!(body, of_unknown, "{path}: no different from an unknown id");
    }
    let (status, body) = globex
        .post(&format!("/v1/jobs/{theirs}/cancel"), &json!({}))
        .await;
    not_found(status, &body, "job_not_found");
    let (status, _) = globex
        .stream(&format!("/v1/jobs/{theirs}/events"), Duration::ZERO)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor as a live stream");

    // Listings and the feed hold globex's own jobs and events only.
    let (_, list) = globex.get("/v1/jobs").await;
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    for feed in ["/v1/events", "/events"] {
        let (_, feed) = globex.get(feed).await;
        let events = feed["events"].as_array().unwrap();
        assert!(!events.is_empty());
        assert!(
            events.iter().all(|e| e["job_id"] == mine.as_str()),
            "{feed}"
        );
    }

    // The admin sees both, in its listing and in the global feed.
    let (status, job) = admin.get(&format!("/v1/jobs/{theirs}")).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let (_, list) = admin.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let (_, feed) = admin.get("/v1/events").await;
    let tenants: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["tenant"].as_str())
        .collect();
    assert!(tenants.contains(&"acme") && tenants.contains(&"globex"));

    // Its owner cancels it; the job was never touched by globex's attempts.
    let (status, job) = acme
        .post(&format!("/v1/jobs/{theirs}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled");
}

#[tokio::test]
async fn a_tenants_live_feed_carries_its_own_events_and_none_of_anothers() {
    let (server, acme, globex, _) = server_with_tokens().await;
    let watcher = As::new(&server, Some(&globex));
    let watching =
        tokio::spawn(async move { watcher.stream("/v1/events", Duration::from_secs(4)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let theirs = As::new(&server, Some(&acme))
        .submit(sh("echo theirs"))
        .await;
    let own = As::new(&server, Some(&globex))
        .submit(sh("echo mine"))
        .await;
    let (status, text) = watching.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(&own), "its own job's events arrive: {text}");
    assert!(!text.contains(&theirs), "acme's never do: {text}");
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_batches_their_cases_reports_and_streams() {
    let (server, acme, globex, admin) = server_with_tokens().await;
    let (acme, globex, admin) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
        As::new(&server, Some(&admin)),
    );
    let suite = json!({"runtime": "sh", "code": "sleep 30",
                       "cases": [{"name": "one"}, {"name": "two"}]});
    let (status, batch) = acme.post("/v1/batches", &suite).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
    let id = batch["id"].as_str().unwrap();
    let case = batch["cases"][0]["job_id"].as_str().unwrap();

    for path in ["", "?wait=1", "/cases", "/events", "/report"] {
        let (status, body) = globex.get(&format!("/v1/batches/{id}{path}")).await;
        not_found(status, &body, "batch_not_found");
    }
    let (status, body) = globex
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    not_found(status, &body, "batch_not_found");
    let (status, _) = globex
        .stream(&format!("/v1/batches/{id}/events"), Duration::ZERO)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = globex.get(&format!("/v1/jobs/{case}")).await;
    not_found(status, &body, "job_not_found");

    let (status, _) = admin.get(&format!("/v1/batches/{id}/cases")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = acme.get(&format!("/v1/jobs/{case}")).await;
    assert_eq!(status, StatusCode::OK, "a case is its batch's tenant's");
    let (status, done) = acme
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
}

#[tokio::test]
async fn idempotency_keys_are_each_tenants_own() {
    let (server, acme, globex, _) = server_with_tokens().await;
    let (acme, globex) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
    );
    let key = ("idempotency-key", "build-1");
    let first = acme.post_with("/v1/jobs", &sh("echo a"), key).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // The same key from another tenant, with another request: its own job, not a 409 that
    // would name acme's.
    let other = globex.post_with("/v1/jobs", &sh("echo b"), key).await;
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    let other: Value = other.json().await.unwrap();
    assert_ne!(first["id"], other["id"]);
    let again = acme.post_with("/v1/jobs", &sh("echo a"), key).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
}

#[tokio::test]
async fn a_token_made_or_revoked_while_the_server_runs_takes_effect_within_a_second() {
    let server = Server::start().await;
    let token = create_token(server.dir.path(), "acme", false);
    let anonymous = As::new(&server, None);
    let acme = As::new(&server, Some(&token));
    let became = poll_status(&anonymous, StatusCode::UNAUTHORIZED).await;
    assert!(became, "the first token closes the open server");
    assert_eq!(acme.get("/v1/jobs").await.0, StatusCode::OK);

    let listed = kiln_token(server.dir.path(), &["--json", "list"]);
    let tokens: Value = serde_json::from_slice(&listed.stdout).expect("json list");
    let id = tokens[0]["id"].as_i64().unwrap();
    let revoked = kiln_token(server.dir.path(), &["revoke", &id.to_string()]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(
        poll_status(&acme, StatusCode::UNAUTHORIZED).await,
        "a revoked token is refused"
    );
    // Revoking every token does not open the server again.
    assert_eq!(anonymous.get("/v1/jobs").await.0, StatusCode::UNAUTHORIZED);
}

/// True once `GET /v1/jobs` answers `want`, within 3 s.
async fn poll_status(client: &As, want: StatusCode) -> bool {
    for _ in 0..30 {
        if client.get("/v1/jobs").await.0 == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_database_keeps_only_a_hash_of_each_token_and_the_list_never_shows_one() {
    let dir = TempDir::new().unwrap();
    let token = create_token(dir.path(), "acme", true);
    assert!(token.starts_with("kiln_") && token.len() == 69, "{token}");
    let conn = rusqlite::Connection::open(dir.path().join("kiln.db")).unwrap();
    let (hash, prefix, admin): (String, String, bool) = conn
        .query_row("SELECT hash, prefix, admin FROM tokens", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let expected: String = <Sha256 as sha2::Digest>::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hash, expected);
    assert!(token.starts_with(&prefix) && prefix.len() == 13);
    assert!(admin);
    let dump = Command::new("sqlite3")
        .arg(dir.path().join("kiln.db"))
        .arg(".dump")
        .output()
        .expect("sqlite3");
    assert!(!String::from_utf8_lossy(&dump.stdout).contains(&token));

    let list = kiln_token(dir.path(), &["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("acme") && text.contains(&prefix), "{text}");
    assert!(!text.contains(&token), "{text}");
}

/// Starts `kiln serve` in `dir` listening on `listen` with `extra` flags, and stops it once it
/// listens: `Ok` then, else how it stopped first.
fn serve_on(dir: &std::path::Path, listen: &str, extra: &[&str]) -> Result<(), String> {
    crate::util::serve_until_listening(
        &crate::util::db_arg_in(dir),
        &dir.join("work"),
        listen,
        extra,
    )
}

#[tokio::test]
async fn a_server_on_another_address_than_loopback_refuses_to_start_without_tokens_unless_insecure()
{
    let dir = TempDir::new().unwrap();
    let refused = serve_on(dir.path(), "0.0.0.0:0", &[]).expect_err("must refuse");
    assert!(
        refused.contains("--insecure") && refused.contains("kiln token create"),
        "{refused}"
    );
    serve_on(dir.path(), "0.0.0.0:0", &["--insecure"]).expect("starts with --insecure");
    create_token(dir.path(), "acme", false);
    serve_on(dir.path(), "0.0.0.0:0", &[]).expect("starts once a token exists");
}

/// A receiver for one webhook call: its headers and body.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((headers, body));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn a_tenants_webhook_calls_are_signed_with_its_own_key_which_it_reads_with_its_token() {
    let (server, acme, globex, _) = server_with_tokens().await;
    let (acme, globex) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
    );
    let (_, acme_me) = acme.get("/v1/tenant").await;
    let (_, globex_me) = globex.get("/v1/tenant").await;
    let key = acme_me["webhook_secret"]
        .as_str()
        .expect("a key")
        .to_owned();
    assert_eq!(key.len(), 64);
    assert_ne!(globex_me["webhook_secret"], acme_me["webhook_secret"]);

    let (url, mut calls) = receiver().await;
    acme.submit(json!({"runtime": "sh", "code": "echo hi", "callback_url": url}))
        .await;
    let (headers, body) = tokio::time::timeout(Duration::from_secs(60), calls.recv())
        .await
        .expect("a call within a minute")
        .expect("a call");
    let signature = headers["kiln-signature"].to_str().unwrap();
    let (t, v1) = signature
        .split_once(",v1=")
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1)))
        .expect("t=...,v1=...");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "signed with acme's key");
}

#[tokio::test]
async fn batch_and_job_listings_hold_the_callers_rows_and_only_an_admin_picks_a_tenant() {
    let (server, acme, globex, admin) = server_with_tokens().await;
    let (acme, globex, admin) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
        As::new(&server, Some(&admin)),
    );
    let suite = json!({"runtime": "sh", "code": "true", "cases": [{}]});
    let (_, mine) = acme.post("/v1/batches", &suite).await;
    let (_, theirs) = globex.post("/v1/batches", &suite).await;
    let listed = |page: &Value, list: &str| -> Vec<Value> {
        page[list]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|row| row["id"].clone())
            .collect()
    };
    let (status, page) = acme.get("/v1/batches").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(listed(&page, "batches"), [mine["id"].clone()]);
    let (_, page) = acme.get("/v1/jobs?order=newest").await;
    assert_eq!(listed(&page, "jobs"), [mine["cases"][0]["job_id"].clone()]);

    let (status, body) = acme.get("/v1/batches?tenant=globex").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = acme.get("/v1/jobs?tenant=acme").await;
    assert_eq!(status, StatusCode::OK, "its own tenant may be named");

    let (_, page) = admin.get("/v1/batches").await;
    assert_eq!(
        listed(&page, "batches"),
        [theirs["id"].clone(), mine["id"].clone()]
    );
    let (_, page) = admin.get("/v1/batches?tenant=globex").await;
    assert_eq!(listed(&page, "batches"), [theirs["id"].clone()]);
    for name in ["", "no/such", &"x".repeat(65)] {
        let (status, body) = admin.get(&format!("/v1/jobs?tenant={name}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "tenant={name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{body}");
    }
}

#[tokio::test]
async fn the_client_without_a_token_is_told_how_to_pass_one() {
    let (server, acme, _, _) = server_with_tokens().await;
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["list", "--url", &server.url])
        .env_remove("KILN_TOKEN")
        .output()
        .expect("run kiln");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("pass --token or set KILN_TOKEN"),
        "{stderr}"
    );
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["list", "--url", &server.url])
        .env("KILN_TOKEN", &acme)
        .output()
        .expect("run kiln");
    assert!(listed.status.success(), "{listed:?}");
}
