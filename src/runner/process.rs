//! The job's process until it is reaped: killing it (its group, or the sandbox's init), waiting
//! for its end, reaping it with `wait4` and measuring what it used.
//!
//! The child is reaped here rather than through `tokio::process` because only `wait4` reports the
//! rusage of exactly this child (and the descendants it waited for); tokio's reaper would discard it.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::sandbox::{Ended, Sandboxed};

/// The child's pipes as nonblocking tokio pipes, and a pidfd that becomes readable on its exit.
pub(super) struct Attached {
    pub(super) stdin: pipe::Sender,
    pub(super) stdout: pipe::Receiver,
    pub(super) stderr: pipe::Receiver,
    pub(super) exited: AsyncFd<OwnedFd>,
    /// A sandbox's report of the run's end.
    pub(super) report: Option<EndReport>,
}

/// Resolves once the process has exited (it is then a zombie until reaped). The readiness is left
/// set on purpose: an exited process stays exited, so a second wait returns at once.
async fn wait_exit(pidfd: &AsyncFd<OwnedFd>) -> io::Result<()> {
    pidfd.readable().await.map(|_exited| ())
}

/// The job's process until it is reaped (in a sandbox: the sandbox's init). Dropped earlier (an
/// error, or `run`'s future dropped), it kills the group and reaps the leader in the background,
/// leaving neither processes nor a zombie.
pub(super) struct Process {
    pub(super) pid: libc::pid_t,
    pub(super) reaped: bool,
    pub(super) sandbox: Option<Sandboxed>,
}

/// What a run used and how the job itself ended.
pub(super) struct Measured {
    /// The job's wait status (in a sandbox, as init reported it).
    pub(super) status: libc::c_int,
    pub(super) cpu_ms: u64,
    pub(super) memory_kb: u64,
    pub(super) oom_killed: bool,
}

impl Process {
    pub(super) fn kill(&self) {
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
    pub(super) fn reap(&mut self) -> io::Result<(libc::c_int, libc::rusage)> {
        // Whatever wait4 answers, the pid is no longer safe to signal afterwards.
        self.reaped = true;
        wait4(self.pid)
    }

    /// A sandbox's run as its init reported the end: nothing of the run is left, and init
    /// itself is reaped when the sandbox is disposed of, off the run's path.
    pub(super) fn ended(&mut self, ended: Ended) -> Measured {
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
    pub(super) fn measure(&self, status: libc::c_int, usage: &libc::rusage) -> Measured {
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
pub(super) struct EndReport {
    pub(super) pipe: pipe::Receiver,
    pub(super) bytes: [u8; Ended::SIZE],
    pub(super) filled: usize,
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
pub(super) async fn run_over(
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

fn timeval_ms(time: libc::timeval) -> u64 {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_usec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}
