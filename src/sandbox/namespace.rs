//! Starting a job inside fresh Linux namespaces: the mechanics of the sandbox.
//!
//! init is created with `CLONE_VM` and the job with `CLONE_VM | CLONE_VFORK`: both run in the
//! server's own memory, on stacks of their own, until the job's `execve` gives it a fresh address
//! space. Nothing is copied, which is what makes a start cheap (see [`clone_init`]), and it sets
//! the rules for that code: it may only make raw system calls (`super::sys`) — no allocation,
//! no locks, no logging, no libc wrapper (they write `errno` into a server thread's storage).
//! Everything the child needs — every path, mount option, argument and environment string — is
//! therefore built beforehand in the parent as a [`Plan`], and the child walks through it.
//!
//! The process tree of one run:
//!
//! ```text
//! server ── clone3(VM | NEW{USER,PID,NS,IPC,UTS,CGROUP}) ──► init (pid 1, root in its
//! (the calling thread in a pooled                             │  user namespace only)
//! network namespace: see super::netns)                        │
//!                                                             └─ clone3(VM | VFORK) ──► job
//!                                                                (pid 2, uid 1000, filtered,
//!                                                                then execve)
//! ```
//!
//! `init` enters the run's cgroups, waits for the parent to write its uid/gid maps, builds
//! a new root on tmpfs (read-only binds of the system, a fresh `/proc`, a minimal `/dev`, a private
//! `/work` and `/tmp`), pivots into it and starts the job's process, which waits for its run and
//! then mounts the run's `/work` and `/tmp` itself. init reaps everything until the job exits,
//! then kills and
//! reaps whatever the job left behind, reports the job's end ([`Ended`]) on a pipe and exits:
//! nothing survives its run, however it forked, and should init die first the kernel kills the
//! whole pid namespace with it.
//!
//! init goes on sharing the server's memory while the job runs. The job cannot reach it: it runs
//! as another uid without capabilities, `ptrace` and `process_vm_*` are refused by seccomp,
//! `/proc` does not list init (`hidepid=2`), init has no signal handlers (a pid namespace's init
//! ignores every signal it does not handle), and all init does meanwhile is wait.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::filter::{self, Filters};
use super::netns::{NetLease, NetPool};
use super::sys;

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
    /// A submitted file written into the job's `/work` from the server's memory.
    Write {
        target: CString,
        contents: Vec<u8>,
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
            Step::Write { .. } => "write file",
            Step::BindWritable { .. } => "work directory bind",
        }
    }
}

/// Setup steps that are not in [`Plan::steps`], numbered after them in error reports.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Fixed {
    Cgroup,
    WaitForParent,
    Hostname,
    PrivateMounts,
    NewRoot,
    Pivot,
    ReadOnlyRoot,
    OpenStaging,
    UnmountStaging,
    WaitForRun,
    Fork,
    WorkDir,
    Ids,
    Rlimits,
    Filters,
    Exec,
}

impl Fixed {
    /// In declaration order, which is their numbering after the plan's steps.
    const ALL: [Fixed; 16] = [
        Fixed::Cgroup,
        Fixed::WaitForParent,
        Fixed::Hostname,
        Fixed::PrivateMounts,
        Fixed::NewRoot,
        Fixed::Pivot,
        Fixed::ReadOnlyRoot,
        Fixed::OpenStaging,
        Fixed::UnmountStaging,
        Fixed::WaitForRun,
        Fixed::Fork,
        Fixed::WorkDir,
        Fixed::Ids,
        Fixed::Rlimits,
        Fixed::Filters,
        Fixed::Exec,
    ];

