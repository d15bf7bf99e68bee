//! The sandbox: what confines a job's process. Submitted code is hostile by assumption; it runs in
//! its own user, pid, mount, network, IPC, UTS and cgroup namespaces, as an unprivileged uid that
//! maps to an unprivileged host uid, in a minimal read-only root with a private `/work` and `/tmp`,
//! under seccomp and Landlock filters, rlimits and (where the host has them) cgroup limits.
//!
//! This module decides *what* a run gets (binds, ids, limits), probes at startup what the host
//! supports, and keeps sandboxes started ahead of their runs (one per worker): everything that
//! does not depend on the run — namespaces, the root, `/proc`, `/dev`, cgroups — is built while
//! the previous job runs, so a start only adds the run's own files and limits. `namespace` does
//! the starting, `filter` builds the seccomp and Landlock filters, `cgroup` gives each run its
//! own cgroup, `sys` is the raw system calls of the code between `clone3` and `execve`.
//!
//! Those parts are private. From outside, a [`Sandbox`] launches runs and each run is the
//! [`Sandboxed`] handle it returns, whose methods are the only way to its pipes, its end and its
//! usage: how init reports a run's end, for one, is known in this module alone.
//!
//! `--sandbox none` turns all of this off for development on hosts that cannot do it: jobs then
//! run as plain subprocesses of the server, with rlimits only.

mod cgroup;
mod filter;
mod namespace;
mod netns;
mod sandboxed;
mod sys;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use serde::Serialize;

use crate::job::Limits;
pub use cgroup::Support as CgroupSupport;
use cgroup::{CgroupLimits, Cgroups, JobCgroup};
pub use filter::FilterError;
use filter::{FilterPolicy, Filters};
use namespace::{
    HostIds, Plan, RunPlan, RunSpec, SandboxSpec, Skeleton, Started, TMPFS_MOUNTS, TmpfsSizes,
};
pub use namespace::{WorkFile, WorkMount, is_work_files};
pub use sandboxed::{Ending, Exit, Sandboxed};

/// What the operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every namespace including a user namespace, seccomp, Landlock where the kernel has it,
    /// cgroups where available. The default.
    Full,
    /// The same without a user namespace, for hosts that do not allow them: needs root, and
    /// the job runs directly as an unprivileged host uid.
    Namespaces,
    /// No isolation at all: development only.
    None,
}

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub mode: Mode,
    /// Directories and files bound read-only into every sandbox besides the defaults.
    pub extra_binds: Vec<PathBuf>,
    /// First host uid/gid of the range jobs map to: the namespace's root maps to this one, each
    /// run's job uid to one of the next [`UID_RANGE`].
    pub uid_base: u32,
    /// How many sandboxes to keep started ahead of their runs: one per worker keeps every
    /// worker's next start off the path of its job.
    pub ready: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            mode: Mode::Full,
            extra_binds: Vec::new(),
            uid_base: 200_000,
            ready: 2,
        }
    }
}

/// Whether a start makes the next run's sandbox ahead of it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ahead {
    Replenish,
    Nothing,
}

/// What [`Sandbox::self_test`] runs: present on every host, and it only exits.
pub const SELF_TEST_PROGRAM: &str = "/bin/true";

/// How long the self-test may take: a start takes milliseconds; this allows for a loaded host.
const SELF_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What to do when the sandbox cannot start a run on a host where kiln does not run as root:
/// mapping the sandbox's range of host uids needs root, whatever else the host allows.
pub const UNPRIVILEGED_FIX: &str = "run kiln as root, or pass --sandbox none for development \
                                    (unsandboxed: submitted code runs with your privileges)";

/// Whether this process runs as root, without which only `--sandbox none` can run jobs.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How many distinct host uids runs rotate through.
pub const UID_RANGE: u32 = 10_000;

