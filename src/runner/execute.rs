//! One process of a run from start to end: started (plainly or in the sandbox), fed its stdin,
//! its output captured, held to its wall-clock, CPU and output limits and to cancellation, then
//! killed, reaped and measured into a [`RunOutput`], with the outcome its end amounts to.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::capture::{capture, feed};
use super::outputs;
use super::process::{Attached, Process};
use super::{Isolation, Reporting, RunError, RunOutput, launch, plain};
use crate::job::outputs::{Collected, OutputCaps};
use crate::job::{Limits, Outcome, RunResult, failure};
use crate::live::Stream;
use crate::sandbox::{OverMemory, WorkFile, WorkMount};

/// How long a run waits for its output pipes to close after the process group was killed. Only a
/// process that escaped the group (setsid) can keep a pipe open that long; what it writes later
/// is not worth holding the run for. What the pipes hold when the wait ends is still kept.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(150);

/// How often a sandboxed run's CPU time is read against its limit: the run may overshoot the
/// limit (plus [`CPU_GRACE`]) by this much times its number of busy cores.
const CPU_POLL: Duration = Duration::from_millis(50);

/// How far past its CPU limit a run is let go before it is killed as a whole, so that a single
/// process meets its own RLIMIT_CPU first.
const CPU_GRACE: Duration = Duration::from_millis(200);

/// One process of a run: the job's program, or a compiled runtime's build before it.
pub(super) struct Invocation<'a> {
    pub(super) program: PathBuf,
    /// Arguments after the program's own name.
    pub(super) argv: Vec<String>,
    /// The runtime's own variables, added to the environment every run gets.
    pub(super) env: Vec<(String, String)>,
    pub(super) stdin: &'a [u8],
    pub(super) limits: Limits,
    /// What the run's `/work` holds at the start (see
    /// [`staged_entries`](super::workdir::staged_entries)).
    pub(super) entries: &'a [WorkFile<'a>],
    pub(super) staged_bytes: u64,
    pub(super) work: WorkMount,
    /// The job and where its run reports; only the job's own program reports, not its build.
    pub(super) reporting: Option<&'a Reporting>,
    /// A compiled runtime's build step, rather than the job's own program.
    pub(super) build: bool,
    /// The files to keep from the work directory once the run is over, and how many.
    pub(super) outputs: &'a [String],
    pub(super) output_caps: OutputCaps,
}

pub(super) async fn execute(
    invocation: &Invocation<'_>,
    work_dir: &Path,
    isolation: &Isolation,
    cancel: &CancellationToken,
) -> Result<RunOutput, RunError> {
    let limits = invocation.limits;
    let spawn_error = |source: std::io::Error| match refused_by_request(&source) {
        true => RunError::Refused { source },
        false => RunError::Spawn {
            program: invocation.program.clone(),
            source,
        },
    };
    let started = Instant::now();
    let attached = match isolation {
        Isolation::None => plain::start(invocation, work_dir),
        Isolation::Sandbox(sandbox) => launch::start(sandbox, invocation, work_dir).await,
    };
    let attached = match attached {
        Ok(attached) => attached,
        // What the run was given (or its start) took its memory limit before its program
        // started: the run's own doing, ended as if killed for it.
        Err(e) => match OverMemory::of(&e) {
            Some(over) => {
                let result = RunResult {
                    wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    memory_kb: over.memory_kb,
                    ..RunResult::default()
                };
                return Ok(RunOutput {
                    outcome: Outcome::MemoryLimit,
                    result,
                });
            }
            None => return Err(spawn_error(e)),
        },
    };
    let Attached {
        stdin,
        stdout,
        stderr,
        progress,
        mut process,
    } = attached;
    let pid = process.pid();
    let wait_error = |source| RunError::Wait { pid, source };

    // Ends the I/O tasks however this function returns, including its future being dropped.
    let stop = CancellationToken::new();
    let _stop_io = stop.clone().drop_guard();
    let overflow = CancellationToken::new();
    let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
    // Cancelled once the process is dead: a capture that hit the cap holds its pipe open until
    // then.
    let killed = CancellationToken::new();
    let _killed = killed.clone().drop_guard();
    let tap = |stream| invocation.reporting.map(|r| r.output.tap(stream));
    let capture_stream = |pipe, tap| {
        capture(
            pipe,
            cap,
            tap,
            overflow.clone(),
            killed.clone(),
            stop.clone(),
        )
    };
    let stdout = tokio::spawn(capture_stream(stdout, tap(Stream::Stdout)));
    let stderr = tokio::spawn(capture_stream(stderr, tap(Stream::Stderr)));
    let progress = match (progress, invocation.reporting) {
        (Some(pipe), Some(reporting)) => {
            let latest = reporting.progress.clone();
            Some(tokio::spawn(crate::progress::read(
                pipe,
                latest,
                stop.clone(),
            )))
        }
        _ => None,
    };
    match invocation.reporting.and_then(|r| r.stdin.clone()) {
        Some(more) => {
            tokio::spawn(feed(
                stdin,
                invocation.stdin.to_vec(),
                Some(more),
                stop.clone(),
            ));
        }
        // Closing at once gives the program EOF instead of a read that never returns.
        None if invocation.stdin.is_empty() => drop(stdin),
        None => {
            tokio::spawn(feed(stdin, invocation.stdin.to_vec(), None, stop.clone()));
        }
    }

    let ended = process.ended().map_err(spawn_error)?;
    tokio::pin!(ended);
    let mut over = None;
    let fired = tokio::select! {
        biased;
        ended = &mut ended => {
            over = Some(ended.map_err(wait_error)?);
            None
        }
        () = cancel.cancelled() => Some(Outcome::Cancelled),
        () = overflow.cancelled() => Some(Outcome::OutputLimit),
        () = tokio::time::sleep(Duration::from_millis(limits.wall_ms)) => Some(Outcome::WallTimeLimit),
        () = cpu_limit_reached(&process, limits.cpu_ms) => Some(Outcome::CpuTimeLimit),
    };
    // Killed before reaping, not after: until the leader is reaped its pid cannot be reused, so
    // the signal can only reach this job's group, including anything it left in the background.
    process.kill();
    let over = match over {
        Some(over) => over,
        None => ended.await.map_err(wait_error)?,
    };
    let measured = process.exit(over).map_err(wait_error)?;
    killed.cancel();
    let wall = started.elapsed();
    // Every process of the run is gone: what is in its `/work` now is what it left.
    let work = process.take_work();
    process.dispose();
    let files = match invocation.outputs {
        [] => Collected::default(),
        patterns => {
            collect_files(work, work_dir, isolation, patterns, invocation.output_caps).await
        }
    };

    // The last progress line is read before the run is over, like the output: the worker
    // stores it when the run returns.
    let outputs = async {
        if let Some(progress) = progress {
            let _ = progress.await;
        }
        (stdout.await, stderr.await)
    };
    tokio::pin!(outputs);
    let (stdout, stderr) = tokio::select! {
        outputs = &mut outputs => outputs,
        () = tokio::time::sleep(DRAIN_GRACE) => {
            stop.cancel();
            outputs.await
        }
    };
    let (stdout, stderr) = (stdout?, stderr?);

    let truncated = stdout.truncated || stderr.truncated;
    let stderr_truncated = stderr.truncated;
    let stderr = stderr.bytes;
    let outcome = fired
        .or(truncated.then_some(Outcome::OutputLimit))
        .or(measured.oom_killed.then_some(Outcome::MemoryLimit))
        .unwrap_or_else(|| exit_outcome(measured.status, measured.cpu_ms, &limits));
    // A runtime that could not get memory may end on its own, reporting it: as over its limit
    // as a run the cgroup killed.
    let outcome = match outcome {
        Outcome::NonzeroExit | Outcome::Signal
            if failure::out_of_memory(&String::from_utf8_lossy(&stderr)) =>
        {
            Outcome::MemoryLimit
        }
        other => other,
    };
    let status = measured.status;
    let result = RunResult {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout_truncated: stdout.truncated,
        stderr_truncated,
        stdout: stdout.bytes,
        stderr,
        wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
        cpu_ms: measured.cpu_ms,
        memory_kb: measured.memory_kb,
        build: None,
        files,
    };
    Ok(RunOutput { outcome, result })
}