    fn name(self) -> &'static str {
        match self {
            Fixed::Cgroup => "entering the run's cgroup",
            Fixed::WaitForParent => "waiting for the parent",
            Fixed::Hostname => "sethostname",
            Fixed::PrivateMounts => "making mounts private",
            Fixed::NewRoot => "mounting the new root",
            Fixed::Pivot => "pivot_root",
            Fixed::ReadOnlyRoot => "remounting the root read-only",
            Fixed::OpenStaging => "opening the work root",
            Fixed::UnmountStaging => "unmounting the staging area",
            Fixed::WaitForRun => "waiting for the run",
            Fixed::Fork => "fork",
            Fixed::WorkDir => "entering /work",
            Fixed::Ids => "switching to the job's uid",
            Fixed::Rlimits => "setrlimit",
            Fixed::Filters => "seccomp/Landlock",
            Fixed::Exec => "execve",
        }
    }
}

/// What a sandbox is built from before any run is known: its root and the ids inside.
pub struct Plan {
    root: CString,
    /// The host directory the runs' files are staged in; init keeps it open at [`STAGING_FD`]
    /// to copy a run's files after the pivot.
    work_root: CString,
    /// Whether the work root is also bound at `STAGING` until the run starts, for a run that
    /// binds its staging directory as `/work` (a bind's source must be in the sandbox's own
    /// mount namespace). Unmounting it costs the run's path about half a millisecond, so only
    /// sandboxes for such runs have it.
    bind_work_root: bool,
    job_id: u32,
    user_ns: bool,
    steps: Vec<Step>,
}

/// What one run adds to a started sandbox: its `/work`, `/tmp`, the program and its limits.
pub struct RunPlan {
    steps: Vec<Step>,
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Whether the job gets the progress pipe at [`PROGRESS_FD`].
    progress: bool,
}

/// How the staged files reach the sandbox's `/work`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkMount {
    /// Copied into a private, size-limited tmpfs: what a job's run gets.
    Copy,
    /// The staging directory bound writable: what a compile step gets, so its output stays.
    Bind,
}

/// What a sandbox is started with; [`Plan::new`] turns it into steps.
pub struct SandboxSpec<'a> {
    /// An empty directory on the host to mount the new root on (in the child's mount namespace
    /// only, so every sandbox can use the same one).
    pub root: &'a Path,
    /// The host directory the runs' staging directories are in.
    pub work_root: &'a Path,
    /// Whether the sandbox is for a run with [`WorkMount::Bind`].
    pub bind_work_root: bool,
    /// The uid and gid the job runs as, as seen inside: [`JOB_ID`] in a user namespace, else the
    /// host id itself.
    pub job_id: u32,
    /// Whether the run gets its own user namespace (else init is the host's root, in the other
    /// namespaces only, and drops to `job_id` for the job).
    pub user_ns: bool,
    /// The run-independent part of the root, prepared at startup.
    pub skeleton: &'a Skeleton,
    /// What the job's tmpfs mounts start with; a run that needs other sizes has them changed
    /// from outside ([`resize_tmpfs`]).
    pub sizes: TmpfsSizes,
}

/// The sizes of a sandbox's private tmpfs mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmpfsSizes {
    /// `/work`: what the job may write besides what it was given, plus what it was given.
    pub work: u64,
    /// `/tmp` and `/dev/shm`, each.
    pub tmp: u64,
}

/// The private tmpfs mounts of a sandbox, by their path inside.
pub const TMPFS_MOUNTS: [&str; 3] = ["/work", "/tmp", "/dev/shm"];

