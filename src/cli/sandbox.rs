//! The sandbox and runtime flags, defined once for the two commands that take them: `kiln serve`,
//! which runs jobs under them, and `kiln doctor`, which checks that this host can.

use std::path::PathBuf;

use crate::sandbox::{Mode, SandboxConfig};

#[derive(Clone, Debug, clap::Args)]
pub struct SandboxArgs {
    /// A file of runtime definitions (TOML, see docs/runtimes.md) adding to the built-in ones or
    /// replacing those of the same name
    #[arg(long = "runtimes", env = "KILN_RUNTIMES", value_name = "FILE")]
    pub runtimes_file: Option<PathBuf>,
    /// Extra runtime NAME=INTERPRETER (the code, in a file named `main`, is passed as its first
    /// argument); repeatable
    #[arg(long = "runtime", value_name = "NAME=PATH", value_parser = crate::runtime::parse_extra)]
    pub runtimes: Vec<(String, PathBuf)>,
    /// Isolation of jobs: `full` (every namespace including a user namespace, seccomp, Landlock,
    /// cgroups), `namespaces` (the same without a user namespace, for hosts that forbid them;
    /// needs root) or `none` (development only: submitted code runs with the server's
    /// privileges). kiln refuses to start if the host cannot give the level asked for.
    #[arg(long, env = "KILN_SANDBOX", value_enum, default_value_t = SandboxConfig::default().mode)]
    pub sandbox: Mode,
    /// Extra host path bound read-only into every sandbox (e.g. another interpreter's tree);
    /// repeatable
    #[arg(long = "sandbox-bind", value_name = "PATH")]
    pub sandbox_binds: Vec<PathBuf>,
    /// First unprivileged host uid/gid sandboxed jobs map to (uses the next 10001)
    #[arg(long, env = "KILN_SANDBOX_UID_BASE", default_value_t = SandboxConfig::default().uid_base,
          value_parser = clap::value_parser!(u32).range(1..4_000_000_000))]
    pub sandbox_uid_base: u32,
}

impl SandboxArgs {
    /// Where the runtime definitions come from besides the built-in ones.
    pub fn runtime_sources(&self) -> crate::runtime::Sources {
        crate::runtime::Sources {
            file: self.runtimes_file.clone(),
            extra: self.runtimes.clone(),
        }
    }

    /// The sandbox these flags ask for, keeping `ready` of them started ahead of their runs.
    pub fn config(&self, ready: usize) -> SandboxConfig {
        SandboxConfig {
            mode: self.sandbox,
            extra_binds: self.sandbox_binds.clone(),
            uid_base: self.sandbox_uid_base,
            ready,
        }
    }
}
