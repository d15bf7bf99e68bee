//! Per-run cgroups: this module owns every cgroup directory kiln creates, the limits written into
//! them and the usage read back out of them.
//!
//! rlimits are per process, so a job that forks can multiply them; a cgroup bounds the whole tree
//! of one run (memory, number of tasks, CPU share), counts what it used, and can be killed as a
//! whole even when its processes escaped their process group or session. That is why every run
//! gets its own cgroup, whatever else the sandbox does.
//!
//! Hosts differ a lot, so nothing here is hard-coded: at startup [`Cgroups::detect`] reads
//! `/proc/self/cgroup` and `/proc/self/mountinfo` to find, for each hierarchy, the directory of the
//! cgroup the server itself is in, and creates `<own>/kiln-<pid>-<n>/` beneath it (we may only
//! manage what was delegated to us, which is our own cgroup, not the hierarchy's root). It handles
//! cgroup v1 (one hierarchy per controller or co-mounted ones such as `cpu,cpuacct`), pure v2, and
//! hybrids where the controllers are on v1 but a v2 hierarchy offers `cgroup.kill`. Each
//! controller is probed by writing a limit into a throw-away child; whatever fails is reported as
//! unsupported and left alone, so a host with few or no cgroups degrades the sandbox instead of
//! stopping the server.
//!
//! [`Cgroups::create`] then makes `<parent>/<run name>/` in every usable hierarchy the run needs
//! (one that only offers a CPU quota only for a run with a quota, and v1's `cpuacct` only where
//! no v2 `cpu.stat` counts the run: each cgroup costs every run kernel work) and [`JobCgroup`]
//! lets the run's first process in, reports usage, kills and removes it.
//!
//! Everything here is blocking file-system work on cgroupfs, and [`JobCgroup::kill`] and
//! dropping a [`JobCgroup`] (which removes it) may sleep for up to a few seconds while processes
//! die: do them from `spawn_blocking` in async code.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The CFS period every quota is expressed against (the kernel's default).
const CFS_PERIOD_US: u64 = 100_000;

/// The kernel refuses CFS quotas below 1 ms.
const MIN_CFS_QUOTA_US: u64 = 1_000;

/// `PID_MAX_LIMIT` on 64-bit kernels: `pids.max` rejects anything larger, and no cgroup can hold
/// more tasks than that anyway, so larger limits are written as `max`.
const PID_MAX_LIMIT: u64 = 1 << 22;

/// How long `kill` keeps signalling and waiting before it gives up on processes that will not die
/// (stuck in uninterruptible sleep). Dying normally takes milliseconds.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// How long `remove` retries `rmdir` while the kernel still accounts exiting tasks to the cgroup.
const RMDIR_PATIENCE: Duration = Duration::from_millis(500);

/// Limits written into the probe cgroup: values every host accepts if it supports the controller
/// at all. The CPU quota is small because v1 refuses a child quota above its parent's, and the
/// server may itself run under one (a container with `--cpus`).
const PROBE_LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 1 << 30,
    pids: 64,
    cpu_millis_per_sec: Some(100),
};

/// Distinguishes the parent cgroups of several [`Cgroups`] in one process (tests, or a server
/// embedded twice), so that dropping one never removes a directory another still uses.
static NEXT_PARENT: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "invalid cgroup name {0:?}: use 1 to 128 ASCII letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidName(String),
    #[error("cgroup {0} was created without a CPU quota and cannot take one")]
    NoQuota(String),
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> CgroupError {
        CgroupError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// What this host lets us limit and measure, as found by `Cgroups::detect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Support {
    /// Memory (and memory+swap) limits, peak memory and OOM kills.
    pub memory: bool,
    /// The task count limit.
    pub pids: bool,
    /// The CPU quota (`CgroupLimits::cpu_millis_per_sec`).
    pub cpu: bool,
    /// `cgroup.kill`: one write kills the whole run, even processes forking at that moment.
    /// Without it `JobCgroup::kill` signals the processes one by one until none is left.
    pub kill: bool,
    /// The cgroup versions of the hierarchies in use: `"v1"`, `"v2"`, or `"hybrid"` for both.
    pub version: &'static str,
}

/// As the log and `kiln doctor` say it: `v2: memory, pids, cpu, cgroup.kill`.
impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let features: Vec<&str> = [
            (self.memory, "memory"),
            (self.pids, "pids"),
            (self.cpu, "cpu"),
            (self.kill, "cgroup.kill"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        match features.as_slice() {
            [] => write!(f, "{}: no controller", self.version),
            features => write!(f, "{}: {}", self.version, features.join(", ")),
        }
    }
}

/// Limits of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory in bytes, counting the page cache and tmpfs files of the run too. Also caps
    /// memory+swap, so a run cannot use swap to get around it (where the kernel accounts swap;
    /// without that, v1 keeps the run out of swap with `memory.swappiness`, v2 cannot).
    pub memory_bytes: u64,
    /// Tasks (processes and threads) at once.
    pub pids: u64,
    /// CPU time per wall-clock second in milliseconds: 1000 is one core, 500 half of one. `None`
    /// for no quota. Values below 10 are raised to 10, the kernel's minimum quota of 1 ms per
    /// 100 ms period.
    pub cpu_millis_per_sec: Option<u64>,
}

/// What a run used, where the host can tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Highest memory use in bytes (`memory.max_usage_in_bytes` on v1, `memory.peak` on v2).
    pub memory_peak_bytes: Option<u64>,
    /// The OOM killer killed a process of the run (normally because of its memory limit). On v1
    /// kernels older than 4.13, which do not count OOM kills, this only means the limit was hit.
    pub oom_killed: bool,
    /// CPU time of all its processes, user and system, in milliseconds.
    pub cpu_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The controllers that take limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Cpu,
}

/// What a hierarchy is used for. On v1 these follow the controllers mounted there; on v2 `kill`
/// and `cpu_usage` (`cpu.stat`) come with every cgroup, the rest must be enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Features {
    memory: bool,
    pids: bool,
    cpu: bool,
    cpu_usage: bool,
    kill: bool,
}

impl Features {
    fn any(self) -> bool {
        self.memory || self.pids || self.cpu || self.cpu_usage || self.kill
    }

    /// Whether a run needs its own cgroup here. A hierarchy that only offers the CPU quota is
    /// needed only by runs with a quota: each cgroup costs a run a `mkdir`, a `rmdir` and the
    /// kernel's work behind them.
    fn per_run(self, cpu_quota: bool) -> bool {
        self.memory || self.pids || self.cpu_usage || self.kill || (self.cpu && cpu_quota)
    }

    fn limited(self) -> impl Iterator<Item = Controller> {
        [
            (self.memory, Controller::Memory),
            (self.pids, Controller::Pids),
            (self.cpu, Controller::Cpu),
        ]
        .into_iter()
        .filter_map(|(on, controller)| on.then_some(controller))
    }

    fn set(&mut self, controller: Controller, on: bool) {
        match controller {
            Controller::Memory => self.memory = on,
            Controller::Pids => self.pids = on,
            Controller::Cpu => self.cpu = on,
        }
    }
}

fn controller_name(controller: Controller) -> &'static str {
    match controller {
        Controller::Memory => "memory",
        Controller::Pids => "pids",
        Controller::Cpu => "cpu",
    }
}

