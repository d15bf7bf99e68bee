//! Workers: claim a queued job, run it, record what happened. Also the rescuer, which takes back
//! jobs whose worker stopped renewing its lease.
//!
//! A worker holds no transaction while code runs: claiming is one short write, the run happens
//! outside the database, and finishing is another short write that only lands if the job is still
//! running under the same attempt. While the code runs a separate task renews the lease; if the
//! lease cannot be renewed before it expires, the run is killed, so a job the rescuer hands to
//! someone else is never running twice.
//!
//! A cancel made through another server (another node on PostgreSQL, another process on the
//! same SQLite file) reaches a run here through the bus: its `job.cancelled` notice makes the
//! run's lease keeper renew at once, which the store refuses for a cancelled job, and the run
//! is stopped as one that lost its job, within the time the notice takes rather than a third
//! of a lease.
//!
//! Each attempt runs in a task of its own, the job's panic boundary (river's `jobexecutor`
//! recovers the same way): a panic on the way, which is a bug in kiln, ends that job `error` at
//! once (it would likely panic again if retried), and its worker goes on to the next. The helper tasks of a run (the
//! lease keeper, the progress recorder) are aborted when their run ends, however it ends, so no
//! lease outlives its run.
//!
//! What runs a claimed job is an [`Execute`]: the server's is the sandboxed [`Runner`]. The
//! queue benchmark supplies one that runs nothing in-process, so the claim, lease and finish path
//! it measures is this very code, without a runtime name the HTTP API could ever select.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Notice;
use crate::job::verdict::judge;
use crate::job::{EventKind, Finish, JobId, Outcome, RunResult};
use crate::live::Live;
use crate::metrics::METRICS;
use crate::runner::{Builds, Reporting, RunError, RunOutput, RunRequest, Runner};
use crate::runtime::Runtimes;
use crate::store::{ClaimedJob, Store};

/// The delay before a job whose run could not be set up goes back to the queue, doubling with
/// each attempt up to [`RUN_RETRY_MAX`].
const RUN_RETRY_BASE: Duration = Duration::from_millis(250);
const RUN_RETRY_MAX: Duration = Duration::from_secs(30);

/// The error a job ends with when running it panicked; the panic's own message goes to the log.
const PANICKED: &str = "kiln panicked while running this job";

/// The tasks [`Workers::spawn`] starts, each named by what it is (a worker, the rescuer, the
/// build sweeper) for the log line when it ends.
pub type Tasks = JoinSet<&'static str>;

/// The runs in progress in this process, so that cancelling a job can stop its process.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<JobId, Run>>>);

/// A run in [`Running`]: its attempt, what stops it, and what says its worker is done with it.
struct Run {
    attempt: u32,
    stop: CancellationToken,
    settled: CancellationToken,
    /// Makes the lease keeper renew now rather than at its next period.
    recheck: Arc<Notify>,
}

impl Running {
    /// Stops the run of `id` if it is this attempt's and runs here. Returns what is cancelled
    /// once its worker is done with it (what a cancelled run produced is then kept on its job),
    /// if there was one.
    pub fn stop(&self, id: JobId, attempt: u32) -> Option<CancellationToken> {
        let runs = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match runs.get(&id) {
            Some(run) if run.attempt == attempt => {
                run.stop.cancel();
                Some(run.settled.clone())
            }
            _ => None,
        }
    }

    /// Has the run of `id` here, if there is one, check at once that its job is still its own.
    fn recheck(&self, id: JobId) {
        let runs = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(run) = runs.get(&id) {
            run.recheck.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |runs| runs.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enters the run of this attempt; it leaves when the returned entry is dropped, which
    /// happens on every way out of a run, a panic's unwinding included.
    fn enter(
        &self,
        id: JobId,
        attempt: u32,
        stop: CancellationToken,
        recheck: Arc<Notify>,
    ) -> Entry<'_> {
        let mut runs = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let settled = CancellationToken::new();
        runs.insert(
            id,
            Run {
                attempt,
                stop,
                settled: settled.clone(),
                recheck,
            },
        );
        Entry {
            running: self,
            id,
            attempt,
            settled,
        }
    }

    /// Leaves only this attempt's run: a later attempt of the same job may run here by now.
    fn leave(&self, id: JobId, attempt: u32) {
        let mut runs = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if runs.get(&id).is_some_and(|run| run.attempt == attempt) {
            runs.remove(&id);
        }
    }
}

/// A run's place in [`Running`], given up on drop.
struct Entry<'a> {
    running: &'a Running,
    id: JobId,
    attempt: u32,
    settled: CancellationToken,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.running.leave(self.id, self.attempt);
        self.settled.cancel();
    }
}

