//! Several `kiln serve` nodes on one PostgreSQL database (`kiln serve --db postgres://…`): one
//! queue, whichever node a job is submitted to, run by whichever node has a free worker, seen
//! live from every node, cancelled through any node, and finished by another node when the one
//! running it is killed. Each test gets a database of its own on the tests' server (`pg.rs`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::pg::TestDb;
use crate::streams::Sse;
use crate::util::{Server, assert_valid_history, job_processes, sh};

/// A node on `db` named `node`, with `workers` workers (0: API only) and these extra flags.
async fn node(db: &TestDb, node: &str, workers: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--db", &db.url, "--node-id", node, "--workers", workers];
    args.extend_from_slice(extra);
    Server::start_with(&args).await
}

/// The node that ran the attempt of a `job.started` event, from its worker's name.
fn ran_on(events: &[Value], attempt: u64) -> String {
    let started = events
        .iter()
        .find(|e| e["type"] == "job.started" && e["attempt"] == attempt)
        .unwrap_or_else(|| panic!("no start of attempt {attempt}: {events:?}"));
    let worker = started["data"]["worker"].as_str().expect("worker");
    worker.split('/').next().expect("node").to_owned()
}

#[tokio::test]
async fn a_job_submitted_to_an_api_node_runs_on_a_worker_node_and_every_node_sees_it_live() {
    let Some(db) = TestDb::create("cluster_one_queue").await else {
        return;
    };
    let api = node(&db, "api", "0", &[]).await;
    let worker = node(&db, "worker", "2", &[]).await;
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["backend"], "postgres");
    assert!(
        ready.get("database").is_none(),
        "no SQLite pragmas: {ready}"
    );

    let mut feed = Sse::open(&worker, "/v1/events", &[]).await;
    let id = api.submit(sh("read line; echo \"got $line\"")).await;
    let job = api.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let events = api.events(&id).await;
    assert_valid_history(&events);
    assert_eq!(
        ran_on(&events, 1),
        "worker",
        "an API-only node runs nothing"
    );

    // The worker node's feed carried the job's whole history, committed through the other
    // node, in the order of its ids.
    let streamed = feed
        .until(|item| item.json()["job_id"] == id.as_str() && item.event() == Some("job.succeeded"))
        .await;
    let streamed: Vec<i64> = streamed
        .iter()
        .filter(|item| item.json()["job_id"] == id.as_str())
        .filter_map(|item| item.id())
        .collect();
    let stored: Vec<i64> = events
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(streamed, stored);
    // Either node answers for the job.
    let (_, seen) = worker.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(seen["status"], "succeeded");
}

#[tokio::test]
async fn a_cancel_through_one_node_stops_the_run_on_another_within_a_second_or_two() {
    let Some(db) = TestDb::create("cluster_cancel").await else {
        return;
    };
    let api = node(&db, "api", "0", &[]).await;
    // A long lease: its renewals, every 20 s, cannot be what stops the run.
    let worker = node(&db, "worker", "1", &["--lease-secs", "60"]).await;
    let id = api.submit(sh("echo started; sleep 60")).await;
    api.running(&id).await;
    let started = Instant::now();
    while job_processes(worker.job_uids()).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let cancelled = Instant::now();
    let (status, body) = api.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    while !job_processes(worker.job_uids()).is_empty() {
        assert!(
            cancelled.elapsed() < Duration::from_secs(3),
            "the run on the other node still runs {:?} after the cancel",
            cancelled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = api.finished(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let events = api.events(&id).await;
    assert_valid_history(&events);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "job.cancelled")
            .count(),
        1,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_job_whose_node_is_killed_mid_run_is_finished_by_another_node_once() {
    let Some(db) = TestDb::create("cluster_kill9").await else {
        return;
    };
    let lease = ["--lease-secs", "2"];
    let first = node(&db, "first", "1", &lease).await;
    let id = first.submit(sh("sleep 1; echo done")).await;
    first.running(&id).await;
    // Only now does the second node start: the first one certainly holds the job.
    let second = node(&db, "second", "1", &lease).await;
    drop(first.kill9());

    let job = second.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "done\n");
    let events = second.events(&id).await;
    assert_valid_history(&events);
    assert_eq!(ran_on(&events, 1), "first");
    assert_eq!(ran_on(&events, 2), "second");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "job.succeeded")
            .count(),
        1,
        "{events:?}"
    );
}

