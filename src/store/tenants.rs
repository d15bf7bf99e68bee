//! The SQL of tenants: API tokens (only their hashes), each tenant's webhook signing key, which
//! rows a tenant may see, and the counters admission control reads (kept by triggers of
//! migration 5, in the transaction of every change they count).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::StoreError;
use super::read::collect;

/// A token as `kiln token list` shows it: never the token, which is not stored.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub tenant: String,
    pub admin: bool,
    /// The token's first characters, to tell it apart.
    pub prefix: String,
    #[serde(serialize_with = "crate::job::time::serialize_ms")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::job::time::serialize_opt_ms")]
    pub revoked_at: Option<i64>,
}

/// A token that may be used: the SHA-256 of its text and whom it acts for.
#[derive(Debug, Clone)]
pub struct ActiveToken {
    pub hash: [u8; 32],
    pub tenant: String,
    pub admin: bool,
}

/// Who is asking, as far as the store cares: everything, or one tenant's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    All,
    Tenant(String),
}

impl Visibility {
    pub(super) fn tenant(&self) -> Option<&str> {
        match self {
            Visibility::All => None,
            Visibility::Tenant(name) => Some(name),
        }
    }
}

/// How much may be admitted, and for whom: checked in the transaction that would store the
/// job or batch, so the limits hold exactly however many submits race.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The tenant the new rows belong to; `None` on an open server.
    pub tenant: Option<String>,
    pub max_queued_jobs: u64,
    pub max_batches_in_flight: u64,
}

/// Why a submit was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Storing it would put more than the maximum of jobs in the queue.
    Queue { queued: u64, max: u64 },
    /// As many batches as allowed have cases not yet ended.
    Batches { max: u64 },
}

pub(super) fn create_token(
    conn: &Connection,
    tenant: &str,
    admin: bool,
    hash: &str,
    prefix: &str,
    secret: &str,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO tenants (name, webhook_secret, created_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![tenant, secret, now])?;
    Ok(conn
        .prepare_cached(
            "INSERT INTO tokens (tenant, admin, hash, prefix, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        )?
        .query_row(params![tenant, admin, hash, prefix, now], |r| r.get(0))?)
}

/// Revokes token `id`; false if there is no such token or it was revoked already.
pub(super) fn revoke_token(conn: &Connection, id: i64, now: i64) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")?
        .execute(params![id, now])?;
    Ok(n == 1)
}

pub(super) fn tokens(conn: &Connection) -> Result<Vec<TokenInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, tenant, admin, prefix, created_at, revoked_at FROM tokens ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Ok(TokenInfo {
            id: r.get(0)?,
            tenant: r.get(1)?,
            admin: r.get(2)?,
            prefix: r.get(3)?,
            created_at: r.get(4)?,
            revoked_at: r.get(5)?,
        }))
    })?;
    collect(rows)
}

/// The tokens not revoked, and whether any token was ever made (revoked ones included: revoking
/// every token must not open the server).
pub(super) fn active_tokens(conn: &Connection) -> Result<(Vec<ActiveToken>, bool), StoreError> {
    let any: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM tokens)")?
        .query_row([], |r| r.get(0))?;
    let mut stmt =
        conn.prepare_cached("SELECT hash, tenant, admin FROM tokens WHERE revoked_at IS NULL")?;
    let rows = stmt.query_map([], |r| {
        let hash: String = r.get(0)?;
        let (tenant, admin) = (r.get(1)?, r.get(2)?);
        Ok(parse_hash(&hash).map(|hash| ActiveToken {
            hash,
            tenant,
            admin,
        }))
    })?;
    Ok((collect(rows)?, any))
}

pub(super) fn parse_hash(hex: &str) -> Result<[u8; 32], StoreError> {
    let corrupt = || StoreError::Corrupt(format!("token hash {hex:?} is not 64 hex digits"));
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return Err(corrupt());
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex
            .get(2 * i..2 * i + 2)
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            .ok_or_else(corrupt)?;
    }
    Ok(out)
}

/// The tenant's webhook signing key, stored first as `initial` if it has none.
pub(super) fn tenant_secret(
    conn: &Connection,
    tenant: &str,
    initial: &str,
    now: i64,
) -> Result<String, StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO tenants (name, webhook_secret, created_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![tenant, initial, now])?;
    Ok(conn
        .prepare_cached("SELECT webhook_secret FROM tenants WHERE name = ?1")?
        .query_row([tenant], |r| r.get(0))?)
}

/// True if the job exists and `who` may see it.
pub(super) fn job_visible(
    conn: &Connection,
    id: &str,
    who: &Visibility,
) -> Result<bool, StoreError> {
    owned(conn, "SELECT tenant FROM jobs WHERE id = ?1", id, who)
}

/// True if the batch exists and `who` may see it.
pub(super) fn batch_visible(
    conn: &Connection,
    id: &str,
    who: &Visibility,
) -> Result<bool, StoreError> {
    owned(conn, "SELECT tenant FROM batches WHERE id = ?1", id, who)
}

fn owned(conn: &Connection, sql: &str, id: &str, who: &Visibility) -> Result<bool, StoreError> {
    let owner: Option<Option<String>> = conn
        .prepare_cached(sql)?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(match (owner, who.tenant()) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(owner), Some(tenant)) => owner.as_deref() == Some(tenant),
    })
}

fn counter(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    let value: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Refuses `jobs` more queued jobs (and, for a batch, one more batch in flight) beyond the
/// limits; reads two counter rows, never the queue.
pub(super) fn admit(
    conn: &Connection,
    admission: &Admission,
    jobs: u64,
    batch: bool,
) -> Result<Option<Full>, StoreError> {
    let queued = counter(conn, "queued_jobs")?;
    if queued.saturating_add(jobs) > admission.max_queued_jobs {
        return Ok(Some(Full::Queue {
            queued,
            max: admission.max_queued_jobs,
        }));
    }
    if batch && counter(conn, "batches_in_flight")? >= admission.max_batches_in_flight {
        return Ok(Some(Full::Batches {
            max: admission.max_batches_in_flight,
        }));
    }
    Ok(None)
}