/// A task that is aborted when its handle is dropped: a run's helper tasks end with the run.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    fn spawn(task: impl Future<Output = T> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(task))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// What a task's panic said, for the log.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

/// What a task's end that is not its return says, for the log: its panic's message, or that
/// it was cancelled.
fn join_error_message(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic_message(&*panic).to_owned(),
        Err(error) => error.to_string(),
    }
}

/// Runs one attempt of a claimed job to its end.
pub trait Execute: Send + Sync + 'static {
    /// As [`Runner::run`]: `Err` only when the job could not be run at all.
    fn execute(
        &self,
        request: RunRequest<'_>,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<RunOutput, RunError>> + Send;

    /// The binaries this executor compiled for batches, dropped when their batch completes.
    fn builds(&self) -> Option<&Builds>;
}

impl Execute for Runner {
    fn execute(
        &self,
        request: RunRequest<'_>,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<RunOutput, RunError>> + Send {
        self.run(request, stop)
    }

    fn builds(&self) -> Option<&Builds> {
        Some(Runner::builds(self))
    }
}

/// What every worker shares.
pub struct Workers<E = Runner> {
    pub store: Store,
    pub runner: E,
    pub runtimes: Arc<Runtimes>,
    pub running: Running,
    /// Where running jobs' output goes to live watchers.
    pub live: Live,
    pub lease: Duration,
    pub poll_interval: Duration,
    /// Lease owners are `<node>/<instance>/w<n>`: this is `<node>/<instance>/`.
    pub owner_prefix: String,
}

/// The two stages of stopping: first stop taking new jobs, later kill what still runs.
#[derive(Clone, Default)]
pub struct Stopping {
    pub claiming: CancellationToken,
    pub running: CancellationToken,
}

impl Stopping {
    /// Looks at every task of `tasks` that ends until claiming stops. None of them ends before
    /// that, so one that does is a bug, logged as an error: that worker no longer serves.
    pub async fn watch(&self, tasks: &mut Tasks) {
        loop {
            let ended = tokio::select! {
                ended = tasks.join_next() => ended,
                () = self.claiming.cancelled() => return,
            };
            match ended {
                Some(ended) => self.ended(ended),
                None => return self.claiming.cancelled().await,
            }
        }
    }

    /// Shutdown's second stage, once claiming has stopped: running jobs get `grace` to finish,
    /// then they are killed and their workers put them back in the queue. Returns when every
    /// task has ended.
    pub async fn drain(&self, tasks: &mut Tasks, grace: Duration) {
        let drained = tokio::time::timeout(grace, self.join_all(tasks)).await;
        if drained.is_err() {
            tracing::warn!("grace period over: stopping the jobs still running");
            self.running.cancel();
            self.join_all(tasks).await;
        }
    }

    async fn join_all(&self, tasks: &mut Tasks) {
        while let Some(ended) = tasks.join_next().await {
            self.ended(ended);
        }
    }

    fn ended(&self, ended: Result<&'static str, JoinError>) {
        match ended {
            Ok(task) if self.claiming.is_cancelled() => tracing::debug!(task, "stopped"),
            Ok(task) => tracing::error!(task, "a worker task ended before shutdown"),
            Err(e) => {
                let error = join_error_message(e);
                tracing::error!(%error, "a worker task failed");
            }
        }
    }
}