/// A hierarchy as found in `/proc/self/cgroup` and `/proc/self/mountinfo`, with our own cgroup in it.
#[derive(Debug, PartialEq, Eq)]
struct Located {
    version: Version,
    /// The hierarchy id, the first field of its line in `/proc/<pid>/cgroup` (0 on v2).
    id: u32,
    /// v1: the controllers bound to it. Empty on v2.
    controllers: Vec<String>,
    /// Our own cgroup as `/proc/self/cgroup` names it, e.g. `/system.slice/kiln.service`.
    own: String,
    /// Our own cgroup's directory.
    dir: PathBuf,
}

/// One hierarchy kiln uses, with the parent cgroup it created in it.
#[derive(Debug)]
struct Hierarchy {
    version: Version,
    id: u32,
    /// `<own>/kiln-<pid>-<n>`: the directory every run's cgroup is created in.
    parent: PathBuf,
    /// The same cgroup as `/proc/<pid>/cgroup` names it, to check that a pid belongs to a run.
    parent_name: String,
    features: Features,
}

#[derive(Debug)]
struct Inner {
    /// Those offering `cgroup.kill` first, so a process half attached after a failure is still
    /// reachable by the one write that kills everything.
    hierarchies: Vec<Hierarchy>,
}

/// The cgroups this server may create runs in, found once at startup.
///
/// Owns one parent cgroup per usable hierarchy. They are removed once this value and every
/// [`JobCgroup`] created from it are gone (each run holds a reference, so dropping this first
/// cannot pull the directory from under a live run).
#[derive(Debug)]
pub struct Cgroups {
    inner: Arc<Inner>,
}

impl Cgroups {
    /// Finds where this host lets us create cgroups, creates our parent cgroup in each usable
    /// hierarchy and probes each controller by writing a limit into a throw-away child. Never fails
    /// the server: unusable hierarchies and controllers are logged and reported unsupported.
    /// `None` if nothing at all is usable (not root, no cgroupfs, read-only cgroupfs...).
    pub fn detect() -> Option<Cgroups> {
        let read = |path: &str| {
            fs::read_to_string(path)
                .map_err(|e| tracing::info!(path, error = %e, "cgroups unavailable: cannot read"))
                .ok()
        };
        let proc_cgroup = read("/proc/self/cgroup")?;
        let mountinfo = read("/proc/self/mountinfo")?;
        let parent = format!(
            "kiln-{}-{}",
            std::process::id(),
            NEXT_PARENT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroups = Cgroups::set_up(&locate(&proc_cgroup, &mountinfo), &parent);
        match &cgroups {
            Some(c) => tracing::info!(support = %c.support(), "cgroups detected"),
            None => tracing::info!("cgroups unavailable: no usable hierarchy"),
        }
        cgroups
    }

    fn set_up(located: &[Located], parent: &str) -> Option<Cgroups> {
        // On hybrid hosts a controller bound to a v1 hierarchy cannot appear on v2.
        let on_v1 = |name: &str| {
            located
                .iter()
                .any(|l| l.version == Version::V1 && l.controllers.iter().any(|c| c == name))
        };
        let mut hierarchies: Vec<Hierarchy> = located
            .iter()
            .filter_map(|l| {
                let has = |name: &str| l.controllers.iter().any(|c| c == name);
                let wanted = match l.version {
                    Version::V1 => Features {
                        memory: has("memory"),
                        pids: has("pids"),
                        cpu: has("cpu"),
                        cpu_usage: has("cpuacct"),
                        kill: false,
                    },
                    Version::V2 => {
                        let available = read_words(&l.dir.join("cgroup.controllers"));
                        let here = |name: &str| !on_v1(name) && available.iter().any(|c| c == name);
                        Features {
                            memory: here("memory"),
                            pids: here("pids"),
                            cpu: here("cpu"),
                            // cpu.stat comes with every v2 cgroup and counts its tasks
                            // whichever v1 hierarchy holds their cpu controller.
                            cpu_usage: true,
                            kill: true,
                        }
                    }
                };
                if !wanted.any() {
                    return None;
                }
                Hierarchy::set_up(l, parent, wanted)
            })
            .collect();
        // One count of a run's CPU time is enough: where v2 counts it, v1's cpuacct cgroups
        // would only add work to every run.
        if hierarchies
            .iter()
            .any(|h| h.version == Version::V2 && h.features.cpu_usage)
        {
            for hierarchy in hierarchies.iter_mut().filter(|h| h.version == Version::V1) {
                hierarchy.features.cpu_usage = false;
            }
            hierarchies.retain(|h| {
                let used = h.features.any();
                if !used {
                    remove_dir_logged(&h.parent);
                }
                used
            });
        }
        if hierarchies.is_empty() {
            return None;
        }
        hierarchies.sort_by_key(|h| !h.features.kill);
        Some(Cgroups {
            inner: Arc::new(Inner { hierarchies }),
        })
    }

    pub fn support(&self) -> Support {
        let hierarchies = &self.inner.hierarchies;
        let any = |f: fn(Features) -> bool| hierarchies.iter().any(|h| f(h.features));
        let uses = |v: Version| hierarchies.iter().any(|h| h.version == v);
        Support {
            memory: any(|f| f.memory),
            pids: any(|f| f.pids),
            cpu: any(|f| f.cpu),
            kill: any(|f| f.kill),
            version: match (uses(Version::V1), uses(Version::V2)) {
                (true, true) => "hybrid",
                (true, false) => "v1",
                _ => "v2",
            },
        }
    }

    /// Whether a run's CPU time is counted as a whole ([`JobCgroup::cpu_ms`]).
    pub fn counts_cpu(&self) -> bool {
        self.inner.hierarchies.iter().any(|h| h.features.cpu_usage)
    }

    /// A fresh cgroup named `name` (one path component, see [`CgroupError::InvalidName`]) in every
    /// usable hierarchy a run needs: one that only offers the CPU quota only if `cpu_quota`. Fails
    /// if the name is already taken: two runs must never share a cgroup. On any failure whatever
    /// was already created is removed.
    pub fn create(&self, name: &str, cpu_quota: bool) -> Result<JobCgroup, CgroupError> {
        check_plain_component(name)?;
        // Built up in place so that an early return drops it, which removes what exists so far.
        let mut job = JobCgroup {
            name: name.to_owned(),
            cgroups: Arc::clone(&self.inner),
            dirs: Vec::new(),
            cpu_quota,
            cpu_start_us: 0,
            limited: None,
        };
        for (index, hierarchy) in self.inner.hierarchies.iter().enumerate() {
            if !hierarchy.features.per_run(cpu_quota) {
                continue;
            }
            let path = hierarchy.parent.join(name);
            fs::create_dir(&path).map_err(|e| CgroupError::io("create", &path, e))?;
            job.dirs.push(JobDir {
                hierarchy: index,
                counters: Counters::open(hierarchy.version, hierarchy.features, &path),
                path,
                cgroup: format!("{}/{name}", hierarchy.parent_name),
            });
        }
        Ok(job)
    }
}

impl Hierarchy {
    /// Creates our parent cgroup in `located` and probes `wanted` there; `None` if none of it works.
    fn set_up(located: &Located, parent: &str, mut wanted: Features) -> Option<Hierarchy> {
        let own = &located.dir;
        sweep_dead_servers(own);
        if located.version == Version::V2 {
            for controller in wanted.limited() {
                let on = enable(own, controller);
                wanted.set(controller, on);
            }
        }
        let dir = own.join(parent);
        if let Err(e) = create_dir_reusing(&dir) {
            tracing::info!(path = %dir.display(), error = %e, "cannot create a cgroup: hierarchy unusable");
            return None;
        }
        if located.version == Version::V2 {
            for controller in wanted.limited() {
                let on = enable(&dir, controller);
                wanted.set(controller, on);
            }
        }
        let hierarchy = Hierarchy {
            version: located.version,
            id: located.id,
            parent_name: format!("{}/{parent}", located.own.trim_end_matches('/')),
            features: probe(located.version, &dir, wanted),
            parent: dir,
        };
        if hierarchy.features.any() {
            Some(hierarchy)
        } else {
            remove_dir_logged(&hierarchy.parent);
            None
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for hierarchy in &self.hierarchies {
            remove_dir_logged(&hierarchy.parent);
        }
    }
}

/// Turns `controller` on for the children of `dir` (v2). A non-root cgroup that holds processes
/// cannot do that (the "no internal processes" rule): then the controller is unavailable to us.
fn enable(dir: &Path, controller: Controller) -> bool {
    let name = controller_name(controller);
    let control = dir.join("cgroup.subtree_control");
    if read_words(&control).iter().any(|c| c == name) {
        return true;
    }
    match write(&control, &format!("+{name}")) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(
                path = %control.display(),
                controller = name,
                error = %e,
                "cgroup v2 controller unavailable: cannot enable it (a non-root cgroup holding \
                 processes cannot delegate controllers)"
            );
            false
        }
    }
}

