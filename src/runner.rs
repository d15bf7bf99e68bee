//! Runs one attempt of a job as a plain subprocess and reports what happened. This module owns the
//! whole life of that process: its private work directory (on disk for a plain subprocess or a
//! compile step; a sandbox writes the submitted files into its own `/work` from memory, which
//! spares a job's start the disk), how it is started and limited
//! (`spawn_process`, the one function the sandbox issue replaces with namespaces, seccomp and
//! cgroups), feeding its stdin, capturing bounded stdout/stderr, enforcing the wall-clock and output
//! limits, honouring cancellation, and reaping it with `wait4` to learn its CPU time and peak
//! memory. Whatever way a run ends, the process group is killed, the child reaped and the work
//! directory removed, so nothing of a job outlives its run.
//!
//! The child is reaped here rather than through `tokio::process` because only `wait4` reports the
//! rusage of exactly this child (and the descendants it waited for); tokio's reaper would discard it.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::job::{BatchId, BuildUse, JobId, Limits, Outcome, Progress, RunResult};
use crate::live::{Live, OutputTap, Stream};
use crate::runtime::Runtime;
use crate::sandbox::cgroup::JobCgroup;
use crate::sandbox::{Ended, Launch, Sandbox, Sandboxed, WorkFile, WorkMount};

mod builds;
pub use builds::Builds;
use builds::{Built, NotBuilt};

/// The only `PATH` a job sees: system directories, never the server's own (which may point into a
/// developer's home or a virtualenv).
const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

const MAX_OPEN_FILES: u64 = 256;

/// How long a run waits for its output pipes to close after the process group was killed. Only a
/// process that escaped the group (setsid) can keep a pipe open that long; what it writes later
/// is not worth holding the run for. What the pipes hold when the wait ends is still kept.
const DRAIN_GRACE: Duration = Duration::from_millis(150);

/// How often a sandboxed run's CPU time is read against its limit: the run may overshoot the
/// limit (plus [`CPU_GRACE`]) by this much times its number of busy cores.
const CPU_POLL: Duration = Duration::from_millis(50);

/// How far past its CPU limit a run is let go before it is killed as a whole, so that a single
/// process meets its own RLIMIT_CPU first.
const CPU_GRACE: Duration = Duration::from_millis(200);

const READ_CHUNK: usize = 64 * 1024;

/// One attempt of one job, borrowing the stored job's fields.
#[derive(Clone, Copy, Debug)]
pub struct RunRequest<'a> {
    pub job_id: JobId,
    pub attempt: u32,
    pub runtime: &'a Runtime,
    pub code: &'a str,
    pub stdin: &'a str,
    pub args: &'a [String],
    /// Extra files for the work directory, by relative path (already checked by
    /// [`crate::job::validate::check_file_name`]).
    pub files: &'a BTreeMap<String, String>,
    pub limits: Limits,
    /// Where the job's run reports while it runs; `None` runs it without a progress pipe.
    pub reporting: Option<&'a Reporting>,
    /// The batch the job is a case of: a compiled runtime then builds once for the whole batch.
    pub batch: Option<BatchId>,
}

/// What a run tells the outside while it runs: its output to whoever watches the job live, and
/// the latest progress line it wrote to its progress pipe ([`crate::progress`]).
#[derive(Clone)]
pub struct Reporting {
    pub live: Live,
    pub progress: watch::Sender<Option<Progress>>,
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporting").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct RunOutput {
    pub outcome: Outcome,
    pub result: RunResult,
}

/// Why a job could not be run at all (as opposed to running and failing, which is a [`RunOutput`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not set up work directory {}: {source}", path.display())]
    WorkDir { path: PathBuf, source: io::Error },
    #[error("could not start {}: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
    #[error("could not wait for process {pid}: {source}")]
    Wait { pid: i32, source: io::Error },
    #[error("output capture failed: {0}")]
    Capture(#[from] tokio::task::JoinError),
}

/// How a job's process is confined.
pub enum Isolation {
    /// The sandbox: namespaces, filters, cgroups. The default, and the only mode for strangers.
    Sandbox(Sandbox),
    /// A plain subprocess with rlimits, for development on hosts that cannot sandbox.
    Unsandboxed,
}

/// Runs jobs in fresh directories under one work root.
pub struct Runner {
    work_root: PathBuf,
    isolation: Isolation,
    builds: Builds,
}

