//! Starting a job inside fresh Linux namespaces: the mechanics of the sandbox.
//!
//! init and the job are both created with `CLONE_VM`: they run in the server's own memory, on
//! stacks of their own, until the job's `execve` gives it a fresh address space. Nothing is
//! copied, which is what makes a start cheap (see [`clone_init`]), and it sets the rules for that
//! code: it may only make raw system calls (`super::sys`) — no allocation, no locks, no logging,
//! no libc wrapper (they write `errno` into a server thread's storage). Everything the child
//! needs — every path, mount option, argument and environment string — is therefore built
//! beforehand in the parent as a [`Plan`], and the child walks through it.
//!
//! The process tree of one run:
//!
//! ```text
//! server ── clone3(VM | NEW{USER,PID,NS,IPC,UTS,CGROUP}) ──► init (pid 1, root in its
//! (the calling thread in a pooled                             │  user namespace only)
//! network namespace: see super::netns)                        │
//!                                                             └─ clone3(VM | VFORK) ──► job
//!                                                                (pid 2, uid 1000, filtered,
//!                                                                then execve; init waits
//!                                                                until then)
//! ```
//!
//! A sandbox is made ready ahead of its run. init waits for the parent to write its uid/gid maps,
//! builds a new root on tmpfs (read-only binds of the system, a fresh `/proc`, a minimal `/dev`,
//! a private `/work`, `/tmp` and `/dev/shm`), pivots into it and starts the job's process, which
//! enters the run's cgroups that limit no memory, attaches its seccomp programs and waits for its
//! run. At the run the server gives the private tmpfs mounts the run's sizes from outside
//! ([`resize_tmpfs`]) and hands the job the run: the job writes the run's files into `/work` (or
//! binds a build step's staging directory there), enters the rest of its cgroups, drops to its
//! uid and execs. init reaps everything until the job exits, then kills and reaps whatever the
//! job left behind, reports the job's end ([`Ended`]) on a pipe and exits: nothing survives its
//! run, however it forked, and should init die first the kernel kills the whole pid namespace
//! with it.
//!
//! init goes on sharing the server's memory while the job runs. The job cannot reach it: it runs
//! as another uid without capabilities, `ptrace` and `process_vm_*` are refused by seccomp,
//! `/proc` does not list init (`hidepid=2`), init has no signal handlers (a pid namespace's init
//! ignores every signal it does not handle), and all init does meanwhile is wait.
//!
//! The files follow the line between the parent and the child. This one is the parent's side of
//! a sandbox's life: [`clone_init`], the id maps, the [`Started`] handle and the [`Ended`] report.
//! `plan` builds what the child walks through, in ordinary allocating Rust; `stacks` maps the
//! stacks init and the job run on; `owner` makes the user namespace the job's own host uid's, so
//! that the kernel's per-user counts of a run are that uid's alone; `child` is all the code that
//! runs between `clone3` and the job's `execve`, under the raw-syscall rule, to be audited with
//! `super::sys` alone.

mod child;
mod owner;
mod plan;
mod stacks;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use super::filter::Filters;
use super::netns::{NetLease, NetPool};
use super::sys;
use child::{MAX_ENTER_FILES, RunShared, Shared, init_main};
use plan::{FIXED_STEP, Fixed, RUN_STEP, Step};
pub use plan::{
    Plan, RunPlan, RunSpec, SandboxSpec, Skeleton, TMPFS_MOUNTS, TmpfsSizes, WorkFile, WorkMount,
    resize_tmpfs,
};
use stacks::{STACK_SIZE, Stacks};

/// The uid and gid the job runs as inside its user namespace.
pub const JOB_ID: u32 = 1000;

/// Host ids the namespace's ids map to: `root` for init's setup work, `job` for the job itself,
/// which also creates (owns) the user namespace: see `owner`. Both unprivileged on the host;
/// never 0.
#[derive(Clone, Copy, Debug)]
pub struct HostIds {
    pub root: u32,
    pub job: u32,
}

/// How a run ended, as its init reports it: the job's wait status, and what every process of
/// the run that init reaped used (their CPU time, the largest peak resident set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub status: libc::c_int,
    pub cpu_us: u64,
    pub max_rss_kb: u64,
}