/// Tries each of `wanted` on a throw-away child of `parent`; returns those that worked.
fn probe(version: Version, parent: &Path, wanted: Features) -> Features {
    let dir = parent.join("probe");
    if let Err(e) = create_dir_reusing(&dir) {
        tracing::info!(path = %dir.display(), error = %e, "cannot create a cgroup: hierarchy unusable");
        return Features::default();
    }
    let mut works = wanted;
    for controller in wanted.limited() {
        if let Err(e) = apply(&dir, &knobs(version, controller, &PROBE_LIMITS)) {
            tracing::info!(controller = controller_name(controller), error = %e, "cgroup controller unusable");
            works.set(controller, false);
        }
    }
    works.cpu_usage = wanted.cpu_usage
        && fs::read_to_string(dir.join(cpu_file(version)))
            .is_ok_and(|text| cpu_us(version, &text).is_some());
    works.kill = wanted.kill && dir.join("cgroup.kill").exists();
    remove_dir_logged(&dir);
    works
}

/// One control file to write.
#[derive(Debug, PartialEq, Eq)]
struct Knob {
    file: &'static str,
    value: String,
    need: Need,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Failure fails the cgroup.
    Required,
    /// Skipped if the kernel lacks the file (e.g. no swap accounting); failure to write an
    /// existing one fails the cgroup.
    IfPresent,
    /// Failure is only logged.
    BestEffort,
}

/// The writes that put `limits` of `controller` into a cgroup, in order.
fn knobs(version: Version, controller: Controller, limits: &CgroupLimits) -> Vec<Knob> {
    let knob = |file, value: String, need| Knob { file, value, need };
    let memory = limits.memory_bytes.to_string();
    match (version, controller) {
        (Version::V1, Controller::Memory) => vec![
            // memsw may never be below the memory limit, whether the new limit is above or
            // below the cgroup's present one: lifted first, set equal last. Equal values leave
            // no room for swap.
            knob("memory.memsw.limit_in_bytes", "-1".into(), Need::IfPresent),
            knob("memory.limit_in_bytes", memory.clone(), Need::Required),
            knob("memory.memsw.limit_in_bytes", memory, Need::IfPresent),
            // Without memsw (swap accounting off) this at least keeps the run's memory out of
            // swap; refused on some kernels, hence optional.
            knob("memory.swappiness", "0".into(), Need::BestEffort),
            // oom_kill_disable is inherited from the parent: a run over its limit would hang
            // instead of being killed.
            knob("memory.oom_control", "0".into(), Need::Required),
        ],
        (Version::V2, Controller::Memory) => vec![
            knob("memory.max", memory, Need::Required),
            knob("memory.swap.max", "0".into(), Need::IfPresent),
        ],
        (_, Controller::Pids) => {
            let pids = if limits.pids > PID_MAX_LIMIT {
                "max".to_owned()
            } else {
                limits.pids.to_string()
            };
            vec![knob("pids.max", pids, Need::Required)]
        }
        (version, Controller::Cpu) => {
            let Some(millis) = limits.cpu_millis_per_sec else {
                return Vec::new();
            };
            let quota = millis
                .saturating_mul(CFS_PERIOD_US / 1000)
                .max(MIN_CFS_QUOTA_US);
            match version {
                Version::V1 => vec![
                    knob(
                        "cpu.cfs_period_us",
                        CFS_PERIOD_US.to_string(),
                        Need::Required,
                    ),
                    knob("cpu.cfs_quota_us", quota.to_string(), Need::Required),
                ],
                Version::V2 => vec![knob(
                    "cpu.max",
                    format!("{quota} {CFS_PERIOD_US}"),
                    Need::Required,
                )],
            }
        }
    }
}

fn apply(dir: &Path, knobs: &[Knob]) -> Result<(), CgroupError> {
    for knob in knobs {
        let path = dir.join(knob.file);
        match (write(&path, &knob.value), knob.need) {
            (Ok(()), _) => {}
            (Err(e), Need::IfPresent) if e.kind() == io::ErrorKind::NotFound => {}
            (Err(e), Need::BestEffort) => {
                tracing::debug!(path = %path.display(), error = %e, "optional cgroup setting refused");
            }
            (Err(e), _) => return Err(CgroupError::io("write", &path, e)),
        }
    }
    Ok(())
}

/// One run's cgroup, a directory in each hierarchy kiln uses.
///
/// Dropping it kills whatever is still in it and removes it, logging failures. Read
/// [`JobCgroup::usage`] before.
#[derive(Debug)]
pub struct JobCgroup {
    name: String,
    cgroups: Arc<Inner>,
    dirs: Vec<JobDir>,
    /// Whether it was created for a CPU quota (see [`Cgroups::create`]).
    cpu_quota: bool,
    /// The CPU time its processes had used when the run started, in microseconds.
    cpu_start_us: u64,
    /// The limits it has now, if any were set.
    limited: Option<CgroupLimits>,
}