impl Runner {
    /// Creates `work_root` (mode 0700, as jobs' inputs and outputs pass through it) if needed,
    /// and removes the run directories and batch builds an earlier run of the server left there
    /// (one that crashed had no time to).
    pub fn new(work_root: PathBuf, isolation: Isolation) -> io::Result<Runner> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work_root)?;
        for entry in std::fs::read_dir(&work_root)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(is_run_directory)
            {
                remove_tree(&path)?;
            }
        }
        let builds = Builds::new(work_root.join(".builds"))?;
        Ok(Runner {
            work_root,
            isolation,
            builds,
        })
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The binaries compiled for batches, shared by their cases.
    pub fn builds(&self) -> &Builds {
        &self.builds
    }

    /// Runs one attempt to completion. Limits, cancellation and output floods end in an `Ok` with
    /// the matching [`Outcome`]; `Err` means kiln itself could not run the job.
    ///
    /// Dropping the returned future midway is safe: the process group is killed and reaped and the
    /// work directory removed in the background.
    pub async fn run(
        &self,
        req: RunRequest<'_>,
        cancel: CancellationToken,
    ) -> Result<RunOutput, RunError> {
        let mut work_dir = WorkDir {
            path: self
                .work_root
                .join(format!("{}-{}", req.job_id, req.attempt)),
            on_disk: false,
        };
        // A sandbox writes the submitted code and files into its `/work` from memory; only a
        // plain subprocess (which runs in the directory) and a compiled runtime (whose build
        // step binds it) need them on disk first.
        let inline =
            matches!(self.isolation, Isolation::Sandbox(_)) && req.runtime.compile.is_none();
        let output = async {
            if inline {
                check_inline(&req).map_err(|source| RunError::WorkDir {
                    path: work_dir.path.clone(),
                    source,
                })?;
            } else {
                work_dir.populate(&req).await?;
            }
            let names = staged_entries(&req.runtime.source_file, req.files);
            let mut entries = work_files(&names, &req, inline);
            let mut staged_bytes = staged_size(&req);
            let mut build = None;
            let (program, argv) = match &req.runtime.compile {
                None => (req.runtime.program.clone(), job_argv(req.runtime, req.args)),
                Some(compile) => {
                    let built_path = work_dir.path.join(&compile.binary);
                    match req.batch {
                        None => {
                            build = Some(BuildUse::Compiled);
                            let built = self.compile(&req, &work_dir.path, &names, &cancel).await?;
                            if built.outcome != Outcome::Success {
                                return Ok(with_build(built, build));
                            }
                        }
                        Some(batch) => {
                            let (built, used) = self.shared_build(batch, &req, &cancel).await?;
                            build = Some(used);
                            match built {
                                Ok(binary) => {
                                    copy_binary(&binary, &built_path).await.map_err(|source| {
                                        RunError::WorkDir {
                                            path: built_path.clone(),
                                            source,
                                        }
                                    })?
                                }
                                Err(failed) => return Ok(with_build(failed, build)),
                            }
                        }
                    }
                    // The run's /work must hold the binary besides the job's own room.
                    staged_bytes += std::fs::metadata(&built_path).map_or(0, |m| m.len());
                    entries.push(WorkFile::Staged(&compile.binary));
                    let binary = match self.isolation {
                        Isolation::Sandbox(_) => Path::new("/work").join(&compile.binary),
                        Isolation::Unsandboxed => work_dir.path.join(&compile.binary),
                    };
                    (binary, req.args.to_vec())
                }
            };
            let run = Step {
                program,
                argv,
                stdin: req.stdin,
                limits: req.limits,
                entries: &entries,
                staged_bytes,
                work: WorkMount::Copy,
                reporting: req.reporting.map(|r| (req.job_id, r)),
            };
            let ran = execute(&run, &work_dir.path, &self.isolation, &cancel).await?;
            Ok(with_build(ran, build))
        }
        .await;
        // Removed in the background: the result does not wait for it, and a retry gets a
        // directory of its own (the attempt is in its name).
        drop(work_dir);
        output
    }

    /// Compiles the code staged in `dir` (`entries`) in place: the binary lands beside it. The
    /// outcome is `Success`, `CompileError` or `Cancelled`.
    async fn compile(
        &self,
        req: &RunRequest<'_>,
        dir: &Path,
        names: &[String],
        cancel: &CancellationToken,
    ) -> Result<RunOutput, RunError> {
        let entries = work_files(names, req, false);
        let build = Step {
            program: req.runtime.program.clone(),
            argv: req.runtime.args.clone(),
            stdin: "",
            limits: COMPILE_LIMITS,
            entries: &entries,
            staged_bytes: staged_size(req),
            work: WorkMount::Bind,
            reporting: None,
        };
        let built = execute(&build, dir, &self.isolation, cancel).await?;
        let outcome = match built.outcome {
            Outcome::Success => Outcome::Success,
            Outcome::Cancelled => Outcome::Cancelled,
            _ => Outcome::CompileError,
        };
        Ok(RunOutput { outcome, ..built })
    }

    /// The batch's binary, compiled by the first of its cases to get here while the others wait
    /// for it; or the compile error every case of the batch then reports. Also says whether this
    /// run compiled or shared. A build that was cancelled or could not run is not kept: the next
    /// case tries again.
    async fn shared_build(
        &self,
        batch: BatchId,
        req: &RunRequest<'_>,
        cancel: &CancellationToken,
    ) -> Result<(Result<PathBuf, RunOutput>, BuildUse), RunError> {
        let entry = self.builds.entry(batch);
        let compiled_here = AtomicBool::new(false);
        let build = entry.get_or_build(|| async {
            compiled_here.store(true, Ordering::Relaxed);
            let mut staging = WorkDir {
                path: entry.staging().to_owned(),
                on_disk: false,
            };
            let built = async {
                self.builds
                    .prepare()
                    .await
                    .map_err(|source| RunError::WorkDir {
                        path: staging.path.clone(),
                        source,
                    })?;
                staging.populate(req).await?;
                let entries = staged_entries(&req.runtime.source_file, req.files);
                let built = self.compile(req, &staging.path, &entries, cancel).await?;
                match built.outcome {
                    Outcome::Success => {
                        let binary = req.runtime.compile.as_ref().map(|c| c.binary.as_str());
                        let from = staging.path.join(binary.unwrap_or_default());
                        copy_binary(&from, entry.binary()).await.map_err(|source| {
                            RunError::WorkDir {
                                path: entry.binary().to_owned(),
                                source,
                            }
                        })?;
                        Ok(Built::Binary(entry.binary().to_owned()))
                    }
                    Outcome::CompileError => Ok(Built::Failed(built)),
                    _ => Err(NotBuilt::Cancelled(built)),
                }
            }
            .await;
            staging.remove().await;
            built
        });
        let built = tokio::select! {
            biased;
            built = build => built,
            () = cancel.cancelled() => Err(NotBuilt::Cancelled(RunOutput {
                outcome: Outcome::Cancelled,
                result: RunResult::default(),
            })),
        };
        let used = if compiled_here.load(Ordering::Relaxed) {
            BuildUse::Compiled
        } else {
            BuildUse::Shared
        };
        match built {
            Ok(Built::Binary(path)) => Ok((Ok(path.clone()), used)),
            Ok(Built::Failed(failed)) => Ok((Err(failed.clone()), used)),
            Err(NotBuilt::Cancelled(cancelled)) => Ok((Err(cancelled), used)),
            Err(NotBuilt::Error(e)) => Err(e),
        }
    }
}

/// Whether `name` is that of a run's directory: `{job id}-{attempt}`.
fn is_run_directory(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(job, attempt)| {
        uuid::Uuid::try_parse(job).is_ok() && attempt.parse::<u32>().is_ok()
    })
}

/// What `/work` starts with, from [`staged_entries`]' names: the files staged on disk, or
/// (`inline`) written from the request's memory.
fn work_files<'a>(names: &'a [String], req: &RunRequest<'a>, inline: bool) -> Vec<WorkFile<'a>> {
    names
        .iter()
        .map(|name| match (name.ends_with('/'), inline) {
            (true, _) => WorkFile::Dir(name),
            (false, false) => WorkFile::Staged(name),
            (false, true) => WorkFile::Inline(name, submitted(req, name)),
        })
        .collect()
}

/// The submitted contents of `name`: the code under the runtime's source file name, or one of
/// the files.
fn submitted<'a>(req: &RunRequest<'a>, name: &str) -> &'a [u8] {
    if name == req.runtime.source_file {
        req.code.as_bytes()
    } else {
        req.files
            .get(name)
            .map_or(&[], |contents| contents.as_bytes())
    }
}

/// What the code and files of a request take on disk.
fn staged_size(req: &RunRequest<'_>) -> u64 {
    (req.code.len() + req.files.values().map(String::len).sum::<usize>()) as u64
}

fn with_build(mut output: RunOutput, build: Option<BuildUse>) -> RunOutput {
    output.result.build = build;
    output
}

/// Copies a built binary (keeping its mode) into a run's work directory or the build cache.
async fn copy_binary(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (from.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || std::fs::copy(from, to).map(drop))
        .await
        .unwrap_or_else(|panicked| Err(io::Error::other(panicked)))
}

/// A run's private directory, once populated. Removed explicitly at the end of a run; if the run
/// is dropped before that, `Drop` removes it in the background instead.
struct WorkDir {
    path: PathBuf,
    /// Whether anything of it may be on disk.
    on_disk: bool,
}

impl WorkDir {
    async fn populate(&mut self, req: &RunRequest<'_>) -> Result<(), RunError> {
        self.on_disk = true;
        let path = self.path.clone();
        let source_file = req.runtime.source_file.clone();
        let code = req.code.to_owned();
        let files = req.files.clone();
        tokio::task::spawn_blocking(move || populate_work_dir(&path, &source_file, &code, &files))
            .await
            .unwrap_or_else(|panicked| Err(io::Error::other(panicked)))
            .map_err(|source| RunError::WorkDir {
                path: self.path.clone(),
                source,
            })
    }

