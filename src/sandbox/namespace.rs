//! Starting a job inside fresh Linux namespaces: the mechanics of the sandbox.
//!
//! The server is multi-threaded, so between `clone` and `execve` the child may only make raw
//! system calls: no allocation, no locks, no logging. Everything the child needs — every path,
//! mount option, argument and environment string — is therefore built beforehand in the parent as
//! a [`Plan`], and the child walks through it.
//!
//! The process tree of one run:
//!
//! ```text
//! server ── clone(NEWUSER|NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS|NEWCGROUP) ──► init (pid 1, root in its
//!           user namespace only)                                            │ builds the root, then
//!                                                                           └─ fork ─► job (pid 2,
//!                                                                              uid 1000, filtered)
//! ```
//!
//! `init` waits for the parent to write its uid/gid maps and put it into the job's cgroup, builds
//! a new root on tmpfs (read-only binds of the system, a fresh `/proc`, a minimal `/dev`, a private
//! `/work` and `/tmp`), pivots into it, then forks the job and reaps everything until the job
//! exits. Then it reports the job's wait status on a pipe and exits, and the kernel kills whatever
//! the job left behind in the pid namespace: nothing survives its run, however it forked.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::filter::{self, Filters};

/// The uid and gid the job runs as inside its user namespace.
pub const JOB_ID: u32 = 1000;

/// Host ids the namespace's ids map to: `root` for init's setup work, `job` for the job itself.
/// Both unprivileged on the host; never 0.
#[derive(Clone, Copy, Debug)]
pub struct HostIds {
    pub root: u32,
    pub job: u32,
}

/// One step of building the new root, with every path absolute on the host (the new root is
/// mounted at [`Plan::root`] until the pivot).
#[derive(Clone)]
enum Step {
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// A read-only bind; `extra_flags` keeps flags the source mount has (nosuid, noexec, ...),
    /// which a user namespace may not drop.
    BindReadOnly {
        source: CString,
        target: CString,
        file: bool,
        extra_flags: libc::c_ulong,
    },
    /// A device node bound from the host (a user namespace cannot mknod).
    BindDevice {
        source: CString,
        target: CString,
    },
    Tmpfs {
        target: CString,
        options: CString,
    },
    Proc {
        target: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    File {
        path: CString,
        contents: Vec<u8>,
    },
    /// A submitted file copied from the host staging directory into the job's `/work`.
    Copy {
        source: CString,
        target: CString,
    },
    /// The host staging directory itself as `/work`, writable: for a build step whose output
    /// the next step runs.
    BindWritable {
        source: CString,
        target: CString,
    },
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Mkdir { .. } => "mkdir",
            Step::BindReadOnly { .. } => "bind mount",
            Step::BindDevice { .. } => "device bind",
            Step::Tmpfs { .. } => "tmpfs mount",
            Step::Proc { .. } => "proc mount",
            Step::Symlink { .. } => "symlink",
            Step::File { .. } => "write file",
            Step::Copy { .. } => "copy file",
            Step::BindWritable { .. } => "work directory bind",
        }
    }
}

/// Setup steps that are not in [`Plan::steps`], numbered after them in error reports.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Fixed {
    WaitForParent,
    Hostname,
    PrivateMounts,
    NewRoot,
    Pivot,
    ReadOnlyRoot,
    Fork,
    WorkDir,
    Ids,
    Rlimits,
    Filters,
    Exec,
}

impl Fixed {
    /// In declaration order, which is their numbering after the plan's steps.
    const ALL: [Fixed; 12] = [
        Fixed::WaitForParent,
        Fixed::Hostname,
        Fixed::PrivateMounts,
        Fixed::NewRoot,
        Fixed::Pivot,
        Fixed::ReadOnlyRoot,
        Fixed::Fork,
        Fixed::WorkDir,
        Fixed::Ids,
        Fixed::Rlimits,
        Fixed::Filters,
        Fixed::Exec,
    ];