/// What [`JobCgroup::entry`] hands to the sandbox.
#[derive(Debug)]
pub struct Entry {
    /// The v2 cgroup's directory, for `clone3(CLONE_INTO_CGROUP)` of the sandbox's init, where
    /// that cgroup limits no memory (a hybrid host, whose v2 hierarchy only kills and counts).
    /// init shares the server's memory, and must never be where an OOM killer may choose it.
    pub into: Option<OwnedFd>,
    /// Files the job writes `0` (itself) into before it runs anything: each v1 hierarchy's
    /// `tasks`, and v2's `cgroup.procs` where `into` is not used. Opened here: the kernel checks
    /// the credentials of the opener (the server), not of the writer. Those of hierarchies
    /// without a memory controller come first ([`Entry::early`] of them): the job may enter
    /// those while its sandbox is made ready, the others only at its run (see
    /// [`Entry::into`] for why memory is different).
    pub enter: Vec<OwnedFd>,
    pub early: usize,
}

#[derive(Debug)]
struct JobDir {
    /// Index into `cgroups.hierarchies`.
    hierarchy: usize,
    path: PathBuf,
    /// As `/proc/<pid>/cgroup` names it.
    cgroup: String,
    counters: Counters,
}

/// The files a run's usage is read from, opened with the cgroup (before its run is known): a
/// reading is then one `pread`, without looking paths up in cgroupfs when the run has just
/// ended (or every poll of its CPU time).
#[derive(Debug, Default)]
struct Counters {
    peak: Option<Counter>,
    oom: Option<Counter>,
    cpu: Option<Counter>,
}

#[derive(Debug)]
struct Counter(fs::File);

impl Counter {
    fn open(dir: &Path, file: &str) -> Option<Counter> {
        fs::File::open(dir.join(file)).ok().map(Counter)
    }

    /// The whole file as it is now: cgroupfs makes it anew for each read from its start.
    fn text(&self) -> Option<String> {
        use std::os::unix::fs::FileExt;
        // The largest of these (v2's cpu.stat) is a few hundred bytes.
        let mut buf = [0u8; 2048];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        String::from_utf8(buf[..n].to_vec()).ok()
    }
}

impl Counters {
    fn open(version: Version, features: Features, dir: &Path) -> Counters {
        let mut counters = Counters::default();
        if features.memory {
            counters.peak = Counter::open(dir, peak_file(version));
            counters.oom = Counter::open(dir, oom_file(version));
        }
        if features.cpu_usage {
            counters.cpu = Counter::open(dir, cpu_file(version));
        }
        counters
    }
}

impl JobCgroup {
    /// Sets the run's limits. A cgroup is made before its run is known (see
    /// [`super::Sandbox`]), so this comes separately; limits it has already are not written
    /// again, so a sandbox made ready with the limits its run turns out to have spares the
    /// run's start the writes.
    pub fn limit(&mut self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        if limits.cpu_millis_per_sec.is_some() && !self.cpu_quota {
            return Err(CgroupError::NoQuota(self.name.clone()));
        }
        if self.limited.as_ref() == Some(limits) {
            return Ok(());
        }
        // Whatever fails below leaves the limits unknown.
        self.limited = None;
        for dir in &self.dirs {
            let hierarchy = &self.cgroups.hierarchies[dir.hierarchy];
            for controller in hierarchy.features.limited() {
                apply(&dir.path, &knobs(hierarchy.version, controller, limits))?;
            }
        }
        self.limited = Some(*limits);
        Ok(())
    }

    /// How a run's processes enter this cgroup without the server moving them.
    ///
    /// On cgroup v1, a move by another process takes a global lock whose writer waits for an
    /// RCU grace period whenever no move happened in the last few milliseconds: 5–15 ms a run on
    /// an idle host, measured. A single-threaded process moving itself does not take that lock,
    /// and `clone3(CLONE_INTO_CGROUP)` creates a process in place. Writing itself into v2's
    /// `cgroup.procs` does take it (mount cgroup2 with `favordynmods` to make that cheap); that
    /// is only needed where the v2 cgroup limits memory, see [`Entry::into`].
    pub fn entry(&self) -> Result<Entry, CgroupError> {
        let mut entry = Entry {
            into: None,
            enter: Vec::new(),
            early: 0,
        };
        let mut late = Vec::new();
        for dir in &self.dirs {
            let hierarchy = &self.cgroups.hierarchies[dir.hierarchy];
            let file = match hierarchy.version {
                Version::V2 if !hierarchy.features.memory => {
                    let opened = fs::File::open(&dir.path)
                        .map_err(|e| CgroupError::io("open", &dir.path, e))?;
                    entry.into = Some(opened.into());
                    continue;
                }
                Version::V2 => "cgroup.procs",
                Version::V1 => "tasks",
            };
            let path = dir.path.join(file);
            let opened = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| CgroupError::io("open", &path, e))?;
            match hierarchy.features.memory {
                false => entry.enter.push(opened.into()),
                true => late.push(opened.into()),
            }
        }
        entry.early = entry.enter.len();
        entry.enter.extend(late);
        Ok(entry)
    }

    /// What the run used so far. The counters survive its processes, so read it after the run
    /// ended but before [`JobCgroup::remove`].
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        for dir in &self.dirs {
            let hierarchy = &self.cgroups.hierarchies[dir.hierarchy];
            let features = hierarchy.features;
            if features.memory {
                usage.memory_peak_bytes = dir.counters.peak.as_ref().and_then(memory_peak);
                usage.oom_killed = oom_killed(hierarchy.version, dir);
            }
        }
        usage.cpu_ms = self.cpu_ms();
        usage
    }

    /// Whether the run's memory reached its limit at some time, so that a charge had to
    /// reclaim or fail. v2 counts that in `memory.events` (`max`). v1 was seen to count no
    /// charge that failed for want of a process to kill (a task in a vfork is none:
    /// `memory.failcnt` stays 0), so there it is the peak within a charge batch (64 pages) of
    /// the limit.
    pub fn reached_memory_limit(&self) -> bool {
        const CHARGE_BATCH: u64 = 64 * 4096;
        self.dirs.iter().any(|dir| {
            let hierarchy = &self.cgroups.hierarchies[dir.hierarchy];
            if !hierarchy.features.memory {
                return false;
            }
            match hierarchy.version {
                Version::V2 => dir
                    .counters
                    .oom
                    .as_ref()
                    .and_then(Counter::text)
                    .and_then(|text| keyed(&text, "max"))
                    .is_some_and(|n| n > 0),
                Version::V1 => {
                    let peak = dir.counters.peak.as_ref().and_then(memory_peak);
                    match (peak, self.limited) {
                        (Some(peak), Some(limits)) => {
                            peak.saturating_add(CHARGE_BATCH) >= limits.memory_bytes
                        }
                        _ => false,
                    }
                }
            }
        })
    }

    /// CPU time of all its processes since [`JobCgroup::start_counting`] (or its creation),
    /// where the host counts it. Cheap enough to poll while the run goes, which is how the run
    /// as a whole (not each process) is held to its CPU limit.
    pub fn cpu_ms(&self) -> Option<u64> {
        let used = self.cpu_us()?;
        Some(used.saturating_sub(self.cpu_start_us) / 1000)
    }

    /// Counts the run's CPU time from now on. A sandbox's init is born into the cgroup that
    /// counts CPU time where that is v2's, and builds the sandbox there before its run is
    /// known: that work is not the run's. Called once the sandbox is ready, when nothing in it
    /// uses CPU until the run.
    pub fn start_counting(&mut self) {
        self.cpu_start_us = self.cpu_us().unwrap_or(0);
    }

    fn cpu_us(&self) -> Option<u64> {
        self.dirs.iter().find_map(|dir| {
            let hierarchy = &self.cgroups.hierarchies[dir.hierarchy];
            if hierarchy.features.cpu_usage {
                let cpu = dir.counters.cpu.as_ref()?.text()?;
                cpu_us(hierarchy.version, &cpu)
            } else {
                None
            }
        })
    }

    /// Kills every process in this cgroup and waits (up to a few seconds) until none is left.
    ///
    /// Where `cgroup.kill` exists one write kills the whole tree atomically, so even a fork bomb
    /// cannot outrun it. Everywhere else, and for anything that write missed, it reads
    /// `cgroup.procs` of every hierarchy and sends SIGKILL to each listed process, again and again
    /// until all are empty. Each of those is signalled through a pidfd after checking it still
    /// belongs to this run, so a pid recycled in between is never hit.
    pub fn kill(&self) {
        for dir in &self.dirs {
            if self.cgroups.hierarchies[dir.hierarchy].features.kill {
                let control = dir.path.join("cgroup.kill");
                if let Err(e) = write(&control, "1") {
                    tracing::warn!(path = %control.display(), error = %e, "cgroup.kill failed; signalling each process");
                }
            }
        }
        let deadline = Instant::now() + KILL_PATIENCE;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut alive = false;
            for dir in &self.dirs {
                let id = self.cgroups.hierarchies[dir.hierarchy].id;
                for pid in procs(&dir.path) {
                    alive = true;
                    kill_member(pid, id, &dir.cgroup);
                }
            }
            if !alive {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(cgroup = %self.name, "processes survived SIGKILL");
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Kills what is left, waits briefly for it to be gone and removes the directories. On error
    /// the directories that could not be removed are left behind (and logged when the parent
    /// cannot be removed either). A run's cgroup is removed by its drop, which logs the error
    /// instead: only the tests, which check it, remove one this way.
    #[cfg(test)]
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.tear_down()
    }

    fn tear_down(&mut self) -> Result<(), CgroupError> {
        self.kill();
        let mut result = Ok(());
        for dir in self.dirs.drain(..).rev() {
            if let Err(e) = remove_dir_patiently(&dir.path) {
                result = result.and(Err(e));
            }
        }
        result
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        if let Err(e) = self.tear_down() {
            tracing::warn!(cgroup = %self.name, error = %e, "could not remove a run's cgroup");
        }
    }
}