impl Ended {
    /// Its size on the status pipe: under `PIPE_BUF`, so written and read whole.
    pub const SIZE: usize = 20;

    pub(super) fn add(&mut self, usage: &libc::rusage) {
        let us = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
        };
        self.cpu_us += us(usage.ru_utime) + us(usage.ru_stime);
        self.max_rss_kb = self
            .max_rss_kb
            .max(u64::try_from(usage.ru_maxrss).unwrap_or(0));
    }

    pub(super) fn encode(&self) -> [u8; Ended::SIZE] {
        let mut bytes = [0u8; Ended::SIZE];
        bytes[..4].copy_from_slice(&self.status.to_ne_bytes());
        bytes[4..12].copy_from_slice(&self.cpu_us.to_ne_bytes());
        bytes[12..].copy_from_slice(&self.max_rss_kb.to_ne_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8; Ended::SIZE]) -> Ended {
        let [
            s0,
            s1,
            s2,
            s3,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            m0,
            m1,
            m2,
            m3,
            m4,
            m5,
            m6,
            m7,
        ] = *bytes;
        Ended {
            status: libc::c_int::from_ne_bytes([s0, s1, s2, s3]),
            cpu_us: u64::from_ne_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
            max_rss_kb: u64::from_ne_bytes([m0, m1, m2, m3, m4, m5, m6, m7]),
        }
    }
}

/// The parent's ends of a started sandbox.
///
/// A sandbox starts in two phases. [`clone_init`] creates init, which builds everything that does
/// not depend on a run (namespaces, the root, `/proc`, `/dev`) and then waits; that can happen
/// ahead of time, off the path of a job. [`Started::start`] hands the job's waiting process one
/// run: it writes the run's files into `/work` (or binds a build step's staging directory there)
/// and execs.
///
/// It also owns what init (and the job, until its `execve`) read while they run in the server's
/// memory: the plans, the filters and their stacks. Dropping it therefore kills init and waits for
/// it first, unless it was reaped already.
pub struct Started {
    /// init's pid (in the server's pid namespace).
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    /// The job's stdin (write end), stdout and stderr (read ends), for the runner to take.
    pub stdio: Option<[OwnedFd; 3]>,
    /// The read end of the job's progress pipe, for the runner to take if the run asked for it.
    pub progress: Option<OwnedFd>,
    /// [`Ended`] once the job has exited and nothing else of the run is left; EOF without it
    /// if init died first (killed by a limit or a cancel).
    pub status: OwnedFd,
    /// Readable once the job has exec'd (EOF) or setup failed (8 bytes: step, errno).
    pub setup: OwnedFd,
    /// One byte once init has built the run-independent part and the job's process waits
    /// (EOF: it failed, see `setup`).
    pub ready: OwnedFd,
    /// One byte once the uid map is in place (for init), then the address of the run's
    /// [`RunShared`] (for the job).
    go: OwnedFd,
    /// Read by init while it runs: freed only after it is gone (see Drop).
    shared: Box<Shared>,
    run: Option<Box<RunShared>>,
    /// Where init and the job run until then; held only to be unmapped last.
    _stacks: Stacks,
    /// The network namespace init was started in, given back once init is gone.
    net: Option<NetLease>,
}

