//! kiln past one machine (issue 20): the queue and the submits on one PostgreSQL database shared
//! by several nodes, each figure beside PostgreSQL's own limit measured in the same run, and the
//! same figures on one node over SQLite. Rows 14 to 16 of the benchmark table:
//!
//! 14. **Queue jobs/s on 1, 2 and 3 worker nodes**: [`JOBS`] queued jobs, run to their end by
//!     kiln's own workers ([`Workers`]: claim, lease keeper, progress recorder, finish) with the
//!     executor that runs nothing ([`NoOp`]), [`WORKERS`] per node. A node is a separate process
//!     with a pool of its own, as `kiln serve` makes one: this bench started again as a worker
//!     node (`KILN_BENCH_NODE_DB`), which opens the store as the server does and waits for the
//!     word to start, so that every node is connected before the clock starts. Timed from that
//!     word until no job is queued or running. Limit: the bare life of the same jobs on
//!     tokio-postgres from this process, [`WORKERS`] connections each claiming (the same `SKIP
//!     LOCKED` update, with its `job.started` event) and finishing (with `job.succeeded`) in a
//!     transaction each, as kiln's workers do, on the same schema, triggers included.
//! 15. **Durable submits/s through 1 and 2 API nodes**: real `kiln serve --workers 0` processes
//!     on the database, [`CLIENTS`] keep-alive clients in this process spread over them,
//!     [`JOBS`] submits, each answered 202 once committed. Limit: the rows those submits write
//!     (the job and its `job.queued` event, the same parameters) inserted from this process in
//!     one transaction. The queued jobs of row 14 are put there this way too, so each of its
//!     runs measures this limit again.
//! 16. **SQLite against PostgreSQL on one node**: row 15's submits through one API node and row
//!     14's queue on one worker node, again on a SQLite file, in the same run; the SQLite
//!     figure stands in the limit's column.
//!
//! Each rate comes with its cost in CPU: the CPU time the database and kiln's processes spent
//! over it (from `/proc/PID/stat`: PostgreSQL's postmaster and every backend, each node, this
//! process when it is the one writing), as jobs per CPU-second: the figure per core. All the
//! processes share the machine's cores, so on a small machine more nodes mean more contention,
//! not more CPU; the per-run lines say how busy the cores were and who spent what.
//!
//! PostgreSQL runs as a throwaway cluster of the bench's own (`benches/common/pg.rs`) with
//! fsync on, as a deployment runs; each measurement gets a fresh database, dropped after it.
//! Run with `cargo bench --bench cluster`; `KILN_BENCH_RUNS` (3) sets the runs, whose medians
//! are reported, `KILN_BENCH_CLUSTER_JOBS` the jobs per measurement (3,000; a tenth with
//! `KILN_BENCH_QUICK=1`). It prints a table and writes the rows to `target/bench-cluster.json`.

mod common;
mod report;
mod server;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use common::median;
use common::noop::NoOp;
use common::pg::{self, Cluster, connect};
use kiln::job::JobSpec;
use kiln::job::policy::Policy;
use kiln::job::time::now_ms;
use kiln::live::Live;
use kiln::runtime::Runtimes;
use kiln::store::postgres::Wakeups;
use kiln::store::{Admission, Store, Submitted};
use kiln::worker::{Running, Stopping, Workers};
use report::{Better, Goal, Row};
use serde_json::json;
use server::{CLIENTS, Server, scratch};
use tokio::runtime::Runtime;
use tokio_postgres::types::Json;
use tokio_util::sync::CancellationToken;

/// Set in a worker node's environment: the database it serves, a URL or a SQLite file.
const NODE_DB: &str = "KILN_BENCH_NODE_DB";
/// The node's name, the first part of its workers' lease owners.
const NODE_NAME: &str = "KILN_BENCH_NODE_NAME";

/// Jobs per measurement.
static JOBS: LazyLock<usize> = LazyLock::new(|| {
    std::env::var("KILN_BENCH_CLUSTER_JOBS")
        .ok()
        .and_then(|jobs| jobs.parse().ok())
        .filter(|&jobs| jobs > 0)
        .unwrap_or_else(|| report::size(3_000))
});
/// Workers per worker node, and connections of the bare claim loop.
const WORKERS: usize = 32;
const NODE_COUNTS: [usize; 3] = [1, 2, 3];
const API_NODE_COUNTS: [usize; 2] = [1, 2];
const SUBMIT_BODY: &str = r#"{"runtime":"sh","code":"true"}"#;
/// Anything near this means the queue is stuck.
const DEADLINE: Duration = Duration::from_secs(300);