/// A run's name becomes a directory in cgroupfs and a path in `/proc/<pid>/cgroup`: one plain
/// component, nothing that could climb out of our parent or be confused with a control file.
fn check_plain_component(name: &str) -> Result<(), CgroupError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain && (1..=128).contains(&name.len()) && !name.starts_with('.') {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}

fn peak_file(version: Version) -> &'static str {
    match version {
        Version::V1 => "memory.max_usage_in_bytes",
        Version::V2 => "memory.peak",
    }
}

fn oom_file(version: Version) -> &'static str {
    match version {
        Version::V1 => "memory.oom_control",
        Version::V2 => "memory.events",
    }
}

fn cpu_file(version: Version) -> &'static str {
    match version {
        Version::V1 => "cpuacct.usage",
        Version::V2 => "cpu.stat",
    }
}

fn memory_peak(peak: &Counter) -> Option<u64> {
    peak.text()?.trim().parse().ok()
}

fn oom_killed(version: Version, dir: &JobDir) -> bool {
    let kills = dir
        .counters
        .oom
        .as_ref()
        .and_then(Counter::text)
        .and_then(|text| keyed(&text, "oom_kill"));
    match (kills, version) {
        (Some(kills), _) => kills > 0,
        // Kernels before 4.13 do not count OOM kills; hitting the limit is the best hint.
        (None, Version::V1) => read_u64(&dir.path.join("memory.failcnt")).is_some_and(|n| n > 0),
        (None, Version::V2) => false,
    }
}

/// CPU time in microseconds, from the text of [`cpu_file`].
fn cpu_us(version: Version, text: &str) -> Option<u64> {
    match version {
        Version::V1 => text.trim().parse::<u64>().ok().map(|ns| ns / 1000),
        Version::V2 => keyed(text, "usage_usec"),
    }
}

/// The value of the `key value` line of a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whitespace-separated words of a file, none if it cannot be read.
fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|text| text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The processes in one cgroup; none if it is gone.
fn procs(dir: &Path) -> Vec<libc::pid_t> {
    let path = dir.join("cgroup.procs");
    match fs::read_to_string(&path) {
        Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot list a run's processes");
            }
            Vec::new()
        }
    }
}

/// SIGKILLs `pid` if it is in `cgroup` (or below) of hierarchy `id`.
///
/// The pid was read from `cgroup.procs` a moment ago; the process may have exited since and its
/// pid been reused by anyone, and we are root. So the process is pinned with a pidfd first, its
/// membership checked through `/proc`, and the signal sent through the pidfd: if it arrives, the
/// process was alive all along, so what `/proc` showed was its own. Kernels without pidfds
/// (before 5.3) fall back to the same check and a plain `kill`, with a small race left.
fn kill_member(pid: libc::pid_t, id: u32, cgroup: &str) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(raw) = RawFd::try_from(ret) else {
        return;
    };
    if raw < 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
            && is_member(pid, id, cgroup)
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Otherwise ESRCH: it is already gone.
        return;
    }
    // SAFETY: pidfd_open just returned this descriptor and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    if is_member(pid, id, cgroup) {
        // SAFETY: a live pidfd, a valid signal, no siginfo (null is allowed), no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

fn is_member(pid: libc::pid_t, id: u32, cgroup: &str) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    text.lines().any(|line| {
        let mut fields = line.splitn(3, ':');
        let (Some(line_id), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        line_id.parse() == Ok(id)
            && path
                .strip_prefix(cgroup)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    // cgroupfs takes each value in a single write(2); write_all does one for these short values.
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Creates a cgroup, accepting one left behind by an earlier process with the same pid.
/// Removes what servers that died without shutting down (SIGKILL, a crash) left in `own`: their
/// `kiln-<pid>-<n>` parents and the empty run cgroups beneath. Only a cgroup without processes
/// can be removed, so a run still going is never touched; a parent whose pid is alive here is
/// skipped. (A server in another pid namespace with the same pid number would lose its parent
/// when idle; one server per cgroup is the supported setup.)
fn sweep_dead_servers(own: &Path) {
    let Ok(entries) = fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("kiln-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(runs) = fs::read_dir(&dir) {
            for run in runs.flatten().filter(|r| r.path().is_dir()) {
                let _ = fs::remove_dir(run.path());
            }
        }
        if fs::remove_dir(&dir).is_ok() {
            tracing::info!(path = %dir.display(), "removed the cgroup of a server that died");
        }
    }
}

fn create_dir_reusing(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn remove_dir_logged(path: &Path) {
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a cgroup");
        }
        _ => {}
    }
}

/// Removes an empty cgroup, retrying while the kernel still counts exiting tasks in it (EBUSY).
fn remove_dir_patiently(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + RMDIR_PATIENCE;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CgroupError::io("remove", path, e)),
        }
    }
}