    fn name(self) -> &'static str {
        match self {
            Fixed::WaitForParent => "waiting for the parent",
            Fixed::Hostname => "sethostname",
            Fixed::PrivateMounts => "making mounts private",
            Fixed::NewRoot => "mounting the new root",
            Fixed::Pivot => "pivot_root",
            Fixed::ReadOnlyRoot => "remounting the root read-only",
            Fixed::Fork => "fork",
            Fixed::WorkDir => "entering /work",
            Fixed::Ids => "switching to the job's uid",
            Fixed::Rlimits => "setrlimit",
            Fixed::Filters => "seccomp/Landlock",
            Fixed::Exec => "execve",
        }
    }
}

/// Everything about one run, prepared in the parent.
pub struct Plan {
    root: CString,
    job_id: u32,
    user_ns: bool,
    steps: Vec<Step>,
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
}

/// How the staged files reach the sandbox's `/work`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkMount {
    /// Copied into a private, size-limited tmpfs: what a job's run gets.
    Copy,
    /// The staging directory bound writable: what a compile step gets, so its output stays.
    Bind,
}

/// What the runner asks for; [`Plan::new`] turns it into steps.
pub struct RunSpec<'a> {
    /// An empty directory on the host to mount the new root on (in the child's mount namespace
    /// only, so every run can use the same one).
    pub root: &'a Path,
    /// Host directory holding the code and submitted files, copied into `/work`.
    pub staging: &'a Path,
    /// Paths relative to `staging`, parents before children (directories end with `/`).
    pub entries: &'a [String],
    pub work: WorkMount,
    /// The uid and gid the job runs as, as seen inside: [`JOB_ID`] in a user namespace, else the
    /// host id itself.
    pub job_id: u32,
    /// Whether the run gets its own user namespace (else init is the host's root, in the other
    /// namespaces only, and drops to `job_id` for the job).
    pub user_ns: bool,
    /// The run-independent part of the root, prepared at startup.
    pub skeleton: &'a Skeleton,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub work_bytes: u64,
    pub tmp_bytes: u64,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
}

