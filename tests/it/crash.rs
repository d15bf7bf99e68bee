//! The crash loop: under a steady mixed load (single jobs, suites, cancels, webhooks to a local
//! receiver) a server is killed with SIGKILL at random moments and restarted, cycle after cycle.
//! Afterwards every promise is checked from the database and the API: each `202` names a job or
//! suite that ended exactly once, each job along a valid path of the state machine, no job ran two
//! attempts at once, every acknowledged cancel ended `cancelled`, every webhook was delivered, and
//! no sandboxed process outlived its job or its server.
//!
//! It runs in two shapes, with one load generator and one checker: a single server on its SQLite
//! file, and a cluster of three nodes on one PostgreSQL database (an API-only node and two with
//! workers), the load spread over all three APIs, a random node killed every few seconds. A client
//! whose request to a killed node got no answer tries another node, and only what was answered
//! `202` counts as promised.
//!
//! `cargo test` runs short loops; `scripts/crash-test` runs either with many cycles
//! (`KILN_CRASH_CYCLES`, `KILN_CRASH_CLUSTER_CYCLES`). It lives with the tests rather than in an
//! example so that it drives the server through the same harness and history checker as every
//! other test, and no production code carries test-only logic.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pg::TestDb;
use crate::util::{
    HistoryFault, Server, check_history, is_terminal, job_processes, processes_of_uids,
};
use crate::webhooks::Receiver;

/// Cycles `cargo test` runs on SQLite: enough for kills to land in every phase of a job's life,
/// short enough for CI on two cores.
const SHORT_CYCLES: u32 = 8;

/// Cycles `cargo test` runs on the cluster, whose cycles are longer (a node may stay down past
/// its lease).
const SHORT_CLUSTER_CYCLES: u32 = 6;

/// Flags of every server in the loop: short webhook timeouts so that a call cut off by a kill is
/// retried within seconds, not minutes.
const ARGS: [&str; 6] = [
    "--webhook-timeout-secs",
    "1",
    "--webhook-retry-base-ms",
    "100",
    "--lease-secs",
    "5",
];

/// The lease above: a node down for longer has its runs taken back by the leader's rescuer.
const LEASE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn every_promise_holds_across_repeated_kill_9_under_load() {
    let cycles = cycles("KILN_CRASH_CYCLES", SHORT_CYCLES);
    let mut args = ARGS.to_vec();
    args.extend(["--workers", "2"]);
    let server = Server::start_with(&args).await;
    let store = Store::Sqlite(server.db_path());
    let pace = Pace {
        // From just after startup (rescue, first claims) to well into a busy run.
        kill_after: 50..1500,
        // An operator's restart at once: the new server takes back its own runs as it starts.
        down: |_| Duration::ZERO,
    };
    crash_loop("crash loop", vec![server], store, pace, cycles).await;
}

#[tokio::test]
async fn every_promise_holds_across_a_cluster_whose_nodes_are_killed_in_turn() {
    let Some(db) = TestDb::create("crash_cluster").await else {
        return;
    };
    let cycles = cycles("KILN_CRASH_CLUSTER_CYCLES", SHORT_CLUSTER_CYCLES);
    let mut nodes = Vec::new();
    for (name, workers) in [("api", "0"), ("left", "2"), ("right", "2")] {
        let mut args = ARGS.to_vec();
        args.extend(["--db", &db.url, "--node-id", name, "--workers", workers]);
        nodes.push(Server::start_with(&args).await);
    }
    let pace = Pace {
        kill_after: 1000..3000,
        // A third of the killed nodes stay down past their lease, so that another node's
        // rescuer takes their runs back (and a killed leader's term runs out first); the others
        // come back at once and take back their own.
        down: |rng| {
            if rng.below(3) == 0 {
                LEASE + Duration::from_millis(500 + rng.below(1500))
            } else {
                Duration::from_millis(rng.below(500))
            }
        },
    };
    let store = Store::Postgres(db.client().await);
    crash_loop("cluster crash loop", nodes, store, pace, cycles).await;
}

