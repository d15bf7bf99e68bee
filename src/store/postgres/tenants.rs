//! Tokens, tenants and settings on PostgreSQL: API tokens (only their hashes), each tenant's
//! webhook signing key, the values kiln keeps for itself, and which rows a tenant may see, as
//! SQLite's store has them. A value stored "first if there is none" is one value for the whole
//! cluster: nodes asking at once wait for the first insert to commit and all read it back.

use deadpool_postgres::GenericClient;

use super::PgError;
use crate::job::{BatchId, JobId};
use crate::store::{ActiveToken, TokenInfo, Visibility};

/// Stores a token's hash for `tenant`, and the tenant with `secret` as its key if it is new.
pub(super) async fn create_token(
    tx: &impl GenericClient,
    tenant: &str,
    admin: bool,
    hash: &str,
    prefix: &str,
    secret: &str,
    now: i64,
) -> Result<i64, PgError> {
    tx.execute(
        "INSERT INTO tenants (name, webhook_secret, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
        &[&tenant, &secret, &now],
    )
    .await?;
    let row = tx
        .query_one(
            "INSERT INTO tokens (tenant, admin, hash, prefix, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&tenant, &admin, &hash, &prefix, &now],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Revokes token `id`; false if there is no such token or it was revoked already.
pub(super) async fn revoke_token(
    client: &impl GenericClient,
    id: i64,
    now: i64,
) -> Result<bool, PgError> {
    let n = client
        .execute(
            "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &now],
        )
        .await?;
    Ok(n == 1)
}

pub(super) async fn tokens(client: &impl GenericClient) -> Result<Vec<TokenInfo>, PgError> {
    let rows = client
        .query(
            "SELECT id, tenant, admin, prefix, created_at, revoked_at FROM tokens ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TokenInfo {
                id: r.try_get(0)?,
                tenant: r.try_get(1)?,
                admin: r.try_get(2)?,
                prefix: r.try_get(3)?,
                created_at: r.try_get(4)?,
                revoked_at: r.try_get(5)?,
            })
        })
        .collect()
}

/// The tokens not revoked, and whether any token was ever made (revoked ones included:
/// revoking every token must not open the server).
pub(super) async fn active_tokens(
    client: &impl GenericClient,
) -> Result<(Vec<ActiveToken>, bool), PgError> {
    let any: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM tokens)", &[])
        .await?
        .try_get(0)?;
    let rows = client
        .query(
            "SELECT hash, tenant, admin FROM tokens WHERE revoked_at IS NULL",
            &[],
        )
        .await?;
    let active = rows
        .iter()
        .map(|r| {
            let hash: String = r.try_get(0)?;
            Ok(ActiveToken {
                hash: crate::store::tenants::parse_hash(&hash)
                    .map_err(|e| PgError::Corrupt(e.to_string()))?,
                tenant: r.try_get(1)?,
                admin: r.try_get(2)?,
            })
        })
        .collect::<Result<_, PgError>>()?;
    Ok((active, any))
}

/// The tenant's webhook signing key, stored first as `initial` if it has none.
pub(super) async fn tenant_secret(
    client: &impl GenericClient,
    tenant: &str,
    initial: &str,
    now: i64,
) -> Result<String, PgError> {
    client
        .execute(
            "INSERT INTO tenants (name, webhook_secret, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&tenant, &initial, &now],
        )
        .await?;
    // A statement of its own: its snapshot sees the row whoever inserted it.
    let row = client
        .query_one(
            "SELECT webhook_secret FROM tenants WHERE name = $1",
            &[&tenant],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The stored value of setting `name`, storing `initial` first if there is none.
pub(super) async fn setting_or_insert(
    client: &impl GenericClient,
    name: &str,
    initial: &str,
) -> Result<String, PgError> {
    client
        .execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &initial],
        )
        .await?;
    let row = client
        .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
        .await?;
    Ok(row.try_get(0)?)
}

/// True if the job exists and `who` may see it.
pub(super) async fn job_visible(
    client: &impl GenericClient,
    id: JobId,
    who: &Visibility,
) -> Result<bool, PgError> {
    let owner = client
        .query_opt("SELECT tenant FROM jobs WHERE id = $1", &[&id])
        .await?;
    owned(owner, who)
}

/// True if the batch exists and `who` may see it.
pub(super) async fn batch_visible(
    client: &impl GenericClient,
    id: BatchId,
    who: &Visibility,
) -> Result<bool, PgError> {
    let owner = client
        .query_opt("SELECT tenant FROM batches WHERE id = $1", &[&id])
        .await?;
    owned(owner, who)
}

fn owned(owner: Option<tokio_postgres::Row>, who: &Visibility) -> Result<bool, PgError> {
    let Some(row) = owner else {
        return Ok(false);
    };
    let owner: Option<String> = row.try_get(0)?;
    Ok(match who.tenant() {
        None => true,
        Some(tenant) => owner.as_deref() == Some(tenant),
    })
}
