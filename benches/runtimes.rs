//! Compiled runtimes through kiln's runner and sandbox, each beside the same compile and run done
//! bare on the same machine in the same run: row 11 of the benchmark table.
//!
//! For every compiled runtime this host offers (`c`, `cpp`, `go`, `rust`, `java`, `typescript`),
//! one hello-world program, one run at a time:
//!
//! - **compile + run**: [`Runner::run`] of a single job, which builds in one sandbox and runs the
//!   artifact in a fresh one. Limit: the runtime's own build command and then its run command,
//!   both taken from its definition and started bare in a scratch directory (same words, same
//!   environment). Goal: within 1.3× of bare.
//! - **run from a shared build**: the job as a case of a batch whose build is already made, so
//!   only the run is paid. Limit: the bare run of the same artifact. Goal: within 3× of bare, the
//!   bound the sandbox bench sets for `/bin/true`.
//!
//! Each figure is measured alternately with its limit, `KILN_BENCH_RUNS` (3) times, medians
//! reported with their ratio. A run from a shared build takes a few milliseconds, about what one
//! preempted timeslice costs on a busy machine, so it gets many more samples than a compile.
//! Rows go to `target/bench-runtimes.json` (see `benches/report`). `KILN_BENCH_RUNTIMES=c,go`
//! measures only those runtimes, for tuning one of them.
//! Needs root, as the sandbox does.

mod common;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use kiln::job::policy::Policy;
use kiln::job::{BatchId, JobId, Outcome};
use kiln::runner::{DEFAULT_COMPILE_LIMITS, Isolation, RunRequest, Runner};
use kiln::runtime::{Expansion, Runtime, Runtimes};
use kiln::sandbox::{Sandbox, SandboxConfig};
use report::{Better, Goal, Row};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Samples of compile + run per run, alternating with the limit's.
const SAMPLES: usize = 5;
/// Samples of a run from a shared build per run, alternating with the limit's.
const RUN_SAMPLES: usize = 40;
/// Host uids of the bench's sandbox: clear of a server's default range and the sandbox bench's.
const UID_BASE: u32 = 7_100_000;
/// The environment every run gets besides its runtime's own (see the runner's `job_env`).
const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A hello world in each compiled runtime.
const PROGRAMS: &[(&str, &str)] = &[
    (
        "c",
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    ),
    (
        "cpp",
        "#include <iostream>\nint main() { std::cout << \"hello\" << std::endl; }\n",
    ),
    (
        "go",
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
    ),
    ("rust", "fn main() { println!(\"hello\"); }\n"),
    (
        "java",
        "public class Main { public static void main(String[] a) { System.out.println(\"hello\"); } }\n",
    ),
    ("typescript", "console.log('hello');\n"),
];

fn main() -> ExitCode {
    let scratch = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711))
            .expect("scratch directory permissions");
    }
    let runtimes = Runtimes::load(&Default::default()).expect("the built-in runtimes");
    let work_root = scratch.path().join("sandboxed");
    let config = SandboxConfig {
        uid_base: UID_BASE,
        extra_binds: runtimes.binds(),
        ..SandboxConfig::default()
    };
    let sandbox = match Sandbox::new(&config, &work_root) {
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("bench-runtimes: cannot build kiln's sandbox (it needs root): {e}");
            return ExitCode::FAILURE;
        }
    };
    let runner = Runner::new(work_root, Isolation::Sandbox(sandbox)).expect("the runner");
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let runs = report::runs();
    let mut rows = Vec::new();
    let wanted = report::selected("KILN_BENCH_RUNTIMES");
    for (name, code) in PROGRAMS.iter().filter(|(name, _)| wanted(name)) {
        let Some(runtime) = runtimes.get(name) else {
            println!("bench-runtimes: {name} is not installed here; skipped");
            continue;
        };
        let (mut built, mut bare_built) = (Vec::new(), Vec::new());
        let (mut shared, mut bare_run) = (Vec::new(), Vec::new());
        let batch = BatchId::now_v7();
        // The shared build, made once, unmeasured; and one of each kind to warm the caches.
        tokio.block_on(kiln_run(&runner, runtime, code, Some(batch)));
        tokio.block_on(kiln_run(&runner, runtime, code, None));
        let (shared_bare, _) = Bare::build(scratch.path(), runtime, code);
        shared_bare.run();
        for _ in 0..runs {
            let (mut k, mut b, mut s, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..SAMPLES {
                k.push(tokio.block_on(kiln_run(&runner, runtime, code, None)));
                let (bare, compile_ms) = Bare::build(scratch.path(), runtime, code);
                b.push(compile_ms + bare.run());
            }
            for _ in 0..RUN_SAMPLES {
                s.push(tokio.block_on(kiln_run(&runner, runtime, code, Some(batch))));
                r.push(shared_bare.run());
            }
            built.push(common::median(&k));
            bare_built.push(common::median(&b));
            shared.push(common::median(&s));
            bare_run.push(common::median(&r));
        }
        rows.push(Row::measured(
            11,
            format!("{name}: compile + run of a hello world, one at a time"),
            "ms",
            built,
            Better::Lower,
            Some(("the same compile and run, bare".into(), bare_built)),
            Goal::Within(1.3),
        ));
        rows.push(Row::measured(
            11,
            format!("{name}: run of a hello world from its batch's shared build"),
            "ms",
            shared,
            Better::Lower,
            Some(("the same run, bare".into(), bare_run)),
            Goal::Within(3.0),
        ));
    }
    drop(tokio);
    report::write("runtimes", &rows);
    ExitCode::SUCCESS
}