/// The node leading the maintenance now, as the `leader` row names it (`node/instance/`).
async fn leader(db: &TestDb) -> Option<String> {
    let client = db.client().await;
    let row = client
        .query_opt(
            "SELECT node FROM leader WHERE expires_at > \
             (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .expect("read the leader");
    row.map(|row| row.get(0))
}

/// Polls until some node leads, and returns its node id.
async fn await_leader(db: &TestDb, not: Option<&str>) -> String {
    let since = Instant::now();
    loop {
        if let Some(node) = leader(db).await {
            let node = node.split('/').next().expect("node id").to_owned();
            if Some(node.as_str()) != not {
                return node;
            }
        }
        assert!(since.elapsed() < Duration::from_secs(20), "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_node_leads_the_maintenance_and_another_takes_over_when_it_stops_or_dies() {
    let Some(db) = TestDb::create("cluster_leader").await else {
        return;
    };
    let lease = ["--lease-secs", "2"];
    let mut nodes = Vec::new();
    for name in ["one", "two", "three"] {
        nodes.push((name, node(&db, name, "1", &lease).await));
    }
    let first = await_leader(&db, None).await;
    // The term is extended, not handed around: the same node still leads a term later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(await_leader(&db, None).await, first);

    // A leader that stops cleanly gives the row up, and another node takes over at once,
    // well within a term.
    let take = |nodes: &mut Vec<(&str, Server)>, name: &str| {
        let index = nodes.iter().position(|(n, _)| *n == name).expect("a node");
        nodes.remove(index).1
    };
    let stopped = Instant::now();
    let (status, _) = take(&mut nodes, &first).terminate();
    assert!(status.success());
    let second = await_leader(&db, Some(&first)).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );

    // One that dies holds the row until its term runs out; then the last node takes over.
    drop(take(&mut nodes, &second).kill9());
    let third = await_leader(&db, Some(&second)).await;
    assert_eq!(third, nodes[0].0);
}

#[tokio::test]
async fn a_node_cut_off_from_the_database_stops_its_run_before_its_lease_ends_and_another_finishes_it()
 {
    let Some(db) = TestDb::create("cluster_cut_off").await else {
        return;
    };
    // The node to cut off logs in as a role of its own, which the server can then refuse and
    // disconnect while the other node goes on.
    let role = format!("{}_cut", db.url.rsplit('/').next().expect("database name"));
    let admin = db.client().await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
        .await
        .expect("create the role");
    let mut url = url::Url::parse(&db.url).expect("the test database's URL");
    url.set_username(&role).expect("a user name");
    let lease = ["--lease-secs", "3"];
    let cut = Server::start_with(&[
        "--db",
        url.as_str(),
        "--node-id",
        "cut",
        "--workers",
        "1",
        lease[0],
        lease[1],
    ])
    .await;
    let id = cut.submit(sh("echo started; sleep 8; echo done")).await;
    cut.running(&id).await;
    let other = node(&db, "other", "1", &lease).await;

    let cut_at = Instant::now();
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} NOLOGIN;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        ))
        .await
        .expect("cut the node off");
    // Its run stops before the lease it last renewed can end, so that it never runs beside
    // the attempt the other node starts once the lease has run out.
    while !job_processes(cut.job_uids()).is_empty() {
        let (_, job) = other.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(
            job["attempt"], 1,
            "a second attempt began while the cut-off node still ran the first: {job}"
        );
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "the cut-off node still runs the job {:?} after losing the database",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let job = other.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let events = other.events(&id).await;
    assert_valid_history(&events);
    assert_eq!(ran_on(&events, 1), "cut");
    assert_eq!(ran_on(&events, 2), "other");
    // The cut-off node's end of its attempt never landed: the attempt only began, and was
    // rescued.
    let first: Vec<&Value> = events
        .iter()
        .filter(|e| e["attempt"] == 1)
        .map(|e| &e["type"])
        .collect();
    assert_eq!(first, ["job.started", "job.retrying"], "{events:?}");
    admin
        .batch_execute(&format!("DROP OWNED BY {role}"))
        .await
        .ok();
    drop(cut);
}

