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
    /// `/dev/null` bound over a file of `/proc`, which then reads empty: one bind, with the
    /// flags of the host's `/dev` (a device node cannot be executed whatever they are).
    Mask {
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
            Step::Mask { .. } => "proc mask",
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
        // staging directory instead, bound at its run. `/tmp`'s also hides the sources of the
        // fixed `/proc` files the skeleton bound (see `FIXED_PROC_SOURCES`).
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
                options: cstring(format!("{options},nr_inodes=16384{}", spec.skeleton.huge))?,
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
/// the devices, `/proc` (with what it tells of the host masked), and the mount points. Examining the host for it (symlinks, mount flags)
/// is done once, at startup, not on every run.
#[derive(Clone)]
pub struct Skeleton {
    steps: Vec<Step>,
    /// The option the job's tmpfs mounts take for huge pages, empty where the kernel has none.
    huge: &'static str,
}

/// Where the kernel tells how shared memory uses transparent huge pages: there only when it
/// has them, and without them it refuses tmpfs's `huge=` option.
const SHMEM_HUGE_PAGES: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// `huge=within_size` where the kernel takes it. A file is written in 4 KB pages otherwise, each
/// allocated, charged to the run's memory cgroup and later freed on its own: copying a 4 MB build
/// into `/work` took 2.5 ms that way against 0.6–0.9 ms in huge pages. `within_size` gives a
/// huge page only to a part of a file that fills it, so a small file (most of them) costs the
/// same as before and no file takes more memory or tmpfs space than its size.
fn huge_option() -> &'static str {
    match Path::new(SHMEM_HUGE_PAGES).exists() {
        true => ",huge=within_size",
        false => "",
    }
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
        steps.extend(proc_masks(root, Path::new("/proc"))?);

        Ok(Skeleton {
            steps,
            huge: huge_option(),
        })
    }
}

/// Files of a fresh `/proc` that show the host rather than the job: the kernel's memory image,
/// every key and lock on the host, its timers and scheduler (runc's `maskedPaths`, and
/// `interrupts` as containerd's), and what the host is made of: its disks and swap, its
/// devices' interrupts, the modules and symbols its kernel loaded. Masked with `/dev/null` (they
/// read empty). `locks` also lists every job's locks to every other job, `diskstats` every
/// disk's traffic.
const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "latency_stats",
    "locks",
    "sched_debug",
    "timer_list",
    "timer_stats",
    "interrupts",
    "kallsyms",
    "modules",
    "partitions",
    "diskstats",
    "swaps",
];

/// Directories of a fresh `/proc` describing the host's hardware and file systems (ACPI, sound,
/// SCSI and PCI devices, interrupts, the host's ext4/xfs/NFS mounts). Each gets an empty
/// read-only tmpfs. runc hides the first three and leaves the others read-only, which a job
/// already gets: it is not root in its namespace, and Landlock refuses writes beneath `/proc`.
const MASKED_PROC_DIRS: &[&str] = &["acpi", "asound", "scsi", "bus", "fs", "irq"];

/// Files of `/proc` that identify the host, and what a job reads there instead: the kernel's
/// command line (the host's boot configuration) and the boot id (one fingerprint of the host's
/// boot shared by every job). The same for every sandbox of every server.
const FIXED_PROC_FILES: &[(&str, &str)] = &[
    ("cmdline", "kiln\n"),
    (
        "sys/kernel/random/boot_id",
        "00000000-0000-4000-8000-000000000000\n",
    ),
];

/// Where the fixed files' contents are written in the new root before they are bound over
/// `/proc`: under the mount point of the sandbox's `/tmp`, whose tmpfs, mounted later (see
/// [`Plan::new`]), hides them from the job.
const FIXED_PROC_SOURCES: &str = "/tmp";

