//! How a node on PostgreSQL hears of commits, its own and every other node's, and tells its
//! [`Bus`]: what the writer thread does for the SQLite store. Waiting workers, live streams,
//! long-polls and the webhook deliverer then behave as they do on one file.
//!
//! Two tasks. The listener holds a connection of its own (a pooled one is driven by the pool,
//! which discards notifications) with `LISTEN kiln_events`, and turns each notification into a
//! wake-up; it reconnects after losing the server. The reader, on each wake-up and on a timer,
//! reads the events after the last id it has seen and publishes them in id order. Since ids
//! commit in order (`events_in_commit_order`), reading after the last id misses nothing, so a
//! notification only makes the read sooner: one lost while the listener reconnects, or never
//! sent to a node that cannot listen (`Wakeups::Poll`, for PgBouncer's transaction pooling),
//! costs at most one timer period.

use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::PgError;
use super::tls::Tls;
use crate::bus::{Bus, Notice};
use crate::job::EventKind;

/// Listens on the channel the `events_notify` trigger of `schema/postgres/0004_notify.sql` notifies.
const LISTEN: &str = "LISTEN kiln_events";

/// At most this many events are read and published at a time.
const PAGE: i64 = 1000;

/// How long the listener waits before connecting again after losing its connection.
const RECONNECT: Duration = Duration::from_secs(1);

/// How a node learns that there is something new to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeups {
    /// LISTEN for the notification each commit sends, and read on a timer as well, in case one
    /// is lost while the listening connection is down.
    Notify { poll: Duration },
    /// Only read on a timer: for a server reached through a pooler that cannot LISTEN.
    Poll { every: Duration },
}

impl Wakeups {
    fn period(self) -> Duration {
        match self {
            Wakeups::Notify { poll } | Wakeups::Poll { every: poll } => poll,
        }
    }
}

/// Starts following the database's events into `bus` until `stop`, from the last event
/// committed now.
pub(super) fn start(
    bus: &Arc<Bus>,
    pool: Pool,
    target: (tokio_postgres::Config, Tls),
    wakeups: Wakeups,
    stop: CancellationToken,
) {
    let heard = Arc::new(Notify::new());
    if matches!(wakeups, Wakeups::Notify { .. }) {
        tokio::spawn(listen(target, Arc::clone(&heard), stop.clone()));
    }
    tokio::spawn(read(
        Arc::downgrade(bus),
        pool,
        heard,
        wakeups.period(),
        stop,
    ));
}

/// Keeps a connection listening on `kiln_events`, waking `heard` for each notification, until
/// `stop`. An outage is logged once when it begins and once when it ends.
async fn listen(
    (config, tls): (tokio_postgres::Config, Tls),
    heard: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut down = false;
    loop {
        let connected = tokio::select! {
            connected = config.connect(tls.clone()) => connected,
            () = stop.cancelled() => return,
        };
        let ended = match connected {
            Ok((client, connection)) => {
                if down {
                    tracing::info!("listening for other nodes' commits again");
                    down = false;
                }
                tokio::select! {
                    ended = drive(client, connection, &heard) => ended,
                    () = stop.cancelled() => return,
                }
            }
            Err(e) => Err(e.into()),
        };
        if !down {
            let reason = ended
                .err()
                .map_or("the server closed it".to_owned(), |e| e.to_string());
            tracing::warn!(error = %reason, "not listening for other nodes' commits; reading on a timer");
            down = true;
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Listens on the connection and drives it until it ends.
async fn drive<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    heard: &Arc<Notify>,
) -> Result<(), PgError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listening = client.batch_execute(LISTEN);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done?;
                listened = true;
                // What committed before the LISTEN took effect was heard by nobody.
                heard.notify_one();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => heard.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// Publishes every event committed after the start into `bus`, in id order, on each wake-up
/// and every `period`, until `stop` or until nobody holds the bus.
async fn read(
    bus: Weak<Bus>,
    pool: Pool,
    heard: Arc<Notify>,
    period: Duration,
    stop: CancellationToken,
) {
    let mut last = loop {
        match last_id(&pool).await {
            Ok(last) => break last,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the end of the event log yet");
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            () = heard.notified() => {}
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        let Some(bus) = bus.upgrade() else { return };
        loop {
            match after(&pool, last).await {
                Ok(notices) => {
                    let Some(newest) = notices.last() else { break };
                    last = newest.event_id;
                    bus.publish(&notices);
                    if notices.len() < PAGE as usize {
                        break;
                    }
                }
                Err(e) => {
                    // Read again at the next wake-up: subscribers lose nothing, only wait.
                    tracing::warn!(error = %e, "cannot read new events");
                    break;
                }
            }
        }
    }
}

async fn last_id(pool: &Pool) -> Result<i64, PgError> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT coalesce(max(id), 0) FROM events", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// The notices of the events after `last`, oldest first, at most [`PAGE`].
async fn after(pool: &Pool, last: i64) -> Result<Vec<Notice>, PgError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, job_id, batch_id, type FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            &[&last, &PAGE],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get(3)?;
            Ok(Notice {
                event_id: row.try_get(0)?,
                job_id: row.try_get(1)?,
                batch_id: row.try_get(2)?,
                kind: EventKind::parse(&kind)
                    .ok_or_else(|| PgError::Corrupt(format!("unknown event type {kind:?}")))?,
            })
        })
        .collect()
}
