//! The worker's rules, stepped on paused tokio time against a real store on a temporary file: a
//! run that panics, a lease lost to a takeover, shutdown's requeue, a failed start's backoff. The
//! executor here runs nothing; what it does is chosen by the job's code, and one of its answers
//! is a panic, standing for a bug in kiln.
//!
//! Two things about the store shape these tests. Its clock is the wall clock, so a lease's
//! expiry in the database says nothing about paused time: renewals are counted instead, by a
//! trigger the test adds to its own database. And it commits on a thread of its own, so while a
//! task awaits a write the runtime is idle and paused time jumps to the next timer. The tests
//! therefore never keep a timer of their own while the worker works: they wait on what the
//! executor and the store's bus report, and compare the tokio instants the executor took.

use std::collections::BTreeMap;
use std::io;

use tokio::sync::{broadcast, mpsc};

use super::*;
use crate::job::policy::Policy;
use crate::job::{JobSpec, Status};
use crate::runner::Builds;
use crate::store::{Admission, Submitted};

/// What the executor saw, reported as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Started,
    /// A held run was stopped by its worker.
    Stopped,
    /// A held run was never stopped: it gave up after [`HOLD_AT_MOST`].
    NeverStopped,
}

#[derive(Debug)]
struct Call {
    job: JobId,
    attempt: u32,
    seen: Seen,
    at: Instant,
}

/// Runs nothing; the job's code says what to do instead.
struct Script {
    calls: mpsc::UnboundedSender<Call>,
}

const PANIC: &str = "panic";
/// Fails to start on its first two attempts.
const FAIL_TWICE: &str = "fail twice";
/// Its first attempt runs until its worker stops it; later ones succeed at once.
const HOLD: &str = "hold";
/// How long a held run waits to be stopped, in real time.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);
/// Is refused by the kernel for what it asks, as an argument list `execve` will not take is.
const REFUSED: &str = "refused";
/// Runs for a second.
const SLEEP: &str = "sleep";
const SUCCEED: &str = "succeed";

impl Script {
    fn report(&self, request: &RunRequest<'_>, seen: Seen) {
        let call = Call {
            job: request.job_id,
            attempt: request.attempt,
            seen,
            at: Instant::now(),
        };
        // The test may have stopped listening; the report then matters to nobody.
        let _ = self.calls.send(call);
    }
}

fn ran(outcome: Outcome, stdout: String) -> Result<RunOutput, RunError> {
    let exit_code = (outcome == Outcome::Success).then_some(0);
    Ok(RunOutput {
        outcome,
        result: RunResult {
            exit_code,
            stdout: stdout.into_bytes(),
            ..RunResult::default()
        },
    })
}

impl Execute for Script {
    async fn execute(
        &self,
        request: RunRequest<'_>,
        stop: CancellationToken,
    ) -> Result<RunOutput, RunError> {
        self.report(&request, Seen::Started);
        let attempt = request.attempt;
        match std::str::from_utf8(request.code).unwrap_or_default() {
            PANIC => panic!("the test's executor panics, as a bug in kiln would"),
            FAIL_TWICE if attempt < 3 => Err(RunError::Spawn {
                program: "/nowhere/interpreter".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }),
            REFUSED => Err(RunError::Refused {
                source: io::Error::from_raw_os_error(libc::E2BIG),
            }),
            SLEEP => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ran(Outcome::Success, format!("attempt {attempt}"))
            }
            HOLD if attempt == 1 => {
                // Gives up after real seconds: a timer would fire as soon as the runtime waits
                // for the store, long before the worker could stop the run.
                let given_up = CancellationToken::new();
                let watchdog = given_up.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(HOLD_AT_MOST);
                    watchdog.cancel();
                });
                tokio::select! {
                    () = stop.cancelled() => {
                        self.report(&request, Seen::Stopped);
                        // What the runner answers for a run it was told to stop.
                        ran(Outcome::Cancelled, format!("attempt {attempt}, stopped"))
                    }
                    () = given_up.cancelled() => {
                        self.report(&request, Seen::NeverStopped);
                        ran(Outcome::Success, format!("attempt {attempt}, never stopped"))
                    }
                }
            }
            _ => ran(Outcome::Success, format!("attempt {attempt}")),
        }
    }

    fn builds(&self) -> Option<&Builds> {
        None
    }
}

/// Workers over a fresh database, with the test's ends of the executor's reports and the bus.
struct Harness {
    dir: tempfile::TempDir,
    store: Store,
    workers: Arc<Workers<Script>>,
    stopping: Stopping,
    tasks: Tasks,
    calls: mpsc::UnboundedReceiver<Call>,
    notices: broadcast::Receiver<Notice>,
}