fn cstring(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn host(root: &Path, inside: &Path) -> io::Result<CString> {
    let relative = inside.strip_prefix("/").unwrap_or(inside);
    cstring(root.join(relative).as_os_str().as_bytes())
}

impl Plan {
    pub fn new(spec: RunSpec<'_>) -> io::Result<Plan> {
        let root = spec.root;
        let job = spec.job_id;
        let mut steps = spec.skeleton.steps.clone();
        for (name, contents) in [
            (
                "/etc/passwd",
                format!(
                    "root:x:0:0:root:/:/usr/sbin/nologin\nkiln:x:{job}:{job}:kiln:/work:/bin/sh\n"
                ),
            ),
            ("/etc/group", format!("root:x:0:\nkiln:x:{job}:\n")),
            ("/etc/hostname", "kiln\n".to_owned()),
        ] {
            steps.push(Step::File {
                path: host(root, Path::new(name))?,
                contents: contents.into_bytes(),
            });
        }

        for (inside, bytes, mode) in [
            ("/dev/shm", spec.tmp_bytes, "1777"),
            ("/tmp", spec.tmp_bytes, "1777"),
        ] {
            steps.push(Step::Tmpfs {
                target: host(root, Path::new(inside))?,
                options: cstring(format!("size={bytes},mode={mode},nr_inodes=16384"))?,
            });
        }
        if spec.work == WorkMount::Bind {
            steps.push(Step::BindWritable {
                source: cstring(spec.staging.as_os_str().as_bytes())?,
                target: host(root, Path::new("/work"))?,
            });
        } else {
            steps.push(Step::Tmpfs {
                target: host(root, Path::new("/work"))?,
                options: cstring(format!(
                    "size={},mode=0755,uid={job},gid={job},nr_inodes=16384",
                    spec.work_bytes
                ))?,
            });
        }
        for entry in spec.entries.iter().filter(|_| spec.work == WorkMount::Copy) {
            let inside = Path::new("/work").join(entry);
            if entry.ends_with('/') {
                steps.push(Step::Mkdir {
                    path: host(root, &inside)?,
                    mode: 0o755,
                });
            } else {
                steps.push(Step::Copy {
                    source: cstring(spec.staging.join(entry).as_os_str().as_bytes())?,
                    target: host(root, &inside)?,
                });
            }
        }

        let program = cstring(spec.program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for arg in spec.args {
            argv.push(cstring(arg)?);
        }
        let env = spec
            .env
            .into_iter()
            .map(|(k, v)| cstring(format!("{k}={v}")))
            .collect::<io::Result<_>>()?;
        Ok(Plan {
            root: cstring(root.as_os_str().as_bytes())?,
            job_id: spec.job_id,
            user_ns: spec.user_ns,
            steps,
            program,
            argv,
            env,
            rlimits: spec.rlimits,
        })
    }

    /// Names the step a child reported failing at.
    pub fn step_name(&self, index: u32) -> &'static str {
        let index = index as usize;
        match self.steps.get(index) {
            Some(step) => step.name(),
            None => Fixed::ALL
                .get(index - self.steps.len())
                .map_or("unknown step", |fixed| fixed.name()),
        }
    }

    fn fixed(&self, step: Fixed) -> u32 {
        (self.steps.len() + step as usize) as u32
    }
}

/// The part of every run's root that does not depend on the run: binds of the host's system,
/// the devices, `/proc`, and the mount points. Examining the host for it (symlinks, mount flags)
/// is done once, at startup, not on every run.
#[derive(Clone)]
pub struct Skeleton {
    steps: Vec<Step>,
}

impl Skeleton {
    /// `root` is where every run mounts its new root; `binds` are host paths bound read-only at
    /// the same path inside.
    pub fn new(root: &Path, binds: &[PathBuf]) -> io::Result<Skeleton> {
        let mut steps = Vec::new();
        let mut made = std::collections::BTreeSet::new();
        let mut mkdir_all = |steps: &mut Vec<Step>, inside: &Path| -> io::Result<()> {
            let mut current = PathBuf::from("/");
            for part in inside.components().skip(1) {
                current.push(part);
                if made.insert(current.clone()) {
                    steps.push(Step::Mkdir {
                        path: host(root, &current)?,
                        mode: 0o755,
                    });
                }
            }
            Ok(())
        };

        for bind in binds {
            let meta = match std::fs::symlink_metadata(bind) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(parent) = bind.parent() {
                mkdir_all(&mut steps, parent)?;
            }
            if meta.file_type().is_symlink() {
                // /bin -> usr/bin on merged-/usr systems: the same link, not a second bind.
                let target = std::fs::read_link(bind)?;
                steps.push(Step::Symlink {
                    target: cstring(target.as_os_str().as_bytes())?,
                    link: host(root, bind)?,
                });
                continue;
            }
            let file = !meta.is_dir();
            if file {
                steps.push(Step::File {
                    path: host(root, bind)?,
                    contents: Vec::new(),
                });
            } else {
                mkdir_all(&mut steps, bind)?;
            }
            steps.push(Step::BindReadOnly {
                source: cstring(bind.as_os_str().as_bytes())?,
                target: host(root, bind)?,
                file,
                extra_flags: locked_flags(bind)?,
            });
        }
        for dir in ["/etc", "/dev", "/dev/shm", "/tmp", "/proc", "/work"] {
            mkdir_all(&mut steps, Path::new(dir))?;
        }
        for device in ["null", "zero", "full", "random", "urandom"] {
            let inside = Path::new("/dev").join(device);
            steps.push(Step::File {
                path: host(root, &inside)?,
                contents: Vec::new(),
            });
            steps.push(Step::BindDevice {
                source: cstring(inside.as_os_str().as_bytes())?,
                target: host(root, &inside)?,
            });
        }
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step::Symlink {
                target: cstring(target)?,
                link: host(root, Path::new(link))?,
            });
        }
        steps.push(Step::Proc {
            target: host(root, Path::new("/proc"))?,
        });

        Ok(Skeleton { steps })
    }
}