impl<E: Execute> Workers<E> {
    /// Starts `count` workers, the rescuer and the cancel listener.
    pub fn spawn(self: &Arc<Self>, count: usize, stopping: &Stopping) -> Tasks {
        let mut tasks = JoinSet::new();
        for index in 0..count {
            let (workers, stopping) = (Arc::clone(self), stopping.clone());
            tasks.spawn(async move {
                workers.work(index, stopping).await;
                "worker"
            });
        }
        let (workers, stop) = (Arc::clone(self), stopping.claiming.clone());
        tasks.spawn(async move {
            workers.rescue(stop).await;
            "rescuer"
        });
        // Ends with claiming, as the rescuer does: during the grace period a cancel from
        // elsewhere still reaches a run here, at its lease keeper's next renewal.
        let (workers, stop) = (Arc::clone(self), stopping.claiming.clone());
        tasks.spawn(async move {
            workers.hear_cancels(stop).await;
            "cancel listener"
        });
        if self.runner.builds().is_some() {
            let (workers, stop) = (Arc::clone(self), stopping.claiming.clone());
            tasks.spawn(async move {
                workers.sweep_builds(stop).await;
                "build sweeper"
            });
        }
        tasks
    }

    /// Drops a batch's shared build once the batch completes. Should notices be missed (a
    /// lagging receiver), every cached batch is checked against the store instead.
    async fn sweep_builds(&self, stop: CancellationToken) {
        let Some(builds) = self.runner.builds() else {
            return;
        };
        let mut notices = self.store.bus().subscribe();
        loop {
            let notice = tokio::select! {
                notice = notices.recv() => notice,
                () = stop.cancelled() => return,
            };
            match notice {
                Ok(Notice {
                    kind: EventKind::BatchCompleted,
                    batch_id: Some(batch),
                    ..
                }) => builds.forget(batch),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    for batch in builds.batches() {
                        match self.store.batch_is_done(batch).await {
                            Ok(Some(false)) => {}
                            Ok(_) => builds.forget(batch),
                            Err(e) => tracing::warn!(error = %e, "cannot check a batch"),
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Passes each `job.cancelled` notice to the run of that job here, if any (see the module
    /// doc). Lagging behind loses nothing that matters: the lease keeper's next renewal finds
    /// the cancel all the same.
    async fn hear_cancels(&self, stop: CancellationToken) {
        let mut notices = self.store.bus().subscribe();
        loop {
            let notice = tokio::select! {
                notice = notices.recv() => notice,
                () = stop.cancelled() => return,
            };
            match notice {
                Ok(Notice {
                    kind: EventKind::Cancelled,
                    job_id: Some(job),
                    ..
                }) => self.running.recheck(job),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn work(self: &Arc<Self>, index: usize, stopping: Stopping) {
        let owner = format!("{}w{index}", self.owner_prefix);
        let work = self.store.bus().work();
        let mut next = None;
        loop {
            // A job claimed together with the previous result is this worker's already, so it
            // runs even if stopping has begun; shutdown's second stage handles it like any other.
            if let Some(job) = next.take() {
                next = self.work_job(&owner, job, &stopping).await;
                continue;
            }
            // Registered before claiming, so a job committed between an empty claim and the
            // wait below still wakes this worker.
            let notified = work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if stopping.claiming.is_cancelled() {
                return;
            }
            match self.store.claim(&owner, self.lease).await {
                Ok(Some(job)) => {
                    next = Some(job);
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, worker = %owner, "claim failed"),
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = stopping.claiming.cancelled() => return,
            }
        }
    }

    /// Takes a claimed job to its recorded end; returns the next job if it was claimed along
    /// with that end. The attempt runs in a task of its own: should it panic, the job is treated
    /// as one kiln could not run (the store takes that end only if the job still runs under this
    /// attempt, so it never ends twice) and the worker goes on.
    async fn work_job(
        self: &Arc<Self>,
        owner: &str,
        job: ClaimedJob,
        stopping: &Stopping,
    ) -> Option<ClaimedJob> {
        let job = Arc::new(job);
        let attempt = AbortOnDrop::spawn(Arc::clone(self).attempt(
            owner.to_owned(),
            Arc::clone(&job),
            stopping.clone(),
        ));
        match attempt.await {
            Ok(next) => next,
            Err(e) if e.is_panic() => {
                let panic = join_error_message(e);
                tracing::error!(job = %job.id, attempt = job.attempt, %panic, "{PANICKED}");
                // A bug, not the job's fault, and likely to recur: ended at once, not retried.
                let error = Some(PANICKED.to_owned());
                self.record(
                    &job,
                    Outcome::RunnerError,
                    RunResult::default(),
                    error,
                    None,
                )
                .await
            }
            // Only a runtime that shuts down cancels it: the job is left to the rescuer.
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "the run's task was cancelled");
                None
            }
        }
    }

    /// Runs one attempt of a claimed job and records its end (see [`Workers::work_job`]).
    async fn attempt(
        self: Arc<Self>,
        owner: String,
        job: Arc<ClaimedJob>,
        stopping: Stopping,
    ) -> Option<ClaimedJob> {
        tracing::debug!(job = %job.id, attempt = job.attempt, "claimed");
        METRICS.claimed(job.id, job.attempt);
        let kill = &stopping.running;
        // Not while stopping: then the next job must stay queued.
        let claim_next = (!stopping.claiming.is_cancelled()).then_some(owner.as_str());
        let Some(runtime) = self.runtimes.get(&job.runtime) else {
            let error = format!("runtime {:?} is not available on this server", job.runtime);
            let result = RunResult::default();
            return self
                .record(&job, Outcome::RunnerError, result, Some(error), claim_next)
                .await;
        };
        let stop = kill.child_token();
        let lease_lost = CancellationToken::new();
        let recheck = Arc::new(Notify::new());
        let entry = self
            .running
            .enter(job.id, job.attempt, stop.clone(), Arc::clone(&recheck));
        let keeper = AbortOnDrop::spawn(keep_lease(
            Lease {
                store: self.store.clone(),
                id: job.id,
                attempt: job.attempt,
                owner: owner.clone(),
                length: self.lease,
            },
            recheck,
            stop.clone(),
            lease_lost.clone(),
        ));
        let (progress, latest) = watch::channel(None);
        let run_ended = CancellationToken::new();
        let recorder = AbortOnDrop::spawn(crate::progress::record(
            self.store.clone(),
            job.id,
            job.attempt,
            latest,
            run_ended.clone(),
        ));
        // Outlives the run until its result is stored: a watcher who joins in between still
        // gets the output.
        let output = self.live.run_output(job.id, job.attempt);
        let stdin = job.interactive.then(|| self.live.stdins().reader(job.id));
        let reporting = Reporting {
            output,
            progress,
            stdin,
        };
        let request = RunRequest {
            job_id: job.id,
            attempt: job.attempt,
            runtime,
            code: job.code.as_bytes(),
            stdin: job.stdin.as_bytes(),
            args: &job.args,
            files: &job.files,
            outputs: &job.outputs,
            limits: job.limits,
            reporting: Some(&reporting),
            batch: job.case.as_ref().map(|case| case.batch_id),
        };
        let ran = self.runner.execute(request, stop).await;
        // The last progress is stored before the result, so it never follows the terminal event.
        run_ended.cancel();
        let Reporting {
            output: _output,
            progress,
            ..
        } = reporting;
        drop(progress);
        if let Err(e) = recorder.await {
            tracing::warn!(job = %job.id, error = %e, "progress recording failed");
        }
        drop(keeper);
        // Left only once what the run produced is stored: a cancel waits for it (see `stop`).
        let _entry = entry;

        if lease_lost.is_cancelled() {
            // Cancelled (by another server), or rescued and possibly running elsewhere: the job
            // is not ours to finish. A cancelled one keeps what the run produced.
            tracing::info!(job = %job.id, attempt = job.attempt, "stopped: no longer holds the job");
            if let Ok(out) = ran {
                self.keep_cancelled(&job, out.result).await;
            }
            return None;
        }
        let claim_next = claim_next.filter(|_| !stopping.claiming.is_cancelled());
        let next = self.settle(&job, ran, kill, claim_next).await;
        if job.interactive {
            // What was written and not read was for this run; a retry reads from its own start.
            self.live.stdins().forget(job.id);
        }
        next
    }

    /// Records how a run that still held its job ended, and claims the next with `claim_next`.
    async fn settle(
        &self,
        job: &ClaimedJob,
        ran: Result<RunOutput, RunError>,
        kill: &CancellationToken,
        claim_next: Option<&str>,
    ) -> Option<ClaimedJob> {
        match ran {
            Ok(out) if out.outcome == Outcome::Cancelled && kill.is_cancelled() => {
                let reason = "the server shut down while it ran".to_owned();
                if let Err(e) = self
                    .store
                    .release(job.id, job.attempt, Outcome::Shutdown, reason)
                    .await
                {
                    tracing::error!(job = %job.id, error = %e, "could not requeue at shutdown");
                }
                None
            }
            // Stopped by a cancel here, which ended the job; the run's output and usage are
            // kept on it, as a timed-out run's are.
            Ok(out) if out.outcome == Outcome::Cancelled => {
                self.keep_cancelled(job, out.result).await;
                None
            }
            Ok(out) => {
                self.record(job, out.outcome, out.result, None, claim_next)
                    .await
            }
            // The job's own doing, which another attempt would meet again: ended at once.
            Err(e @ RunError::Refused { .. }) => {
                tracing::info!(job = %job.id, error = %e, "refused by the kernel");
                let result = RunResult::default();
                self.record(
                    job,
                    Outcome::InvalidRequest,
                    result,
                    Some(e.to_string()),
                    claim_next,
                )
                .await
            }
            Err(e) => {
                let reason = format!("kiln could not run it: {e}");
                self.run_failed(job, reason, kill).await;
                None
            }
        }
    }

    /// Stores what a cancelled run produced on its job, if a cancel ended it during this attempt.
    async fn keep_cancelled(&self, job: &ClaimedJob, result: RunResult) {
        match self
            .store
            .keep_cancelled_run(job.id, job.attempt, result)
            .await
        {
            Ok(true) => tracing::debug!(job = %job.id, "kept the cancelled run's output"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not keep the cancelled run's output");
            }
        }
    }

    /// kiln could not run the job (work directory, sandbox, interpreter): the job is not to
    /// blame, so it goes back to the queue while attempts remain, after a delay that doubles
    /// with each attempt so a broken host does not spin through them; then it ends `error` with
    /// `reason`. (A run the kernel refused for what the job asked is ended at once instead, see
    /// [`RunError::Refused`].) The job stays claimed during the delay; its lease was kept until
    /// the run ended and is far longer than the delay.
    async fn run_failed(&self, job: &ClaimedJob, reason: String, kill: &CancellationToken) {
        let delay = RUN_RETRY_BASE
            .saturating_mul(1 << job.attempt.saturating_sub(1).min(6))
            .min(RUN_RETRY_MAX)
            .min(self.lease / 2);
        let retry_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(job = %job.id, attempt = job.attempt, error = %reason, retry_ms, "could not run");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = kill.cancelled() => {}
        }
        if let Err(e) = self
            .store
            .release(job.id, job.attempt, Outcome::RunnerError, reason)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "could not requeue after a failed start");
        }
    }

    /// Writes the result, retrying for a while if the database is briefly unavailable: giving up
    /// early would let the lease expire and the job run again. With `claim_next` (the worker's
    /// lease owner), the same write claims the worker's next job and this returns it.
    async fn record(
        &self,
        job: &ClaimedJob,
        outcome: Outcome,
        result: RunResult,
        error: Option<String>,
        mut claim_next: Option<&str>,
    ) -> Option<ClaimedJob> {
        // A case is judged here, off the writer thread; kiln's own errors need no comparison.
        let judged = job.case.as_ref().filter(|_| error.is_none()).map(|case| {
            judge(
                outcome,
                &result,
                case.expected_output.as_ref().map(|e| e.as_bytes()),
                case.compare,
            )
        });
        let ran_ms = result.wall_ms;
        let end = Arc::new(Finish {
            outcome,
            result,
            error,
            judged,
        });
        let mut delay = Duration::from_millis(50);
        let deadline = Instant::now() + self.lease;
        loop {
            let (id, attempt, end) = (job.id, job.attempt, Arc::clone(&end));
            let written = match claim_next {
                Some(owner) => {
                    let lease = self.lease;
                    self.store
                        .finish_and_claim(id, attempt, end, owner, lease)
                        .await
                }
                None => self
                    .store
                    .finish(id, attempt, end)
                    .await
                    .map(|finished| (finished, None)),
            };
            match written {
                Ok((true, next)) => {
                    tracing::debug!(job = %job.id, outcome = outcome.as_str(), "finished");
                    METRICS.run_recorded(outcome, ran_ms);
                    return next;
                }
                Ok((false, next)) => {
                    tracing::info!(job = %job.id, "result discarded: the job was cancelled or rescued");
                    return next;
                }
                // A claim that fails must not keep the result from being written: retried alone.
                Err(e) if claim_next.is_some() => {
                    tracing::warn!(job = %job.id, error = %e, "could not record the result and claim");
                    claim_next = None;
                }
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    tracing::warn!(job = %job.id, error = %e, "could not record the result yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "could not record the result");
                    return None;
                }
            }
        }
    }

    /// The rescuer: every third of a lease, while this process leads the maintenance (see
    /// [`Store::lead`]; on PostgreSQL one node of the cluster does), requeues or ends the jobs
    /// whose lease ran out, whichever node ran them. Gives the leadership up when it stops.
    async fn rescue(&self, stop: CancellationToken) {
        let period = (self.lease / 3).max(Duration::from_millis(100));
        let mut leading = false;
        loop {
            match self.store.lead(&self.owner_prefix, self.lease).await {
                Ok(now) => {
                    if now != leading {
                        tracing::info!(leading = now, "maintenance leadership changed");
                    }
                    leading = now;
                }
                // Not sure of leading any more: another node may take over once the term ends.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the maintenance leadership");
                    leading = false;
                }
            }
            if leading {
                match self.store.rescue_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(jobs = n, "rescued jobs whose lease expired"),
                    Err(e) => tracing::warn!(error = %e, "rescue failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.cancelled() => break,
            }
        }
        if leading && let Err(e) = self.store.resign(&self.owner_prefix).await {
            tracing::warn!(error = %e, "cannot give up the maintenance leadership");
        }
    }
}

/// The lease a run holds on its job.
struct Lease {
    store: Store,
    id: JobId,
    attempt: u32,
    owner: String,
    length: Duration,
}

/// Renews the lease every third of its length and whenever `recheck` is woken, until the run is
/// stopped (its end is then near, and the task is aborted when it comes). Stops the run once
/// the job is no longer ours (cancelled or rescued), or once the lease is about to run out
/// without a successful renewal.
async fn keep_lease(
    lease: Lease,
    recheck: Arc<Notify>,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let Lease {
        store,
        id,
        attempt,
        owner,
        length: lease,
    } = lease;
    let period = lease / 3;
    let mut expires = Instant::now() + lease;
    loop {
        // Wake early enough to stop the run before the lease runs out if renewals keep failing.
        let margin = lease / 10;
        let next = (Instant::now() + period).min(expires - margin);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = recheck.notified() => {}
            () = stop.cancelled() => return,
        }
        if Instant::now() + margin >= expires {
            tracing::error!(job = %id, "lease about to expire without renewal: stopping the run");
            lost.cancel();
            stop.cancel();
            return;
        }
        let asked = Instant::now();
        match store.renew(id, attempt, &owner, lease).await {
            Ok(true) => expires = asked + lease,
            Ok(false) => {
                lost.cancel();
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!(job = %id, error = %e, "lease renewal failed"),
        }
    }
}

#[cfg(test)]
mod tests;