/// The files of the run's work directory its `outputs` match: the sandbox's `/work` (`work`),
/// or the run directory on disk for a plain process. Failing to read them is kiln's trouble,
/// logged, not the job's: the run's result stands without its files.
async fn collect_files(
    work: Option<OwnedFd>,
    work_dir: &Path,
    isolation: &Isolation,
    patterns: &[String],
    caps: OutputCaps,
) -> Collected {
    let root = match (work, isolation) {
        (Some(work), _) => Ok(work),
        (None, Isolation::None) => outputs::open_dir(work_dir),
        (None, Isolation::Sandbox(_)) => return Collected::default(),
    };
    let patterns = patterns.to_vec();
    tokio::task::spawn_blocking(move || outputs::collect(&root?, &patterns, caps))
        .await
        .unwrap_or_else(|panicked| Err(std::io::Error::other(panicked)))
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "collecting a run's output files failed");
            Collected::default()
        })
}

/// Whether a start failed on what the job itself asked for: an argument list `execve` refused
/// (E2BIG, which nothing else on the way to it returns), or the sandbox unable to write the
/// job's files into its `/work` as named.
fn refused_by_request(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::ArgumentListTooLong || crate::sandbox::is_work_files(error)
}

/// Resolves once the run's processes together have used more than `limit_ms` of CPU time.
/// RLIMIT_CPU holds each process to the limit, not the run: a job that forks, or hands its work
/// over to a fresh child before the limit, would otherwise get its whole wall time on every core.
/// A single process still meets its RLIMIT_CPU first (and its SIGXCPU, which it may catch): this
/// only fires [`CPU_GRACE`] past the limit. Never resolves where the host does not count the
/// run's CPU time (RLIMIT_CPU is all there is then).
async fn cpu_limit_reached(process: &Process, limit_ms: u64) {
    if !process.counts_cpu() {
        return std::future::pending().await;
    }
    let grace = u64::try_from(CPU_GRACE.as_millis()).unwrap_or(u64::MAX);
    // No look at the start: a run cannot be over its limit yet, and reading the cgroup then
    // would only delay the job's first moments.
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + CPU_POLL, CPU_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        match process.cpu_ms() {
            Some(used) if used > limit_ms.saturating_add(grace) => return,
            Some(_) => {}
            None => return std::future::pending().await,
        }
    }
}

/// Why a process ended when kiln did not end it.
fn exit_outcome(status: libc::c_int, cpu_ms: u64, limits: &Limits) -> Outcome {
    if libc::WIFEXITED(status) {
        return match libc::WEXITSTATUS(status) {
            0 => Outcome::Success,
            _ => Outcome::NonzeroExit,
        };
    }
    match libc::WTERMSIG(status) {
        libc::SIGXCPU => Outcome::CpuTimeLimit,
        // The hard RLIMIT_CPU, reached by a program that caught SIGXCPU.
        libc::SIGKILL if cpu_ms >= limits.cpu_ms => Outcome::CpuTimeLimit,
        _ => Outcome::Signal,
    }
}
