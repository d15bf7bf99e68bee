//! How much of a job's progress is kept: the latest line becomes the job's `progress`, and
//! `job.progress` events are stored at most every [`MIN_INTERVAL`] and at most [`MAX_EVENTS`] per
//! attempt, always including the last one of a run, so a job printing progress in a tight loop
//! costs the database a few rows a second, not one per line.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::job::{JobId, Progress};
use crate::store::Store;

pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
pub const MAX_EVENTS: u32 = 100;

/// Stores what `latest` reports as `job.progress` events of this attempt, throttled (see the
/// module doc), until `ended`; then stores the last value if it was not stored yet.
pub async fn record(
    store: Store,
    job: JobId,
    attempt: u32,
    mut latest: watch::Receiver<Option<Progress>>,
    ended: CancellationToken,
) {
    let mut stored = 0;
    let mut last_stored: Option<Progress> = None;
    loop {
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { break },
            () = ended.cancelled() => break,
        }
        let current = latest.borrow_and_update().clone();
        // The last slot is kept for the run's final value.
        if stored + 1 >= MAX_EVENTS || current.is_none() || current == last_stored {
            continue;
        }
        match save(&store, job, attempt, current.clone()).await {
            Some(true) => {
                stored += 1;
                last_stored = current;
            }
            Some(false) => return,
            None => {}
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_INTERVAL) => {}
            () = ended.cancelled() => break,
        }
    }
    let current = latest.borrow().clone();
    if current.is_some() && current != last_stored && stored < MAX_EVENTS {
        save(&store, job, attempt, current).await;
    }
}

/// Whether the event was stored (false: the job no longer runs under this attempt); `None` if
/// the database refused.
async fn save(store: &Store, job: JobId, attempt: u32, progress: Option<Progress>) -> Option<bool> {
    let progress = progress?;
    match store.progress(job, attempt, progress).await {
        Ok(stored) => Some(stored),
        Err(e) => {
            tracing::warn!(%job, error = %e, "could not store progress");
            None
        }
    }
}