fn cycles(var: &str, short: u32) -> u32 {
    env_u64(var).map_or(short, |c| c as u32)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// How the loop kills.
struct Pace {
    /// Milliseconds from one restart to the next kill.
    kill_after: Range<u64>,
    /// How long the killed node stays down before its restart.
    down: fn(&mut Rng) -> Duration,
}

/// Puts the load on `nodes`, kills a random one `cycles` times, then drains and checks every
/// promise, printing the figures under `name` and failing on any broken one.
async fn crash_loop(name: &str, mut nodes: Vec<Server>, store: Store, pace: Pace, cycles: u32) {
    let seed = env_u64("KILN_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!(
        "{name}: {cycles} cycles on {} node(s), seed {seed} (KILN_CRASH_SEED replays it)",
        nodes.len()
    );
    let began = Instant::now();
    let receiver = Receiver::start().await;
    // Restarts keep each node's address, so the clients' list of them holds throughout.
    let endpoints: Arc<[String]> = nodes.iter().map(|n| n.url.clone()).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));

    let mut load = tokio::task::JoinSet::new();
    for client in 0..2 {
        load.spawn(submit_loop(
            Arc::clone(&endpoints),
            Arc::clone(&ledger),
            Arc::clone(&stop),
            Arc::clone(&counter),
            receiver.url(),
            Rng(seed.wrapping_add(client + 1) | 1),
        ));
    }
    load.spawn(cancel_loop(
        Arc::clone(&endpoints),
        Arc::clone(&ledger),
        Arc::clone(&stop),
        Rng(seed.wrapping_mul(3) | 1),
    ));

    let mut rng = Rng(seed);
    let mut orphans = 0;
    let mut kills = vec![0; nodes.len()];
    let mut past_lease = 0;
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(
            pace.kill_after.start + rng.below(pace.kill_after.end - pace.kill_after.start),
        ))
        .await;
        let victim = rng.below(nodes.len() as u64) as usize;
        let killed = nodes.remove(victim).kill9_for_restart();
        kills[victim] += 1;
        let down = (pace.down)(&mut rng);
        if down > LEASE {
            past_lease += 1;
        }
        let back = Instant::now() + down;
        orphans += surviving_processes(killed.job_uids()).await;
        tokio::time::sleep_until(back.into()).await;
        nodes.insert(victim, killed.restart().await);
    }
    stop.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));

    let report = check(&nodes, &store, &ledger, &receiver).await;
    println!(
        "{name}: cycles {cycles} (kills per node {kills:?}, {past_lease} down past the lease), \
         unanswered requests {}, jobs accepted {} (+{} batches of {} cases), jobs lost {}, \
         double runs {}, rescued {} ({} on another node), invalid histories {}, orphaned processes {orphans}, \
         left running {}, cancels {} (+{} suites), webhooks {} delivered of {} \
         ({} undelivered in the outbox), statuses {:?}, integrity {}, {:.0} s",
        ledger.unanswered,
        ledger.jobs.len(),
        ledger.batches.len(),
        report.cases,
        report.lost.len(),
        report.double_runs.len(),
        report.rescued,
        report.moved,
        report.invalid.len(),
        report.left_running,
        ledger.cancelled.len(),
        ledger.batches_cancelled,
        report.webhooks_delivered,
        report.webhooks_expected,
        report.undelivered,
        report.statuses,
        report.integrity.as_deref().unwrap_or("n/a"),
        began.elapsed().as_secs_f64(),
    );
    assert!(
        ledger.jobs.len() >= cycles as usize,
        "the load kept up: {} jobs",
        ledger.jobs.len()
    );
    assert!(report.rescued >= 1, "some kill found a job running");
    assert!(report.lost.is_empty(), "lost: {:?}", report.lost);
    assert!(report.double_runs.is_empty(), "{:?}", report.double_runs);
    assert!(report.invalid.is_empty(), "{:?}", report.invalid);
    assert!(report.wrong.is_empty(), "{:?}", report.wrong);
    assert_eq!(orphans, 0, "job processes outlived their killed server");
    assert_eq!(report.left_running, 0, "job processes outlived their job");
    assert_eq!(report.webhooks_delivered, report.webhooks_expected);
    assert_eq!(
        report.undelivered, 0,
        "every webhook in the outbox was delivered"
    );
    if let Some(integrity) = &report.integrity {
        assert_eq!(integrity, "ok");
    }
}