/// What runtimes need to exist inside: the system, the dynamic linker's cache, and a few files of
/// `/etc` that programs read at start. Nothing else of the host (`/root`, `/home`, the database,
/// other runs' files) is visible.
const DEFAULT_BINDS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/python3",
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("this host cannot create the sandbox's namespaces: {0}")]
    Namespaces(std::io::Error),
    #[error("cannot build the seccomp/Landlock filters: {0}")]
    Filters(#[from] FilterError),
    #[error("the sandbox self-test failed: {program} could not run in a sandbox: {source}")]
    SelfTest {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SandboxError {
    /// What to do about it, where the cause is one kiln can tell: not root, or a work root the
    /// sandboxes' uids cannot pass through to reach their root's mount point.
    pub fn fix(&self) -> Option<&'static str> {
        if !is_root() {
            return Some(UNPRIVILEGED_FIX);
        }
        match self {
            SandboxError::SelfTest { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some(
                    "the sandboxes' uids must pass through the work root and every directory \
                     above it (chmod o+x, or a --work-root whose parents allow it)",
                )
            }
            _ => None,
        }
    }
}

/// What this host supports, as reported by `/readyz` and the startup log.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub level: &'static str,
    pub namespaces: Vec<&'static str>,
    pub seccomp: bool,
    pub landlock_abi: Option<u32>,
    pub cgroups: Option<CgroupSupport>,
}

/// As the startup log says it, in one line: `level full: user, pid, ... namespaces, seccomp,
/// landlock ABI 4, cgroups v2: memory, pids, cpu, cgroup.kill`.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "level {}: {} namespaces",
            self.level,
            self.namespaces.join(", ")
        )?;
        if self.seccomp {
            write!(f, ", seccomp")?;
        }
        match self.landlock_abi {
            Some(abi) => write!(f, ", landlock ABI {abi}")?,
            None => write!(f, ", no landlock")?,
        }
        match &self.cgroups {
            Some(cgroups) => write!(f, ", cgroups {cgroups}"),
            None => write!(f, ", no cgroups"),
        }
    }
}

/// The sandbox of a server: what every run shares, and runs started ahead of time.
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// The run-independent part of every run's root: what is bound and created.
    skeleton: Skeleton,
    /// Canonical forms of what is bound, for deciding what a runtime can see.
    visible: Vec<PathBuf>,
    /// An empty directory each run mounts its new root on, in its own mount namespace.
    root_dir: PathBuf,
    /// The runner's directory, where each run's files are staged.
    work_root: PathBuf,
    filters: Arc<Filters>,
    cgroups: Option<Cgroups>,
    uid_base: u32,
    next_uid: AtomicU32,
    next_cgroup: AtomicU64,
    user_ns: bool,
    ready: Ready,
    net: Arc<netns::NetPool>,
    /// What the latest run asked for: a sandbox made ready gets it ahead of its run, which then
    /// has nothing to change if it asks for the same (most runs do).
    latest: std::sync::Mutex<LatestRun>,
}

/// Sandboxes started ahead of their runs: namespaces made, root built, init waiting. Taking one
/// leaves a run only its own part to do (its files, `/work`, `/tmp`, then the job), so the
/// rest of a start happens while the previous job still runs, off the path of the next one.
struct Ready {
    /// How many to keep ready (or under way).
    target: usize,
    sender: mpsc::UnboundedSender<std::io::Result<Prepared>>,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<std::io::Result<Prepared>>>,
    /// Sent and not yet taken, and under way.
    stocked: AtomicUsize,
    preparing: AtomicUsize,
}

/// The cgroup limits and tmpfs sizes of the latest run.
#[derive(Clone, Copy)]
struct LatestRun {
    limits: Option<CgroupLimits>,
    sizes: TmpfsSizes,
}

/// A sandbox whose init has built the run-independent part and waits for its run.
struct Prepared {
    started: Started,
    cgroup: Option<JobCgroup>,
    ids: HostIds,
    tmpfs: Tmpfs,
}

/// A ready sandbox's private tmpfs mounts, held from the server's side, and their sizes.
struct Tmpfs {
    /// By [`TMPFS_MOUNTS`]; `None` for a `/work` that is not a tmpfs (a build step's).
    mounts: [Option<OwnedFd>; 3],
    sizes: TmpfsSizes,
}