impl Started {
    /// Whether init still runs: a sandbox kept ready may have been killed meanwhile.
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live descriptor without waiting; a pidfd turns readable at exit.
        unsafe { libc::poll(&mut poll, 1, 0) == 0 }
    }

    /// Lets init go on once its ids are mapped.
    pub fn release(&self) -> io::Result<()> {
        write_exact(&self.go, &[1])
    }

    /// Hands the job its run. Call it once, after `ready`.
    pub fn start(&mut self, run: RunPlan) -> io::Result<()> {
        let mut argv: Vec<*const libc::c_char> = run.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = run.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let run = self.run.insert(Box::new(RunShared {
            plan: run,
            argv,
            envp,
        }));
        // init reads the run in place: the pipe orders this write after everything above.
        let address = &**run as *const RunShared as usize;
        write_exact(&self.go, &address.to_ne_bytes())
    }

    /// Decodes what init or the job wrote on the setup pipe: where it failed and the errno. A
    /// failure to write the run's own files into `/work` carries a [`WorkFilesError`].
    pub fn setup_error(&self, report: [u8; 8]) -> io::Error {
        let code = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let cause = io::Error::from_raw_os_error(setup_errno(report));
        let message = format!("sandbox setup failed at {}: {cause}", self.step_name(code));
        let step = match code & !(RUN_STEP - 1) {
            RUN_STEP => self
                .run
                .as_ref()
                .and_then(|r| r.plan.steps.get(index_of(code))),
            _ => None,
        };
        match step {
            Some(Step::Mkdir { .. } | Step::Write { .. } | Step::Copy { .. }) => {
                io::Error::new(cause.kind(), WorkFilesError(message))
            }
            _ => io::Error::new(cause.kind(), message),
        }
    }

    fn step_name(&self, code: u32) -> &'static str {
        let index = index_of(code);
        let step = match code & !(RUN_STEP - 1) {
            0 => self.shared.plan.steps.get(index),
            RUN_STEP => self.run.as_ref().and_then(|r| r.plan.steps.get(index)),
            FIXED_STEP => return Fixed::ALL.get(index).map_or("unknown step", |f| f.name()),
            _ => None,
        };
        step.map_or("unknown step", Step::name)
    }
}

/// The step's index within its part of a setup report's code.
fn index_of(code: u32) -> usize {
    (code & (RUN_STEP - 1)) as usize
}

/// What a run's setup failure holds when writing the run's own files into `/work` failed: what
/// those files are is the job's, so the failure is too (see [`is_work_files`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkFilesError(String);

/// Whether `error` is a run's setup failing to write the run's own files into `/work`.
pub fn is_work_files(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<WorkFilesError>())
}

/// The errno of a setup failure's report (see [`Started::setup`]).
pub fn setup_errno(report: [u8; 8]) -> i32 {
    i32::from_ne_bytes([report[4], report[5], report[6], report[7]])
}

