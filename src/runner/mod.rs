//! Runs one attempt of a job and reports what happened. This module owns the whole life of that
//! attempt: a compiled runtime's build first (for a batch once, shared by its cases: [`Builds`]),
//! then the job's own program, each executed under the same rules — started in the server's
//! sandbox ([`Isolation::Sandbox`], the default) or, with `--sandbox none`, as a plain
//! subprocess; fed its stdin; its stdout and stderr captured up to the output cap; held to its
//! wall-clock, CPU and output limits and to cancellation; then killed and measured (status, CPU
//! time, peak memory).
//!
//! The parts, one file each: `workdir` (a run's directory on disk, which a plain subprocess or a
//! compile step works in; a sandbox writes the submitted files into its own `/work` from memory,
//! sparing a job's start the disk), `execute` (one process from start to end), `plain` and
//! `launch` (the two ways to start it, which both return the same `Attached`), `process` (the
//! wait for its end, the kill and the reaping), `capture` (its output and input).
//!
//! Whatever way a run ends, nothing of it outlives the run: a sandbox's init is killed, taking
//! the pid namespace and the run's cgroup with it, or a plain subprocess's whole process group is
//! killed and its leader reaped; the work directory is removed.

use std::collections::BTreeMap;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::job::content::Content;
use crate::job::outputs::OutputCaps;
use crate::job::{BatchId, BuildUse, JobId, Limits, Outcome, Progress, RunResult};
use crate::live::RunFeed;
use crate::runtime::{Compile, Expansion, Runtime};
use crate::sandbox::{Sandbox, WorkFile, WorkMount};
use crate::stdin::StdinReader;

mod builds;
mod capture;
mod execute;
mod launch;
mod outputs;
mod plain;
mod process;
mod workdir;

pub use builds::Builds;
use builds::{BuildKey, Built, NotBuilt};
use execute::{Invocation, execute};
use workdir::{
    Placing, WorkDir, artifact_entries, check_inline, copy_tree, in_pages, is_run_directory,
    remove_logged, remove_path, remove_tree, staged_entries, staged_size, work_files,
};

/// One attempt of one job, borrowing the stored job's fields.
#[derive(Clone, Copy, Debug)]
pub struct RunRequest<'a> {
    pub job_id: JobId,
    pub attempt: u32,
    pub runtime: &'a Runtime,
    pub code: &'a [u8],
    pub stdin: &'a [u8],
    pub args: &'a [String],
    /// Extra files for the work directory, by relative path (already checked by
    /// [`crate::job::validate::check_file_name`]).
    pub files: &'a BTreeMap<String, Content>,
    /// The files to keep after the run ([`crate::job::outputs`]).
    pub outputs: &'a [String],
    pub limits: Limits,
    /// Where the job's run reports while it runs; `None` runs it without a progress pipe.
    pub reporting: Option<&'a Reporting>,
    /// The batch the job is a case of: a compiled runtime then builds once for all the
    /// batch's cases with the same program.
    pub batch: Option<BatchId>,
}

