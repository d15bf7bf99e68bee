//! The operator's commands that work on the database file itself rather than through a server:
//! `kiln token` (API tokens), `kiln prune` (retention), `kiln backup`, `kiln migrate-to` (the
//! move from a SQLite file to PostgreSQL) and `kiln doctor` (is this host ready to run kiln?).
//! They parse their flags here, call the store (or the sandbox's own probe), and print what
//! happened for people, or as JSON with `--json`; what they conclude, or why they could not,
//! goes back to `main`.

mod backup;
mod doctor;
mod migrate_to;
mod prune;
mod token;

use std::path::{Path, PathBuf};

use crate::cli::Conclusion;
use crate::config::{is_postgres_url, without_password};
use crate::store::StoreError;
use crate::store::postgres::{PgStore, Wakeups};

/// The feed of a command that reads no events: as idle as it may be.
const ONE_MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

pub use backup::BackupArgs;
pub use doctor::{Check, DoctorArgs, Severity};
pub use migrate_to::MigrateToArgs;
pub use prune::PruneArgs;
pub use token::TokenArgs;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum OpsCommand {
    /// Make, list and revoke API tokens, in the database file (the server need not run)
    Token(TokenArgs),
    /// Remove old finished jobs and batches with their events, optionally copying them to an
    /// archive file first; safe while servers run (small transactions)
    Prune(PruneArgs),
    /// Write a consistent copy of the database to FILE while servers go on using it: a SQLite
    /// file checked with integrity_check, or a PostgreSQL database dumped by pg_dump and checked
    /// with pg_restore --list, before it is put in place
    Backup(BackupArgs),
    /// Copy a SQLite database's whole history (jobs, events, suites, tokens, webhooks, stats)
    /// into an empty PostgreSQL database, ids kept, in one transaction; stop its servers first
    MigrateTo(MigrateToArgs),
    /// Check that this host can run kiln (sandbox, cgroups, runtimes, disk, database, server) and
    /// say what to fix; exits 1 if a check fails
    Doctor(DoctorArgs),
}

/// Why an operator's command could not do its work (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: StoreError },
    #[error("no randomness: {0}")]
    Randomness(#[source] std::io::Error),
    #[error("no token {0} in force (see `kiln token list`)")]
    NoSuchToken(i64),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    #[error("the command did not finish: {0}")]
    Task(String),
    /// A PostgreSQL tool kiln runs (`pg_dump`) is missing or failed, in its own words.
    #[error("{0}")]
    Tool(String),
    /// Not done, as the operator (or the lack of one to ask) decided.
    #[error("{0}")]
    Refused(String),
}

/// Runs an operator's command and returns what it concluded: a failure only for a doctor that
/// found a check failing.
pub async fn run(command: OpsCommand) -> Result<Conclusion, OpsError> {
    match command {
        OpsCommand::Token(args) => token::run(args).await?,
        OpsCommand::Prune(args) => prune::run(args).await?,
        OpsCommand::Backup(args) => backup::run(args).await?,
        OpsCommand::MigrateTo(args) => migrate_to::run(args).await?,
        OpsCommand::Doctor(args) => return doctor::run(args).await,
    }
    Ok(Conclusion::Success)
}

/// The PostgreSQL database `db` names (a `postgres://…` URL), connected with `connections`
/// pooled connections for an operator's command; `None` when `db` is a SQLite file.
async fn postgres(db: &Path, connections: usize) -> Result<Option<PgStore>, OpsError> {
    let Some(url) = db.to_str().filter(|db| is_postgres_url(db)) else {
        return Ok(None);
    };
    let wakeups = Wakeups::Poll { every: ONE_MINUTE };
    match PgStore::connect_with(url, connections, wakeups).await {
        Ok(store) => Ok(Some(store)),
        Err(source) => Err(OpsError::Open {
            path: without_password(url).into(),
            source: source.into(),
        }),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OpsError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OpsError::Task(e.to_string()))?
        .map_err(OpsError::from)
}
