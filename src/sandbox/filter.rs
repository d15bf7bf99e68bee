//! The seccomp filter and the Landlock ruleset that confine a job's process from its `execve` on.
//!
//! This module owns *what* the kernel refuses a job once it runs: the system calls it may not make
//! (seccomp) and the files it may not write (Landlock). Namespaces, mounts, ids and rlimits are
//! [`super::namespace`]'s; this module only builds the two filters and applies them.
//!
//! # Why it is split between parent and child
//!
//! A job is started from the multi-threaded server and, until its `execve`, shares the server's
//! memory (see [`super::namespace`]). It may only make raw system calls (`super::sys`): no
//! allocation (another thread may hold the allocator's lock), no libc wrapper (they write `errno`
//! into a server thread's storage). So everything that allocates happens in the parent:
//!
//! - [`Filters::new`], once at startup: compiles the seccomp programs with `seccompiler` and asks
//!   the kernel for its Landlock ABI.
//! - [`Filters::prepare_landlock`], once per run: creates the Landlock ruleset (an fd) that says
//!   which accesses are restricted.
//! - [`apply_seccomp`] and [`apply_landlock`], in the child before `execve`: only `prctl`, `open`,
//!   `fstat`, `close`, `landlock_add_rule`, `landlock_restrict_self` and `seccomp`, on data built
//!   above. The sandbox's job applies seccomp while its sandbox is made ready, ahead of its run
//!   (attaching a program costs around a hundred microseconds), and Landlock at its run: the
//!   rules name `/work` and `/tmp`, and a Landlock rule on a directory does not reach into a
//!   mount made on it afterwards (a build step binds its `/work` at its run: its job leaves the
//!   refusal of `mount` and `umount2` until then). They do not use `seccompiler::apply_filter`, which is signal-safe
//!   today but builds `io::Error`s and sets `PR_SET_NO_NEW_PRIVS` itself; the raw call keeps the
//!   child's contract obvious.
//!
//! # Seccomp policy
//!
//! Everything is allowed except what a submitted program never needs and what would widen the
//! kernel attack surface a job can reach. Refused with `EPERM` unless noted:
//!
//! | system call | why |
//! | --- | --- |
//! | `ptrace` | inspecting or steering other processes (and the classic seccomp bypass) |
//! | `process_vm_readv`, `process_vm_writev`, `pidfd_getfd` | reading or writing another process's memory, taking its descriptors |
//! | `mount`, `umount2`, `pivot_root`, `chroot` | changing the filesystem view the sandbox built |
//! | `fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`, `open_tree_attr`, `mount_setattr` | the new mount API: the same as `mount`, by other means |
//! | `statmount`, `listmount` | reading the mount table by mount id: the sandbox's own mounts are no business of a job's |
//! | `unshare`, `setns` | new or other namespaces: a job must stay in the ones it was given. `unshare(CLONE_NEWCGROUP)` alone passes: the job's process makes its own cgroup namespace at its run, after this is attached (see `namespace::child`); without capabilities, a job's program is refused it by the kernel, and such a namespace only narrows what it sees |
//! | `clone` with any `CLONE_NEW*` flag | the same via `clone`; plain `fork` and threads stay allowed |
//! | `clone3` (`ENOSYS`) | its flags sit in memory seccomp cannot read; `ENOSYS` makes glibc fall back to `clone`, which is filtered by flags |
//! | `bpf` | loading BPF programs: a large, often-exploited kernel surface |
//! | `perf_event_open` | profiling other code, side channels, a history of kernel bugs |
//! | `userfaultfd` | a tool to win kernel race conditions in exploits |
//! | `keyctl`, `add_key`, `request_key` | kernel keyrings are not namespaced |
//! | `kexec_load`, `kexec_file_load` | replacing the running kernel |
//! | `init_module`, `finit_module`, `delete_module` | loading or removing kernel modules |
//! | `reboot` | rebooting or halting |
//! | `swapon`, `swapoff` | host swap configuration |
//! | `acct` | host process accounting |
//! | `settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex` | the clock is not namespaced |
//! | `syslog` | reading or clearing the kernel log |
//! | `open_by_handle_at`, `name_to_handle_at` | opening files by handle bypasses path-based confinement |
//! | `io_uring_setup`, `io_uring_enter`, `io_uring_register` | system calls that seccomp never sees, and a large kernel surface |
//! | `quotactl`, `quotactl_fd` | filesystem quota administration |
//! | `memfd_secret` | memory the kernel itself unmaps from its direct map: no use to a program under test, and pages no one can inspect |
//! | `sethostname`, `setdomainname` | host identity (no need, even in a UTS namespace) |
//! | `iopl`, `ioperm` (x86-64) | raw I/O port access |
//! | `vhangup` | hanging up a terminal |
//! | `lookup_dcookie` | kernel profiling internals |
//! | `inotify_init`, `inotify_init1`, `inotify_add_watch`, `fanotify_init`, `fanotify_mark` | watching files: the read-only binds are the host's own inodes, so a watch on `/usr/bin` saw every program other jobs and the host started; no job needs to watch what it did not write ([`WATCHING`]) |
//! | `personality`, except `PER_LINUX` and the `0xffffffff` query | flags such as `READ_IMPLIES_EXEC` and `ADDR_NO_RANDOMIZE` weaken exploit mitigations |
//! | `socket` with a family other than `AF_UNIX` (`EAFNOSUPPORT`) | no network; with [`FilterPolicy::allow_network`], other than `AF_UNIX`, `AF_INET`, `AF_INET6`, `AF_NETLINK` (raw packet, Bluetooth, VSOCK, crypto sockets…). `socketpair` stays allowed |
//! | any number above the newest this filter knows (`ENOSYS`) | a call of a newer kernel is refused until it has been looked at, not allowed because no list names it; `ENOSYS`, as from a kernel without it, so programs fall back to older calls |
//! | any call of another ABI (killed) | each `seccompiler` program carries its check of the audit architecture, so i386 `int 0x80` calls kill the process; on x86-64 a number with the x32 bit (`0x4000_0000`, or above) does too, since x32 shares the x86-64 audit architecture and would bypass checks by number |
//!
//! `EAFNOSUPPORT` rather than `EPERM` for sockets because programs (and resolvers) read it as "no
//! such network here" and carry on.
//!
//! `seccompiler` gives one filter a single action on match, so each action is compiled as its
//! own program (`EPERM`, `ENOSYS`, `EAFNOSUPPORT`), and two guards are written by hand (x32 and
//! unknown numbers); they match disjoint system calls. They are then chained into one program
//! ([`chain`]): each one's "allow" jumps to the start of the next, so a call is allowed only if
//! it gets through all of them, and the first that refuses it decides. One program instead of
//! five saves four of what attaching one costs (the kernel's conversion, JIT and cache of each:
//! about 0.1 ms a sandbox), and every system call runs one filter.
//!
//! # Landlock
//!
//! The ruleset handles every filesystem access the kernel's ABI defines (as far as the `landlock`
//! crate knows them), plus all network accesses Landlock can restrict (TCP bind/connect from ABI 4)
//! unless the network is allowed. The child grants read, list and execute beneath the read roots,
//! and everything beneath the writable roots; all else is refused with `EACCES`. No port rule is
//! added, so a handled TCP bind/connect is refused too (a second wall behind the socket filter).
//! Landlock applies on top of the mounts, so a read-only bind stays read-only whatever is granted.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetError,
};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