fn main() {
    if let Some(db) = std::env::var_os(NODE_DB) {
        worker_node(&db);
        return;
    }
    let runs = report::runs();
    let runtime = Runtime::new().expect("tokio runtime");
    let cluster = runtime.block_on(pg::start());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kiln cluster bench: {runs} runs of {} jobs; PostgreSQL on 127.0.0.1 with fsync on; \
         {cores} cores shared by every process",
        *JOBS
    );
    let bench = Bench {
        runtime,
        cluster,
        databases: AtomicUsize::new(0),
    };
    let mut figures = Figures::default();
    for run in 1..=runs {
        let bare = bench.bare_life_cycle();
        bench.print(
            run,
            "bare claim + finish loop, 32 connections",
            "jobs",
            &bare,
        );
        figures.bare_claims.push(bare);
        // The node counts take turns at going first, so that none always follows another.
        for i in 0..NODE_COUNTS.len() {
            let nodes = NODE_COUNTS[(i + run) % NODE_COUNTS.len()];
            let (queue, inserts) = bench.queue_on_postgres(nodes);
            bench.print(
                run,
                "raw inserts of the queued jobs, one transaction",
                "rows",
                &inserts,
            );
            bench.print(
                run,
                &format!("queue, {}", count(nodes, "worker node")),
                "jobs",
                &queue,
            );
            figures.inserts.push(inserts);
            figures.queue.entry(nodes).or_default().push(queue);
        }
        for nodes in API_NODE_COUNTS {
            let submits = bench.submits_on_postgres(nodes);
            bench.print(
                run,
                &format!("submits, {}", count(nodes, "API node")),
                "submits",
                &submits,
            );
            figures.submits.entry(nodes).or_default().push(submits);
        }
        let submits = bench.submits_on_sqlite();
        bench.print(run, "submits, 1 API node on SQLite", "submits", &submits);
        figures.sqlite_submits.push(submits);
        let queue = bench.queue_on_sqlite();
        bench.print(run, "queue, 1 worker node on SQLite", "jobs", &queue);
        figures.sqlite_queue.push(queue);
    }
    let load: Vec<f64> = figures
        .submits
        .values()
        .flatten()
        .map(|m| m.cpu.load / m.elapsed)
        .collect();
    println!(
        "the in-process HTTP clients took {:.2} cores (median over the submit loads)",
        median(&load)
    );
    report::write("cluster", &figures.rows());
}

/// What every measurement of one bench run uses.
struct Bench {
    runtime: Runtime,
    cluster: Cluster,
    /// Numbers the fresh databases.
    databases: AtomicUsize,
}

/// One measured rate and what it cost.
struct Measured {
    rate: f64,
    cpu: Cpu,
    elapsed: f64,
}

impl Measured {
    fn new(items: usize, elapsed: f64, cpu: Cpu) -> Measured {
        Measured {
            rate: items as f64 / elapsed,
            cpu,
            elapsed,
        }
    }

    /// Items per CPU-second of the database and kiln (or of the bare client), the load
    /// generator left out.
    fn per_core(&self) -> f64 {
        self.rate * self.elapsed / (self.cpu.database + self.cpu.kiln)
    }
}

