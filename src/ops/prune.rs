//! `kiln prune`: retention, with its safety net. The removal itself is the store's
//! ([`store::prune`]); this decides whether to go ahead: `--dry-run` only counts what would go,
//! an age whose unit could be read two ways is refused, and a prune that would remove every
//! finished job asks first on a terminal, and without one is refused unless `--yes` says so.
//! The same on PostgreSQL (`--db postgres://…`), where the store prunes beside running nodes
//! in short transactions as it does a file.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use super::{OpsError, blocking};
use crate::cli::{Format, print};
use crate::config::DEFAULT_DB;
use crate::store::postgres::PgStore;
use crate::store::{self, PruneOptions, PrunePreview, PruneReport, StoreError};

#[derive(Clone, Debug, clap::Args)]
pub struct PruneArgs {
    /// The server's database: its SQLite file, or its postgres://… URL
    #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// What goes: jobs and batches that finished more than this long ago, in s, min, h, d or w
    /// (e.g. 30d, 12h, 90min), or before this time (RFC 3339, e.g. 2026-01-31T00:00:00Z)
    #[arg(long, value_name = "AGE|TIME", value_parser = parse_cutoff)]
    finished_before: i64,
    /// Copy what is removed to this SQLite file first (created if missing, appended to if not)
    #[arg(long, value_name = "FILE")]
    archive: Option<PathBuf>,
    /// Jobs (or batches) removed per transaction
    #[arg(long, default_value_t = PruneOptions::new(0).chunk as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    chunk: u64,
    /// Say what would go, and delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Go ahead without asking even when every finished job would go
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    format: Format,
}

/// Runs `kiln prune`.
pub async fn run(args: PruneArgs) -> Result<(), OpsError> {
    let database = match super::postgres(&args.db, 1).await? {
        Some(store) => Database::Postgres(store),
        None => Database::File(args.db.clone()),
    };
    let preview = database.preview(args.finished_before).await?;
    if args.dry_run {
        return print(|out| match args.format.json {
            true => writeln!(
                out,
                "{}",
                serde_json::json!({"dry_run": true, "would_prune": preview})
            ),
            false => writeln!(
                out,
                "would prune {} jobs, {} batches and {} events, keeping {} finished jobs; \
                 nothing was deleted (--dry-run)",
                preview.jobs, preview.batches, preview.events, preview.finished_jobs_kept
            ),
        })
        .map_err(OpsError::Output);
    }
    if preview.takes_all_history() && !args.yes {
        confirm(&preview)?;
    }
    let mut options = PruneOptions::new(args.finished_before);
    options.archive = args.archive;
    options.chunk = usize::try_from(args.chunk).unwrap_or(options.chunk);
    let report = database.prune(options).await?;
    print(|out| {
        if args.format.json {
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
    .map_err(OpsError::Output)
}

/// What is pruned: a SQLite file, through a connection of the prune's own (it needs no server
/// and no writer thread), or a PostgreSQL database, through the store.
enum Database {
    File(PathBuf),
    Postgres(PgStore),
}

impl Database {
    async fn preview(&self, finished_before: i64) -> Result<PrunePreview, OpsError> {
        match self {
            Database::File(db) => {
                let db = db.clone();
                blocking(move || store::prune_preview(&db, finished_before)).await
            }
            Database::Postgres(store) => Ok(store
                .prune_preview(finished_before)
                .await
                .map_err(StoreError::from)?),
        }
    }

    async fn prune(&self, options: PruneOptions) -> Result<PruneReport, OpsError> {
        match self {
            Database::File(db) => {
                let db = db.clone();
                blocking(move || store::prune(&db, &options)).await
            }
            Database::Postgres(store) => {
                Ok(store.prune(&options).await.map_err(StoreError::from)?)
            }
        }
    }
}

/// Asks the person at the terminal whether all history may go; without a terminal there is no
/// one to ask, and the answer is no.
fn confirm(preview: &PrunePreview) -> Result<(), OpsError> {
    let what = format!(
        "this prune would remove every finished job ({} jobs, {} batches, {} events)",
        preview.jobs, preview.batches, preview.events
    );
    if !std::io::stdin().is_terminal() {
        return Err(OpsError::Refused(format!(
            "{what}; nothing pruned: pass --yes to do it without a terminal, or --dry-run to \
             see what would go"
        )));
    }
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "kiln: {what}. Go ahead? [y/N] ").map_err(OpsError::Output)?;
    stderr.flush().map_err(OpsError::Output)?;
    drop(stderr);
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(OpsError::Output)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(OpsError::Refused("nothing pruned".into())),
    }
}

/// The units an age may have, each with every spelling taken for it, and its length in seconds.
/// `m` is not among them: half of those who write `1m` mean a minute, half a month.
const UNITS: &[(&[&str], u64)] = &[
    (&["s", "sec", "secs", "second", "seconds"], 1),
    (&["min", "mins", "minute", "minutes"], 60),
    (&["h", "hr", "hrs", "hour", "hours"], 3600),
    (&["d", "day", "days"], 86_400),
    (&["w", "week", "weeks"], 7 * 86_400),
];

/// An age (`30d`) as seconds, or why it is not one.
fn parse_age(s: &str) -> Result<u64, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected an age such as 30d, 12h or 90min; got {s:?}"))?;
    let unit = unit.trim();
    if let Some((_, secs)) = UNITS.iter().find(|(names, _)| names.contains(&unit)) {
        return Ok(number.saturating_mul(*secs));
    }
    Err(match unit {
        "m" | "M" => format!("{s:?} could mean minutes or months: use {number}min or 30d"),
        "mo" | "mon" | "month" | "months" | "y" | "yr" | "year" | "years" => {
            format!("{s:?}: months and years differ in length; give days instead, e.g. 30d or 365d")
        }
        _ => format!("{s:?}: the unit must be one of s, min, h, d or w (e.g. 30d, 12h, 90min)"),
    })
}