impl Tmpfs {
    /// Opens the mounts of init's root, from the server's `/proc`.
    fn open(pid: libc::pid_t, sizes: TmpfsSizes, bind_work_root: bool) -> std::io::Result<Tmpfs> {
        let mut mounts = [None, None, None];
        for (slot, inside) in mounts.iter_mut().zip(TMPFS_MOUNTS) {
            if inside == "/work" && bind_work_root {
                continue;
            }
            let path = format!("/proc/{pid}/root{inside}");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&path)?;
            *slot = Some(OwnedFd::from(file));
        }
        Ok(Tmpfs { mounts, sizes })
    }

    /// The `/work` mount, taken to outlive the sandbox.
    fn take_work(&mut self) -> Option<OwnedFd> {
        let index = TMPFS_MOUNTS.iter().position(|inside| *inside == "/work")?;
        self.mounts[index].take()
    }

    /// Gives the mounts the sizes a run needs, changing only those that differ.
    fn fit(&mut self, wanted: TmpfsSizes) -> std::io::Result<()> {
        for (mount, inside) in self.mounts.iter().zip(TMPFS_MOUNTS) {
            let (now, want) = match inside {
                "/work" => (self.sizes.work, wanted.work),
                _ => (self.sizes.tmp, wanted.tmp),
            };
            if let Some(mount) = mount.as_ref().filter(|_| now != want) {
                namespace::resize_tmpfs(mount, want)?;
            }
        }
        self.sizes = wanted;
        Ok(())
    }
}

impl Sandbox {
    /// Probes the host and prepares what every run shares. `work_root` is the runner's directory.
    pub fn new(config: &SandboxConfig, work_root: &Path) -> Result<Sandbox, SandboxError> {
        let user_ns = config.mode == Mode::Full;
        if !user_ns && !is_root() {
            return Err(SandboxError::Namespaces(std::io::Error::other(
                "--sandbox namespaces (no user namespace) needs root",
            )));
        }
        namespace::namespaces_available(user_ns).map_err(SandboxError::Namespaces)?;
        let root_dir = work_root.join(".sandbox-root");
        std::fs::create_dir_all(&root_dir).map_err(|source| SandboxError::Io {
            path: root_dir.clone(),
            source,
        })?;
        // Each run's init (an unprivileged host uid) must pass through to its own staging
        // directory and to the root mount point; listing the work root stays refused.
        std::fs::set_permissions(work_root, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| SandboxError::Io {
                path: work_root.to_path_buf(),
                source,
            },
        )?;
        let mut binds: Vec<PathBuf> = DEFAULT_BINDS.iter().map(PathBuf::from).collect();
        binds.extend(python_etc_dirs());
        binds.extend(config.extra_binds.iter().cloned());
        binds.retain(|p| p.exists() || p.is_symlink());
        let visible = binds
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        let skeleton = Skeleton::new(&root_dir, &binds).map_err(|source| SandboxError::Io {
            path: root_dir.clone(),
            source,
        })?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let inner = Inner {
            skeleton,
            visible,
            root_dir,
            work_root: work_root.to_path_buf(),
            filters: Arc::new(Filters::new(&FilterPolicy::default())?),
            cgroups: Cgroups::detect(),
            uid_base: config.uid_base,
            next_uid: AtomicU32::new(0),
            next_cgroup: AtomicU64::new(0),
            user_ns,
            net: netns::NetPool::new().map_err(SandboxError::Namespaces)?,
            latest: std::sync::Mutex::new(LatestRun {
                limits: None,
                sizes: TmpfsSizes {
                    work: 1 << 20,
                    tmp: 1 << 20,
                },
            }),
            ready: Ready {
                target: config.ready,
                sender,
                receiver: tokio::sync::Mutex::new(receiver),
                stocked: AtomicUsize::new(0),
                preparing: AtomicUsize::new(0),
            },
        };
        Ok(Sandbox {
            inner: Arc::new(inner),
        })
    }

