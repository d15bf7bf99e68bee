//! What kiln's sandbox costs per run, each figure beside the bare spawn of the same program,
//! measured in the same run on the same machine. Every figure is the rate of one job at a time,
//! started, run to its end and torn down (work directory removed, cgroup gone) before the next:
//!
//! 1. **Sandboxed `/bin/true`, runs/s**: [`Runner::run`] under [`Isolation::Sandbox`] (new user,
//!    pid, mount, network, IPC, UTS and cgroup namespaces, a fresh root, seccomp, Landlock,
//!    cgroups), with an extra runtime whose program is `/bin/true` and the default limits. Limit:
//!    bare spawns/s of `/bin/true` (`Command::status`). Goal: within 3 times the bare time, so
//!    that for the cheapest job the sandbox, not the program, is what a run costs, but not by more
//!    than a small factor.
//! 2. **Sandboxed `python3 -c pass`, runs/s**: the `python` runtime running `pass` (`/usr/bin/python3
//!    -E -s -B main.py`). Limit: bare `/usr/bin/python3 -c pass`, never the `python3` on `PATH`
//!    (possibly a slow pyenv shim). Goal: within 1.3 times the bare time: for a real interpreter's
//!    start the sandbox should be a minor cost.
//! 3. **The runner without the sandbox** ([`Isolation::None`]) for both commands: the
//!    runner's own cost (work directory, pipes, pidfd, output capture, `wait4`), so the sandbox's
//!    share is visible as the difference from 1 and 2.
//! 4. **bubblewrap** (`/usr/bin/bwrap`, when installed) running both commands in comparable
//!    namespaces with a read-only `/usr`, a fresh `/proc`, `/dev` and `/tmp`: the widely used
//!    sandbox to compare with; kiln should be faster for python.
//!
//! Why: the sandbox is paid on every run, and for short jobs it can dominate. The machine this
//! runs on is shared and noisy, so an absolute rate says little: each figure is measured
//! interleaved with its limit (five alternating slices of each), `KILN_BENCH_RUNS` (3) times, and the ratio of the medians (the bare time over
//! the figure's: 1 is as fast as the bare program, 0.25 four times slower) is the number to
//! compare between runs. A few runs of each kind go first, unmeasured, so caches are warm for
//! all of them.
//!
//! A kiln figure's clock stops only once the runner's background teardown (each sandbox's cgroup,
//! removed off the async threads) has finished too: its tokio runtime is dropped inside the
//! measurement, which waits for those tasks. Jobs follow each other back to back, the best case
//! for kernel work that is cheap when repeated soon after (on cgroup hierarchies without
//! `favordynmods`, moving a process into a cgroup waits for an RCU grace period unless another
//! move happened within the last one): a server whose jobs come further apart pays more per start.
//!
//! The sandbox needs root (uid maps, cgroups): if it cannot be built the bench says why and exits
//! non-zero. Run it with `scripts/bench --only sandbox` (installs bubblewrap first) or
//! `cargo bench --bench sandbox`. Its rows (row 3 of the benchmark issue, as milliseconds per run)
//! go to `target/bench-sandbox.json` (see `benches/report`).

mod common;
mod report;

use report::{Better, Goal, Row};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use kiln::job::policy::Policy;
use kiln::job::{JobId, Limits, Outcome};
use kiln::runner::{Isolation, RunRequest, Runner};
use kiln::runtime::{Runtime, Runtimes, Sources};
use kiln::sandbox::{Sandbox, SandboxConfig};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Jobs per measurement of `/bin/true`, one at a time.
const TRUE_JOBS: usize = 300;
/// Jobs per measurement of `python3 -c pass`, one at a time.
const PYTHON_JOBS: usize = 100;
/// Unmeasured jobs of each kind before the first measurement.
const WARM_UP: usize = 10;
/// How many alternating slices of bare and contender runs a measurement takes.
const SLICES: usize = 5;
/// Host uids the bench's sandbox maps to (this and the next 10 000): clear of a server's default
/// range, which starts at 200 000.
const UID_BASE: u32 = 7_000_000;
const PYTHON: &str = "/usr/bin/python3";
const BWRAP: &str = "/usr/bin/bwrap";
/// bubblewrap's confinement closest to kiln's: every namespace, a read-only `/usr` with the
/// merged-`/usr` links, a fresh `/proc`, a minimal `/dev`, a private `/tmp`, and the sandbox dies
/// with its parent. The command follows.
const BWRAP_ARGS: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/sbin",
    "/sbin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "--chdir",
    "/tmp",
];

/// One program as each contender runs it.
struct Program {
    /// As the table names it.
    label: &'static str,
    jobs: usize,
    /// The kiln runtime and the code it is given.
    runtime: &'static str,
    code: &'static str,
    /// The bare command line: the limit, and what bwrap runs.
    bare: &'static [&'static str],
    /// Sandboxed, at most this many times the bare time.
    within: f64,
}

