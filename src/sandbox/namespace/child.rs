//! The code that runs between `clone3` and the job's `execve`: init's and the job's, in the
//! server's own address space (`CLONE_VM`), on the stacks of [`super::stacks`].
//!
//! **The rule.** Everything here runs in a child that shares the server's memory with threads it
//! cannot see. It may only make raw system calls, through `super::sys`: no allocation (the
//! allocator's locks may be held by a server thread that does not exist in the child), no locks,
//! no logging, no panics, no libc wrapper (they write `errno` into a server thread's storage). It
//! only reads what the parent built beforehand ([`super::Plan`], [`super::RunPlan`], the
//! filters), and reports a failure as a step number and an errno on a pipe ([`report`]).
//!
//! **What an auditor checks**, in this file and `super::sys`:
//! - no call allocates or takes a lock: no `Vec`, `String`, `format!`, `Box` or `println!`, no
//!   `std::fs` or `std::io` call, nothing that may panic (no `unwrap`; every index in bounds by
//!   construction). The few functions of sibling files called here are of the same kind:
//!   `Ended::add` and `Ended::encode`, `At::code`, `filter::apply_seccomp` and
//!   `filter::apply_landlock`;
//! - no path returns: each ends in `sys::exit` or the job's `execve`;
//! - nothing of the server reaches the job: `Shared::run` moves the descriptors init keeps to the
//!   fixed numbers below and closes every other one, and the job takes its uid, rlimits and
//!   filters before its `execve`;
//! - neither init nor the job writes memory that another of the three reads: they tell each other
//!   things through pipes only.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::Ended;
use super::plan::{At, Fixed, Plan, RunPlan, Step};
use super::stacks::{STACK_SIZE, Stack};
use crate::sandbox::filter::{self, Filters};
use crate::sandbox::sys;

/// Enough for every cgroup hierarchy a host mounts (v1 has 13 controllers).
pub(super) const MAX_ENTER_FILES: usize = 16;

/// What init and the job read, prepared by the parent.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) filters: Arc<Filters>,
    /// At their fixed numbers in init: stdin read end, stdout write end, stderr write end,
    /// status write end, setup write end, go read end, the Landlock ruleset (or -1), progress
    /// write end, ready write end.
    pub(super) fds: [RawFd; 9],
    /// The cgroup files the job writes itself into, `-1` past the last; at [`ENTER_FD`] on in
    /// init.
    pub(super) enter: [RawFd; MAX_ENTER_FILES],
    /// How many of `enter` the job enters while its sandbox is made ready (the rest, memory,
    /// at its run).
    pub(super) enter_early: usize,
    pub(super) job_stack: Stack,
}

// SAFETY: `job_stack` is an address in a mapping the `Started` owning this value keeps alive;
// nothing else in here is tied to a thread.
unsafe impl Send for Shared {}
// SAFETY: as above; it is never changed once built.
unsafe impl Sync for Shared {}

