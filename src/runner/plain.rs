//! The `--sandbox none` start: the job as a plain subprocess of the server in its own process
//! group, with a cleared environment and rlimits only. Also what both modes give a job alike: its
//! environment and its rlimits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::execute::Invocation;
use super::process::{Attached, Process};
use crate::job::Limits;

/// The only `PATH` a job sees: system directories, never the server's own (which may point into a
/// developer's home or a virtualenv).
const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

const MAX_OPEN_FILES: u64 = 256;

/// Per-user allowances the kernel keeps outside any cgroup: signals queued, POSIX message queue
/// bytes, locked shared memory. A sandboxed run's are its own (its uid, which also owns its user
/// namespace, is no other run's: see `sandbox::namespace::owner`); these make their size the
/// same whatever the server was started with: Linux's defaults for the last two, and far more
/// queued signals than a program waits on.
const MAX_PENDING_SIGNALS: u64 = 4096;
const MAX_MESSAGE_QUEUE_BYTES: u64 = 819_200;
const MAX_LOCKED_BYTES: u64 = 8 << 20;

/// The whole environment a job sees.
pub(super) fn job_env(home: &str, tmp: &str, progress: bool) -> Vec<(String, String)> {
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

/// `env` with a runtime's own variables set over it: a runtime may give one of kiln's a value
/// of its own.
pub(super) fn with_runtime_env(
    mut env: Vec<(String, String)>,
    runtime: &[(String, String)],
) -> Vec<(String, String)> {
    for (key, value) in runtime {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env
}

/// A pipe whose ends are not inherited across exec unless moved on purpose.
pub(super) fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// (resource, soft, hard) for a run. The CPU soft limit sends SIGXCPU; the hard limit one second
/// later SIGKILLs a program that catches SIGXCPU. Where a memory cgroup enforces the memory
/// limit (and reports its kills), the address space is not limited at all: runtimes reserve far
/// more of it than they touch (the JVM's heap, Go's arenas, a big `mmap` read sparsely), and a
/// limit there would fail programs that stay well inside their memory. Only without the cgroup
/// is the address space the limit, the one the kernel can hold a process to then.
pub(super) fn rlimits(
    limits: &Limits,
    memory_cgroup: bool,
    own_uid: bool,
) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    let cpu_secs = limits.cpu_ms.div_ceil(1000).max(1);
    let address_space = match memory_cgroup {
        true => libc::RLIM_INFINITY,
        false => limits.memory_mb.saturating_mul(1 << 20),
    };
    let mut rlimits = vec![
        (libc::RLIMIT_CPU, cpu_secs, cpu_secs.saturating_add(1)),
        (libc::RLIMIT_AS, address_space, address_space),
        (libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
        (libc::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES),
        (libc::RLIMIT_CORE, 0, 0),
        (
            libc::RLIMIT_SIGPENDING,
            MAX_PENDING_SIGNALS,
            MAX_PENDING_SIGNALS,
        ),
        (
            libc::RLIMIT_MSGQUEUE,
            MAX_MESSAGE_QUEUE_BYTES,
            MAX_MESSAGE_QUEUE_BYTES,
        ),
        (libc::RLIMIT_MEMLOCK, MAX_LOCKED_BYTES, MAX_LOCKED_BYTES),
        // No real-time scheduling and no raising its priority, whatever the server may: a job
        // under SCHED_FIFO would starve every other run of its core.
        (libc::RLIMIT_RTPRIO, 0, 0),
        (libc::RLIMIT_NICE, 0, 0),
    ];
    // RLIMIT_NPROC counts every process of the uid: only meaningful when the job has a uid of
    // its own, as in the sandbox.
    if own_uid {
        rlimits.push((libc::RLIMIT_NPROC, limits.processes, limits.processes));
    }
    rlimits
}

/// Starts the job's process without a sandbox (`--sandbox none`): own process group, cleared
/// environment, rlimits. Returns a running child with piped stdio, leading its own process group
/// (pgid = pid).
///
/// Called on the async thread, not in `spawn_blocking`: `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked the child exits, and blocking-pool threads exit after idling, which would kill
/// long-running jobs. (The same holds for a worker thread handed over by `block_in_place`.)
fn spawn_process(
    program: &Path,
    argv: &[String],
    env: &[(String, String)],
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
        .envs(with_runtime_env(
            job_env(&home, &home, progress.is_some()),
            env,
        ))
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

/// Starts `invocation` as a plain subprocess working in `work_dir`, with a progress pipe of its
/// own if the run reports.
pub(super) fn start(invocation: &Invocation<'_>, work_dir: &Path) -> io::Result<Attached> {
    let (progress, progress_write) = invocation
        .reporting
        .map(|_| cloexec_pipe())
        .transpose()?
        .unzip();
    let progress_fd = progress_write.as_ref().map(AsRawFd::as_raw_fd);
    let mut child = spawn_process(
        &invocation.program,
        &invocation.argv,
        &invocation.env,
        work_dir,
        &invocation.limits,
        progress_fd,
    )?;
    // The job holds the only write end now: its exit closes the pipe.
    drop(progress_write);
    // Linux pids are at most 2^22, so they fit in pid_t.
    let mut process = Process::plain(child.id().cast_signed());
    let missing = || io::Error::other("child was spawned without a stdio pipe");
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    let stdin = pipe::Sender::from_owned_fd(stdin.into())?;
    let stdout = pipe::Receiver::from_owned_fd(stdout.into())?;
    let stderr = pipe::Receiver::from_owned_fd(stderr.into())?;
    process.exits_on(pidfd_open(child.id())?);
    Ok(Attached {
        stdin,
        stdout,
        stderr,
        progress: progress.map(pipe::Receiver::from_owned_fd).transpose()?,
        process,
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