/// One job of `runtime` through the runner (a case of `batch`, sharing its build, if given);
/// milliseconds from its start until its work directory is gone.
async fn kiln_run(runner: &Runner, runtime: &Runtime, code: &str, batch: Option<BatchId>) -> f64 {
    let files = BTreeMap::new();
    let request = RunRequest {
        job_id: JobId::now_v7(),
        attempt: 1,
        runtime,
        code: code.as_bytes(),
        stdin: b"",
        args: &[],
        files: &files,
        outputs: &[],
        limits: Policy::default().default_limits,
        reporting: None,
        batch,
    };
    let start = Instant::now();
    let out = runner
        .run(request, CancellationToken::new())
        .await
        .expect("the run");
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        out.outcome,
        Outcome::Success,
        "{}: {:?}",
        runtime.name,
        out.result
    );
    assert_eq!(out.result.stdout, b"hello\n", "{}", runtime.name);
    elapsed
}

/// A scratch directory holding one bare build of a program, with the words of its definition.
struct Bare<'a> {
    dir: TempDir,
    runtime: &'a Runtime,
    work: String,
    source: String,
    name: String,
}

impl<'a> Bare<'a> {
    /// Writes `code` into a fresh directory and builds it bare with the runtime's build command;
    /// also the milliseconds the build took.
    fn build(scratch: &Path, runtime: &'a Runtime, code: &str) -> (Bare<'a>, f64) {
        let dir = TempDir::new_in(scratch).expect("bare directory");
        let bare = Bare {
            work: dir.path().display().to_string(),
            source: runtime.source_file(code),
            name: runtime.program_name(code),
            dir,
            runtime,
        };
        std::fs::write(bare.dir.path().join(&bare.source), code).expect("the source");
        let compile = runtime.compile.as_ref().expect("a compiled runtime");
        let ms = bare.start(&compile.command, DEFAULT_COMPILE_LIMITS.memory_mb);
        (bare, ms)
    }

    /// The runtime's run of the build; milliseconds.
    fn run(&self) -> f64 {
        let memory_mb = Policy::default().default_limits.memory_mb;
        self.start(&self.runtime.run, memory_mb)
    }

    /// Starts `command` in the directory with the environment a job gets (see the runner's
    /// `job_env`) and the runtime's own; milliseconds until it exited.
    fn start(&self, command: &kiln::runtime::Command, memory_mb: u64) -> f64 {
        let expansion = Expansion {
            source: &self.source,
            name: &self.name,
            memory_mb,
            work: &self.work,
            args: &[],
        };
        let begun = Instant::now();
        let status = Command::new(command.program(self.dir.path()))
            .args(command.argv(&expansion))
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", JOB_PATH)
            .env("HOME", &self.work)
            .env("TMPDIR", &self.work)
            .env("LANG", "C.UTF-8")
            .envs(self.runtime.env(&expansion))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("a bare start");
        let ms = begun.elapsed().as_secs_f64() * 1000.0;
        assert!(status.success(), "{}: bare {status}", self.runtime.name);
        ms
    }
}