impl Bench {
    fn print(&self, run: usize, what: &str, unit: &str, m: &Measured) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let spent = m.cpu.database + m.cpu.kiln + m.cpu.load;
        println!(
            "run {run}: {what}: {:.0} {unit}/s, {:.0} per CPU-second; CPU over {:.2} s: \
             PostgreSQL {:.2} s, kiln (or the bare client) {:.2} s, load generator {:.2} s ({:.0}% of {cores} cores)",
            m.rate,
            m.per_core(),
            m.elapsed,
            m.cpu.database,
            m.cpu.kiln,
            m.cpu.load,
            100.0 * spent / (m.elapsed * cores),
        );
    }

    /// A fresh database with kiln's schema, its name and URL.
    fn fresh_database(&self) -> (String, String) {
        let name = format!(
            "kiln_bench_{}",
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let url = self.runtime.block_on(async {
            let url = pg::create_database(&self.cluster, &name).await;
            // Migrated here, once, rather than by whichever node connects first.
            let poll = Wakeups::Poll {
                every: Duration::from_secs(1),
            };
            drop(
                Store::connect(&url, 1, poll)
                    .await
                    .expect("migrate the database"),
            );
            url
        });
        (name, url)
    }

    fn drop_database(&self, name: &str) {
        self.runtime
            .block_on(pg::drop_database(&self.cluster, name));
    }

    /// The CPU time spent so far by PostgreSQL and by the processes `kiln` (nodes, servers),
    /// with this process counted as kiln's or as the load's.
    fn cpu_now(&self, kiln: &[u32], this: This) -> Cpu {
        let me = process_cpu(std::process::id()).unwrap_or(0.0);
        let mut cpu = Cpu {
            database: postgres_cpu(self.cluster.pid()),
            kiln: kiln.iter().filter_map(|&pid| process_cpu(pid)).sum(),
            load: 0.0,
        };
        match this {
            This::Works => cpu.kiln += me,
            This::Loads => cpu.load += me,
        }
        cpu
    }

    /// Row 14's limit: [`JOBS`] jobs inserted raw, then claimed and finished by [`WORKERS`]
    /// bare connections, one transaction per step as kiln's workers make them.
    fn bare_life_cycle(&self) -> Measured {
        let (name, url) = self.fresh_database();
        self.runtime.block_on(raw_inserts(&url, *JOBS));
        let before = self.cpu_now(&[], This::Works);
        let start = Instant::now();
        self.runtime.block_on(async {
            let tasks: Vec<_> = (0..WORKERS)
                .map(|i| tokio::spawn(bare_worker(url.clone(), format!("bare/w{i}"))))
                .collect();
            for task in tasks {
                task.await.expect("a bare worker");
            }
        });
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = self.cpu_now(&[], This::Works).since(&before);
        self.runtime.block_on(check_all_succeeded_once(&url));
        self.drop_database(&name);
        Measured::new(*JOBS, elapsed, cpu)
    }

    /// Row 14 on `nodes` worker nodes, and row 15's limit measured by filling their queue.
    fn queue_on_postgres(&self, nodes: usize) -> (Measured, Measured) {
        let (name, url) = self.fresh_database();
        let before = self.cpu_now(&[], This::Works);
        let start = Instant::now();
        self.runtime.block_on(raw_inserts(&url, *JOBS));
        let inserts = Measured::new(
            *JOBS,
            start.elapsed().as_secs_f64(),
            self.cpu_now(&[], This::Works).since(&before),
        );
        let mut workers: Vec<Node> = (1..=nodes)
            .map(|n| Node::start(OsStr::new(&url), &format!("node{n}")))
            .collect();
        let db = self.runtime.block_on(connect(&url));
        let queue = self.run_queue(&mut workers, || {
            self.runtime.block_on(unfinished_on_postgres(&db))
        });
        drop(db);
        self.runtime.block_on(check_all_succeeded_once(&url));
        self.drop_database(&name);
        (queue, inserts)
    }

    /// Tells every node to start, waits until `unfinished` finds no job left, stops the
    /// nodes, and checks that they ran each job once between them.
    fn run_queue(&self, nodes: &mut [Node], unfinished: impl Fn() -> i64) -> Measured {
        let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
        let before = self.cpu_now(&pids, This::Loads);
        let start = Instant::now();
        for node in nodes.iter_mut() {
            node.go();
        }
        while unfinished() > 0 {
            assert!(start.elapsed() < DEADLINE, "the queue is stuck");
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = self.cpu_now(&pids, This::Loads).since(&before);
        let ran: Vec<usize> = nodes.iter_mut().map(Node::stop).collect();
        assert_eq!(
            ran.iter().sum::<usize>(),
            *JOBS,
            "the nodes ran {ran:?} jobs: each job once between them"
        );
        Measured::new(*JOBS, elapsed, cpu)
    }

    /// Row 15: [`JOBS`] submits over HTTP spread over `nodes` API nodes on a fresh database.
    fn submits_on_postgres(&self, nodes: usize) -> Measured {
        let (name, url) = self.fresh_database();
        let dirs: Vec<_> = (0..nodes).map(|_| scratch()).collect();
        let servers: Vec<Server> = dirs
            .iter()
            .enumerate()
            .map(|(n, dir)| {
                let node = format!("api{}", n + 1);
                let args = ["--workers", "0", "--node-id", &node];
                Server::start_on(dir.path(), OsStr::new(&url), &args)
            })
            .collect();
        let measured = self.submit_load(&servers);
        let rows = self.runtime.block_on(async {
            connect(&url)
                .await
                .query_one("SELECT count(*) FROM jobs", &[])
                .await
                .expect("count the jobs")
                .get::<_, i64>(0)
        });
        assert_eq!(rows as usize, *JOBS, "every 202 left its job behind");
        drop(servers);
        self.drop_database(&name);
        measured
    }

    /// Row 16's submits: row 15 on one node over a SQLite file.
    fn submits_on_sqlite(&self) -> Measured {
        let dir = scratch();
        let server = Server::start_in(dir.path(), &["--workers", "0"]);
        let measured = self.submit_load(std::slice::from_ref(&server));
        drop(server);
        let db = rusqlite::Connection::open(dir.path().join("kiln.db")).expect("open the file");
        let rows: i64 = db
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .expect("count the jobs");
        assert_eq!(rows as usize, *JOBS, "every 202 left its job behind");
        measured
    }

    fn submit_load(&self, servers: &[Server]) -> Measured {
        let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
        let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
        let before = self.cpu_now(&pids, This::Loads);
        let start = Instant::now();
        self.runtime
            .block_on(server::submit_many_to(&urls, SUBMIT_BODY, *JOBS));
        let elapsed = start.elapsed().as_secs_f64();
        Measured::new(
            *JOBS,
            elapsed,
            self.cpu_now(&pids, This::Loads).since(&before),
        )
    }

    /// Row 16's queue: row 14 on one worker node over a SQLite file, queued through the
    /// store's own submit (the file has no raw path worth measuring here: `benches/queue.rs`
    /// has SQLite's limits).
    fn queue_on_sqlite(&self) -> Measured {
        let dir = scratch();
        let path = dir.path().join("kiln.db");
        self.runtime.block_on(fill_sqlite(&path));
        let mut nodes = [Node::start(path.as_os_str(), "node1")];
        let db = rusqlite::Connection::open(&path).expect("open the file");
        self.run_queue(&mut nodes, || {
            db.query_row(
                "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')",
                [],
                |r| r.get(0),
            )
            .expect("count unfinished jobs")
        })
    }
}

/// Whose CPU this process's is.
#[derive(Clone, Copy)]
enum This {
    /// It does the work measured (the raw limits).
    Works,
    /// It only generates the load, or waits.
    Loads,
}

/// CPU seconds, split by who spent them.
#[derive(Clone, Copy, Default)]
struct Cpu {
    database: f64,
    /// kiln's nodes, or this process when it is the bare client of a limit.
    kiln: f64,
    load: f64,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            database: self.database - before.database,
            kiln: self.kiln - before.kiln,
            load: self.load - before.load,
        }
    }
}