/// Mount flags a bind of `path` must keep: a user namespace may not clear nosuid, nodev or
/// noexec that the host mount has (the remount would fail with EPERM).
fn locked_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain C data and `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// The parent's ends of a started sandbox.
pub struct Started {
    /// init's pid (in the server's pid namespace).
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    /// The job's stdin (write end), stdout and stderr (read ends), for the runner to take.
    pub stdio: Option<[OwnedFd; 3]>,
    /// Readable once init has exited: 4 bytes, the job's wait status, if the job ran to its end.
    pub status: OwnedFd,
    /// Readable once the job has exec'd (EOF) or setup failed (8 bytes: step, errno).
    pub setup: OwnedFd,
    /// Write one byte once the uid map and cgroup are in place.
    pub go: OwnedFd,
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

/// Clones the sandbox's init. It stops at once to wait for `go`, so the caller can map its ids
/// and move it into a cgroup before it does anything.
pub fn clone_init(
    plan: &Plan,
    filters: &Filters,
    landlock: Option<&OwnedFd>,
) -> io::Result<Started> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (setup_r, setup_w) = pipe()?;
    let (go_r, go_w) = pipe()?;

    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let child = Child {
        plan,
        filters,
        landlock: landlock.map(AsRawFd::as_raw_fd),
        argv: &argv,
        envp: &envp,
        fds: [
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
            status_w.as_raw_fd(),
            setup_w.as_raw_fd(),
            go_r.as_raw_fd(),
        ],
    };

    let flags = namespace_flags(plan.user_ns) | libc::CLONE_PIDFD;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: a fork-like clone (no new stack: the child continues on a copy of this one). The
    // child only runs `Child::run`, which makes raw system calls on memory prepared above and
    // never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            &mut pidfd as *mut libc::c_int,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the child; see above.
        unsafe { child.run() }
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Started {
        pid: pid as libc::pid_t,
        pidfd,
        stdio: Some([stdin_w, stdout_r, stderr_r]),
        status: status_r,
        setup: setup_r,
        go: go_w,
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

/// Decodes what the child wrote on the setup pipe: step index and errno.
pub fn setup_error(plan: &Plan, report: [u8; 8]) -> io::Error {
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let cause = io::Error::from_raw_os_error(errno);
    io::Error::new(
        cause.kind(),
        format!("sandbox setup failed at {}: {cause}", plan.step_name(step)),
    )
}

/// The child's view: borrowed, prepared data only.
struct Child<'a> {
    plan: &'a Plan,
    filters: &'a Filters,
    landlock: Option<RawFd>,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// stdin read end, stdout write end, stderr write end, status write end, setup write end,
    /// go read end.
    fds: [RawFd; 6],
}

/// Where init keeps its pipes after tidying its descriptor table.
const STATUS_FD: RawFd = 3;
const SETUP_FD: RawFd = 4;
const GO_FD: RawFd = 5;
const LANDLOCK_FD: RawFd = 6;

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

impl Child<'_> {
    /// init: never returns.
    unsafe fn run(&self) -> ! {
        unsafe {
            // Move the pipes (and the Landlock ruleset) to fixed numbers and close everything
            // else the server had open (database, sockets): nothing of the server reaches the
            // sandbox. Duplicated to a high range first, as the targets may be among the sources.
            let mut moved = [-1; 7];
            let sources = [
                self.fds[0],
                self.fds[1],
                self.fds[2],
                self.fds[3],
                self.fds[4],
                self.fds[5],
                self.landlock.unwrap_or(-1),
            ];
            for (i, &fd) in sources.iter().enumerate() {
                if fd >= 0 {
                    moved[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if moved[i] < 0 {
                        libc::_exit(126);
                    }
                }
            }
            for (target, &fd) in moved.iter().enumerate() {
                if fd >= 0 && libc::dup3(fd, target as RawFd, libc::O_CLOEXEC) < 0 {
                    libc::_exit(126);
                }
            }
            libc::close_range(7, u32::MAX, 0);
            // stdio must survive exec; the rest must not.
            for fd in 0..3 {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            // Dies with the server, so a crash never leaves a sandbox running unsupervised. Set
            // before waiting: a server that died earlier closed its end of `go`, and the read
            // below sees EOF.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            let mut byte = 0u8;
            if libc::read(GO_FD, (&raw mut byte).cast(), 1) != 1 {
                self.fail(self.plan.fixed(Fixed::WaitForParent), errno());
            }
            libc::close(GO_FD);
            // Until now init ran as the host's ids, which the namespace does not map (files it
            // created would fail with EOVERFLOW); become the namespace's root, which maps to an
            // unprivileged host id and keeps the capabilities of the namespace's creator.
            if self.plan.user_ns && set_ids(0) != 0 {
                self.fail(self.plan.fixed(Fixed::Ids), errno());
            }
            self.build_root();
            // A raw fork: glibc's fork() runs atfork handlers that take locks another server
            // thread may have held at the moment of the clone, and would hang here forever.
            let job = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0)
                as libc::pid_t;
            if job < 0 {
                self.fail(self.plan.fixed(Fixed::Fork), errno());
            }
            if job == 0 {
                self.exec_job();
            }
            libc::close(SETUP_FD);
            libc::close(0);
            libc::close(1);
            libc::close(2);
            self.reap(job)
        }
    }

    unsafe fn build_root(&self) {
        unsafe {
            let plan = self.plan;
            if libc::sethostname(c"kiln".as_ptr(), 4) != 0 {
                self.fail(plan.fixed(Fixed::Hostname), errno());
            }
            let none = c"none".as_ptr();
            if libc::mount(
                none,
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                self.fail(plan.fixed(Fixed::PrivateMounts), errno());
            }
            if libc::mount(
                c"tmpfs".as_ptr(),
                plan.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"size=1m,mode=0755".as_ptr().cast(),
            ) != 0
            {
                self.fail(plan.fixed(Fixed::NewRoot), errno());
            }
            for (index, step) in plan.steps.iter().enumerate() {
                if let Err(e) = self.step(step) {
                    self.fail(index as u32, e);
                }
            }
            // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves
            // only the new root visible.
            if libc::chdir(plan.root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                self.fail(plan.fixed(Fixed::Pivot), errno());
            }
            if libc::mount(
                none,
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ) != 0
            {
                self.fail(plan.fixed(Fixed::ReadOnlyRoot), errno());
            }
        }
    }

    unsafe fn step(&self, step: &Step) -> Result<(), i32> {
        let ok = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(errno()) };
        unsafe {
            match step {
                Step::Mkdir { path, mode } => ok(libc::mkdir(path.as_ptr(), *mode)),
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
                Step::Tmpfs { target, options } => ok(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                )),
                // hidepid=2: a process the job may not ptrace is not listed. That hides init,
                // whose command line is the server's (a copy made by clone): its flags and the
                // host paths of the database and work root.
                Step::Proc { target } => ok(libc::mount(
                    c"proc".as_ptr(),
                    target.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"hidepid=2".as_ptr().cast(),
                )),
                Step::Symlink { target, link } => ok(libc::symlink(target.as_ptr(), link.as_ptr())),
                Step::File { path, contents } => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        return Err(errno());
                    }
                    let result = write_all(fd, contents);
                    libc::close(fd);
                    result
                }
                Step::BindWritable { source, target } => {
                    bind(source, target, 0, libc::MS_NOSUID | libc::MS_NODEV)
                }
                Step::Copy { source, target } => {
                    let from = libc::open(
                        source.as_ptr(),
                        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    );
                    if from < 0 {
                        return Err(errno());
                    }
                    let to = libc::open(
                        target.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o644,
                    );
                    if to < 0 {
                        let e = errno();
                        libc::close(from);
                        return Err(e);
                    }
                    let mut result = Ok(());
                    loop {
                        let n = libc::sendfile(to, from, std::ptr::null_mut(), 1 << 20);
                        if n == 0 {
                            break;
                        }
                        if n < 0 {
                            result = Err(errno());
                            break;
                        }
                    }
                    if result.is_ok() && libc::fchown(to, self.plan.job_id, self.plan.job_id) != 0 {
                        result = Err(errno());
                    }
                    // Keep the execute bits: a compiled program is staged as a file too.
                    let mut st: libc::stat = std::mem::zeroed();
                    if result.is_ok()
                        && (libc::fstat(from, &mut st) != 0
                            || libc::fchmod(to, (st.st_mode & 0o755) | 0o644) != 0)
                    {
                        result = Err(errno());
                    }
                    libc::close(from);
                    libc::close(to);
                    result
                }
            }
        }
    }

    /// The job: drop to its uid, apply limits and filters, exec. Never returns.
    unsafe fn exec_job(&self) -> ! {
        unsafe {
            let plan = self.plan;
            libc::close(STATUS_FD);
            // Its own session and process group: a job cannot signal init's group.
            libc::setsid();
            if libc::chdir(c"/work".as_ptr()) != 0 {
                self.fail(plan.fixed(Fixed::WorkDir), errno());
            }
            // Leaving uid 0 for a non-zero uid clears every capability.
            if set_ids(plan.job_id) != 0 {
                self.fail(plan.fixed(Fixed::Ids), errno());
            }
            for &(resource, soft, hard) in &plan.rlimits {
                let mut current = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(resource, &mut current);
                let hard = hard.min(current.rlim_max);
                let wanted = libc::rlimit {
                    rlim_cur: soft.min(hard),
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &wanted) != 0 {
                    self.fail(plan.fixed(Fixed::Rlimits), errno());
                }
            }
            let landlock = self.landlock.map(|_| LANDLOCK_FD);
            if let Err(e) = filter::apply_in_child(
                self.filters,
                landlock,
                &[c"/"],
                &[c"/work", c"/tmp", c"/dev"],
            ) {
                self.fail(plan.fixed(Fixed::Filters), e.errno);
            }
            libc::execve(
                plan.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
            self.fail(plan.fixed(Fixed::Exec), errno())
        }
    }

    /// init's last duty: reap every process until the job exits, then report its status and
    /// exit, which takes the rest of the namespace down with it.
    unsafe fn reap(&self, job: libc::pid_t) -> ! {
        unsafe {
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, 0);
                if pid == job {
                    libc::kill(-1, libc::SIGKILL);
                    let bytes = status.to_ne_bytes();
                    libc::write(STATUS_FD, bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0);
                }
                if pid < 0 && errno() != libc::EINTR {
                    libc::_exit(125);
                }
            }
        }
    }

    unsafe fn fail(&self, step: u32, errno: i32) -> ! {
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&step.to_ne_bytes());
        report[4..].copy_from_slice(&errno.to_ne_bytes());
        unsafe {
            libc::write(SETUP_FD, report.as_ptr().cast(), report.len());
            libc::_exit(127)
        }
    }
}

/// Sets every uid and gid to `id` (and no supplementary groups) with raw system calls: glibc's
/// wrappers would try to make the server's other threads (which do not exist in the child) follow
/// suit, and wait for them.
unsafe fn set_ids(id: u32) -> libc::c_long {
    unsafe {
        let groups = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
        // setgroups is refused once "deny" is written to setgroups; there are none to drop then.
        if groups != 0 && errno() != libc::EPERM {
            return groups;
        }
        let gid = libc::syscall(libc::SYS_setresgid, id, id, id);
        if gid != 0 {
            return gid;
        }
        libc::syscall(libc::SYS_setresuid, id, id, id)
    }
}

/// Binds `source` on `target`, then remounts the bind with `flags` (a bind ignores them at
/// first).
unsafe fn bind(
    source: &CString,
    target: &CString,
    rec: libc::c_ulong,
    flags: libc::c_ulong,
) -> Result<(), i32> {
    let null: *const libc::c_char = std::ptr::null();
    let no_data: *const libc::c_void = std::ptr::null();
    let ok = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(errno()) };
    unsafe {
        ok(libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            null,
            libc::MS_BIND | rec,
            no_data,
        ))?;
        let flags = libc::MS_BIND | libc::MS_REMOUNT | flags;
        ok(libc::mount(null, target.as_ptr(), null, flags, no_data))
    }
}

unsafe fn write_all(fd: RawFd, mut bytes: &[u8]) -> Result<(), i32> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            return Err(errno());
        }
        bytes = &bytes[n as usize..];
    }
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
