//! The SQL of the webhook outbox: the row written with a job's terminal state or a batch's
//! completion, taking due rows for delivery, and recording each attempt together with its event.

use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::StoreError;
use super::write::{insert_batch_event, insert_event, parse_id};
use crate::bus::Notice;
use crate::job::{BatchId, CallbackShape, EventKind, JobId};

/// A call to make, as the deliverer takes it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub about: Subject,
    pub event: String,
    pub url: String,
    pub payload: String,
    /// What is sent: `payload` by POST, or what the job's shape renders.
    pub shape: CallbackShape,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: i64,
    /// Whose key signs it; `None` for the server's own.
    pub tenant: Option<String>,
}

/// What a call reports on, and so whose history records its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Job(JobId),
    Batch(BatchId),
}

/// How one attempt went, and what happens next.
#[derive(Debug, Clone)]
pub enum Attempt {
    Delivered {
        status_code: u16,
    },
    Failed {
        status_code: Option<u16>,
        error: String,
        /// When to try again; `None` gives up.
        retry_at: Option<i64>,
    },
}

impl Attempt {
    /// What the attempt leaves on its outbox row, on every backend: the row's status (pending
    /// while it will be tried again), the HTTP status, the error and when to try next.
    pub(super) fn row(&self) -> (&'static str, Option<u16>, Option<&str>, Option<i64>) {
        match self {
            Attempt::Delivered { status_code } => ("delivered", Some(*status_code), None, None),
            Attempt::Failed {
                status_code,
                error,
                retry_at: Some(at),
            } => ("pending", *status_code, Some(error.as_str()), Some(*at)),
            Attempt::Failed {
                status_code,
                error,
                retry_at: None,
            } => ("failed", *status_code, Some(error.as_str()), None),
        }
    }

    /// The event that records attempt `number` of `delivery`, the same on every backend.
    pub(super) fn event(&self, delivery: &Delivery, number: u32) -> (EventKind, Value) {
        match self {
            Attempt::Delivered { status_code } => (
                EventKind::WebhookDelivered,
                json!({
                    "delivery": delivery.id,
                    "url": delivery.url,
                    "attempt": number,
                    "status_code": status_code,
                }),
            ),
            Attempt::Failed {
                status_code,
                error,
                retry_at,
            } => (
                EventKind::WebhookFailed,
                json!({
                    "delivery": delivery.id,
                    "url": delivery.url,
                    "attempt": number,
                    "status_code": status_code,
                    "error": error,
                    "retry": retry_at.is_some(),
                    "next_attempt_at": retry_at.map(crate::job::time::rfc3339),
                }),
            ),
        }
    }
}

/// Writes the outbox row for a job that has just ended and asked for a callback to `url`. Runs in
/// the transaction of the terminal state, so the call is owed exactly when the end is recorded.
pub(super) fn job_ended(
    conn: &Connection,
    id: JobId,
    kind: EventKind,
    url: &str,
    now: i64,
) -> Result<(), StoreError> {
    let job = super::read::job(conn, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("job {id} ended but is not there")))?;
    let payload = json!({"event": kind.as_str(), "job": job}).to_string();
    conn.prepare_cached(
        "INSERT INTO webhooks (job_id, event, url, payload, next_attempt_at, created_at, updated_at,
                               tenant, shape)
         SELECT ?1, ?2, ?3, ?4, ?5, ?5, ?5, tenant, callback_shape FROM jobs WHERE id = ?1",
    )?
    .execute(params![id.to_string(), kind.as_str(), url, payload, now])?;
    Ok(())
}

/// Writes the outbox row for a batch whose last case has just ended, if it asked for a
/// callback. Runs in the transaction of its `batch.completed` event.
pub(super) fn batch_completed(conn: &Connection, id: BatchId, now: i64) -> Result<(), StoreError> {
    let (url, tenant, shape): (Option<String>, Option<String>, String) = conn
        .prepare_cached("SELECT callback_url, tenant, callback_shape FROM batches WHERE id = ?1")?
        .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let Some(url) = url.filter(|_| shape == CallbackShape::Kiln.as_str()) else {
        return Ok(());
    };
    let batch = super::batch::batch(conn, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("batch {id} completed but is not there")))?;
    let event = EventKind::BatchCompleted.as_str();
    let payload = json!({"event": event, "batch": batch}).to_string();
    conn.prepare_cached(
        "INSERT INTO webhooks (batch_id, event, url, payload, next_attempt_at, created_at,
                               updated_at, tenant)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, ?6)",
    )?
    .execute(params![id.to_string(), event, url, payload, now, tenant])?;
    Ok(())
}

/// The earliest time a pending row is due, if any row is pending.
pub(super) fn next_due(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT min(next_attempt_at) FROM webhooks WHERE status = 'pending'")?
        .query_row([], |r| r.get(0))?)
}

/// Takes up to `limit` due rows for delivery, earliest first, by pushing their due time to
/// `hold_until`: nobody else takes them before then unless the attempt's outcome is recorded.
pub(super) fn claim_due(
    conn: &Connection,
    now: i64,
    hold_until: i64,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE webhooks SET next_attempt_at = ?1, updated_at = ?2
         WHERE id IN (SELECT id FROM webhooks
                      WHERE status = 'pending' AND next_attempt_at <= ?2
                      ORDER BY next_attempt_at LIMIT ?3)
         RETURNING id, job_id, batch_id, event, url, payload, attempts, created_at, tenant, shape",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![hold_until, now, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            (
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ),
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get::<_, String>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, about, event, url, payload, attempts, created_at, tenant, shape) = row?;
        let shape = CallbackShape::parse(&shape)
            .ok_or_else(|| StoreError::Corrupt(format!("webhook {id} has shape {shape:?}")))?;
        let about = match about {
            (Some(job), None) => Subject::Job(parse_id(&job)?),
            (None, Some(batch)) => Subject::Batch(parse_id(&batch)?),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "webhook {id} must name either a job or a batch"
                )));
            }
        };
        out.push(Delivery {
            id,
            about,
            event,
            url,
            payload,
            shape,
            attempts,
            created_at,
            tenant,
        });
    }
    Ok(out)
}

/// Records attempt number `attempt` of `delivery` and its event. False, with nothing written,
/// if that attempt was already recorded (another server made it after this one's hold ran out).
pub(super) fn record(
    conn: &Connection,
    notices: &mut Vec<Notice>,
    delivery: &Delivery,
    attempt: &Attempt,
    now: i64,
) -> Result<bool, StoreError> {
    let number = delivery.attempts + 1;
    let (status, status_code, error, retry_at) = attempt.row();
    let n = conn
        .prepare_cached(
            "UPDATE webhooks
             SET status = ?1, attempts = ?2, next_attempt_at = ?3, last_status = ?4,
                 last_error = ?5, updated_at = ?6
             WHERE id = ?7 AND status = 'pending' AND attempts = ?8",
        )?
        .execute(params![
            status,
            number,
            retry_at,
            status_code,
            error,
            now,
            delivery.id,
            delivery.attempts
        ])?;
    if n == 0 {
        return Ok(false);
    }
    let (kind, data) = attempt.event(delivery, number);
    match delivery.about {
        Subject::Job(job) => insert_event(conn, notices, job, now, kind, None, &data)?,
        Subject::Batch(batch) => insert_batch_event(conn, notices, batch, now, kind, &data)?,
    }
    Ok(true)
}

/// The stored value of setting `name`, storing `value` first if there is none.
pub(super) fn setting_or_insert(
    conn: &Connection,
    name: &str,
    value: &str,
) -> Result<String, StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)")?
        .execute(params![name, value])?;
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?)
}