/// Fields 14 to 17 of `/proc/PID/stat` (user and system time, and those of its reaped
/// children), in seconds, and its parent; `None` once the process is gone.
fn stat_of(pid: u32) -> Option<(u32, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after its last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    // SAFETY: sysconf reads a constant of the system and touches no memory.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let own = (field(14)? + field(15)?) / ticks;
    let reaped = (field(16)? + field(17)?) / ticks;
    Some((fields.get(1)?.parse().ok()?, own, reaped))
}

fn process_cpu(pid: u32) -> Option<f64> {
    stat_of(pid).map(|(_, own, _)| own)
}

/// PostgreSQL's CPU time: the postmaster's, that of the backends that ended (reaped by it),
/// and that of the backends running now.
fn postgres_cpu(postmaster: u32) -> f64 {
    let Some((_, own, reaped)) = stat_of(postmaster) else {
        return 0.0;
    };
    let children: f64 = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_of)
        .filter(|&(parent, _, _)| parent == postmaster)
        .map(|(_, own, _)| own)
        .sum();
    own + reaped + children
}

/// The job every measurement queues: `sh` runs `true`, but the no-op executor runs nothing.
fn spec() -> JobSpec {
    JobSpec {
        runtime: "sh".into(),
        code: "true".into(),
        stdin: Default::default(),
        args: Vec::new(),
        files: BTreeMap::new(),
        outputs: Vec::new(),
        limits: Policy::default().default_limits,
        priority: 0,
        max_attempts: 3,
        interactive: false,
        idempotency_key: None,
        callback_url: None,
        callback_shape: Default::default(),
    }
}