use super::sys;

/// What a deployment may let jobs do beyond the fixed policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterPolicy {
    /// Allow IP (and netlink) sockets and leave TCP out of the Landlock ruleset. Off by default:
    /// jobs get `AF_UNIX` only.
    pub allow_network: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot compile the seccomp filter: {0}")]
    Seccomp(#[from] BackendError),
    #[error("the seccomp filter has {0} instructions, over the kernel's 4096")]
    TooLong(usize),
    #[error("cannot ask the kernel for its Landlock ABI: {0}")]
    LandlockProbe(io::Error),
    #[error("cannot create the Landlock ruleset: {0}")]
    Landlock(#[from] RulesetError),
    #[error("the kernel reports Landlock ABI {0} but created no ruleset")]
    NoRuleset(u32),
}

/// A step of [`apply_seccomp`] or [`apply_landlock`] that failed, and its errno. Plain data, so that the child can
/// report it through a pipe without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{step} failed: {}", io::Error::from_raw_os_error(*.errno))]
pub struct ChildError {
    pub step: &'static str,
    pub errno: i32,
}

/// The filters of one policy, built in the parent. Shared by every run.
#[derive(Debug)]
pub struct Filters {
    /// Every refusal, in one program (see the module doc).
    seccomp: BpfProgram,
    /// The same without refusing `mount` and `umount2`, for a job that mounts its `/work` at
    /// its run (a build step binding its staging directory) ...
    seccomp_but_mounting: BpfProgram,
    /// ... and installs this afterwards, refusing those two.
    seccomp_mounting: BpfProgram,
    /// `None` when the kernel has no Landlock.
    landlock: Option<LandlockAccess>,
}

/// The Landlock access masks for the kernel's ABI, computed once so that the child only copies
/// integers into `landlock_add_rule`.
#[derive(Clone, Copy, Debug)]
struct LandlockAccess {
    /// What the kernel reported, for [`Filters::landlock_abi`].
    kernel_abi: u32,
    /// The same ABI as the `landlock` crate knows it (capped at the newest it knows).
    abi: ABI,
    /// Every handled filesystem access: what writable roots get.
    all: u64,
    /// Read a file, list a directory, execute: what read roots get.
    read_exec: u64,
    /// The accesses that apply to a non-directory; the kernel refuses a rule on a file that
    /// grants directory accesses, so a root that is a file (`/dev/null`) is masked with this.
    file: u64,
    handle_network: bool,
}

/// `landlock_create_ruleset` flag: return the ABI version instead of creating a ruleset.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
/// `landlock_add_rule` rule type for `struct landlock_path_beneath_attr`.
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;

/// `struct landlock_path_beneath_attr`, which the kernel declares packed.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `struct sock_fprog`, pointing at a `seccompiler` program (whose `sock_filter` has the kernel's
/// layout).
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// Denied with `EPERM` whatever the arguments. Reasons: the table in the module doc.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_quotactl,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    libc::SYS_vhangup,
    libc::SYS_lookup_dcookie,
    libc::SYS_quotactl_fd,
    SYS_OPEN_TREE_ATTR,
    SYS_STATMOUNT,
    SYS_LISTMOUNT,
    libc::SYS_memfd_secret,
    libc::SYS_pidfd_getfd,
];

/// System calls newer than the `libc` crate knows. Every architecture numbers a call added since
/// Linux 5.1 (424) the same.
const SYS_STATMOUNT: libc::c_long = 457;
const SYS_LISTMOUNT: libc::c_long = 458;
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// The newest system call this filter was written against: `file_setattr`, Linux 6.17 (the same
/// number on every architecture). Whatever a newer kernel adds above it is refused with `ENOSYS`
/// until it has been looked at and this moved: see [`unknown_guard`].
const NEWEST_KNOWN: u32 = 469;

/// Denied with `EPERM` like [`DENIED`]: creating an inotify or fanotify instance and adding a
/// watch or mark. A watch on the shared read-only binds (`/usr`, `/lib`, `/etc`: the host's
/// inodes) reports every open of them by other jobs and the host, with its time; the kernel has
/// no way to allow one on `/work` alone. Programs that watch files fall back to polling when
/// they cannot (`tail -f`, glib, watchdog's polling observer).
const WATCHING: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_fanotify_init,
    libc::SYS_fanotify_mark,
];

/// What a build step's job still calls at its run, after the other programs are in: it binds
/// its staging directory as `/work` and unmounts the staging area.
const MOUNTING: &[libc::c_long] = &[libc::SYS_mount, libc::SYS_umount2];

