//! Schema migrations for PostgreSQL: the numbered files in `schema/postgres/`, embedded in the
//! binary and applied in order at startup, each in its own transaction with its row in
//! `kiln_migrations` (PostgreSQL's DDL is transactional, so a crash leaves a known version).
//! Nodes starting together take turns under an advisory lock, so each file is applied once.

use std::sync::Arc;

use deadpool_postgres::GenericClient;

use super::PgError;
use crate::job::time::now_ms;
use crate::store::Migration;

/// Every migration, in order. A test checks this list against the files in `schema/postgres/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../../schema/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_stats.sql",
        sql: include_str!("../../../schema/postgres/0002_stats.sql"),
    },
    Migration {
        version: 3,
        name: "0003_listing_indexes.sql",
        sql: include_str!("../../../schema/postgres/0003_listing_indexes.sql"),
    },
    Migration {
        version: 4,
        name: "0004_notify.sql",
        sql: include_str!("../../../schema/postgres/0004_notify.sql"),
    },
    Migration {
        version: 5,
        name: "0005_leader.sql",
        sql: include_str!("../../../schema/postgres/0005_leader.sql"),
    },
    Migration {
        version: 6,
        name: "0006_rates.sql",
        sql: include_str!("../../../schema/postgres/0006_rates.sql"),
    },
];

/// The advisory lock migrating nodes take turns under: the bytes 'kiln.mig' as a 64-bit number.
const MIGRATION_LOCK: i64 = 0x6b69_6c6e_2e6d_6967;

/// The newest migration applied; 0 for a database kiln has never touched.
pub(super) async fn current(client: &impl GenericClient) -> Result<u32, PgError> {
    // The table comes with the first migration, so its absence is version 0. Asked apart:
    // a statement naming a table that does not exist fails as a whole.
    let exists: bool = client
        .query_one("SELECT to_regclass('kiln_migrations') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    let version: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM kiln_migrations", &[])
        .await?
        .try_get(0)?;
    u32::try_from(version).map_err(|_| PgError::Corrupt(format!("schema version {version}")))
}

pub(super) async fn apply(client: &mut impl GenericClient) -> Result<(), PgError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    for migration in MIGRATIONS {
        let fail = |source: tokio_postgres::Error| PgError::Migration {
            version: migration.version,
            name: migration.name,
            source: Arc::new(source),
        };
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        // Read under the lock: another node may have applied it while this one waited.
        let found = current(&tx).await?;
        if found > known {
            return Err(PgError::TooNew { found, known });
        }
        if found >= migration.version {
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(fail)?;
        let version = i32::try_from(migration.version)
            .map_err(|_| PgError::Corrupt(format!("migration {}", migration.version)))?;
        tx.execute(
            "INSERT INTO kiln_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&version, &migration.name, &now_ms()],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied PostgreSQL migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn every_file_in_schema_postgres_is_a_registered_migration_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("schema/postgres")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let registered: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, registered);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{} is numbered in order", m.name);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }
}