    /// Runs [`SELF_TEST_PROGRAM`] the way a job runs, through [`Sandbox::launch`]: the network
    /// namespace, the uid and gid maps, the root, the filters and the execve a job needs.
    /// Namespaces alone can be made where the rest fails (an ordinary user may make a user
    /// namespace, but neither a network namespace from outside it nor map the sandbox's uid
    /// range into it), so the server and `kiln doctor` both ask this before they call a host
    /// able to run jobs. It makes no sandbox ahead for a next run: one made in the background
    /// now could start once the database is open and hold its descriptors for as long as it
    /// waits (keeping its file system busy), and a server that runs no job (`--workers 0`)
    /// would never use it.
    pub async fn self_test(&self) -> Result<(), SandboxError> {
        let failed = |source| SandboxError::SelfTest {
            program: SELF_TEST_PROGRAM,
            source,
        };
        let run = async {
            let mut sandboxed = self
                .start(
                    Launch {
                        staging: None,
                        entries: &[],
                        work: WorkMount::Copy,
                        staged_bytes: 0,
                        program: Path::new(SELF_TEST_PROGRAM),
                        args: vec![SELF_TEST_PROGRAM.into()],
                        env: Vec::new(),
                        limits: crate::job::policy::Policy::default().default_limits,
                        rlimits: Vec::new(),
                        progress: false,
                    },
                    Ahead::Nothing,
                )
                .await?;
            // Its stdin closes with them; it reads nothing and writes nothing.
            drop(sandboxed.take_stdio());
            let ended = sandboxed.ended()?.await;
            let exit = ended.and_then(|ending| sandboxed.exit(ending));
            sandboxed.dispose();
            match exit?.status {
                0 => Ok(()),
                status => Err(std::io::Error::other(format!(
                    "it ended with wait status {status}, not 0"
                ))),
            }
        };
        match tokio::time::timeout(SELF_TEST_TIMEOUT, run).await {
            Ok(done) => done.map_err(failed),
            Err(_) => Err(failed(std::io::Error::other(format!(
                "it did not end within {} s",
                SELF_TEST_TIMEOUT.as_secs()
            )))),
        }
    }

    pub fn report(&self) -> Report {
        let inner = &self.inner;
        let mut namespaces = vec!["pid", "mount", "network", "ipc", "uts", "cgroup"];
        if inner.user_ns {
            namespaces.insert(0, "user");
        }
        Report {
            level: if inner.user_ns { "full" } else { "namespaces" },
            namespaces,
            seccomp: true,
            landlock_abi: inner.filters.landlock_abi(),
            cgroups: inner.cgroups.as_ref().map(Cgroups::support),
        }
    }

    /// True if `program` lies in what is bound into every sandbox.
    pub fn can_see(&self, program: &Path) -> bool {
        std::fs::canonicalize(program)
            .is_ok_and(|real| self.inner.visible.iter().any(|root| real.starts_with(root)))
    }

    /// Whether a run's CPU time is counted for all its processes together, which holds the run
    /// to its CPU limit as a whole (see `Sandboxed::cpu_ms`).
    pub fn counts_cpu(&self) -> bool {
        self.inner.cgroups.as_ref().is_some_and(Cgroups::counts_cpu)
    }

    pub fn has_memory_cgroup(&self) -> bool {
        self.inner
            .cgroups
            .as_ref()
            .is_some_and(|c| c.support().memory)
    }

    /// Starts a run in a sandbox made ready ahead of time (or made now if none is), and has
    /// another one made for the next run. Returns once the job has exec'd (or with the setup
    /// error).
    pub async fn launch(&self, launch: Launch<'_>) -> std::io::Result<Sandboxed> {
        self.start(launch, Ahead::Replenish).await
    }

