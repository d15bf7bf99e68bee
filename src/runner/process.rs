//! The job's process as a run holds it, however it was started: its pipes, the wait for its end,
//! the kill, and what it used. A plain subprocess is killed by its process group and reaped here
//! with `wait4`; a sandboxed one is the sandbox's init, which the sandbox kills, reaps and
//! measures behind [`Sandboxed`]'s methods.
//!
//! A plain child is reaped with `wait4` ([`Exit::reap`]) rather than through `tokio::process`
//! because only `wait4` reports the rusage of exactly this child (and the descendants it waited
//! for); tokio's reaper would discard it.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::sandbox::{Ending, Exit, Sandboxed};

/// A started job: its pipes as nonblocking tokio pipes, and its process. What both ways of
/// starting a job return.
pub(super) struct Attached {
    pub(super) stdin: pipe::Sender,
    pub(super) stdout: pipe::Receiver,
    pub(super) stderr: pipe::Receiver,
    /// The read end of the job's progress pipe, for a run that reports.
    pub(super) progress: Option<pipe::Receiver>,
    pub(super) process: Process,
}

/// The job's process until it is reaped (in a sandbox: the sandbox's init). Dropped earlier (an
/// error, or `run`'s future dropped), it kills the run and reaps it in the background, leaving
/// neither processes nor a zombie.
pub(super) struct Process {
    pid: libc::pid_t,
    reaped: bool,
    kind: Kind,
}

enum Kind {
    /// A plain subprocess leading its own process group, and a pidfd that becomes readable on
    /// its exit (until [`Process::ended`] takes it).
    Plain(Option<AsyncFd<OwnedFd>>),
    /// `None` once disposed of, or while being dropped.
    Sandboxed(Option<Sandboxed>),
}

/// How a run came to its end, from [`Process::ended`]: the sandbox's account of it, or `None`
/// for a plain process.
pub(super) struct Ended(Option<Ending>);

impl Process {
    /// A plain subprocess `pid`, not reaped yet; its pidfd comes with [`Process::exits_on`].
    pub(super) fn plain(pid: libc::pid_t) -> Process {
        Process {
            pid,
            reaped: false,
            kind: Kind::Plain(None),
        }
    }

    /// Where a plain subprocess's exit shows: its pidfd.
    pub(super) fn exits_on(&mut self, pidfd: AsyncFd<OwnedFd>) {
        if let Kind::Plain(exited) = &mut self.kind {
            *exited = Some(pidfd);
        }
    }

    pub(super) fn sandboxed(sandboxed: Sandboxed) -> Process {
        Process {
            pid: sandboxed.pid(),
            reaped: false,
            kind: Kind::Sandboxed(Some(sandboxed)),
        }
    }

    pub(super) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    fn sandbox(&self) -> Option<&Sandboxed> {
        match &self.kind {
            Kind::Sandboxed(sandboxed) => sandboxed.as_ref(),
            Kind::Plain(_) => None,
        }
    }

    /// Resolves once the run is over: a plain process at its exit (it is then a zombie until
    /// reaped); a sandbox's once init reports the job's end (nothing of the run is left then), or
    /// once init is dead. Owns what it waits on, so it can be awaited again after losing a
    /// `select!` to a limit. Call it once.
    pub(super) fn ended(
        &mut self,
    ) -> io::Result<impl Future<Output = io::Result<Ended>> + Send + use<>> {
        let sandbox = self.sandbox().map(Sandboxed::ended).transpose()?;
        let exited = match &mut self.kind {
            Kind::Plain(exited) => Some(
                exited
                    .take()
                    .ok_or_else(|| io::Error::other("the process's exit was already awaited"))?,
            ),
            Kind::Sandboxed(_) => None,
        };
        Ok(async move {
            if let Some(ended) = sandbox {
                return ended.await.map(|ending| Ended(Some(ending)));
            }
            if let Some(exited) = exited {
                exited.readable().await.map(|_exited| ())?;
            }
            Ok(Ended(None))
        })
    }

    /// Whether the run's CPU time is counted as a whole ([`Process::cpu_ms`]).
    pub(super) fn counts_cpu(&self) -> bool {
        self.sandbox().is_some_and(Sandboxed::counts_cpu)
    }

    /// CPU time of all the run's processes so far, where that is counted.
    pub(super) fn cpu_ms(&self) -> Option<u64> {
        self.sandbox().and_then(Sandboxed::cpu_ms)
    }

    pub(super) fn kill(&self) {
        if self.reaped {
            return;
        }
        if let Some(sandbox) = self.sandbox() {
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

    /// The job's own status and its run's resource use, once [`Process::ended`] resolved. A
    /// plain process is reaped for it; a sandbox's cgroup counts every process of the run
    /// exactly, where rusage counts those that were waited for.
    pub(super) fn exit(&mut self, ended: Ended) -> io::Result<Exit> {
        // Whatever wait4 answers, the pid is no longer safe to signal afterwards.
        self.reaped = true;
        match (self.sandbox(), ended.0) {
            (Some(sandbox), Some(ending)) => sandbox.exit(ending),
            _ => Exit::reap(self.pid),
        }
    }

    /// Leaves what is left of the run (a sandbox's init and cgroup) to be removed off the
    /// async threads.
    /// The sandbox's `/work` as the run left it (see [`Sandboxed::take_work`]); `None` for a
    /// plain process, whose work directory is on disk.
    pub(super) fn take_work(&mut self) -> Option<OwnedFd> {
        match &mut self.kind {
            Kind::Sandboxed(Some(sandboxed)) => sandboxed.take_work(),
            _ => None,
        }
    }

    pub(super) fn dispose(mut self) {
        if let Kind::Sandboxed(sandboxed) = &mut self.kind
            && let Some(sandboxed) = sandboxed.take()
        {
            sandboxed.dispose();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill();
        let pid = self.pid;
        let sandbox = match &mut self.kind {
            Kind::Sandboxed(sandboxed) => sandboxed.take(),
            Kind::Plain(_) => None,
        };
        let reap = move || {
            if let Err(error) = Exit::reap(pid) {
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
