//! The command line's shared parts: the flag sets more than one command takes, each defined once
//! over the library's defaults; the one writer all output goes through; and what a command that
//! did its work concluded. Each command's own flags live with the command (`client`, `ops`).
//!
//! This is ripgrep's split of flag definitions, parsed values and working objects, in small: a
//! flag struct here is parsed by clap, then turned into the object that works ([`ServeArgs`] into
//! a `Config`, [`SandboxArgs`] into a `SandboxConfig`). Only `main` turns results into exit codes.

mod config_file;
mod output;
mod sandbox;
mod serve;

pub use config_file::{ConfigError, Settled};
pub use output::{note, print};
pub use sandbox::SandboxArgs;
pub use serve::{HttpArgs, LimitArgs, LogFormat, ServeArgs, WebhookArgs};

/// Where the client commands look for a server unless told: where an unflagged `kiln serve`
/// listens.
pub fn default_url() -> String {
    format!("http://{}", serve::defaults().listen)
}

/// `--json`, for every command that prints. Global, so that it may come after a subcommand's
/// own subcommand (`kiln token list --json`) or before it (`kiln token --json list`).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Format {
    /// Print raw JSON for scripts
    #[arg(long, global = true)]
    pub json: bool,
}

/// What a command that did its work found: whether the job it waited for succeeded, every case of
/// a suite passed, every check of the doctor did. A command that could not do its work returns
/// its error instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conclusion {
    Success,
    Failure,
    /// What it reports on has not ended yet (a job still queued or running, a batch with cases
    /// left), so it neither went well nor failed.
    Pending,
    /// Ctrl-C stopped it while it waited on work that goes on (exit 130, as a shell reports
    /// SIGINT).
    Interrupted,
}