    /// [`Sandbox::launch`], making the next run's sandbox ahead only when told to.
    async fn start(&self, launch: Launch<'_>, ahead: Ahead) -> std::io::Result<Sandboxed> {
        let inner = &self.inner;
        // Where the host cannot hold a run to a CPU quota, the run goes without (documented).
        let cpu_quota = launch
            .limits
            .cpu_percent
            .filter(|_| inner.cgroups.as_ref().is_some_and(|c| c.support().cpu));
        let memory = launch.limits.memory_mb.saturating_mul(1 << 20);
        let files = match launch.work {
            WorkMount::Copy => files_charge(launch.entries, launch.staged_bytes),
            WorkMount::Bind => 0,
        };
        if files.next_multiple_of(CHARGE_GRANULE) >= memory {
            return Err(OverMemory::error(files));
        }
        // A run that binds its staging directory as `/work` (a compile step) needs the work root
        // mounted in its sandbox until it starts, and one with a CPU quota a cgroup that takes
        // one (most runs have none, and on cgroup v1 it costs a hierarchy more): a sandbox of its
        // own, made now.
        let prepared = match (launch.work, cpu_quota) {
            (WorkMount::Copy, None) => {
                let prepared = inner.take().await?;
                if ahead == Ahead::Replenish {
                    inner.replenish();
                }
                prepared
            }
            (work, quota) => {
                inner
                    .prepare(work == WorkMount::Bind, quota.is_some())
                    .await?
            }
        };
        let Prepared {
            mut started,
            mut cgroup,
            ids,
            mut tmpfs,
        } = prepared;
        let limits = launch.limits;
        let run = (|| {
            if let Some(cgroup) = &mut cgroup {
                let cgroup_limits = CgroupLimits {
                    memory_bytes: memory - files.next_multiple_of(CHARGE_GRANULE),
                    pids: limits.processes,
                    cpu_millis_per_sec: cpu_quota.map(|percent| percent.saturating_mul(10)),
                };
                cgroup
                    .limit(&cgroup_limits)
                    .map_err(std::io::Error::other)?;
                inner.latest().limits = Some(cgroup_limits);
            }
            let staging = match launch.staging {
                Some(staging) => {
                    inner.hand_over(staging, &launch, ids)?;
                    let relative = staging.strip_prefix(&inner.work_root).map_err(|_| {
                        std::io::Error::other("a run's files must be staged under the work root")
                    })?;
                    Some(relative)
                }
                None => None,
            };
            // A job may write files up to its file limit besides what it was given.
            let sizes = TmpfsSizes {
                work: limits
                    .file_bytes
                    .saturating_add(launch.staged_bytes)
                    .max(1 << 20),
                tmp: limits.file_bytes.max(1 << 20),
            };
            tmpfs.fit(sizes)?;
            inner.latest().sizes = sizes;
            let run = RunPlan::new(RunSpec {
                staging,
                entries: launch.entries,
                work: launch.work,
                program: launch.program,
                args: launch.args,
                env: launch.env,
                rlimits: launch.rlimits,
                progress: launch.progress,
            })?;
            started.start(run)
        })();
        let sandboxed = Sandboxed {
            started,
            cgroup,
            files_bytes: files,
            // Held past the run's end, so what the job left in `/work` can still be read.
            work: tmpfs.take_work(),
        };
        if let Err(e) = run {
            sandboxed.abandon();
            return Err(e);
        }
        match read_setup_report(&sandboxed.started.setup).await {
            Ok(None) => Ok(sandboxed),
            Ok(Some(report)) => {
                let error = match sandboxed.out_of_memory(report) {
                    Some(used) => OverMemory::error(used),
                    None => sandboxed.started.setup_error(report),
                };
                sandboxed.abandon();
                Err(error)
            }
            Err(e) => {
                sandboxed.abandon();
                Err(e)
            }
        }
    }
}