    async fn remove(mut self) {
        self.on_disk = false;
        let path = self.path.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || remove_logged(&path)).await {
            tracing::warn!(%error, path = %self.path.display(), "removing work directory failed");
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.on_disk {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || remove_logged(&path))),
            Err(_) => remove_logged(&path),
        }
    }
}

fn populate_work_dir(
    dir: &Path,
    source_file: &str,
    code: &str,
    files: &BTreeMap<String, String>,
) -> io::Result<()> {
    let create = || DirBuilder::new().mode(0o700).create(dir);
    // A directory left by a crashed earlier run of this attempt may hold anything: start clean.
    // Looked for only when creating fails, which spares the usual run a lookup.
    if let Err(error) = create() {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return Err(error);
        }
        remove_tree(dir)?;
        create()?;
    }
    write_new_file(dir, source_file, code)?;
    for (name, contents) in files {
        write_new_file(dir, name, contents)?;
    }
    Ok(())
}

/// Names were validated on submission; checked again because a bad one would write outside
/// the work directory.
fn check_name(name: &str) -> io::Result<()> {
    if Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name}: file name leaves the work directory"),
    ))
}

/// The checks [`populate_work_dir`] makes on the way, for files a sandbox writes from memory.
fn check_inline(req: &RunRequest<'_>) -> io::Result<()> {
    let source = &req.runtime.source_file;
    if req.files.contains_key(source) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{source}: a submitted file has the source file's name"),
        ));
    }
    req.files.keys().try_for_each(|name| check_name(name))
}

fn write_new_file(dir: &Path, name: &str, contents: &str) -> io::Result<()> {
    let context = |error: io::Error| io::Error::new(error.kind(), format!("{name}: {error}"));
    let relative = Path::new(name);
    check_name(name)?;
    // A file at the top needs no directory made: `dir` itself exists.
    if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Everything under `dir` was created by this function moments ago, so no component can be
        // a symlink planted by a job.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(parent))
            .map_err(context)?;
    }
    let path = dir.join(relative);
    // create_new (O_EXCL) plus O_NOFOLLOW: never write through a link, never clobber the source
    // file with a same-named extra file.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(context)?;
    file.write_all(contents.as_bytes()).map_err(context)
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Removal failure must not turn a finished run into an error: the job's result is what matters,
/// and a crashed-run leftover is cleared by the next attempt anyway.
fn remove_logged(path: &Path) {
    if let Err(error) = remove_tree(path) {
        tracing::warn!(%error, path = %path.display(), "removing work directory failed");
    }
}

/// One process of a run: the job's program, or a compiled runtime's build before it.
struct Step<'a> {
    program: PathBuf,
    /// Arguments after the program's own name.
    argv: Vec<String>,
    stdin: &'a str,
    limits: Limits,
    /// What the run's `/work` holds at the start (see [`staged_entries`]).
    entries: &'a [WorkFile<'a>],
    staged_bytes: u64,
    work: WorkMount,
    /// The job and where its run reports; only the job's own program reports, not its build.
    reporting: Option<(JobId, &'a Reporting)>,
}

/// Limits of a compiled runtime's build step: kiln's own work, the same for every job.
const COMPILE_LIMITS: Limits = Limits {
    wall_ms: 30_000,
    cpu_ms: 30_000,
    memory_mb: 1024,
    processes: 64,
    output_bytes: 1 << 20,
    file_bytes: 256 << 20,
};

async fn execute(
    step: &Step<'_>,
    work_dir: &Path,
    isolation: &Isolation,
    cancel: &CancellationToken,
) -> Result<RunOutput, RunError> {
    let limits = step.limits;
    let spawn_error = |source| RunError::Spawn {
        program: step.program.clone(),
        source,
    };
    // A sandbox comes with its own progress pipe; a plain subprocess gets one here.
    let progress_pipe = match isolation {
        Isolation::Unsandboxed => step.reporting.map(|_| cloexec_pipe()).transpose(),
        Isolation::Sandbox(_) => Ok(None),
    };
    let (mut progress_read, progress_write) = progress_pipe.map_err(spawn_error)?.unzip();
    let progress_fd = progress_write.as_ref().map(AsRawFd::as_raw_fd);
    let started = Instant::now();
    let (mut process, attached) = match isolation {
        Isolation::Unsandboxed => {
            let child = spawn_process(&step.program, &step.argv, work_dir, &limits, progress_fd)
                .map_err(spawn_error)?;
            // Linux pids are at most 2^22, so they fit in pid_t.
            let pid = child.id().cast_signed();
            let process = Process {
                pid,
                reaped: false,
                sandbox: None,
            };
            (process, attach(child).map_err(spawn_error)?)
        }
        Isolation::Sandbox(sandbox) => {
            let staged = step.work == WorkMount::Bind
                || step
                    .entries
                    .iter()
                    .any(|e| matches!(e, WorkFile::Staged(_)));
            let launch = Launch {
                staging: staged.then_some(work_dir),
                entries: step.entries,
                work: step.work,
                staged_bytes: step.staged_bytes,
                program: &step.program,
                args: step.argv.clone(),
                env: job_env("/work", "/tmp", step.reporting.is_some()),
                limits,
                progress: step.reporting.is_some(),
                rlimits: rlimits(&limits, sandbox.has_memory_cgroup(), true),
            };
            let mut launched = tokio::time::timeout(SANDBOX_START_TIMEOUT, sandbox.launch(launch))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the sandbox did not start in time")))
                .inspect_err(|_| crate::metrics::METRICS.sandbox_start_failed())
                .map_err(spawn_error)?;
            let attached = attach_sandbox(&mut launched).map_err(spawn_error)?;
            if step.reporting.is_some() {
                progress_read = launched.started.progress.take();
            }
            let process = Process {
                pid: launched.started.pid,
                reaped: false,
                sandbox: Some(launched),
            };
            (process, attached)
        }
    };
    // The job holds the only write end now: its exit closes the pipe.
    drop(progress_write);
    let pid = process.pid;
    let wait_error = |source| RunError::Wait { pid, source };
    let Attached {
        stdin,
        stdout,
        stderr,
        exited,
        mut report,
    } = attached;

    // Ends the I/O tasks however this function returns, including its future being dropped.
    let stop = CancellationToken::new();
    let _stop_io = stop.clone().drop_guard();
    let overflow = CancellationToken::new();
    let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
    // Cancelled once the process is dead: a capture that hit the cap holds its pipe open until
    // then.
    let killed = CancellationToken::new();
    let _killed = killed.clone().drop_guard();
    let tap = |stream| {
        step.reporting
            .map(|(job, r)| r.live.output_tap(job, stream))
    };
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
    let progress = match (progress_read, step.reporting) {
        (Some(fd), Some((_, reporting))) => {
            let pipe = pipe::Receiver::from_owned_fd(fd).map_err(spawn_error)?;
            let latest = reporting.progress.clone();
            Some(tokio::spawn(crate::progress::read(
                pipe,
                latest,
                stop.clone(),
            )))
        }
        _ => None,
    };
    if step.stdin.is_empty() {
        // Closing at once gives the program EOF instead of a read that never returns.
        drop(stdin);
    } else {
        tokio::spawn(feed(stdin, step.stdin.as_bytes().to_vec(), stop.clone()));
    }

    let cgroup = process.sandbox.as_ref().and_then(|s| s.cgroup.as_ref());
    let mut ended = None;
    let fired = tokio::select! {
        biased;
        over = run_over(&exited, report.as_mut()) => {
            ended = over.map_err(wait_error)?;
            None
        }
        () = cancel.cancelled() => Some(Outcome::Cancelled),
        () = overflow.cancelled() => Some(Outcome::OutputLimit),
        () = tokio::time::sleep(Duration::from_millis(limits.wall_ms)) => Some(Outcome::WallTimeLimit),
        () = cpu_limit_reached(cgroup, limits.cpu_ms) => Some(Outcome::CpuTimeLimit),
    };
    // Killed before reaping, not after: until the leader is reaped its pid cannot be reused, so
    // the signal can only reach this job's group, including anything it left in the background.
    process.kill();
    if fired.is_some() {
        ended = run_over(&exited, report.as_mut())
            .await
            .map_err(wait_error)?;
    }
    let measured = match ended {
        Some(ended) => process.ended(ended),
        None => {
            let (status, usage) = process.reap().map_err(wait_error)?;
            process.measure(status, &usage)
        }
    };
    killed.cancel();
    let wall = started.elapsed();
    if let Some(sandbox) = process.sandbox.take() {
        sandbox.dispose();
    }

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
    let outcome = fired
        .or(truncated.then_some(Outcome::OutputLimit))
        .or(measured.oom_killed.then_some(Outcome::MemoryLimit))
        .unwrap_or_else(|| exit_outcome(measured.status, measured.cpu_ms, &limits));
    let status = measured.status;
    let result = RunResult {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        stdout: decode(stdout.bytes),
        stderr: decode(stderr.bytes),
        wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
        cpu_ms: measured.cpu_ms,
        memory_kb: measured.memory_kb,
        build: None,
    };
    Ok(RunOutput { outcome, result })
}