/// A token for tenant `team`, made by `kiln token create` on the database's URL.
fn team_token(db: &TestDb) -> String {
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["token", "create", "--tenant", "team", "--db", &db.url])
        .output()
        .expect("run kiln token");
    assert!(made.status.success(), "{made:?}");
    String::from_utf8(made.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn tokens_made_with_kiln_token_on_the_database_url_hold_on_every_node() {
    let Some(db) = TestDb::create("cluster_tokens").await else {
        return;
    };
    let token = team_token(&db);
    let token = token.as_str();
    let nodes = [
        node(&db, "one", "1", &[]).await,
        node(&db, "two", "0", &[]).await,
    ];
    let job = sh("echo hi");
    for server in &nodes {
        let (status, body) = server.post("/v1/jobs", &job).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let response = reqwest::Client::new()
            .post(format!("{}/v1/jobs", server.url))
            .bearer_auth(token)
            .json(&job)
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["token", "list", "--db", &db.url])
        .output()
        .expect("run kiln token list");
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("team"));
}

#[tokio::test]
async fn a_token_rate_limit_holds_for_the_cluster_not_for_each_node() {
    let Some(db) = TestDb::create("cluster_rates").await else {
        return;
    };
    let token = team_token(&db);
    let token = token.as_str();
    // One request every ten seconds, four at once: the requests below take far less than ten
    // seconds, so the cluster must let exactly four through, however they are spread.
    let limit = ["--token-rate", "0.1", "--token-burst", "4"];
    let nodes = [
        node(&db, "one", "0", &limit).await,
        node(&db, "two", "0", &limit).await,
        node(&db, "three", "0", &limit).await,
    ];
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for i in 0..12 {
        let server = &nodes[i % nodes.len()];
        let response = http
            .get(format!("{}/v1/jobs", server.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("list jobs");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        answers.push((response.status(), retry_after));
    }
    let admitted = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(admitted, 4, "the burst is the cluster's: {answers:?}");
    assert!(
        answers[..4].iter().all(|(s, _)| *s == StatusCode::OK),
        "the first four pass, on three different nodes: {answers:?}"
    );
    for (status, retry_after) in &answers[4..] {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{answers:?}");
        assert!(
            retry_after.is_some_and(|s| (1..=10).contains(&s)),
            "told when to come back, within one request's time: {answers:?}"
        );
    }
    let client = db.client().await;
    let tokens: f64 = client
        .query_one("SELECT tokens FROM rate_buckets", &[])
        .await
        .expect("one bucket, for the one token")
        .get(0);
    assert!(tokens < 1.0, "the shared bucket is spent: {tokens}");
}

#[tokio::test]
async fn a_suite_submitted_to_one_node_is_run_by_two_worker_nodes_and_completes_once() {
    let Some(db) = TestDb::create("cluster_suite").await else {
        return;
    };
    let api = node(&db, "api", "0", &[]).await;
    let _workers = [
        node(&db, "left", "2", &[]).await,
        node(&db, "right", "2", &[]).await,
    ];
    let cases: Vec<Value> = (0..40)
        .map(|i| {
            json!({"name": format!("case {i}"), "group": format!("p{}", i % 4),
                   "stdin": i.to_string(),
                   "expected_output": if i % 10 == 9 { "wrong".to_owned() } else { i.to_string() }})
        })
        .collect();
    let suite = json!({"runtime": "sh", "code": "read n; echo $n", "pass_at_k": [1],
                       "cases": cases});
    let submitted = crate::batches::submit(&api, &suite).await;
    let id = submitted["id"].as_str().expect("batch id");
    let batch = crate::batches::finished(&api, id).await;
    assert_eq!(batch["done"], true, "{batch}");
    assert_eq!(batch["progress"]["total"], 40, "{batch}");
    assert_eq!(batch["passed"], 36, "{batch}");
    let (status, groups) = api.get(&format!("/v1/batches/{id}/groups")).await;
    assert_eq!(status, StatusCode::OK, "{groups}");
    let (_, events) = api
        .get(&format!("/v1/batches/{id}/events?limit=1000"))
        .await;
    let events = events["events"].as_array().expect("events").clone();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "batch.completed")
            .count(),
        1,
        "one completion"
    );
    let nodes: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e["type"] == "job.started")
        .map(|e| {
            e["data"]["worker"]
                .as_str()
                .expect("worker")
                .split('/')
                .next()
                .expect("node")
                .to_owned()
        })
        .collect();
    assert!(
        nodes.iter().all(|n| n == "left" || n == "right"),
        "{nodes:?}"
    );
}