/// A job or suite that got its `202`, with what the test expects of it.
#[derive(Clone, Debug)]
struct Accepted {
    id: String,
    /// For a single job, what it prints when it succeeds; `None` for a batch.
    stdout: Option<String>,
    callback: bool,
}

#[derive(Default)]
struct Ledger {
    jobs: Vec<Accepted>,
    batches: Vec<Accepted>,
    /// Jobs whose cancel was answered `200`: they must end `cancelled`.
    cancelled: HashSet<String>,
    /// Suites whose cancel was answered `200`.
    batches_cancelled: usize,
    /// Requests a node did not answer, each then tried on the next node.
    unanswered: usize,
}

/// A small deterministic generator, so that a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Sends a request to a random node and, while no node answers, to the next one, each once. The
/// answer (`None` if none came): one cut off by a kill may or may not have been acted on, so it
/// promises nothing.
async fn send(
    endpoints: &[String],
    ledger: &Mutex<Ledger>,
    rng: &mut Rng,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Option<reqwest::Response> {
    let first = rng.below(endpoints.len() as u64) as usize;
    for i in 0..endpoints.len() {
        let base = &endpoints[(first + i) % endpoints.len()];
        // A node that hangs rather than refuses counts as no answer.
        match request(base).timeout(Duration::from_secs(10)).send().await {
            Ok(response) => return Some(response),
            Err(_) => ledger.lock().expect("ledger").unanswered += 1,
        }
    }
    None
}

/// Submits single jobs and small suites, a third of them with a callback, until told to stop.
/// Only `202`s count; a request no node answered is simply not in the ledger.
async fn submit_loop(
    endpoints: Arc<[String]>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
    hook: String,
    mut rng: Rng,
) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::SeqCst) {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let callback = rng.below(3) == 0;
        let batch = rng.below(8) == 0;
        let tag = format!("job-{n}");
        let mut body = if batch {
            json!({"runtime": "sh", "code": "cat", "cases": [
                {"stdin": "a", "expected_output": "a"},
                {"stdin": "b", "expected_output": "b"},
                {"stdin": "c", "expected_output": "c"}]})
        } else {
            // Some jobs run long enough that kills often find them running.
            let sleep = if rng.below(4) == 0 { "0.4" } else { "0.01" };
            json!({"runtime": "sh", "code": format!("sleep {sleep}; echo {tag}")})
        };
        if callback {
            body["callback_url"] = json!(hook);
            if batch && rng.below(2) == 0 {
                body["callback_each_case"] = json!(true);
            }
        }
        let path = if batch { "/v1/batches" } else { "/v1/jobs" };
        let sent = send(&endpoints, &ledger, &mut rng, |base| {
            http.post(format!("{base}{path}")).json(&body)
        })
        .await;
        if let Some(response) = sent
            && response.status() == 202
            && let Ok(answer) = response.json::<Value>().await
            && let Some(id) = answer["id"].as_str()
        {
            let accepted = Accepted {
                id: id.to_owned(),
                stdout: (!batch).then(|| format!("{tag}\n")),
                callback,
            };
            let mut ledger = ledger.lock().expect("ledger");
            if batch {
                ledger.batches.push(accepted);
            } else {
                ledger.jobs.push(accepted);
            }
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(60))).await;
    }
}

/// Cancels a random accepted job or suite now and then, through any node; for a job, a `200` is
/// a promise that it ends `cancelled`, wherever it runs.
async fn cancel_loop(
    endpoints: Arc<[String]>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
        let batch = rng.below(4) == 0;
        let target = {
            let ledger = ledger.lock().expect("ledger");
            let list = if batch { &ledger.batches } else { &ledger.jobs };
            // The newest: those most likely still queued or running.
            let recent = list.len().saturating_sub(10);
            list.get(recent + rng.below(10) as usize)
                .map(|j| j.id.clone())
        };
        let Some(id) = target else { continue };
        let path = if batch { "batches" } else { "jobs" };
        let sent = send(&endpoints, &ledger, &mut rng, |base| {
            http.post(format!("{base}/v1/{path}/{id}/cancel"))
        })
        .await;
        if let Some(response) = sent
            && response.status() == 200
        {
            let mut ledger = ledger.lock().expect("ledger");
            if batch {
                ledger.batches_cancelled += 1;
            } else {
                ledger.cancelled.insert(id);
            }
        }
    }
}