impl Inner {
    fn latest(&self) -> std::sync::MutexGuard<'_, LatestRun> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn job_id(&self, ids: HostIds) -> u32 {
        if self.user_ns {
            namespace::JOB_ID
        } else {
            ids.job
        }
    }

    /// A ready sandbox: one already made, else one under way, else a new one.
    async fn take(&self) -> std::io::Result<Prepared> {
        let mut receiver = self.ready.receiver.lock().await;
        loop {
            let next = match receiver.try_recv() {
                Ok(next) => next,
                Err(_) if self.ready.preparing.load(Ordering::Acquire) > 0 => {
                    match receiver.recv().await {
                        Some(next) => next,
                        None => break,
                    }
                }
                Err(_) => break,
            };
            self.ready.stocked.fetch_sub(1, Ordering::AcqRel);
            match next {
                Ok(prepared) if prepared.started.is_alive() => return Ok(prepared),
                Ok(dead) => {
                    tracing::warn!(pid = dead.started.pid, "a ready sandbox's init had died");
                    Sandboxed {
                        started: dead.started,
                        cgroup: dead.cgroup,
                        files_bytes: 0,
                        work: None,
                    }
                    .abandon();
                }
                Err(error) => {
                    tracing::warn!(%error, "preparing a sandbox ahead of time failed");
                }
            }
        }
        drop(receiver);
        self.prepare(false, false).await
    }

    /// Has sandboxes made in the background until `target` are ready or under way.
    fn replenish(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ready = &self.ready;
        while ready.stocked.load(Ordering::Acquire) + ready.preparing.load(Ordering::Acquire)
            < ready.target
        {
            ready.preparing.fetch_add(1, Ordering::AcqRel);
            let preparing = Preparing {
                inner: Arc::clone(self),
                result: None,
            };
            runtime.spawn(async move {
                let mut preparing = preparing;
                preparing.result = Some(preparing.inner.prepare(false, false).await);
            });
        }
    }

    /// Makes a sandbox up to its run: clones init into fresh cgroups, maps its ids, lets it
    /// build the root and waits until it has. `bind_work_root` is for a run with
    /// [`WorkMount::Bind`], `cpu_quota` for one with a CPU quota.
    async fn prepare(&self, bind_work_root: bool, cpu_quota: bool) -> std::io::Result<Prepared> {
        let slot = self.next_uid.fetch_add(1, Ordering::Relaxed) % UID_RANGE;
        let ids = HostIds {
            root: self.uid_base,
            job: self.uid_base + 1 + slot,
        };
        let latest = *self.latest();
        let sizes = latest.sizes;
        let plan = Plan::new(SandboxSpec {
            root: &self.root_dir,
            work_root: &self.work_root,
            bind_work_root,
            job_id: self.job_id(ids),
            user_ns: self.user_ns,
            skeleton: &self.skeleton,
            sizes,
        })?;
        let cgroup = match &self.cgroups {
            Some(cgroups) => {
                let name = format!("run-{}", self.next_cgroup.fetch_add(1, Ordering::Relaxed));
                // Only a run that asks for it gets a CPU quota; every run's CPU time is held by
                // its `cpu_ms` limit.
                let mut cgroup = cgroups
                    .create(&name, cpu_quota)
                    .map_err(std::io::Error::other)?;
                if let Some(limits) = latest.limits {
                    let limits = CgroupLimits {
                        cpu_millis_per_sec: limits.cpu_millis_per_sec.filter(|_| cpu_quota),
                        ..limits
                    };
                    cgroup.limit(&limits).map_err(std::io::Error::other)?;
                }
                Some(cgroup)
            }
            None => None,
        };
        let landlock = self
            .filters
            .prepare_landlock()
            .map_err(std::io::Error::other)?;
        let entry = match &cgroup {
            Some(cgroup) => Some(cgroup.entry().map_err(std::io::Error::other)?),
            None => None,
        };
        let started = namespace::clone_init(
            plan,
            Arc::clone(&self.filters),
            landlock.as_ref(),
            entry.as_ref(),
            (
                &self.net,
                self.net
                    .take()
                    .map_err(|e| context(e, "cannot make its network namespace"))?,
            ),
            self.user_ns.then_some(ids.job),
        )?;
        drop(landlock);
        drop(entry);
        let sandboxed = Sandboxed {
            started,
            cgroup,
            files_bytes: 0,
            work: None,
        };
        let released = match self.user_ns {
            true => namespace::map_ids(sandboxed.started.pid, ids).map_err(|e| {
                let what = format!(
                    "cannot map host uids {}.. into its user namespace",
                    ids.root
                );
                context(e, &what)
            }),
            false => Ok(()),
        };
        if let Err(e) = released.and_then(|()| sandboxed.started.release()) {
            sandboxed.abandon();
            return Err(e);
        }
        let ready = read_ready(&sandboxed.started)
            .await
            .and_then(|()| Tmpfs::open(sandboxed.started.pid, sizes, bind_work_root));
        match ready {
            Ok(tmpfs) => {
                let mut cgroup = sandboxed.cgroup;
                if let Some(cgroup) = &mut cgroup {
                    cgroup.start_counting();
                }
                Ok(Prepared {
                    started: sandboxed.started,
                    cgroup,
                    ids,
                    tmpfs,
                })
            }
            Err(e) => {
                sandboxed.abandon();
                Err(e)
            }
        }
    }

    /// Gives the run's staged files to the sandbox's ids. The job's process copies them as the
    /// namespace's root; a build step works in the staging directory itself, as the job's uid,
    /// and the namespace's root only needs to reach it (by group) to bind it.
    fn hand_over(&self, staging: &Path, launch: &Launch<'_>, ids: HostIds) -> std::io::Result<()> {
        let (owner, mode) = match launch.work {
            WorkMount::Copy => (ids.root, 0o700),
            WorkMount::Bind => (ids.job, 0o770),
        };
        std::os::unix::fs::lchown(staging, Some(owner), Some(ids.root))?;
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(mode))?;
        for entry in launch.entries.iter().filter_map(WorkFile::staged) {
            std::os::unix::fs::lchown(staging.join(entry), Some(owner), Some(ids.root))?;
        }
        Ok(())
    }
}

/// A sandbox being made in the background. Whatever becomes of its task — it may be dropped
/// unfinished with its runtime — a taker waiting for it gets an answer: the sandbox, or an error.
struct Preparing {
    inner: Arc<Inner>,
    result: Option<std::io::Result<Prepared>>,
}