/// Every flag that makes `clone` create a namespace. `CLONE_NEWTIME` is absent on purpose: its bit
/// (0x80) is part of the exit signal in `clone`'s flags, and a time namespace can only be made
/// with `clone3` or `unshare`, both refused.
const CLONE_NEW_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// The `personality` values a job may pass: `PER_LINUX` (what it already has) and the query.
const PERSONALITY_ALLOWED: &[u64] = &[0, 0xffff_ffff];

impl Filters {
    /// Compiles the seccomp programs for this machine's architecture and asks the kernel for its
    /// Landlock ABI. Call once, at startup.
    pub fn new(policy: &FilterPolicy) -> Result<Filters, FilterError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)?;
        let denied = denied_with_eperm()?;
        let mut denied_but_mounting = denied.clone();
        let mounting = MOUNTING
            .iter()
            .map(|nr| (*nr, denied_but_mounting.remove(nr).unwrap_or_default()))
            .collect();
        let seccomp_mounting = compile(mounting, libc::EPERM, arch)?;
        let mut others = vec![
            compile(
                BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
                libc::ENOSYS,
                arch,
            )?,
            compile(
                socket_families(policy.allow_network)?,
                libc::EAFNOSUPPORT,
                arch,
            )?,
        ];
        // After the programs that check the architecture, which kill a call of another ABI
        // before a number of its table means anything here.
        others.push(unknown_guard(NEWEST_KNOWN));
        // First, so that a call with the x32 bit is killed before anything looks at its number.
        #[cfg(target_arch = "x86_64")]
        others.insert(0, x32_guard());
        let with = |eperm: BpfProgram| {
            let mut programs = others.clone();
            programs.push(eperm);
            chain(&programs)
        };
        let seccomp = with(compile(denied, libc::EPERM, arch)?)?;
        let seccomp_but_mounting = with(compile(denied_but_mounting, libc::EPERM, arch)?)?;
        let landlock = kernel_landlock_abi()?
            .map(|kernel_abi| LandlockAccess::new(kernel_abi, !policy.allow_network));
        Ok(Filters {
            seccomp,
            seccomp_but_mounting,
            seccomp_mounting,
            landlock,
        })
    }

    /// The kernel's Landlock ABI version; `None` when it has no Landlock (not built in, or not
    /// enabled at boot), in which case a run's files are confined by its mounts alone.
    pub fn landlock_abi(&self) -> Option<u32> {
        self.landlock.map(|access| access.kernel_abi)
    }

    /// Creates one run's Landlock ruleset, for [`apply_landlock`] to fill and enforce. Its fd is
    /// close-on-exec; drop it once the child has been started. `None` if the kernel has no
    /// Landlock.
    pub fn prepare_landlock(&self) -> Result<Option<OwnedFd>, FilterError> {
        let Some(access) = self.landlock else {
            return Ok(None);
        };
        // A hard requirement: the accesses asked for are exactly those of the kernel's ABI, so
        // anything the crate would silently drop in its default best-effort mode is a bug here.
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(access.abi))?;
        let network = AccessNet::from_all(access.abi);
        if access.handle_network && !network.is_empty() {
            ruleset = ruleset.handle_access(network)?;
        }
        let fd: Option<OwnedFd> = ruleset.create()?.into();
        fd.map(Some)
            .ok_or(FilterError::NoRuleset(access.kernel_abi))
    }
}

impl LandlockAccess {
    fn new(kernel_abi: u32, handle_network: bool) -> LandlockAccess {
        // The crate only offers this conversion for tests, preferring ABIs fixed at build time.
        // Here following the running kernel is the point: a job must not keep a right that the
        // kernel could take away, and newer rights are granted in writable roots anyway.
        let abi = ABI::from(i32::try_from(kernel_abi).unwrap_or(i32::MAX));
        LandlockAccess {
            kernel_abi,
            abi,
            all: AccessFs::from_all(abi).bits(),
            read_exec: AccessFs::from_read(abi).bits(),
            file: AccessFs::from_file(abi).bits(),
            handle_network,
        }
    }
}

/// Which seccomp programs are installed: see [`Filters::seccomp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Everything, at once.
    All,
    /// All but the refusal of `mount` and `umount2`, for a job that still mounts ...
    AllButMounting,
    /// ... and that refusal, once it is done.
    Mounting,
}

/// Sets `PR_SET_NO_NEW_PRIVS` and installs the seccomp programs of `stage`, for good. Only raw
/// system calls: safe between `clone`/`fork` and `execve` in a multi-threaded program. Nothing
/// [`apply_landlock`] and the rest of a job's start need is refused by the programs.
///
/// # Safety
///
/// Call it in a child that is about to `execve` (after `clone` or `fork`) and in which no other
/// thread runs: every restriction here applies to the calling thread and what it starts
/// afterwards, so elsewhere it would leave other threads unconfined and confine the caller for
/// the rest of its life.
pub unsafe fn apply_seccomp(filters: &Filters, stage: Stage) -> Result<(), ChildError> {
    let fail = |step| move |errno| ChildError { step, errno };
    // SAFETY: integer arguments only.
    unsafe { sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1) }
        .map_err(fail("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    let program = match stage {
        Stage::All => &filters.seccomp,
        Stage::AllButMounting => &filters.seccomp_but_mounting,
        Stage::Mounting => &filters.seccomp_mounting,
    };
    let fprog = SockFprog {
        // No longer than the kernel's 4096 instructions: see `chain`.
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr(),
    };
    // SAFETY: `fprog` points at a live program; the kernel copies it before returning.
    unsafe { sys::seccomp_set_filter((&raw const fprog).cast()) }
        .map(drop)
        .map_err(fail("seccomp(SECCOMP_SET_MODE_FILTER)"))
}