/// A cgroup mount from `/proc/self/mountinfo`.
struct Mount {
    /// The cgroup mounted there, e.g. `/` or, in some containers, `/docker/<id>`.
    root: String,
    point: PathBuf,
    version: Version,
    /// v1: its mount options, which name its controllers.
    options: Vec<String>,
}

/// Finds, for each hierarchy our process is in, the directory of our own cgroup.
fn locate(proc_cgroup: &str, mountinfo: &str) -> Vec<Located> {
    let mounts = cgroup_mounts(mountinfo);
    proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let id: u32 = fields.next()?.parse().ok()?;
            let controllers: Vec<String> = fields
                .next()?
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
                .map(str::to_owned)
                .collect();
            let own = fields.next()?;
            let version = if id == 0 && controllers.is_empty() {
                Version::V2
            } else {
                // A v1 hierarchy with no controller (name=systemd) is nothing we could use.
                if controllers.is_empty() {
                    return None;
                }
                Version::V1
            };
            let dir = mounts.iter().find_map(|m| {
                let serves = match version {
                    Version::V2 => m.version == Version::V2,
                    Version::V1 => {
                        m.version == Version::V1
                            && controllers.iter().all(|c| m.options.contains(c))
                    }
                };
                if serves { beneath(m, own) } else { None }
            })?;
            Some(Located {
                version,
                id,
                controllers,
                own: own.to_owned(),
                dir,
            })
        })
        .collect()
}

/// The directory of cgroup `own` under mount `m`, if the mount shows it.
fn beneath(m: &Mount, own: &str) -> Option<PathBuf> {
    let rest = if m.root == "/" {
        own
    } else {
        own.strip_prefix(m.root.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))?
    };
    let rest = rest.trim_start_matches('/');
    // Outside our cgroup namespace the path starts with `/..`: not reachable through this mount.
    if rest.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rest.is_empty() {
        m.point.clone()
    } else {
        m.point.join(rest)
    })
}

