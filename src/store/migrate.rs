//! Schema migrations: the numbered files in `schema/`, embedded in the binary and applied in
//! order at startup. `PRAGMA user_version` records the last one applied, so the file itself says
//! which schema it has (operators can read it with `sqlite3 kiln.db 'PRAGMA user_version'`).

use std::sync::Arc;

use rusqlite::Connection;

use super::StoreError;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A test checks this list against the files in `schema/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../schema/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_batches.sql",
        sql: include_str!("../../schema/0002_batches.sql"),
    },
    Migration {
        version: 3,
        name: "0003_webhooks.sql",
        sql: include_str!("../../schema/0003_webhooks.sql"),
    },
    Migration {
        version: 4,
        name: "0004_batch_webhooks.sql",
        sql: include_str!("../../schema/0004_batch_webhooks.sql"),
    },
    Migration {
        version: 5,
        name: "0005_tenants.sql",
        sql: include_str!("../../schema/0005_tenants.sql"),
    },
    Migration {
        version: 6,
        name: "0006_prune.sql",
        sql: include_str!("../../schema/0006_prune.sql"),
    },
    Migration {
        version: 7,
        name: "0007_programs_per_case.sql",
        sql: include_str!("../../schema/0007_programs_per_case.sql"),
    },
    Migration {
        version: 8,
        name: "0008_bytes.sql",
        sql: include_str!("../../schema/0008_bytes.sql"),
    },
    Migration {
        version: 9,
        name: "0009_job_files.sql",
        sql: include_str!("../../schema/0009_job_files.sql"),
    },
    Migration {
        version: 10,
        name: "0010_callback_shapes.sql",
        sql: include_str!("../../schema/0010_callback_shapes.sql"),
    },
    Migration {
        version: 11,
        name: "0011_interactive.sql",
        sql: include_str!("../../schema/0011_interactive.sql"),
    },
    Migration {
        version: 12,
        name: "0012_stats.sql",
        sql: include_str!("../../schema/0012_stats.sql"),
    },
    Migration {
        version: 13,
        name: "0013_listing_indexes.sql",
        sql: include_str!("../../schema/0013_listing_indexes.sql"),
    },
];

/// Applies each migration newer than the file's `user_version`, each in its own transaction
/// together with the version bump, so a crash leaves the file at a known version.
pub(super) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let fail = |source: rusqlite::Error| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Arc::new(source),
        };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(migration.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", migration.version)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    Ok(())
}