/// Resolves once the run's processes together have used more than `limit_ms` of CPU time.
/// RLIMIT_CPU holds each process to the limit, not the run: a job that forks, or hands its work
/// over to a fresh child before the limit, would otherwise get its whole wall time on every core.
/// A single process still meets its RLIMIT_CPU first (and its SIGXCPU, which it may catch): this
/// only fires [`CPU_GRACE`] past the limit. Never resolves where the host does not count the
/// run's CPU time (RLIMIT_CPU is all there is then).
async fn cpu_limit_reached(cgroup: Option<&JobCgroup>, limit_ms: u64) {
    let Some(cgroup) = cgroup else {
        return std::future::pending().await;
    };
    let grace = u64::try_from(CPU_GRACE.as_millis()).unwrap_or(u64::MAX);
    // No look at the start: a run cannot be over its limit yet, and reading the cgroup then
    // would only delay the job's first moments.
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + CPU_POLL, CPU_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        match cgroup.cpu_ms() {
            Some(used) if used > limit_ms.saturating_add(grace) => return,
            Some(_) => {}
            None => return std::future::pending().await,
        }
    }
}

/// How long a sandbox may take to build its root and exec the job before the run is an error.
const SANDBOX_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The program's arguments after its own path: the runtime's flags, the source file, the job's
/// arguments.
fn job_argv(runtime: &Runtime, args: &[String]) -> Vec<String> {
    let mut argv = runtime.args.clone();
    argv.push(runtime.source_file.clone());
    argv.extend(args.iter().cloned());
    argv
}