const PROGRAMS: [Program; 2] = [
    Program {
        label: "/bin/true",
        jobs: TRUE_JOBS,
        runtime: "true",
        code: "",
        bare: &["/bin/true"],
        within: 3.0,
    },
    Program {
        label: "python3 -c pass",
        jobs: PYTHON_JOBS,
        runtime: "python",
        code: "pass",
        bare: &[PYTHON, "-c", "pass"],
        within: 1.3,
    },
];

/// Who runs the command in a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Sandboxed,
    Unsandboxed,
    Bwrap,
}

fn main() -> ExitCode {
    let scratch = scratch();
    let sandboxed = match sandboxed_runner(scratch.path()) {
        Ok(runner) => runner,
        Err(why) => {
            eprintln!("bench-sandbox: cannot build kiln's sandbox: {why}");
            eprintln!("bench-sandbox: it needs root (uid maps, cgroups) and user namespaces");
            return ExitCode::FAILURE;
        }
    };
    let unsandboxed = Runner::new(scratch.path().join("plain"), Isolation::None)
        .expect("the unsandboxed runner's work root");
    let sources = Sources {
        file: None,
        extra: vec![("true".into(), "/bin/true".into())],
    };
    let runtimes = Runtimes::load(&sources).expect("the runtimes");
    for command in &PROGRAMS {
        let Some(runtime) = runtimes.get(command.runtime) else {
            eprintln!(
                "bench-sandbox: no {} runtime on this host (is {} there?)",
                command.runtime, command.bare[0]
            );
            return ExitCode::FAILURE;
        };
        if let Isolation::Sandbox(sandbox) = sandboxed.isolation()
            && !sandbox.can_see(runtime.program())
        {
            eprintln!(
                "bench-sandbox: {} is not visible inside the sandbox",
                runtime.program().display()
            );
            return ExitCode::FAILURE;
        }
    }
    let bwrap = bwrap_works();
    let mut contenders = vec![Contender::Sandboxed, Contender::Unsandboxed];
    match &bwrap {
        Ok(()) => contenders.push(Contender::Bwrap),
        Err(why) => println!("bubblewrap rows left out: {why}"),
    }
    let runner = |contender| match contender {
        Contender::Sandboxed => Some(&sandboxed),
        Contender::Unsandboxed => Some(&unsandboxed),
        Contender::Bwrap => None,
    };
    let measure = |contender, command: &Program, jobs| match runner(contender) {
        Some(runner) => kiln_runs(runner, &runtimes, command, jobs),
        None => bwrap_runs(command, jobs),
    };

    let runs = report::runs();
    let jobs = |program: &Program| report::size(program.jobs);
    println!(
        "kiln sandbox bench: {runs} runs of {} /bin/true and {} python jobs per figure, one job \
         at a time",
        jobs(&PROGRAMS[0]),
        jobs(&PROGRAMS[1]),
    );
    for command in &PROGRAMS {
        bare_runs(command, WARM_UP);
        for &contender in &contenders {
            measure(contender, command, WARM_UP);
        }
    }
    let mut figures: Vec<Figure> = Vec::new();
    for command in &PROGRAMS {
        for &contender in &contenders {
            figures.push(Figure::new(contender, command));
        }
    }
    for run in 1..=runs {
        for figure in &mut figures {
            let command = figure.command;
            // In alternating slices, so that the shared machine's drift in speed (which moves
            // over seconds) falls on both alike: each rate is over its slices' total time.
            let (mut bare_s, mut figure_s) = (0.0, 0.0);
            let slice = jobs(command).div_ceil(SLICES);
            for _ in 0..SLICES {
                bare_s += slice as f64 / bare_runs(command, slice);
                figure_s += slice as f64 / measure(figure.contender, command, slice);
            }
            let total = (slice * SLICES) as f64;
            let (limit, rate) = (total / bare_s, total / figure_s);
            println!(
                "run {run}: {:.0} runs/s {} vs {limit:.0} bare runs/s",
                rate,
                figure.name()
            );
            figure.runs.push(1000.0 / rate);
            figure.limit_runs.push(1000.0 / limit);
        }
    }

    let mut rows: Vec<Row> = figures.iter().map(Figure::row).collect();
    rows.extend(derived(&figures));
    if bwrap.is_ok() {
        println!(
            "bubblewrap ran as: {BWRAP} {} COMMAND",
            BWRAP_ARGS.join(" ")
        );
    }
    report::write("sandbox", &rows);
    ExitCode::SUCCESS
}

/// Where the runners' work roots go: the target directory's disk, as a deployment's would be on
/// a disk, not a tmpfs. Traversable by everyone, as the sandbox's unprivileged init must reach
/// its staging directory in the work root beneath.
fn scratch() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("scratch directory permissions");
    dir
}