/// Sets the size of the tmpfs mounted at `mount` (a descriptor of its root, from the server's
/// side, such as `/proc/PID/root/work`) without entering the sandbox: a size is a mount
/// option, and the server, root in the namespace's parent, may reconfigure the mount.
pub fn resize_tmpfs(mount: &OwnedFd, bytes: u64) -> io::Result<()> {
    const FSPICK_CLOEXEC: libc::c_long = 1;
    const FSPICK_EMPTY_PATH: libc::c_long = 8;
    const FSCONFIG_SET_STRING: libc::c_long = 1;
    const FSCONFIG_CMD_RECONFIGURE: libc::c_long = 7;
    let check = |ret: libc::c_long| {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    };
    // SAFETY: fspick on a live descriptor with an empty path; returns a new descriptor or -1.
    let context = check(unsafe {
        libc::syscall(
            libc::SYS_fspick,
            mount.as_raw_fd(),
            c"".as_ptr(),
            FSPICK_CLOEXEC | FSPICK_EMPTY_PATH,
        )
    })?;
    // SAFETY: the descriptor (an int) was just created and nothing else owns it.
    let context = unsafe { OwnedFd::from_raw_fd(context as RawFd) };
    let size = cstring(bytes.to_string())?;
    // SAFETY: fsconfig on the context just made, with NUL-terminated strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_SET_STRING,
            c"size".as_ptr(),
            size.as_ptr(),
            0,
        )
    })?;
    // SAFETY: as above, a command without arguments.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_CMD_RECONFIGURE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map(drop)
}

/// One entry of a run's `/work`, by its path relative to it.
#[derive(Clone, Copy, Debug)]
pub enum WorkFile<'a> {
    /// A directory (the path ends with `/`).
    Dir(&'a str),
    /// A file copied from the run's staging directory, at the same path there: what a compile
    /// step left, or what it was given.
    Staged(&'a str),
    /// A file written from memory: a run needs no staging directory for the code and files it
    /// was submitted with.
    Inline(&'a str, &'a [u8]),
}

impl WorkFile<'_> {
    /// The path relative to the staging directory of what is there.
    pub fn staged(&self) -> Option<&str> {
        match *self {
            WorkFile::Dir(path) | WorkFile::Staged(path) => Some(path),
            WorkFile::Inline(..) => None,
        }
    }
}

/// What the runner asks for; [`RunPlan::new`] turns it into steps.
pub struct RunSpec<'a> {
    /// The run's staging directory, relative to the work root, if anything is staged.
    pub staging: Option<&'a Path>,
    /// Parents before children.
    pub entries: &'a [WorkFile<'a>],
    pub work: WorkMount,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub progress: bool,
}

