//! The webhook outbox on PostgreSQL: taking due rows for delivery and recording each attempt
//! with its event, as SQLite's store does. (The rows themselves are written with the end they
//! report, in `write`.) Deliverers on several nodes may look at once: a row taken is locked
//! and skipped by the others, and held back for the length of the attempt, so each attempt is
//! made by one node.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;

use super::PgError;
use super::read::u32_of;
use crate::job::CallbackShape;
use crate::store::{Attempt, Delivery, Subject};

/// When the earliest pending row is due, if any row is pending.
pub(super) async fn next_due(client: &impl GenericClient) -> Result<Option<i64>, PgError> {
    let stmt = client
        .prepare_cached("SELECT min(next_attempt_at) FROM webhooks WHERE status = 'pending'")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.try_get(0)?)
}

/// Takes up to `limit` due rows, earliest first, by pushing their due time to `hold_until`:
/// nobody takes them again before then unless this attempt's outcome is recorded. Rows another
/// deliverer is taking at this moment are skipped, not waited for.
pub(super) async fn claim_due(
    client: &impl GenericClient,
    now: i64,
    hold_until: i64,
    limit: usize,
) -> Result<Vec<Delivery>, PgError> {
    let stmt = client
        .prepare_cached(
            "UPDATE webhooks SET next_attempt_at = $1, updated_at = $2
             WHERE id IN (SELECT id FROM webhooks
                          WHERE status = 'pending' AND next_attempt_at <= $2
                          ORDER BY next_attempt_at LIMIT $3 FOR NO KEY UPDATE SKIP LOCKED)
             RETURNING id, job_id, batch_id, event, url, payload::text, attempts, created_at,
                       tenant, shape",
        )
        .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(&stmt, &[&hold_until, &now, &limit]).await?;
    let mut taken = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get(0)?;
        let about = match (r.try_get(1)?, r.try_get(2)?) {
            (Some(job), None) => Subject::Job(job),
            (None, Some(batch)) => Subject::Batch(batch),
            _ => {
                return Err(PgError::Corrupt(format!(
                    "webhook {id} must name either a job or a batch"
                )));
            }
        };
        let shape: String = r.try_get(9)?;
        taken.push(Delivery {
            id,
            about,
            event: r.try_get(3)?,
            url: r.try_get(4)?,
            payload: r.try_get(5)?,
            shape: CallbackShape::parse(&shape)
                .ok_or_else(|| PgError::Corrupt(format!("webhook {id} has shape {shape:?}")))?,
            attempts: u32_of(r, 6)?,
            created_at: r.try_get(7)?,
            tenant: r.try_get(8)?,
        });
    }
    Ok(taken)
}

/// Records attempt number `delivery.attempts + 1` and its event. False, with nothing written,
/// if that attempt was already recorded (another node made it after this one's hold ran out).
pub(super) async fn record(
    tx: &impl GenericClient,
    delivery: &Delivery,
    attempt: &Attempt,
    now: i64,
) -> Result<bool, PgError> {
    let number = delivery.attempts + 1;
    let (status, status_code, error, retry_at) = attempt.row();
    let count = |n: u32| {
        i32::try_from(n).map_err(|_| PgError::Corrupt(format!("{n} attempts of a webhook")))
    };
    let updated = tx
        .execute(
            "UPDATE webhooks
             SET status = $1, attempts = $2, next_attempt_at = $3, last_status = $4,
                 last_error = $5, updated_at = $6
             WHERE id = $7 AND status = 'pending' AND attempts = $8",
            &[
                &status,
                &count(number)?,
                &retry_at,
                &status_code.map(i32::from),
                &error,
                &now,
                &delivery.id,
                &count(delivery.attempts)?,
            ],
        )
        .await?;
    if updated == 0 {
        return Ok(false);
    }
    let (kind, data) = attempt.event(delivery, number);
    // The event last (see `write`), in the history of what the call reports on, with its
    // tenant; a job's event carries the job's batch, as every event of a case does.
    let (sql, subject) = match delivery.about {
        Subject::Job(job) => (
            "INSERT INTO events (job_id, batch_id, at, type, data, tenant)
             SELECT id, batch_id, $2, $3, $4, tenant FROM jobs WHERE id = $1",
            job,
        ),
        Subject::Batch(batch) => (
            "INSERT INTO events (batch_id, at, type, data, tenant)
             SELECT id, $2, $3, $4, tenant FROM batches WHERE id = $1",
            batch,
        ),
    };
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, &[&subject, &now, &kind.as_str(), &Json(&data)])
        .await?;
    super::appended([kind]);
    Ok(true)
}