/// Fills the Landlock ruleset from `prepare_landlock` with the roots and enforces it, for good.
/// Only raw system calls. Call it after [`apply_seccomp`], which sets the `PR_SET_NO_NEW_PRIVS`
/// that Landlock needs from a process without `CAP_SYS_ADMIN`.
///
/// `read_exec_roots` get read, list and execute beneath them; `writable_roots` every access. Both
/// are paths in the child's own root (after `pivot_root`); a root may also be a file, such as
/// `/dev/null`. A root that cannot be opened fails the call rather than being skipped. A rule
/// holds beneath the mount a root names when the rule is added, not in one mounted on it later.
///
/// Landlock is all or nothing: a `landlock` fd while the kernel has none, or none while it has
/// one, is refused (`EINVAL`) rather than running the job with less confinement than planned.
///
/// # Safety
///
/// As [`apply_seccomp`]. `landlock` must be the (still open) fd returned by
/// [`Filters::prepare_landlock`] on the same `filters`.
pub unsafe fn apply_landlock(
    filters: &Filters,
    landlock: Option<RawFd>,
    read_exec_roots: &[&CStr],
    writable_roots: &[&CStr],
) -> Result<(), ChildError> {
    let fail = |step| move |errno| ChildError { step, errno };
    match (filters.landlock, landlock) {
        (Some(access), Some(ruleset)) => {
            for root in read_exec_roots {
                add_path_rule(ruleset, root, access.read_exec, access.file)?;
            }
            for root in writable_roots {
                add_path_rule(ruleset, root, access.all, access.file)?;
            }
            // SAFETY: integer arguments only.
            unsafe { sys::landlock_restrict_self(ruleset) }
                .map(drop)
                .map_err(fail("landlock_restrict_self"))
        }
        (None, None) => Ok(()),
        _ => Err(ChildError {
            step: "match the Landlock ruleset to the kernel",
            errno: libc::EINVAL,
        }),
    }
}

/// Adds a `PATH_BENEATH` rule granting `allowed` beneath `path` (only its file accesses if `path`
/// is not a directory). Raw calls only; the path's fd is closed whatever happens.
fn add_path_rule(
    ruleset: RawFd,
    path: &CStr,
    allowed: u64,
    file_accesses: u64,
) -> Result<(), ChildError> {
    // O_PATH: the rule needs an fd naming the inode, not read permission on it.
    // SAFETY: `path` is NUL-terminated by construction.
    let fd = unsafe { sys::open(path, libc::O_PATH | libc::O_CLOEXEC, 0) }.map_err(|errno| {
        ChildError {
            step: "open a Landlock root",
            errno,
        }
    })?;
    let result = add_rule_for_fd(ruleset, fd, allowed, file_accesses);
    // SAFETY: closes the fd opened above, which nothing else holds.
    unsafe { sys::close(fd) };
    result
}

fn add_rule_for_fd(
    ruleset: RawFd,
    fd: RawFd,
    allowed: u64,
    file_accesses: u64,
) -> Result<(), ChildError> {
    // SAFETY: `stat` is plain data, for which all zeroes is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a live, writable buffer of the right type.
    unsafe { sys::fstat(fd, &mut stat) }.map_err(|errno| ChildError {
        step: "fstat a Landlock root",
        errno,
    })?;
    let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let attr = PathBeneathAttr {
        allowed_access: if is_dir {
            allowed
        } else {
            allowed & file_accesses
        },
        parent_fd: fd,
    };
    // SAFETY: `attr` is live for the call and has the kernel's layout.
    unsafe {
        sys::landlock_add_rule(
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            (&raw const attr).cast(),
        )
    }
    .map_err(|errno| ChildError {
        step: "landlock_add_rule",
        errno,
    })?;
    Ok(())
}

/// Asks the kernel for its Landlock ABI version. ENOSYS (not built in) and EOPNOTSUPP (not enabled
/// at boot) mean no Landlock; any other error (say, an outer seccomp filter) is reported rather
/// than taken for "no Landlock", which would quietly drop filesystem confinement.
fn kernel_landlock_abi() -> Result<Option<u32>, FilterError> {
    // SAFETY: with no attribute, size 0 and the VERSION flag the kernel only returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0 as libc::size_t,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if version > 0 {
        return Ok(Some(u32::try_from(version).unwrap_or(u32::MAX)));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOSYS | libc::EOPNOTSUPP) => Ok(None),
        _ => Err(FilterError::LandlockProbe(error)),
    }
}

/// One seccomp program: allow everything except `rules`, which fail with `errno`.
fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, FilterError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno.unsigned_abs()),
        arch,
    )?;
    Ok(BpfProgram::try_from(filter)?)
}

/// One program doing what `programs` installed one after the other would: each one's
/// `RET ALLOW` becomes a jump to the start of the next (classic BPF jumps only forward, so
/// nothing else changes), and the last one's stays. The first to return anything else decides,
/// which matches the kernel's strictest-wins rule as long as the programs refuse disjoint calls.
fn chain(programs: &[BpfProgram]) -> Result<BpfProgram, FilterError> {
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    let mut chained = Vec::new();
    for (index, program) in programs.iter().enumerate() {
        let last = index + 1 == programs.len();
        for (at, instruction) in program.iter().enumerate() {
            let allow = instruction.code == RET_K && instruction.k == libc::SECCOMP_RET_ALLOW;
            chained.push(match allow && !last {
                true => sock_filter {
                    code: JA,
                    jt: 0,
                    jf: 0,
                    // Over the rest of this program: lands on the next one's first instruction.
                    k: (program.len() - at - 1) as u32,
                },
                false => instruction.clone(),
            });
        }
    }
    // The kernel's limit (BPF_MAXINSNS).
    if chained.len() > 4096 {
        return Err(FilterError::TooLong(chained.len()));
    }
    Ok(chained)
}

/// The `EPERM` program's rules: the unconditional list, `clone` with a namespace flag (one rule
/// per flag, since seccompiler's rules are OR-ed and its conditions AND-ed), `personality`
/// with anything but the allowed values, and `unshare` of anything but a cgroup namespace.
fn denied_with_eperm() -> Result<BTreeMap<i64, Vec<SeccompRule>>, FilterError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .chain(WATCHING)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // Only the low 32 bits of clone's flags carry flags (the kernel truncates them), hence Dword.
    let clone_new = CLONE_NEW_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::from(flag.unsigned_abs());
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_new);
    rules.insert(
        libc::SYS_personality,
        vec![all_differ_from(PERSONALITY_ALLOWED)?],
    );
    rules.insert(
        libc::SYS_unshare,
        vec![all_differ_from(&[u64::from(
            libc::CLONE_NEWCGROUP.unsigned_abs(),
        )])?],
    );
    Ok(rules)
}