/// Row 15's limit: `jobs` queued jobs and their `job.queued` events inserted in one
/// transaction, with the parameters kiln's submit binds.
async fn raw_inserts(url: &str, jobs: usize) {
    let mut db = connect(url).await;
    let spec = spec();
    let limits = serde_json::to_value(spec.limits).expect("limits as JSON");
    let (args, files, outputs) = (json!([]), json!({}), json!([]));
    let queued = json!({"runtime": spec.runtime, "priority": spec.priority});
    let tx = db.transaction().await.expect("begin");
    let job = tx
        .prepare(
            "INSERT INTO jobs (id, runtime, code, stdin, args, files, limits, priority,
                               max_attempts, idempotency_key, created_at, callback_url, tenant,
                               outputs, callback_shape, interactive)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .await
        .expect("prepare the job insert");
    let event = tx
        .prepare("INSERT INTO events (job_id, at, type, data) VALUES ($1, $2, 'job.queued', $3)")
        .await
        .expect("prepare the event insert");
    let none: Option<&str> = None;
    for _ in 0..jobs {
        let id = uuid::Uuid::now_v7();
        let now = now_ms();
        tx.execute(
            &job,
            &[
                &id,
                &spec.runtime,
                &spec.code.as_bytes(),
                &spec.stdin.as_bytes(),
                &Json(&args),
                &Json(&files),
                &Json(&limits),
                &spec.priority,
                &i32::try_from(spec.max_attempts).expect("max_attempts"),
                &none,
                &now,
                &none,
                &none,
                &Json(&outputs),
                &"kiln",
                &false,
            ],
        )
        .await
        .expect("insert a job");
        tx.execute(&event, &[&id, &now, &Json(&queued)])
            .await
            .expect("insert its event");
    }
    tx.commit().await.expect("commit the inserts");
}

/// One connection of row 14's limit: claims and finishes jobs until none is queued.
async fn bare_worker(url: String, owner: String) {
    let mut db = connect(&url).await;
    let claim = db
        .prepare(
            "UPDATE jobs
             SET status = 'running', attempt = attempt + 1, lease_owner = $1,
                 lease_expires_at = $2, started_at = $3
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued'
                         ORDER BY priority DESC, id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)
             RETURNING id, attempt",
        )
        .await
        .expect("prepare the claim");
    let finish = db
        .prepare(
            "UPDATE jobs SET status = 'succeeded', outcome = 'success', finished_at = $1,
                             exit_code = 0, wall_ms = 0, cpu_ms = 0, memory_kb = 0,
                             lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $2 AND attempt = $3 AND status = 'running'",
        )
        .await
        .expect("prepare the finish");
    let event = db
        .prepare("INSERT INTO events (job_id, at, type, attempt, data) VALUES ($1, $2, $3, $4, $5)")
        .await
        .expect("prepare the event insert");
    let started = json!({"worker": owner});
    let ended = json!({"outcome": "success", "exit_code": 0});
    loop {
        let tx = db.transaction().await.expect("begin a claim");
        let now = now_ms();
        let Some(row) = tx
            .query_opt(&claim, &[&owner, &(now + 30_000), &now])
            .await
            .expect("claim a job")
        else {
            return;
        };
        let (id, attempt): (uuid::Uuid, i32) = (row.get(0), row.get(1));
        tx.execute(
            &event,
            &[&id, &now, &"job.started", &attempt, &Json(&started)],
        )
        .await
        .expect("insert job.started");
        tx.commit().await.expect("commit the claim");

        let tx = db.transaction().await.expect("begin a finish");
        let now = now_ms();
        let n = tx
            .execute(&finish, &[&now, &id, &attempt])
            .await
            .expect("finish the job");
        assert_eq!(n, 1, "the claimed job was running");
        tx.execute(
            &event,
            &[&id, &now, &"job.succeeded", &attempt, &Json(&ended)],
        )
        .await
        .expect("insert job.succeeded");
        tx.commit().await.expect("commit the finish");
    }
}