/// The whole environment a job sees.
fn job_env(home: &str, tmp: &str, progress: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".into(), JOB_PATH.into()),
        ("HOME".into(), home.into()),
        ("TMPDIR".into(), tmp.into()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    if progress {
        env.push((
            crate::progress::ENV_VAR.into(),
            crate::progress::FD.to_string(),
        ));
    }
    env
}

/// A pipe whose ends are not inherited across exec unless moved on purpose.
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What gets staged for a run, relative to its work directory: every directory (ending in `/`,
/// parents first), then the source file and the submitted files.
fn staged_entries(source_file: &str, files: &BTreeMap<String, String>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for name in files.keys() {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push_str(part);
            prefix.push('/');
            dirs.insert(prefix.clone());
        }
    }
    // BTreeSet order puts "a/" before "a/b/": parents first.
    let mut entries: Vec<String> = dirs.into_iter().collect();
    entries.push(source_file.to_owned());
    entries.extend(files.keys().cloned());
    entries
}

/// (resource, soft, hard) for a run. The CPU soft limit sends SIGXCPU; the hard limit one second
/// later SIGKILLs a program that catches SIGXCPU. Where a memory cgroup enforces the memory
/// limit (and reports its kills), the address-space limit is only a backstop: runtimes reserve
/// far more address space than they touch.
fn rlimits(
    limits: &Limits,
    memory_cgroup: bool,
    own_uid: bool,
) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    let cpu_secs = limits.cpu_ms.div_ceil(1000).max(1);
    let memory_bytes = limits.memory_mb.saturating_mul(1 << 20);
    let address_space = if memory_cgroup {
        memory_bytes.saturating_mul(4).max(4 << 30)
    } else {
        memory_bytes
    };
    let mut rlimits = vec![
        (libc::RLIMIT_CPU, cpu_secs, cpu_secs.saturating_add(1)),
        (libc::RLIMIT_AS, address_space, address_space),
        (libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
        (libc::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES),
        (libc::RLIMIT_CORE, 0, 0),
    ];
    // RLIMIT_NPROC counts every process of the uid: only meaningful when the job has a uid of
    // its own, as in the sandbox.
    if own_uid {
        rlimits.push((libc::RLIMIT_NPROC, limits.processes, limits.processes));
    }
    rlimits
}

/// Starts the job's process without a sandbox (development mode): own process group, cleared
/// environment, rlimits. Returns a running child with piped stdio, leading its own process group
/// (pgid = pid).
///
/// Called on the async thread, not in `spawn_blocking`: `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked the child exits, and blocking-pool threads exit after idling, which would kill
/// long-running jobs. (The same holds for a worker thread handed over by `block_in_place`.)
fn spawn_process(
    program: &Path,
    argv: &[String],
    work_dir: &Path,
    limits: &Limits,
    progress: Option<RawFd>,
) -> io::Result<std::process::Child> {
    let rlimits = rlimits(limits, false, false);
    let server = std::process::id().cast_signed();

    let home = work_dir.to_string_lossy();
    let mut command = Command::new(program);
    command
        .args(argv)
        .current_dir(work_dir)
        .env_clear()
        .envs(job_env(&home, &home, progress.is_some()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It makes raw syscalls only: no allocation, no locks.
    unsafe {
        command.pre_exec(move || {
            for &(resource, soft, hard) in &rlimits {
                let mut current = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(resource, &mut current) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Raising a hard limit needs privilege: never ask for more than the server has.
                let hard = hard.min(current.rlim_max);
                let wanted = libc::rlimit {
                    rlim_cur: soft.min(hard),
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &wanted) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Variadic: the signal must be passed at the width the kernel reads (unsigned long).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If the server died between fork and prctl, the death signal will never come.
            if libc::getppid() != server {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // The progress pipe, at its fixed number and kept across exec (dup2 clears
            // close-on-exec; a descriptor already at that number needs it cleared by hand).
            if let Some(fd) = progress {
                let moved = if fd == crate::progress::FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, crate::progress::FD)
                };
                if moved < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The child's pipes as nonblocking tokio pipes, and a pidfd that becomes readable on its exit.
struct Attached {
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    exited: AsyncFd<OwnedFd>,
    /// A sandbox's report of the run's end.
    report: Option<EndReport>,
}

fn attach(mut child: std::process::Child) -> io::Result<Attached> {
    let missing = || io::Error::other("child was spawned without a stdio pipe");
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    Ok(Attached {
        stdin: pipe::Sender::from_owned_fd(stdin.into())?,
        stdout: pipe::Receiver::from_owned_fd(stdout.into())?,
        stderr: pipe::Receiver::from_owned_fd(stderr.into())?,
        exited: pidfd_open(child.id())?,
        report: None,
    })
}

/// The same for a sandbox: the job's pipes, taken over so that dropping the stdin writer gives
/// the job EOF; init's report of the run's end, and its pidfd for when it dies without one.
fn attach_sandbox(sandboxed: &mut Sandboxed) -> io::Result<Attached> {
    let started = &mut sandboxed.started;
    let [stdin, stdout, stderr] = started
        .stdio
        .take()
        .ok_or_else(|| io::Error::other("the sandbox's stdio was already taken"))?;
    Ok(Attached {
        stdin: pipe::Sender::from_owned_fd(stdin)?,
        stdout: pipe::Receiver::from_owned_fd(stdout)?,
        stderr: pipe::Receiver::from_owned_fd(stderr)?,
        // SAFETY: the OwnedFd keeps the descriptor open for as long as the AsyncFd lives.
        exited: unsafe {
            AsyncFd::register_with_interest(started.pidfd.try_clone()?, Interest::READABLE)
        }?,
        report: Some(EndReport {
            pipe: pipe::Receiver::from_owned_fd(started.status.try_clone()?)?,
            bytes: [0; Ended::SIZE],
            filled: 0,
        }),
    })
}

fn pidfd_open(pid: u32) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new close-on-exec descriptor or -1.
    // The child is not reaped yet, so its pid cannot name another process.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            libc::c_long::from(pid),
            0 as libc::c_long,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor (an int, so the cast is lossless) was just created and nothing else
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the OwnedFd keeps the descriptor open, unchanged, for as long as the AsyncFd lives.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?)
}

/// Resolves once the process has exited (it is then a zombie until reaped). The readiness is left
/// set on purpose: an exited process stays exited, so a second wait returns at once.
async fn wait_exit(pidfd: &AsyncFd<OwnedFd>) -> io::Result<()> {
    pidfd.readable().await.map(|_exited| ())
}

/// The job's process until it is reaped (in a sandbox: the sandbox's init). Dropped earlier (an
/// error, or `run`'s future dropped), it kills the group and reaps the leader in the background,
/// leaving neither processes nor a zombie.
struct Process {
    pid: libc::pid_t,
    reaped: bool,
    sandbox: Option<Sandboxed>,
}

/// What a run used and how the job itself ended.
struct Measured {
    /// The job's wait status (in a sandbox, as init reported it).
    status: libc::c_int,
    cpu_ms: u64,
    memory_kb: u64,
    oom_killed: bool,
}

impl Process {
    fn kill(&self) {
        if self.reaped {
            return;
        }
        if let Some(sandbox) = &self.sandbox {
            // init's death takes the whole pid namespace with it.
            sandbox.kill();
            return;
        }
        // SAFETY: plain syscalls. The leader is signalled by pid as well, in case it left its
        // group with setpgid.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    /// Only called once the pidfd reports the exit, so `wait4` does not block.
    fn reap(&mut self) -> io::Result<(libc::c_int, libc::rusage)> {
        // Whatever wait4 answers, the pid is no longer safe to signal afterwards.
        self.reaped = true;
        wait4(self.pid)
    }

    /// A sandbox's run as its init reported the end: nothing of the run is left, and init
    /// itself is reaped when the sandbox is disposed of, off the run's path.
    fn ended(&mut self, ended: Ended) -> Measured {
        self.reaped = true;
        self.with_cgroup(Measured {
            status: ended.status,
            cpu_ms: ended.cpu_us / 1000,
            memory_kb: ended.max_rss_kb,
            oom_killed: false,
        })
    }

    /// After the reap: the job's own status, and its resource use. A sandbox's cgroup counts
    /// every process of the run exactly; rusage counts those that were waited for.
    fn measure(&self, status: libc::c_int, usage: &libc::rusage) -> Measured {
        self.with_cgroup(Measured {
            status,
            cpu_ms: timeval_ms(usage.ru_utime).saturating_add(timeval_ms(usage.ru_stime)),
            memory_kb: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            oom_killed: false,
        })
    }

    fn with_cgroup(&self, mut measured: Measured) -> Measured {
        if let Some(cgroup) = self.sandbox.as_ref().and_then(|s| s.cgroup.as_ref()) {
            let used = cgroup.usage();
            measured.oom_killed = used.oom_killed;
            // Each is a lower bound of what the run used: init's rusage misses processes it never
            // reaped (killed with the namespace); the cgroup may miss the job's first moments.
            if let Some(cpu_ms) = used.cpu_ms {
                measured.cpu_ms = measured.cpu_ms.max(cpu_ms);
            }
            if let Some(peak) = used.memory_peak_bytes {
                measured.memory_kb = peak / 1024;
            }
        }
        measured
    }
}

/// A sandbox's status pipe, on which init reports the run's end. What arrived survives a read
/// interrupted by another branch of a `select!`.
struct EndReport {
    pipe: pipe::Receiver,
    bytes: [u8; Ended::SIZE],
    filled: usize,
}

impl EndReport {
    /// The report, or `None` at EOF without one: init died first (killed by a limit or a
    /// cancel), and only its death ends the run then.
    async fn read(&mut self) -> io::Result<Option<Ended>> {
        while self.filled < Ended::SIZE {
            let n = self.pipe.read(&mut self.bytes[self.filled..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.filled += n;
        }
        Ok(Some(Ended::decode(&self.bytes)))
    }
}

/// Resolves once the run is over: a plain process at its exit; a sandbox's once init reports
/// the job's end (nothing of the run is left then), or once init is dead.
async fn run_over(
    exited: &AsyncFd<OwnedFd>,
    report: Option<&mut EndReport>,
) -> io::Result<Option<Ended>> {
    if let Some(report) = report
        && let Some(ended) = report.read().await?
    {
        return Ok(Some(ended));
    }
    wait_exit(exited).await?;
    Ok(None)
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill();
        let pid = self.pid;
        let sandbox = self.sandbox.take();
        let reap = move || {
            if let Err(error) = wait4(pid) {
                tracing::warn!(%error, pid, "reaping a killed job process failed");
            }
            drop(sandbox);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(reap)),
            Err(_) => reap(),
        }
    }
}

fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain C data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both out-pointers are valid for writes for the duration of the call.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } == pid {
            return Ok((status, usage));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// One output stream as kept: at most the cap, and whether the program wrote more.
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads one output stream of a run until it closes, goes over `cap` (which cancels `overflow`,
/// then holds the pipe open until `killed`) or `stop`.
async fn capture(
    mut pipe: pipe::Receiver,
    cap: usize,
    tap: Option<OutputTap>,
    overflow: CancellationToken,
    killed: CancellationToken,
    stop: CancellationToken,
) -> Captured {
    let mut kept = Kept {
        bytes: Vec::new(),
        cap,
        tap,
    };
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => return drain(pipe, &mut chunk, kept),
            read = pipe.read(&mut chunk) => read,
        };
        // A read error on a pipe has no cause the job could be blamed for; the stream just ends.
        let Ok(n @ 1..) = read else {
            return kept.captured(false);
        };
        if !kept.keep(&chunk[..n]) {
            // Stop reading at once: the run is killed for this, and reading on would only let
            // the program go on writing. The pipe stays open until the kill, so the program
            // does not see EPIPE first and write a complaint to its other stream.
            overflow.cancel();
            killed.cancelled().await;
            return kept.captured(true);
        }
    }
}

/// Ends a capture told to stop waiting for the pipe's EOF: keeps what the pipe holds right now.
/// The job wrote that before it died, so it belongs to the result however late this task got to
/// run after the exit (on a busy server, [`DRAIN_GRACE`] may be over before it ran at all). Only
/// what a process that escaped the run writes from now on is left unread.
fn drain(pipe: pipe::Receiver, chunk: &mut [u8], mut kept: Kept) -> Captured {
    // Read the descriptor directly: tokio does not even try a read until its reactor has seen
    // the pipe become readable, and a late reactor is how a run gets here with output unread.
    let Ok(fd) = pipe.into_nonblocking_fd() else {
        return kept.captured(false);
    };
    let mut pipe = std::fs::File::from(fd);
    loop {
        match io::Read::read(&mut pipe, chunk) {
            Ok(0) => return kept.captured(false),
            // An escaped writer cannot keep this loop going: past the cap it ends.
            Ok(n) if !kept.keep(&chunk[..n]) => return kept.captured(true),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: all that was written is read.
            Err(_) => return kept.captured(false),
        }
    }
}

/// What a capture has kept so far: at most `cap` bytes, each also shown to live watchers.
struct Kept {
    bytes: Vec<u8>,
    cap: usize,
    tap: Option<OutputTap>,
}

impl Kept {
    /// Keeps what fits of `read`; false if not all of it did.
    fn keep(&mut self, read: &[u8]) -> bool {
        let room = self.cap - self.bytes.len();
        let keep = read.len().min(room);
        reserve_within(&mut self.bytes, keep, self.cap);
        self.bytes.extend_from_slice(&read[..keep]);
        if let Some(tap) = &mut self.tap {
            tap.push(&read[..keep]);
        }
        read.len() <= room
    }

    fn captured(self, truncated: bool) -> Captured {
        Captured {
            bytes: self.bytes,
            truncated,
        }
    }
}

/// Grows like `Vec` does (doubling) but never past `cap`, so a flood costs at most `cap` bytes.
fn reserve_within(bytes: &mut Vec<u8>, additional: usize, cap: usize) {
    let needed = bytes.len() + additional;
    if needed > bytes.capacity() {
        let target = needed.max(bytes.capacity().saturating_mul(2)).min(cap);
        bytes.reserve_exact(target - bytes.len());
    }
}

async fn feed(mut pipe: pipe::Sender, input: Vec<u8>, stop: CancellationToken) {
    let written = tokio::select! {
        () = stop.cancelled() => return,
        written = pipe.write_all(&input) => written,
    };
    // A program need not read its input: it exiting or closing stdin early is not an error.
    if let Err(error) = written
        && error.kind() != io::ErrorKind::BrokenPipe
    {
        tracing::warn!(%error, "writing job stdin failed");
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

fn timeval_ms(time: libc::timeval) -> u64 {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_usec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// Lossy, since jobs may print anything; valid UTF-8 (the common case) is not copied.
fn decode(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtimes;
    use crate::sandbox::SandboxConfig;

    static NO_FILES: BTreeMap<String, String> = BTreeMap::new();

    const LIMITS: Limits = Limits {
        wall_ms: 10_000,
        cpu_ms: 10_000,
        memory_mb: 512,
        processes: 64,
        output_bytes: 1 << 20,
        file_bytes: 1 << 20,
    };

    struct Harness {
        root: tempfile::TempDir,
        runner: Runner,
        runtimes: Runtimes,
    }

    impl Harness {
        /// Runs jobs in the sandbox, as the server does.
        fn new() -> Harness {
            Harness::sandboxed_in(tempfile::tempdir().expect("temp dir"))
        }

        /// The same, with its work root in `root` (which may hold an earlier server's leftovers).
        fn sandboxed_in(root: tempfile::TempDir) -> Harness {
            static RUNNERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = RUNNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let work_root = root.path().join("work");
            std::fs::create_dir_all(&work_root).expect("work root");
            let config = SandboxConfig {
                uid_base: 3_000_000 + (std::process::id() % 64) * 1_000_000 + n * 20_000,
                ..SandboxConfig::default()
            };
            let sandbox = Sandbox::new(&config, &work_root).expect("this host can sandbox");
            Harness::with(root, Isolation::Sandbox(sandbox))
        }

        /// Runs jobs as plain subprocesses: only for tests named after the development mode.
        fn unsandboxed() -> Harness {
            Harness::with(
                tempfile::tempdir().expect("temp dir"),
                Isolation::Unsandboxed,
            )
        }

        fn with(root: tempfile::TempDir, isolation: Isolation) -> Harness {
            let runner = Runner::new(root.path().join("work"), isolation).expect("runner");
            Harness {
                root,
                runner,
                runtimes: Runtimes::detect(&[]),
            }
        }

        fn work_root(&self) -> PathBuf {
            self.root.path().join("work")
        }

        fn request<'a>(&'a self, runtime: &str, code: &'a str) -> RunRequest<'a> {
            RunRequest {
                job_id: JobId::now_v7(),
                attempt: 1,
                runtime: self.runtimes.get(runtime).expect("runtime detected"),
                code,
                stdin: "",
                args: &[],
                files: &NO_FILES,
                limits: LIMITS,
                reporting: None,
                batch: None,
            }
        }

        async fn run(&self, req: RunRequest<'_>) -> RunOutput {
            self.runner
                .run(req, CancellationToken::new())
                .await
                .expect("job runs")
        }

        /// Waits (up to 1 s) until no run directory is left in the work root: a run's
        /// directory is removed in the background once its result is in.
        async fn work_dirs_removed(&self) -> bool {
            for _ in 0..100 {
                if self.work_dirs_left().is_empty() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }

        /// Run directories still in the work root (the sandbox's shared mount point aside).
        fn work_dirs_left(&self) -> Vec<PathBuf> {
            std::fs::read_dir(self.work_root())
                .expect("work root")
                .map(|entry| entry.expect("entry").path())
                .filter(|path| !path.ends_with(".sandbox-root"))
                .collect()
        }
    }

    /// Running means signalable and not a zombie: orphans go to pid 1, which may never reap them.
    fn is_running(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks whether the pid exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_some_and(|(_, fields)| !fields.starts_with('Z'))
    }

    async fn stops_running(pid: libc::pid_t) -> bool {
        for _ in 0..100 {
            if !is_running(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn printed_pid(stdout: &str, key: &str) -> libc::pid_t {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {stdout:?}"))
    }

    #[tokio::test]
    async fn a_zero_exit_is_success_with_stdout_and_stderr_captured() {
        let h = Harness::new();
        let out = h.run(h.request("sh", "echo out; echo err >&2")).await;
        assert_eq!(out.outcome, Outcome::Success);
        assert_eq!(out.result.exit_code, Some(0));
        assert_eq!(out.result.signal, None);
        assert_eq!(out.result.stdout, "out\n");
        assert_eq!(out.result.stderr, "err\n");
        assert!(!out.result.stdout_truncated && !out.result.stderr_truncated);
        assert!(out.result.memory_kb > 0, "{:?}", out.result);
        assert!(out.result.wall_ms < 5_000, "{:?}", out.result);
    }

    #[tokio::test]
    async fn a_nonzero_exit_reports_its_code() {
        let h = Harness::new();
        let out = h.run(h.request("sh", "echo failing >&2; exit 3")).await;
        assert_eq!(out.outcome, Outcome::NonzeroExit);
        assert_eq!(out.result.exit_code, Some(3));
        assert_eq!(out.result.signal, None);
        assert_eq!(out.result.stderr, "failing\n");
    }

    #[tokio::test]
    async fn a_crash_by_signal_is_reported_as_signal() {
        let h = Harness::new();
        let out = h.run(h.request("sh", "kill -SEGV $$")).await;
        assert_eq!(out.outcome, Outcome::Signal);
        assert_eq!(out.result.exit_code, None);
        assert_eq!(out.result.signal, Some(libc::SIGSEGV));
    }

    #[tokio::test]
    async fn stdin_is_fed_to_the_program_while_its_output_is_read() {
        let h = Harness::new();
        // Larger than a pipe buffer both ways: feeding and reading must run concurrently.
        let input = "0123456789abcdef\n".repeat(16 * 1024);
        let out = h
            .run(RunRequest {
                stdin: &input,
                ..h.request("sh", "cat")
            })
            .await;
        assert_eq!(out.outcome, Outcome::Success);
        assert!(out.result.stdout == input, "stdin did not round-trip");
    }

    #[tokio::test]
    async fn a_program_that_ignores_its_stdin_still_succeeds() {
        let h = Harness::new();
        let input = "x".repeat(1 << 20);
        let out = h
            .run(RunRequest {
                stdin: &input,
                ..h.request("sh", "exit 0")
            })
            .await;
        assert_eq!(out.outcome, Outcome::Success);
    }

    #[tokio::test]
    async fn args_and_files_are_visible_to_the_program() {
        let h = Harness::new();
        let args = ["one".to_owned(), "two words".to_owned()];
        let files = BTreeMap::from([
            ("data.txt".to_owned(), "top\n".to_owned()),
            ("sub/dir/deep.txt".to_owned(), "deep\n".to_owned()),
        ]);
        let code = r#"printf '[%s]' "$@"; echo
cat data.txt sub/dir/deep.txt
[ "$PWD" = "$HOME" ] && echo in-work-dir"#;
        let out = h
            .run(RunRequest {
                args: &args,
                files: &files,
                ..h.request("sh", code)
            })
            .await;
        assert_eq!(out.outcome, Outcome::Success, "{:?}", out.result);
        assert_eq!(
            out.result.stdout,
            "[one][two words]\ntop\ndeep\nin-work-dir\n"
        );
    }

    #[tokio::test]
    async fn a_file_named_like_the_source_file_is_refused() {
        let h = Harness::new();
        let files = BTreeMap::from([("main.sh".to_owned(), "echo clobbered".to_owned())]);
        let result = h
            .runner
            .run(
                RunRequest {
                    files: &files,
                    ..h.request("sh", "echo original")
                },
                CancellationToken::new(),
            )
            .await;
        assert!(
            matches!(result, Err(RunError::WorkDir { .. })),
            "{result:?}"
        );
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn the_environment_holds_only_the_allowed_variables() {
        let h = Harness::new();
        let out = h.run(h.request("sh", "printenv")).await;
        let mut env: Vec<&str> = out.result.stdout.lines().collect();
        // dash exports PWD itself; it did not come from the server.
        env.retain(|line| !line.starts_with("PWD="));
        env.sort_unstable();
        assert_eq!(
            env,
            [
                "HOME=/work",
                "LANG=C.UTF-8",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "TMPDIR=/tmp",
            ]
        );
    }

    #[tokio::test]
    async fn in_development_mode_the_environment_points_at_the_run_directory() {
        let h = Harness::unsandboxed();
        let out = h.run(h.request("sh", "echo \"$HOME $TMPDIR\"")).await;
        let (home, tmp) = out.result.stdout.trim().split_once(' ').expect("two paths");
        assert_eq!(home, tmp);
        assert!(Path::new(home).starts_with(h.work_root()), "{home}");
    }

    #[tokio::test]
    async fn in_development_mode_the_wall_limit_kills_the_job_and_its_background_children() {
        let h = Harness::unsandboxed();
        let started = Instant::now();
        let out = h
            .run(RunRequest {
                limits: Limits {
                    wall_ms: 300,
                    ..LIMITS
                },
                ..h.request("sh", "sleep 30 & echo \"background=$!\"; sleep 30")
            })
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.outcome, Outcome::WallTimeLimit);
        assert_eq!(out.result.signal, Some(libc::SIGKILL));
        assert!(out.result.wall_ms >= 300, "{:?}", out.result);
        let background = printed_pid(&out.result.stdout, "background=");
        assert!(stops_running(background).await, "background child survived");
    }

    #[tokio::test]
    async fn in_development_mode_a_process_that_escaped_the_group_does_not_hold_the_run_open() {
        let h = Harness::unsandboxed();
        let started = Instant::now();
        // setsid leaves the process group while keeping stdout open.
        let out = h
            .run(h.request("sh", "setsid sleep 5 & echo \"escaped=$!\""))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.outcome, Outcome::Success);
        let escaped = printed_pid(&out.result.stdout, "escaped=");
        // SAFETY: plain syscall; the pid was printed by this test's own job moments ago.
        unsafe { libc::kill(escaped, libc::SIGKILL) };
    }

    #[tokio::test]
    async fn an_output_flood_is_cut_at_the_cap_and_ends_with_output_limit() {
        let h = Harness::new();
        let code = "head -c 5000 /dev/zero | tr '\\0' e >&2; yes";
        let out = h
            .run(RunRequest {
                limits: Limits {
                    output_bytes: 10_000,
                    ..LIMITS
                },
                ..h.request("sh", code)
            })
            .await;
        assert_eq!(out.outcome, Outcome::OutputLimit);
        assert_eq!(out.result.stdout.len(), 10_000);
        assert!(out.result.stdout.lines().all(|line| line == "y"));
        assert!(out.result.stdout_truncated);
        // Each stream has its own cap.
        assert_eq!(out.result.stderr, "e".repeat(5000));
        assert!(!out.result.stderr_truncated);
    }

    #[tokio::test]
    async fn output_of_exactly_the_cap_is_not_truncated() {
        let h = Harness::new();
        let out = h
            .run(RunRequest {
                limits: Limits {
                    output_bytes: 10_000,
                    ..LIMITS
                },
                ..h.request("sh", "head -c 10000 /dev/zero | tr '\\0' x")
            })
            .await;
        assert_eq!(out.outcome, Outcome::Success);
        assert_eq!(out.result.stdout.len(), 10_000);
        assert!(!out.result.stdout_truncated);
    }

    #[tokio::test]
    async fn a_cpu_busy_loop_hits_the_cpu_limit() {
        let h = Harness::new();
        let out = h
            .run(RunRequest {
                limits: Limits {
                    cpu_ms: 1000,
                    ..LIMITS
                },
                ..h.request("sh", "while :; do :; done")
            })
            .await;
        assert_eq!(out.outcome, Outcome::CpuTimeLimit, "{:?}", out.result);
        assert_eq!(out.result.signal, Some(libc::SIGXCPU));
        // The kernel checks RLIMIT_CPU against its scheduler clock at ticks; on a loaded VM the
        // counted time has been seen ~12% under the limit when SIGXCPU came.
        assert!(out.result.cpu_ms >= 750, "{:?}", out.result);
    }

    #[tokio::test]
    async fn cancelling_kills_a_long_job() {
        let h = Harness::new();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let out = h
            .runner
            .run(h.request("sh", "sleep 30"), cancel)
            .await
            .expect("job runs");
        assert_eq!(out.outcome, Outcome::Cancelled);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn run_directories_an_earlier_server_left_are_removed_at_start_and_never_seen() {
        let root = tempfile::tempdir().expect("temp dir");
        let stale = root.path().join(format!("work/{}-1", JobId::now_v7()));
        std::fs::create_dir_all(stale.join("sub")).expect("stale dir");
        std::fs::write(stale.join("sub/stale.txt"), "old").expect("stale file");
        let other = root.path().join("work/not-a-run");
        std::fs::write(&other, "kept").expect("other file");
        let h = Harness::sandboxed_in(root);
        assert!(!stale.exists(), "the leftover run directory was removed");
        assert!(other.exists(), "nothing else in the work root was touched");
        let files = BTreeMap::from([("sub/new.txt".to_owned(), String::new())]);
        let out = h
            .run(RunRequest {
                files: &files,
                ..h.request("sh", "ls -A . sub")
            })
            .await;
        assert_eq!(out.result.stdout, ".:\nmain.sh\nsub\n\nsub:\nnew.txt\n");
        std::fs::remove_file(&other).expect("remove the other file");
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn in_development_mode_the_work_directory_is_fresh_and_removed_afterwards() {
        let h = Harness::unsandboxed();
        let req = h.request("sh", "ls -A");
        // As if an earlier run of this attempt had crashed.
        let stale = h
            .work_root()
            .join(format!("{}-{}", req.job_id, req.attempt));
        std::fs::create_dir_all(stale.join("sub")).expect("stale dir");
        std::fs::write(stale.join("sub/stale.txt"), "old").expect("stale file");
        let files = BTreeMap::from([("sub/new.txt".to_owned(), String::new())]);
        let out = h
            .run(RunRequest {
                files: &files,
                ..req
            })
            .await;
        assert_eq!(out.result.stdout, "main.sh\nsub\n");
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn a_missing_interpreter_is_a_spawn_error() {
        let h = Harness::new();
        let missing = Runtime {
            name: "missing".into(),
            program: "/nonexistent/interpreter".into(),
            args: Vec::new(),
            source_file: "main".into(),
            compile: None,
        };
        let result = h
            .runner
            .run(
                RunRequest {
                    runtime: &missing,
                    ..h.request("sh", "true")
                },
                CancellationToken::new(),
            )
            .await;
        assert!(matches!(result, Err(RunError::Spawn { .. })), "{result:?}");
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn in_development_mode_dropping_a_run_kills_its_process_and_removes_its_directory() {
        let h = Harness::unsandboxed();
        let pid_file = h.root.path().join("pid");
        let code = format!("echo $$ > {}; sleep 30", pid_file.display());
        let run = h.run(h.request("sh", &code));
        let dropped = tokio::time::timeout(Duration::from_millis(300), run).await;
        assert!(dropped.is_err(), "job should still have been running");
        let pid = std::fs::read_to_string(&pid_file).expect("pid written");
        assert!(stops_running(pid.trim().parse().expect("pid")).await);
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn a_python_job_runs_if_python_is_available() {
        let h = Harness::new();
        if h.runtimes.get("python").is_none() {
            eprintln!("no python on this host; skipped");
            return;
        }
        let out = h.run(h.request("python", "print(\"hello\")")).await;
        assert_eq!(out.outcome, Outcome::Success, "{:?}", out.result);
        assert_eq!(out.result.stdout, "hello\n");
    }

    /// A stdout pipe the way a run leaves it: the job wrote `output` and, unless `held_open`,
    /// every writer is gone. Returns the read end and, if held open, the writer.
    fn pipe_holding(output: &[u8], held_open: bool) -> (pipe::Receiver, Option<std::fs::File>) {
        let (read, write) = cloexec_pipe().expect("pipe");
        let mut write = std::fs::File::from(write);
        write.write_all(output).expect("fill the pipe");
        let reader = pipe::Receiver::from_owned_fd(read).expect("nonblocking reader");
        (reader, held_open.then_some(write))
    }

    /// Captures `pipe` as a run does whose drain grace has already run out when the capture
    /// first gets to run: on a starved server, reaping the job and waiting [`DRAIN_GRACE`] can
    /// happen before the capture task was ever polled.
    async fn capture_after_the_grace(pipe: pipe::Receiver, cap: usize) -> Captured {
        let stop = CancellationToken::new();
        stop.cancel();
        let killed = CancellationToken::new();
        killed.cancel();
        let captured = capture(pipe, cap, None, CancellationToken::new(), killed, stop);
        tokio::time::timeout(Duration::from_secs(5), captured)
            .await
            .expect("capture ends once told to stop")
    }

    #[tokio::test]
    async fn output_a_job_wrote_before_it_exited_is_kept_however_late_its_capture_runs() {
        let (pipe, _) = pipe_holding(b"42\n", false);
        let captured = capture_after_the_grace(pipe, 1 << 20).await;
        assert_eq!(captured.bytes, b"42\n");
        assert!(!captured.truncated);
    }

    #[tokio::test]
    async fn output_is_kept_even_while_an_escaped_process_still_holds_the_pipe() {
        let (pipe, _writer) = pipe_holding(b"before exit\n", true);
        let captured = capture_after_the_grace(pipe, 1 << 20).await;
        assert_eq!(captured.bytes, b"before exit\n");
        assert!(!captured.truncated);
    }

    #[tokio::test]
    async fn output_kept_after_the_grace_still_stops_at_the_cap() {
        let (pipe, _writer) = pipe_holding(&[b'x'; 5000], true);
        let captured = capture_after_the_grace(pipe, 4096).await;
        assert_eq!(captured.bytes.len(), 4096);
        assert!(captured.bytes.iter().all(|&b| b == b'x'));
        assert!(captured.truncated);
    }

    #[test]
    fn a_run_can_move_between_worker_threads() {
        fn assert_send<T: Send>(_: T) {}
        let h = Harness::new();
        assert_send(
            h.runner
                .run(h.request("sh", "true"), CancellationToken::new()),
        );
    }

    #[test]
    fn in_development_mode_a_new_runner_creates_a_private_work_root() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("temp dir");
        let work_root = root.path().join("a/b");
        Runner::new(work_root.clone(), Isolation::Unsandboxed).expect("runner");
        let mode = std::fs::metadata(&work_root)
            .expect("created")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
