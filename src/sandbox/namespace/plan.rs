//! What a sandbox and a run are built from, prepared in the parent before any child exists.
//!
//! The child walks through these plans without allocating (see [`super::child`]), so every
//! path, mount option, file's contents, argument and environment string is made here, as a
//! C string or a byte buffer, by ordinary Rust that may allocate, fail and be unit-tested. A
//! [`Skeleton`] is what every sandbox of a server shares (the host examined once, at startup), a
//! [`Plan`] one sandbox up to its run, a [`RunPlan`] what one run adds. [`At`] and [`Fixed`]
//! name the step a child failed at, for the parent's error message.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the work root is mounted, in a sandbox for a run that binds its staging directory,
/// until the run has taken it.
pub(super) const STAGING: &str = "/.staging";

/// One step of building the new root, with every path absolute on the host (the new root is
/// mounted at [`Plan::root`] until the pivot).
#[derive(Clone)]
pub(super) enum Step {
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
    pub(super) fn name(&self) -> &'static str {
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
pub(super) enum Fixed {
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
    pub(super) const ALL: [Fixed; 16] = [
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

    pub(super) fn name(self) -> &'static str {
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
    pub(super) root: CString,
    /// The host directory the runs' files are staged in; init keeps it open at `STAGING_FD` (see
    /// `child`) to copy a run's files after the pivot.
    pub(super) work_root: CString,
    /// Whether the work root is also bound at `STAGING` until the run starts, for a run that
    /// binds its staging directory as `/work` (a bind's source must be in the sandbox's own
    /// mount namespace). Unmounting it costs the run's path about half a millisecond, so only
    /// sandboxes for such runs have it.
    pub(super) bind_work_root: bool,
    pub(super) job_id: u32,
    pub(super) user_ns: bool,
    pub(super) steps: Vec<Step>,
}

/// What one run adds to a started sandbox: the files of its `/work` (or, for a build step, its
/// staging directory bound there), the program and its limits.
pub struct RunPlan {
    pub(super) steps: Vec<Step>,
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    pub(super) env: Vec<CString>,
    pub(super) rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Whether the job gets the progress pipe at `PROGRESS_FD` (see `child`).
    pub(super) progress: bool,
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
    /// The uid and gid the job runs as, as seen inside: [`JOB_ID`](super::JOB_ID) in a user
    /// namespace, else the host id itself.
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
    /// copied from `STAGING_FD` (see `child`); a staging directory bound as `/work` is reached
    /// at `STAGING`.
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
pub(super) enum At {
    Plan(usize),
    Run(usize),
    Fixed(Fixed),
}

pub(super) const RUN_STEP: u32 = 1 << 24;
pub(super) const FIXED_STEP: u32 = 2 << 24;

impl At {
    pub(super) fn code(self) -> u32 {
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