async fn unfinished_on_postgres(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')",
        &[],
    )
    .await
    .expect("count unfinished jobs")
    .get(0)
}

/// Checks that every job succeeded, each after one start: no job ran twice.
async fn check_all_succeeded_once(url: &str) {
    let db = connect(url).await;
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM jobs WHERE status = 'succeeded'),
                    (SELECT count(*) FROM events WHERE type = 'job.started')",
            &[],
        )
        .await
        .expect("count the ends");
    let (succeeded, started): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(succeeded as usize, *JOBS, "every job succeeded");
    assert_eq!(started as usize, *JOBS, "every job started once");
}

/// Queues [`JOBS`] jobs on a new SQLite file through the store's submit, from [`CLIENTS`]
/// tasks, and closes the file.
async fn fill_sqlite(path: &Path) {
    let (store, writer) = Store::open(path, 4).expect("create the file");
    let submitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (store, submitted) = (store.clone(), submitted.clone());
            tokio::spawn(async move {
                while submitted.fetch_add(1, Ordering::Relaxed) < *JOBS {
                    let open = Admission {
                        tenant: None,
                        max_queued_jobs: u64::MAX,
                        max_batches_in_flight: u64::MAX,
                    };
                    match store.submit(spec(), open).await.expect("submit") {
                        Submitted::Created(_) => {}
                        other => panic!("a plain submit was {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a submitter");
    }
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("close the file");
}

/// A worker node: this bench run again by [`Node::start`], serving `db` with [`WORKERS`] of
/// kiln's workers. Says `ready` once its store is open, starts its workers on `go` from stdin,
/// stops them at the end of stdin, and says how many jobs it ran.
fn worker_node(db: &OsStr) {
    let name = std::env::var(NODE_NAME).expect("a node name");
    let runtime = Runtime::new().expect("tokio runtime");
    let (go, stop) = (CancellationToken::new(), CancellationToken::new());
    {
        let (go, stop) = (go.clone(), stop.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(line) if line == "go" => go.cancel(),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // The bench is done with this node, or gone.
            stop.cancel();
        });
    }
    let writer = runtime.block_on(async {
        let (store, writer) = match db.to_str().filter(|db| db.starts_with("postgres://")) {
            Some(url) => {
                // What `kiln serve` opens: a pooled connection per worker and 8 more.
                let wakeups = Wakeups::Notify {
                    poll: Duration::from_millis(500),
                };
                let store = Store::connect(url, WORKERS + 8, wakeups)
                    .await
                    .expect("connect the node's store");
                (store, None)
            }
            None => {
                let readers = u32::try_from(WORKERS + 4).expect("readers");
                let (store, writer) =
                    Store::open(Path::new(db), readers).expect("open the node's store");
                (store, Some(writer))
            }
        };
        let workers = Arc::new(Workers {
            store: store.clone(),
            runner: NoOp::default(),
            runtimes: Arc::new(Runtimes::load(&Default::default()).expect("built-in runtimes")),
            running: Running::default(),
            live: Live::default(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            owner_prefix: format!("{name}/bench/"),
        });
        say("ready");
        tokio::select! {
            () = go.cancelled() => {}
            () = stop.cancelled() => return writer,
        }
        let stopping = Stopping::default();
        let mut tasks = workers.spawn(WORKERS, &stopping);
        stop.cancelled().await;
        stopping.claiming.cancel();
        while tasks.join_next().await.is_some() {}
        say(&format!(
            "ran {}",
            workers.runner.ran.load(Ordering::Relaxed)
        ));
        writer
    });
    drop(runtime);
    if let Some(writer) = writer {
        writer.join();
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .expect("write to the bench");
}

/// A worker node the bench started ([`worker_node`]); killed if dropped before it stopped.
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Node {
    /// Starts a node named `name` on `db` and waits until its store is open.
    fn start(db: &OsStr, name: &str) -> Node {
        let exe = std::env::current_exe().expect("the bench's own executable");
        let mut child = Command::new(exe)
            .env(NODE_DB, db)
            .env(NODE_NAME, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a worker node");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("the node's stdout"));
        let mut node = Node {
            child,
            stdin,
            stdout,
        };
        let line = node.line();
        assert_eq!(line, "ready", "worker node {name} did not start");
        node
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from a worker node");
        line.trim().to_owned()
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("a node not stopped yet");
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .expect("start a worker node");
    }

    /// Stops the node's workers and returns how many jobs it ran.
    fn stop(&mut self) -> usize {
        drop(self.stdin.take());
        let line = self.line();
        let status = self.child.wait().expect("wait for a worker node");
        assert!(status.success(), "a worker node failed: {status}");
        line.strip_prefix("ran ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a worker node said {line:?}, not how many it ran"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every run's measurements, by row.
#[derive(Default)]
struct Figures {
    bare_claims: Vec<Measured>,
    inserts: Vec<Measured>,
    queue: BTreeMap<usize, Vec<Measured>>,
    submits: BTreeMap<usize, Vec<Measured>>,
    sqlite_submits: Vec<Measured>,
    sqlite_queue: Vec<Measured>,
}

/// "1 worker node", "2 worker nodes".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn rates(runs: &[Measured]) -> Vec<f64> {
    runs.iter().map(|m| m.rate).collect()
}

fn per_core(runs: &[Measured]) -> Vec<f64> {
    runs.iter().map(Measured::per_core).collect()
}

impl Figures {
    fn rows(&self) -> Vec<Row> {
        let bare = "bare claim + finish on tokio-postgres, same rows, 32 connections";
        let raw = "raw PostgreSQL inserts of the same rows, one transaction";
        let mut rows = Vec::new();
        for (nodes, runs) in &self.queue {
            rows.push(Row::measured(
                14,
                format!(
                    "queue jobs/s, no-op executor, {} x {WORKERS} workers, PostgreSQL",
                    count(*nodes, "worker node")
                ),
                "jobs/s",
                rates(runs),
                Better::Higher,
                Some((bare.into(), rates(&self.bare_claims))),
                Goal::None,
            ));
        }
        for (nodes, runs) in &self.queue {
            rows.push(Row::measured(
                14,
                format!(
                    "queue jobs per CPU-second (PostgreSQL + nodes), {}",
                    count(*nodes, "worker node")
                ),
                "jobs/CPU-s",
                per_core(runs),
                Better::Higher,
                Some((
                    format!("{bare}, per CPU-second"),
                    per_core(&self.bare_claims),
                )),
                Goal::None,
            ));
        }
        for (nodes, runs) in &self.submits {
            rows.push(Row::measured(
                15,
                format!(
                    "durable submits/s over HTTP, {}, {CLIENTS} clients (in-process), PostgreSQL",
                    count(*nodes, "API node")
                ),
                "submits/s",
                rates(runs),
                Better::Higher,
                Some((raw.into(), rates(&self.inserts))),
                Goal::None,
            ));
        }
        for (nodes, runs) in &self.submits {
            rows.push(Row::measured(
                15,
                format!(
                    "submits per CPU-second (PostgreSQL + API nodes), {}",
                    count(*nodes, "API node")
                ),
                "submits/CPU-s",
                per_core(runs),
                Better::Higher,
                Some((format!("{raw}, per CPU-second"), per_core(&self.inserts))),
                Goal::None,
            ));
        }
        let pairs = [
            (
                "durable submits/s over HTTP, 1 API node: PostgreSQL",
                "submits/s",
                self.submits.get(&1).map(|r| rates(r)),
                rates(&self.sqlite_submits),
                "the same on a SQLite file",
            ),
            (
                "queue jobs/s, 1 worker node: PostgreSQL",
                "jobs/s",
                self.queue.get(&1).map(|r| rates(r)),
                rates(&self.sqlite_queue),
                "the same on a SQLite file",
            ),
            (
                "submits per CPU-second, 1 API node: PostgreSQL",
                "submits/CPU-s",
                self.submits.get(&1).map(|r| per_core(r)),
                per_core(&self.sqlite_submits),
                "the same on a SQLite file",
            ),
            (
                "queue jobs per CPU-second, 1 worker node: PostgreSQL",
                "jobs/CPU-s",
                self.queue.get(&1).map(|r| per_core(r)),
                per_core(&self.sqlite_queue),
                "the same on a SQLite file",
            ),
        ];
        for (figure, unit, postgres, sqlite, limit) in pairs {
            let postgres = postgres.expect("one node's figures");
            rows.push(Row::measured(
                16,
                figure,
                unit,
                postgres,
                Better::Higher,
                Some((limit.into(), sqlite)),
                Goal::None,
            ));
        }
        rows
    }
}