/// The steps that mask what of `host_proc` (the host's `/proc`, which names what the sandbox's
/// own will have: the same kernel) tells of the host, once the sandbox's `/proc` is mounted.
/// Done while a sandbox is made, never at a run.
fn proc_masks(root: &Path, host_proc: &Path) -> io::Result<Vec<Step>> {
    let mut steps = Vec::new();
    let inside = |name: &str| host(root, &Path::new("/proc").join(name));
    for name in MASKED_PROC_FILES {
        if host_proc.join(name).exists() {
            steps.push(Step::Mask {
                source: cstring("/dev/null")?,
                target: inside(name)?,
            });
        }
    }
    for name in MASKED_PROC_DIRS {
        if host_proc.join(name).is_dir() {
            steps.push(Step::Tmpfs {
                target: inside(name)?,
                options: cstring("ro,size=4k,nr_inodes=1,mode=0555")?,
            });
        }
    }
    for (name, contents) in FIXED_PROC_FILES {
        if !host_proc.join(name).exists() {
            continue;
        }
        let flat = name.replace('/', "-");
        let source = host(root, &Path::new(FIXED_PROC_SOURCES).join(flat))?;
        steps.push(Step::File {
            path: source.clone(),
            contents: contents.as_bytes().to_vec(),
        });
        steps.push(Step::BindReadOnly {
            source,
            target: inside(name)?,
            file: true,
            extra_flags: 0,
        });
    }
    Ok(steps)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    /// A step as a line of text, so that a test can say what a plan holds.
    fn describe(step: &Step) -> String {
        let s = |c: &CString| c.to_str().expect("a test's paths are UTF-8").to_owned();
        match step {
            Step::Mkdir { path, mode } => format!("mkdir {} {mode:o}", s(path)),
            Step::BindReadOnly {
                source,
                target,
                file,
                ..
            } => {
                let file = if *file { " (a file)" } else { "" };
                format!("bind {} read-only at {}{file}", s(source), s(target))
            }
            Step::BindDevice { source, target } => format!("device {} at {}", s(source), s(target)),
            Step::Mask { source, target } => format!("mask {} with {}", s(target), s(source)),
            Step::Tmpfs { target, options } => {
                format!("tmpfs at {} with {}", s(target), s(options))
            }
            Step::Proc { target } => format!("proc at {}", s(target)),
            Step::Symlink { target, link } => format!("symlink {} to {}", s(link), s(target)),
            Step::File { path, contents } => {
                format!(
                    "file {} with {:?}",
                    s(path),
                    String::from_utf8_lossy(contents)
                )
            }
            Step::Copy { source, target } => format!("copy {} to {}", s(source), s(target)),
            Step::Write { target, contents } => {
                format!(
                    "write {} with {:?}",
                    s(target),
                    String::from_utf8_lossy(contents)
                )
            }
            Step::BindWritable { source, target } => {
                format!("bind {} writable at {}", s(source), s(target))
            }
        }
    }

    fn lines(steps: &[Step]) -> Vec<String> {
        steps.iter().map(describe).collect()
    }

    fn position(lines: &[String], line: &str) -> usize {
        lines
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no step {line:?} in {lines:#?}"))
    }

    /// A host layout of the kinds a runtime's paths come in: a directory, a file, a symlink to
    /// the directory (as `/bin -> usr/bin`), and a path the host lacks.
    struct Host {
        dir: tempfile::TempDir,
        root: PathBuf,
    }

    impl Host {
        fn new() -> Host {
            let dir = tempfile::tempdir().expect("a temporary directory");
            std::fs::create_dir_all(dir.path().join("runtime/lib")).expect("runtime dir");
            std::fs::write(dir.path().join("runtime.conf"), "x").expect("runtime.conf");
            std::os::unix::fs::symlink("runtime", dir.path().join("link")).expect("link");
            let root = dir.path().join("root");
            Host { dir, root }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Where `path` (absolute on the host) is under the new root.
        fn under_root(&self, path: &Path) -> String {
            format!("{}{}", self.root.display(), path.display())
        }
    }

    fn spec<'a>(root: &'a Path, skeleton: &'a Skeleton) -> SandboxSpec<'a> {
        SandboxSpec {
            root,
            work_root: Path::new("/var/lib/kiln/work"),
            bind_work_root: false,
            job_id: super::super::JOB_ID,
            user_ns: true,
            skeleton,
            sizes: TmpfsSizes {
                work: 5 << 20,
                tmp: 2 << 20,
            },
        }
    }

    fn run_spec<'a>(staging: Option<&'a Path>, entries: &'a [WorkFile<'a>]) -> RunSpec<'a> {
        RunSpec {
            staging,
            entries,
            work: WorkMount::Copy,
            program: Path::new("/usr/bin/python3"),
            args: vec!["-I".into(), "main.py".into()],
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("HOME".into(), "/work".into()),
            ],
            rlimits: vec![(libc::RLIMIT_NOFILE, 64, 64)],
            progress: true,
        }
    }

    #[test]
    fn the_skeleton_binds_the_runtimes_directories_read_only_at_the_same_path_inside() {
        let host = Host::new();
        let runtime = host.path("runtime");
        let skeleton =
            Skeleton::new(&host.root, &[PathBuf::from("/usr"), runtime.clone()]).expect("skeleton");
        let lines = lines(&skeleton.steps);
        let usr = position(
            &lines,
            &format!("bind /usr read-only at {}/usr", host.root.display()),
        );
        let inside = host.under_root(&runtime);
        let bind = position(
            &lines,
            &format!("bind {} read-only at {inside}", runtime.display()),
        );
        // The mount point is made before it is mounted on.
        assert!(position(&lines, &format!("mkdir {}/usr 755", host.root.display())) < usr);
        assert!(position(&lines, &format!("mkdir {inside} 755")) < bind);
    }

    #[test]
    fn a_file_is_bound_on_an_empty_file_and_without_recursion() {
        let host = Host::new();
        let conf = host.path("runtime.conf");
        let skeleton = Skeleton::new(&host.root, std::slice::from_ref(&conf)).expect("skeleton");
        let lines = lines(&skeleton.steps);
        let inside = host.under_root(&conf);
        let file = position(&lines, &format!("file {inside} with \"\""));
        let bind = position(
            &lines,
            &format!("bind {} read-only at {inside} (a file)", conf.display()),
        );
        assert!(file < bind);
    }

    #[test]
    fn a_symlink_is_made_again_inside_instead_of_bound() {
        let host = Host::new();
        let link = host.path("link");
        let skeleton = Skeleton::new(&host.root, std::slice::from_ref(&link)).expect("skeleton");
        let lines = lines(&skeleton.steps);
        position(
            &lines,
            &format!("symlink {} to runtime", host.under_root(&link)),
        );
        let link = link.display().to_string();
        assert!(!lines.iter().any(|l| l.starts_with(&format!("bind {link}"))));
    }

    #[test]
    fn a_path_the_host_lacks_is_left_out() {
        let host = Host::new();
        let missing = host.path("missing");
        let skeleton =
            Skeleton::new(&host.root, &[missing, host.path("runtime")]).expect("skeleton");
        let lines = lines(&skeleton.steps);
        assert!(!lines.iter().any(|l| l.contains("missing")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("runtime")));
    }

    #[test]
    fn every_directory_is_made_once_and_after_its_parent() {
        let host = Host::new();
        let binds = [
            host.path("runtime"),
            host.path("runtime/lib"),
            host.path("runtime.conf"),
            host.path("link"),
        ];
        let skeleton = Skeleton::new(&host.root, &binds).expect("skeleton");
        let made: Vec<PathBuf> = skeleton
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Mkdir { path, .. } => Some(PathBuf::from(OsStr::from_bytes(path.as_bytes()))),
                _ => None,
            })
            .collect();
        for (index, dir) in made.iter().enumerate() {
            assert!(!made[..index].contains(dir), "{dir:?} is made twice");
            let parent = dir.parent().expect("a path under the root");
            if parent != host.root {
                assert!(
                    made[..index].contains(&parent.to_path_buf()),
                    "{dir:?} before its parent"
                );
            }
        }
    }

    #[test]
    fn the_skeleton_has_the_mount_points_five_devices_the_dev_links_and_a_fresh_proc() {
        let root = Path::new("/srv/root");
        let skeleton = Skeleton::new(root, &[]).expect("skeleton");
        let lines = lines(&skeleton.steps);
        for dir in ["/etc", "/dev/shm", "/tmp", "/proc", "/work", STAGING] {
            position(&lines, &format!("mkdir /srv/root{dir} 755"));
        }
        for device in ["null", "zero", "full", "random", "urandom"] {
            position(
                &lines,
                &format!("device /dev/{device} at /srv/root/dev/{device}"),
            );
        }
        let devices = lines.iter().filter(|l| l.starts_with("device ")).count();
        assert_eq!(devices, 5, "no other host device is bound");
        position(&lines, "symlink /srv/root/dev/fd to /proc/self/fd");
        position(&lines, "symlink /srv/root/dev/stdout to /proc/self/fd/1");
        // The fresh /proc comes last, followed only by what masks parts of it.
        let proc = position(&lines, "proc at /srv/root/proc");
        let masks: Vec<String> = proc_masks(root, Path::new("/proc"))
            .expect("masks")
            .iter()
            .map(describe)
            .collect();
        assert_eq!(lines[proc + 1..], masks[..]);
    }

    #[test]
    fn what_proc_tells_of_the_host_is_masked_or_replaced_if_the_host_has_it() {
        let host_proc = tempfile::tempdir().expect("a temporary directory");
        let at = |name: &str| host_proc.path().join(name);
        for file in ["kcore", "locks", "cmdline"] {
            std::fs::write(at(file), "").expect("a file");
        }
        for dir in ["acpi", "fs", "sys/kernel/random"] {
            std::fs::create_dir_all(at(dir)).expect("a directory");
        }
        std::fs::write(at("sys/kernel/random/boot_id"), "").expect("boot_id");
        let masks = proc_masks(Path::new("/srv/root"), host_proc.path()).expect("masks");
        assert_eq!(
            lines(&masks),
            [
                "mask /srv/root/proc/kcore with /dev/null",
                "mask /srv/root/proc/locks with /dev/null",
                "tmpfs at /srv/root/proc/acpi with ro,size=4k,nr_inodes=1,mode=0555",
                "tmpfs at /srv/root/proc/fs with ro,size=4k,nr_inodes=1,mode=0555",
                "file /srv/root/tmp/cmdline with \"kiln\\n\"",
                "bind /srv/root/tmp/cmdline read-only at /srv/root/proc/cmdline (a file)",
                "file /srv/root/tmp/sys-kernel-random-boot_id with \
                 \"00000000-0000-4000-8000-000000000000\\n\"",
                "bind /srv/root/tmp/sys-kernel-random-boot_id read-only at \
                 /srv/root/proc/sys/kernel/random/boot_id (a file)",
            ]
        );
    }

    /// The fixed files' sources are written into the new root where the job never sees them:
    /// every sandbox mounts a tmpfs over them after they are bound.
    #[test]
    fn the_fixed_proc_files_sources_are_hidden_under_a_tmpfs_mounted_afterwards() {
        let root = Path::new("/srv/root");
        let skeleton = Skeleton::new(root, &[]).expect("skeleton");
        for bind_work_root in [false, true] {
            let plan = Plan::new(SandboxSpec {
                bind_work_root,
                ..spec(root, &skeleton)
            })
            .expect("plan");
            let hidden_under = host(root, Path::new(FIXED_PROC_SOURCES)).expect("path");
            let tmpfs = plan
                .steps
                .iter()
                .position(
                    |step| matches!(step, Step::Tmpfs { target, .. } if *target == hidden_under),
                )
                .expect("a tmpfs over the sources");
            for (index, step) in plan.steps.iter().enumerate() {
                if let Step::BindReadOnly { source, .. } = step
                    && source.as_bytes().starts_with(hidden_under.as_bytes())
                {
                    assert!(index < tmpfs, "{}", describe(step));
                }
            }
        }
    }

    #[test]
    fn a_bind_keeps_the_flags_its_host_mount_has() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mut checked = 0;
        for point in ["/", "/proc", "/sys", "/dev", "/dev/shm", "/run"] {
            // The mount on top is the last one listed at its mount point.
            let Some(options) = mountinfo.lines().rev().find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(4) == Some(&point)).then(|| fields[5].to_owned())
            }) else {
                continue;
            };
            let mut expected = 0;
            for option in options.split(',') {
                expected |= match option {
                    "nosuid" => libc::MS_NOSUID,
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    _ => 0,
                };
            }
            let kept = locked_flags(Path::new(point)).expect("statvfs");
            assert_eq!(kept, expected, "{point} is mounted {options}");
            checked += 1;
        }
        assert!(checked > 0, "no mount point to compare with");
    }

    #[test]
    fn a_plan_is_the_skeleton_then_the_sandboxs_own_files_and_mounts() {
        let root = Path::new("/srv/root");
        let skeleton = Skeleton::new(root, &[PathBuf::from("/usr")]).expect("skeleton");
        let plan = Plan::new(spec(root, &skeleton)).expect("plan");
        let huge = skeleton.huge;
        let skeleton = lines(&skeleton.steps);
        let plan_lines = lines(&plan.steps);
        assert_eq!(plan_lines[..skeleton.len()], skeleton[..]);
        assert_eq!(
            plan_lines[skeleton.len()..],
            [
                "file /srv/root/etc/passwd with \"root:x:0:0:root:/:/usr/sbin/nologin\\n\
                 kiln:x:1000:1000:kiln:/work:/bin/sh\\n\""
                    .to_owned(),
                "file /srv/root/etc/group with \"root:x:0:\\nkiln:x:1000:\\n\"".to_owned(),
                "file /srv/root/etc/hostname with \"kiln\\n\"".to_owned(),
                format!(
                    "tmpfs at /srv/root/dev/shm with size=2097152,mode=1777,nr_inodes=16384{huge}"
                ),
                format!("tmpfs at /srv/root/tmp with size=2097152,mode=1777,nr_inodes=16384{huge}"),
                format!(
                    "tmpfs at /srv/root/work with size=5242880,mode=0755,uid=1000,gid=1000,\
                     nr_inodes=16384{huge}"
                ),
            ]
        );
        assert_eq!(plan.root.as_bytes(), b"/srv/root");
        assert_eq!(plan.work_root.as_bytes(), b"/var/lib/kiln/work");
        assert!(plan.user_ns && !plan.bind_work_root);
    }

    #[test]
    fn without_a_user_namespace_the_job_is_named_with_its_host_id() {
        let root = Path::new("/srv/root");
        let skeleton = Skeleton::new(root, &[]).expect("skeleton");
        let plan = Plan::new(SandboxSpec {
            job_id: 100_042,
            user_ns: false,
            ..spec(root, &skeleton)
        })
        .expect("plan");
        let lines = lines(&plan.steps);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("kiln:x:100042:100042:kiln:/work"))
        );
        assert!(lines.iter().any(|l| l.contains("uid=100042,gid=100042")));
        assert_eq!(plan.job_id, 100_042);
    }

    #[test]
    fn every_mount_the_server_resizes_is_a_tmpfs_of_the_plan() {
        let root = Path::new("/srv/root");
        let skeleton = Skeleton::new(root, &[]).expect("skeleton");
        let plan = Plan::new(spec(root, &skeleton)).expect("plan");
        for inside in TMPFS_MOUNTS {
            let target = host(root, Path::new(inside)).expect("path");
            let tmpfs = plan
                .steps
                .iter()
                .filter(|step| matches!(step, Step::Tmpfs { target: t, .. } if *t == target))
                .count();
            assert_eq!(tmpfs, 1, "{inside}");
        }
    }

    #[test]
    fn a_sandbox_for_a_build_step_binds_the_work_root_instead_of_a_work_tmpfs() {
        let root = Path::new("/srv/root");
        let skeleton = Skeleton::new(root, &[]).expect("skeleton");
        let plan = Plan::new(SandboxSpec {
            bind_work_root: true,
            ..spec(root, &skeleton)
        })
        .expect("plan");
        let lines = lines(&plan.steps);
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("tmpfs at /srv/root/work "))
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("bind /var/lib/kiln/work writable at /srv/root/.staging")
        );
        position(
            &lines,
            &format!(
                "tmpfs at /srv/root/tmp with size=2097152,mode=1777,nr_inodes=16384{}",
                skeleton.huge
            ),
        );
        assert!(plan.bind_work_root);
    }

    #[test]
    fn a_root_with_a_nul_in_its_path_is_refused() {
        let skeleton = Skeleton::new(Path::new("/srv/root"), &[]).expect("skeleton");
        let root = Path::new(OsStr::from_bytes(b"/srv/ro\0ot"));
        let error = Plan::new(spec(root, &skeleton)).err().expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(error.to_string(), "NUL in a path");
    }

    #[test]
    fn a_run_puts_its_files_under_work_written_or_copied_from_its_staging_directory() {
        let entries = [
            WorkFile::Dir("src/"),
            WorkFile::Inline("main.py", b"print(1)\n"),
            WorkFile::Staged("src/data.bin"),
        ];
        let run = RunPlan::new(run_spec(Some(Path::new("run-7")), &entries)).expect("run plan");
        assert_eq!(
            lines(&run.steps),
            [
                "mkdir /work/src/ 755",
                "write /work/main.py with \"print(1)\\n\"",
                "copy run-7/src/data.bin to /work/src/data.bin",
            ]
        );
    }

    #[test]
    fn a_run_of_inline_files_needs_no_staging_directory() {
        let entries = [WorkFile::Dir("lib/"), WorkFile::Inline("lib/a.py", b"")];
        let run = RunPlan::new(run_spec(None, &entries)).expect("run plan");
        assert_eq!(
            lines(&run.steps),
            ["mkdir /work/lib/ 755", "write /work/lib/a.py with \"\""]
        );
    }

    #[test]
    fn a_staged_file_without_a_staging_directory_is_refused() {
        let entries = [WorkFile::Inline("main.py", b""), WorkFile::Staged("main")];
        let error = RunPlan::new(run_spec(None, &entries))
            .err()
            .expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            error.to_string(),
            "a staged file without a staging directory"
        );
    }

    #[test]
    fn a_build_step_binds_its_staging_directory_as_work_and_copies_nothing() {
        let entries = [WorkFile::Staged("main.c"), WorkFile::Inline("x.h", b"")];
        let run = RunPlan::new(RunSpec {
            work: WorkMount::Bind,
            ..run_spec(Some(Path::new("build-3")), &entries)
        })
        .expect("run plan");
        assert_eq!(
            lines(&run.steps),
            ["bind /.staging/build-3/ writable at /work"]
        );
    }

    #[test]
    fn a_build_step_without_a_staging_directory_is_refused() {
        let error = RunPlan::new(RunSpec {
            work: WorkMount::Bind,
            ..run_spec(None, &[])
        })
        .err()
        .expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_program_is_its_own_first_argument_and_the_environment_is_name_equals_value() {
        let run = RunPlan::new(run_spec(None, &[])).expect("run plan");
        let strings = |v: &[CString]| -> Vec<String> {
            v.iter().map(|c| c.to_string_lossy().into_owned()).collect()
        };
        assert_eq!(run.program.as_bytes(), b"/usr/bin/python3");
        assert_eq!(strings(&run.argv), ["/usr/bin/python3", "-I", "main.py"]);
        assert_eq!(strings(&run.env), ["PATH=/usr/bin", "HOME=/work"]);
        assert_eq!(run.rlimits, [(libc::RLIMIT_NOFILE, 64, 64)]);
        assert!(run.progress);
    }

    #[test]
    fn an_argument_or_variable_with_a_nul_is_refused_rather_than_cut_short() {
        let argument = RunPlan::new(RunSpec {
            args: vec!["main.py\0--unsafe".into()],
            ..run_spec(None, &[])
        });
        let variable = RunPlan::new(RunSpec {
            env: vec![("LANG".into(), "C\0X=1".into())],
            ..run_spec(None, &[])
        });
        for result in [argument, variable] {
            let error = result.err().expect("refused");
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn a_setup_failure_code_keeps_plan_run_and_fixed_steps_apart() {
        assert_eq!(At::Plan(3).code(), 3);
        assert_eq!(At::Run(3).code(), RUN_STEP | 3);
        assert_eq!(At::Fixed(Fixed::Exec).code(), FIXED_STEP | 15);
        for (index, fixed) in Fixed::ALL.into_iter().enumerate() {
            // `Started::step_name` finds a fixed step by its place in `ALL`.
            assert_eq!(fixed as usize, index, "{}", fixed.name());
        }
    }
}