/// What a run tells the outside while it runs: its output to whoever watches the job live, and
/// the latest progress line it wrote to its progress pipe ([`crate::progress`]); and, for an
/// interactive job, what the outside writes to its stdin while it runs ([`crate::stdin`]).
pub struct Reporting {
    pub output: RunFeed,
    pub progress: watch::Sender<Option<Progress>>,
    pub stdin: Option<StdinReader>,
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
    /// The kernel refused to set the run up as the job asked: its arguments (`execve`'s E2BIG)
    /// or the files it named (writing them into the sandbox's `/work`). The job's own doing,
    /// which running it again would not change; validation refuses every such request it can
    /// tell at submit, so this is what it could not.
    #[error("the run could not be set up as the job asked: {source}")]
    Refused { source: io::Error },
    #[error("could not wait for process {pid}: {source}")]
    Wait { pid: i32, source: io::Error },
    #[error("output capture failed: {0}")]
    Capture(#[from] tokio::task::JoinError),
}

/// How a job's process is confined.
pub enum Isolation {
    /// The sandbox: namespaces, filters, cgroups. The default, and the only mode for strangers.
    Sandbox(Sandbox),
    /// `--sandbox none`: a plain subprocess with rlimits, for development on hosts that cannot
    /// sandbox.
    None,
}

/// Limits of a compiled runtime's build step unless the operator sets others
/// ([`Runner::with_compile_limits`]): the build is the same for every job, whatever the job asks.
pub const DEFAULT_COMPILE_LIMITS: Limits = Limits {
    wall_ms: 30_000,
    cpu_ms: 30_000,
    memory_mb: 1024,
    processes: 64,
    output_bytes: 1 << 20,
    file_bytes: 256 << 20,
    cpu_percent: None,
};

/// Runs jobs in fresh directories under one work root.
pub struct Runner {
    work_root: PathBuf,
    isolation: Isolation,
    builds: Builds,
    compile_limits: Limits,
    /// What no runtime's build limits may exceed: the deployment's maxima.
    compile_caps: Limits,
    output_caps: OutputCaps,
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
            compile_limits: DEFAULT_COMPILE_LIMITS,
            compile_caps: Limits {
                cpu_percent: None,
                ..crate::job::policy::Policy::default().max_limits
            },
            output_caps: OutputCaps::default(),
        })
    }

    /// What is kept of a run's output files: `caps` instead of [`OutputCaps::default`].
    pub fn with_output_caps(self, caps: OutputCaps) -> Runner {
        Runner {
            output_caps: caps,
            ..self
        }
    }

    /// Builds run under `limits` instead of [`DEFAULT_COMPILE_LIMITS`], and a runtime's own build
    /// limits under `caps`.
    pub fn with_compile_limits(self, limits: Limits, caps: Limits) -> Runner {
        Runner {
            compile_limits: limits,
            compile_caps: caps,
            ..self
        }
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
        // A runtime may name its files after the code (Java's class): only its text is read.
        let code_text = String::from_utf8_lossy(req.code);
        let source = req.runtime.source_file(&code_text);
        let name = req.runtime.program_name(&code_text);
        // A sandbox writes the submitted code and files into its `/work` from memory; only a
        // plain subprocess (which runs in the directory) and a compiled runtime (whose build
        // step binds it) need them on disk first.
        let inline =
            matches!(self.isolation, Isolation::Sandbox(_)) && req.runtime.compile.is_none();
        // A plain subprocess runs in its directory and may write to its binary; a sandbox only
        // reads the directory into its own `/work`, so there the shared build is linked.
        let placing = match self.isolation {
            Isolation::Sandbox(_) => Placing::Link,
            Isolation::None => Placing::Copy,
        };
        let output = async {
            if inline {
                check_inline(&req, &source).map_err(|source| RunError::WorkDir {
                    path: work_dir.path.clone(),
                    source,
                })?;
            } else {
                work_dir.populate(&req, &source).await?;
            }
            let names = staged_entries(&source, req.files);
            let work = self.work_seen_as(&work_dir.path);
            let expansion = Expansion {
                source: &source,
                name: &name,
                memory_mb: req.limits.memory_mb,
                work: &work,
                args: req.args,
            };
            let mut build = None;
            let mut artifact_names = Vec::new();
            if let Some(compile) = &req.runtime.compile {
                let built_path = work_dir.path.join(&compile.artifact);
                match req.batch {
                    None => {
                        build = Some(BuildUse::Compiled);
                        let built = self
                            .compile(&req, &work_dir.path, &names, &source, &name, &cancel)
                            .await?;
                        if built.outcome != Outcome::Success {
                            return Ok(with_build(built, build));
                        }
                    }
                    Some(batch) => {
                        let (built, used) = self
                            .shared_build(batch, &req, compile, &source, &name, &cancel)
                            .await?;
                        build = Some(used);
                        match built {
                            Ok(artifact) => copy_artifact(&artifact, &built_path, placing)
                                .await
                                .map_err(|source| RunError::WorkDir {
                                    path: built_path.clone(),
                                    source,
                                })?,
                            Err(failed) => return Ok(with_build(failed, build)),
                        }
                    }
                }
                artifact_names =
                    artifact_entries(&work_dir.path, &compile.artifact).map_err(|source| {
                        RunError::WorkDir {
                            path: built_path.clone(),
                            source,
                        }
                    })?;
            }
            let mut entries = work_files(&names, &req, &source, inline);
            let mut staged_bytes = staged_size(&req);
            // The run's /work must hold the artifact besides the job's own room.
            for (entry, bytes) in &artifact_names {
                staged_bytes += in_pages(*bytes);
                entries.push(match entry.ends_with('/') {
                    true => WorkFile::Dir(entry),
                    false => WorkFile::Staged(entry),
                });
            }
            let run = Invocation {
                program: req.runtime.run.program(Path::new(&work)),
                argv: req.runtime.run.argv(&expansion),
                env: req.runtime.env(&expansion),
                stdin: req.stdin,
                limits: req.limits,
                entries: &entries,
                staged_bytes,
                work: WorkMount::Copy,
                reporting: req.reporting,
                build: false,
                outputs: req.outputs,
                output_caps: self.output_caps,
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

    /// What `runtime`'s version command prints (the first line it writes, on stdout or else on
    /// stderr), run as a job's program is: in the sandbox, under the build limits, so that no
    /// tool runs with the server's privileges. `None` if it has none, fails or says nothing.
    pub async fn version_of(&self, runtime: &Runtime) -> Option<String> {
        let command = runtime.version_command()?;
        let work_dir = WorkDir {
            path: self.work_root.join(format!("{}-0", uuid::Uuid::now_v7())),
            on_disk: true,
        };
        tokio::task::spawn_blocking({
            let path = work_dir.path.clone();
            move || DirBuilder::new().mode(0o700).create(path)
        })
        .await
        .ok()?
        .ok()?;
        let work = self.work_seen_as(&work_dir.path);
        let expansion = Expansion {
            source: "",
            name: "",
            memory_mb: self.compile_limits.memory_mb,
            work: &work,
            args: &[],
        };
        let probe = Invocation {
            program: command.program(Path::new(&work)),
            argv: command.argv(&expansion),
            env: runtime.env(&expansion),
            stdin: b"",
            limits: self.compile_limits,
            entries: &[],
            staged_bytes: 0,
            work: WorkMount::Copy,
            reporting: None,
            build: false,
            outputs: &[],
            output_caps: self.output_caps,
        };
        let ran = execute(
            &probe,
            &work_dir.path,
            &self.isolation,
            &CancellationToken::new(),
        )
        .await;
        work_dir.remove().await;
        let result = ran.ok()?.result;
        [result.stdout, result.stderr].iter().find_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        })
    }

    /// The work directory `dir` as the run's processes see it.
    fn work_seen_as(&self, dir: &Path) -> String {
        match self.isolation {
            Isolation::Sandbox(_) => "/work".to_owned(),
            Isolation::None => dir.display().to_string(),
        }
    }

    /// The limits of `req`'s build: the server's, with what its runtime sets instead, none above
    /// the deployment's maxima.
    fn compile_limits(&self, req: &RunRequest<'_>) -> Limits {
        let own = req
            .runtime
            .compile
            .as_ref()
            .map_or_else(Default::default, |c| c.limits);
        own.over(&self.compile_limits).within(&self.compile_caps)
    }

    /// Compiles the code staged in `dir` (`entries`) in place: the artifact lands beside it. The
    /// outcome is `Success`, `CompileError` (the compiler refused the code, or crashed on it),
    /// `Cancelled`, or the limit the build reached (a build killed for memory ends
    /// `memory_limit`, as the job's own program would).
    async fn compile(
        &self,
        req: &RunRequest<'_>,
        dir: &Path,
        names: &[String],
        source: &str,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<RunOutput, RunError> {
        let Some(compile) = &req.runtime.compile else {
            return Err(RunError::WorkDir {
                path: dir.to_owned(),
                source: io::Error::other("the runtime does not compile"),
            });
        };
        let limits = self.compile_limits(req);
        let work = self.work_seen_as(dir);
        let expansion = Expansion {
            source,
            name,
            memory_mb: limits.memory_mb,
            work: &work,
            args: &[],
        };
        let entries = work_files(names, req, source, false);
        let build = Invocation {
            program: compile.command.program(Path::new(&work)),
            argv: compile.command.argv(&expansion),
            env: req.runtime.env(&expansion),
            stdin: b"",
            limits,
            entries: &entries,
            staged_bytes: staged_size(req),
            work: WorkMount::Bind,
            reporting: None,
            build: true,
            // What a build leaves is the binary, for the run; the job's files come from its run.
            outputs: &[],
            output_caps: self.output_caps,
        };
        let built = execute(&build, dir, &self.isolation, cancel).await?;
        let outcome = match built.outcome {
            Outcome::NonzeroExit | Outcome::Signal => Outcome::CompileError,
            other => other,
        };
        Ok(RunOutput { outcome, ..built })
    }

    /// The binary of `req`'s program in the batch (what `compile`, the build step of `req`'s
    /// runtime, produces), compiled by the first of the cases with that program to get here
    /// while the others wait for it; or the failed build (refused, or at its limits) every such
    /// case then reports. Also says
    /// whether this run compiled or shared. A build that was cancelled or could not run is not
    /// kept: the next case tries again.
    async fn shared_build(
        &self,
        batch: BatchId,
        req: &RunRequest<'_>,
        compile: &Compile,
        source: &str,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<(Result<PathBuf, RunOutput>, BuildUse), RunError> {
        let key = BuildKey::of(req.runtime, source, req.code, req.files);
        let entry = self.builds.entry(batch, key);
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
                staging.populate(req, source).await?;
                let entries = staged_entries(source, req.files);
                let built = self
                    .compile(req, &staging.path, &entries, source, name, cancel)
                    .await?;
                match built.outcome {
                    Outcome::Success => {
                        let from = staging.path.join(&compile.artifact);
                        copy_artifact(&from, entry.artifact(), Placing::Copy)
                            .await
                            .map_err(|source| RunError::WorkDir {
                                path: entry.artifact().to_owned(),
                                source,
                            })?;
                        Ok(Built::Artifact(entry.artifact().to_owned()))
                    }
                    Outcome::Cancelled => Err(NotBuilt::Cancelled(built)),
                    // The same for every case: a build at its limits is not tried again.
                    _ => Ok(Built::Failed(built)),
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
            Ok(Built::Artifact(path)) => Ok((Ok(path.clone()), used)),
            Ok(Built::Failed(failed)) => Ok((Err(failed.clone()), used)),
            Err(NotBuilt::Cancelled(cancelled)) => Ok((Err(cancelled), used)),
            Err(NotBuilt::Error(e)) => Err(e),
        }
    }
}

fn with_build(mut output: RunOutput, build: Option<BuildUse>) -> RunOutput {
    output.result.build = build;
    output
}

/// Copies what a build left (a file keeping its mode, or a directory of them) into a run's work
/// directory or the build cache.
async fn copy_artifact(from: &Path, to: &Path, placing: Placing) -> io::Result<()> {
    let (from, to) = (from.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || copy_tree(&from, &to, placing))
        .await
        .unwrap_or_else(|panicked| Err(io::Error::other(panicked)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::runtime::Runtimes;
    use crate::sandbox::SandboxConfig;

    static NO_FILES: BTreeMap<String, Content> = BTreeMap::new();

    /// A run's output, which these tests expect to be text.
    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("UTF-8 output")
    }

    const LIMITS: Limits = Limits {
        wall_ms: 10_000,
        cpu_ms: 10_000,
        memory_mb: 512,
        processes: 64,
        output_bytes: 1 << 20,
        file_bytes: 1 << 20,
        cpu_percent: None,
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

        /// Runs jobs as plain subprocesses (`--sandbox none`): only for tests named after it.
        fn sandbox_none() -> Harness {
            Harness::with(tempfile::tempdir().expect("temp dir"), Isolation::None)
        }

        fn with(root: tempfile::TempDir, isolation: Isolation) -> Harness {
            let runner = Runner::new(root.path().join("work"), isolation).expect("runner");
            Harness {
                root,
                runner,
                runtimes: Runtimes::load(&Default::default()).expect("the built-in runtimes"),
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
                code: code.as_bytes(),
                stdin: b"",
                args: &[],
                files: &NO_FILES,
                outputs: &[],
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
        assert_eq!(text(&out.result.stdout), "out\n");
        assert_eq!(text(&out.result.stderr), "err\n");
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
        assert_eq!(text(&out.result.stderr), "failing\n");
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
                stdin: input.as_bytes(),
                ..h.request("sh", "cat")
            })
            .await;
        assert_eq!(out.outcome, Outcome::Success);
        assert!(
            text(&out.result.stdout) == input,
            "stdin did not round-trip"
        );
    }

    #[tokio::test]
    async fn a_program_that_ignores_its_stdin_still_succeeds() {
        let h = Harness::new();
        let input = "x".repeat(1 << 20);
        let out = h
            .run(RunRequest {
                stdin: input.as_bytes(),
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
            ("data.txt".to_owned(), "top\n".into()),
            ("sub/dir/deep.txt".to_owned(), "deep\n".into()),
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
            text(&out.result.stdout),
            "[one][two words]\ntop\ndeep\nin-work-dir\n"
        );
    }

    #[tokio::test]
    async fn a_file_named_like_the_source_file_is_refused() {
        let h = Harness::new();
        let files = BTreeMap::from([("main.sh".to_owned(), "echo clobbered".into())]);
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

    // Validation refuses these at submit; a run given one anyway ends as the job's doing.
    #[tokio::test]
    async fn args_the_kernel_will_not_pass_are_refused_as_the_jobs_doing_in_both_modes() {
        let args = ["x".repeat(256 << 10)];
        for h in [Harness::new(), Harness::sandbox_none()] {
            let result = h
                .runner
                .run(
                    RunRequest {
                        args: &args,
                        ..h.request("sh", "true")
                    },
                    CancellationToken::new(),
                )
                .await;
            assert!(
                matches!(&result, Err(RunError::Refused { source })
                    if source.kind() == io::ErrorKind::ArgumentListTooLong),
                "{result:?}"
            );
            assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
        }
    }

    #[tokio::test]
    async fn as_many_small_files_as_a_job_may_have_fit_its_work_directory_at_the_least_file_limit()
    {
        let h = Harness::new();
        let files: BTreeMap<String, Content> =
            (0..256).map(|i| (format!("f{i}"), "x".into())).collect();
        let out = h
            .run(RunRequest {
                files: &files,
                limits: Limits {
                    file_bytes: 1,
                    ..LIMITS
                },
                ..h.request("sh", "cat f0 f255")
            })
            .await;
        assert_eq!(out.outcome, Outcome::Success, "{:?}", out.result);
        assert_eq!(text(&out.result.stdout), "xx");
    }

    #[tokio::test]
    async fn files_the_sandbox_cannot_write_as_named_are_refused_as_the_jobs_doing() {
        let h = Harness::new();
        let files = BTreeMap::from([
            ("a".to_owned(), "a file".into()),
            ("a/b".to_owned(), "under a file".into()),
        ]);
        let result = h
            .runner
            .run(
                RunRequest {
                    files: &files,
                    ..h.request("sh", "true")
                },
                CancellationToken::new(),
            )
            .await;
        assert!(
            matches!(result, Err(RunError::Refused { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn the_environment_holds_only_the_allowed_variables() {
        let h = Harness::new();
        let out = h.run(h.request("sh", "printenv")).await;
        let mut env: Vec<&str> = text(&out.result.stdout).lines().collect();
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
    async fn with_sandbox_none_the_environment_points_at_the_run_directory() {
        let h = Harness::sandbox_none();
        let out = h.run(h.request("sh", "echo \"$HOME $TMPDIR\"")).await;
        let (home, tmp) = text(&out.result.stdout)
            .trim()
            .split_once(' ')
            .expect("two paths");
        assert_eq!(home, tmp);
        assert!(Path::new(home).starts_with(h.work_root()), "{home}");
    }

    #[tokio::test]
    async fn with_sandbox_none_the_wall_limit_kills_the_job_and_its_background_children() {
        let h = Harness::sandbox_none();
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
        let background = printed_pid(text(&out.result.stdout), "background=");
        assert!(stops_running(background).await, "background child survived");
    }

    #[tokio::test]
    async fn with_sandbox_none_a_process_that_escaped_the_group_does_not_hold_the_run_open() {
        let h = Harness::sandbox_none();
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
        let escaped = printed_pid(text(&out.result.stdout), "escaped=");
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
        assert_eq!(text(&out.result.stdout).len(), 10_000);
        assert!(text(&out.result.stdout).lines().all(|line| line == "y"));
        assert!(out.result.stdout_truncated);
        // Each stream has its own cap.
        assert_eq!(text(&out.result.stderr), "e".repeat(5000));
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
        assert_eq!(text(&out.result.stdout).len(), 10_000);
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
    async fn the_files_a_run_leaves_are_collected_in_the_sandbox_and_without_one() {
        let outputs = ["out/*".to_owned()];
        let code = "mkdir out; printf 'x\\377' > out/o.bin; ln -s /etc/passwd out/p.txt";
        for h in [Harness::new(), Harness::sandbox_none()] {
            let out = h
                .run(RunRequest {
                    outputs: &outputs,
                    ..h.request("sh", code)
                })
                .await;
            assert_eq!(out.outcome, Outcome::Success, "{:?}", out.result);
            let files = &out.result.files;
            let kept: Vec<(&str, &[u8])> = files
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.contents.as_slice()))
                .collect();
            assert_eq!(kept, [("out/o.bin", b"x\xff".as_slice())]);
            let omitted: Vec<&str> = files.omitted.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(omitted, ["out/p.txt"], "a symlink is not followed");
            assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
        }
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
        let files = BTreeMap::from([("sub/new.txt".to_owned(), Content::default())]);
        let out = h
            .run(RunRequest {
                files: &files,
                ..h.request("sh", "ls -A . sub")
            })
            .await;
        assert_eq!(
            text(&out.result.stdout),
            ".:\nmain.sh\nsub\n\nsub:\nnew.txt\n"
        );
        std::fs::remove_file(&other).expect("remove the other file");
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn with_sandbox_none_the_work_directory_is_fresh_and_removed_afterwards() {
        let h = Harness::sandbox_none();
        let req = h.request("sh", "ls -A");
        // As if an earlier run of this attempt had crashed.
        let stale = h
            .work_root()
            .join(format!("{}-{}", req.job_id, req.attempt));
        std::fs::create_dir_all(stale.join("sub")).expect("stale dir");
        std::fs::write(stale.join("sub/stale.txt"), "old").expect("stale file");
        let files = BTreeMap::from([("sub/new.txt".to_owned(), Content::default())]);
        let out = h
            .run(RunRequest {
                files: &files,
                ..req
            })
            .await;
        assert_eq!(text(&out.result.stdout), "main.sh\nsub\n");
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn a_missing_interpreter_is_a_spawn_error() {
        let h = Harness::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let interpreter = dir.path().join("interpreter");
        std::fs::write(&interpreter, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(
            &interpreter,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let definitions = dir.path().join("runtimes.toml");
        let definition = format!(
            "[runtimes.missing]\nsource_file = \"main\"\nrun = [\"{}\", \"{{source}}\"]\n",
            interpreter.display()
        );
        std::fs::write(&definitions, definition).expect("write");
        let runtimes = Runtimes::load(&crate::runtime::Sources {
            file: Some(definitions),
            extra: Vec::new(),
        })
        .expect("the definition");
        std::fs::remove_file(&interpreter).expect("remove");
        let missing = runtimes.get("missing").expect("offered when loaded");
        let result = h
            .runner
            .run(
                RunRequest {
                    runtime: missing,
                    ..h.request("sh", "true")
                },
                CancellationToken::new(),
            )
            .await;
        assert!(matches!(result, Err(RunError::Spawn { .. })), "{result:?}");
        assert!(h.work_dirs_removed().await, "{:?}", h.work_dirs_left());
    }

    #[tokio::test]
    async fn with_sandbox_none_dropping_a_run_kills_its_process_and_removes_its_directory() {
        let h = Harness::sandbox_none();
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
            crate::testing::skip(
                "a_python_job_runs_if_python_is_available",
                "no python runtime on this host",
            );
            return;
        }
        let out = h.run(h.request("python", "print(\"hello\")")).await;
        assert_eq!(out.outcome, Outcome::Success, "{:?}", out.result);
        assert_eq!(text(&out.result.stdout), "hello\n");
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
    fn with_sandbox_none_a_new_runner_creates_a_private_work_root() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("temp dir");
        let work_root = root.path().join("a/b");
        Runner::new(work_root.clone(), Isolation::None).expect("runner");
        let mode = std::fs::metadata(&work_root)
            .expect("created")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    /// A case that takes the execute bit off its binary, then its next case of the same build:
    /// the second must still run the build, whatever the first did to its own copy.
    async fn a_case_cannot_change_the_build_the_next_case_runs(h: Harness) {
        let code = "#include <stdio.h>\n#include <sys/stat.h>\n\
                    int main(void) { puts(\"built\"); return chmod(\"main\", 0644) != 0; }\n";
        let batch = BatchId::now_v7();
        for case in ["first", "second"] {
            let out = h
                .run(RunRequest {
                    batch: Some(batch),
                    ..h.request("c", code)
                })
                .await;
            assert_eq!(out.outcome, Outcome::Success, "{case}: {:?}", out.result);
            assert_eq!(text(&out.result.stdout), "built\n", "{case}");
        }
    }

    #[tokio::test]
    async fn in_the_sandbox_a_case_cannot_change_the_build_the_next_case_runs() {
        a_case_cannot_change_the_build_the_next_case_runs(Harness::new()).await;
    }

    #[tokio::test]
    async fn with_sandbox_none_a_case_cannot_change_the_build_the_next_case_runs() {
        a_case_cannot_change_the_build_the_next_case_runs(Harness::sandbox_none()).await;
    }
}
