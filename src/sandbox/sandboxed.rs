//! A launched run as its holder sees it: the job's pipes to take, the run's end to wait for and
//! its resource use to read, and the calls that kill it and clean up after it. What lies behind
//! these methods — init's pids and descriptors, the run's cgroup, and the status pipe on which
//! init reports the job's end — is known in this module only.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::pipe;

use super::cgroup::JobCgroup;
use super::namespace::{Ended, Started, setup_errno};

/// A running sandbox, from [`super::Sandbox::launch`] until it is disposed of.
pub struct Sandboxed {
    pub(super) started: Started,
    pub(super) cgroup: Option<JobCgroup>,
    /// What the run's files take of its memory, charged to the server rather than to the
    /// run's cgroup (see [`super::files_charge`]): part of what the run uses.
    pub(super) files_bytes: u64,
    /// The run's `/work` tmpfs, from the server's side (`None` for a build step's, which is a
    /// host directory): it outlives the sandbox for as long as this is held.
    pub(super) work: Option<OwnedFd>,
}

/// How the job of a run ended and what the run used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The job's wait status.
    pub status: libc::c_int,
    pub cpu_ms: u64,
    pub memory_kb: u64,
    /// The run's memory cgroup killed a process of it.
    pub oom_killed: bool,
}

impl Exit {
    /// Reaps the exited child `pid` with `wait4`: its status, and what it and the children it
    /// waited for used. Call it once the child has exited, so that it does not block.
    pub fn reap(pid: libc::pid_t) -> io::Result<Exit> {
        let mut status = 0;
        // SAFETY: rusage is plain C data, for which all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: both out-pointers are valid for writes for the duration of the call.
            if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } == pid {
                break;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        Ok(Exit {
            status,
            cpu_ms: timeval_ms(usage.ru_utime).saturating_add(timeval_ms(usage.ru_stime)),
            memory_kb: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            oom_killed: false,
        })
    }
}

fn timeval_ms(time: libc::timeval) -> u64 {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_usec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// How a run came to its end, for [`Sandboxed::exit`]: init's report, or init's death without
/// one (killed by a limit or a cancel).
pub struct Ending(Option<Ended>);

impl Sandboxed {
    /// The run's `/work` as the job left it, to read once the run is over (an `O_PATH`
    /// descriptor of the tmpfs's root); `None` if taken already or not a tmpfs.
    pub fn take_work(&mut self) -> Option<OwnedFd> {
        self.work.take()
    }

    /// init's pid, in the server's pid namespace.
    pub fn pid(&self) -> libc::pid_t {
        self.started.pid
    }

    /// The job's stdin (write end), stdout and stderr (read ends); `None` once taken. Whoever
    /// takes them decides when the job's stdin closes.
    pub fn take_stdio(&mut self) -> Option<[OwnedFd; 3]> {
        self.started.stdio.take()
    }

    /// The read end of the job's progress pipe, if the launch asked for one; `None` once taken.
    pub fn take_progress(&mut self) -> Option<OwnedFd> {
        self.started.progress.take()
    }

    /// Resolves once the run is over: once init reports the job's end (nothing of the run is
    /// left then), or once init is dead. The future owns what it reads, so it may be polled in a
    /// `select!` beside calls on this sandbox, and awaited again after another branch won: what
    /// arrived of the report is kept.
    pub fn ended(&self) -> io::Result<impl Future<Output = io::Result<Ending>> + Send + use<>> {
        let mut report = pipe::Receiver::from_owned_fd(self.started.status.try_clone()?)?;
        // SAFETY: the OwnedFd keeps the descriptor open for as long as the AsyncFd lives.
        let exited = unsafe {
            AsyncFd::register_with_interest(self.started.pidfd.try_clone()?, Interest::READABLE)
        }?;
        let mut bytes = [0; Ended::SIZE];
        let mut filled = 0;
        Ok(async move {
            while filled < Ended::SIZE {
                let n = report.read(&mut bytes[filled..]).await?;
                if n == 0 {
                    // EOF without a report: init died first, and only its death ends the run.
                    // The readiness is left set on purpose: a dead init stays dead.
                    exited.readable().await.map(|_dead| ())?;
                    return Ok(Ending(None));
                }
                filled += n;
            }
            Ok(Ending(Some(Ended::decode(&bytes))))
        })
    }

    /// How the run ended and what it used, once [`Sandboxed::ended`] resolved: from init's report
    /// (init itself is reaped when the sandbox is disposed of, off the run's path), or from
    /// reaping init if it died without one. The run's cgroup, where there is one, counts every
    /// process of the run.
    pub fn exit(&self, ending: Ending) -> io::Result<Exit> {
        let mut exit = match ending.0 {
            Some(ended) => Exit {
                status: ended.status,
                cpu_ms: ended.cpu_us / 1000,
                memory_kb: ended.max_rss_kb,
                oom_killed: false,
            },
            None => Exit::reap(self.started.pid)?,
        };
        if let Some(cgroup) = &self.cgroup {
            let used = cgroup.usage();
            exit.oom_killed = used.oom_killed;
            // Each is a lower bound of what the run used: init's rusage misses processes it never
            // reaped (killed with the namespace); the cgroup may miss the job's first moments.
            if let Some(cpu_ms) = used.cpu_ms {
                exit.cpu_ms = exit.cpu_ms.max(cpu_ms);
            }
            if let Some(peak) = used.memory_peak_bytes {
                exit.memory_kb = peak / 1024;
            }
        }
        exit.memory_kb = exit.memory_kb.saturating_add(self.files_bytes / 1024);
        Ok(exit)
    }

    /// What the run held, if its setup (`report`, from the setup pipe) failed for want of
    /// memory under its limit: a step after the job entered its memory cgroup (its execve,
    /// mostly) failed with ENOMEM, or E2BIG (what an execve answers whose arguments cannot be
    /// charged), while the cgroup was at its limit.
    pub(super) fn out_of_memory(&self, report: [u8; 8]) -> Option<u64> {
        let cgroup = self.cgroup.as_ref()?;
        let errno = setup_errno(report);
        if !matches!(errno, libc::ENOMEM | libc::E2BIG) || !cgroup.reached_memory_limit() {
            return None;
        }
        let peak = cgroup.usage().memory_peak_bytes.unwrap_or(0);
        Some(peak.saturating_add(self.files_bytes))
    }

    /// Whether the host counts this run's CPU time as a whole ([`Sandboxed::cpu_ms`]).
    pub fn counts_cpu(&self) -> bool {
        self.cgroup.is_some()
    }

    /// CPU time of all the run's processes so far, where the host counts it. Cheap enough to
    /// poll while the run goes.
    pub fn cpu_ms(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(JobCgroup::cpu_ms)
    }

    /// Kills everything of this run: init, and with it the whole pid namespace. (The cgroup is
    /// killed again when the run is disposed of, for anything that left the namespace.)
    pub fn kill(&self) {
        // SAFETY: signalling our own child, not yet reaped, so the pid is still its.
        unsafe { libc::kill(self.started.pid, libc::SIGKILL) };
    }

    /// Gives up on a run that failed to start: kill, reap and dispose of it.
    pub(super) fn abandon(self) {
        self.kill();
        let pid = self.started.pid;
        let reap = move || {
            let mut status = 0;
            // SAFETY: reaping our own killed child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            drop(self);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(reap)),
            Err(_) => reap(),
        }
    }

    /// Removes what is left of the run (its cgroup) off the async threads: emptying and
    /// removing a cgroup may wait for the kernel to finish killing its processes.
    pub fn dispose(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(self))),
            Err(_) => drop(self),
        }
    }
}
