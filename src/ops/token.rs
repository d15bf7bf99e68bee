//! `kiln token`: makes, lists and revokes API tokens in the database (the server's SQLite file,
//! or its PostgreSQL database), so the server need not run (and no token is needed to make the
//! first one). A token is shown once, when made; the
//! database keeps only its hash and first characters.

use std::io::Write;
use std::path::PathBuf;

use super::OpsError;
use crate::cli::{Format, note, print};
use crate::config::DEFAULT_DB;
use crate::store::{Store, StoreError};

#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// The server's database: its SQLite file, or its postgres://… URL
    #[arg(long, env = "KILN_DB", default_value = DEFAULT_DB, global = true)]
    db: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    format: Format,
}

#[derive(Clone, Debug, clap::Subcommand)]
enum TokenCommand {
    /// Make a token for a tenant and print it, once: only its hash is kept
    Create {
        /// Whose jobs the token submits and sees (letters, digits, '.', '_', '-')
        #[arg(long, value_parser = parse_tenant)]
        tenant: String,
        /// The token sees every tenant's jobs and the global event feed
        #[arg(long)]
        admin: bool,
    },
    /// List the tokens made: id, tenant, first characters, and whether revoked
    List,
    /// Revoke a token by its id; a running server refuses it within a second
    Revoke { id: i64 },
}

fn parse_tenant(s: &str) -> Result<String, String> {
    if crate::auth::is_tenant_name(s) {
        Ok(s.to_owned())
    } else {
        Err("1 to 64 letters, digits, '.', '_' or '-'".into())
    }
}

/// Runs `kiln token …` on its database.
pub async fn run(args: TokenArgs) -> Result<(), OpsError> {
    if let Some(store) = super::postgres(&args.db, 1).await? {
        let store = Store::Postgres(store);
        return command(&store, args.command, args.format.json).await;
    }
    let (store, writer) = Store::open_existing(&args.db, 1).map_err(|source| match source {
        StoreError::Missing(_) => OpsError::Store(source),
        source => OpsError::Open {
            path: args.db.clone(),
            source,
        },
    })?;
    let done = command(&store, args.command, args.format.json).await;
    drop(store);
    writer.join();
    done
}

async fn command(store: &Store, command: TokenCommand, json: bool) -> Result<(), OpsError> {
    match command {
        TokenCommand::Create { tenant, admin } => {
            let made = crate::auth::new_token().map_err(OpsError::Randomness)?;
            let secret = crate::auth::random_hex(32).map_err(OpsError::Randomness)?;
            let id = store
                .create_token(tenant.clone(), admin, made.hash, made.prefix, secret)
                .await?;
            if json {
                let out = serde_json::json!({"id": id, "tenant": tenant, "admin": admin,
                                             "token": made.token});
                print(|o| writeln!(o, "{out}")).map_err(OpsError::Output)?;
            } else {
                print(|o| writeln!(o, "{}", made.token)).map_err(OpsError::Output)?;
                note(&format!(
                    "token {id} for tenant {tenant:?}{}: shown this once, keep it secret",
                    if admin { " (admin)" } else { "" }
                ));
            }
        }
        TokenCommand::List => {
            let tokens = store.tokens().await?;
            if json {
                let out = serde_json::to_string(&tokens)?;
                return print(|o| writeln!(o, "{out}")).map_err(OpsError::Output);
            }
            let when = crate::job::time::rfc3339;
            print(|o| {
                writeln!(
                    o,
                    "{:>4}  {:<13}  {:<20}  {:<5}  {:<24}  revoked",
                    "id", "token", "tenant", "admin", "created"
                )?;
                for t in tokens {
                    writeln!(
                        o,
                        "{:>4}  {:<13}  {:<20}  {:<5}  {:<24}  {}",
                        t.id,
                        format!("{}…", t.prefix),
                        t.tenant,
                        if t.admin { "yes" } else { "no" },
                        when(t.created_at),
                        t.revoked_at.map_or_else(|| "-".to_owned(), when),
                    )?;
                }
                Ok(())
            })
            .map_err(OpsError::Output)?;
        }
        TokenCommand::Revoke { id } => {
            if !store.revoke_token(id).await? {
                return Err(OpsError::NoSuchToken(id));
            }
            note(&format!("token {id} revoked"));
        }
    }
    Ok(())
}
