//! The default start: the job in one of the server's sandboxes, its pipes taken from the
//! sandbox's handle into the same [`Attached`] a plain start returns.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::net::unix::pipe;

use super::execute::Invocation;
use super::plain::{job_env, rlimits, with_runtime_env};
use super::process::{Attached, Process};
use crate::sandbox::{Launch, OverMemory, Sandbox, WorkFile, WorkMount};

/// How long a sandbox may take to build its root and exec the job before the run is an error.
const SANDBOX_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `invocation` in `sandbox`, with the files staged in `work_dir` if it has any there.
pub(super) async fn start(
    sandbox: &Sandbox,
    invocation: &Invocation<'_>,
    work_dir: &Path,
) -> io::Result<Attached> {
    let staged = invocation.work == WorkMount::Bind
        || invocation
            .entries
            .iter()
            .any(|e| matches!(e, WorkFile::Staged(_)));
    let mut rlimits = rlimits(&invocation.limits, sandbox.has_memory_cgroup(), true);
    // A compiler runs its passes as children and takes a pass killed by SIGXCPU for an error of
    // its own: where the run's CPU time is counted, that count ends a build at its limit first,
    // so the build ends with the limit it reached. RLIMIT_CPU stays, a second later, a backstop.
    if invocation.build && sandbox.counts_cpu() {
        for (resource, soft, hard) in &mut rlimits {
            if *resource == libc::RLIMIT_CPU {
                (*soft, *hard) = (soft.saturating_add(1), hard.saturating_add(1));
            }
        }
    }
    let launch = Launch {
        staging: staged.then_some(work_dir),
        entries: invocation.entries,
        work: invocation.work,
        staged_bytes: invocation.staged_bytes,
        program: &invocation.program,
        args: invocation.argv.clone(),
        env: with_runtime_env(
            job_env("/work", "/tmp", invocation.reporting.is_some()),
            &invocation.env,
        ),
        limits: invocation.limits,
        progress: invocation.reporting.is_some(),
        rlimits,
    };
    let mut launched = tokio::time::timeout(SANDBOX_START_TIMEOUT, sandbox.launch(launch))
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the sandbox did not start in time")))
        .inspect_err(|e| {
            // A run refused for its memory limit is the job's doing, not a failed start.
            if OverMemory::of(e).is_none() {
                crate::metrics::METRICS.sandbox_start_failed();
            }
        })?;
    // Taken over, so that dropping the stdin writer gives the job EOF.
    let stdio = launched.take_stdio();
    let progress = launched.take_progress();
    let process = Process::sandboxed(launched);
    let [stdin, stdout, stderr] =
        stdio.ok_or_else(|| io::Error::other("the sandbox's stdio was already taken"))?;
    Ok(Attached {
        stdin: pipe::Sender::from_owned_fd(stdin)?,
        stdout: pipe::Receiver::from_owned_fd(stdout)?,
        stderr: pipe::Receiver::from_owned_fd(stderr)?,
        progress: progress.map(pipe::Receiver::from_owned_fd).transpose()?,
        process,
    })
}