/// What init and the job read of one run.
pub(super) struct RunShared {
    pub(super) plan: RunPlan,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the plans, which they own and never change.
unsafe impl Send for RunShared {}
// SAFETY: as above.
unsafe impl Sync for RunShared {}

/// Where init keeps its pipes after tidying its descriptor table.
const STATUS_FD: RawFd = 3;
const SETUP_FD: RawFd = 4;
const GO_FD: RawFd = 5;
const LANDLOCK_FD: RawFd = 6;
/// Where init keeps the progress pipe until the job takes it to [`PROGRESS_FD`].
const PROGRESS_KEPT_FD: RawFd = 7;
const READY_FD: RawFd = 8;
/// The work root, opened before the pivot: a run's files are copied from it.
const STAGING_FD: RawFd = 9;
const ENTER_FD: RawFd = 10;
/// The job's progress pipe.
const PROGRESS_FD: RawFd = crate::progress::FD;

/// init's entry point, on its own stack.
pub(super) unsafe extern "C" fn init_main(shared: *const libc::c_void) -> ! {
    // SAFETY: `clone_init` passes its `Shared`, alive while init runs.
    unsafe { (*shared.cast::<Shared>()).run() }
}

/// The job's entry point, on its own stack, until its `execve`.
unsafe extern "C" fn job_main(shared: *const libc::c_void) -> ! {
    // SAFETY: init passes its `Shared`, alive while init runs, and init's death takes the job
    // with it.
    unsafe { (*shared.cast::<Shared>()).job() }
}

impl Shared {
    /// init: never returns.
    unsafe fn run(&self) -> ! {
        unsafe {
            // Move the pipes, the Landlock ruleset and the cgroup files to fixed numbers and
            // close everything else the server had open (database, sockets): nothing of the
            // server reaches the sandbox. Duplicated to a high range first, as the targets may
            // be among the sources.
            let targets = (0..self.fds.len() as RawFd).chain(ENTER_FD..);
            let sources = self.fds.iter().chain(&self.enter[..self.entered()]);
            let mut moved = [(-1, -1); 9 + MAX_ENTER_FILES];
            for ((slot, &fd), target) in moved.iter_mut().zip(sources).zip(targets) {
                if fd >= 0 {
                    match sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) {
                        Ok(high) => *slot = (high as RawFd, target),
                        Err(_) => sys::exit(126),
                    }
                }
            }
            for &(fd, target) in moved.iter().filter(|(fd, _)| *fd >= 0) {
                if sys::dup3(fd, target, libc::O_CLOEXEC).is_err() {
                    sys::exit(126);
                }
            }
            // A fixed number with nothing to hold (no Landlock, say) may still hold a server
            // descriptor.
            for (target, _) in self.fds.iter().enumerate().filter(|(_, fd)| **fd < 0) {
                sys::close(target as RawFd);
            }
            let _ = sys::close_range(STAGING_FD as u32, STAGING_FD as u32);
            let _ = sys::close_range(ENTER_FD as u32 + self.entered() as u32, u32::MAX);
            // stdio must survive exec; the rest must not.
            for fd in 0..3 {
                let _ = sys::fcntl(fd, libc::F_SETFD, 0);
            }
            // Dies with the server, so a crash never leaves a sandbox running unsupervised. Set
            // before waiting: a server that died earlier closed its end of `go`, and the read
            // below sees EOF.
            let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as usize);
            let mut byte = [0u8];
            match sys::read(GO_FD, &mut byte) {
                Ok(1) => {}
                Ok(_) => self.fail(At::Fixed(Fixed::WaitForParent), libc::EPIPE),
                Err(e) => self.fail(At::Fixed(Fixed::WaitForParent), e),
            }
            // Until now init ran as the host's ids, which the namespace does not map (files it
            // created would fail with EOVERFLOW); become the namespace's root, which maps to an
            // unprivileged host id and keeps the capabilities of the namespace's creator.
            if self.plan.user_ns {
                if let Err(e) = set_ids(0) {
                    self.fail(At::Fixed(Fixed::Ids), e);
                }
                // A change of effective uid clears the parent-death signal: without it again,
                // a killed server left init and its job running. Should the server have died in
                // between, the job finds `go` closed and exits, and init with it.
                let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as usize);
            }
            self.build_root();
            // The job is started now, ahead of its run, to attach its seccomp programs off the
            // run's path; it reports the sandbox ready and takes its run from the parent (see
            // `job`). It shares this memory too, on its own stack: nothing is copied.
            // CLONE_VFORK keeps the server alive through the job's part until its execve: the
            // OOM killer kills every process sharing its victim's memory, and a job that hits its
            // memory cgroup's limit there (its execve copying the arguments, say) would take the
            // server with it; a task in a vfork is never a victim, and the charge fails instead
            // (ENOMEM or E2BIG). init waits meanwhile, so it closes its copies of the pipes
            // below only once the job has exec'd or died.
            let args = libc::clone_args {
                flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
                pidfd: 0,
                child_tid: 0,
                parent_tid: 0,
                exit_signal: libc::SIGCHLD as u64,
                stack: self.job_stack.base as u64,
                stack_size: STACK_SIZE as u64,
                tls: 0,
                set_tid: 0,
                set_tid_size: 0,
                cgroup: 0,
            };
            let job = match sys::clone3(&args, job_main, (self as *const Shared).cast()) {
                Ok(pid) => pid as libc::pid_t,
                Err(e) => self.fail(At::Fixed(Fixed::Fork), e),
            };
            // The job has exec'd or died: EOF on `ready` means it failed before the sandbox
            // was ready, EOF on `setup` that it exec'd.
            for fd in [
                READY_FD,
                GO_FD,
                STAGING_FD,
                SETUP_FD,
                PROGRESS_KEPT_FD,
                0,
                1,
                2,
            ] {
                sys::close(fd);
            }
            self.reap(job)
        }
    }

    /// The job, from its clone at the sandbox's start: attaches the seccomp programs, reports
    /// the sandbox ready and waits for its run. Then it builds the run's part of the root
    /// itself (still the namespace's root; it may mount until the last seccomp program is in)
    /// and starts the run: one hand-over, from the parent to the job, on a run's path.
    unsafe fn job(&self) -> ! {
        unsafe {
            // Its own session and process group: a job cannot signal init's group. Done now:
            // with autogroup scheduling a new session costs a new task group, ~0.1 ms.
            let _ = sys::setsid();
            self.enter_cgroups(0..self.enter_early);
            // A build step's job binds its `/work` at its run: it refuses itself mounting then.
            let stage = match self.plan.bind_work_root {
                true => filter::Stage::AllButMounting,
                false => filter::Stage::All,
            };
            if let Err(e) = filter::apply_seccomp(&self.filters, stage) {
                self.fail(At::Fixed(Fixed::Filters), e.errno);
            }
            let _ = sys::write(READY_FD, &[1]);
            sys::close(READY_FD);
            let run = self.wait_for_address(GO_FD);
            sys::close(GO_FD);
            for (index, step) in run.plan.steps.iter().enumerate() {
                if let Err(e) = self.step(step) {
                    self.fail(At::Run(index), e);
                }
            }
            sys::close(STAGING_FD);
            if self.plan.bind_work_root {
                if let Err(e) = sys::umount2(c"/.staging", libc::MNT_DETACH) {
                    self.fail(At::Fixed(Fixed::UnmountStaging), e);
                }
                if let Err(e) = filter::apply_seccomp(&self.filters, filter::Stage::Mounting) {
                    self.fail(At::Fixed(Fixed::Filters), e.errno);
                }
            }
            self.exec_job(run)
        }
    }

    /// Waits for the run's address on `fd`, from [`super::Started::start`]. Exits quietly if the
    /// sandbox is dropped unused instead.
    unsafe fn wait_for_address(&self, fd: RawFd) -> &RunShared {
        let mut address = [0u8; size_of::<usize>()];
        let mut filled = 0;
        while filled < address.len() {
            // SAFETY: reads into the rest of a live buffer.
            match unsafe { sys::read(fd, &mut address[filled..]) } {
                Ok(0) => unsafe { sys::exit(0) },
                Ok(n) => filled += n,
                Err(libc::EINTR) => {}
                Err(e) => unsafe { self.fail(At::Fixed(Fixed::WaitForRun), e) },
            }
        }
        // SAFETY: the parent wrote the address of the `RunShared` its `Started` owns, which
        // outlives init and the job.
        unsafe { &*(usize::from_ne_bytes(address) as *const RunShared) }
    }

    unsafe fn build_root(&self) {
        unsafe {
            let plan = &self.plan;
            if let Err(e) = sys::sethostname(b"kiln") {
                self.fail(At::Fixed(Fixed::Hostname), e);
            }
            if let Err(e) = sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None) {
                self.fail(At::Fixed(Fixed::PrivateMounts), e);
            }
            if let Err(e) = sys::mount(
                Some(c"tmpfs"),
                &plan.root,
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(c"size=1m,mode=0755"),
            ) {
                self.fail(At::Fixed(Fixed::NewRoot), e);
            }
            for (index, step) in plan.steps.iter().enumerate() {
                if let Err(e) = self.step(step) {
                    self.fail(At::Plan(index), e);
                }
            }
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
            // It lands at the lowest free number, which is STAGING_FD unless a descriptor
            // before it is unused (no Landlock, say).
            let staging = sys::open(&plan.work_root, flags, 0).and_then(|fd| {
                if fd != STAGING_FD {
                    sys::dup3(fd, STAGING_FD, libc::O_CLOEXEC)?;
                    sys::close(fd);
                }
                Ok(())
            });
            if let Err(e) = staging {
                self.fail(At::Fixed(Fixed::OpenStaging), e);
            }
            // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves
            // only the new root visible.
            let pivot = sys::chdir(&plan.root)
                .and_then(|_| sys::pivot_root(c".", c"."))
                .and_then(|_| sys::umount2(c".", libc::MNT_DETACH))
                .and_then(|_| sys::chdir(c"/"));
            if let Err(e) = pivot {
                self.fail(At::Fixed(Fixed::Pivot), e);
            }
            if let Err(e) = sys::mount(
                None,
                c"/",
                None,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                None,
            ) {
                self.fail(At::Fixed(Fixed::ReadOnlyRoot), e);
            }
        }
    }

    unsafe fn step(&self, step: &Step) -> sys::Result<()> {
        unsafe {
            match step {
                Step::Mkdir { path, mode } => sys::mkdir(path, *mode).map(drop),
                Step::BindReadOnly {
                    source,
                    target,
                    file,
                    extra_flags,
                } => {
                    let rec = if *file { 0 } else { libc::MS_REC };
                    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | extra_flags;
                    bind(source, target, rec, flags)
                }
                Step::BindDevice { source, target } => {
                    bind(source, target, 0, libc::MS_NOSUID | libc::MS_NOEXEC)
                }
                Step::Mask { source, target } => {
                    sys::mount(Some(source), target, None, libc::MS_BIND, None).map(drop)
                }
                Step::Tmpfs { target, options } => sys::mount(
                    Some(c"tmpfs"),
                    target,
                    Some(c"tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(options),
                )
                .map(drop),
                // hidepid=2: a process the job may not ptrace is not listed. That hides init.
                Step::Proc { target } => sys::mount(
                    Some(c"proc"),
                    target,
                    Some(c"proc"),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some(c"hidepid=2"),
                )
                .map(drop),
                Step::Symlink { target, link } => sys::symlink(target, link).map(drop),
                Step::File { path, contents } => {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                    let fd = sys::open(path, flags, 0o644)?;
                    let result = sys::write_all(fd, contents);
                    sys::close(fd);
                    result
                }
                Step::BindWritable { source, target } => {
                    bind(source, target, 0, libc::MS_NOSUID | libc::MS_NODEV)
                }
                Step::Copy { source, target } => {
                    let from = sys::openat(
                        STAGING_FD,
                        source,
                        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0,
                    )?;
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                    let to = match sys::open(target, flags, 0o644) {
                        Ok(to) => to,
                        Err(e) => {
                            sys::close(from);
                            return Err(e);
                        }
                    };
                    let result = self.copy(from, to);
                    sys::close(from);
                    sys::close(to);
                    result
                }
                Step::Write { target, contents } => {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                    let fd = sys::open(target, flags, 0o644)?;
                    let result = sys::write_all(fd, contents)
                        .and_then(|()| sys::fchown(fd, self.plan.job_id, self.plan.job_id));
                    sys::close(fd);
                    result.map(drop)
                }
            }
        }
    }

    /// Copies a staged file's contents, hands it to the job's uid and keeps its execute bits (a
    /// compiled program is staged as a file too).
    unsafe fn copy(&self, from: RawFd, to: RawFd) -> sys::Result<()> {
        unsafe {
            while sys::sendfile(to, from, 1 << 20)? > 0 {}
            sys::fchown(to, self.plan.job_id, self.plan.job_id)?;
            let mut st: libc::stat = std::mem::zeroed();
            sys::fstat(from, &mut st)?;
            sys::fchmod(to, (st.st_mode & 0o755) | 0o644).map(drop)
        }
    }

    /// The job: drop to its uid, apply limits and filters, exec. Never returns.
    unsafe fn exec_job(&self, run: &RunShared) -> ! {
        unsafe {
            let plan = &run.plan;
            // Into the rest of the run's cgroups (memory) before anything else, so all the job
            // starts is born inside. init stays out of a memory cgroup: it shares the server's
            // memory, and a memory cgroup's OOM killer that chose it would kill every process
            // sharing that memory, the server included (the job is safe from that in its vfork,
            // see `run`). Entering earlier would not charge the files it wrote to the run: a
            // page of a file goes to the cgroup of the owner of its writer's memory, which is
            // the server's until the execve; the sandbox takes them off the run's limit instead
            // (`Sandbox::launch`).
            self.enter_cgroups(self.enter_early..self.entered());
            // A cgroup namespace of its own, rooted where it now is: `/proc/self/cgroup` then
            // reads `/` rather than the server's cgroups and run count. init's namespace is
            // rooted at the server's cgroups (or init's v2 one), and the job's memory cgroup is
            // entered only now, so this cannot be done ahead of the run: one cheap call.
            if self.entered() > 0
                && let Err(e) = sys::unshare(libc::CLONE_NEWCGROUP)
            {
                self.fail(At::Fixed(Fixed::Cgroup), e);
            }
            sys::close(STATUS_FD);
            // dup3 without flags leaves the copy open across exec, unlike the original.
            if plan.progress
                && let Err(e) = sys::dup3(PROGRESS_KEPT_FD, PROGRESS_FD, 0)
            {
                self.fail(At::Fixed(Fixed::Exec), e);
            }
            sys::close(PROGRESS_KEPT_FD);
            if let Err(e) = sys::chdir(c"/work") {
                self.fail(At::Fixed(Fixed::WorkDir), e);
            }
            // Leaving uid 0 for a non-zero uid clears every capability.
            if let Err(e) = set_ids(self.plan.job_id) {
                self.fail(At::Fixed(Fixed::Ids), e);
            }
            for &(resource, soft, hard) in &plan.rlimits {
                let current = sys::prlimit(resource, None).unwrap_or(libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                });
                let hard = hard.min(current.rlim_max);
                let wanted = libc::rlimit {
                    rlim_cur: soft.min(hard),
                    rlim_max: hard,
                };
                if let Err(e) = sys::prlimit(resource, Some(&wanted)) {
                    self.fail(At::Fixed(Fixed::Rlimits), e);
                }
            }
            // Now that /work and /tmp are mounted: a rule reaches into the mount a path names
            // when it is added. (seccomp was attached when the sandbox was made.)
            let landlock = (self.fds[6] >= 0).then_some(LANDLOCK_FD);
            if let Err(e) = filter::apply_landlock(
                &self.filters,
                landlock,
                &[c"/"],
                &[c"/work", c"/tmp", c"/dev"],
            ) {
                self.fail(At::Fixed(Fixed::Filters), e.errno);
            }
            // Whatever the server's thread that made init had blocked, the job starts with
            // nothing blocked.
            if let Err(e) = sys::sigprocmask(libc::SIG_SETMASK, 0) {
                self.fail(At::Fixed(Fixed::Exec), e);
            }
            let e = sys::execve(&plan.program, run.argv.as_ptr(), run.envp.as_ptr())
                .err()
                .unwrap_or(libc::EINVAL);
            self.fail(At::Fixed(Fixed::Exec), e)
        }
    }

    /// init's last duty: reap every process until the job exits, then kill and reap all that
    /// is left of the run, report the job's end and exit. Once the report is written no process
    /// of the run exists any more, so the runner can take the run as over without waiting for
    /// the kernel to tear the namespaces down (about a quarter of a millisecond).
    unsafe fn reap(&self, job: libc::pid_t) -> ! {
        unsafe {
            let mut ended = Ended {
                status: 0,
                cpu_us: 0,
                max_rss_kb: 0,
            };
            let mut job_running = true;
            loop {
                if !job_running {
                    // Again before every wait: a process may have forked while being killed.
                    let _ = sys::kill(-1, libc::SIGKILL);
                }
                match sys::wait_any() {
                    Ok((pid, status, usage)) => {
                        ended.add(&usage);
                        if pid == job {
                            ended.status = status;
                            job_running = false;
                        }
                    }
                    Err(libc::ECHILD) if !job_running => break,
                    Err(libc::EINTR) => {}
                    Err(_) => sys::exit(125),
                }
            }
            let _ = sys::write(STATUS_FD, &ended.encode());
            sys::exit(0)
        }
    }

    unsafe fn fail(&self, at: At, errno: i32) -> ! {
        unsafe { report(SETUP_FD, at.code(), errno) }
    }

    /// Writes the job into the cgroups of `enter[range]`.
    unsafe fn enter_cgroups(&self, range: std::ops::Range<usize>) {
        for fd in range.map(|i| ENTER_FD + i as RawFd) {
            // SAFETY: plain system calls on descriptors of this process.
            unsafe {
                if let Err(e) = sys::write(fd, b"0") {
                    self.fail(At::Fixed(Fixed::Cgroup), e);
                }
                sys::close(fd);
            }
        }
    }

    /// How many cgroup files the job writes itself into.
    fn entered(&self) -> usize {
        self.enter.iter().take_while(|&&fd| fd >= 0).count()
    }
}

unsafe fn report(fd: RawFd, step: u32, errno: i32) -> ! {
    let mut report = [0u8; 8];
    report[..4].copy_from_slice(&step.to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    unsafe {
        let _ = sys::write(fd, &report);
        sys::exit(127)
    }
}

/// Sets every uid and gid to `id` (and no supplementary groups).
unsafe fn set_ids(id: u32) -> sys::Result<()> {
    unsafe {
        // setgroups is refused once "deny" is written to setgroups; there are none to drop then.
        match sys::setgroups_none() {
            Ok(_) | Err(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
        sys::setresgid(id)?;
        sys::setresuid(id).map(drop)
    }
}

/// Binds `source` on `target`, then remounts the bind with `flags` (a bind ignores them at
/// first).
unsafe fn bind(
    source: &CStr,
    target: &CStr,
    rec: libc::c_ulong,
    flags: libc::c_ulong,
) -> sys::Result<()> {
    unsafe {
        sys::mount(Some(source), target, None, libc::MS_BIND | rec, None)?;
        let flags = libc::MS_BIND | libc::MS_REMOUNT | flags;
        sys::mount(None, target, None, flags, None).map(drop)
    }
}