impl Harness {
    fn new(lease: Duration) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let (store, _writer) = Store::open(&path, 2).expect("open the store");
        count_renewals(&path);
        let (calls_in, calls) = mpsc::unbounded_channel();
        let notices = store.bus().subscribe();
        let workers = Arc::new(Workers {
            store: store.clone(),
            runner: Script { calls: calls_in },
            runtimes: Arc::new(Runtimes::load(&Default::default()).expect("the built-in runtimes")),
            running: Running::default(),
            live: Live::default(),
            lease,
            poll_interval: Duration::from_millis(500),
            owner_prefix: "test/here/".into(),
        });
        Harness {
            dir,
            store,
            workers,
            stopping: Stopping::default(),
            tasks: Tasks::new(),
            calls,
            notices,
        }
    }

    /// Starts one worker, without the rescuer: leases are wall-clock times in the store, and
    /// these tests must not depend on how fast the host runs them.
    fn start_worker(&mut self) {
        let (workers, stopping) = (Arc::clone(&self.workers), self.stopping.clone());
        self.tasks.spawn(async move {
            workers.work(0, stopping).await;
            "worker"
        });
    }

    async fn submit(&self, code: &str, max_attempts: u32) -> JobId {
        let spec = JobSpec {
            runtime: "sh".into(),
            code: code.into(),
            stdin: Default::default(),
            args: Vec::new(),
            files: BTreeMap::new(),
            outputs: Vec::new(),
            limits: Policy::default().default_limits,
            priority: 0,
            max_attempts,
            interactive: false,
            idempotency_key: None,
            callback_url: None,
            callback_shape: Default::default(),
        };
        let admission = Admission {
            tenant: None,
            max_queued_jobs: u64::MAX,
            max_batches_in_flight: u64::MAX,
        };
        match self.store.submit(spec, admission).await.expect("submit") {
            Submitted::Created(id) => id,
            other => panic!("a plain submit was {other:?}"),
        }
    }

    /// The executor's next report; the test fails if a worker task ends first.
    async fn next_call(&mut self) -> Call {
        tokio::select! {
            call = self.calls.recv() => call.expect("the executor lives as long as the workers"),
            Some(ended) = self.tasks.join_next() => {
                panic!("a worker task ended: {:?}", ended.map_err(join_error_message))
            }
        }
    }

    /// Waits for the job's next event for which `wanted` holds.
    async fn until(&mut self, id: JobId, wanted: impl Fn(EventKind) -> bool) {
        loop {
            tokio::select! {
                notice = self.notices.recv() => match notice {
                    Ok(notice) if notice.job_id == Some(id) && wanted(notice.kind) => return,
                    Ok(_) => {}
                    Err(e) => panic!("the bus: {e}"),
                },
                Some(ended) = self.tasks.join_next() => {
                    panic!("a worker task ended: {:?}", ended.map_err(join_error_message))
                }
            }
        }
    }

    async fn until_ended(&mut self, id: JobId) {
        self.until(id, EventKind::is_terminal).await;
    }

    async fn job(&self, id: JobId) -> crate::job::Job {
        self.store.job(id).await.expect("read").expect("the job")
    }

    /// The job's events, by kind and attempt.
    async fn events(&self, id: JobId) -> Vec<(EventKind, Option<u32>, serde_json::Value)> {
        let events = self.store.job_events(id, 0).await.expect("read");
        let events = events.expect("the job");
        events
            .into_iter()
            .map(|e| {
                let kind = EventKind::parse(&e.kind).expect("a known kind");
                (kind, e.attempt, e.data)
            })
            .collect()
    }

    async fn terminal_events(&self, id: JobId) -> Vec<Option<u32>> {
        let events = self.events(id).await;
        let ends = events.into_iter().filter(|(kind, ..)| kind.is_terminal());
        ends.map(|(_, attempt, _)| attempt).collect()
    }

    /// How many times the job's lease was renewed, all attempts together.
    fn renewals(&self, id: JobId) -> i64 {
        let db = rusqlite::Connection::open(self.dir.path().join("q.db")).expect("open");
        db.query_row(
            "SELECT count(*) FROM test_renewals WHERE job_id = ?1",
            [id.to_string()],
            |row| row.get(0),
        )
        .expect("count renewals")
    }
}

/// Makes every lease renewal fail, as a database that keeps refusing writes would.
fn refuse_renewals(path: &std::path::Path) {
    let db = rusqlite::Connection::open(path).expect("open");
    db.busy_timeout(Duration::from_secs(10)).expect("timeout");
    db.execute_batch(
        "CREATE TRIGGER test_refuse_renewal BEFORE UPDATE OF lease_expires_at ON jobs
         WHEN OLD.status = 'running' AND NEW.status = 'running' AND OLD.attempt = NEW.attempt
         BEGIN SELECT RAISE(ABORT, 'the test refuses renewals'); END;",
    )
    .expect("refuse renewals");
}