fn cgroup_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent dev root point options [optional...] - fstype source super-options`
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let version = match *right.first()? {
                "cgroup" => Version::V1,
                "cgroup2" => Version::V2,
                _ => return None,
            };
            Some(Mount {
                root: String::from_utf8_lossy(&unescape(left.get(3)?)).into_owned(),
                point: PathBuf::from(OsString::from_vec(unescape(left.get(4)?))),
                version,
                options: right
                    .get(2)
                    .map(|o| o.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, Stdio};

    const PYTHON: &str = "/usr/bin/python3";

    fn detect_or_skip(test: &str) -> Option<Cgroups> {
        let cgroups = Cgroups::detect();
        if cgroups.is_none() {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            crate::testing::skip(
                test,
                &format!(
                    "Cgroups::detect() found no usable cgroup hierarchy (running as uid {euid}; \
                     needs root or a delegated, writable cgroupfs)"
                ),
            );
        }
        cgroups
    }

    impl Cgroups {
        fn create_limited(
            &self,
            name: &str,
            limits: &CgroupLimits,
        ) -> Result<JobCgroup, CgroupError> {
            let mut job = self.create(name, limits.cpu_millis_per_sec.is_some())?;
            job.limit(limits)?;
            Ok(job)
        }
        /// Forgets `cgroup.kill`, to exercise what hosts without it do.
        fn without_cgroup_kill(mut self) -> Cgroups {
            let inner = Arc::get_mut(&mut self.inner).expect("no run created yet");
            for hierarchy in &mut inner.hierarchies {
                hierarchy.features.kill = false;
            }
            self
        }

        fn parents(&self) -> Vec<PathBuf> {
            self.inner
                .hierarchies
                .iter()
                .map(|h| h.parent.clone())
                .collect()
        }

        fn measures_cpu(&self) -> bool {
            self.inner.hierarchies.iter().any(|h| h.features.cpu_usage)
        }
    }

    impl JobCgroup {
        fn paths(&self) -> Vec<PathBuf> {
            self.dirs.iter().map(|d| d.path.clone()).collect()
        }

        fn process_count(&self) -> usize {
            self.dirs.iter().map(|d| procs(&d.path).len()).sum()
        }
    }

    fn limits(memory_bytes: u64, pids: u64, cpu_millis_per_sec: Option<u64>) -> CgroupLimits {
        CgroupLimits {
            memory_bytes,
            pids,
            cpu_millis_per_sec,
        }
    }

    /// Starts `argv` through a shell that waits for a line on stdin before exec'ing it, so that
    /// the program runs only once its process is in `job`.
    fn start_in(job: &JobCgroup, argv: &[&str]) -> Child {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read go && exec \"$@\"", "sh"])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn /bin/sh");
        for dir in &job.dirs {
            fs::write(dir.path.join("cgroup.procs"), child.id().to_string()).expect("attach");
        }
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("release the shell");
        child
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn starting_removes_what_a_dead_server_left_behind() {
        let Some(cgroups) = detect_or_skip("sweep") else {
            return;
        };
        let Some(own) = cgroups.inner.hierarchies[0]
            .parent
            .parent()
            .map(Path::to_path_buf)
        else {
            return;
        };
        // pid_max is at most 2^22: no process can have this pid.
        let dead = own.join("kiln-4194999-0");
        fs::create_dir_all(dead.join("run-1")).expect("a leftover cgroup");
        let live = own.join(format!("kiln-{}-999", std::process::id()));
        fs::create_dir_all(&live).expect("this server's own cgroup");
        drop(Cgroups::detect());
        assert!(!dead.exists(), "the dead server's cgroup was removed");
        assert!(live.exists(), "a live server's cgroup is kept");
        fs::remove_dir(&live).expect("clean up");
    }

    #[test]
    fn a_process_over_the_memory_limit_is_oom_killed_and_reported() {
        let Some(cgroups) = detect_or_skip("oom") else {
            return;
        };
        if !cgroups.support().memory {
            crate::testing::skip("oom", "no memory controller");
            return;
        }
        const LIMIT: u64 = 64 << 20;
        let job = cgroups
            .create_limited("oom", &limits(LIMIT, 64, None))
            .unwrap();
        let mut child = start_in(&job, &[PYTHON, "-c", "b = b'x' * (200 << 20)"]);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let usage = job.usage();
        assert!(usage.oom_killed, "{usage:?}");
        let peak = usage.memory_peak_bytes.expect("peak memory");
        assert!((LIMIT / 2..=LIMIT + (1 << 20)).contains(&peak), "{usage:?}");
        job.remove().unwrap();
    }

    #[test]
    fn the_pids_limit_stops_a_fork_bomb() {
        let Some(cgroups) = detect_or_skip("fork bomb") else {
            return;
        };
        if !cgroups.support().pids {
            crate::testing::skip("fork bomb", "no pids controller");
            return;
        }
        // Bounded so that a missing limit shows up as a failure, not a dead machine.
        let bomb = [
            "import os, time",
            "n = 0",
            "for _ in range(100):",
            "    try:",
            "        pid = os.fork()",
            "    except OSError:",
            "        break",
            "    if pid == 0:",
            "        time.sleep(5)",
            "        os._exit(0)",
            "    n += 1",
            "print(n, flush=True)",
        ]
        .join("\n");
        let job = cgroups
            .create_limited("fork-bomb", &limits(256 << 20, 8, None))
            .unwrap();
        let mut child = start_in(&job, &[PYTHON, "-c", &bomb]);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let forked: u64 = line.trim().parse().expect("python printed a count");
        // Python itself is one of the 8 tasks.
        assert!((1..8).contains(&forked), "forked {forked} children");
        let started = Instant::now();
        job.remove().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        child.wait().unwrap();
    }

    fn assert_kill_leaves_nothing(cgroups: &Cgroups, name: &str) {
        let job = cgroups
            .create_limited(name, &limits(256 << 20, 64, None))
            .unwrap();
        let hierarchies = job.dirs.len();
        let mut child = start_in(
            &job,
            &[
                "/bin/sh",
                "-c",
                "sleep 60 & sleep 60 & setsid sleep 60 & wait",
            ],
        );
        wait_until("the shell and its three sleeps run", || {
            job.process_count() == 4 * hierarchies
        });
        job.kill();
        assert_eq!(job.process_count(), 0);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        job.remove().unwrap();
    }

    #[test]
    fn kill_leaves_no_process_in_the_cgroup() {
        let Some(cgroups) = detect_or_skip("kill") else {
            return;
        };
        assert_kill_leaves_nothing(&cgroups, "kill");
    }

    #[test]
    fn kill_without_cgroup_kill_signals_every_process_until_none_is_left() {
        let Some(cgroups) = detect_or_skip("kill by signals") else {
            return;
        };
        let cgroups = cgroups.without_cgroup_kill();
        assert!(!cgroups.support().kill);
        assert_kill_leaves_nothing(&cgroups, "kill-by-signals");
    }

    #[test]
    fn kill_spares_a_process_that_is_not_in_the_run() {
        let Some(cgroups) = detect_or_skip("kill spares") else {
            return;
        };
        let job = cgroups
            .create_limited("spares", &limits(256 << 20, 64, None))
            .unwrap();
        let mut outsider = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = libc::pid_t::try_from(outsider.id()).unwrap();
        let dir = &job.dirs[0];
        let id = cgroups.inner.hierarchies[dir.hierarchy].id;
        // As if `pid` had been read from cgroup.procs and then recycled by another process.
        kill_member(pid, id, &dir.cgroup);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            outsider.try_wait().unwrap().is_none(),
            "outsider was killed"
        );
        outsider.kill().unwrap();
        outsider.wait().unwrap();
    }

    #[test]
    fn usage_reports_cpu_time_of_a_busy_loop() {
        let Some(cgroups) = detect_or_skip("cpu usage") else {
            return;
        };
        if !cgroups.measures_cpu() {
            crate::testing::skip("cpu usage", "no CPU accounting");
            return;
        }
        let busy = "import time\n\
                    t = time.process_time()\n\
                    while time.process_time() - t < 0.3: pass\n";
        let job = cgroups
            .create_limited("busy", &limits(256 << 20, 64, None))
            .unwrap();
        assert_eq!(job.usage().cpu_ms, Some(0));
        let mut child = start_in(&job, &[PYTHON, "-c", busy]);
        assert!(child.wait().unwrap().success());
        let usage = job.usage();
        let cpu_ms = usage.cpu_ms.expect("cpu time");
        assert!((300..5_000).contains(&cpu_ms), "{usage:?}");
        assert!(!usage.oom_killed, "{usage:?}");
        job.remove().unwrap();
    }

    #[test]
    fn the_cpu_quota_slows_a_busy_loop_down() {
        let Some(cgroups) = detect_or_skip("cpu quota") else {
            return;
        };
        if !cgroups.support().cpu {
            crate::testing::skip("cpu quota", "no cpu controller");
            return;
        }
        // 60 ms of CPU take about 0.1 s unthrottled; at 10 ms per 100 ms period at least 0.5 s.
        let busy = "import time\n\
                    t = time.process_time()\n\
                    while time.process_time() - t < 0.06: pass\n";
        let job = cgroups
            .create_limited("quota", &limits(256 << 20, 64, Some(100)))
            .unwrap();
        let started = Instant::now();
        let mut child = start_in(&job, &[PYTHON, "-c", busy]);
        assert!(child.wait().unwrap().success());
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        job.remove().unwrap();
    }

    #[test]
    fn cpu_time_used_before_the_run_started_is_not_the_runs() {
        let Some(cgroups) = detect_or_skip("cpu start") else {
            return;
        };
        if !cgroups.measures_cpu() {
            crate::testing::skip("cpu start", "no CPU accounting");
            return;
        }
        let busy = "import time\n\
                    t = time.process_time()\n\
                    while time.process_time() - t < 0.2: pass\n";
        let mut job = cgroups
            .create_limited("before-start", &limits(256 << 20, 64, None))
            .unwrap();
        let mut child = start_in(&job, &[PYTHON, "-c", busy]);
        assert!(child.wait().unwrap().success());
        assert!(job.cpu_ms() >= Some(200), "{:?}", job.usage());
        job.start_counting();
        assert!(job.cpu_ms() < Some(20), "{:?}", job.usage());
        let mut child = start_in(&job, &[PYTHON, "-c", busy]);
        assert!(child.wait().unwrap().success());
        let cpu_ms = job.cpu_ms().expect("cpu time");
        assert!((200..2_000).contains(&cpu_ms), "{cpu_ms} ms");
        job.remove().unwrap();
    }

    #[test]
    fn a_run_without_a_cpu_quota_is_only_created_where_it_is_limited_or_counted() {
        let Some(cgroups) = detect_or_skip("no quota") else {
            return;
        };
        let hierarchies = &cgroups.inner.hierarchies;
        let counting = hierarchies.iter().filter(|h| h.features.cpu_usage).count();
        assert!(counting <= 1, "{counting} hierarchies count CPU time");
        let mut job = cgroups.create("no-quota", false).unwrap();
        for dir in &job.dirs {
            let features = hierarchies[dir.hierarchy].features;
            let needed = features.memory || features.pids || features.cpu_usage || features.kill;
            assert!(needed, "{} serves only the CPU quota", dir.path.display());
        }
        let refused = job.limit(&limits(64 << 20, 16, Some(100)));
        assert!(
            matches!(refused, Err(CgroupError::NoQuota(_))),
            "{refused:?}"
        );
        job.remove().unwrap();
    }

    #[test]
    fn limits_already_in_place_are_not_written_again() {
        let Some(cgroups) = detect_or_skip("in place") else {
            return;
        };
        let wanted = limits(256 << 20, 64, None);
        let mut job = cgroups.create_limited("in-place", &wanted).unwrap();
        let Some(pids) = job
            .dirs
            .iter()
            .find(|d| cgroups.inner.hierarchies[d.hierarchy].features.pids)
            .map(|d| d.path.join("pids.max"))
        else {
            crate::testing::skip("in place", "no pids controller");
            return job.remove().unwrap();
        };
        // Changed behind its back: a write of the same limits would put 64 back.
        fs::write(&pids, "63").unwrap();
        job.limit(&wanted).unwrap();
        assert_eq!(
            read_u64(&pids),
            Some(63),
            "the same limits were written again"
        );
        job.limit(&limits(256 << 20, 32, None)).unwrap();
        assert_eq!(read_u64(&pids), Some(32), "other limits are written");
        // A ready sandbox has its limits from the run before: a higher memory limit must
        // still go in (cgroup v1 refuses one above the memory+swap limit).
        job.limit(&limits(64 << 20, 32, None)).unwrap();
        job.limit(&limits(1 << 30, 32, None)).unwrap();
        job.remove().unwrap();
    }

    #[test]
    fn remove_cleans_up_the_directories() {
        let Some(cgroups) = detect_or_skip("remove") else {
            return;
        };
        let parents = cgroups.parents();
        assert!(parents.iter().all(|p| p.is_dir()));
        let job = cgroups
            .create_limited("remove", &limits(256 << 20, 64, None))
            .unwrap();
        let paths = job.paths();
        assert!(!paths.is_empty() && paths.iter().all(|p| p.is_dir()));
        let mut child = start_in(&job, &["sleep", "60"]);
        job.remove().unwrap();
        assert!(paths.iter().all(|p| !p.exists()), "{paths:?}");
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        drop(cgroups);
        assert!(parents.iter().all(|p| !p.exists()), "{parents:?}");
    }

    #[test]
    fn dropping_a_run_kills_it_and_removes_it_even_after_its_cgroups() {
        let Some(cgroups) = detect_or_skip("drop") else {
            return;
        };
        let parents = cgroups.parents();
        let job = cgroups
            .create_limited("drop", &limits(256 << 20, 64, None))
            .unwrap();
        let paths = job.paths();
        let mut child = start_in(&job, &["sleep", "60"]);
        drop(cgroups);
        assert!(
            parents.iter().all(|p| p.is_dir()),
            "parents outlive their runs"
        );
        drop(job);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(paths.iter().chain(&parents).all(|p| !p.exists()));
    }

    #[test]
    fn create_refuses_a_name_in_use_without_touching_its_owner() {
        let Some(cgroups) = detect_or_skip("name in use") else {
            return;
        };
        let job = cgroups
            .create_limited("taken", &limits(256 << 20, 64, None))
            .unwrap();
        let err = cgroups
            .create_limited("taken", &limits(256 << 20, 64, None))
            .unwrap_err();
        assert!(
            matches!(&err, CgroupError::Io { action: "create", source, .. }
            if source.kind() == io::ErrorKind::AlreadyExists),
            "{err}"
        );
        assert!(job.paths().iter().all(|p| p.is_dir()));
        job.remove().unwrap();
    }

    #[test]
    fn create_rejects_names_that_are_not_one_plain_component() {
        let Some(cgroups) = detect_or_skip("names") else {
            return;
        };
        let long = "x".repeat(129);
        for name in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "a\nb",
            long.as_str(),
        ] {
            let err = cgroups.create_limited(name, &PROBE_LIMITS).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidName(_)),
                "{name:?}: {err}"
            );
        }
        let job = cgroups
            .create_limited("0190aa3e-7e4c-7d0b-9a40-6c1b2f9e1a11-2", &PROBE_LIMITS)
            .unwrap();
        job.remove().unwrap();
    }

    const HYBRID_CGROUP: &str = "\
12:name=systemd:/
11:pids:/process_api/ac23
10:memory:/process_api/ac23
4:cpu,cpuacct:/kiln.service
0::/kiln.service
";

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /process_api /sys/fs/cgroup/mem\\040ory rw,relatime - cgroup cgroup rw,memory
36 31 0:36 /elsewhere /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn locate_maps_each_hierarchy_to_our_own_cgroup_under_its_mount() {
        let located = locate(HYBRID_CGROUP, HYBRID_MOUNTINFO);
        let found: Vec<(Version, u32, Vec<&str>, &str, &Path)> = located
            .iter()
            .map(|l| {
                let controllers = l.controllers.iter().map(String::as_str).collect();
                (
                    l.version,
                    l.id,
                    controllers,
                    l.own.as_str(),
                    l.dir.as_path(),
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                // pids is mounted from a cgroup we are not in: unusable, skipped.
                (
                    Version::V1,
                    10,
                    vec!["memory"],
                    "/process_api/ac23",
                    Path::new("/sys/fs/cgroup/mem ory/ac23"),
                ),
                (
                    Version::V1,
                    4,
                    vec!["cpu", "cpuacct"],
                    "/kiln.service",
                    Path::new("/sys/fs/cgroup/cpu,cpuacct/kiln.service"),
                ),
                (
                    Version::V2,
                    0,
                    vec![],
                    "/kiln.service",
                    Path::new("/sys/fs/cgroup/unified/kiln.service"),
                ),
            ]
        );
    }

    #[test]
    fn locate_on_a_pure_v2_host_or_outside_our_namespace() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let located = locate("0::/\n", mountinfo);
        assert_eq!(located.len(), 1);
        assert_eq!(located[0].dir, Path::new("/sys/fs/cgroup"));
        assert!(locate("0::/../../other\n", mountinfo).is_empty());
    }

    #[test]
    fn v2_limits_cap_memory_swap_tasks_and_cpu() {
        let l = limits(64 << 20, 100, Some(1500));
        let all: Vec<(&str, String, Need)> =
            [Controller::Memory, Controller::Pids, Controller::Cpu]
                .into_iter()
                .flat_map(|c| knobs(Version::V2, c, &l))
                .map(|k| (k.file, k.value, k.need))
                .collect();
        assert_eq!(
            all,
            vec![
                ("memory.max", "67108864".to_owned(), Need::Required),
                ("memory.swap.max", "0".to_owned(), Need::IfPresent),
                ("pids.max", "100".to_owned(), Need::Required),
                ("cpu.max", "150000 100000".to_owned(), Need::Required),
            ]
        );
    }

    #[test]
    fn v1_memory_lifts_memsw_sets_memory_then_memsw_and_keeps_the_oom_killer_on() {
        let files: Vec<(&str, String)> = knobs(Version::V1, Controller::Memory, &PROBE_LIMITS)
            .into_iter()
            .map(|k| (k.file, k.value))
            .collect();
        assert_eq!(
            files,
            vec![
                ("memory.memsw.limit_in_bytes", "-1".to_owned()),
                ("memory.limit_in_bytes", "1073741824".to_owned()),
                ("memory.memsw.limit_in_bytes", "1073741824".to_owned()),
                ("memory.swappiness", "0".to_owned()),
                ("memory.oom_control", "0".to_owned()),
            ]
        );
    }

    #[test]
    fn out_of_range_limits_are_clamped_to_what_the_kernel_accepts() {
        let value = |c, l: &CgroupLimits| knobs(Version::V1, c, l).pop().map(|k| k.value);
        assert_eq!(
            value(Controller::Cpu, &limits(1, 1, Some(3))),
            Some("1000".to_owned())
        );
        assert_eq!(value(Controller::Cpu, &limits(1, 1, None)), None);
        assert_eq!(
            value(Controller::Pids, &limits(1, u64::MAX, None)),
            Some("max".to_owned())
        );
    }

    #[test]
    fn keyed_reads_flat_keyed_cgroup_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), None);
        assert_eq!(
            keyed("usage_usec 12345\nuser_usec 1\n", "usage_usec"),
            Some(12345)
        );
    }
}