// Two threads: the submitter goes on while the test waits for the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_one_snapshot_that_pg_restore_brings_back_while_the_node_runs_on() {
    let (Some(db), Some(restored)) = (
        TestDb::create("cluster_backup").await,
        TestDb::create("cluster_restored").await,
    ) else {
        return;
    };
    let server = node(&db, "solo", "2", &[]).await;
    let kept = server.submit(sh("echo kept")).await;
    server.finished(&kept).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (submitter, accepted, _) =
        crate::ops::keep_submitting(&server, std::sync::Arc::clone(&stop));
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dump = server.dir.path().join("kiln.dump");
    let dump_arg = dump.to_str().expect("utf-8 path");
    let out = server.kiln(&["backup", dump_arg, "--db", &db.url, "--json"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    submitter.await.expect("submitter");
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert!(report["jobs"].as_i64() > Some(1), "{report}");

    let again = server.kiln(&["backup", dump_arg, "--db", &db.url]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );

    let bin = crate::pg::postgres_bin().expect("PostgreSQL's programs");
    let restore = std::process::Command::new(bin.join("pg_restore"))
        .args(["--no-owner", "--dbname", &restored.url, dump_arg])
        .output()
        .expect("run pg_restore");
    assert!(restore.status.success(), "{restore:?}");
    let copy = restored.client().await;
    for (table, reported) in [("jobs", &report["jobs"]), ("events", &report["events"])] {
        let n: i64 = copy
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(
            Some(n),
            reported.as_i64(),
            "{table}: the dump is the snapshot counted"
        );
    }
    let back = node(&restored, "restored", "0", &[]).await;
    let job = back.get(&format!("/v1/jobs/{kept}")).await.1;
    assert_eq!(job["stdout"], "kept\n", "{job}");
}

#[tokio::test]
async fn the_doctor_reads_a_postgres_database_without_changing_it() {
    let Some(db) = TestDb::create("cluster_doctor").await else {
        return;
    };
    let work = tempfile::TempDir::new().expect("a work root");
    let doctor = |url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["doctor", "--db", url, "--work-root"])
            .arg(work.path())
            .args(["--sandbox-uid-base", &crate::ops::doctor_uid_base(2)])
            .output()
            .expect("run kiln doctor");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), stdout)
    };

    let (_, shown) = doctor(&db.url);
    assert!(shown.contains("no kiln schema yet"), "{shown}");
    let client = db.client().await;
    let migrated: bool = client
        .query_one("SELECT to_regclass('kiln_migrations') IS NOT NULL", &[])
        .await
        .expect("ask")
        .get(0);
    assert!(!migrated, "the doctor created nothing");

    let server = node(&db, "one", "1", &[]).await;
    let (code, shown) = doctor(&db.url);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("schema version 6"), "{shown}");
    assert!(shown.contains("node \"one\" (instance "), "{shown}");
    assert!(
        !shown.contains("database directory"),
        "no file to look at: {shown}"
    );
    drop(server);

    let missing = db.url.replace("kiln_test_", "kiln_missing_");
    let (code, shown) = doctor(&missing);
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("does not exist"),
        "in the server's words: {shown}"
    );
}
