//! `kiln backup`: a consistent copy of the database, taken while servers go on using it, put in
//! place only once it has been checked, so that the file named is either absent or a whole
//! backup.
//!
//! A SQLite file is copied by the store (`VACUUM INTO` one snapshot, then `integrity_check`). A
//! PostgreSQL database is dumped by PostgreSQL's own `pg_dump`, in its custom format (restored
//! with `pg_restore`): kiln holds a snapshot open and has `pg_dump` dump exactly that one
//! (`--snapshot`), so the jobs and events the report counts are the ones in the dump, and then
//! checks the dump by having `pg_restore --list` read it whole. The password travels to
//! `pg_dump` in its environment, never on its command line, where any user of the host could
//! read it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{OpsError, blocking};
use crate::cli::{Format, print};
use crate::config::{DEFAULT_DB, without_password};
use crate::store::postgres::PgStore;
use crate::store::{self, Backup, StoreError};

#[derive(Clone, Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the backup; must not exist yet
    file: PathBuf,
    /// The server's database: its SQLite file, or its postgres://… URL (dumped with pg_dump,
    /// which must be installed: Debian's postgresql-client)
    #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    #[command(flatten)]
    format: Format,
}

/// Runs `kiln backup`.
pub async fn run(args: BackupArgs) -> Result<(), OpsError> {
    let (backup, checked) = match super::postgres(&args.db, 1).await? {
        Some(store) => {
            let url = args.db.to_string_lossy().into_owned();
            (dump(&store, &url, &args.file).await?, "pg_restore --list")
        }
        None => {
            let (db, file) = (args.db, args.file);
            (
                blocking(move || store::backup(&db, &file)).await?,
                "integrity_check",
            )
        }
    };
    print(|out| match args.format.json {
        true => writeln!(out, "{}", serde_json::json!(backup)),
        false => writeln!(
            out,
            "backed up {} jobs and {} events (schema version {}, {} bytes) to {}; {checked}: ok",
            backup.jobs,
            backup.events,
            backup.user_version,
            backup.bytes,
            backup.path.display()
        ),
    })
    .map_err(OpsError::Output)
}

/// Dumps the database at `url` to `dest` with `pg_dump`, by way of a file beside it that is
/// checked, synced and renamed into place.
async fn dump(store: &PgStore, url: &str, dest: &Path) -> Result<Backup, OpsError> {
    if dest.exists() {
        return Err(StoreError::Exists(dest.to_path_buf()).into());
    }
    let pg_dump = postgres_tool("pg_dump")?;
    let pg_restore = postgres_tool("pg_restore")?;
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let written = async {
        let password = tokio_postgres::Config::from_str(url)
            .ok()
            .and_then(|config| config.get_password().map(<[u8]>::to_vec))
            .map(|password| String::from_utf8_lossy(&password).into_owned());
        let (dumped, figures) = store
            .with_snapshot(|snapshot| {
                let mut command = tokio::process::Command::new(&pg_dump);
                command
                    .args(["--format=custom", "--no-password", "--snapshot", &snapshot])
                    .arg("--file")
                    .arg(&partial)
                    .arg("--dbname")
                    .arg(without_password(url))
                    .envs(password.as_ref().map(|p| ("PGPASSWORD", p)))
                    .kill_on_drop(true);
                async move { command.output().await }
            })
            .await
            .map_err(StoreError::from)?;
        finished("pg_dump", &pg_dump, dumped)?;
        let listed = tokio::process::Command::new(&pg_restore)
            .arg("--list")
            .arg(&partial)
            .output()
            .await;
        finished("pg_restore --list", &pg_restore, listed)?;
        let io = |e: std::io::Error| StoreError::Io(dest.to_path_buf(), e.to_string());
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        store::rename_durably(&partial, dest)?;
        Ok(Backup {
            path: dest.to_path_buf(),
            bytes: std::fs::metadata(dest).map_or(0, |m| m.len()),
            jobs: figures.jobs,
            events: figures.events,
            user_version: figures.schema_version,
        })
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// Whether a PostgreSQL tool ran and succeeded; what it said on stderr if not.
fn finished(
    what: &str,
    program: &Path,
    ran: std::io::Result<std::process::Output>,
) -> Result<(), OpsError> {
    let out = ran.map_err(|e| OpsError::Tool(format!("cannot run {}: {e}", program.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(OpsError::Tool(format!(
        "{what} failed ({}): {}",
        out.status,
        said.trim()
    )))
}

/// A PostgreSQL client program: the one on `PATH`, else the newest of Debian's versioned
/// installs (`/usr/lib/postgresql/N/bin`), which are not on `PATH` without the wrappers of
/// `postgresql-client-common`.
fn postgres_tool(name: &str) -> Result<PathBuf, OpsError> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if let Some(found) = on_path {
        return Ok(found);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let tool = entry.path().join("bin").join(name);
            tool.is_file().then_some((version, tool))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, tool)| tool).ok_or_else(|| {
        OpsError::Tool(format!(
            "{name} is not installed: a PostgreSQL database is backed up with PostgreSQL's own \
             tools (apt-get install postgresql-client)"
        ))
    })
}