fn sandboxed_runner(scratch: &Path) -> Result<Runner, String> {
    let work_root = scratch.join("sandboxed");
    let config = SandboxConfig {
        uid_base: UID_BASE,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(&config, &work_root).map_err(|e| e.to_string())?;
    Runner::new(work_root.clone(), Isolation::Sandbox(sandbox))
        .map_err(|e| format!("cannot create {}: {e}", work_root.display()))
}

/// bubblewrap is there and its flags work on this host: one `/bin/true` through it.
fn bwrap_works() -> Result<(), String> {
    if !Path::new(BWRAP).exists() {
        return Err(format!("{BWRAP} is not installed"));
    }
    let output = Command::new(BWRAP)
        .args(BWRAP_ARGS)
        .arg("/bin/true")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {BWRAP}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{BWRAP} {} /bin/true failed ({}): {}",
            BWRAP_ARGS.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// One figure: a contender running a command, measured `KILN_BENCH_RUNS` times, each time right
/// after the bare command (its limit); milliseconds per run.
struct Figure {
    contender: Contender,
    command: &'static Program,
    runs: Vec<f64>,
    limit_runs: Vec<f64>,
}

impl Figure {
    fn new(contender: Contender, command: &'static Program) -> Figure {
        Figure {
            contender,
            command,
            runs: Vec::new(),
            limit_runs: Vec::new(),
        }
    }

    fn name(&self) -> String {
        let label = self.command.label;
        match self.contender {
            Contender::Sandboxed => format!("kiln sandboxed `{label}`"),
            Contender::Unsandboxed => format!("kiln runner unsandboxed `{label}`"),
            Contender::Bwrap => format!("bubblewrap `{label}`"),
        }
    }

    fn row(&self) -> Row {
        let goal = match self.contender {
            Contender::Sandboxed => Goal::Within(self.command.within),
            Contender::Unsandboxed | Contender::Bwrap => Goal::None,
        };
        Row::measured(
            3,
            format!("{}, per run, one at a time", self.name()),
            "ms",
            self.runs.clone(),
            Better::Lower,
            Some((
                format!("bare `{}`", self.command.bare.join(" ")),
                self.limit_runs.clone(),
            )),
            goal,
        )
    }
}

/// What the rows mean together: the sandbox's own cost per run, and bubblewrap's time over
/// kiln's, run by run.
fn derived(figures: &[Figure]) -> Vec<Row> {
    let runs = |contender, label| {
        figures
            .iter()
            .find(|f| f.contender == contender && f.command.label == label)
            .map(|f| f.runs.clone())
    };
    let mut rows = Vec::new();
    for command in &PROGRAMS {
        let label = command.label;
        let Some(sandboxed) = runs(Contender::Sandboxed, label) else {
            continue;
        };
        if let Some(plain) = runs(Contender::Unsandboxed, label) {
            let cost = sandboxed.iter().zip(&plain).map(|(s, p)| s - p).collect();
            rows.push(Row::plain(
                3,
                format!("the sandbox's own cost per run, `{label}` (sandboxed − unsandboxed)"),
                "ms",
                cost,
            ));
        }
        if let Some(bwrap) = runs(Contender::Bwrap, label) {
            let times = bwrap.iter().zip(&sandboxed).map(|(b, s)| b / s).collect();
            rows.push(Row::plain(
                3,
                format!("bubblewrap's time over kiln's, `{label}` (> 1: kiln faster)"),
                "×",
                times,
            ));
        }
    }
    rows
}

/// The limit: the bare command spawned and waited for, one at a time.
fn bare_runs(command: &Program, jobs: usize) -> f64 {
    spawn_runs(command.bare[0], &command.bare[1..], jobs)
}

/// bubblewrap running the bare command, one at a time.
fn bwrap_runs(command: &Program, jobs: usize) -> f64 {
    let args: Vec<&str> = BWRAP_ARGS.iter().chain(command.bare).copied().collect();
    spawn_runs(BWRAP, &args, jobs)
}

fn spawn_runs(program: &str, args: &[&str], jobs: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..jobs {
        let status = Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        assert!(status.success(), "{program} {args:?}: {status}");
    }
    jobs as f64 / start.elapsed().as_secs_f64()
}

/// kiln's runner running the command as a job, one at a time, each to its end. A fresh tokio
/// runtime per measurement, dropped before the clock stops: dropping it waits for the teardown
/// the runner left in the background.
fn kiln_runs(runner: &Runner, runtimes: &Runtimes, command: &Program, jobs: usize) -> f64 {
    let runtime: &Runtime = runtimes.get(command.runtime).expect("runtime detected");
    let limits: Limits = Policy::default().default_limits;
    let files = BTreeMap::new();
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let start = Instant::now();
    tokio.block_on(async {
        for _ in 0..jobs {
            let request = RunRequest {
                job_id: JobId::now_v7(),
                attempt: 1,
                runtime,
                code: command.code.as_bytes(),
                stdin: b"",
                args: &[],
                files: &files,
                outputs: &[],
                limits,
                reporting: None,
                batch: None,
            };
            let output = runner
                .run(request, CancellationToken::new())
                .await
                .unwrap_or_else(|e| panic!("kiln could not run {}: {e}", command.label));
            assert_eq!(
                output.outcome,
                Outcome::Success,
                "{}: {:?}",
                command.label,
                output.result
            );
        }
    });
    drop(tokio);
    jobs as f64 / start.elapsed().as_secs_f64()
}