/// The `EAFNOSUPPORT` program's rule: `socket` with a family outside the allowed ones.
fn socket_families(allow_network: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, FilterError> {
    let families: &[libc::c_int] = if allow_network {
        &[
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ]
    } else {
        &[libc::AF_UNIX]
    };
    let families: Vec<u64> = families
        .iter()
        .map(|&family| u64::from(family.unsigned_abs()))
        .collect();
    Ok(BTreeMap::from([(
        libc::SYS_socket,
        vec![all_differ_from(&families)?],
    )]))
}

/// A rule matching when the first argument (an `int`, so compared on 32 bits) is none of `values`.
fn all_differ_from(values: &[u64]) -> Result<SeccompRule, FilterError> {
    let conditions = values
        .iter()
        .map(|&value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SeccompRule::new(conditions)?)
}

/// Refuses with `ENOSYS` every system call number above `newest` ([`NEWEST_KNOWN`]): a call a
/// newer kernel adds is refused until it has been looked at, rather than allowed because no list
/// names it.
/// `ENOSYS` is what a kernel without the call answers, so a program that probes for it (as
/// glibc does for `clone3`) falls back to the older calls this filter knows. seccompiler can
/// only match exact numbers, hence these hand-written instructions.
fn unknown_guard(newest: u32) -> BpfProgram {
    vec![
        instruction(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, NR_OFFSET),
        instruction(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, 0, 1, newest),
        instruction(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS.unsigned_abs(),
        ),
        instruction(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// `offsetof(struct seccomp_data, nr)`.
const NR_OFFSET: u32 = 0;

/// One classic BPF instruction.
fn instruction(code: u32, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter {
        // BPF opcodes fit in 16 bits; libc declares them as u32.
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Kills the process on any system call number with the x32 bit set (or above it: the negative
/// numbers, which no real program uses). x32 calls carry the x86-64 audit architecture, so
/// seccompiler's architecture check lets them through, and every check by number would then be
/// bypassed by adding 0x4000_0000 on kernels built with x32 support. seccompiler can only match
/// exact numbers, hence these hand-written instructions.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    vec![
        instruction(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, NR_OFFSET),
        instruction(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            0,
            1,
            X32_SYSCALL_BIT,
        ),
        instruction(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_KILL_PROCESS,
        ),
        instruction(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::ffi::CString;
    use std::fmt::Write as _;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::path::Path;
    use std::process::{Command, Output};
    use std::sync::Arc;

    /// Never `python3` on PATH: it may be a slow shim.
    const PYTHON: &str = "/usr/bin/python3";

    fn filters(allow_network: bool) -> Arc<Filters> {
        Arc::new(Filters::new(&FilterPolicy { allow_network }).expect("build the filters"))
    }

    /// Whether the kernel has Landlock; if not, `test` skips its Landlock assertions.
    fn landlock_or_skip(test: &str, filters: &Filters) -> bool {
        let available = filters.landlock_abi().is_some();
        if !available {
            crate::testing::skip(test, "this kernel has no Landlock");
        }
        available
    }

    /// Both filters, in the sandbox's order.
    ///
    /// # Safety
    ///
    /// As [`apply_landlock`].
    unsafe fn apply_both(
        filters: &Filters,
        landlock: Option<RawFd>,
        read_exec_roots: &[&CStr],
        writable_roots: &[&CStr],
    ) -> Result<(), ChildError> {
        // SAFETY: passed on from the caller.
        unsafe {
            apply_seccomp(filters, Stage::All)?;
            apply_landlock(filters, landlock, read_exec_roots, writable_roots)
        }
    }

    /// Runs `program` under the filters, with `/` readable and executable and `writable` (plus
    /// `/dev/null`) writable: the filters alone, without the sandbox's namespaces.
    fn run_filtered(
        filters: &Arc<Filters>,
        writable: &Path,
        program: &str,
        args: &[&str],
    ) -> Output {
        let ruleset = filters
            .prepare_landlock()
            .expect("prepare the Landlock ruleset");
        let ruleset_fd = ruleset.as_ref().map(AsRawFd::as_raw_fd);
        let writable = CString::new(writable.as_os_str().as_bytes()).expect("path without NUL");
        let filters = Arc::clone(filters);
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: the hook only makes raw system calls on data built before the fork.
        unsafe {
            command.pre_exec(move || {
                // No controlling terminal: the vhangup probe can then never hang up a real one,
                // even if the filter were to let it through.
                libc::setsid();
                apply_both(
                    &filters,
                    ruleset_fd,
                    &[c"/"],
                    &[writable.as_c_str(), c"/dev/null"],
                )
                .map_err(|e| io::Error::from_raw_os_error(e.errno))
            });
        }
        let output = command.output().expect("start the filtered program");
        drop(ruleset);
        output
    }

    /// Runs Python code under the filters and returns its output lines as `key → rest`, after
    /// checking that it exited cleanly.
    fn python(filters: &Arc<Filters>, writable: &Path, code: &str) -> BTreeMap<String, String> {
        let output = run_filtered(filters, writable, PYTHON, &["-I", "-S", "-c", code]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "python failed ({}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(key, rest)| (key.to_owned(), rest.to_owned()))
            .collect()
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("create a temporary directory")
    }

    /// Calls raw system calls from Python and prints `name result errno` for each.
    const PROBE_PRELUDE: &str = "\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    print(name, r, ctypes.get_errno())
";

    /// Every system call denied outright, by the spec (not by the module's table). Each is called
    /// with all arguments -1, which would make it fail with something else than EPERM (EINVAL,
    /// EFAULT, EBADF, ESRCH, ENOSYS) were it let through, and harmlessly so.
    const DENIED_BY_SPEC: &[(&str, libc::c_long)] = &[
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("chroot", libc::SYS_chroot),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("acct", libc::SYS_acct),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("adjtimex", libc::SYS_adjtimex),
        ("syslog", libc::SYS_syslog),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("quotactl", libc::SYS_quotactl),
        ("sethostname", libc::SYS_sethostname),
        ("setdomainname", libc::SYS_setdomainname),
        #[cfg(target_arch = "x86_64")]
        ("iopl", libc::SYS_iopl),
        #[cfg(target_arch = "x86_64")]
        ("ioperm", libc::SYS_ioperm),
        ("vhangup", libc::SYS_vhangup),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("quotactl_fd", libc::SYS_quotactl_fd),
        ("open_tree_attr", 467),
        ("statmount", 457),
        ("listmount", 458),
        ("memfd_secret", libc::SYS_memfd_secret),
        ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ];

    /// Watching files, denied for what a watch on the shared binds shows of other jobs.
    const WATCHING_BY_SPEC: &[(&str, libc::c_long)] = &[
        #[cfg(target_arch = "x86_64")]
        ("inotify_init", libc::SYS_inotify_init),
        ("inotify_init1", libc::SYS_inotify_init1),
        ("inotify_add_watch", libc::SYS_inotify_add_watch),
        ("fanotify_init", libc::SYS_fanotify_init),
        ("fanotify_mark", libc::SYS_fanotify_mark),
    ];

    /// Every namespace flag `clone` must not be given.
    const CLONE_NEW_BY_SPEC: &[(&str, libc::c_int)] = &[
        ("NEWNS", libc::CLONE_NEWNS),
        ("NEWCGROUP", libc::CLONE_NEWCGROUP),
        ("NEWUTS", libc::CLONE_NEWUTS),
        ("NEWIPC", libc::CLONE_NEWIPC),
        ("NEWUSER", libc::CLONE_NEWUSER),
        ("NEWPID", libc::CLONE_NEWPID),
        ("NEWNET", libc::CLONE_NEWNET),
    ];

    #[test]
    fn both_policies_build_and_agree_on_landlock() {
        for allow_network in [false, true] {
            let filters = filters(allow_network);
            let ruleset = filters
                .prepare_landlock()
                .expect("prepare the Landlock ruleset");
            assert_eq!(ruleset.is_some(), filters.landlock_abi().is_some());
        }
    }

    /// `struct landlock_net_port_attr`.
    #[repr(C, packed)]
    struct NetPortAttr {
        allowed_access: u64,
        port: u64,
    }

    /// The kernel only takes a TCP port rule into a ruleset that handles TCP: so whether it does
    /// shows whether the ruleset restricts the network.
    #[test]
    fn the_ruleset_handles_tcp_unless_the_network_is_allowed() {
        const LANDLOCK_RULE_NET_PORT: libc::c_ulong = 2;
        for allow_network in [false, true] {
            let filters = filters(allow_network);
            const TEST: &str = "the_ruleset_handles_tcp_unless_the_network_is_allowed";
            if !landlock_or_skip(TEST, &filters) {
                return;
            }
            if filters.landlock_abi() < Some(4) {
                crate::testing::skip(TEST, "Landlock ABI < 4 cannot restrict TCP");
                return;
            }
            let ruleset = filters
                .prepare_landlock()
                .expect("prepare")
                .expect("a ruleset");
            let attr = NetPortAttr {
                allowed_access: landlock::BitFlags::from(AccessNet::ConnectTcp).bits(),
                port: 80,
            };
            // SAFETY: `attr` is live for the call and has the kernel's layout.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    libc::c_long::from(ruleset.as_raw_fd()),
                    LANDLOCK_RULE_NET_PORT,
                    &attr as *const NetPortAttr,
                    0 as libc::c_ulong,
                )
            };
            let handled = rc == 0;
            assert_eq!(handled, !allow_network, "{}", io::Error::last_os_error());
        }
    }

    #[test]
    fn refuses_the_denied_system_calls() {
        let writable = tempdir();
        let mut code = PROBE_PRELUDE.to_owned();
        for (name, nr) in DENIED_BY_SPEC.iter().chain(WATCHING_BY_SPEC) {
            writeln!(code, "probe('{name}', {nr}, -1, -1, -1, -1, -1, -1)").expect("write");
        }
        // CLONE_THREAD without CLONE_SIGHAND makes clone fail with EINVAL, so no process is
        // created even if a flag got through.
        for (flag, value) in CLONE_NEW_BY_SPEC {
            let flags = value | libc::CLONE_THREAD;
            writeln!(
                code,
                "probe('clone_{flag}', {}, {flags}, 0, 0, 0, 0)",
                libc::SYS_clone
            )
            .expect("write");
        }
        writeln!(code, "probe('clone3', {}, -1, -1)", libc::SYS_clone3).expect("write");
        let personality = libc::SYS_personality;
        writeln!(
            code,
            "probe('personality_norandom', {personality}, 0x0040000)"
        )
        .expect("write");
        writeln!(
            code,
            "probe('personality_query', {personality}, 0xffffffff)"
        )
        .expect("write");
        writeln!(code, "probe('personality_linux', {personality}, 0)").expect("write");
        // The brief's own example, through libc's wrapper.
        code.push_str("ctypes.set_errno(0); print('unshare_user', libc.unshare(0x10000000), ctypes.get_errno())\n");
        // What the job's process does for itself at its run: let through (as root here, the
        // kernel makes the namespace), and the same flag with another refused.
        let newcgroup = libc::CLONE_NEWCGROUP;
        let unshare = libc::SYS_unshare;
        writeln!(code, "probe('unshare_cgroup', {unshare}, {newcgroup})").expect("write");
        writeln!(
            code,
            "probe('unshare_cgroup_ipc', {unshare}, {})",
            newcgroup | libc::CLONE_NEWIPC
        )
        .expect("write");

        let results = python(&filters(false), writable.path(), &code);
        let eperm = format!("-1 {}", libc::EPERM);
        let mut wrong = Vec::new();
        let expected = DENIED_BY_SPEC
            .iter()
            .chain(WATCHING_BY_SPEC)
            .map(|(name, _)| ((*name).to_owned(), eperm.clone()))
            .chain(
                CLONE_NEW_BY_SPEC
                    .iter()
                    .map(|(flag, _)| (format!("clone_{flag}"), eperm.clone())),
            )
            .chain([
                ("clone3".to_owned(), format!("-1 {}", libc::ENOSYS)),
                ("personality_norandom".to_owned(), eperm.clone()),
                ("personality_query".to_owned(), "0 0".to_owned()),
                ("personality_linux".to_owned(), "0 0".to_owned()),
                ("unshare_user".to_owned(), eperm.clone()),
                ("unshare_cgroup".to_owned(), "0 0".to_owned()),
                ("unshare_cgroup_ipc".to_owned(), eperm.clone()),
            ]);
        for (name, want) in expected {
            let got = results
                .get(&name)
                .map(String::as_str)
                .unwrap_or("(missing)");
            if got != want {
                wrong.push(format!("{name}: got {got}, want {want}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "system calls not filtered as specified:\n{}",
            wrong.join("\n")
        );
    }

    /// A number this filter does not know, as a newer kernel's call would have, fails as on a
    /// kernel without it, and the program goes on; the newest known and older ones still run.
    #[test]
    fn refuses_numbers_above_the_newest_known_with_enosys() {
        let writable = tempdir();
        let mut code = PROBE_PRELUDE.to_owned();
        for nr in [NEWEST_KNOWN + 1, NEWEST_KNOWN + 100, 0x3fff_ffff] {
            writeln!(code, "probe('nr_{nr}', {nr}, -1, -1, -1, -1, -1, -1)").expect("write");
        }
        writeln!(code, "probe('getpid', {})", libc::SYS_getpid).expect("write");
        let results = python(&filters(false), writable.path(), &code);
        let enosys = format!("-1 {}", libc::ENOSYS);
        for nr in [NEWEST_KNOWN + 1, NEWEST_KNOWN + 100, 0x3fff_ffff] {
            assert_eq!(
                results.get(&format!("nr_{nr}")),
                Some(&enosys),
                "{results:?}"
            );
        }
        let getpid = results.get("getpid").expect("getpid probed");
        assert!(
            getpid.ends_with(" 0") && !getpid.starts_with('-'),
            "{getpid}"
        );
    }

    /// What the newest known call itself answers in a child under the guard for `newest`: the
    /// kernel's error (bad arguments) if it is let through, the guard's ENOSYS if not.
    fn newest_known_under_guard(newest: u32) -> Option<i32> {
        let program = unknown_guard(newest);
        let mut command = Command::new("/bin/true");
        // SAFETY: the hook makes only system calls, on a program built before the fork.
        unsafe {
            command.pre_exec(move || {
                let fprog = SockFprog {
                    len: program.len() as libc::c_ushort,
                    filter: program.as_ptr(),
                };
                sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(io::Error::from_raw_os_error)?;
                sys::seccomp_set_filter((&raw const fprog).cast())
                    .map_err(io::Error::from_raw_os_error)?;
                // `file_setattr` on no file: EBADF or EFAULT from a kernel that has it.
                let nr = libc::c_long::from(NEWEST_KNOWN);
                match libc::syscall(nr, -1, 0, 0, 0, 0) {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            });
        }
        command.status().err().and_then(|e| e.raw_os_error())
    }

    /// The numbers above the newest known fail as the kernel fails a call it lacks, so only a
    /// call this kernel has shows the guard at work: the newest known, under a guard that knows
    /// one fewer.
    #[test]
    fn the_guard_refuses_a_call_the_kernel_has_once_it_is_above_the_newest() {
        let let_through = newest_known_under_guard(NEWEST_KNOWN);
        if let_through == Some(libc::ENOSYS) {
            crate::testing::skip(
                "the_guard_refuses_a_call_the_kernel_has_once_it_is_above_the_newest",
                "this kernel predates the newest known system call",
            );
            return;
        }
        assert!(let_through.is_some(), "file_setattr(-1, NULL) succeeded");
        assert_eq!(
            newest_known_under_guard(NEWEST_KNOWN - 1),
            Some(libc::ENOSYS)
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kills_on_x32_system_calls() {
        let writable = tempdir();
        // getpid (39) through the x32 ABI. Without the guard this kernel would answer ENOSYS (or
        // the pid, with x32 built in) and the script would go on to print.
        let code = format!("{PROBE_PRELUDE}probe('x32_getpid', 0x40000000 | 39)\n");
        let output = run_filtered(
            &filters(false),
            writable.path(),
            PYTHON,
            &["-I", "-S", "-c", &code],
        );
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGSYS),
            "status: {}",
            output.status
        );
        assert!(
            output.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    const SOCKETS: &str = "\
import socket
def attempt(name, family, kind):
    try:
        socket.socket(family, kind).close()
        print(name, 'ok')
    except OSError as e:
        print(name, e.errno)
attempt('inet', socket.AF_INET, socket.SOCK_STREAM)
attempt('inet6', socket.AF_INET6, socket.SOCK_DGRAM)
attempt('netlink', socket.AF_NETLINK, socket.SOCK_RAW)
attempt('packet', socket.AF_PACKET, socket.SOCK_RAW)
attempt('unix', socket.AF_UNIX, socket.SOCK_STREAM)
a, b = socket.socketpair()
a.sendall(b'x')
print('socketpair', b.recv(1).decode())
";

    #[test]
    fn without_network_only_unix_sockets() {
        let writable = tempdir();
        let results = python(&filters(false), writable.path(), SOCKETS);
        let refused = libc::EAFNOSUPPORT.to_string();
        for family in ["inet", "inet6", "netlink", "packet"] {
            assert_eq!(results.get(family), Some(&refused), "{family}: {results:?}");
        }
        assert_eq!(
            results.get("unix").map(String::as_str),
            Some("ok"),
            "{results:?}"
        );
        assert_eq!(
            results.get("socketpair").map(String::as_str),
            Some("x"),
            "{results:?}"
        );
    }

    #[test]
    fn with_network_ip_sockets_but_no_raw_packets() {
        let writable = tempdir();
        let results = python(&filters(true), writable.path(), SOCKETS);
        for family in ["inet", "netlink", "unix"] {
            assert_eq!(
                results.get(family).map(String::as_str),
                Some("ok"),
                "{family}: {results:?}"
            );
        }
        // As root, without the filter, this would succeed.
        let refused = libc::EAFNOSUPPORT.to_string();
        assert_eq!(results.get("packet"), Some(&refused), "{results:?}");
    }

    #[test]
    fn landlock_confines_writes_to_the_writable_roots() {
        let filters = filters(false);
        if !landlock_or_skip("landlock_confines_writes_to_the_writable_roots", &filters) {
            return;
        }
        let inside = tempdir();
        let outside = tempdir();
        let existing = outside.path().join("existing");
        std::fs::write(&existing, "keep").expect("write a file outside");
        let code = format!(
            "\
import os
inside, outside = {inside:?}, {outside:?}
def attempt(name, f):
    try:
        f()
        print(name, 'ok')
    except OSError as e:
        print(name, e.errno)
def write(path):
    with open(path, 'w') as f:
        f.write('x')
attempt('write_inside', lambda: write(inside + '/new'))
attempt('mkdir_inside', lambda: os.mkdir(inside + '/dir'))
attempt('write_outside', lambda: write(outside + '/new'))
attempt('mkdir_outside', lambda: os.mkdir(outside + '/dir'))
attempt('truncate_outside', lambda: os.truncate(outside + '/existing', 0))
attempt('unlink_outside', lambda: os.unlink(outside + '/existing'))
attempt('read_hostname', lambda: open('/etc/hostname').read())
attempt('dev_null', lambda: write('/dev/null'))
",
            inside = inside.path().to_str().expect("UTF-8 path"),
            outside = outside.path().to_str().expect("UTF-8 path"),
        );
        let results = python(&filters, inside.path(), &code);
        let eacces = libc::EACCES.to_string();
        for name in ["write_inside", "mkdir_inside", "read_hostname", "dev_null"] {
            assert_eq!(
                results.get(name).map(String::as_str),
                Some("ok"),
                "{name}: {results:?}"
            );
        }
        for name in [
            "write_outside",
            "mkdir_outside",
            "truncate_outside",
            "unlink_outside",
        ] {
            assert_eq!(results.get(name), Some(&eacces), "{name}: {results:?}");
        }
        assert_eq!(
            std::fs::read_to_string(&existing).expect("read back"),
            "keep"
        );
        assert!(!outside.path().join("new").exists());

        // A shell too: it executes from a read root and writes into the writable one.
        let script = format!(
            "echo hi > {inside}/sh.txt && cat /etc/hostname > /dev/null && ! echo no 2>/dev/null > {outside}/sh.txt",
            inside = inside.path().display(),
            outside = outside.path().display(),
        );
        let output = run_filtered(&filters, inside.path(), "/bin/sh", &["-c", &script]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(inside.path().join("sh.txt")).expect("read"),
            "hi\n"
        );
        assert!(!outside.path().join("sh.txt").exists());
    }

    #[test]
    fn fork_threads_and_subprocesses_still_work() {
        let writable = tempdir();
        let code = "\
import os, subprocess, threading
out = []
t = threading.Thread(target=lambda: out.append(21 * 2))
t.start()
t.join()
print('thread', out[0])
pid = os.fork()
if pid == 0:
    os._exit(7)
print('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print('subprocess', subprocess.run(['/bin/sh', '-c', 'exit 3']).returncode)
";
        let results = python(&filters(false), writable.path(), code);
        assert_eq!(
            results.get("thread").map(String::as_str),
            Some("42"),
            "{results:?}"
        );
        assert_eq!(
            results.get("fork").map(String::as_str),
            Some("7"),
            "{results:?}"
        );
        assert_eq!(
            results.get("subprocess").map(String::as_str),
            Some("3"),
            "{results:?}"
        );
    }

    /// Runs `/bin/true` after both filters with the given Landlock fd and writable root, and
    /// returns the errno it failed with if the failing step is `step` (ENOTRECOVERABLE if another
    /// step failed, None if nothing did).
    fn failing_errno(
        filters: &Arc<Filters>,
        landlock: Option<RawFd>,
        writable: &'static CStr,
        step: &'static str,
    ) -> Option<i32> {
        let filters = Arc::clone(filters);
        let mut command = Command::new("/bin/true");
        // SAFETY: the hook only makes raw system calls on data built before the fork.
        unsafe {
            command.pre_exec(move || {
                apply_both(&filters, landlock, &[c"/"], &[writable]).map_err(|e| {
                    let errno = if e.step == step {
                        e.errno
                    } else {
                        libc::ENOTRECOVERABLE
                    };
                    io::Error::from_raw_os_error(errno)
                })
            });
        }
        match command.status() {
            Ok(status) => {
                assert!(status.success(), "{status}");
                None
            }
            Err(e) => e.raw_os_error(),
        }
    }

    #[test]
    fn the_child_reports_the_failing_step() {
        let filters = filters(false);
        if !landlock_or_skip("the_child_reports_the_failing_step", &filters) {
            return;
        }
        let ruleset = filters
            .prepare_landlock()
            .expect("prepare")
            .expect("a ruleset");
        let fd = Some(ruleset.as_raw_fd());
        assert_eq!(
            failing_errno(&filters, fd, c"/tmp", "open a Landlock root"),
            None
        );
        assert_eq!(
            failing_errno(&filters, fd, c"/nonexistent/kiln", "open a Landlock root"),
            Some(libc::ENOENT)
        );
        // Landlock available but no ruleset passed: refused, not silently skipped.
        assert_eq!(
            failing_errno(
                &filters,
                None,
                c"/tmp",
                "match the Landlock ruleset to the kernel"
            ),
            Some(libc::EINVAL)
        );
    }
}