/// An age ago (`30d`) or an RFC 3339 time; as milliseconds since the epoch.
fn parse_cutoff(s: &str) -> Result<i64, String> {
    let to_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .map_err(|_| format!("{s} is before 1970"))
    };
    if s.starts_with(|c: char| c.is_ascii_digit()) && !s.contains(['-', ':']) {
        let age = std::time::Duration::from_secs(parse_age(s)?);
        let now = std::time::SystemTime::now();
        return to_ms(now.checked_sub(age).unwrap_or(std::time::UNIX_EPOCH));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(time) => to_ms(time),
        Err(_) => Err(format!(
            "expected an age such as 30d, 12h or 90min, or a time such as \
             2026-01-31T00:00:00Z; got {s:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_takes_the_units_people_cannot_misread() {
        for (age, secs) in [
            ("30d", 30 * 86_400),
            ("12h", 12 * 3600),
            ("90min", 5400),
            ("2w", 14 * 86_400),
            ("45s", 45),
            ("0d", 0),
            ("3 days", 3 * 86_400),
        ] {
            assert_eq!(parse_age(age), Ok(secs), "{age}");
        }
    }

    #[test]
    fn an_age_that_could_be_minutes_or_months_is_refused_with_what_to_write() {
        let refused = parse_age("1m").expect_err("ambiguous");
        assert!(refused.contains("use 1min or 30d"), "{refused}");
        for age in ["1mo", "2y", "3 months"] {
            let refused = parse_age(age).expect_err(age);
            assert!(refused.contains("give days instead"), "{refused}");
        }
        for age in ["5x", "d", "-1d", ""] {
            assert!(parse_cutoff(age).is_err(), "{age}");
        }
    }

    #[test]
    fn a_cutoff_is_an_age_ago_or_a_time() {
        let now = crate::job::time::now_ms();
        let day_ago = parse_cutoff("1d").expect("an age");
        assert!((now - 86_400_000 - day_ago).abs() < 5_000, "{day_ago}");
        assert_eq!(parse_cutoff("1970-01-01T00:00:01Z"), Ok(1000));
    }
}
