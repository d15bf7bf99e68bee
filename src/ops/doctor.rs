//! `kiln doctor`: whether this host can run kiln as configured, in plain words, with what to do
//! about each thing that is missing.
//!
//! It asks the same code the server asks at start instead of guessing from the outside: the
//! sandbox's own probe ([`Sandbox::new`], then [`Sandbox::self_test`], a sandboxed run) with its
//! report of namespaces, filters and cgroups, runtime detection with the sandbox's view of what
//! is visible, and a real run of each built-in runtime through the [`Runner`] in that sandbox.
//! Those runs happen in a directory of their own under the work root, so a server using the
//! same work root is not disturbed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::OpsError;
use crate::cli::{Conclusion, Format, SandboxArgs, print};
use crate::config::{DEFAULT_DB, default_work_root, is_postgres_url, without_password};
use crate::job::policy::Policy;
use crate::neighbours;
use crate::runner::{Isolation, RunRequest, Runner};
use crate::runtime::{Runtime, Runtimes};
use crate::sandbox::{Mode, Report, Sandbox, SandboxConfig};
use crate::store;
use crate::store::postgres;

#[derive(Clone, Debug, clap::Args)]
pub struct DoctorArgs {
    /// The database to check: a SQLite file (a warning if it does not exist yet; never
    /// created) or a postgres://… URL (never migrated)
    #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// The work root the server uses [default: $TMPDIR/kiln-work]
    #[arg(long, env = "KILN_WORK_ROOT")]
    work_root: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Check the database with quick_check instead of the full integrity_check (which reads
    /// every index against its table, and takes a while on a large file)
    #[arg(long)]
    quick: bool,
    /// Check the kiln server at this URL too (that it answers /readyz)
    // Global, so that clap carries `kiln --url URL doctor` here (see `main`).
    #[arg(long, env = "KILN_URL", global = true)]
    url: Option<String>,
    #[command(flatten)]
    format: Format,
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    /// Works, but not as well as it could: a limit not enforced, a runtime not offered.
    Warn,
    /// kiln will not start, or will not run jobs safely.
    Fail,
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub area: &'static str,
    #[serde(rename = "verdict")]
    pub severity: Severity,
    pub detail: String,
    /// What to do about it, for warnings and failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(area: &'static str, detail: impl Into<String>) -> Check {
        Check {
            area,
            severity: Severity::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(area: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            area,
            severity: Severity::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(area: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            area,
            severity: Severity::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Free space below which a check fails (SQLite cannot grow the file, runs cannot write), and
/// below which it warns.
const DISK_FAIL_BYTES: u64 = 100 << 20;
const DISK_WARN_BYTES: u64 = 1 << 30;

/// A WAL larger than this means checkpoints are held back (a long-lived reader).
const WAL_WARN_BYTES: u64 = 256 << 20;

/// Runs every check and prints them; a failure if any check failed.
pub async fn run(args: DoctorArgs) -> Result<Conclusion, OpsError> {
    let json = args.format.json;
    let checks = checks(args).await;
    print(|out| {
        if json {
            return writeln!(out, "{}", serde_json::json!({ "checks": checks }));
        }
        for check in &checks {
            let severity = match check.severity {
                Severity::Ok => "ok  ",
                Severity::Warn => "warn",
                Severity::Fail => "FAIL",
            };
            writeln!(out, "{severity}  {:<9} {}", check.area, check.detail)?;
            if let Some(fix) = &check.fix {
                writeln!(out, "      {:<9} fix: {fix}", "")?;
            }
        }
        Ok(())
    })
    .map_err(OpsError::Output)?;
    match checks.iter().any(|c| c.severity == Severity::Fail) {
        true => Ok(Conclusion::Failure),
        false => Ok(Conclusion::Success),
    }
}

async fn checks(args: DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let work_root = args.work_root.clone().unwrap_or_else(default_work_root);
    let scratch = work_root.join(format!(".doctor-{}", std::process::id()));
    match std::fs::create_dir_all(&scratch) {
        Ok(()) => {
            let runtimes = match Runtimes::load(&args.sandbox.runtime_sources()) {
                Ok(runtimes) => Some(runtimes),
                Err(e) => {
                    checks.push(Check::fail(
                        "runtimes",
                        e.to_string(),
                        "kiln serve refuses to start with these runtimes: correct the file",
                    ));
                    None
                }
            };
            let binds = runtimes.as_ref().map(Runtimes::binds).unwrap_or_default();
            let (sandbox, found) = sandbox_checks(&args, &scratch, binds).await;
            checks.extend(found);
            checks.extend(runtime_checks(&args, runtimes, sandbox, &scratch).await);
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                tracing::warn!(path = %scratch.display(), error = %e, "cannot remove");
            }
        }
        Err(e) => checks.push(Check::fail(
            "work root",
            format!("cannot create {}: {e}", scratch.display()),
            "give --work-root a directory kiln may write to (on a local disk, not NFS)",
        )),
    }
    let url = args.db.to_str().filter(|db| is_postgres_url(db));
    if url.is_none() {
        let db_dir = match args.db.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        checks.push(disk_check("database directory", &db_dir));
    }
    checks.push(disk_check("work root", &work_root));
    match url {
        Some(url) => checks.extend(postgres_checks(url).await),
        None => checks.extend(database_checks(&args.db, args.quick).await),
    }
    checks.push(neighbours_check());
    if let Some(url) = &args.url {
        checks.push(server_check(url).await);
    }
    checks
}

/// The sandbox's own startup probe (a sandboxed run of `/bin/true`, as `kiln serve` makes before
/// it starts), and what its report says about cgroups and Landlock.
async fn sandbox_checks(
    args: &DoctorArgs,
    scratch: &Path,
    binds: Vec<PathBuf>,
) -> (Option<Sandbox>, Vec<Check>) {
    if args.sandbox.sandbox == Mode::None {
        let check = Check::warn(
            "sandbox",
            "--sandbox none: submitted code would run unconfined, with the server's privileges",
            "development only; run with --sandbox full (or namespaces) anywhere others submit code",
        );
        return (None, vec![check]);
    }
    let mut config = args.sandbox.config(1);
    config.extra_binds.extend(binds);
    let sandbox = match Sandbox::new(&config, scratch) {
        Ok(sandbox) => sandbox,
        Err(e) => {
            let fix = match config.mode {
                Mode::Full if nested_namespaces_work(scratch) => {
                    "this host forbids unprivileged user namespaces: allow them \
                     (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, \
                     or kernel.apparmor_restrict_unprivileged_userns=0), or run kiln as root \
                     with --sandbox namespaces, which works here"
                }
                Mode::Full => {
                    "allow user namespaces (sysctl user.max_user_namespaces > 0, \
                     kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0); \
                     inside a container, give it CAP_SYS_ADMIN or run it with --privileged"
                }
                _ => {
                    "run kiln as root, on a host (or privileged container) that may create namespaces"
                }
            };
            let check = Check::fail("sandbox", format!("cannot start: {e}"), fix);
            return (None, vec![check]);
        }
    };
    if let Err(e) = sandbox.self_test().await {
        let fix = e.fix().unwrap_or(
            "kiln serve refuses to start here too; inside a container whose seccomp or AppArmor \
             profile forbids what the error names, allow it or run it --privileged",
        );
        let check = Check::fail("sandbox", format!("cannot run jobs: {e}"), fix);
        return (None, vec![check]);
    }
    let report = sandbox.report();
    let mut checks = vec![Check::ok(
        "sandbox",
        format!(
            "level {}: {} namespaces, seccomp",
            report.level,
            report.namespaces.join(", ")
        ),
    )];
    checks.push(landlock_check(&report));
    checks.push(cgroup_check(&report));
    (Some(sandbox), checks)
}

/// Whether `--sandbox namespaces` would work where `full` does not.
fn nested_namespaces_work(scratch: &Path) -> bool {
    let config = SandboxConfig {
        mode: Mode::Namespaces,
        ..SandboxConfig::default()
    };
    Sandbox::new(&config, scratch).is_ok()
}

fn landlock_check(report: &Report) -> Check {
    match report.landlock_abi {
        Some(abi) => Check::ok("landlock", format!("ABI {abi}")),
        None => Check::warn(
            "landlock",
            "not available: a job's file access is confined by its mounts alone",
            "use a kernel of 5.13 or later with Landlock enabled (lsm=...,landlock on the \
             kernel command line)",
        ),
    }
}

fn cgroup_check(report: &Report) -> Check {
    let Some(cgroups) = report.cgroups else {
        return Check::warn(
            "cgroups",
            "none usable: memory is limited by RLIMIT_AS only, processes by RLIMIT_NPROC, \
             and a run cannot be killed as a whole",
            "run kiln as root on a host with a writable cgroup filesystem; under systemd give \
             its unit Delegate=yes; in a container, mount /sys/fs/cgroup read-write",
        );
    };
    let missing: Vec<&str> = [
        (cgroups.memory, "memory"),
        (cgroups.pids, "pids"),
        (cgroups.cpu, "cpu"),
    ]
    .into_iter()
    .filter_map(|(on, name)| (!on).then_some(name))
    .collect();
    if missing.is_empty() {
        return Check::ok(
            "cgroups",
            format!(
                "{}: memory, pids and cpu controllers{}",
                cgroups.version,
                if cgroups.kill { ", cgroup.kill" } else { "" }
            ),
        );
    }
    let fix = match cgroups.version {
        "v1" => format!(
            "mount the {} controller hierarchy (or boot with systemd.unified_cgroup_hierarchy=1)",
            missing.join(", ")
        ),
        _ => format!(
            "enable them for kiln's cgroup: `echo '+{}' > <parent>/cgroup.subtree_control` along \
             the path from /sys/fs/cgroup, or Delegate=yes in its systemd unit",
            missing.join(" +")
        ),
    };
    Check::warn(
        "cgroups",
        format!(
            "{} without the {} controller: those limits are enforced by rlimits alone",
            cgroups.version,
            missing.join(", ")
        ),
        fix,
    )
}

async fn runtime_checks(
    args: &DoctorArgs,
    runtimes: Option<Runtimes>,
    sandbox: Option<Sandbox>,
    scratch: &Path,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(mut runtimes) = runtimes else {
        return checks;
    };
    for unavailable in runtimes.unavailable() {
        let fix = match &unavailable.package {
            Some(package) => format!(
                "install it to offer {} (e.g. apt-get install {package})",
                unavailable.name
            ),
            None => format!("install it to offer {}", unavailable.name),
        };
        checks.push(Check::warn(
            "runtimes",
            format!("{}: not offered: {}", unavailable.name, unavailable.missing),
            fix,
        ));
    }
    if args.sandbox.sandbox == Mode::None || sandbox.is_some() {
        if let Some(sandbox) = &sandbox {
            let before: Vec<String> = runtimes.iter().map(|r| r.name.clone()).collect();
            runtimes.retain_visible(|program| sandbox.can_see(program));
            for hidden in runtimes
                .unavailable()
                .iter()
                .filter(|u| before.contains(&u.name))
            {
                checks.push(Check::warn(
                    "runtimes",
                    format!("{}: not offered: {}", hidden.name, hidden.missing),
                    "bind its directory with --sandbox-bind DIR, or the runtime's binds",
                ));
            }
        }
        let isolation = match sandbox {
            Some(sandbox) => Isolation::Sandbox(sandbox),
            None => Isolation::None,
        };
        match Runner::new(scratch.to_path_buf(), isolation) {
            Ok(runner) => {
                for runtime in runtimes.iter() {
                    checks.push(try_runtime(&runner, runtime).await);
                }
            }
            Err(e) => checks.push(Check::fail(
                "runtimes",
                format!("cannot prepare a work directory: {e}"),
                "give --work-root a directory kiln may write to",
            )),
        }
    }
    if runtimes.is_empty() {
        checks.push(Check::fail(
            "runtimes",
            "no runtime is available: kiln serve will refuse to start",
            "install python3 (or bash), or define one with --runtimes FILE",
        ));
    }
    checks
}

/// Runs a small program of `runtime` exactly as a job would run, and checks it printed `ok`.
async fn try_runtime(runner: &Runner, runtime: &Runtime) -> Check {
    let Some(code) = runtime.hello.as_deref() else {
        return Check::ok(
            "runtimes",
            format!(
                "{}: {} (visible; not test-run: its definition has no hello program)",
                runtime.name,
                runtime.program().display()
            ),
        );
    };
    let files = Default::default();
    let request = RunRequest {
        job_id: uuid::Uuid::now_v7(),
        attempt: 1,
        runtime,
        code: code.as_bytes(),
        stdin: b"",
        args: &[],
        files: &files,
        outputs: &[],
        limits: Policy::default().default_limits,
        reporting: None,
        batch: None,
    };
    let name = &runtime.name;
    match runner.run(request, CancellationToken::new()).await {
        Ok(out) if out.result.stdout.trim_ascii() == b"ok" => Check::ok(
            "runtimes",
            format!(
                "{name}: {} runs ({} ms)",
                runtime.program().display(),
                out.result.wall_ms
            ),
        ),
        Ok(out) => Check::fail(
            "runtimes",
            format!(
                "{name}: a test run ended {} (exit {:?}): {}",
                out.outcome.as_str(),
                out.result.exit_code,
                String::from_utf8_lossy(&out.result.stderr).trim()
            ),
            "run the same with --sandbox none to tell the sandbox from the runtime; a library \
             outside /usr needs --sandbox-bind",
        ),
        Err(e) => Check::fail(
            "runtimes",
            format!("{name}: cannot run: {e}"),
            "see the sandbox check above; the server log has the details of failed starts",
        ),
    }
}

fn disk_check(area: &'static str, path: &Path) -> Check {
    let free = match free_bytes(path) {
        Ok(free) => free,
        Err(e) => {
            return Check::fail(
                "disk",
                format!("{area} {}: {e}", path.display()),
                "create the directory, or point kiln at one that exists",
            );
        }
    };
    let detail = format!("{area} {}: {} MiB free", path.display(), free >> 20);
    let fix = "free space there, or move it to a larger disk: a full disk makes submits fail \
               with 503 until space returns";
    match free {
        f if f < DISK_FAIL_BYTES => Check::fail("disk", detail, fix),
        f if f < DISK_WARN_BYTES => Check::warn("disk", detail, fix),
        _ => Check::ok("disk", detail),
    }
}

/// Space available to an unprivileged writer on the file system holding `path` (or its closest
/// existing ancestor).
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain C data and `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

async fn database_checks(db: &Path, quick: bool) -> Vec<Check> {
    if !db.exists() {
        // A warning, not a failure: before its first start a server has no database, and
        // `kiln serve` creates it. Elsewhere it means the wrong directory or a mistyped path.
        return vec![Check::warn(
            "database",
            format!(
                "no database at {}: kiln serve creates it at its first start",
                db.display()
            ),
            "if the server's database is elsewhere, give it with --db or KILN_DB",
        )];
    }
    let path = db.to_path_buf();
    let health = match tokio::task::spawn_blocking(move || store::inspect(&path, quick)).await {
        Ok(Ok(health)) => health,
        Ok(Err(e)) => {
            return vec![Check::fail(
                "database",
                format!("{}: {e}", db.display()),
                "check the path and its permissions; a file that is not a kiln database \
                 needs another --db",
            )];
        }
        Err(e) => {
            return vec![Check::fail(
                "database",
                e.to_string(),
                "report this as a bug",
            )];
        }
    };
    let mut checks = Vec::new();
    let size = health.pages * health.page_size;
    let version = health.user_version;
    let known = health.known_version;
    checks.push(schema_check(version, known, || {
        format!(
            "{}: schema version {version}, {} MiB, {} free pages",
            db.display(),
            size >> 20,
            health.free_pages
        )
    }));
    checks.push(match health.journal_mode.as_str() {
        "wal" => Check::ok("database", "journal_mode wal"),
        mode => Check::warn(
            "database",
            format!("journal_mode {mode}: readers and the writer block each other"),
            "kiln serve switches it to wal at start; if this file is not served yet, that is fine",
        ),
    });
    let check_name = if quick {
        "quick_check"
    } else {
        "integrity_check"
    };
    checks.push(match health.integrity.as_slice() {
        [ok] if ok == "ok" => Check::ok("database", format!("{check_name}: ok")),
        problems => Check::fail(
            "database",
            format!("{check_name} found: {}", problems.join("; ")),
            "stop the servers and restore the latest `kiln backup`",
        ),
    });
    checks.push(match health.wal_bytes {
        w if w > WAL_WARN_BYTES => Check::warn(
            "database",
            format!("the WAL holds {} MiB not yet checkpointed", w >> 20),
            "a long-lived reader (an open sqlite3 shell, a slow backup) is holding checkpoints \
             back: end it",
        ),
        w => Check::ok("database", format!("WAL {} KiB", w >> 10)),
    });
    if health.prune_markers > 0 {
        checks.push(Check::warn(
            "database",
            "prune_in_progress has rows outside a prune: events may be deleted by anyone",
            "DELETE FROM prune_in_progress once no `kiln prune` runs",
        ));
    }
    checks
}

/// The database's schema `version` against the newest this kiln `known`s; `current` says what
/// is fine about a database at this kiln's version.
fn schema_check(version: u32, known: u32, current: impl FnOnce() -> String) -> Check {
    match version {
        v if v > known => Check::fail(
            "database",
            format!("schema version {v} is newer than this kiln knows ({known})"),
            "run the kiln version that wrote it, or a newer one",
        ),
        v if v < known => Check::ok(
            "database",
            format!("schema version {v}: kiln serve migrates it to {known} at start"),
        ),
        _ => Check::ok("database", current()),
    }
}

/// A PostgreSQL database: that it answers, its schema against this kiln's, and room for the
/// connections nodes open (a pool per node, a connection per worker and eight more).
async fn postgres_checks(url: &str) -> Vec<Check> {
    let shown = without_password(url);
    let health = match postgres::inspect(url).await {
        Ok(health) => health,
        Err(e) => {
            return vec![Check::fail(
                "database",
                format!("{shown}: {e}"),
                "check that the server runs and that the URL's host, port, user, password and \
                 database are right (createdb makes the database)",
            )];
        }
    };
    let (version, known) = (health.schema_version, health.known_version);
    let mut checks = vec![match version {
        0 => Check::warn(
            "database",
            format!("{shown}: no kiln schema yet"),
            "the first kiln serve on it creates the schema",
        ),
        _ => schema_check(version, known, || {
            format!(
                "{shown}: PostgreSQL {}, schema version {version}",
                health.server_version
            )
        }),
    }];
    let free = health.max_connections - health.connections;
    checks.push(match free {
        f if f < 10 => Check::warn(
            "database",
            format!(
                "{} of max_connections {} are in use: a node needs one per worker and 9 more",
                health.connections, health.max_connections
            ),
            "raise max_connections, or run fewer workers per node",
        ),
        _ => Check::ok(
            "database",
            format!(
                "connections: {} of {} in use",
                health.connections, health.max_connections
            ),
        ),
    });
    // A leader is named as its lease owner: the node's id, then its instance.
    let leader = health.leader.map(|(owner, left)| {
        let mut parts = owner.split('/');
        let node = parts.next().unwrap_or_default().to_owned();
        let instance = parts.next().unwrap_or_default().to_owned();
        (node, instance, left)
    });
    checks.push(match leader {
        Some((node, instance, left)) if left > 0 => Check::ok(
            "database",
            format!(
                "node {node:?} (instance {instance}) leads the maintenance, for {left} ms more \
                 unless it renews"
            ),
        ),
        Some((node, _, _)) => Check::ok(
            "database",
            format!("no node leads the maintenance now (the last was {node:?})"),
        ),
        None => Check::ok("database", "no node has led the maintenance yet"),
    });
    if health.synchronous_commit != "on" {
        checks.push(Check::ok(
            "database",
            format!(
                "the server's synchronous_commit is {}; kiln's connections set it on, so a 202 \
                 still means the job is on disk",
                health.synchronous_commit
            ),
        ));
    }
    checks
}

/// The kiln servers running on this host, and whether any two share a work root or sandbox
/// uids ([`neighbours`]): each warns of it at its own start, in a log nobody may be reading.
fn neighbours_check() -> Check {
    let dir = neighbours::default_register();
    let servers = match neighbours::live(&dir) {
        Ok(servers) => servers,
        Err(e) => {
            return Check::warn(
                "servers",
                format!("cannot read the register of servers {}: {e}", dir.display()),
                "let kiln read and write it (it is like /tmp: sticky and writable by all)",
            );
        }
    };
    let clashes = neighbours::clashes_among(&servers);
    if let Some((one, clash)) = clashes.first() {
        let more = match clashes.len() {
            1 => String::new(),
            n => format!(" (and {} more such pairs)", n - 1),
        };
        let detail = format!(
            "the server of pid {} ({}): {clash}{more}",
            one.pid, one.listen
        );
        return Check::warn(
            "servers",
            detail,
            "restart one of them with its own --work-root and --sandbox-uid-base",
        );
    }
    match servers.len() {
        0 => Check::ok("servers", "no kiln server is running on this host"),
        n => Check::ok(
            "servers",
            format!("{n} running on this host, none sharing a work root or sandbox uids"),
        ),
    }
}

async fn server_check(url: &str) -> Check {
    let readyz = format!("{}/readyz", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    let answer = match client {
        Ok(client) => client.get(&readyz).send().await,
        Err(e) => return Check::fail("server", e.to_string(), "report this as a bug"),
    };
    match answer {
        Ok(response) if response.status().is_success() => {
            Check::ok("server", format!("{url} is ready"))
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Check::fail(
                "server",
                format!("{readyz} answered {status}: {}", body.trim()),
                "read the server's log; /readyz fails while the database cannot be written or \
                 no runtime is available",
            )
        }
        Err(e) => Check::fail(
            "server",
            format!("no answer from {url}: {}", causes(&e)),
            "start it with `kiln serve`, or give the URL it listens on with --url",
        ),
    }
}

/// An error with its causes, since reqwest's own message ("error sending request") names none.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
