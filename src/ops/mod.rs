//! The operator's commands that work on the database file itself rather than through a server:
//! `kiln token` (API tokens), `kiln prune` (retention), `kiln backup` and `kiln doctor` (is this
//! host ready to run kiln?). They parse their flags here, call the store (or the sandbox's own
//! probe), and print what happened for people, or as JSON with `--json`; what they conclude, or
//! why they could not, goes back to `main`.

mod doctor;
mod token;

use std::io::Write;
use std::path::PathBuf;

use crate::cli::{Conclusion, Format, print};
use crate::config::DEFAULT_DB;
use crate::store::{self, PruneOptions, StoreError};

pub use doctor::{Check, DoctorArgs, Severity};
pub use token::TokenArgs;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum OpsCommand {
    /// Make, list and revoke API tokens, in the database file (the server need not run)
    Token(TokenArgs),
    /// Remove old finished jobs and batches with their events, optionally copying them to an
    /// archive file first; safe while servers run (small transactions)
    Prune {
        /// The database file
        #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
        db: PathBuf,
        /// What goes: jobs and batches that finished more than this long ago (e.g. 30d, 12h) or
        /// before this time (RFC 3339, e.g. 2026-01-31T00:00:00Z)
        #[arg(long, value_name = "AGE|TIME", value_parser = parse_cutoff)]
        finished_before: i64,
        /// Copy what is removed to this SQLite file first (created if missing, appended to if not)
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
        /// Jobs (or batches) removed per transaction
        #[arg(long, default_value_t = PruneOptions::new(0).chunk as u64,
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        chunk: u64,
        #[command(flatten)]
        format: Format,
    },
    /// Write a consistent copy of the database to FILE while servers go on using it; the copy is
    /// checked with integrity_check before it is put in place
    Backup {
        /// Where to write the backup; must not exist yet
        file: PathBuf,
        /// The database file
        #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
        db: PathBuf,
        #[command(flatten)]
        format: Format,
    },
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
}

/// Runs an operator's command and returns what it concluded: a failure only for a doctor that
/// found a check failing.
pub async fn run(command: OpsCommand) -> Result<Conclusion, OpsError> {
    match command {
        OpsCommand::Token(args) => token::run(args).await?,
        OpsCommand::Prune {
            db,
            finished_before,
            archive,
            chunk,
            format,
        } => {
            let mut options = PruneOptions::new(finished_before);
            options.archive = archive;
            options.chunk = usize::try_from(chunk).unwrap_or(options.chunk);
            let report = blocking(move || store::prune(&db, &options)).await?;
            print(|out| {
                if format.json {
                    return writeln!(out, "{}", serde_json::json!(report));
                }
                writeln!(
                    out,
                    "pruned {} jobs, {} batches and {} events in {} transactions \
                     (holding the write lock {:.0} ms in all, {} ms at most); \
                     recorded as prune {} in table prunes",
                    report.jobs,
                    report.batches,
                    report.events,
                    report.transactions,
                    report.locked_ms,
                    report.longest_transaction_ms,
                    report.prune_id
                )?;
                if let Some(archive) = &report.archive {
                    writeln!(out, "archived to {}", archive.display())?;
                }
                Ok(())
            })
            .map_err(OpsError::Output)?;
        }
        OpsCommand::Backup { file, db, format } => {
            let backup = blocking(move || store::backup(&db, &file)).await?;
            print(|out| match format.json {
                true => writeln!(out, "{}", serde_json::json!(backup)),
                false => writeln!(
                    out,
                    "backed up {} jobs and {} events (schema version {}, {} bytes) to {}; \
                     integrity_check: ok",
                    backup.jobs,
                    backup.events,
                    backup.user_version,
                    backup.bytes,
                    backup.path.display()
                ),
            })
            .map_err(OpsError::Output)?;
        }
        OpsCommand::Doctor(args) => return doctor::run(args).await,
    }
    Ok(Conclusion::Success)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OpsError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OpsError::Task(e.to_string()))?
        .map_err(OpsError::from)
}

/// `30d`, `12h`... ago, or an RFC 3339 time; as milliseconds since the epoch.
fn parse_cutoff(s: &str) -> Result<i64, String> {
    let to_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .map_err(|_| format!("{s} is before 1970"))
    };
    if let Ok(age) = humantime::parse_duration(s) {
        let now = std::time::SystemTime::now();
        return to_ms(now.checked_sub(age).unwrap_or(std::time::UNIX_EPOCH));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(time) => to_ms(time),
        Err(_) => Err(format!(
            "expected an age such as 30d or 12h, or a time such as 2026-01-31T00:00:00Z; got {s:?}"
        )),
    }
}