impl Drop for Preparing {
    fn drop(&mut self) {
        let ready = &self.inner.ready;
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(std::io::Error::other("preparing a sandbox was cancelled")));
        ready.stocked.fetch_add(1, Ordering::AcqRel);
        // The receiver lives as long as `inner`, which this holds.
        let _ = ready.sender.send(result);
        ready.preparing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until init reports the run-independent part built, or fails with what went wrong.
async fn read_ready(started: &Started) -> std::io::Result<()> {
    let fd = started.ready.try_clone()?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut byte = [0u8];
    if tokio::io::AsyncReadExt::read(&mut pipe, &mut byte).await? == 1 {
        return Ok(());
    }
    match read_setup_report(&started.setup).await? {
        Some(report) => Err(started.setup_error(report)),
        None => Err(std::io::Error::other(
            "the sandbox's init died while starting",
        )),
    }
}

/// `error` with what the sandbox was doing when it happened, keeping its kind.
fn context(error: std::io::Error, doing: &str) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{doing}: {error}"))
}

/// Debian keeps parts of Python's standard setup under /etc/python3.X (sitecustomize.py).
fn python_etc_dirs() -> Vec<PathBuf> {
    std::fs::read_dir("/etc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("python3."))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a run's files are rounded up to when they are taken off its memory limit: runs whose
/// files differ by less get the same limit, which a sandbox made ready with the latest run's
/// limits then already has.
const CHARGE_GRANULE: u64 = 64 << 10;

/// What the files of a run's `/work` (`bytes` in all, in `entries`) take of its memory, at
/// most: their bytes, and a page for each entry's last part and its inode.
///
/// They are in memory (tmpfs) for the whole run, so they count against its memory limit. They
/// do not count by themselves: the job's process writes them before its execve, while its
/// memory is still the server's, and the kernel charges a file's page to the cgroup of the
/// owner of its writer's memory, the server. So the run's own limit is lowered by this much
/// (rounded up to [`CHARGE_GRANULE`]), its peak memory raised by it, and a run whose files do
/// not fit is refused ([`OverMemory`]) before anything is written.
fn files_charge(entries: &[WorkFile<'_>], bytes: u64) -> u64 {
    const PAGE: u64 = 4096;
    bytes.saturating_add(PAGE.saturating_mul(entries.len() as u64))
}

/// A run that does not fit its memory limit before its program even starts: its files (with a
/// compiled runtime's binary) take it all, or its start failed for want of memory under the
/// limit (the job's execve copying its arguments, say). The run's outcome is then
/// `memory_limit`, as if it had been killed for it; nothing of kiln failed.
#[derive(Debug, thiserror::Error)]
#[error("the run needs more memory than its limit before its program starts ({memory_kb} KiB)")]
pub struct OverMemory {
    /// What the run held when it was refused: its files, and what its start had charged.
    pub memory_kb: u64,
}

impl OverMemory {
    fn error(bytes: u64) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            OverMemory {
                memory_kb: bytes / 1024,
            },
        )
    }

    /// The refusal `error` carries, if it is one from [`Sandbox::launch`].
    pub fn of(error: &std::io::Error) -> Option<&OverMemory> {
        error.get_ref()?.downcast_ref()
    }
}

/// One run's request to the sandbox.
pub struct Launch<'a> {
    /// Host directory with what is staged for the sandbox's `/work` (the entries that are not
    /// inline), if anything is.
    pub staging: Option<&'a Path>,
    /// What `/work` holds at the start, parents first.
    pub entries: &'a [WorkFile<'a>],
    pub work: WorkMount,
    pub staged_bytes: u64,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Whether the job gets a progress pipe as its fd 3 (its read end is
    /// [`Sandboxed::take_progress`]).
    pub progress: bool,
}

/// Waits for the setup pipe: EOF means the job exec'd; 8 bytes are a setup failure.
async fn read_setup_report(setup: &OwnedFd) -> std::io::Result<Option<[u8; 8]>> {
    let fd = setup.try_clone()?;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut report = [0u8; 8];
    let mut filled = 0;
    while filled < report.len() {
        let n = tokio::io::AsyncReadExt::read(&mut pipe, &mut report[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok((filled == report.len()).then_some(report))
}