/// A sandbox's init dies with its server, and its job with it, at both levels: a job sleeping
/// through a `kill -9` of the server is gone within moments. (At level `full`, init's change to
/// the namespace's root cleared its parent-death signal, and the two ran on unsupervised.)
#[tokio::test]
async fn a_running_job_dies_with_its_killed_server() {
    for args in [&[][..], &["--sandbox", "namespaces"][..]] {
        let server = Server::start_with(args).await;
        let id = server
            .submit(
                json!({"runtime": "sh", "code": "exec sleep 30", "limits": {"wall_ms": 60_000}}),
            )
            .await;
        server.running(&id).await;
        let uids = server.job_uids();
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes_of_uids(uids.clone()).is_empty() {
            assert!(Instant::now() < deadline, "the job never ran ({args:?})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _dir = server.kill9();
        assert_eq!(
            surviving_processes(uids).await,
            0,
            "the job outlived its killed server ({args:?})"
        );
    }
}

/// Waits for the killed server's job processes to go, as the kernel tears down their sandboxes;
/// any still alive after that ran on with nobody holding their job.
async fn surviving_processes(uids: Range<u32>) -> usize {
    still_there_after_a_moment(|| processes_of_uids(uids.clone())).await
}

/// How many of the processes `find` finds are still there after two seconds.
async fn still_there_after_a_moment(find: impl Fn() -> Vec<i32>) -> usize {
    for _ in 0..100 {
        if find().is_empty() {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    find().len()
}

/// The database the checker reads beside the API: the server's SQLite file, or the cluster's
/// PostgreSQL database, as an operator's `sqlite3` or `psql` would.
enum Store {
    Sqlite(PathBuf),
    Postgres(tokio_postgres::Client),
}

impl Store {
    async fn job_ids(&self) -> HashSet<String> {
        match self {
            Store::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).expect("open the database");
                let mut stmt = db.prepare("SELECT id FROM jobs").expect("select");
                stmt.query_map([], |r| r.get(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("ids")
            }
            Store::Postgres(client) => client
                .query("SELECT id::text FROM jobs", &[])
                .await
                .expect("select the job ids")
                .iter()
                .map(|row| row.get(0))
                .collect(),
        }
    }

    /// Rows of the webhook outbox `where` holds for.
    async fn webhooks(&self, r#where: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM webhooks WHERE {where}");
        match self {
            Store::Sqlite(path) => rusqlite::Connection::open(path)
                .expect("open the database")
                .query_row(&sql, [], |r| r.get(0))
                .expect("count webhooks"),
            Store::Postgres(client) => client
                .query_one(&sql, &[])
                .await
                .expect("count webhooks")
                .get(0),
        }
    }

    /// SQLite's own check of the file; PostgreSQL has none to ask for.
    fn integrity(&self) -> Option<String> {
        match self {
            Store::Sqlite(path) => Some(
                rusqlite::Connection::open(path)
                    .expect("open the database")
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .expect("integrity_check"),
            ),
            Store::Postgres(_) => None,
        }
    }
}

#[derive(Default)]
struct Report {
    cases: usize,
    lost: Vec<String>,
    double_runs: Vec<String>,
    invalid: Vec<String>,
    /// Jobs and suites that ended, but not as promised (a cancelled job that ran, wrong output,
    /// a suite completed twice).
    wrong: Vec<String>,
    statuses: HashMap<String, usize>,
    /// Jobs a kill found running, taken back and run again.
    rescued: usize,
    /// Of those, the ones whose attempts ran on more than one node.
    moved: usize,
    /// Processes of jobs still alive on a node once every job has ended.
    left_running: usize,
    webhooks_expected: usize,
    webhooks_delivered: usize,
    /// Outbox rows (a suite's per-case calls included) not delivered in the end.
    undelivered: i64,
    integrity: Option<String>,
}

/// Checks every promise after the last restart, from the API (of the first node: every node
/// answers for the whole queue) and the database.
async fn check(nodes: &[Server], store: &Store, ledger: &Ledger, receiver: &Receiver) -> Report {
    let server = &nodes[0];
    let mut report = Report::default();
    let mut all_jobs: Vec<(String, Option<String>)> = ledger
        .jobs
        .iter()
        .map(|j| (j.id.clone(), j.stdout.clone()))
        .collect();
    for batch in &ledger.batches {
        let (status, body) = server.get(&format!("/v1/batches/{}/cases", batch.id)).await;
        if status != 200 {
            report
                .lost
                .push(format!("batch {}: {status} {body}", batch.id));
            continue;
        }
        for case in body["cases"].as_array().into_iter().flatten() {
            let id = case["job_id"].as_str().unwrap_or_default().to_owned();
            all_jobs.push((id, None));
            report.cases += 1;
        }
    }
    for (id, stdout) in &all_jobs {
        let Some(job) = finished(server, id).await else {
            report.lost.push(id.clone());
            continue;
        };
        let status = job["status"].as_str().unwrap_or("?").to_owned();
        *report.statuses.entry(status.clone()).or_default() += 1;
        if ledger.cancelled.contains(id) && status != "cancelled" {
            report.wrong.push(format!("cancel answered 200 but {job}"));
        }
        if status == "succeeded"
            && let Some(expected) = stdout
            && job["stdout"] != expected.as_str()
        {
            report.wrong.push(format!("stdout of {job}"));
        }
        let events = server.events(id).await;
        if events.iter().any(|e| e["type"] == "job.retrying") {
            report.rescued += 1;
        }
        let ran_on: HashSet<&str> = events
            .iter()
            .filter(|e| e["type"] == "job.started")
            .filter_map(|e| e["data"]["worker"].as_str()?.split('/').next())
            .collect();
        if ran_on.len() > 1 {
            report.moved += 1;
        }
        match check_history(&events) {
            Ok(()) => {}
            Err(HistoryFault::Overlap(m)) => report.double_runs.push(m),
            Err(HistoryFault::Invalid(m)) => report.invalid.push(m),
        }
    }
    for batch in &ledger.batches {
        let (_, body) = server
            .get(&format!("/v1/batches/{}?wait=30", batch.id))
            .await;
        if body["done"] != true {
            report.wrong.push(format!("batch not done: {body}"));
        }
        let (_, events) = server
            .get(&format!("/v1/batches/{}/events?limit=1000", batch.id))
            .await;
        let completions = events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "batch.completed")
            .count();
        if completions != 1 {
            report
                .wrong
                .push(format!("batch {} completed {completions} times", batch.id));
        }
    }
    // A run cancelled through another node stops a moment after its job has ended.
    for node in nodes {
        report.left_running += still_there_after_a_moment(|| job_processes(node.job_uids())).await;
    }

    let stored = store.job_ids().await;
    for (id, _) in &all_jobs {
        if !stored.contains(id) {
            report.lost.push(format!("{id} is not in the jobs table"));
        }
    }

    let expected: HashSet<&str> = ledger
        .jobs
        .iter()
        .chain(&ledger.batches)
        .filter(|a| a.callback)
        .map(|a| a.id.as_str())
        .collect();
    report.webhooks_expected = expected.len();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let pending = store.webhooks("status = 'pending'").await;
        let received: HashSet<String> = receiver
            .calls()
            .iter()
            .filter_map(|c| {
                let body = c.json();
                let subject = if body["job"].is_object() {
                    &body["job"]
                } else {
                    &body["batch"]
                };
                subject["id"].as_str().map(str::to_owned)
            })
            .collect();
        report.webhooks_delivered = expected.iter().filter(|id| received.contains(**id)).count();
        if (pending == 0 && report.webhooks_delivered == expected.len())
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.undelivered = store.webhooks("status <> 'delivered'").await;
    report.integrity = store.integrity();
    report
}

/// The job once it has ended; `None` if the server does not know it or it never ends.
async fn finished(server: &Server, id: &str) -> Option<Value> {
    for _ in 0..6 {
        let (status, job) = server.get(&format!("/v1/jobs/{id}?wait=10")).await;
        if status != 200 {
            return None;
        }
        if is_terminal(&job["status"]) {
            return Some(job);
        }
    }
    None
}