/// Adds to the test's database a count of lease renewals: an update of a running job's lease
/// that keeps it running under the same attempt (claims, ends and requeues change one of them).
fn count_renewals(path: &std::path::Path) {
    let db = rusqlite::Connection::open(path).expect("open");
    db.busy_timeout(Duration::from_secs(10)).expect("timeout");
    db.execute_batch(
        "CREATE TABLE test_renewals (job_id TEXT NOT NULL);
         CREATE TRIGGER test_renewal AFTER UPDATE OF lease_expires_at ON jobs
         WHEN OLD.status = 'running' AND NEW.status = 'running' AND OLD.attempt = NEW.attempt
         BEGIN INSERT INTO test_renewals VALUES (NEW.id); END;",
    )
    .expect("add the renewal count");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_run_ends_its_job_in_error_once_renews_no_lease_and_its_worker_serves_the_next()
{
    // A renewal every 200 ms, so a lease keeper that outlived the run would renew while the
    // next job runs. Three attempts allowed: a panic is a bug of kiln's, ended at once, not retried.
    let mut h = Harness::new(Duration::from_millis(600));
    let panics = h.submit(PANIC, 3).await;
    // Runs over several renewal periods, which shows that renewals are counted.
    let next = h.submit(SLEEP, 1).await;
    h.start_worker();

    h.until_ended(next).await;
    let job = h.job(panics).await;
    assert_eq!(job.status, Status::Error);
    assert_eq!(job.outcome, Some(Outcome::RunnerError));
    assert_eq!(job.error.as_deref(), Some(PANICKED));
    assert_eq!(h.terminal_events(panics).await, [Some(1)]);
    assert_eq!(h.job(next).await.status, Status::Succeeded);
    assert!(
        h.workers.running.is_empty(),
        "the panicked run left its entry"
    );

    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(
        h.renewals(panics),
        0,
        "a lease was renewed after its run panicked"
    );
    assert!(
        h.renewals(next) > 0,
        "the second job ran for a second on a 600 ms lease"
    );
    assert_eq!(h.terminal_events(panics).await, [Some(1)]);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_job_was_taken_over_is_stopped_and_its_result_discarded() {
    let mut h = Harness::new(Duration::from_secs(30));
    let id = h.submit(HOLD, 3).await;
    h.start_worker();
    let started = h.next_call().await;
    assert_eq!(
        (started.job, started.attempt, started.seen),
        (id, 1, Seen::Started)
    );

    // As a restart of this node does for its previous instance's jobs: the job is requeued,
    // and its next claim is a new attempt.
    let taken = h.store.rescue_node("test/", "test/elsewhere/").await;
    assert_eq!(taken.expect("rescue"), 1);

    let stopped = h.next_call().await;
    assert_eq!((stopped.attempt, stopped.seen), (1, Seen::Stopped));
    let again = h.next_call().await;
    assert_eq!((again.attempt, again.seen), (2, Seen::Started));
    h.until_ended(id).await;
    let job = h.job(id).await;
    assert_eq!((job.status, job.attempt), (Status::Succeeded, 2));
    assert_eq!(job.stdout, "attempt 2");
    assert_eq!(h.terminal_events(id).await, [Some(2)]);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_lease_cannot_be_renewed_is_stopped_before_it_expires_and_its_result_discarded()
{
    const LEASE: Duration = Duration::from_secs(30);
    let mut h = Harness::new(LEASE);
    refuse_renewals(&h.dir.path().join("q.db"));
    let held = h.submit(HOLD, 3).await;
    let next = h.submit(SUCCEED, 3).await;
    h.start_worker();
    let started = h.next_call().await;
    assert_eq!((started.job, started.seen), (held, Seen::Started));

    let stopped = h.next_call().await;
    assert_eq!((stopped.job, stopped.seen), (held, Seen::Stopped));
    assert!(
        stopped.at - started.at < LEASE,
        "stopped after the lease ran out"
    );
    // The worker's next claim follows whatever it did with the stopped run's result.
    h.until_ended(next).await;
    let job = h.job(held).await;
    assert_eq!(
        (job.status, job.attempt),
        (Status::Running, 1),
        "left to the rescuer"
    );
    assert!(h.terminal_events(held).await.is_empty());
    assert!(h.workers.running.is_empty());
}

#[tokio::test(start_paused = true)]
async fn stopping_after_the_grace_puts_a_running_job_back_in_the_queue_and_claims_no_other() {
    const GRACE: Duration = Duration::from_secs(10);
    let mut h = Harness::new(Duration::from_secs(30));
    let held = h.submit(HOLD, 3).await;
    let waiting = h.submit(SUCCEED, 3).await;
    h.start_worker();
    let started = h.next_call().await;
    assert_eq!((started.job, started.seen), (held, Seen::Started));

    h.stopping.claiming.cancel();
    let stopping = h.stopping.clone();
    stopping.drain(&mut h.tasks, GRACE).await;

    let stopped = h.next_call().await;
    assert_eq!((stopped.job, stopped.seen), (held, Seen::Stopped));
    assert!(
        stopped.at - started.at >= GRACE,
        "killed before the grace was over"
    );
    let job = h.job(held).await;
    assert_eq!((job.status, job.attempt), (Status::Queued, 1));
    let events = h.events(held).await;
    let (kind, attempt, data) = events.last().expect("events");
    assert_eq!((*kind, *attempt), (EventKind::Retrying, Some(1)));
    assert_eq!(data["reason"], "the server shut down while it ran");
    let other = h.job(waiting).await;
    assert_eq!((other.status, other.attempt), (Status::Queued, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_keeps_its_job_claimed_for_a_delay_that_doubles_before_it_is_claimed_again()
{
    let mut h = Harness::new(Duration::from_secs(30));
    let id = h.submit(FAIL_TWICE, 3).await;
    h.start_worker();
    let mut starts = Vec::new();
    for attempt in 1..=3 {
        let call = h.next_call().await;
        assert_eq!(
            (call.job, call.attempt, call.seen),
            (id, attempt, Seen::Started)
        );
        starts.push(call.at);
    }
    h.until_ended(id).await;

    let first_wait = starts[1] - starts[0];
    let second_wait = starts[2] - starts[1];
    assert!(
        (RUN_RETRY_BASE..2 * RUN_RETRY_BASE).contains(&first_wait),
        "waited {first_wait:?} after the first failed start"
    );
    assert!(
        (2 * RUN_RETRY_BASE..4 * RUN_RETRY_BASE).contains(&second_wait),
        "waited {second_wait:?} after the second failed start"
    );
    let job = h.job(id).await;
    assert_eq!((job.status, job.attempt), (Status::Succeeded, 3));
    let events = h.events(id).await;
    let retries: Vec<_> = events
        .into_iter()
        .filter(|(kind, ..)| *kind == EventKind::Retrying)
        .map(|(_, attempt, data)| (attempt, data["reason"].as_str().map(str::to_owned)))
        .collect();
    let reason = "kiln could not run it: could not start /nowhere/interpreter: entity not found";
    assert_eq!(
        retries,
        [
            (Some(1), Some(reason.into())),
            (Some(2), Some(reason.into()))
        ]
    );
}

/// Log lines, kept for a test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        let bytes = self.0.lock().expect("logs").clone();
        String::from_utf8(bytes).expect("text")
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_task_that_ends_before_shutdown_is_logged_as_an_error_and_then_once_stopped() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let stopping = Stopping::default();
    let mut tasks = Tasks::new();
    tasks.spawn(async { "worker" });
    tasks.spawn(async { panic!("a bug in a worker") });

    let both_seen = async {
        while logs.text().lines().count() < 2 {
            tokio::task::yield_now().await;
        }
        stopping.claiming.cancel();
    };
    tokio::join!(stopping.watch(&mut tasks), both_seen);
    let text = logs.text();
    let ended = text
        .lines()
        .find(|l| l.contains("a worker task ended before shutdown"));
    assert!(ended.is_some_and(|l| l.contains("ERROR")), "{text}");
    let failed = text.lines().find(|l| l.contains("a worker task failed"));
    assert!(failed.is_some_and(|l| l.contains("ERROR") && l.contains("a bug in a worker")));

    tasks.spawn(async { "rescuer" });
    stopping.drain(&mut tasks, Duration::from_secs(1)).await;
    let stopped = logs.text();
    let stopped = stopped.lines().find(|l| l.contains("rescuer"));
    assert!(stopped.is_some_and(|l| l.contains("DEBUG") && l.contains("stopped")));
}

#[tokio::test(start_paused = true)]
async fn a_run_the_kernel_refuses_for_what_the_job_asked_ends_it_at_once_as_its_own_fault() {
    let mut h = Harness::new(Duration::from_secs(60));
    let refused = h.submit(REFUSED, 3).await;
    let next = h.submit(SUCCEED, 1).await;
    h.start_worker();
    h.until_ended(next).await;

    let job = h.job(refused).await;
    assert_eq!(
        (job.status, job.outcome, job.attempt),
        (Status::Failed, Some(Outcome::InvalidRequest), 1),
        "not retried though attempts were left"
    );
    let error = job.error.expect("the reason");
    assert!(error.contains("Argument list too long"), "{error}");
    let kinds: Vec<EventKind> = h.events(refused).await.into_iter().map(|e| e.0).collect();
    assert_eq!(
        kinds,
        [EventKind::Queued, EventKind::Started, EventKind::Failed]
    );
}