fn cstring(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn host(root: &Path, inside: &Path) -> io::Result<CString> {
    let relative = inside.strip_prefix("/").unwrap_or(inside);
    cstring(root.join(relative).as_os_str().as_bytes())
}

fn inside(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

impl Plan {
    pub fn new(spec: SandboxSpec<'_>) -> io::Result<Plan> {
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
        // Private, size-limited, and new with each sandbox. A build step's `/work` is its
        // staging directory instead, bound at its run.
        let sizes = spec.sizes;
        for (target, options) in [
            ("/dev/shm", format!("size={},mode=1777", sizes.tmp)),
            ("/tmp", format!("size={},mode=1777", sizes.tmp)),
            (
                "/work",
                format!("size={},mode=0755,uid={job},gid={job}", sizes.work),
            ),
        ] {
            if target == "/work" && spec.bind_work_root {
                continue;
            }
            steps.push(Step::Tmpfs {
                target: host(root, Path::new(target))?,
                options: cstring(format!("{options},nr_inodes=16384"))?,
            });
        }
        if spec.bind_work_root {
            steps.push(Step::BindWritable {
                source: cstring(spec.work_root.as_os_str().as_bytes())?,
                target: host(root, Path::new(STAGING))?,
            });
        }
        Ok(Plan {
            root: cstring(root.as_os_str().as_bytes())?,
            work_root: cstring(spec.work_root.as_os_str().as_bytes())?,
            bind_work_root: spec.bind_work_root,
            job_id: spec.job_id,
            user_ns: spec.user_ns,
            steps,
        })
    }
}

impl RunPlan {
    /// Paths here are inside the sandbox: a run's steps come after the pivot. Staged files are
    /// copied from [`STAGING_FD`]; a staging directory bound as `/work` is reached at
    /// `STAGING`.
    pub fn new(spec: RunSpec<'_>) -> io::Result<RunPlan> {
        let mut steps = Vec::new();
        let staged = |path: &str| match spec.staging {
            Some(staging) => Ok(staging.join(path)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a staged file without a staging directory",
            )),
        };
        if spec.work == WorkMount::Bind {
            steps.push(Step::BindWritable {
                source: inside(&Path::new(STAGING).join(staged("")?))?,
                target: inside(Path::new("/work"))?,
            });
        }
        for entry in spec.entries.iter().filter(|_| spec.work == WorkMount::Copy) {
            let target = |path: &str| inside(&Path::new("/work").join(path));
            steps.push(match *entry {
                WorkFile::Dir(path) => Step::Mkdir {
                    path: target(path)?,
                    mode: 0o755,
                },
                WorkFile::Staged(path) => Step::Copy {
                    source: inside(&staged(path)?)?,
                    target: target(path)?,
                },
                WorkFile::Inline(path, contents) => Step::Write {
                    target: target(path)?,
                    contents: contents.to_vec(),
                },
            });
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
        Ok(RunPlan {
            steps,
            program,
            argv,
            env,
            rlimits: spec.rlimits,
            progress: spec.progress,
        })
    }
}

/// Where a setup step failed, as init reports it: a step of the [`Plan`], of the [`RunPlan`],
/// or a fixed one.
#[derive(Clone, Copy)]
enum At {
    Plan(usize),
    Run(usize),
    Fixed(Fixed),
}

const RUN_STEP: u32 = 1 << 24;
const FIXED_STEP: u32 = 2 << 24;

impl At {
    fn code(self) -> u32 {
        match self {
            At::Plan(index) => index as u32,
            At::Run(index) => RUN_STEP | index as u32,
            At::Fixed(fixed) => FIXED_STEP | fixed as u32,
        }
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
        for dir in [
            "/etc", "/dev", "/dev/shm", "/tmp", "/proc", "/work", STAGING,
        ] {
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

    fn add(&mut self, usage: &libc::rusage) {
        let us = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
        };
        self.cpu_us += us(usage.ru_utime) + us(usage.ru_stime);
        self.max_rss_kb = self
            .max_rss_kb
            .max(u64::try_from(usage.ru_maxrss).unwrap_or(0));
    }

    fn encode(&self) -> [u8; Ended::SIZE] {
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
/// run: it mounts the run's `/work` and `/tmp`, writes its files in and execs.
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

    /// Decodes what init or the job wrote on the setup pipe: where it failed and the errno.
    pub fn setup_error(&self, report: [u8; 8]) -> io::Error {
        let code = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        let cause = io::Error::from_raw_os_error(errno);
        io::Error::new(
            cause.kind(),
            format!("sandbox setup failed at {}: {cause}", self.step_name(code)),
        )
    }

    fn step_name(&self, code: u32) -> &'static str {
        let index = (code & (RUN_STEP - 1)) as usize;
        let step = match code & !(RUN_STEP - 1) {
            0 => self.shared.plan.steps.get(index),
            RUN_STEP => self.run.as_ref().and_then(|r| r.plan.steps.get(index)),
            FIXED_STEP => return Fixed::ALL.get(index).map_or("unknown step", |f| f.name()),
            _ => None,
        };
        step.map_or("unknown step", Step::name)
    }
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
pub fn clone_init(
    plan: Plan,
    filters: Arc<Filters>,
    landlock: Option<&OwnedFd>,
    cgroup: Option<&CgroupEntry>,
    net: (&NetPool, NetLease),
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
    let pid = pool
        .within(&lease, || unsafe {
            sys::clone3(&args, init_main, arg.cast())
        })?
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

/// Enough for every cgroup hierarchy a host mounts (v1 has 13 controllers).
const MAX_ENTER_FILES: usize = 16;

/// Each stack's size. Touched pages only are ever backed by memory; the setup code needs a few.
const STACK_SIZE: usize = 256 << 10;
const GUARD_SIZE: usize = 64 << 10;

/// One mapping for init's and the job's stacks, each below an inaccessible guard.
struct Stacks {
    mapping: *mut libc::c_void,
    len: usize,
    init: Stack,
    job: Stack,
}

#[derive(Clone, Copy)]
struct Stack {
    /// The lowest address; the stack grows down from `base + STACK_SIZE`.
    base: *mut libc::c_void,
}

// SAFETY: a plain mapping, only freed by Drop; the pointers are addresses, not shared data.
unsafe impl Send for Stacks {}
// SAFETY: as above.
unsafe impl Sync for Stacks {}

impl Stacks {
    fn new() -> io::Result<Stacks> {
        let len = 2 * (GUARD_SIZE + STACK_SIZE);
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stacks = Stacks {
            mapping,
            len,
            // SAFETY (both): offsets within the mapping.
            init: Stack {
                base: unsafe { mapping.byte_add(GUARD_SIZE) },
            },
            job: Stack {
                base: unsafe { mapping.byte_add(2 * GUARD_SIZE + STACK_SIZE) },
            },
        };
        for stack in [stacks.init, stacks.job] {
            // SAFETY: part of the mapping above.
            let rc = unsafe {
                libc::mprotect(stack.base, STACK_SIZE, libc::PROT_READ | libc::PROT_WRITE)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(stacks)
    }
}

impl Drop for Stacks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; `Started` drops it only after init is gone.
        unsafe { libc::munmap(self.mapping, self.len) };
    }
}

/// What init and the job read, prepared by the parent.
struct Shared {
    plan: Plan,
    filters: Arc<Filters>,
    /// At their fixed numbers in init: stdin read end, stdout write end, stderr write end,
    /// status write end, setup write end, go read end, the Landlock ruleset (or -1), progress
    /// write end, ready write end.
    fds: [RawFd; 9],
    /// The cgroup files the job writes itself into, `-1` past the last; at [`ENTER_FD`] on in
    /// init.
    enter: [RawFd; MAX_ENTER_FILES],
    /// How many of `enter` the job enters while its sandbox is made ready (the rest, memory,
    /// at its run).
    enter_early: usize,
    job_stack: Stack,
}

// SAFETY: `job_stack` is an address in a mapping the `Started` owning this value keeps alive;
// nothing else in here is tied to a thread.
unsafe impl Send for Shared {}
// SAFETY: as above; it is never changed once built.
unsafe impl Sync for Shared {}

/// What init and the job read of one run.
struct RunShared {
    plan: RunPlan,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
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
/// Where the work root is mounted, in a sandbox for a run that binds its staging directory,
/// until the run has taken it.
const STAGING: &str = "/.staging";
/// The job's progress pipe.
const PROGRESS_FD: RawFd = crate::progress::FD;

/// init's entry point, on its own stack.
unsafe extern "C" fn init_main(shared: *const libc::c_void) -> ! {
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
            if self.plan.user_ns
                && let Err(e) = set_ids(0)
            {
                self.fail(At::Fixed(Fixed::Ids), e);
            }
            self.build_root();
            // The job is started now, ahead of its run, to attach its seccomp programs off the
            // run's path; it reports the sandbox ready and takes its run from the parent (see
            // `job`). It shares this memory too, on its own stack: nothing is copied. Without
            // CLONE_VFORK both go on at once, which the rules of this code allow (neither writes
            // anything the other reads).
            let args = libc::clone_args {
                flags: libc::CLONE_VM as u64,
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
            // The job's copies are now the only ones: EOF on `ready` means it failed, and
            // only it reads `go` and the staging directory.
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

    /// Waits for the run's address on `fd`, from [`Started::start`]. Exits quietly if the
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
            // sharing that memory, the server included. The job shares it only until its
            // execve, and enters after writing its files, so its cgroup holds nothing else then.
            self.enter_cgroups(self.enter_early..self.entered());
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

    /// How many cgroup files the job writes itself into.
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