fn write_exact(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: writes from a live buffer to a pipe we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    // A pipe takes up to PIPE_BUF bytes at once or not at all.
    if n == bytes.len() as isize {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let pidfd = self.pidfd.as_raw_fd();
        // SAFETY: signalling and waiting through our own pidfd. Both fail at once (ESRCH,
        // ECHILD) once init was reaped, and a pidfd never names another process.
        let gone = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, 0, 0);
            let mut info: libc::siginfo_t = std::mem::zeroed();
            loop {
                if libc::waitid(libc::P_PIDFD, pidfd as libc::id_t, &mut info, libc::WEXITED) == 0 {
                    break true;
                }
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {}
                    // Reaped already (by the runner): gone all the same.
                    Some(libc::ECHILD) => break true,
                    _ => break false,
                }
            }
        };
        // init reaped means the kernel has killed and released every process of its pid
        // namespace: no socket of the run is left in its network namespace.
        if let Some(net) = self.net.take().filter(|_| gone) {
            net.release();
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How a run enters its cgroups: see [`super::cgroup::JobCgroup::entry`].
pub use super::cgroup::Entry as CgroupEntry;

/// `clone3` flags the `libc` crate does not spell as 64-bit values.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts a sandbox's init. It stops at once to wait for [`Started::release`], so the caller
/// can map its ids before it does anything; then it builds the run-independent part of the
/// sandbox, reports `ready`, and waits for [`Started::start`].
///
/// init is created with `CLONE_VM`: it runs in the server's memory, on a stack of its own, and
/// nothing of the server's address space is copied. A fork-like clone of the server copied its
/// page tables and then made every page either side wrote afterwards fault and copy, with a TLB
/// shootdown on every core: about a millisecond a run, growing with the server's size, and a
/// slowdown of the whole server under load. Sharing the memory is what `posix_spawn` does too;
/// the price is discipline in the child (raw system calls only, see `super::sys`) and that
/// [`Started`] keeps what init reads alive until it is gone.
///
/// `owner` is the host uid that creates the user namespace (see `owner`), where there is one.
pub fn clone_init(
    plan: Plan,
    filters: Arc<Filters>,
    landlock: Option<&OwnedFd>,
    cgroup: Option<&CgroupEntry>,
    net: (&NetPool, NetLease),
    owner: Option<u32>,
) -> io::Result<Started> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (setup_r, setup_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let (progress_r, progress_w) = pipe()?;

    let mut enter = [-1; MAX_ENTER_FILES];
    for (slot, fd) in enter
        .iter_mut()
        .zip(cgroup.iter().flat_map(|c| c.enter.iter()))
    {
        *slot = fd.as_raw_fd();
    }
    let stacks = Stacks::new()?;
    let shared = Box::new(Shared {
        plan,
        filters,
        fds: [
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
            status_w.as_raw_fd(),
            setup_w.as_raw_fd(),
            go_r.as_raw_fd(),
            landlock.map_or(-1, AsRawFd::as_raw_fd),
            progress_w.as_raw_fd(),
            ready_w.as_raw_fd(),
        ],
        enter,
        enter_early: cgroup.map_or(0, |c| c.early),
        job_stack: stacks.job,
    });

    // The network namespace is not made here but taken from the pool: see [`super::netns`].
    let mut flags = (namespace_flags(shared.plan.user_ns) & !libc::CLONE_NEWNET) as u64
        | libc::CLONE_VM as u64
        | libc::CLONE_PIDFD as u64
        // The server's signal handlers live in the shared memory and would act on its state
        // (tokio's, say, writing to its own descriptors) if init ran one.
        | CLONE_CLEAR_SIGHAND;
    let into = cgroup.and_then(|c| c.into.as_ref());
    if into.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let mut pidfd: libc::c_int = -1;
    let args = libc::clone_args {
        flags,
        pidfd: &raw mut pidfd as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stacks.init.base as u64,
        stack_size: STACK_SIZE as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: into.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let arg: *const Shared = &*shared;
    let (pool, lease) = net;
    // SAFETY: init runs `init_main` on its own stack, on `shared`, both owned by the `Started`
    // returned below, which outlives init (its Drop kills and waits for it).
    let clone = || unsafe { sys::clone3(&args, init_main, arg.cast()) };
    let pid = pool
        .within(&lease, || match owner {
            Some(owner) => owner::as_owner(owner, clone),
            None => Ok(clone()),
        })??
        .map_err(io::Error::from_raw_os_error)?;
    // SAFETY: CLONE_PIDFD stored a new descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Started {
        pid: pid as libc::pid_t,
        pidfd,
        stdio: Some([stdin_w, stdout_r, stderr_r]),
        progress: Some(progress_r),
        status: status_r,
        setup: setup_r,
        ready: ready_r,
        go: go_w,
        shared,
        run: None,
        _stacks: stacks,
        net: Some(lease),
    })
}

/// Writes init's uid and gid maps: namespace root and the job's uid, each to its own
/// unprivileged host id.
pub fn map_ids(pid: libc::pid_t, ids: HostIds) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    // Required before gid_map when the writer lacks CAP_SETGID over the parent namespace; harmless
    // otherwise, and it also keeps the job from dropping supplementary groups to dodge a deny.
    std::fs::write(proc.join("setgroups"), "deny")?;
    let map = format!("0 {} 1\n{JOB_ID} {} 1\n", ids.root, ids.job);
    std::fs::write(proc.join("uid_map"), &map)?;
    std::fs::write(proc.join("gid_map"), &map)?;
    Ok(())
}

/// The namespaces of a run: all of them, or all but the user namespace.
fn namespace_flags(user_ns: bool) -> libc::c_int {
    let others = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    if user_ns {
        others | libc::CLONE_NEWUSER
    } else {
        others
    }
}

/// Whether this host can create the namespaces the sandbox needs, checked by cloning a child that
/// exits at once.
pub fn namespaces_available(user_ns: bool) -> Result<(), io::Error> {
    let flags = namespace_flags(user_ns);
    // SAFETY: fork-like clone; the child only calls _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: immediate exit of the child.
        unsafe { libc::_exit(0) }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    Ok(())
}
