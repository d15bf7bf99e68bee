//! `kiln migrate-to postgres://…`: moves a SQLite deployment's whole history into a PostgreSQL
//! database, for a deployment outgrowing one host. The copy itself is the store's
//! ([`store::postgres::import_sqlite`]: one snapshot, one transaction, ids kept); this takes the
//! flags, shows each table's progress on stderr as it goes, and prints what was copied. The
//! database URL is only ever shown without its password.

use std::io::Write;
use std::path::PathBuf;

use super::OpsError;
use crate::cli::{Format, note, print};
use crate::config::{DEFAULT_DB, is_postgres_url, without_password};
use crate::store::StoreError;
use crate::store::postgres::{ImportProgress, Imported, PgError, import_sqlite};

#[derive(Clone, Debug, clap::Args)]
pub struct MigrateToArgs {
    /// The PostgreSQL database to copy into, postgres://user[:password]@host[:port]/db; it must
    /// exist and hold no kiln rows
    #[arg(value_name = "URL")]
    url: String,
    /// The SQLite database file to copy from
    #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    #[command(flatten)]
    format: Format,
}

/// Runs `kiln migrate-to`.
pub async fn run(args: MigrateToArgs) -> Result<(), OpsError> {
    if !is_postgres_url(&args.url) {
        return Err(OpsError::Refused(format!(
            "{:?} is not a PostgreSQL URL: give postgres://user@host/db",
            without_password(&args.url)
        )));
    }
    let shown = without_password(&args.url);
    note(&format!(
        "copying {} into {shown} (stop the servers on the file first: what they write from now \
         on is not copied)",
        args.db.display()
    ));
    let imported =
        import_sqlite(&args.db, &args.url, show)
            .await
            .map_err(|source| match source {
                StoreError::Postgres(
                    PgError::Pool(_) | PgError::Url(_) | PgError::Migration { .. },
                ) => OpsError::Open {
                    path: shown.clone().into(),
                    source,
                },
                source => OpsError::Store(source),
            })?;
    if imported.running_jobs > 0 {
        note(&format!(
            "{} jobs were running: their leases run out, and the PostgreSQL deployment's rescuer \
             requeues them (or ends them as error once out of attempts), as after a crash",
            imported.running_jobs
        ));
    }
    for table in &imported.skipped {
        note(&format!("table {table} is not kiln's: not copied"));
    }
    print(|out| summary(out, &imported, &shown, args.format.json)).map_err(OpsError::Output)
}

/// A line per table on stderr: every so many rows while a long one goes, and once it is done.
fn show(progress: &ImportProgress<'_>) {
    let secs = progress.elapsed.as_secs_f64();
    if progress.done {
        note(&format!(
            "{}: {} rows in {secs:.1} s",
            progress.table, progress.rows
        ));
    } else {
        note(&format!(
            "{}: {} of {} rows…",
            progress.table, progress.rows, progress.total
        ));
    }
}

fn summary(out: &mut dyn Write, imported: &Imported, url: &str, json: bool) -> std::io::Result<()> {
    if json {
        let mut value = serde_json::json!(imported);
        value["url"] = serde_json::json!(url);
        return writeln!(out, "{value}");
    }
    let rows: u64 = imported.tables.iter().map(|t| t.rows).sum();
    writeln!(
        out,
        "copied {rows} rows of {} tables into {url} in {:.1} s, in one transaction:",
        imported.tables.len(),
        imported.elapsed_ms as f64 / 1000.0
    )?;
    for table in &imported.tables {
        write!(out, "  {:<18} {:>10} rows", table.table, table.rows)?;
        match table.next_id {
            Some(next) => writeln!(out, "   (new ids from {next})")?,
            None => writeln!(out)?,
        }
    }
    writeln!(out, "serve it with: kiln serve --db {url}")
}
